// A lower bound for the forward selective scan on this CPU, for benchmarks/bench_scan_floor.py only (not shipped in
// the package): the same outputs as vimzoo's selective_scan (softplus(δ + bias), D·u, silu(z) gate, no LB window)
// for fp32 token-major input with d_state = 16, written as the simplest register-resident loop — per (batch,
// 16-channel block) the 16 state vectors live in registers, Δ / u / z are read straight from memory, nothing is
// buffered, no checks. It uses vimzoo's own 16-lane exp2 / softplus / SiLU, so the comparison measures the
// kernel's structure, not its math library.
#include <torch/extension.h>
#include <ATen/Parallel.h>

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("floor_scan", &floor_scan); }
