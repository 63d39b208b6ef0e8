// Lower bounds for the selective scan on this CPU, for benchmarks/bench_scan_floor.py and bench_vim_bound.py only
// (not shipped in the package), for fp32 token-major input with d_state = 16 and no LB window, written as the
// simplest register-resident loops with no checks. They use vimzoo's own 16-lane exp2 / softplus / SiLU, so a
// comparison measures a kernel's structure, not its math library.
//
// floor_scan: the outputs of vimzoo's selective_scan (softplus(δ + bias), D·u, silu(z) gate) — per (batch,
// 16-channel block) the 16 state vectors live in registers, Δ / u / z are read straight from memory, nothing is
// buffered.
// floor_scan_bwd<kStoreDecay>: every gradient of that scan (du, dδ, dA, dB, dC, dD, dz, dbias). The reverse
// recurrence needs the forward states in reverse order, so one forward pass per block keeps h_k (and, with
// kStoreDecay, a_k = exp(Δ_k A); otherwise the reverse pass recomputes it — an exp instead of a load) in an (L, 16)
// buffer; the reverse pass keeps the 16 adjoint carries in registers. dB / dC are sums over channels: each block adds
// its 16-lane partial sums into a per-thread (b, l, 16, 16-lane) buffer, reduced once at the end.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../../csrc/cpu/vec_math.h"

namespace {

using namespace vimzoo::cpu;
constexpr int N = 16;

// u, delta, z: (b, d, l) views with stride(1) == 1; Bt, Ct: (b, l, 16) contiguous; A (d, 16); D, bias (d,).
at::Tensor floor_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                      const at::Tensor& Ct, const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias) {
  TORCH_CHECK(u.stride(1) == 1 && delta.stride(1) == 1 && z.stride(1) == 1 && A.size(1) == N && u.size(1) % 16 == 0,
              "floor_scan: token-major fp32 views, d % 16 == 0, d_state 16");
  const int64_t Bsz = u.size(0), Dm = u.size(1), L = u.size(2), nblk = Dm / 16;
  auto out = at::empty({Bsz, L, Dm}, u.options());
  const float *up = u.data_ptr<float>(), *dp = delta.data_ptr<float>(), *zp = z.data_ptr<float>();
  const float *Ap = A.data_ptr<float>(), *Bp = Bt.data_ptr<float>(), *Cp = Ct.data_ptr<float>();
  const float *Dp = D.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t usb = u.stride(0), ust = u.stride(2), dsb = delta.stride(0), dst = delta.stride(2);
  const int64_t zsb = z.stride(0), zst = z.stride(2);
  at::parallel_for(0, Bsz * nblk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / nblk, c0 = (task % nblk) * 16;
      v16f A2[N], h[N];
      for (int n = 0; n < N; ++n) {
        for (int j = 0; j < 16; ++j) A2[n][j] = Ap[(c0 + j) * N + n] * kLog2e;
        h[n] = splatv<v16f>(0.0f);
      }
      const v16f vD = VecOps<v16f>::load(Dp + c0), vb = VecOps<v16f>::load(bp + c0);
      for (int64_t t = 0; t < L; ++t) {
        const v16f vu = VecOps<v16f>::load(up + bi * usb + t * ust + c0);
        const v16f vd = softplus_fast(VecOps<v16f>::load(dp + bi * dsb + t * dst + c0) + vb);
        const v16f vdu = vd * vu;
        const float* b = Bp + (bi * L + t) * N;
        const float* c = Cp + (bi * L + t) * N;
        v16f y0 = vD * vu, y1 = splatv<v16f>(0.0f);
#pragma GCC unroll 16
        for (int n = 0; n < N; n += 2) {
          h[n] = exp2_fast(vd * A2[n]) * h[n] + vdu * b[n];
          h[n + 1] = exp2_fast(vd * A2[n + 1]) * h[n + 1] + vdu * b[n + 1];
          y0 += h[n] * c[n];
          y1 += h[n + 1] * c[n + 1];
        }
        const v16f zt = VecOps<v16f>::load(zp + bi * zsb + t * zst + c0);
        VecOps<v16f>::store(op + (bi * L + t) * Dm + c0, (y0 + y1) * silu_fast(zt));
      }
    }
  });
  return out.transpose(1, 2);
}


using O = VecOps<v16f>;

// One (batch row, block) of the backward; hs / as are (L, 16) per-thread buffers, dBp / dCp this thread's (L, 16)
// partial sums for batch row bi.
template <bool kStoreDecay>
void floor_block_bwd(const float* dop, const float* up, const float* dp, const float* zp, int64_t sb, int64_t st,
                     const float* Ap, const float* b_row, const float* c_row, const float* Dp, const float* bp,
                     int64_t c0, int64_t L, v16f* hs, v16f* as, v16f* dBp, v16f* dCp, float* du, float* dd, float* dz,
                     float* dA_out, float* dD_out, float* dbias_out, int64_t ost) {
  v16f A2[N], h[N];
  alignas(64) v16f An[N], dA[N];   // read / updated once per state and token: L1, not registers
  for (int n = 0; n < N; ++n) {
    for (int j = 0; j < 16; ++j) An[n][j] = Ap[(c0 + j) * N + n];
    A2[n] = An[n] * kLog2e;
    h[n] = dA[n] = splatv<v16f>(0.0f);
  }
  const v16f vD = O::load(Dp + c0), vb = O::load(bp + c0);
  for (int64_t t = 0; t < L; ++t) {   // forward: keep h_k (and a_k)
    const v16f vd = softplus_fast(O::load(dp + t * st + c0) + vb);
    const v16f vdu = vd * O::load(up + t * st + c0);
    const float* b = b_row + t * N;
#pragma GCC unroll 16
    for (int n = 0; n < N; ++n) {
      const v16f a = exp2_fast(vd * A2[n]);
      h[n] = a * h[n] + vdu * b[n];
      hs[t * N + n] = h[n];
      if constexpr (kStoreDecay) as[t * N + n] = a;
    }
  }
  v16f cr[N];
  for (int n = 0; n < N; ++n) cr[n] = splatv<v16f>(0.0f);
  v16f dD = splatv<v16f>(0.0f), dbias = splatv<v16f>(0.0f);
  for (int64_t t = L - 1; t >= 0; --t) {   // reverse: adjoint carries in registers, every gradient
    const v16f raw = O::load(dp + t * st + c0) + vb;
    const v16f vd = softplus_fast(raw), vu = O::load(up + t * st + c0), zt = O::load(zp + t * st + c0);
    const v16f sz = sigmoid_fast(zt), go = O::load(dop + t * st + c0);
    const v16f g = go * zt * sz, vdu = vd * vu;
    const float* b = b_row + t * N;
    const float* c = c_row + t * N;
    v16f s_dbB = splatv<v16f>(0.0f), s_gAA = splatv<v16f>(0.0f), y = splatv<v16f>(0.0f);
#pragma GCC unroll 16
    for (int n = 0; n < N; ++n) {
      const v16f a = kStoreDecay ? as[t * N + n] : exp2_fast(vd * A2[n]);
      const v16f hk = hs[t * N + n], hprev = t ? hs[(t - 1) * N + n] : splatv<v16f>(0.0f);
      const v16f dxl = g * c[n] + cr[n];
      cr[n] = a * dxl;
      const v16f gA = dxl * a * hprev;
      s_dbB += dxl * b[n];
      s_gAA += gA * An[n];
      dA[n] += vd * gA;
      dBp[t * N + n] += dxl * vdu;
      dCp[t * N + n] += g * hk;
      y += hk * c[n];
    }
    const int64_t o = t * ost + c0;
    O::store(du + o, s_dbB * vd + vD * g);
    const v16f ddt = (s_dbB * vu + s_gAA) * sigmoid_fast(raw);
    O::store(dd + o, ddt);
    O::store(dz + o, (y + vD * vu) * go * sz * (1.0f + zt * (1.0f - sz)));
    dbias += ddt;
    dD += g * vu;
  }
  for (int j = 0; j < 16; ++j) {
    for (int n = 0; n < N; ++n) dA_out[(c0 + j) * N + n] = dA[n][j];
    dD_out[c0 + j] = dD[j];
    dbias_out[c0 + j] = dbias[j];
  }
}

// dout, u, delta, z: (b, d, l) views sharing strides, stride(1) == 1; the rest as floor_scan. Returns du, dδ
// (before softplus), dA, dB, dC ((b, l, 16)), dD, dz, dbias.
template <bool kStoreDecay>
std::vector<at::Tensor> floor_scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                       const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct,
                                       const at::Tensor& D, const at::Tensor& z, const at::Tensor& bias) {
  TORCH_CHECK(u.stride(1) == 1 && A.size(1) == N && u.size(1) % 16 == 0 && delta.strides() == u.strides() &&
                  z.strides() == u.strides() && dout.strides() == u.strides() && Bt.is_contiguous() &&
                  Ct.is_contiguous(),
              "floor_scan_bwd: token-major fp32 views sharing strides, d % 16 == 0, d_state 16");
  const int64_t Bsz = u.size(0), Dm = u.size(1), L = u.size(2), nblk = Dm / 16;
  const int64_t nthreads = at::get_num_threads();
  const at::Tensor du = at::empty({Bsz, L, Dm}, u.options()), dd = at::empty_like(du), dz = at::empty_like(du);
  const at::Tensor dA = at::empty({Bsz, Dm, N}, u.options()), dD = at::empty({Bsz, Dm}, u.options());
  const at::Tensor dbias = at::empty({Bsz, Dm}, u.options());
  const at::Tensor dBp = at::zeros({nthreads, Bsz, L, N, 16}, u.options()), dCp = at::zeros_like(dBp);
  const int64_t sb = u.stride(0), st = u.stride(2);
  at::parallel_for(0, Bsz * nblk, 1, [&](int64_t begin, int64_t end) {
    std::vector<v16f> hs(L * N), as(kStoreDecay ? L * N : 0);
    const int64_t slot = at::get_thread_num();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / nblk, c0 = (task % nblk) * 16;
      v16f* part_b = reinterpret_cast<v16f*>(dBp.data_ptr<float>()) + (slot * Bsz + bi) * L * N;
      v16f* part_c = reinterpret_cast<v16f*>(dCp.data_ptr<float>()) + (slot * Bsz + bi) * L * N;
      floor_block_bwd<kStoreDecay>(
          dout.data_ptr<float>() + bi * sb, u.data_ptr<float>() + bi * sb, delta.data_ptr<float>() + bi * sb,
          z.data_ptr<float>() + bi * sb, sb, st, A.data_ptr<float>(), Bt.data_ptr<float>() + bi * L * N,
          Ct.data_ptr<float>() + bi * L * N, D.data_ptr<float>(), bias.data_ptr<float>(), c0, L, hs.data(), as.data(),
          part_b, part_c, du.data_ptr<float>() + bi * L * Dm, dd.data_ptr<float>() + bi * L * Dm,
          dz.data_ptr<float>() + bi * L * Dm, dA.data_ptr<float>() + bi * Dm * N, dD.data_ptr<float>() + bi * Dm,
          dbias.data_ptr<float>() + bi * Dm, Dm);
    }
  });
  auto t = [](const at::Tensor& x) { return x.transpose(1, 2); };
  return {t(du), t(dd), dA.sum(0), dBp.sum({0, 4}), dCp.sum({0, 4}), dD.sum(0), t(dz), dbias.sum(0)};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("floor_scan", &floor_scan);
  m.def("floor_scan_bwd", &floor_scan_bwd<true>);
  m.def("floor_scan_bwd_recompute", &floor_scan_bwd<false>);
}
