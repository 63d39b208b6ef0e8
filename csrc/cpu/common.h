// What every CPU kernel file shares: tensor aliases, the scan's shape and order, the per-row token pre-pass, the
// NaN/inf reporting (same messages as vimzoo/ops/_validate.py) and the dynamic row scheduler.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "../common/finite_check.h"
#include "vec_math.h"

namespace vimzoo::cpu {

using opt_tensor = std::optional<at::Tensor>;
using vimzoo::raise_nonfinite;

// Accumulation dtype of an input dtype: fp64 for fp64 (gradcheck), fp32 otherwise.
template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// One scan's extent: L tokens, N states, local window W (1 = plain scan); `reverse` walks scan step k over
// position t = L-1-k, so no flipped copies are ever made.
struct Shape {
  int64_t L, N, W;
  bool reverse;
  inline int64_t pos(int64_t k) const { return reverse ? L - 1 - k : k; }
};

// Which of a row's token inputs held a NaN / inf.
enum NonFinite : int { kBadU = 1, kBadDelta = 2, kBadZ = 4 };

// Per-row pre-pass in original token order: Δ = softplus(δ + bias) (or δ + bias), Δu and u in the accumulation
// dtype. Returns NonFinite bits for u / δ (δ checked before the bias and softplus).
template <typename in_t, typename acc_t>
int token_prepass(const in_t* __restrict u, const in_t* __restrict delta, acc_t bias, bool softplus_, int64_t L,
                  acc_t* __restrict dt, acc_t* __restrict dtu, acc_t* __restrict uf) {
  for (int64_t t = 0; t < L; ++t) uf[t] = static_cast<acc_t>(u[t]);
  for (int64_t t = 0; t < L; ++t) dt[t] = static_cast<acc_t>(delta[t]);
  const int bad = (all_finite(uf, L) ? 0 : kBadU) | (all_finite(dt, L) ? 0 : kBadDelta);
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) dt[t] += bias;
  if (softplus_) softplus_array(dt, L);
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) dtu[t] = dt[t] * uf[t];
  return bad;
}

// A, B, C, D, delta_bias (fp32 or fp64, contiguous): raise naming the first non-finite one (`sfx`: "" or "_b").
inline void check_params_finite(const char* op, const std::string& sfx, const at::Tensor& A, const at::Tensor& Bt,
                                const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias) {
  const std::pair<const char*, const at::Tensor*> items[] = {{"A", &A}, {"B", &Bt}, {"C", &Ct},
                                                             {"D", D ? &*D : nullptr},
                                                             {"delta_bias", bias ? &*bias : nullptr}};
  for (const auto& [name, t] : items) {
    if (t == nullptr) continue;
    const bool ok = t->scalar_type() == at::kDouble ? all_finite(t->data_ptr<double>(), t->numel())
                                                     : all_finite(t->data_ptr<float>(), t->numel());
    if (!ok) raise_nonfinite(op, name + sfx);
  }
}

inline void check_rows_finite(const char* op, int bad, const std::string& sfx) {
  if (bad & kBadU) raise_nonfinite(op, "u" + sfx);
  if (bad & kBadDelta) raise_nonfinite(op, "delta" + sfx);
  if (bad & kBadZ) raise_nonfinite(op, "z");
}

// Rows are handed out dynamically (threads pull small chunks from a shared counter) so that a thread that is
// descheduled on a busy machine does not hold a fixed share of the work; each thread keeps its own buffers
// (`setup(slot)` with slot < number of workers, for per-worker accumulators). A given `chunk` (> 0) hands out
// exactly [k·chunk, (k + 1)·chunk) ranges, each to one thread, in order.
template <typename Setup, typename Body>
void parallel_rows(int64_t total, Setup&& setup, Body&& body, int64_t chunk = 0) {
  if (total <= 0) return;
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total));
  if (chunk <= 0) chunk = std::max<int64_t>(1, total / (16 * nthreads));
  std::atomic<int64_t> next{0}, slots{0};
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    auto state = setup(slots.fetch_add(1));
    for (;;) {
      const int64_t r0 = next.fetch_add(chunk);
      if (r0 >= total) break;
      const int64_t r1 = std::min(r0 + chunk, total);
      for (int64_t row = r0; row < r1; ++row) body(state, row);
    }
  });
}

}  // namespace vimzoo::cpu
