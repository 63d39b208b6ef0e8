// Row-layout forward scans: plain / reverse / locally bi-directional (LBMamba) and the fused bidirectional scan.
//
// One (batch, channel) row per task (rows handed out dynamically). Per row, vectorised pre-passes over the tokens
// compute Δ = softplus(δ + bias), Δu and σ(z); the scan then walks scan order with the state dim n in vectors
// (recurrence.h). n = 16 (Mamba's d_state) gets a compile-time-sized instantiation. Any float input dtype.
#include "kernels.h"
#include "recurrence.h"
#include "scan_rows.h"

#include <vector>

namespace vimzoo::cpu {
namespace {

// y[t] = Σ_n C h of one row (original order, un-gated, without D·u). `work` >= 2*N + 3*W*N.
template <typename V, int NC>
void scan_row_fwd(const Shape& s, const typename VecOps<V>::S* __restrict A, const typename VecOps<V>::S* __restrict Bt,
                  const typename VecOps<V>::S* __restrict Ct, const typename VecOps<V>::S* __restrict dt,
                  const typename VecOps<V>::S* __restrict dtu, typename VecOps<V>::S* __restrict y,
                  typename VecOps<V>::S* __restrict work) {
  using O = VecOps<V>;
  using acc_t = typename O::S;
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
      for (int64_t n = 0; n < N; n += O::W) {
        const V hv = row_state_step(vd, vdu, O::load(A + n), O::load(b + n), O::load(h + n)).h;
        O::store(h + n, hv);
        acc += hv * O::load(c + n);
      }
      y[t] = O::sum(acc);
    }
    return;
  }
  // LB: per window, pass 1 runs the global scan keeping (a, b, hf); pass 2 runs the local backward scan in reverse
  // scan order and emits y = C·(hf + a_k·hb_{k+1}): one dot per token.
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
      for (int64_t n = 0; n < N; n += O::W) {
        const StateStep<V> st = row_state_step(vd, vdu, O::load(A + n), O::load(b + n), O::load(h + n));
        O::store(ak + n, st.a);
        O::store(bk + n, st.b);
        O::store(h + n, st.h);
        O::store(hk + n, st.h);
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
      for (int64_t n = 0; n < N; n += O::W) {
        const LocalStep<V> ls = local_step(O::load(ak + n), O::load(bk + n), O::load(hb + n));
        O::store(hb + n, ls.hb);
        acc += (O::load(hk + n) + ls.r) * O::load(c + n);
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

// Per-worker row buffers.
template <typename acc_t>
struct FwdBuffers {
  std::vector<acc_t> work, dt, dtu, uf, y, zs, sg;
  FwdBuffers(int64_t L, int64_t N, int64_t W)
      : work(2 * N + 3 * W * N + 1), dt(L), dtu(L), uf(L), y(L), zs(L), sg(L) {}
};

// y (un-gated, with D·u) of one direction for row (bi, di); returns NonFinite bits.
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

// out = y · silu(z) (or y) in the input dtype; returns kBadZ if z held a NaN / inf.
template <typename in_t, typename acc_t>
int gate_store(const acc_t* __restrict y, const in_t* z, int64_t L, acc_t* __restrict zs, acc_t* __restrict sg,
               in_t* out) {
  if (z != nullptr) {
    for (int64_t t = 0; t < L; ++t) zs[t] = sg[t] = static_cast<acc_t>(z[t]);
    const int bad = all_finite(zs, L) ? 0 : kBadZ;
    sigmoid_array(sg, L);
    for (int64_t t = 0; t < L; ++t) zs[t] = y[t] * zs[t] * sg[t];
    for (int64_t t = 0; t < L; ++t) out[t] = static_cast<in_t>(zs[t]);
    return bad;
  }
  for (int64_t t = 0; t < L; ++t) out[t] = static_cast<in_t>(y[t]);
  return 0;
}

}  // namespace

at::Tensor scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                    const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                    bool softplus_, bool reverse, int64_t W, bool check_finite) {
  check_row_inputs(u, delta, A, Bt, Ct, D, z, bias);
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
  check_row_inputs(u, delta, A, Bt, Ct, D, z, bias);
  check_row_inputs(u_b, delta_b, A_b, Bt_b, Ct_b, D_b, z, bias_b);
  TORCH_CHECK(u_b.sizes() == u.sizes() && u_b.scalar_type() == u.scalar_type() && A_b.sizes() == A.sizes(),
              "vimzoo bidir_fwd: both directions must have equal shapes/dtypes");
  const char* op = "bidirectional_selective_scan";
  if (check_finite) {
    check_params_finite(op, "", A, Bt, Ct, D, bias);
    check_params_finite(op, "_b", A_b, Bt_b, Ct_b, D_b, bias_b);
  }
  std::atomic<int> bad{0}, bad_b{0};
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

}  // namespace vimzoo::cpu
