// Depthwise causal conv1d (+ bias, + SiLU) for fp32 channel-contiguous (b, d, l) views: 16 channels per vector,
// several adjacent vectors per task for width 4 (more memory requests in flight), a sliding window of the last K
// tokens in registers (each input loaded once), the NaN/inf check folded into the read (scan_tm.h layout).
#include "kernels.h"
#include "scan_tm.h"

#include <vector>

namespace vimzoo::cpu {

namespace {

using O = VecOps<v16f>;

// Shifts v into a window of the last K values (win[0] = v, win[j] = the value j steps back).
inline void slide_in(v16f* win, int64_t K, v16f v) {
  for (int64_t j = K - 1; j > 0; --j) win[j] = win[j - 1];
  win[0] = v;
}

// The conv's pre-activation for a window of inputs: b + Σ_j w[K-1-j] win[j].
inline v16f conv_dot(const v16f* wv, const v16f* win, int64_t K, v16f vb) {
  v16f acc = vb;
  for (int64_t j = 0; j < K; ++j) acc += wv[K - 1 - j] * win[j];
  return acc;
}

// NB adjacent 16-channel blocks of one batch row, in scan order k (position t = k, or L-1-k when reversed):
// out_t = b + Σ_j w[K-1-j] x at scan step k - j. The last K inputs are a sliding window per block (registers when K
// is a compile-time KC), so each token is loaded once; a token's NB blocks are NB·64 contiguous bytes read together,
// which keeps more memory requests in flight than one line per token (in training the inputs come from DRAM). wv:
// the K taps of block q at wv[q·K], vb[q] its bias. Returns the NaN/inf witness of the inputs read.
template <int KC, int NB>
v16f conv_blocks_tm(const TokView& xv, const v16f* wv, const v16f* vb, int64_t Kr, bool silu, bool reverse,
                    int64_t bi, int64_t c0, int64_t L, float* o, int64_t ob, int64_t ot, v16f* heap_hist) {
  const int64_t K = KC > 0 ? KC : Kr;
  v16f hist_local[NB][KC > 0 ? KC : 1];
  v16f* hist[NB];   // hist[q][j] = block q's x at scan step k - j
  for (int q = 0; q < NB; ++q) {
    hist[q] = KC > 0 ? hist_local[q] : heap_hist + q * K;
    for (int64_t j = 0; j < K; ++j) hist[q][j] = splatv<v16f>(0.0f);
  }
  v16f chk = splatv<v16f>(0.0f);
  for (int64_t k = 0; k < L; ++k) {
    const int64_t t = reverse ? L - 1 - k : k;
    const float* xp = xv.at(bi, t, c0);
    float* op = o + bi * ob + t * ot + c0;
    for (int q = 0; q < NB; ++q) {
      slide_in(hist[q], K, O::load(xp + q * kLanes));
      chk += hist[q][0] * 0.0f;
      const v16f acc = conv_dot(wv + q * K, hist[q], K, vb[q]);
      O::store(op + q * kLanes, silu ? silu_fast(acc) : acc);
    }
  }
  return chk;
}

// The taps and biases of nb adjacent blocks from channel c0: block q's K taps at wv[q·K], its bias at vb[q].
void load_blocks(const float* w, const float* bias, int64_t K, int64_t c0, int64_t nb, v16f* wv, v16f* vb) {
  for (int64_t q = 0; q < nb; ++q) {
    const int64_t cq = c0 + q * kLanes;
    for (int64_t k = 0; k < K; ++k)
      for (int j = 0; j < kLanes; ++j) wv[q * K + k][j] = w[(cq + j) * K + k];
    vb[q] = bias ? O::load(bias + cq) : splatv<v16f>(0.0f);
  }
}

}  // namespace

// Blocks per conv task for width 4 (Vim's case) when they divide the channel blocks, else 1: 4 for the forward; 2 for
// the backward, whose per-task dP buffer (L·blocks vectors) then stays in L1 (4 ran slower with 2 threads).
int64_t conv_blocks_per_task(int64_t K, int64_t nblk, int64_t want) { return K == 4 && nblk % want == 0 ? want : 1; }

bool conv_tm_into(const TokView& xv, const float* w, const float* bias, int64_t K, bool silu, bool reverse,
                  int64_t Bsz, int64_t Dm, int64_t L, float* o, int64_t ob, int64_t ot) {
  TORCH_CHECK(K >= 1, "vimzoo causal conv: the conv width must be >= 1");
  TORCH_CHECK(Dm % kLanes == 0, "vimzoo causal conv: the channel count must be a multiple of 16");
  const int64_t nblk = Dm / kLanes, nb = conv_blocks_per_task(K, nblk, 4), ngrp = nblk / nb;
  std::atomic<int> bad{0};
  parallel_rows(
      Bsz * ngrp, [&](int64_t) { return std::vector<v16f>(nb * (2 * K + 1)); },   // taps, biases, generic windows
      [&](std::vector<v16f>& buf, int64_t task) {
        const int64_t bi = task / ngrp, c0 = (task % ngrp) * nb * kLanes;
        v16f* wv = buf.data();
        v16f* vb = wv + nb * K;
        load_blocks(w, bias, K, c0, nb, wv, vb);
        const v16f chk =
            nb == 4  ? conv_blocks_tm<4, 4>(xv, wv, vb, K, silu, reverse, bi, c0, L, o, ob, ot, nullptr)
            : K == 4 ? conv_blocks_tm<4, 1>(xv, wv, vb, K, silu, reverse, bi, c0, L, o, ob, ot, nullptr)
                     : conv_blocks_tm<0, 1>(xv, wv, vb, K, silu, reverse, bi, c0, L, o, ob, ot, vb + 1);
        if (witness_bad(chk)) bad.fetch_or(1);
      });
  return bad.load() != 0;
}

at::Tensor causal_conv1d_tm(const at::Tensor& x, const at::Tensor& weight, const opt_tensor& bias, bool silu,
                            bool reverse, bool check_finite) {
  TORCH_CHECK(tok_major_ok(x), "vimzoo causal_conv1d_tm: x must be an fp32 (b, d, l) view with contiguous channels");
  const int64_t Dm = x.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == Dm && weight.size(1) >= 1 && weight.scalar_type() == at::kFloat,
              "vimzoo causal_conv1d_tm: weight must be (d, k) fp32 with k >= 1");
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->numel() == Dm && bias->scalar_type() == at::kFloat),
              "vimzoo causal_conv1d_tm: bias must be (d,) fp32");
  const at::Tensor w = weight.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  if (check_finite) {
    if (!all_finite(w.data_ptr<float>(), w.numel())) raise_nonfinite("causal_conv1d", "weight");
    if (bc.defined() && !all_finite(bc.data_ptr<float>(), bc.numel())) raise_nonfinite("causal_conv1d", "bias");
  }
  auto out = tok_major_empty(x);
  const bool bad = conv_tm_into(tok_view(x), w.data_ptr<float>(), bc.defined() ? bc.data_ptr<float>() : nullptr,
                                w.size(1), silu, reverse, x.size(0), Dm, x.size(2), out.data_ptr<float>(),
                                out.stride(0), out.stride(2));
  if (check_finite && bad) raise_nonfinite("causal_conv1d", "x");
  return out;
}

namespace {

struct ConvBwdBlock {
  const TokView &xv, &gv;   // the conv input and the gradient of its output
  const v16f* wv;           // the taps, block q's at wv[q * K]
  const v16f* vb;           // the biases, block q's at vb[q]
  bool silu, reverse, accumulate;   // accumulate: add dx to what the output holds
  int64_t bi, c0, L;
  float* dx;                // the blocks' dx at dx[t * ot]
  int64_t ot;
};

// NB adjacent blocks of the conv backward, in scan order k (NB·64 contiguous bytes per token, as the forward):
// pass 1 recomputes the pre-activation P_k (sliding window as the forward) and keeps dP_k = dout_k · silu'(P_k);
// pass 2, last step first, slides a window over dP: dx at step k = Σ_j w[K-1-j] dP_{k+j}, dw[K-1-j] += dP_{k+j} x_k.
// Block q's dw (K per channel) and db rows are written to dw_row[(q * 16 + j) * K + k] and db_row[q * 16 + j].
template <int KC, int NB>
void conv_blocks_bwd_tm(const ConvBwdBlock& c, int64_t Kr, v16f* dP, v16f* heap, float* dw_row, float* db_row) {
  const int64_t K = KC > 0 ? KC : Kr, L = c.L;
  v16f win_local[NB][KC > 0 ? KC : 1], dw_local[NB][KC > 0 ? KC : 1];
  v16f *win[NB], *dw[NB], db[NB];
  for (int q = 0; q < NB; ++q) {
    win[q] = KC > 0 ? win_local[q] : heap + 2 * q * K;
    dw[q] = KC > 0 ? dw_local[q] : heap + (2 * q + 1) * K;
    for (int64_t j = 0; j < K; ++j) win[q][j] = dw[q][j] = splatv<v16f>(0.0f);
    db[q] = splatv<v16f>(0.0f);
  }
  auto pos = [&](int64_t k) { return c.reverse ? L - 1 - k : k; };
  for (int64_t k = 0; k < L; ++k) {   // win[q][j] = x at step k - j
    const int64_t t = pos(k);
    const float* gp = c.gv.at(c.bi, t, c.c0);
    const float* xp = c.xv.at(c.bi, t, c.c0);
    for (int q = 0; q < NB; ++q) {
      v16f g = O::load(gp + q * kLanes);
      if (c.silu) {
        slide_in(win[q], K, O::load(xp + q * kLanes));
        const v16f acc = conv_dot(c.wv + q * K, win[q], K, c.vb[q]);
        const v16f sg = sigmoid_fast(acc);
        g *= sg * (1.0f + acc * (1.0f - sg));
      }
      dP[k * NB + q] = g;
      db[q] += g;
    }
  }
  for (int q = 0; q < NB; ++q)
    for (int64_t j = 0; j < K; ++j) win[q][j] = splatv<v16f>(0.0f);
  for (int64_t k = L - 1; k >= 0; --k) {   // win[q][j] = dP at step k + j (zero past the end)
    const int64_t t = pos(k);
    const float* xp = c.xv.at(c.bi, t, c.c0);
    float* dxp = c.dx + t * c.ot;
    for (int q = 0; q < NB; ++q) {
      slide_in(win[q], K, dP[k * NB + q]);
      const v16f xk = O::load(xp + q * kLanes);
      const v16f* wq = c.wv + q * K;
      v16f acc = splatv<v16f>(0.0f);
      for (int64_t j = 0; j < K; ++j) {
        acc += wq[K - 1 - j] * win[q][j];
        dw[q][K - 1 - j] += win[q][j] * xk;
      }
      float* d = dxp + q * kLanes;
      O::store(d, c.accumulate ? O::load(d) + acc : acc);
    }
  }
  for (int q = 0; q < NB; ++q) {
    for (int j = 0; j < kLanes; ++j) {
      for (int64_t k = 0; k < K; ++k) dw_row[(q * kLanes + j) * K + k] = dw[q][k][j];
      db_row[q * kLanes + j] = db[q][j];
    }
  }
}

}  // namespace

std::vector<at::Tensor> causal_conv1d_bwd_tm(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight,
                                             const opt_tensor& bias, bool silu, bool reverse,
                                             const opt_tensor& dx_out, bool accumulate) {
  TORCH_CHECK(tok_major_ok(x) && tok_major_ok(dout) && dout.sizes() == x.sizes(),
              "vimzoo causal_conv1d_bwd_tm: dout/x must be fp32 (b, d, l) views with contiguous channels");
  TORCH_CHECK(!dx_out.has_value() || (tok_major_ok(*dx_out) && dx_out->sizes() == x.sizes()),
              "vimzoo causal_conv1d_bwd_tm: dx_out must be an fp32 (b, d, l) view like x, with contiguous channels");
  TORCH_CHECK(!accumulate || dx_out.has_value(), "vimzoo causal_conv1d_bwd_tm: accumulate needs dx_out");
  const int64_t Bsz = x.size(0), Dm = x.size(1), L = x.size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == Dm && weight.size(1) >= 1 && weight.scalar_type() == at::kFloat,
              "vimzoo causal_conv1d_bwd_tm: weight must be (d, k) fp32 with k >= 1");
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->numel() == Dm && bias->scalar_type() == at::kFloat),
              "vimzoo causal_conv1d_bwd_tm: bias must be (d,) fp32");
  const at::Tensor w = weight.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t K = w.size(1), nblk = Dm / kLanes;
  const at::Tensor dx = dx_out.has_value() ? *dx_out : tok_major_empty(x);
  auto dw_rows = at::empty({Bsz, Dm, K}, w.options()), db_rows = at::empty({Bsz, Dm}, w.options());
  const TokView xv = tok_view(x), gv = tok_view(dout);
  const float* wp = w.data_ptr<float>();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  float* dxp = dx.data_ptr<float>();
  const int64_t ob = dx.stride(0), ot = dx.stride(2);
  float* dwp = dw_rows.data_ptr<float>();
  float* dbp = db_rows.data_ptr<float>();
  const int64_t nb = conv_blocks_per_task(K, nblk, 2), ngrp = nblk / nb;
  parallel_rows(
      Bsz * ngrp, [&](int64_t) { return std::vector<v16f>(nb * (L + 4 * K + 1)); },   // dP, taps, biases, windows
      [&](std::vector<v16f>& buf, int64_t task) {
        const int64_t bi = task / ngrp, c0 = (task % ngrp) * nb * kLanes;
        v16f* wv = buf.data() + nb * L;
        v16f* vb = wv + nb * K;
        load_blocks(wp, bp, K, c0, nb, wv, vb);
        const ConvBwdBlock blk{xv, gv, wv, vb, silu, reverse, accumulate, bi, c0, L, dxp + bi * ob + c0, ot};
        float* dw_row = dwp + (bi * Dm + c0) * K;
        float* db_row = dbp + bi * Dm + c0;
        if (nb == 2) {
          conv_blocks_bwd_tm<4, 2>(blk, K, buf.data(), nullptr, dw_row, db_row);
        } else if (K == 4) {
          conv_blocks_bwd_tm<4, 1>(blk, K, buf.data(), nullptr, dw_row, db_row);
        } else {
          conv_blocks_bwd_tm<0, 1>(blk, K, buf.data(), vb + 1, dw_row, db_row);
        }
      });
  return {dx, dw_rows.sum(0), bias.has_value() ? db_rows.sum(0) : at::empty({0}, w.options())};
}

}  // namespace vimzoo::cpu
