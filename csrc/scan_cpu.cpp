// vimzoo CPU selective-scan kernels: plain / reverse / locally bi-directional (LBMamba) / bidirectional.
//
// Layout contract (prepared by vimzoo/ops/_ops.py): u, delta, z, dout (b, d, l) contiguous in the input dtype;
// A (d, n), D, delta_bias (d,) and Bt, Ct (b, l, n) contiguous in the compute dtype (fp32; fp64 for fp64 input).
// One (batch, channel) row per task (at::parallel_for over b*d, rows handed out dynamically). Per row, vectorised
// pre-passes over the tokens compute Δ = softplus(δ + bias), Δu and σ(z); the scan then walks "scan order"
// k = 0..l-1 (position t = k, or l-1-k when reverse: no flips are materialised) with inner loops over the state
// dim n, contiguous in Bt/Ct and in the work buffers, written with 8/16-lane GCC vector types and a branch-free
// polynomial exp. n = 16 (Mamba's d_state) gets a compile-time-sized instantiation.
// Math: docs/kernels.md and vimzoo/ops/reference.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

using opt_tensor = std::optional<at::Tensor>;

template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

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
// Per-row token pre-pass (vectorised over tokens, original order).
// ---------------------------------------------------------------------------------------------------------------
// Σ x·0 is 0 for finite x and NaN as soon as one x is NaN/inf: a vectorisable finiteness check.
template <typename acc_t>
bool all_finite(const acc_t* __restrict x, int64_t n) {
  acc_t chk = 0;
#pragma omp simd reduction(+ : chk)
  for (int64_t i = 0; i < n; ++i) chk += x[i] * acc_t(0);
  return chk == acc_t(0);
}

enum NonFinite : int { kBadU = 1, kBadDelta = 2, kBadZ = 4 };

// Returns NonFinite bits for u / delta (delta checked before the bias and softplus).
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

struct Shape {
  int64_t L, N, W;
  bool reverse;
  inline int64_t pos(int64_t k) const { return reverse ? L - 1 - k : k; }
};

// Forward scan of one row: y[t] = Σ_n C h (original order, un-gated, without D·u).
// `work` >= 2*N + 3*W*N. NC > 0 fixes N at compile time.
template <typename V, int NC>
void scan_row_fwd(const Shape& s, const typename VecOps<V>::S* __restrict A, const typename VecOps<V>::S* __restrict Bt,
                  const typename VecOps<V>::S* __restrict Ct, const typename VecOps<V>::S* __restrict dt,
                  const typename VecOps<V>::S* __restrict dtu, typename VecOps<V>::S* __restrict y,
                  typename VecOps<V>::S* __restrict work) {
  using O = VecOps<V>;
  using acc_t = typename O::S;
  constexpr int VW = O::W;
  const int64_t L = s.L, N = NC > 0 ? NC : s.N, W = s.W;
  acc_t* __restrict h = work;
  acc_t* __restrict hb = work + N;
  for (int64_t n = 0; n < N; ++n) h[n] = 0;
  if (W <= 1) {
    for (int64_t k = 0; k < L; ++k) {
      const int64_t t = s.pos(k);
      const V vd = O::splat(dt[t]), vdu = O::splat(dtu[t]);
      const acc_t* __restrict b = Bt + t * N;
      const acc_t* __restrict c = Ct + t * N;
      V acc = O::splat(0);
      for (int64_t n = 0; n < N; n += VW) {
        const V hv = O::exp(vd * O::load(A + n)) * O::load(h + n) + vdu * O::load(b + n);
        O::store(h + n, hv);
        acc += hv * O::load(c + n);
      }
      y[t] = O::sum(acc);
    }
    return;
  }
  // LB: per window, pass 1 runs the global forward scan keeping (a, b, hf); pass 2 runs the local backward scan
  // in reverse scan order (hb restarted at each window end) and emits y = C·(hf + a_k·hb_{k+1}) — one dot per token.
  acc_t* __restrict abuf = work + 2 * N;
  acc_t* __restrict bbuf = abuf + W * N;
  acc_t* __restrict hbuf = bbuf + W * N;
  for (int64_t k0 = 0; k0 < L; k0 += W) {
    const int64_t k1 = std::min(k0 + W, L);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t = s.pos(k);
      const V vd = O::splat(dt[t]), vdu = O::splat(dtu[t]);
      const acc_t* __restrict b = Bt + t * N;
      acc_t* __restrict ak = abuf + (k - k0) * N;
      acc_t* __restrict bk = bbuf + (k - k0) * N;
      acc_t* __restrict hk = hbuf + (k - k0) * N;
      for (int64_t n = 0; n < N; n += VW) {
        const V a = O::exp(vd * O::load(A + n));
        const V bv = vdu * O::load(b + n);
        O::store(ak + n, a);
        O::store(bk + n, bv);
        const V hv = a * O::load(h + n) + bv;
        O::store(h + n, hv);
        O::store(hk + n, hv);
      }
    }
    for (int64_t n = 0; n < N; ++n) hb[n] = 0;
    for (int64_t k = k1 - 1; k >= k0; --k) {
      const int64_t t = s.pos(k);
      const acc_t* __restrict c = Ct + t * N;
      const acc_t* __restrict ak = abuf + (k - k0) * N;
      const acc_t* __restrict bk = bbuf + (k - k0) * N;
      const acc_t* __restrict hk = hbuf + (k - k0) * N;
      V acc = O::splat(0);
      for (int64_t n = 0; n < N; n += VW) {
        const V rr = O::load(ak + n) * O::load(hb + n);
        O::store(hb + n, rr + O::load(bk + n));
        acc += (O::load(hk + n) + rr) * O::load(c + n);
      }
      y[t] = O::sum(acc);
    }
  }
}

template <typename acc_t>
void scan_row_fwd_any(const Shape& s, const acc_t* A, const acc_t* Bt, const acc_t* Ct, const acc_t* dt,
                      const acc_t* dtu, acc_t* y, acc_t* work) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (s.N == 16) return scan_row_fwd<v16f, 16>(s, A, Bt, Ct, dt, dtu, y, work);
    if (s.N % 16 == 0) return scan_row_fwd<v16f, 0>(s, A, Bt, Ct, dt, dtu, y, work);
    if (s.N % 8 == 0) return scan_row_fwd<v8f, 0>(s, A, Bt, Ct, dt, dtu, y, work);
  }
  scan_row_fwd<acc_t, 0>(s, A, Bt, Ct, dt, dtu, y, work);
}

// Row buffers for the forward pass.
template <typename acc_t>
struct FwdBuffers {
  std::vector<acc_t> work, dt, dtu, uf, y, zs, sg;
  FwdBuffers(int64_t L, int64_t N, int64_t W)
      : work(2 * N + 3 * W * N + 1), dt(L), dtu(L), uf(L), y(L), zs(L), sg(L) {}
};

// y (un-gated, with D·u) of one direction for row (bi, di).
template <typename in_t, typename acc_t>
int row_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                 const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, bool softplus_, const Shape& s,
                 int64_t bi, int64_t di, FwdBuffers<acc_t>& buf, acc_t* y) {
  const int64_t Dm = u.size(1), L = s.L, N = s.N;
  const int64_t row = bi * Dm + di;
  const acc_t bv = bias.has_value() ? bias->data_ptr<acc_t>()[di] : acc_t(0);
  const acc_t Dv = D.has_value() ? D->data_ptr<acc_t>()[di] : acc_t(0);
  const int bad = token_prepass(u.data_ptr<in_t>() + row * L, delta.data_ptr<in_t>() + row * L, bv, softplus_, L,
                                buf.dt.data(), buf.dtu.data(), buf.uf.data());
  scan_row_fwd_any(s, A.data_ptr<acc_t>() + di * N, Bt.data_ptr<acc_t>() + bi * L * N,
                   Ct.data_ptr<acc_t>() + bi * L * N, buf.dt.data(), buf.dtu.data(), y, buf.work.data());
  const acc_t* uf = buf.uf.data();
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) y[t] += Dv * uf[t];
  return bad;
}

template <typename in_t, typename acc_t>
int gate_store(const acc_t* __restrict y, const in_t* z, int64_t L, acc_t* __restrict zs, acc_t* __restrict sg,
               in_t* out) {
  if (z != nullptr) {
    for (int64_t t = 0; t < L; ++t) zs[t] = sg[t] = static_cast<acc_t>(z[t]);
    const int bad = all_finite(zs, L) ? 0 : kBadZ;
    sigmoid_array(sg, L);
    for (int64_t t = 0; t < L; ++t) zs[t] = y[t] * zs[t] * sg[t];  // y · silu(z)
    for (int64_t t = 0; t < L; ++t) out[t] = static_cast<in_t>(zs[t]);
    return bad;
  }
  for (int64_t t = 0; t < L; ++t) out[t] = static_cast<in_t>(y[t]);
  return 0;
}

// NaN/inf checks with the same messages (and Python ValueError) as vimzoo/ops/_check.py.
void raise_nonfinite(const char* op, const std::string& name) {
  TORCH_CHECK_VALUE(false, op, ": ", name, " contains NaN or inf values.");
}
void check_params_finite(const char* op, const std::string& sfx, const at::Tensor& A, const at::Tensor& Bt,
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
void check_rows_finite(const char* op, int bad, const std::string& sfx) {
  if (bad & kBadU) raise_nonfinite(op, "u" + sfx);
  if (bad & kBadDelta) raise_nonfinite(op, "delta" + sfx);
  if (bad & kBadZ) raise_nonfinite(op, "z");
}

// Rows are handed out dynamically (threads pull small chunks from a shared counter) so that a thread that is
// descheduled on a busy machine does not hold a fixed share of the work; each thread keeps its own buffers.
template <typename Setup, typename Body>
void parallel_rows(int64_t total, Setup&& setup, Body&& body) {
  if (total <= 0) return;
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total));
  const int64_t chunk = std::max<int64_t>(1, total / (16 * nthreads));
  std::atomic<int64_t> next{0}, slots{0};
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    auto state = setup(slots.fetch_add(1));  // slot < nthreads: indexes per-worker accumulation buffers
    for (;;) {
      const int64_t r0 = next.fetch_add(chunk);
      if (r0 >= total) break;
      const int64_t r1 = std::min(r0 + chunk, total);
      for (int64_t row = r0; row < r1; ++row) body(state, row);
    }
  });
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                  const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias) {
  TORCH_CHECK(u.device().is_cpu(), "vimzoo scan_cpu: tensors must be on the CPU");
  TORCH_CHECK(u.dim() == 3 && u.is_contiguous() && delta.is_contiguous() && delta.sizes() == u.sizes(),
              "vimzoo scan_cpu: u/delta must be contiguous (b, d, l) of equal shape");
  TORCH_CHECK(delta.scalar_type() == u.scalar_type(), "vimzoo scan_cpu: delta dtype must equal u dtype");
  const auto acc = u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = u.size(0), Dm = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == Dm && A.is_contiguous() && A.scalar_type() == acc,
              "vimzoo scan_cpu: A must be (d, n) contiguous in the compute dtype");
  const int64_t N = A.size(1);
  for (const at::Tensor* t : {&Bt, &Ct}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == B && t->size(1) == L && t->size(2) == N && t->is_contiguous() &&
                    t->scalar_type() == acc,
                "vimzoo scan_cpu: B/C must be (b, l, n) contiguous in the compute dtype");
  }
  for (const opt_tensor* t : {&D, &bias}) {
    if (t->has_value()) {
      TORCH_CHECK((*t)->numel() == Dm && (*t)->is_contiguous() && (*t)->scalar_type() == acc,
                  "vimzoo scan_cpu: D/delta_bias must be (d,) contiguous in the compute dtype");
    }
  }
  if (z.has_value()) {
    TORCH_CHECK(z->sizes() == u.sizes() && z->is_contiguous() && z->scalar_type() == u.scalar_type(),
                "vimzoo scan_cpu: z must match u");
  }
}

at::Tensor scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                    const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                    bool softplus_, bool reverse, int64_t W, bool check_finite) {
  check_inputs(u, delta, A, Bt, Ct, D, z, bias);
  if (check_finite) check_params_finite("selective_scan", "", A, Bt, Ct, D, bias);
  std::atomic<int> bad{0};
  auto out = at::empty_like(u);
  const int64_t Bsz = u.size(0), Dm = u.size(1), L = u.size(2), N = A.size(1);
  const Shape s{L, N, std::min(std::max<int64_t>(W, 1), L), reverse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "vimzoo_scan_fwd", [&] {
    using acc_t = acc_of<scalar_t>;
    parallel_rows(
        Bsz * Dm, [&](int64_t) { return FwdBuffers<acc_t>(L, N, s.W); },
        [&](FwdBuffers<acc_t>& buf, int64_t row) {
          int f = row_forward<scalar_t, acc_t>(u, delta, A, Bt, Ct, D, bias, softplus_, s, row / Dm, row % Dm, buf,
                                               buf.y.data());
          f |= gate_store(buf.y.data(), z.has_value() ? z->data_ptr<scalar_t>() + row * L : nullptr, L,
                          buf.zs.data(), buf.sg.data(), out.data_ptr<scalar_t>() + row * L);
          if (f) bad.fetch_or(f);
        });
  });
  if (check_finite) check_rows_finite("selective_scan", bad.load(), "");
  return out;
}

at::Tensor bidir_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                     const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, const at::Tensor& u_b,
                     const at::Tensor& delta_b, const at::Tensor& A_b, const at::Tensor& Bt_b, const at::Tensor& Ct_b,
                     const opt_tensor& D_b, const opt_tensor& bias_b, const opt_tensor& z, bool softplus_,
                     bool check_finite) {
  check_inputs(u, delta, A, Bt, Ct, D, z, bias);
  check_inputs(u_b, delta_b, A_b, Bt_b, Ct_b, D_b, z, bias_b);
  const char* op = "bidirectional_selective_scan";
  if (check_finite) {
    check_params_finite(op, "", A, Bt, Ct, D, bias);
    check_params_finite(op, "_b", A_b, Bt_b, Ct_b, D_b, bias_b);
  }
  std::atomic<int> bad{0}, bad_b{0};
  TORCH_CHECK(u_b.sizes() == u.sizes() && u_b.scalar_type() == u.scalar_type() && A_b.sizes() == A.sizes(),
              "vimzoo bidir_fwd: both directions must have equal shapes/dtypes");
  auto out = at::empty_like(u);
  const int64_t Bsz = u.size(0), Dm = u.size(1), L = u.size(2), N = A.size(1);
  const Shape sf{L, N, 1, false}, sb{L, N, 1, true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "vimzoo_bidir_fwd", [&] {
    using acc_t = acc_of<scalar_t>;
    parallel_rows(
        Bsz * Dm, [&](int64_t) { return std::make_pair(FwdBuffers<acc_t>(L, N, 1), std::vector<acc_t>(L)); },
        [&](auto& st, int64_t row) {
          auto& buf = st.first;
          auto& yb = st.second;
          const int64_t bi = row / Dm, di = row % Dm;
          int f = row_forward<scalar_t, acc_t>(u, delta, A, Bt, Ct, D, bias, softplus_, sf, bi, di, buf,
                                               buf.y.data());
          const int fb = row_forward<scalar_t, acc_t>(u_b, delta_b, A_b, Bt_b, Ct_b, D_b, bias_b, softplus_, sb, bi,
                                                      di, buf, yb.data());
          for (int64_t t = 0; t < L; ++t) buf.y[t] += yb[t];
          f |= gate_store(buf.y.data(), z.has_value() ? z->data_ptr<scalar_t>() + row * L : nullptr, L,
                          buf.zs.data(), buf.sg.data(), out.data_ptr<scalar_t>() + row * L);
          if (f) bad.fetch_or(f);
          if (fb) bad_b.fetch_or(fb);
        });
  });
  if (check_finite) {
    check_rows_finite(op, bad.load(), "");
    check_rows_finite(op, bad_b.load(), "_b");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Backward. Per row: recompute (a, b, hf) for the whole row in scan order, then walk the windows last to first:
// a reverse pass rebuilds the local state hb and the global adjoint dxl; a forward pass runs the window-local
// adjoint dxr and accumulates every gradient (research §3.3; W = 1 is the plain Mamba backward).
// ---------------------------------------------------------------------------------------------------------------
template <typename acc_t>
struct BwdBuffers {
  // abuf keeps a_k at row k+1 with zero rows before and after, so a_{k-1} / a_{k+1} loads stay in bounds.
  std::vector<acc_t> abuf, bbuf, hf, hbw, dxlw, carry, dxr, dA_acc, dt, dtu, uf, g, zf, sz, sig, y;
  BwdBuffers(int64_t L, int64_t N, int64_t W)
      : abuf((L + 2) * N), bbuf(L * N), hf(L * N), hbw((W + 1) * N), dxlw(W * N), carry(N), dxr(N), dA_acc(N),
        dt(L), dtu(L), uf(L), g(L), zf(L), sz(L), sig(L), y(L) {}
};

template <typename V, int NC>
void scan_row_bwd(const Shape& s, const typename VecOps<V>::S* __restrict A,
                  const typename VecOps<V>::S* __restrict Bt, const typename VecOps<V>::S* __restrict Ct,
                  BwdBuffers<typename VecOps<V>::S>& bf, typename VecOps<V>::S* __restrict dB,
                  typename VecOps<V>::S* __restrict dC, typename VecOps<V>::S* __restrict du_acc,
                  typename VecOps<V>::S* __restrict ddt_acc, typename VecOps<V>::S* __restrict y) {
  using O = VecOps<V>;
  using acc_t = typename O::S;
  constexpr int VW = O::W;
  const int64_t L = s.L, N = NC > 0 ? NC : s.N, W = s.W;
  const acc_t* __restrict dt = bf.dt.data();
  const acc_t* __restrict dtu = bf.dtu.data();
  const acc_t* __restrict g = bf.g.data();
  acc_t* __restrict abuf = bf.abuf.data();
  acc_t* __restrict bbuf = bf.bbuf.data();
  acc_t* __restrict hf = bf.hf.data();
  acc_t* __restrict hbw = bf.hbw.data();
  acc_t* __restrict dxlw = bf.dxlw.data();
  acc_t* __restrict cr = bf.carry.data();
  acc_t* __restrict xr = bf.dxr.data();
  acc_t* __restrict dAa = bf.dA_acc.data();
  // 1) forward recompute.
  for (int64_t n = 0; n < N; ++n) cr[n] = 0;
  for (int64_t k = 0; k < L; ++k) {
    const int64_t t = s.pos(k);
    const V vd = O::splat(dt[t]), vdu = O::splat(dtu[t]);
    const acc_t* __restrict b = Bt + t * N;
    acc_t* __restrict ak = abuf + (k + 1) * N;
    acc_t* __restrict bk = bbuf + k * N;
    acc_t* __restrict hk = hf + k * N;
    for (int64_t n = 0; n < N; n += VW) {
      const V a = O::exp(vd * O::load(A + n));
      const V bv = vdu * O::load(b + n);
      O::store(ak + n, a);
      O::store(bk + n, bv);
      const V h = a * O::load(cr + n) + bv;
      O::store(cr + n, h);
      O::store(hk + n, h);
    }
  }
  // 2) windows, last to first.
  for (int64_t n = 0; n < N; ++n) {
    cr[n] = 0;  // dxl_{k+1}
    dAa[n] = 0;
  }
  const int64_t nwin = (L + W - 1) / W;
  for (int64_t w = nwin - 1; w >= 0; --w) {
    const int64_t k0 = w * W, k1 = std::min(k0 + W, L);
    for (int64_t k = k1 - 1; k >= k0; --k) {  // 2a) reverse: hb (local) and dxl (global adjoint)
      const int64_t t = s.pos(k);
      const V vg = O::splat(g[t]);
      const acc_t* __restrict c = Ct + t * N;
      const acc_t* __restrict ak = abuf + (k + 1) * N;
      const acc_t* __restrict anext = abuf + (k + 2) * N;  // zero row past the end
      const acc_t* __restrict bk = bbuf + k * N;
      acc_t* __restrict hbk = hbw + (k - k0) * N;
      const acc_t* __restrict hbnext = hbw + (k + 1 - k0) * N;
      acc_t* __restrict dxl = dxlw + (k - k0) * N;
      const bool wend = (k + 1 == k1);
      for (int64_t n = 0; n < N; n += VW) {
        const V bv = O::load(bk + n);
        O::store(hbk + n, wend ? bv : O::load(ak + n) * O::load(hbnext + n) + bv);
        const V x = vg * O::load(c + n) + O::load(anext + n) * O::load(cr + n);
        O::store(cr + n, x);
        O::store(dxl + n, x);
      }
    }
    for (int64_t k = k0; k < k1; ++k) {  // 2b) forward: dxr (restarted at the window start) and gradients
      const int64_t t = s.pos(k);
      const V vd = O::splat(dt[t]), vdu = O::splat(dtu[t]), vg = O::splat(g[t]);
      const acc_t* __restrict b = Bt + t * N;
      const acc_t* __restrict c = Ct + t * N;
      const acc_t* __restrict aprev = abuf + k * N;  // a_{k-1}
      const acc_t* __restrict bk = bbuf + k * N;
      const acc_t* __restrict hk = hf + k * N;
      const acc_t* __restrict hbk = hbw + (k - k0) * N;
      const acc_t* __restrict dxl = dxlw + (k - k0) * N;
      acc_t* __restrict dBk = dB + t * N;
      acc_t* __restrict dCk = dC + t * N;
      const bool wstart = (k == k0);
      V s_dbB = O::splat(0), s_gAA = O::splat(0), s_y = O::splat(0);
      for (int64_t n = 0; n < N; n += VW) {
        const V cv = O::load(c + n);
        const V G = vg * cv;
        const V x = wstart ? G : G + O::load(aprev + n) * O::load(xr + n);
        O::store(xr + n, x);
        const V xl = O::load(dxl + n), bv = O::load(bk + n), hfk = O::load(hk + n), hbv = O::load(hbk + n);
        const V db = xl + x - G;
        const V gA = xl * (hfk - bv) + x * (hbv - bv);
        const V h = hfk + hbv - bv;
        s_dbB += db * O::load(b + n);
        s_gAA += gA * O::load(A + n);
        s_y += h * cv;
        O::store(dAa + n, O::load(dAa + n) + vd * gA);
        O::store(dBk + n, O::load(dBk + n) + db * vdu);
        O::store(dCk + n, O::load(dCk + n) + vg * h);
      }
      du_acc[t] = O::sum(s_dbB);   // Σ_n db·B: the caller multiplies by Δ (for du) and by u (for dΔ)
      ddt_acc[t] = O::sum(s_gAA);  // Σ_n A·gA
      y[t] = O::sum(s_y);          // Σ_n C·h (for dz)
    }
  }
}

template <typename in_t>
void scan_bwd_rows(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                   const at::Tensor& Bt, const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z,
                   const opt_tensor& bias, bool softplus_, const Shape& s, int64_t nthreads, at::Tensor& du,
                   at::Tensor& ddelta, at::Tensor& dz, at::Tensor& dA_rows, at::Tensor& dD_rows,
                   at::Tensor& dbias_rows, at::Tensor& dBt_thr, at::Tensor& dCt_thr) {
  using acc_t = acc_of<in_t>;
  const int64_t Bsz = u.size(0), Dm = u.size(1), L = s.L, N = s.N;
  struct State {
    int64_t tid;
    BwdBuffers<acc_t> bf;
    std::vector<acc_t> sdbB, sgAA;
  };
  auto setup = [&](int64_t tid) {
    TORCH_CHECK(tid >= 0 && tid < nthreads, "vimzoo scan_bwd: more workers than accumulation slots");
    return State{tid, BwdBuffers<acc_t>(L, N, s.W), std::vector<acc_t>(L), std::vector<acc_t>(L)};
  };
  parallel_rows(Bsz * Dm, setup, [&](State& st, int64_t row) {
      const int64_t tid = st.tid;
      auto& bf = st.bf;
      auto& sdbB = st.sdbB;
      auto& sgAA = st.sgAA;
      const int64_t bi = row / Dm, di = row % Dm;
      const acc_t bv = bias.has_value() ? bias->data_ptr<acc_t>()[di] : acc_t(0);
      const acc_t Dv = D.has_value() ? D->data_ptr<acc_t>()[di] : acc_t(0);
      (void)token_prepass(u.data_ptr<in_t>() + row * L, delta.data_ptr<in_t>() + row * L, bv, softplus_, L,
                          bf.dt.data(), bf.dtu.data(), bf.uf.data());
      // g = dout · silu(z); sig = dsoftplus = sigmoid(δ + bias).
      const in_t* go = dout.data_ptr<in_t>() + row * L;
      acc_t* __restrict gg = bf.g.data();
      acc_t* __restrict zf = bf.zf.data();
      for (int64_t t = 0; t < L; ++t) gg[t] = static_cast<acc_t>(go[t]);
      if (z.has_value()) {
        const in_t* zz = z->data_ptr<in_t>() + row * L;
        acc_t* __restrict sz = bf.sz.data();
        for (int64_t t = 0; t < L; ++t) zf[t] = sz[t] = static_cast<acc_t>(zz[t]);
        sigmoid_array(sz, L);
        for (int64_t t = 0; t < L; ++t) gg[t] *= zf[t] * sz[t];  // dout · silu(z)
      }
      acc_t* __restrict sig = bf.sig.data();
      if (softplus_) {
        const in_t* dl = delta.data_ptr<in_t>() + row * L;
        for (int64_t t = 0; t < L; ++t) sig[t] = static_cast<acc_t>(dl[t]) + bv;
        sigmoid_array(sig, L);
      }
      acc_t* dB = dBt_thr.data_ptr<acc_t>() + (tid * Bsz + bi) * L * N;
      acc_t* dC = dCt_thr.data_ptr<acc_t>() + (tid * Bsz + bi) * L * N;
      const acc_t* Ar = A.data_ptr<acc_t>() + di * N;
      const acc_t* Btr = Bt.data_ptr<acc_t>() + bi * L * N;
      const acc_t* Ctr = Ct.data_ptr<acc_t>() + bi * L * N;
      bool done = false;
      if constexpr (std::is_same_v<acc_t, float>) {
        if (N == 16) {
          scan_row_bwd<v16f, 16>(s, Ar, Btr, Ctr, bf, dB, dC, sdbB.data(), sgAA.data(), bf.y.data());
          done = true;
        } else if (N % 16 == 0) {
          scan_row_bwd<v16f, 0>(s, Ar, Btr, Ctr, bf, dB, dC, sdbB.data(), sgAA.data(), bf.y.data());
          done = true;
        } else if (N % 8 == 0) {
          scan_row_bwd<v8f, 0>(s, Ar, Btr, Ctr, bf, dB, dC, sdbB.data(), sgAA.data(), bf.y.data());
          done = true;
        }
      }
      if (!done) scan_row_bwd<acc_t, 0>(s, Ar, Btr, Ctr, bf, dB, dC, sdbB.data(), sgAA.data(), bf.y.data());
      // Per-token outputs (original order).
      const acc_t* uf = bf.uf.data();
      const acc_t* dt = bf.dt.data();
      in_t* du_r = du.data_ptr<in_t>() + row * L;
      in_t* dd_r = ddelta.data_ptr<in_t>() + row * L;
      acc_t dD_acc = 0, dbias_acc = 0;
      const in_t* gout = dout.data_ptr<in_t>() + row * L;
      in_t* dz_r = z.has_value() ? dz.data_ptr<in_t>() + row * L : nullptr;
      for (int64_t t = 0; t < L; ++t) {
        du_r[t] = static_cast<in_t>(sdbB[t] * dt[t] + Dv * gg[t]);
        acc_t ddt = sdbB[t] * uf[t] + sgAA[t];
        if (softplus_) ddt *= sig[t];
        dd_r[t] = static_cast<in_t>(ddt);
        dbias_acc += ddt;
        dD_acc += gg[t] * uf[t];
        if (dz_r) {
          const acc_t sgm = bf.sz[t];  // dsilu(z) = σ(z)(1 + z(1 - σ(z)))
          dz_r[t] = static_cast<in_t>(static_cast<acc_t>(gout[t]) * (bf.y[t] + Dv * uf[t]) * sgm *
                                      (acc_t(1) + zf[t] * (acc_t(1) - sgm)));
        }
      }
      acc_t* dAr = dA_rows.data_ptr<acc_t>() + row * N;
      for (int64_t n = 0; n < N; ++n) dAr[n] = bf.dA_acc[n];
      dD_rows.data_ptr<acc_t>()[row] = dD_acc;
      dbias_rows.data_ptr<acc_t>()[row] = dbias_acc;
  });
}

std::vector<at::Tensor> scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct, const opt_tensor& D,
                                 const opt_tensor& z, const opt_tensor& bias, bool softplus_, bool reverse,
                                 int64_t W) {
  check_inputs(u, delta, A, Bt, Ct, D, z, bias);
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() && dout.scalar_type() == u.scalar_type(),
              "vimzoo scan_bwd: dout must match u");
  const int64_t Bsz = u.size(0), Dm = u.size(1), L = u.size(2), N = A.size(1);
  const Shape s{L, N, std::min(std::max<int64_t>(W, 1), L), reverse};
  const int64_t nthreads = at::get_num_threads();
  auto fopts = A.options();
  auto du = at::empty_like(u), ddelta = at::empty_like(delta);
  auto dz = z.has_value() ? at::empty_like(*z) : at::empty({0}, u.options());
  auto dA_rows = at::zeros({Bsz, Dm, N}, fopts);
  auto dD_rows = at::zeros({Bsz, Dm}, fopts), dbias_rows = at::zeros({Bsz, Dm}, fopts);
  auto dBt_thr = at::zeros({nthreads, Bsz, L, N}, fopts), dCt_thr = at::zeros({nthreads, Bsz, L, N}, fopts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "vimzoo_scan_bwd", [&] {
    scan_bwd_rows<scalar_t>(dout, u, delta, A, Bt, Ct, D, z, bias, softplus_, s, nthreads, du, ddelta, dz, dA_rows,
                            dD_rows, dbias_rows, dBt_thr, dCt_thr);
  });
  auto dA = dA_rows.sum(0);
  auto dD = D.has_value() ? dD_rows.sum(0) : at::empty({0}, fopts);
  auto dbias = bias.has_value() ? dbias_rows.sum(0) : at::empty({0}, fopts);
  auto dBt = nthreads == 1 ? dBt_thr[0] : dBt_thr.sum(0);
  auto dCt = nthreads == 1 ? dCt_thr[0] : dCt_thr.sum(0);
  return {du, ddelta, dA, dBt, dCt, dD, dz, dbias};
}

// ---------------------------------------------------------------------------------------------------------------
// Token-major fast path (forward only): u, delta, z are logical (b, d, l) views whose channels are contiguous
// (stride(1) == 1), i.e. the (b, l, d) activations a Linear produces. 16 channels share one 16-lane vector, so the
// state loop over n has no horizontal sums and no transposes (B, C of a token are scalar broadcasts); the state
// decay uses exp2 with A pre-scaled by log2(e) (AVX-512: roundscale + scalef). Outputs are (b, l, d) in memory,
// returned as (b, d, l) views. Requires fp32 and d % 16 == 0; everything else takes the row kernels above.
// ---------------------------------------------------------------------------------------------------------------
// A strided (b, d, l) fp32 view with contiguous channels: element (bi, c, t) at base + bi*sb + t*st + c.
struct TokView {
  const float* base;
  int64_t sb, st;
  inline const float* at(int64_t bi, int64_t t, int64_t c) const { return base + bi * sb + t * st + c; }
};
TokView tok_view(const at::Tensor& x) { return {x.data_ptr<float>(), x.stride(0), x.stride(2)}; }

bool tok_major_ok(const at::Tensor& x) {
  return x.device().is_cpu() && x.dim() == 3 && x.scalar_type() == at::kFloat && x.stride(1) == 1 &&
         x.size(1) % kLanes == 0;
}
at::Tensor tok_major_empty(const at::Tensor& like) {  // (b, l, d) storage seen as (b, d, l)
  return at::empty({like.size(0), like.size(2), like.size(1)}, like.options()).transpose(1, 2);
}
const float* opt_ptr(const opt_tensor& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

// One scan direction for the token-major kernel. Δ comes either from a (b, d, l) view or, in the fused mixer, as
// the low-rank product Δ[t, c] = Σ_r dt[t, r] Wdt[c, r] (dt_proj without its bias), computed on the fly.
// B / C element (bi, t, n) sits at B + bi*bc_sb + t*bc_st + n (rows of x_proj's output in the fused mixer).
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
  const float* D = nullptr;
  const float* bias = nullptr;
  bool softplus = true, reverse = false;
  int64_t W = 1;
};

constexpr int64_t kChunk = 32;  // tokens per Δ / u pre-pass (an LB window is pre-passed whole)
int64_t tm_work_vecs(int64_t N, int64_t W, int64_t R) { return 2 * N + R + (W > 1 ? 3 * W * N + N : 0); }

// One direction for a block of 16 channels, in scan order; y[t] (16 lanes per token) gets the un-gated output
// C·h + D·u (`accumulate`: added to what y holds). Returns a vector that is non-zero (NaN) iff a u / Δ input was
// NaN or inf.
template <int NC>
v16f scan_block_tm(const TmScan& s, int64_t bi, int64_t c0, int64_t L, int64_t Nr, float* __restrict y,
                   bool accumulate, v16f* __restrict work) {
  const int64_t N = NC > 0 ? NC : Nr, R = s.R, W = s.W;
  using O = VecOps<v16f>;
  v16f* A2 = work;  // A[c0 + j, n] * log2(e) for the 16 channels j
  v16f* h = A2 + N;
  v16f* Wv = h + N;  // Wdt[c0 + j, r]
  for (int64_t n = 0; n < N; ++n) {
    for (int j = 0; j < kLanes; ++j) {
      const float a = s.A[(c0 + j) * N + n];
      A2[n][j] = (s.a_is_log ? -std::exp(a) : a) * kLog2e;
    }
    h[n] = splatv<v16f>(0.0f);
  }
  for (int64_t r = 0; r < R; ++r)
    for (int j = 0; j < kLanes; ++j) Wv[r][j] = s.Wdt[(c0 + j) * R + r];
  const v16f vbias = s.bias ? O::load(s.bias + c0) : splatv<v16f>(0.0f);
  const v16f vD = s.D ? O::load(s.D + c0) : splatv<v16f>(0.0f);
  v16f chk = splatv<v16f>(0.0f);
  const float* Bb = s.B + bi * s.bc_sb;
  const float* Cb = s.C + bi * s.bc_sb;
  // Δ (softplus) and u for a chunk of tokens are computed first, in a loop without a carried dependency, so their
  // long latency chains overlap; the recurrence loop then only waits on h.
  v16f* cd = work + tm_work_vecs(N, W, R);  // chunk Δ vectors, then chunk u vectors (chunk = max(kChunk, W))
  v16f* cu = cd + std::max(kChunk, W);
  auto prep_chunk = [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t = s.reverse ? L - 1 - k : k;
      const v16f vu = O::load(s.u.at(bi, t, c0));
      v16f raw;
      if (s.dt != nullptr) {
        const float* d = s.dt + bi * s.dt_sb + t * s.dt_st;
        v16f r0 = Wv[0] * d[0], r1 = R > 1 ? Wv[1] * d[1] : splatv<v16f>(0.0f);
        for (int64_t r = 2; r + 1 < R; r += 2) {
          r0 += Wv[r] * d[r];
          r1 += Wv[r + 1] * d[r + 1];
        }
        if (R > 2 && (R & 1)) r0 += Wv[R - 1] * d[R - 1];
        raw = r0 + r1;
      } else {
        raw = O::load(s.delta.at(bi, t, c0));
      }
      chk += vu * 0.0f + raw * 0.0f;
      const v16f vd = raw + vbias;
      cd[k - k0] = s.softplus ? softplus_fast(vd) : vd;
      cu[k - k0] = vu;
    }
  };
  if (W <= 1) {
    for (int64_t k = 0; k < L; ++k) {
      if (k % kChunk == 0) prep_chunk(k, std::min(k + kChunk, L));
      const int64_t t = s.reverse ? L - 1 - k : k;
      const v16f vd = cd[k % kChunk], vu = cu[k % kChunk];
      const v16f vdu = vd * vu;
      const float* b = Bb + t * s.bc_st;
      const float* c = Cb + t * s.bc_st;
      v16f acc0 = vD * vu, acc1 = splatv<v16f>(0.0f);
      for (int64_t n = 0; n < N; n += 2) {  // two accumulators: shorter add chains
        h[n] = exp2_fast(vd * A2[n]) * h[n] + vdu * b[n];
        acc0 += h[n] * c[n];
        if (n + 1 < N) {
          h[n + 1] = exp2_fast(vd * A2[n + 1]) * h[n + 1] + vdu * b[n + 1];
          acc1 += h[n + 1] * c[n + 1];
        }
      }
      float* yt = y + t * kLanes;
      O::store(yt, accumulate ? O::load(yt) + acc0 + acc1 : acc0 + acc1);
    }
    return chk;
  }
  // LB: per window, pass 1 = global forward scan keeping a_k, b_k, hf_k; pass 2 = local backward scan in reverse scan
  // order (hb restarted at each window end), y_k = C_k·(hf_k + a_k·hb_{k+1}) + D·u_k (same math as scan_row_fwd).
  v16f* abuf = Wv + R;
  v16f* bbuf = abuf + W * N;
  v16f* hbuf = bbuf + W * N;
  v16f* hb = hbuf + W * N;
  for (int64_t k0 = 0; k0 < L; k0 += W) {
    const int64_t k1 = std::min(k0 + W, L);
    prep_chunk(k0, k1);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t = s.reverse ? L - 1 - k : k;
      const v16f vd = cd[k - k0], vu = cu[k - k0];
      const v16f vdu = vd * vu;
      const float* b = Bb + t * s.bc_st;
      v16f* ak = abuf + (k - k0) * N;
      v16f* bk = bbuf + (k - k0) * N;
      v16f* hk = hbuf + (k - k0) * N;
      for (int64_t n = 0; n < N; ++n) {
        ak[n] = exp2_fast(vd * A2[n]);
        bk[n] = vdu * b[n];
        h[n] = ak[n] * h[n] + bk[n];
        hk[n] = h[n];
      }
    }
    for (int64_t n = 0; n < N; ++n) hb[n] = splatv<v16f>(0.0f);
    for (int64_t k = k1 - 1; k >= k0; --k) {
      const int64_t t = s.reverse ? L - 1 - k : k;
      const float* c = Cb + t * s.bc_st;
      const v16f* ak = abuf + (k - k0) * N;
      const v16f* bk = bbuf + (k - k0) * N;
      const v16f* hk = hbuf + (k - k0) * N;
      v16f acc = vD * O::load(s.u.at(bi, t, c0));
      for (int64_t n = 0; n < N; ++n) {
        const v16f rr = ak[n] * hb[n];
        hb[n] = rr + bk[n];
        acc += (hk[n] + rr) * c[n];
      }
      float* yt = y + t * kLanes;
      O::store(yt, accumulate ? O::load(yt) + acc : acc);
    }
  }
  return chk;
}

v16f scan_block_tm_any(const TmScan& s, int64_t bi, int64_t c0, int64_t L, int64_t N, float* y, bool accumulate,
                       v16f* work) {
  if (N == 16) return scan_block_tm<16>(s, bi, c0, L, N, y, accumulate, work);
  return scan_block_tm<0>(s, bi, c0, L, N, y, accumulate, work);
}

// out[t] = scale·y[t]·silu(z[t]) (or scale·y[t]) for one 16-channel block; returns the z NaN/inf witness.
v16f gate_store_tm(const float* __restrict y, const TokView* z, float scale, float* out, int64_t out_sb,
                   int64_t out_st, int64_t bi, int64_t c0, int64_t L) {
  using O = VecOps<v16f>;
  v16f chk = splatv<v16f>(0.0f);
  for (int64_t t = 0; t < L; ++t) {
    v16f v = O::load(y + t * kLanes);
    if (scale != 1.0f) v *= scale;
    if (z != nullptr) {
      const v16f zv = O::load(z->at(bi, t, c0));
      chk += zv * 0.0f;
      v = v * silu_fast(zv);
    }
    O::store(out + bi * out_sb + t * out_st + c0, v);
  }
  return chk;
}

bool witness_bad(v16f chk) {
  for (int j = 0; j < kLanes; ++j)
    if (chk[j] != 0.0f) return true;
  return false;
}

// Per-worker buffers: y (L tokens x 16 lanes) and the scan work area.
struct TmBuffers {
  std::vector<v16f> y, work;
  TmBuffers(int64_t L, int64_t N, int64_t W, int64_t R) : y(L), work(tm_work_vecs(N, W, R) + 2 * std::max(kChunk, W)) {}
  float* yp() { return reinterpret_cast<float*>(y.data()); }
};

enum TmBad : int { kTmBadIn = 1, kTmBadInB = 2, kTmBadZ = 4 };

// Runs one or two directions (the second accumulates, scanning right-to-left) for every (batch, 16-channel block),
// gates with silu(z), scales, and writes out (b, l, d) memory. Returns TmBad bits.
int scan_tm_run(const TmScan& f, const TmScan* b2, const std::optional<TokView>& z, float scale, int64_t Bsz,
                int64_t Dm, int64_t L, int64_t N, float* out, int64_t out_sb, int64_t out_st) {
  std::atomic<int> bad{0};
  const int64_t nblk = Dm / kLanes;
  const int64_t W = std::max(f.W, b2 ? b2->W : int64_t(1)), R = std::max(f.R, b2 ? b2->R : int64_t(0));
  parallel_rows(
      Bsz * nblk, [&](int64_t) { return TmBuffers(L, N, W, R); },
      [&](TmBuffers& buf, int64_t task) {
        const int64_t bi = task / nblk, c0 = (task % nblk) * kLanes;
        int flags = witness_bad(scan_block_tm_any(f, bi, c0, L, N, buf.yp(), false, buf.work.data())) ? kTmBadIn : 0;
        if (b2 && witness_bad(scan_block_tm_any(*b2, bi, c0, L, N, buf.yp(), true, buf.work.data())))
          flags |= kTmBadInB;
        if (witness_bad(gate_store_tm(buf.yp(), z ? &*z : nullptr, scale, out, out_sb, out_st, bi, c0, L)))
          flags |= kTmBadZ;
        if (flags) bad.fetch_or(flags);
      });
  return bad.load();
}

void check_tm_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                     const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias) {
  TORCH_CHECK(tok_major_ok(u) && tok_major_ok(delta) && delta.sizes() == u.sizes(),
              "vimzoo scan_fwd_tm: u/delta must be fp32 (b, d, l) views with contiguous channels, d % 16 == 0");
  TORCH_CHECK(!z.has_value() || (tok_major_ok(*z) && z->sizes() == u.sizes()), "vimzoo scan_fwd_tm: z must match u");
  const int64_t B = u.size(0), Dm = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == Dm && A.is_contiguous() && A.scalar_type() == at::kFloat,
              "vimzoo scan_fwd_tm: A must be (d, n) contiguous fp32");
  const int64_t N = A.size(1);
  for (const at::Tensor* t : {&Bt, &Ct}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == B && t->size(1) == L && t->size(2) == N && t->is_contiguous() &&
                    t->scalar_type() == at::kFloat,
                "vimzoo scan_fwd_tm: B/C must be (b, l, n) contiguous fp32");
  }
  for (const opt_tensor* t : {&D, &bias}) {
    TORCH_CHECK(!t->has_value() || ((*t)->numel() == Dm && (*t)->is_contiguous() &&
                                    (*t)->scalar_type() == at::kFloat),
                "vimzoo scan_fwd_tm: D/delta_bias must be (d,) contiguous fp32");
  }
}

TmScan tm_scan_of(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                  const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, bool softplus_, bool reverse,
                  int64_t W) {
  TmScan s;
  s.u = tok_view(u);
  s.delta = tok_view(delta);
  s.A = A.data_ptr<float>();
  s.B = Bt.data_ptr<float>();
  s.C = Ct.data_ptr<float>();
  s.bc_sb = Bt.size(1) * Bt.size(2);
  s.bc_st = Bt.size(2);
  s.D = opt_ptr(D);
  s.bias = opt_ptr(bias);
  s.softplus = softplus_;
  s.reverse = reverse;
  s.W = std::min(std::max<int64_t>(W, 1), u.size(2));
  return s;
}

// After an in-kernel witness fired: find which input holds the NaN/inf (same messages as the row kernels).
void check_finite_named(const char* op, const std::string& sfx, const at::Tensor& u, const at::Tensor& delta,
                        const opt_tensor& z) {
  if (!at::isfinite(u).all().item<bool>()) raise_nonfinite(op, "u" + sfx);
  if (!at::isfinite(delta).all().item<bool>()) raise_nonfinite(op, "delta" + sfx);
  if (z.has_value() && !at::isfinite(*z).all().item<bool>()) raise_nonfinite(op, "z");
}

at::Tensor scan_fwd_tm(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                       const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                       bool softplus_, bool reverse, int64_t W, bool check_finite) {
  check_tm_inputs(u, delta, A, Bt, Ct, D, z, bias);
  if (check_finite) check_params_finite("selective_scan", "", A, Bt, Ct, D, bias);
  auto out = tok_major_empty(u);
  const TmScan s = tm_scan_of(u, delta, A, Bt, Ct, D, bias, softplus_, reverse, W);
  const std::optional<TokView> zv = z.has_value() ? std::optional<TokView>(tok_view(*z)) : std::nullopt;
  const int bad = scan_tm_run(s, nullptr, zv, 1.0f, u.size(0), u.size(1), u.size(2), A.size(1), out.data_ptr<float>(),
                              out.stride(0), out.stride(2));
  if (check_finite && bad) check_finite_named("selective_scan", "", u, delta, z);  // names the culprit (rare path)
  return out;
}

at::Tensor bidir_fwd_tm(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                        const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, const at::Tensor& u_b,
                        const at::Tensor& delta_b, const at::Tensor& A_b, const at::Tensor& Bt_b,
                        const at::Tensor& Ct_b, const opt_tensor& D_b, const opt_tensor& bias_b, const opt_tensor& z,
                        bool softplus_, bool check_finite) {
  check_tm_inputs(u, delta, A, Bt, Ct, D, z, bias);
  check_tm_inputs(u_b, delta_b, A_b, Bt_b, Ct_b, D_b, z, bias_b);
  TORCH_CHECK(u_b.sizes() == u.sizes() && A_b.sizes() == A.sizes(), "vimzoo bidir_fwd_tm: directions differ in shape");
  const char* op = "bidirectional_selective_scan";
  if (check_finite) {
    check_params_finite(op, "", A, Bt, Ct, D, bias);
    check_params_finite(op, "_b", A_b, Bt_b, Ct_b, D_b, bias_b);
  }
  auto out = tok_major_empty(u);
  const TmScan f = tm_scan_of(u, delta, A, Bt, Ct, D, bias, softplus_, false, 1);
  const TmScan b = tm_scan_of(u_b, delta_b, A_b, Bt_b, Ct_b, D_b, bias_b, softplus_, true, 1);
  const std::optional<TokView> zv = z.has_value() ? std::optional<TokView>(tok_view(*z)) : std::nullopt;
  const int bad = scan_tm_run(f, &b, zv, 1.0f, u.size(0), u.size(1), u.size(2), A.size(1), out.data_ptr<float>(),
                              out.stride(0), out.stride(2));
  if (check_finite && bad) {
    check_finite_named(op, "", u, delta, z);
    check_finite_named(op, "_b", u_b, delta_b, std::nullopt);
  }
  return out;
}

// Depthwise causal conv (+ SiLU) of a channel-contiguous view into (b, l, d) memory:
// out_t = Σ_j w[k-1-j] x_{t∓j} + bias. Returns true iff x held a NaN/inf.
bool conv_tm_into(const TokView& xv, const float* w, const float* bias, int64_t K, bool silu, bool reverse,
                  int64_t Bsz, int64_t Dm, int64_t L, float* o, int64_t ob, int64_t ot) {
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

void check_conv_params(const char* op, const std::string& sfx, const at::Tensor& w, const at::Tensor& b) {
  if (!all_finite(w.data_ptr<float>(), w.numel())) raise_nonfinite(op, "weight" + sfx);
  if (b.defined() && !all_finite(b.data_ptr<float>(), b.numel())) raise_nonfinite(op, "bias" + sfx);
}

at::Tensor causal_conv1d_tm(const at::Tensor& x, const at::Tensor& weight, const opt_tensor& bias, bool silu,
                            bool reverse, bool check_finite) {
  TORCH_CHECK(tok_major_ok(x), "vimzoo causal_conv1d_tm: x must be an fp32 (b, d, l) view with contiguous channels");
  const int64_t Dm = x.size(1);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == Dm && weight.scalar_type() == at::kFloat,
              "vimzoo causal_conv1d_tm: weight must be (d, k) fp32");
  TORCH_CHECK(!bias.has_value() || (bias->numel() == Dm && bias->scalar_type() == at::kFloat),
              "vimzoo causal_conv1d_tm: bias must be (d,) fp32");
  const at::Tensor w = weight.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  if (check_finite) check_conv_params("causal_conv1d", "", w, bc);
  auto out = tok_major_empty(x);
  const bool bad = conv_tm_into(tok_view(x), w.data_ptr<float>(), bc.defined() ? bc.data_ptr<float>() : nullptr,
                                w.size(1), silu, reverse, x.size(0), Dm, x.size(2), out.data_ptr<float>(),
                                out.stride(0), out.stride(2));
  if (check_finite && bad) raise_nonfinite("causal_conv1d", "x");
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Fused mixer core for inference (the CPU counterpart of the official `mamba_inner_fn` / `bimamba_inner_fn`, minus
// in_proj / out_proj): xz (b, l, 2d) = in_proj output -> causal conv + SiLU -> x_proj -> scan (Δ = softplus(dt_proj
// + bias) computed inside the scan) -> gate by silu(z) -> scale; both directions when the `_b` weights are given.
// Returns (b, l, d). Forward only: vimzoo/ops routes training through the differentiable ops.
// ---------------------------------------------------------------------------------------------------------------
struct MixerDir {
  at::Tensor conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A, D;  // A holds A_log
};

at::Tensor mamba_inner_fwd(const at::Tensor& xz, const std::vector<at::Tensor>& fwd,
                           const std::vector<at::Tensor>& bwd, bool reverse, int64_t W, double scale,
                           bool check_finite) {
  const char* op = "mamba_inner";
  TORCH_CHECK(xz.dim() == 3 && xz.is_contiguous() && xz.scalar_type() == at::kFloat && xz.device().is_cpu(),
              "vimzoo mamba_inner_fwd: xz must be a contiguous fp32 CPU (b, l, 2d) tensor");
  const int64_t Bsz = xz.size(0), L = xz.size(1), Dm = xz.size(2) / 2;
  TORCH_CHECK(xz.size(2) == 2 * Dm && Dm % kLanes == 0, "vimzoo mamba_inner_fwd: 2d channels with d % 16 == 0");
  auto unpack = [&](const std::vector<at::Tensor>& p) {
    TORCH_CHECK(p.size() == 7, "vimzoo mamba_inner_fwd: each direction takes 7 tensors");
    MixerDir d{p[0].reshape({p[0].size(0), -1}).contiguous(), p[1].numel() ? p[1].contiguous() : at::Tensor(),
               p[2].contiguous(), p[3].contiguous(), p[4].contiguous(), p[5].contiguous(), p[6].contiguous()};
    for (const at::Tensor* t : {&d.conv_w, &d.x_proj_w, &d.dt_proj_w, &d.dt_bias, &d.A, &d.D})
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu(), "vimzoo mamba_inner_fwd: fp32 CPU weights");
    TORCH_CHECK(d.conv_w.dim() == 2 && d.conv_w.size(0) == Dm && d.A.dim() == 2 && d.A.size(0) == Dm &&
                    d.dt_proj_w.dim() == 2 && d.dt_proj_w.size(0) == Dm && d.dt_bias.numel() == Dm &&
                    d.D.numel() == Dm && d.x_proj_w.dim() == 2 && d.x_proj_w.size(1) == Dm &&
                    d.x_proj_w.size(0) == d.dt_proj_w.size(1) + 2 * d.A.size(1),
                "vimzoo mamba_inner_fwd: weight shapes do not match d = ", Dm);
    return d;
  };
  const MixerDir f = unpack(fwd);
  const bool bidir = !bwd.empty();
  const MixerDir b = bidir ? unpack(bwd) : f;
  const int64_t N = f.A.size(1), R = f.dt_proj_w.size(1), S = R + 2 * N;
  TORCH_CHECK(b.A.size(1) == N && b.dt_proj_w.size(1) == R, "vimzoo mamba_inner_fwd: directions differ in shape");
  if (check_finite) {
    for (const auto& [d, sfx] : {std::pair<const MixerDir*, std::string>{&f, ""}, {&b, "_b"}}) {
      if (!bidir && sfx == "_b") continue;
      check_conv_params(op, "conv1d.weight" + sfx, d->conv_w, d->conv_b);
      for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"x_proj.weight", &d->x_proj_w},
                                    {"dt_proj.weight", &d->dt_proj_w}, {"dt_proj.bias", &d->dt_bias}, {"A_log", &d->A},
                                    {"D", &d->D}}) {
        if (!all_finite(t->data_ptr<float>(), t->numel())) raise_nonfinite(op, name + sfx);
      }
    }
  }
  const TokView xv{xz.data_ptr<float>(), L * 2 * Dm, 2 * Dm};
  const TokView zv{xz.data_ptr<float>() + Dm, L * 2 * Dm, 2 * Dm};
  const int ndir = bidir ? 2 : 1;
  auto U = at::empty({ndir, Bsz, L, Dm}, xz.options());
  bool bad_x = false;
  std::vector<at::Tensor> xdbl;
  for (int i = 0; i < ndir; ++i) {
    const MixerDir& d = i == 0 ? f : b;
    const bool rev = i == 0 ? reverse : true;
    bad_x |= conv_tm_into(xv, d.conv_w.data_ptr<float>(), d.conv_b.defined() ? d.conv_b.data_ptr<float>() : nullptr,
                          d.conv_w.size(1), true, rev, Bsz, Dm, L, U[i].data_ptr<float>(), L * Dm, Dm);
    xdbl.push_back(at::linear(U[i], d.x_proj_w));  // (b, l, R + 2N)
  }
  if (check_finite && bad_x) raise_nonfinite(op, "x");
  auto make = [&](int i) {
    const MixerDir& d = i == 0 ? f : b;
    TmScan s;
    s.u = TokView{U[i].data_ptr<float>(), L * Dm, Dm};
    const float* xd = xdbl[i].data_ptr<float>();
    s.dt = xd;
    s.Wdt = d.dt_proj_w.data_ptr<float>();
    s.dt_sb = L * S;
    s.dt_st = S;
    s.R = R;
    s.A = d.A.data_ptr<float>();
    s.a_is_log = true;
    s.B = xd + R;
    s.C = xd + R + N;
    s.bc_sb = L * S;
    s.bc_st = S;
    s.D = d.D.data_ptr<float>();
    s.bias = d.dt_bias.data_ptr<float>();
    s.softplus = true;
    s.reverse = i == 0 ? reverse : true;
    s.W = i == 0 ? std::min(std::max<int64_t>(W, 1), L) : 1;
    return s;
  };
  const TmScan sf = make(0);
  const TmScan sb = bidir ? make(1) : sf;
  auto out = at::empty({Bsz, L, Dm}, xz.options());
  const int bad = scan_tm_run(sf, bidir ? &sb : nullptr, zv, static_cast<float>(scale), Bsz, Dm, L, N,
                              out.data_ptr<float>(), L * Dm, Dm);
  if (check_finite && (bad & kTmBadZ)) raise_nonfinite(op, "z");
  if (check_finite && (bad & (kTmBadIn | kTmBadInB))) raise_nonfinite(op, "the scan input (x_proj / dt_proj output)");
  return out;
}

// Fused residual add + RMSNorm for inference (mamba_ssm's `rms_norm_fn(x, w, None, residual, prenorm=True)`):
// summed = x + residual, normed = summed * rsqrt(mean(summed²) + eps) * w, both fp32 (b..., C) contiguous.
std::vector<at::Tensor> add_rms_norm_fwd(const at::Tensor& x, const opt_tensor& residual, const at::Tensor& weight,
                                         double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() >= 1,
              "vimzoo add_rms_norm_fwd: x must be a contiguous fp32 CPU tensor");
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  TORCH_CHECK(weight.numel() == C && weight.scalar_type() == at::kFloat, "vimzoo add_rms_norm_fwd: weight (C,) fp32");
  const bool has_res = residual.has_value() && residual->numel();
  TORCH_CHECK(!has_res || (residual->sizes() == x.sizes() && residual->scalar_type() == at::kFloat &&
                           residual->is_contiguous()),
              "vimzoo add_rms_norm_fwd: residual must match x");
  const at::Tensor w = weight.contiguous();
  auto summed = has_res ? at::empty_like(x) : x.clone();  // an op output must not alias its input
  auto normed = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* rp = has_res ? residual->data_ptr<float>() : nullptr;
  const float* wp = w.data_ptr<float>();
  float* sp = summed.data_ptr<float>();
  float* np_ = normed.data_ptr<float>();
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
      const float scale = 1.0f / std::sqrt(ss / static_cast<float>(C) + static_cast<float>(eps));
      float* nr = np_ + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) nr[c] = sr[c] * scale * wp[c];
    }
  });
  return {normed, summed};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vimzoo CPU selective-scan kernels (plain / reverse / LB / bidirectional; forward + backward)";
  m.def("scan_fwd", &scan_fwd, "selective scan forward (gated by silu(z) when given); ValueError on NaN/inf input");
  m.def("scan_bwd", &scan_bwd, "selective scan backward (recomputes states): du, ddelta, dA, dBt, dCt, dD, dz, dbias");
  m.def("bidir_fwd", &bidir_fwd, "fused forward + reverse scan, gated by silu(z); ValueError on NaN/inf input");
  m.def("scan_fwd_tm", &scan_fwd_tm, "scan_fwd for fp32 channel-contiguous (b, d, l) views; output likewise");
  m.def("bidir_fwd_tm", &bidir_fwd_tm, "bidir_fwd for fp32 channel-contiguous (b, d, l) views; output likewise");
  m.def("causal_conv1d_tm", &causal_conv1d_tm, "depthwise causal conv (+SiLU) on channel-contiguous (b, d, l) views");
  m.def("mamba_inner_fwd", &mamba_inner_fwd, "fused inference mixer core: xz -> conv -> x_proj -> scan -> gate");
  m.def("add_rms_norm_fwd", &add_rms_norm_fwd, "fused residual add + RMSNorm (inference): (normed, summed)");
  m.def("built_with_openmp", [] {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  }, "whether at::parallel_for in this build can fork (the extension must be compiled with OpenMP)");
}
