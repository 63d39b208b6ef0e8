// Row-layout backward of the selective scan (plain / reverse / LB; the bidirectional op runs it per direction).
//
// Per row: recompute (a, b, hf) for the whole row in scan order (recurrence.h), then walk the windows last to first:
// a reverse pass rebuilds the local state hb and the global adjoint dxl; a forward pass runs the window-local
// adjoint dxr and accumulates every gradient (docs/kernels.md; W = 1 is the plain Mamba backward). dB / dC are
// accumulated per worker and summed at the end; dA, dD, dbias per row, summed over the batch.
#include "kernels.h"
#include "recurrence.h"
#include "scan_rows.h"

#include <vector>

namespace vimzoo::cpu {
namespace {

template <typename acc_t>
struct BwdBuffers {
  // abuf keeps a_k at row k+1 with zero rows before and after, so a_{k-1} / a_{k+1} loads stay in bounds; hbw keeps
  // one window of hb plus a zero row past its end.
  std::vector<acc_t> abuf, bbuf, hf, hbw, dxlw, carry, dxr, dA_acc, dt, dtu, uf, g, zf, sz, sig, y;
  BwdBuffers(int64_t L, int64_t N, int64_t W)
      : abuf((L + 2) * N), bbuf(L * N), hf(L * N), hbw((W + 1) * N), dxlw(W * N), carry(N), dxr(N), dA_acc(N),
        dt(L), dtu(L), uf(L), g(L), zf(L), sz(L), sig(L), y(L) {}
};

// One row's scan inputs and outputs, shared by the two passes below (each takes NC > 0 as a compile-time N).
// dB / dC are this worker's (l, n) sums; du_acc, ddt_acc, y per token: Σ_n db·B (the caller multiplies by Δ for du
// and by u for dΔ), Σ_n A·gA, Σ_n C·h.
template <typename V>
struct RowBwd {
  using S = typename VecOps<V>::S;
  const Shape& s;
  int64_t N;
  const S *A, *Bt, *Ct;
  BwdBuffers<S>& bf;
  S *dB, *dC, *du_acc, *ddt_acc, *y;
};

// 1) Forward recompute of (a, b, hf) in scan order; a_k sits at abuf row k + 1.
template <typename V, int NC>
void row_recompute(const RowBwd<V>& r) {
  using O = VecOps<V>;
  using acc_t = typename O::S;
  const int64_t L = r.s.L, N = NC > 0 ? NC : r.N;
  const acc_t* __restrict A = r.A;
  const acc_t* __restrict dt = r.bf.dt.data();
  const acc_t* __restrict dtu = r.bf.dtu.data();
  acc_t* __restrict abuf = r.bf.abuf.data();
  acc_t* __restrict bbuf = r.bf.bbuf.data();
  acc_t* __restrict hf = r.bf.hf.data();
  acc_t* __restrict cr = r.bf.carry.data();
  for (int64_t n = 0; n < N; ++n) cr[n] = 0;
  for (int64_t k = 0; k < L; ++k) {
    const int64_t t = r.s.pos(k);
    const V vd = O::splat(dt[t]), vdu = O::splat(dtu[t]);
    const acc_t* __restrict b = r.Bt + t * N;
    acc_t* __restrict ak = abuf + (k + 1) * N;
    acc_t* __restrict bk = bbuf + k * N;
    acc_t* __restrict hk = hf + k * N;
    for (int64_t n = 0; n < N; n += O::W) {
      const StateStep<V> st = row_state_step(vd, vdu, O::load(A + n), O::load(b + n), O::load(cr + n));
      O::store(ak + n, st.a);
      O::store(bk + n, st.b);
      O::store(cr + n, st.h);
      O::store(hk + n, st.h);
    }
  }
}

// 2) The windows, last to first: 2a) reverse through the window: the local state hb (zero past the window's end) and
//    the global adjoint dxl (carried across windows); 2b) forward through it: the window-local adjoint dxr
//    (restarted at the window start) and every gradient. One function, so that the pointer set-up stays out of the
//    window loop (W = 1 runs it L times).
template <typename V, int NC>
void row_windows(const RowBwd<V>& r) {
  using O = VecOps<V>;
  using acc_t = typename O::S;
  const int64_t L = r.s.L, N = NC > 0 ? NC : r.N, W = r.s.W;
  const acc_t* __restrict A = r.A;
  const acc_t* __restrict dt = r.bf.dt.data();
  const acc_t* __restrict dtu = r.bf.dtu.data();
  const acc_t* __restrict g = r.bf.g.data();
  const acc_t* __restrict abuf = r.bf.abuf.data();
  const acc_t* __restrict bbuf = r.bf.bbuf.data();
  const acc_t* __restrict hf = r.bf.hf.data();
  acc_t* __restrict hbw = r.bf.hbw.data();
  acc_t* __restrict dxlw = r.bf.dxlw.data();
  acc_t* __restrict cr = r.bf.carry.data();
  acc_t* __restrict xr = r.bf.dxr.data();
  acc_t* __restrict dAa = r.bf.dA_acc.data();
  acc_t* __restrict du_acc = r.du_acc;
  acc_t* __restrict ddt_acc = r.ddt_acc;
  acc_t* __restrict y = r.y;
  for (int64_t n = 0; n < N; ++n) {
    cr[n] = 0;  // dxl_{k+1}
    dAa[n] = 0;
  }
  for (int64_t w = (L + W - 1) / W - 1; w >= 0; --w) {
    const int64_t k0 = w * W, k1 = std::min(k0 + W, L);
    for (int64_t n = 0; n < N; ++n) hbw[(k1 - k0) * N + n] = 0;  // hb past the window's last step
    for (int64_t k = k1 - 1; k >= k0; --k) {  // 2a)
      const int64_t t = r.s.pos(k);
      const V vg = O::splat(g[t]);
      const acc_t* __restrict c = r.Ct + t * N;
      const acc_t* __restrict anext = abuf + (k + 2) * N;  // a_{k+1}; zero row past the end
      acc_t* __restrict dxl = dxlw + (k - k0) * N;
      const acc_t* __restrict ak = abuf + (k + 1) * N;
      const acc_t* __restrict bk = bbuf + k * N;
      const acc_t* __restrict hb_next = hbw + (k + 1 - k0) * N;   // zero row past the window's end
      acc_t* __restrict hbk = hbw + (k - k0) * N;
      for (int64_t n = 0; n < N; n += O::W) {
        O::store(hbk + n, local_step(O::load(ak + n), O::load(bk + n), O::load(hb_next + n)).hb);
        const V x = vg * O::load(c + n) + O::load(anext + n) * O::load(cr + n);
        O::store(cr + n, x);
        O::store(dxl + n, x);
      }
    }
    for (int64_t k = k0; k < k1; ++k) {  // 2b)
      const int64_t t = r.s.pos(k);
      const V vd = O::splat(dt[t]), vdu = O::splat(dtu[t]), vg = O::splat(g[t]);
      const acc_t* __restrict b = r.Bt + t * N;
      const acc_t* __restrict c = r.Ct + t * N;
      const acc_t* __restrict aprev = abuf + k * N;  // a_{k-1}
      const acc_t* __restrict bk = bbuf + k * N;
      const acc_t* __restrict hk = hf + k * N;
      const acc_t* __restrict hbk = hbw + (k - k0) * N;
      const acc_t* __restrict dxl = dxlw + (k - k0) * N;
      acc_t* __restrict dBk = r.dB + t * N;
      acc_t* __restrict dCk = r.dC + t * N;
      const bool wstart = (k == k0);
      V s_dbB = O::splat(0), s_gAA = O::splat(0), s_y = O::splat(0);
      for (int64_t n = 0; n < N; n += O::W) {
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
      du_acc[t] = O::sum(s_dbB);
      ddt_acc[t] = O::sum(s_gAA);
      y[t] = O::sum(s_y);
    }
  }
}

// One row: 1) then 2) (W = 1 is the plain Mamba backward).
template <typename V, int NC>
void scan_row_bwd(const RowBwd<V>& r) {
  row_recompute<V, NC>(r);
  row_windows<V, NC>(r);
}

template <typename acc_t>
void scan_row_bwd_any(const Shape& s, const acc_t* A, const acc_t* Bt, const acc_t* Ct, BwdBuffers<acc_t>& bf,
                      acc_t* dB, acc_t* dC, acc_t* sdbB, acc_t* sgAA) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (s.N % 16 == 0) {
      const RowBwd<v16f> r{s, s.N, A, Bt, Ct, bf, dB, dC, sdbB, sgAA, bf.y.data()};
      return s.N == 16 ? scan_row_bwd<v16f, 16>(r) : scan_row_bwd<v16f, 0>(r);
    }
    if (s.N % 8 == 0) {
      return scan_row_bwd<v8f, 0>(RowBwd<v8f>{s, s.N, A, Bt, Ct, bf, dB, dC, sdbB, sgAA, bf.y.data()});
    }
  }
  scan_row_bwd<acc_t, 0>(RowBwd<acc_t>{s, s.N, A, Bt, Ct, bf, dB, dC, sdbB, sgAA, bf.y.data()});
}

struct BwdOutputs {
  at::Tensor du, ddelta, dz, dA_rows, dD_rows, dbias_rows, dBt_thr, dCt_thr;
};

template <typename in_t>
void scan_bwd_rows(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                   const at::Tensor& Bt, const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z,
                   const opt_tensor& bias, bool softplus_, const Shape& s, int64_t nthreads, BwdOutputs& o) {
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
    auto& bf = st.bf;
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
      for (int64_t t = 0; t < L; ++t) gg[t] *= zf[t] * sz[t];
    }
    acc_t* __restrict sig = bf.sig.data();
    if (softplus_) {
      const in_t* dl = delta.data_ptr<in_t>() + row * L;
      for (int64_t t = 0; t < L; ++t) sig[t] = static_cast<acc_t>(dl[t]) + bv;
      sigmoid_array(sig, L);
    }
    acc_t* dB = o.dBt_thr.data_ptr<acc_t>() + (st.tid * Bsz + bi) * L * N;
    acc_t* dC = o.dCt_thr.data_ptr<acc_t>() + (st.tid * Bsz + bi) * L * N;
    scan_row_bwd_any(s, A.data_ptr<acc_t>() + di * N, Bt.data_ptr<acc_t>() + bi * L * N,
                     Ct.data_ptr<acc_t>() + bi * L * N, bf, dB, dC, st.sdbB.data(), st.sgAA.data());
    // Per-token outputs (original order).
    const acc_t* uf = bf.uf.data();
    const acc_t* dt = bf.dt.data();
    in_t* du_r = o.du.data_ptr<in_t>() + row * L;
    in_t* dd_r = o.ddelta.data_ptr<in_t>() + row * L;
    in_t* dz_r = z.has_value() ? o.dz.data_ptr<in_t>() + row * L : nullptr;
    acc_t dD_acc = 0, dbias_acc = 0;
    for (int64_t t = 0; t < L; ++t) {
      du_r[t] = static_cast<in_t>(st.sdbB[t] * dt[t] + Dv * gg[t]);
      acc_t ddt = st.sdbB[t] * uf[t] + st.sgAA[t];
      if (softplus_) ddt *= sig[t];
      dd_r[t] = static_cast<in_t>(ddt);
      dbias_acc += ddt;
      dD_acc += gg[t] * uf[t];
      if (dz_r) {
        const acc_t sgm = bf.sz[t];  // dsilu(z) = σ(z)(1 + z(1 - σ(z)))
        dz_r[t] = static_cast<in_t>(static_cast<acc_t>(go[t]) * (bf.y[t] + Dv * uf[t]) * sgm *
                                    (acc_t(1) + zf[t] * (acc_t(1) - sgm)));
      }
    }
    acc_t* dAr = o.dA_rows.data_ptr<acc_t>() + row * N;
    for (int64_t n = 0; n < N; ++n) dAr[n] = bf.dA_acc[n];
    o.dD_rows.data_ptr<acc_t>()[row] = dD_acc;
    o.dbias_rows.data_ptr<acc_t>()[row] = dbias_acc;
  });
}

}  // namespace

std::vector<at::Tensor> scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct, const opt_tensor& D,
                                 const opt_tensor& z, const opt_tensor& bias, bool softplus_, bool reverse,
                                 int64_t W) {
  check_row_inputs(u, delta, A, Bt, Ct, D, z, bias);
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() && dout.scalar_type() == u.scalar_type(),
              "vimzoo scan_bwd: dout must match u");
  const int64_t Bsz = u.size(0), Dm = u.size(1), L = u.size(2), N = A.size(1);
  const Shape s{L, N, std::min(std::max<int64_t>(W, 1), std::max<int64_t>(L, 1)), reverse};
  const int64_t nthreads = at::get_num_threads();
  auto fopts = A.options();
  BwdOutputs o{at::empty_like(u), at::empty_like(delta),
               z.has_value() ? at::empty_like(*z) : at::empty({0}, u.options()), at::zeros({Bsz, Dm, N}, fopts),
               at::zeros({Bsz, Dm}, fopts), at::zeros({Bsz, Dm}, fopts), at::zeros({nthreads, Bsz, L, N}, fopts),
               at::zeros({nthreads, Bsz, L, N}, fopts)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, u.scalar_type(), "vimzoo_scan_bwd", [&] {
    scan_bwd_rows<scalar_t>(dout, u, delta, A, Bt, Ct, D, z, bias, softplus_, s, nthreads, o);
  });
  auto dD = D.has_value() ? o.dD_rows.sum(0) : at::empty({0}, fopts);
  auto dbias = bias.has_value() ? o.dbias_rows.sum(0) : at::empty({0}, fopts);
  auto dBt = nthreads == 1 ? o.dBt_thr[0] : o.dBt_thr.sum(0);
  auto dCt = nthreads == 1 ? o.dCt_thr[0] : o.dCt_thr.sum(0);
  return {o.du, o.ddelta, o.dA_rows.sum(0), dBt, dCt, dD, o.dz, dbias};
}

}  // namespace vimzoo::cpu
