// The selective-scan recurrences, written once per memory layout and shared by the forward and backward kernels.
//
//   state step (Mamba):     a_k = exp(Δ_k·A),  b_k = Δ_k·u_k·B_k,  h_k = a_k·h_{k-1} + b_k
//   local step (LBMamba):   r_k = a_k·hb_{k+1},  hb_k = r_k + b_k     (window-local backward state, hb = 0 past a
//                                                                      window's last step)
// in scan order k (position t = k, or L-1-k when reversed), for one vector of states. The steps are pure functions
// of values: callers load and store (and keep a, b, h for a later pass or accumulate C·h), so the compiler sees
// exactly the arithmetic and no pointer aliasing.
//
// Row layout: one channel per call; V holds VW consecutive states n (contiguous in A, B_t, C_t and the work
// buffers). Token-major layout: 16 channels per v16f vector, one vector per state n, B / C of a token scalar
// broadcasts, and the decay uses exp2 with A pre-scaled by log2(e) (A2).
#pragma once

#include "vec_math.h"

namespace vimzoo::cpu {

template <typename V>
struct StateStep {
  V a, b, h;   // decay a_k, input b_k, new state h_k
};

template <typename V>
struct LocalStep {
  V r, hb;     // r_k = a_k·hb_{k+1}, new local state hb_k
};

// Row layout: vd, vdu are Δ_k and Δ_k·u_k broadcast; A_n, B_n the states' A and B_k.
template <typename V>
inline StateStep<V> row_state_step(V vd, V vdu, V A_n, V B_n, V h_prev) {
  const V a = VecOps<V>::exp(vd * A_n);
  const V b = vdu * B_n;
  return {a, b, a * h_prev + b};
}

// Token-major layout: vd, vdu per channel; A2_n = A·log2(e) per channel; B_n the token's (scalar) B for state n.
inline StateStep<v16f> tm_state_step(v16f vd, v16f vdu, v16f A2_n, float B_n, v16f h_prev) {
  const v16f a = exp2_fast(vd * A2_n);
  const v16f b = vdu * B_n;
  return {a, b, a * h_prev + b};
}

// Both layouts: hb_k = a_k·hb_{k+1} + b_k.
template <typename V>
inline LocalStep<V> local_step(V a, V b, V hb_next) {
  const V r = a * hb_next;
  return {r, r + b};
}

}  // namespace vimzoo::cpu
