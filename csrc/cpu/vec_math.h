// Branch-free fp32 math for the CPU kernels (vectorisable); fp64 uses libm (gradcheck-grade runs only).
//
// V is a scalar (float / double: generic state sizes) or an 8- / 16-wide GCC vector of float. GCC vector
// extensions map to AVX-512 / AVX2 when the build enables them (vimzoo/ops/_loader.py) and to narrower pairs
// otherwise. The 16-lane functions (exp2_fast, sigmoid_fast, softplus_fast, ...) serve every kernel that works on
// 16 channels or 16 tokens at a time; AVX-512 intrinsics are used where they save instructions.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace vimzoo::cpu {

// ---------------------------------------------------------------------------------------------------------------
// Branch-free fp32 math (vectorisable); fp64 uses libm (only used for gradcheck-grade runs).
// ---------------------------------------------------------------------------------------------------------------
// exp: Cephes-style range reduction + degree-6 polynomial, rel. error ~1e-7; input clamped to [-87, 88].
static inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float fx = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(fx) + 127) << 23;
  return p * std::bit_cast<float>(e);
}
static inline float exp_c(float x) { return exp_approx(x); }
static inline double exp_c(double x) { return std::exp(x); }
static inline double softplus_c(double x) { return x <= 20.0 ? std::log1p(std::exp(x)) : x; }
static inline double sigmoid_c(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// ---------------------------------------------------------------------------------------------------------------
// SIMD abstraction for the state loops: V is a scalar (float/double: generic n) or an 8-wide GCC vector of float
// or 16-wide GCC vector of float (n % 8 / n % 16 == 0; Mamba's n = 16 is one 16-wide vector). GCC vector extensions
// map to AVX-512 / AVX2 when the build enables them (see vimzoo/ops/_loader.py) and to narrower pairs otherwise.
// ---------------------------------------------------------------------------------------------------------------
typedef float v4f __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

template <typename VF>
static inline VF splatv(float x) {
  return VF{} + x;
}
static inline v8f splat8(float x) { return splatv<v8f>(x); }

static inline float hsum(v4f v) { return (v[0] + v[2]) + (v[1] + v[3]); }
static inline float hsum(v8f v) {
  return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
}
static inline float hsum(v16f v) {
  return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
              __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
}

// Same algorithm as exp_approx, on 8 or 16 lanes (VI: the matching int32 vector).
template <typename VF, typename VI>
static inline VF expv(VF x) {
  const VF lo = splatv<VF>(-87.0f), hi = splatv<VF>(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const VF t = x * splatv<VF>(1.44269504088896341f) + splatv<VF>(0.5f);
  VI ti = __builtin_convertvector(t, VI);               // truncation ...
  ti = ti + (t < __builtin_convertvector(ti, VF));      // ... corrected to floor (mask is -1)
  const VF fx = __builtin_convertvector(ti, VF);
  VF r = x - fx * splatv<VF>(0.693359375f);
  r = r + fx * splatv<VF>(2.12194440e-4f);
  const VF r2 = r * r;
  VF p = splatv<VF>(1.9875691500e-4f);
  p = p * r + splatv<VF>(1.3981999507e-3f);
  p = p * r + splatv<VF>(8.3334519073e-3f);
  p = p * r + splatv<VF>(4.1665795894e-2f);
  p = p * r + splatv<VF>(1.6666665459e-1f);
  p = p * r + splatv<VF>(5.0000001201e-1f);
  p = p * r2 + r + splatv<VF>(1.0f);
  const VI e = (ti + 127) << 23;
  VF scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

template <typename V>
struct VecOps;
template <typename T>
struct ScalarOps {
  using S = T;
  static constexpr int W = 1;
  static inline T load(const T* p) { return *p; }
  static inline void store(T* p, T v) { *p = v; }
  static inline T splat(T x) { return x; }
  static inline T sum(T v) { return v; }
  static inline T exp(T x) { return exp_c(x); }
};
template <>
struct VecOps<float> : ScalarOps<float> {};
template <>
struct VecOps<double> : ScalarOps<double> {};
template <typename VF, typename VI>
struct FloatVecOps {
  using S = float;
  static constexpr int W = sizeof(VF) / sizeof(float);
  static inline VF load(const float* p) {
    VF v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static inline void store(float* p, VF v) { std::memcpy(p, &v, sizeof(v)); }
  static inline VF splat(float x) { return splatv<VF>(x); }
  static inline float sum(VF v) { return hsum(v); }
  static inline VF exp(VF x) { return expv<VF, VI>(x); }
};
template <>
struct VecOps<v8f> : FloatVecOps<v8f, v8i> {};
template <>
struct VecOps<v16f> : FloatVecOps<v16f, v16i> {};

// ---------------------------------------------------------------------------------------------------------------
// 16-lane fp32 math shared by every kernel (AVX-512 intrinsics where they save instructions, generic otherwise).
// ---------------------------------------------------------------------------------------------------------------
constexpr int kLanes = 16;
constexpr float kLog2e = 1.44269504088896341f;

// 2^x: i = round(x), 2^(x - i) by a degree-5 minimax polynomial on [-0.5, 0.5] (rel. error 1.9e-7, ~2 ulp),
// times 2^i. AVX-512: roundscale + scalef (which also gives 0 / inf for huge |x|, so no clamp: 9 instructions);
// otherwise x is clamped to [-126, 126] and 2^i built from the exponent bits.
static inline v16f exp2_fast(v16f x) {
#if defined(__AVX512F__)
  const v16f i = (v16f)_mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  x = x < -126.0f ? splatv<v16f>(-126.0f) : x;
  x = x > 126.0f ? splatv<v16f>(126.0f) : x;
  v16i ti = __builtin_convertvector(x + (x < 0.0f ? splatv<v16f>(-0.5f) : splatv<v16f>(0.5f)), v16i);
  const v16f i = __builtin_convertvector(ti, v16f);
#endif
  const v16f f = x - i;
  v16f p = splatv<v16f>(1.326472731307149e-3f);  // fitted with p(0) = 1 exactly: no drift when Δ·A ≈ 0
  p = p * f + 9.671512991189957e-3f;
  p = p * f + 5.550733581185341e-2f;
  p = p * f + 2.4022242426872253e-1f;
  p = p * f + 6.931470036506653e-1f;
  p = p * f + 1.0f;
#if defined(__AVX512F__)
  return (v16f)_mm512_scalef_ps((__m512)p, (__m512)i);
#else
  const v16i e = (__builtin_convertvector(i, v16i) + 127) << 23;
  v16f scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
#endif
}
// 1/d: rcp14 + one Newton step (rel. error ~1e-8) instead of a division (several times slower on AVX-512).
static inline v16f recip_fast(v16f d) {
#if defined(__AVX512F__)
  const v16f r = (v16f)_mm512_rcp14_ps((__m512)d);
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
}
// σ(x) = 1 / (1 + 2^(-x·log2 e)); the exponent is capped at 126 so that very negative x gives ~2^-126, not 1/inf
// (the reciprocal's Newton step would turn that into NaN).
static inline v16f sigmoid_fast(v16f x) {
  const v16f t = x * -kLog2e;
  return recip_fast(exp2_fast(t > 126.0f ? splatv<v16f>(126.0f) : t) + 1.0f);
}
static inline v16f silu_fast(v16f x) { return x * sigmoid_fast(x); }
// softplus(x) = max(x, 0) + log1p(e^-|x|), log1p(e) = 2 atanh(s) with s = e / (2 + e) in [0, 1/3]: odd series to
// s^13 (truncation < 2e-8). Equals torch's softplus (threshold 20) to fp32 rounding: above 20 the log1p term is
// below half an ulp of x.
static inline v16f softplus_fast(v16f x) {
  const v16f ax = x < 0.0f ? -x : x;
  const v16f e = exp2_fast(ax * -kLog2e);
  const v16f sv = e * recip_fast(e + 2.0f);
  const v16f s2 = sv * sv;
  v16f p = splatv<v16f>(1.0f / 13.0f);
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return (x > 0.0f ? x : splatv<v16f>(0.0f)) + 2.0f * sv * p;
}

// In-place softplus / sigmoid over a token array: 16 lanes at a time for fp32 (the tail through a zero-padded
// vector), libm for fp64 (gradcheck-grade runs).
template <typename acc_t, typename VecFn, typename ScalarFn>
void map_array(acc_t* x, int64_t L, VecFn vec_fn, ScalarFn scalar_fn) {
  if constexpr (std::is_same_v<acc_t, float>) {
    int64_t t = 0;
    for (; t + kLanes <= L; t += kLanes) VecOps<v16f>::store(x + t, vec_fn(VecOps<v16f>::load(x + t)));
    if (t < L) {
      float tail[kLanes] = {};
      std::memcpy(tail, x + t, (L - t) * sizeof(float));
      VecOps<v16f>::store(tail, vec_fn(VecOps<v16f>::load(tail)));
      std::memcpy(x + t, tail, (L - t) * sizeof(float));
    }
  } else {
    for (int64_t t = 0; t < L; ++t) x[t] = scalar_fn(x[t]);
  }
}
template <typename acc_t>
void softplus_array(acc_t* x, int64_t L) {
  map_array(x, L, softplus_fast, [](acc_t v) { return softplus_c(v); });
}
template <typename acc_t>
void sigmoid_array(acc_t* x, int64_t L) {
  map_array(x, L, sigmoid_fast, [](acc_t v) { return sigmoid_c(v); });
}

// ---------------------------------------------------------------------------------------------------------------
// Finiteness (NaN / inf) checks while reading.
// ---------------------------------------------------------------------------------------------------------------
// Σ x·0 is 0 for finite x and NaN as soon as one x is NaN/inf: a vectorisable finiteness check.
template <typename acc_t>
bool all_finite(const acc_t* __restrict x, int64_t n) {
  acc_t chk = 0;
#pragma omp simd reduction(+ : chk)
  for (int64_t i = 0; i < n; ++i) chk += x[i] * acc_t(0);
  return chk == acc_t(0);
}

// A witness vector accumulates x·0 over the inputs it read: any non-zero lane means a NaN / inf went by.
inline bool witness_bad(v16f chk) {
  for (int j = 0; j < kLanes; ++j)
    if (chk[j] != 0.0f) return true;
  return false;
}

}  // namespace vimzoo::cpu
