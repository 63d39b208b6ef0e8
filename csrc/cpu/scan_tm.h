// Token-major scan machinery shared by scan_tm.cpp, conv.cpp and mixer.cpp.
//
// u, delta, z are logical (b, d, l) fp32 views whose channels are contiguous (stride(1) == 1), i.e. the (b, l, d)
// activations a Linear produces. 16 channels share one 16-lane vector, so the state loop over n has no horizontal
// sums and no transposes (B, C of a token are scalar broadcasts). Requires d % 16 == 0.
#pragma once

#include <cmath>
#include <optional>

#include "common.h"

namespace vimzoo::cpu {

// A strided (b, d, l) fp32 view with contiguous channels: element (bi, c, t) at base + bi*sb + t*st + c.
struct TokView {
  const float* base;
  int64_t sb, st;
  inline const float* at(int64_t bi, int64_t t, int64_t c) const { return base + bi * sb + t * st + c; }
};
inline TokView tok_view(const at::Tensor& x) { return {x.data_ptr<float>(), x.stride(0), x.stride(2)}; }
inline bool tok_major_ok(const at::Tensor& x) {
  return x.device().is_cpu() && x.dim() == 3 && x.scalar_type() == at::kFloat && x.stride(1) == 1 &&
         x.size(1) % kLanes == 0;
}
inline at::Tensor tok_major_empty(const at::Tensor& like) {  // (b, l, d) storage seen as (b, d, l)
  return at::empty({like.size(0), like.size(2), like.size(1)}, like.options()).transpose(1, 2);
}
inline const float* opt_ptr(const opt_tensor& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

// One scan direction. Δ comes either from a (b, d, l) view or, in the fused mixer, as the low-rank product
// Δ[t, c] = Σ_r dt[t, r] Wdt[c, r] (dt_proj without its bias), computed on the fly. B / C element (bi, t, n) sits at
// B + bi*bc_sb + t*bc_st + n (rows of x_proj's output in the fused mixer).
struct TmScan {
  TokView u{}, delta{};
  const float* dt = nullptr;
  const float* Wdt = nullptr;
  int64_t dt_sb = 0, dt_st = 0, R = 0;
  const float* A = nullptr;  // A (d, n), or A_log when a_is_log (A = -exp(A_log), formed per block)
  bool a_is_log = false;
  const float* B = nullptr;
  const float* C = nullptr;
  int64_t bc_sb = 0, bc_st = 0;
  const float* D = nullptr;     // may be null
  const float* bias = nullptr;  // may be null
  bool softplus = true, reverse = false;
  int64_t W = 1;
};

enum TmBad : int { kTmBadIn = 1, kTmBadInB = 2, kTmBadZ = 4 };

// A of the 16 channels c0.. as one vector per state n: A2 = A·log2(e) (for exp2) and, if An != null, A itself.
inline void tm_load_A(const TmScan& s, int64_t c0, int64_t N, v16f* A2, v16f* An) {
  for (int64_t n = 0; n < N; ++n) {
    for (int j = 0; j < kLanes; ++j) {
      const float a = s.A[(c0 + j) * N + n];
      const float an = s.a_is_log ? -std::exp(a) : a;
      A2[n][j] = an * kLog2e;
      if (An != nullptr) An[n][j] = an;
    }
  }
}

// δ of token t for the 16 channels c0.. before bias and softplus: the (b, d, l) view, or the low-rank product
// Σ_r dt[t, r] Wdt[c, r] with Wv[r] = Wdt[c0.., r] (two accumulators: shorter add chains).
inline v16f tm_delta_raw(const TmScan& s, const v16f* Wv, int64_t bi, int64_t t, int64_t c0) {
  if (s.dt == nullptr) return VecOps<v16f>::load(s.delta.at(bi, t, c0));
  const int64_t R = s.R;
  const float* d = s.dt + bi * s.dt_sb + t * s.dt_st;
  v16f r0 = Wv[0] * d[0], r1 = R > 1 ? Wv[1] * d[1] : splatv<v16f>(0.0f);
  for (int64_t r = 2; r + 1 < R; r += 2) {
    r0 += Wv[r] * d[r];
    r1 += Wv[r + 1] * d[r + 1];
  }
  if (R > 2 && (R & 1)) r0 += Wv[R - 1] * d[R - 1];
  return r0 + r1;
}

// Runs one or two directions (the second accumulates, scanning right-to-left) for every (batch, 16-channel block),
// gates with silu(z), scales, and writes out (b, l, d) memory at out + bi*out_sb + t*out_st + c. Returns TmBad bits.
int scan_tm_run(const TmScan& f, const TmScan* b2, const std::optional<TokView>& z, float scale, int64_t Bsz,
                int64_t Dm, int64_t L, int64_t N, float* out, int64_t out_sb, int64_t out_st);

// Depthwise causal conv (+ SiLU) of a channel-contiguous view into (b, l, d) memory:
// out_t = Σ_j w[k-1-j] x_{t∓j} + bias. Returns true iff x held a NaN/inf. K >= 1.
bool conv_tm_into(const TokView& xv, const float* w, const float* bias, int64_t K, bool silu, bool reverse,
                  int64_t Bsz, int64_t Dm, int64_t L, float* o, int64_t ob, int64_t ot);

}  // namespace vimzoo::cpu
