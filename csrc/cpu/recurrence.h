// The selective-scan recurrences, written once per memory layout and shared by the forward and backward kernels.
//
//   state step (Mamba):     a_k = exp(Δ_k·A),  b_k = Δ_k·u_k·B_k,  h_k = a_k·h_{k-1} + b_k
//   local step (LBMamba):   r_k = a_k·hb_{k+1},  hb_k = r_k + b_k     (window-local backward state, hb = 0 past a
//                                                                      window's last step)
// in scan order k (position t = k, or L-1-k when reversed). Each step calls `each(n, ...)` once per vector of
// states so the caller can keep (a, b, h) for a later pass or accumulate C·h, without a second copy of the loop.
//
// Row layout: one channel per call; the state dim n is contiguous (A row, B_t / C_t rows, work buffers), V holds
// VW consecutive states. Token-major layout: 16 channels per v16f vector, one vector per state n, B / C of a token
// are scalar broadcasts, and the decay uses exp2 with A pre-scaled by log2(e) (A2).
#pragma once

#include <cstdint>

#include "vec_math.h"

namespace vimzoo::cpu {

// ------------------------------------------------------------------------------------------------- row layout
template <typename V, int NC, typename Each>
inline void row_state_step(int64_t Nr, V vd, V vdu, const typename VecOps<V>::S* __restrict A,
                           const typename VecOps<V>::S* __restrict b, typename VecOps<V>::S* __restrict h,
                           Each&& each) {
  using O = VecOps<V>;
  const int64_t N = NC > 0 ? NC : Nr;
  for (int64_t n = 0; n < N; n += O::W) {
    const V a = O::exp(vd * O::load(A + n));
    const V bv = vdu * O::load(b + n);
    const V hv = a * O::load(h + n) + bv;
    O::store(h + n, hv);
    each(n, a, bv, hv);
  }
}

// hb_out = a·hb_in + b (hb_in may equal hb_out: a running state); each(n, r = a·hb_in, hb_out).
template <typename V, int NC, typename Each>
inline void row_local_step(int64_t Nr, const typename VecOps<V>::S* a, const typename VecOps<V>::S* b,
                           const typename VecOps<V>::S* hb_in, typename VecOps<V>::S* hb_out, Each&& each) {
  using O = VecOps<V>;
  const int64_t N = NC > 0 ? NC : Nr;
  for (int64_t n = 0; n < N; n += O::W) {
    const V r = O::load(a + n) * O::load(hb_in + n);
    const V hv = r + O::load(b + n);
    O::store(hb_out + n, hv);
    each(n, r, hv);
  }
}

// -------------------------------------------------------------------------------------- token-major layout
// States are visited in pairs (n, n + 1) so callers can keep two independent accumulators (shorter add chains).
template <int NC, typename Each>
inline void tm_state_step(int64_t Nr, v16f vd, v16f vdu, const v16f* __restrict A2, const float* __restrict b,
                          v16f* __restrict h, Each&& each) {
  const int64_t N = NC > 0 ? NC : Nr;
  auto one = [&](int64_t n) {
    const v16f a = exp2_fast(vd * A2[n]);
    const v16f bv = vdu * b[n];
    h[n] = a * h[n] + bv;
    each(n, a, bv, h[n]);
  };
  for (int64_t n = 0; n < N; n += 2) {
    one(n);
    if (n + 1 < N) one(n + 1);
  }
}

template <int NC, typename Each>
inline void tm_local_step(int64_t Nr, const v16f* a, const v16f* b, v16f* hb, Each&& each) {
  const int64_t N = NC > 0 ? NC : Nr;
  for (int64_t n = 0; n < N; ++n) {
    const v16f r = a[n] * hb[n];
    hb[n] = r + b[n];
    each(n, r, hb[n]);
  }
}

}  // namespace vimzoo::cpu
