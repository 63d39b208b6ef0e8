// Fused residual add + RMSNorm (mamba_ssm's `rms_norm_fn(x, w, None, residual, prenorm=True)`):
// summed = x + residual, normed = summed * rsqrt(mean(summed²) + eps) * w, fp32 (..., C) contiguous. A NaN / inf in
// x or residual shows up in the row's sum of squares, which is computed anyway: the check is free. The backward is
// one pass per row as well (PyTorch's differentiable rms_norm takes about ten elementwise ops and reductions).
#include "kernels.h"
#include "common.h"

#include <atomic>
#include <cmath>
#include <vector>

namespace vimzoo::cpu {

std::vector<at::Tensor> add_rms_norm_fwd(const at::Tensor& x, const opt_tensor& residual, const at::Tensor& weight,
                                         double eps, bool check_finite) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() >= 1,
              "vimzoo add_rms_norm_fwd: x must be a contiguous fp32 CPU tensor");
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  TORCH_CHECK(weight.dim() == 1 && weight.numel() == C && weight.scalar_type() == at::kFloat,
              "vimzoo add_rms_norm_fwd: weight (C,) fp32");
  const bool has_res = residual.has_value() && residual->numel();
  TORCH_CHECK(!has_res || (residual->sizes() == x.sizes() && residual->scalar_type() == at::kFloat &&
                           residual->is_contiguous()),
              "vimzoo add_rms_norm_fwd: residual must match x");
  const at::Tensor w = weight.contiguous();
  if (check_finite && !all_finite(w.data_ptr<float>(), C)) raise_nonfinite("add_rms_norm", "weight");
  auto summed = has_res ? at::empty_like(x) : x.clone();  // an op output must not alias its input
  auto normed = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* rp = has_res ? residual->data_ptr<float>() : nullptr;
  const float* wp = w.data_ptr<float>();
  float* sp = summed.data_ptr<float>();
  float* np_ = normed.data_ptr<float>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * C;
      float* sr = sp + r * C;
      float ss = 0.0f;
      if (rp != nullptr) {
        const float* rr = rp + r * C;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < C; ++c) {
          sr[c] = rr[c] + xr[c];
          ss += sr[c] * sr[c];
        }
      } else {
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < C; ++c) ss += xr[c] * xr[c];
      }
      if (!std::isfinite(ss)) bad.store(true, std::memory_order_relaxed);
      const float scale = 1.0f / std::sqrt(ss / static_cast<float>(C) + static_cast<float>(eps));
      float* nr = np_ + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) nr[c] = sr[c] * scale * wp[c];
    }
  });
  if (check_finite && bad.load()) {  // name the culprit (rare path; a huge finite input can overflow ss as well)
    if (!all_finite(xp, x.numel())) raise_nonfinite("add_rms_norm", "x");
    if (has_res && !all_finite(rp, x.numel())) raise_nonfinite("add_rms_norm", "residual");
  }
  return {normed, summed};
}

std::vector<at::Tensor> add_rms_norm_bwd(const at::Tensor& dnormed, const opt_tensor& dsummed,
                                         const at::Tensor& summed, const at::Tensor& weight, double eps) {
  TORCH_CHECK(summed.device().is_cpu() && summed.scalar_type() == at::kFloat && summed.is_contiguous() &&
                  summed.dim() >= 1 && dnormed.sizes() == summed.sizes() && dnormed.scalar_type() == at::kFloat &&
                  dnormed.is_contiguous(),
              "vimzoo add_rms_norm_bwd: dnormed and summed must be contiguous fp32 CPU tensors of one shape");
  const int64_t C = summed.size(-1), rows = C ? summed.numel() / C : 0;
  TORCH_CHECK(weight.dim() == 1 && weight.numel() == C && weight.scalar_type() == at::kFloat,
              "vimzoo add_rms_norm_bwd: weight (C,) fp32");
  const bool has_ds = dsummed.has_value() && dsummed->defined();
  TORCH_CHECK(!has_ds || (dsummed->sizes() == summed.sizes() && dsummed->scalar_type() == at::kFloat &&
                          dsummed->is_contiguous()),
              "vimzoo add_rms_norm_bwd: dsummed must match summed");
  const at::Tensor w = weight.contiguous();
  const int64_t nthreads = at::get_num_threads();
  auto ds = at::empty_like(summed);
  auto dw_parts = at::zeros({nthreads, C}, summed.options());   // per-thread partial sums of dw
  const float *sp = summed.data_ptr<float>(), *gp = dnormed.data_ptr<float>(), *wp = w.data_ptr<float>();
  const float* dsp = has_ds ? dsummed->data_ptr<float>() : nullptr;
  float* op = ds.data_ptr<float>();
  float* parts = dw_parts.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    float* dw = parts + at::get_thread_num() * C;
    for (int64_t r = r0; r < r1; ++r) {
      const float *sr = sp + r * C, *gr = gp + r * C;
      float ss = 0.0f, dot = 0.0f;   // Σ s², Σ (g·w)·s
#pragma omp simd reduction(+ : ss, dot)
      for (int64_t c = 0; c < C; ++c) {
        ss += sr[c] * sr[c];
        dot += gr[c] * wp[c] * sr[c];
      }
      const float rs = 1.0f / std::sqrt(ss / static_cast<float>(C) + static_cast<float>(eps));
      const float k = rs * dot / static_cast<float>(C);   // mean((g·w)·n̂) with n̂ = s·r
      float* orow = op + r * C;
      const float* dsr = dsp != nullptr ? dsp + r * C : nullptr;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float nhat = sr[c] * rs;
        orow[c] = rs * (gr[c] * wp[c] - nhat * k) + (dsr != nullptr ? dsr[c] : 0.0f);
        dw[c] += gr[c] * nhat;
      }
    }
  });
  return {ds, dw_parts.sum(0)};
}

}  // namespace vimzoo::cpu
