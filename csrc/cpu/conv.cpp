// Depthwise causal conv1d (+ bias, + SiLU) for fp32 channel-contiguous (b, d, l) views: 16 channels per vector,
// K shifted FMAs per token, the NaN/inf check folded into the read (scan_tm.h layout).
#include "kernels.h"
#include "scan_tm.h"

#include <vector>

namespace vimzoo::cpu {

bool conv_tm_into(const TokView& xv, const float* w, const float* bias, int64_t K, bool silu, bool reverse,
                  int64_t Bsz, int64_t Dm, int64_t L, float* o, int64_t ob, int64_t ot) {
  TORCH_CHECK(K >= 1, "vimzoo causal conv: the conv width must be >= 1");
  TORCH_CHECK(Dm % kLanes == 0, "vimzoo causal conv: the channel count must be a multiple of 16");
  const int64_t nblk = Dm / kLanes;
  std::atomic<int> bad{0};
  using O = VecOps<v16f>;
  parallel_rows(
      Bsz * nblk, [&](int64_t) { return std::vector<v16f>(K); },
      [&](std::vector<v16f>& wv, int64_t task) {
        const int64_t bi = task / nblk, c0 = (task % nblk) * kLanes;
        for (int64_t k = 0; k < K; ++k)
          for (int j = 0; j < kLanes; ++j) wv[k][j] = w[(c0 + j) * K + k];
        const v16f vb = bias ? O::load(bias + c0) : splatv<v16f>(0.0f);
        v16f chk = splatv<v16f>(0.0f);
        for (int64_t t = 0; t < L; ++t) {
          const v16f xt = O::load(xv.at(bi, t, c0));
          chk += xt * 0.0f;
          v16f acc = vb + wv[K - 1] * xt;
          for (int64_t j = 1; j < K; ++j) {
            const int64_t s = reverse ? t + j : t - j;
            if (s >= 0 && s < L) acc += wv[K - 1 - j] * O::load(xv.at(bi, s, c0));
          }
          O::store(o + bi * ob + t * ot + c0, silu ? silu_fast(acc) : acc);
        }
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

std::vector<at::Tensor> causal_conv1d_bwd_tm(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight,
                                             const opt_tensor& bias, bool silu, bool reverse) {
  TORCH_CHECK(tok_major_ok(x) && tok_major_ok(dout) && dout.sizes() == x.sizes(),
              "vimzoo causal_conv1d_bwd_tm: dout/x must be fp32 (b, d, l) views with contiguous channels");
  const int64_t Bsz = x.size(0), Dm = x.size(1), L = x.size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == Dm && weight.size(1) >= 1 && weight.scalar_type() == at::kFloat,
              "vimzoo causal_conv1d_bwd_tm: weight must be (d, k) fp32 with k >= 1");
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->numel() == Dm && bias->scalar_type() == at::kFloat),
              "vimzoo causal_conv1d_bwd_tm: bias must be (d,) fp32");
  const at::Tensor w = weight.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t K = w.size(1), nblk = Dm / kLanes;
  auto dx = tok_major_empty(x);
  auto dw_rows = at::empty({Bsz, Dm, K}, w.options()), db_rows = at::empty({Bsz, Dm}, w.options());
  const TokView xv = tok_view(x), gv = tok_view(dout);
  const float* wp = w.data_ptr<float>();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  float* dxp = dx.data_ptr<float>();
  const int64_t ob = dx.stride(0), ot = dx.stride(2);
  parallel_rows(
      Bsz * nblk, [&](int64_t) { return std::make_pair(std::vector<v16f>(K), std::vector<v16f>(L)); },
      [&](auto& st, int64_t task) {
        auto& wv = st.first;
        v16f* dP = st.second.data();
        const int64_t bi = task / nblk, c0 = (task % nblk) * kLanes;
        for (int64_t k = 0; k < K; ++k)
          for (int j = 0; j < kLanes; ++j) wv[k][j] = wp[(c0 + j) * K + k];
        const v16f vb = bp ? VecOps<v16f>::load(bp + c0) : splatv<v16f>(0.0f);
        auto xs = [&](int64_t s) { return VecOps<v16f>::load(xv.at(bi, s, c0)); };
        // dP_t = dout_t · silu'(P_t), P_t the recomputed pre-activation; db = Σ dP.
        v16f db = splatv<v16f>(0.0f);
        for (int64_t t = 0; t < L; ++t) {
          v16f g = VecOps<v16f>::load(gv.at(bi, t, c0));
          if (silu) {
            v16f acc = vb + wv[K - 1] * xs(t);
            for (int64_t j = 1; j < K; ++j) {
              const int64_t s = reverse ? t + j : t - j;
              if (s >= 0 && s < L) acc += wv[K - 1 - j] * xs(s);
            }
            const v16f sg = sigmoid_fast(acc);
            g *= sg * (1.0f + acc * (1.0f - sg));
          }
          dP[t] = g;
          db += g;
        }
        // dx_s = Σ_j w[K-1-j] dP_{s±j}; dw[K-1-j] = Σ_t dP_t x_{t∓j}.
        std::vector<v16f> dwv(K, splatv<v16f>(0.0f));
        for (int64_t s = 0; s < L; ++s) {
          const v16f xsv = xs(s);
          v16f acc = wv[K - 1] * dP[s];
          dwv[K - 1] += dP[s] * xsv;
          for (int64_t j = 1; j < K; ++j) {
            const int64_t t = reverse ? s - j : s + j;   // the output that x_s fed through tap j
            if (t >= 0 && t < L) {
              acc += wv[K - 1 - j] * dP[t];
              dwv[K - 1 - j] += dP[t] * xsv;
            }
          }
          VecOps<v16f>::store(dxp + bi * ob + s * ot + c0, acc);
        }
        for (int j = 0; j < kLanes; ++j) {
          for (int64_t k = 0; k < K; ++k) dw_rows.data_ptr<float>()[(bi * Dm + c0 + j) * K + k] = dwv[k][j];
          db_rows.data_ptr<float>()[bi * Dm + c0 + j] = db[j];
        }
      });
  return {dx, dw_rows.sum(0), bias.has_value() ? db_rows.sum(0) : at::empty({0}, w.options())};
}

}  // namespace vimzoo::cpu
