// Depthwise causal conv1d (+ bias, + SiLU) for fp32 channel-contiguous (b, d, l) views: 16 channels per vector,
// a sliding window of the last K tokens in registers (each input loaded once), the NaN/inf check folded into the
// read (scan_tm.h layout).
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

// One (batch row, 16-channel block) of the conv, in scan order k (position t = k, or L-1-k when reversed):
// out_t = b + Σ_j w[K-1-j] x at scan step k - j. The last K inputs are a sliding window (registers when K is a
// compile-time KC), so each token is loaded once. Returns the NaN/inf witness of the inputs read.
template <int KC>
v16f conv_block_tm(const TokView& xv, const v16f* wv, v16f vb, int64_t Kr, bool silu, bool reverse, int64_t bi,
                   int64_t c0, int64_t L, float* o, int64_t ob, int64_t ot, v16f* heap_hist) {
  const int64_t K = KC > 0 ? KC : Kr;
  v16f hist_local[KC > 0 ? KC : 1];
  v16f* hist = KC > 0 ? hist_local : heap_hist;   // hist[j] = x at scan step k - j
  for (int64_t j = 0; j < K; ++j) hist[j] = splatv<v16f>(0.0f);
  v16f chk = splatv<v16f>(0.0f);
  for (int64_t k = 0; k < L; ++k) {
    const int64_t t = reverse ? L - 1 - k : k;
    slide_in(hist, K, O::load(xv.at(bi, t, c0)));
    chk += hist[0] * 0.0f;
    const v16f acc = conv_dot(wv, hist, K, vb);
    O::store(o + bi * ob + t * ot + c0, silu ? silu_fast(acc) : acc);
  }
  return chk;
}

void load_taps(const float* w, int64_t K, int64_t c0, v16f* wv) {
  for (int64_t k = 0; k < K; ++k)
    for (int j = 0; j < kLanes; ++j) wv[k][j] = w[(c0 + j) * K + k];
}

}  // namespace

bool conv_tm_into(const TokView& xv, const float* w, const float* bias, int64_t K, bool silu, bool reverse,
                  int64_t Bsz, int64_t Dm, int64_t L, float* o, int64_t ob, int64_t ot) {
  TORCH_CHECK(K >= 1, "vimzoo causal conv: the conv width must be >= 1");
  TORCH_CHECK(Dm % kLanes == 0, "vimzoo causal conv: the channel count must be a multiple of 16");
  const int64_t nblk = Dm / kLanes;
  std::atomic<int> bad{0};
  parallel_rows(
      Bsz * nblk, [&](int64_t) { return std::vector<v16f>(2 * K); },   // taps, then the generic path's window
      [&](std::vector<v16f>& buf, int64_t task) {
        const int64_t bi = task / nblk, c0 = (task % nblk) * kLanes;
        v16f* wv = buf.data();
        load_taps(w, K, c0, wv);
        const v16f vb = bias ? O::load(bias + c0) : splatv<v16f>(0.0f);
        const v16f chk = K == 4 ? conv_block_tm<4>(xv, wv, vb, K, silu, reverse, bi, c0, L, o, ob, ot, wv + K)
                                : conv_block_tm<0>(xv, wv, vb, K, silu, reverse, bi, c0, L, o, ob, ot, wv + K);
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
  const v16f* wv;           // the block's taps
  v16f vb;
  bool silu, reverse, accumulate;   // accumulate: add dx to what the output holds
  int64_t bi, c0, L;
  float* dx;                // the block's dx at dx[t * ot]
  int64_t ot;
};

// One block of the conv backward, in scan order k: pass 1 recomputes the pre-activation P_k (sliding window as the
// forward) and keeps dP_k = dout_k · silu'(P_k); pass 2, last step first, slides a window over dP:
// dx at step k = Σ_j w[K-1-j] dP_{k+j}, dw[K-1-j] += dP_{k+j} x_k. The block's dw (K per channel) and db rows are
// written to dw_row[j * K + k] and db_row[j].
template <int KC>
void conv_block_bwd_tm(const ConvBwdBlock& c, int64_t Kr, v16f* dP, v16f* heap, float* dw_row, float* db_row) {
  const int64_t K = KC > 0 ? KC : Kr, L = c.L;
  v16f win_local[KC > 0 ? KC : 1], dw_local[KC > 0 ? KC : 1];
  v16f* win = KC > 0 ? win_local : heap;
  v16f* dw = KC > 0 ? dw_local : heap + K;
  const v16f* wv = c.wv;
  auto pos = [&](int64_t k) { return c.reverse ? L - 1 - k : k; };
  for (int64_t j = 0; j < K; ++j) win[j] = dw[j] = splatv<v16f>(0.0f);
  v16f db = splatv<v16f>(0.0f);
  for (int64_t k = 0; k < L; ++k) {   // win[j] = x at step k - j
    const int64_t t = pos(k);
    v16f g = O::load(c.gv.at(c.bi, t, c.c0));
    if (c.silu) {
      slide_in(win, K, O::load(c.xv.at(c.bi, t, c.c0)));
      const v16f acc = conv_dot(wv, win, K, c.vb);
      const v16f sg = sigmoid_fast(acc);
      g *= sg * (1.0f + acc * (1.0f - sg));
    }
    dP[k] = g;
    db += g;
  }
  for (int64_t j = 0; j < K; ++j) win[j] = splatv<v16f>(0.0f);
  for (int64_t k = L - 1; k >= 0; --k) {   // win[j] = dP at step k + j (zero past the end)
    const int64_t t = pos(k);
    slide_in(win, K, dP[k]);
    const v16f xk = O::load(c.xv.at(c.bi, t, c.c0));
    v16f acc = splatv<v16f>(0.0f);
    for (int64_t j = 0; j < K; ++j) {
      acc += wv[K - 1 - j] * win[j];
      dw[K - 1 - j] += win[j] * xk;
    }
    float* q = c.dx + t * c.ot;
    O::store(q, c.accumulate ? O::load(q) + acc : acc);
  }
  for (int j = 0; j < kLanes; ++j) {
    for (int64_t k = 0; k < K; ++k) dw_row[j * K + k] = dw[k][j];
    db_row[j] = db[j];
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
  parallel_rows(
      Bsz * nblk, [&](int64_t) { return std::vector<v16f>(L + 4 * K); },   // dP, taps, the generic path's windows
      [&](std::vector<v16f>& buf, int64_t task) {
        const int64_t bi = task / nblk, c0 = (task % nblk) * kLanes;
        v16f* wv = buf.data() + L;
        load_taps(wp, K, c0, wv);
        const v16f vb = bp ? O::load(bp + c0) : splatv<v16f>(0.0f);
        const ConvBwdBlock blk{xv, gv, wv, vb, silu, reverse, accumulate, bi, c0, L, dxp + bi * ob + c0, ot};
        if (K == 4) {
          conv_block_bwd_tm<4>(blk, K, buf.data(), wv + K, dwp + (bi * Dm + c0) * K, dbp + bi * Dm + c0);
        } else {
          conv_block_bwd_tm<0>(blk, K, buf.data(), wv + K, dwp + (bi * Dm + c0) * K, dbp + bi * Dm + c0);
        }
      });
  return {dx, dw_rows.sum(0), bias.has_value() ? db_rows.sum(0) : at::empty({0}, w.options())};
}

}  // namespace vimzoo::cpu
