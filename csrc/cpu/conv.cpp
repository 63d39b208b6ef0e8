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

}  // namespace vimzoo::cpu
