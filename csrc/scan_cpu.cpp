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
// log for x >= 1 (normal): Cephes logf polynomial, rel. error ~1e-7.
static inline float log_approx(float x) {
  int32_t bits = std::bit_cast<int32_t>(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}
static inline float softplus_f(float x) {  // torch's threshold: identity above 20
  const float y = exp_approx(x < 20.0f ? x : 20.0f);
  const float w = 1.0f + y;
  const float l1p = (w == 1.0f) ? y : log_approx(w) * (y / (w - 1.0f));  // log1p with Goldberg's correction
  return x > 20.0f ? x : l1p;
}
static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

static inline float exp_c(float x) { return exp_approx(x); }
static inline double exp_c(double x) { return std::exp(x); }
static inline float softplus_c(float x) { return softplus_f(x); }
static inline double softplus_c(double x) { return x <= 20.0 ? std::log1p(std::exp(x)) : x; }
static inline float sigmoid_c(float x) { return sigmoid_f(x); }
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

// Same algorithm as log_approx (x >= 1), 16 lanes.
static inline v16f logv(v16f x) {
  v16i bits;
  std::memcpy(&bits, &x, sizeof(bits));
  v16f e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, v16f);
  const v16i mb = (bits & 0x007fffff) | 0x3f000000;
  v16f m;
  std::memcpy(&m, &mb, sizeof(m));
  const v16i small = m < splatv<v16f>(0.707106781186547524f);
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const v16f z = m * m;
  v16f y = splatv<v16f>(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}
static inline v16f softplusv(v16f x) {  // as softplus_f
  const v16f twenty = splatv<v16f>(20.0f);
  const v16f y = expv<v16f, v16i>(x < twenty ? x : twenty);
  const v16f w = y + 1.0f;
  const v16f l1p = (w == 1.0f) ? y : logv(w) * (y / (w - 1.0f));
  return x > twenty ? x : l1p;
}
static inline v16f sigmoidv(v16f x) { return 1.0f / (expv<v16f, v16i>(-x) + 1.0f); }

// In-place softplus / sigmoid over a token array (16 lanes at a time for fp32, libm-grade scalar for fp64).
template <typename acc_t>
void softplus_array(acc_t* x, int64_t L) {
  int64_t t = 0;
  if constexpr (std::is_same_v<acc_t, float>) {
    for (; t + 16 <= L; t += 16) VecOps<v16f>::store(x + t, softplusv(VecOps<v16f>::load(x + t)));
  }
  for (; t < L; ++t) x[t] = softplus_c(x[t]);
}
template <typename acc_t>
void sigmoid_array(acc_t* x, int64_t L) {
  int64_t t = 0;
  if constexpr (std::is_same_v<acc_t, float>) {
    for (; t + 16 <= L; t += 16) VecOps<v16f>::store(x + t, sigmoidv(VecOps<v16f>::load(x + t)));
  }
  for (; t < L; ++t) x[t] = sigmoid_c(x[t]);
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vimzoo CPU selective-scan kernels (plain / reverse / LB / bidirectional; forward + backward)";
  m.def("scan_fwd", &scan_fwd, "selective scan forward (gated by silu(z) when given); ValueError on NaN/inf input");
  m.def("scan_bwd", &scan_bwd, "selective scan backward (recomputes states): du, ddelta, dA, dBt, dCt, dD, dz, dbias");
  m.def("bidir_fwd", &bidir_fwd, "fused forward + reverse scan, gated by silu(z); ValueError on NaN/inf input");
}
