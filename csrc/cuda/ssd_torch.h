// Torch-facing glue of the SSD (Mamba-2) / Hydra CUDA kernels, shared by the CUDA bindings (ssd_cuda.cpp) and the
// CPU emulation harness (tests/cuda_emu/ssd_emu.cpp), which pass their own launcher: the same checks, buffers and
// element-wise ATen math around the kernels run in both. Same Python interface and raw outputs as the CPU kernel
// (csrc/cpu/kernels.h: ssd_fwd / ssd_bwd): fp32, contiguous, initial states transposed to (b, h, n, p).
//
// Launch must provide fwd(const SsdParams&, const SsdDirParams&, float* y) and
// bwd(const SsdParams&, const SsdDirParams&, const float* dy, const SsdBwdOut&).
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

#include "ssd_params.h"

namespace vimzoo_cuda {

using ssd_opt = std::optional<at::Tensor>;

struct SsdCallInfo {
  SsdParams p;
  std::vector<SsdDirParams> dirs;
};

inline SsdCallInfo ssd_prepare(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                               const at::Tensor& C, const ssd_opt& dt_b, const ssd_opt& B_b, const ssd_opt& C_b,
                               const ssd_opt& D, const ssd_opt& bias, const ssd_opt& init, bool softplus,
                               bool reverse) {
  auto f32 = [&](const at::Tensor& t) {
    return t.scalar_type() == at::kFloat && t.is_contiguous() && t.device() == x.device();
  };
  TORCH_CHECK(x.dim() == 4 && f32(x), "vimzoo ssd_cuda: x must be a contiguous fp32 (b, l, h, p) tensor");
  const int64_t Bsz = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3);
  TORCH_CHECK(B.dim() == 4 && B.size(0) == Bsz && B.size(1) == L, "vimzoo ssd_cuda: B must be (b, l, g, n)");
  const int64_t G = B.size(2), N = B.size(3);
  TORCH_CHECK(G >= 1 && H % G == 0 && N >= 1 && N <= 256, "vimzoo ssd_cuda: g must divide h; 1 <= d_state <= 256");
  auto shaped = [&](const at::Tensor& t, at::IntArrayRef s) { return f32(t) && t.sizes() == s; };
  TORCH_CHECK(shaped(dt, {Bsz, L, H}) && shaped(B, {Bsz, L, G, N}) && shaped(C, {Bsz, L, G, N}) && shaped(A, {H}),
              "vimzoo ssd_cuda: dt (b, l, h), B / C (b, l, g, n), A (h,) contiguous fp32");
  const bool hydra = dt_b.has_value();
  TORCH_CHECK(hydra == B_b.has_value() && hydra == C_b.has_value(), "vimzoo ssd_cuda: dt_b, B_b, C_b go together");
  if (hydra)
    TORCH_CHECK(shaped(*dt_b, {Bsz, L, H}) && shaped(*B_b, {Bsz, L, G, N}) && shaped(*C_b, {Bsz, L, G, N}),
                "vimzoo ssd_cuda: dt_b / B_b / C_b must match dt / B / C");
  TORCH_CHECK(!bias.has_value() || shaped(*bias, {H}), "vimzoo ssd_cuda: dt_bias must be (h,)");
  TORCH_CHECK(!init.has_value() || shaped(*init, {Bsz, H, N, P}),
              "vimzoo ssd_cuda: initial states must be (b, h, n, p)");
  TORCH_CHECK(!D.has_value() || shaped(*D, {H}) || (hydra && shaped(*D, {Bsz, L, H})),
              "vimzoo ssd_cuda: D must be (h,) (or (b, l, h) for Hydra)");
  SsdCallInfo info;
  info.p = {Bsz, L, H, P, G, N, softplus, x.data_ptr<float>(), A.data_ptr<float>(),
            bias.has_value() ? bias->data_ptr<float>() : nullptr, init.has_value() ? init->data_ptr<float>() : nullptr};
  if (hydra) {
    info.dirs = {{dt.data_ptr<float>(), B.data_ptr<float>(), C.data_ptr<float>(), false, 1},
                 {dt_b->data_ptr<float>(), B_b->data_ptr<float>(), C_b->data_ptr<float>(), true, 1}};
  } else {
    info.dirs = {{dt.data_ptr<float>(), B.data_ptr<float>(), C.data_ptr<float>(), reverse, 0}};
  }
  return info;
}

// δ broadcast against x (b, l, h, p): D (h,) or (b, l, h).
inline at::Tensor ssd_diag(const at::Tensor& D) { return D.dim() == 1 ? D.view({1, 1, -1, 1}) : D.unsqueeze(-1); }

template <typename Launch>
at::Tensor ssd_fwd_glue(const Launch& launch, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                        const at::Tensor& B, const at::Tensor& C, const ssd_opt& dt_b, const ssd_opt& B_b,
                        const ssd_opt& C_b, const ssd_opt& D, const ssd_opt& bias, const ssd_opt& init, bool softplus,
                        bool reverse) {
  const SsdCallInfo info = ssd_prepare(x, dt, A, B, C, dt_b, B_b, C_b, D, bias, init, softplus, reverse);
  at::Tensor y = D.has_value() ? (x * ssd_diag(*D)).contiguous() : at::zeros_like(x);
  for (const auto& dir : info.dirs) launch.fwd(info.p, dir, y.data_ptr<float>());
  return y;
}

// {dx, dA per (b, h), dD per (b, h) or (b, l, h), dinit, then per direction ddt (raw dt), dB, dC per head}.
template <typename Launch>
std::vector<at::Tensor> ssd_bwd_glue(const Launch& launch, const at::Tensor& dy, const at::Tensor& x,
                                     const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                                     const at::Tensor& C, const ssd_opt& dt_b, const ssd_opt& B_b, const ssd_opt& C_b,
                                     const ssd_opt& D, const ssd_opt& bias, const ssd_opt& init, bool softplus,
                                     bool reverse) {
  const SsdCallInfo info = ssd_prepare(x, dt, A, B, C, dt_b, B_b, C_b, D, bias, init, softplus, reverse);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.is_contiguous() && dy.scalar_type() == at::kFloat,
              "vimzoo ssd_cuda: dy must match x");
  const int64_t Bsz = x.size(0), L = x.size(1), H = x.size(2), P = x.size(3), N = B.size(3);
  const auto f32 = x.options();
  at::Tensor dx = D.has_value() ? (dy * ssd_diag(*D)).contiguous() : at::zeros_like(x);
  at::Tensor dD = !D.has_value() ? at::zeros({Bsz, H}, f32)
                  : D->dim() == 1 ? (x * dy).sum({1, 3}) : (x * dy).sum(-1);
  at::Tensor dinit = init.has_value() ? at::zeros_like(*init) : at::empty({0}, f32);
  at::Tensor hs = at::empty({Bsz * H * P, L, N}, f32);
  at::Tensor dA_rows = at::zeros({Bsz, H}, f32);
  std::vector<at::Tensor> out{dx, dA_rows, dD, dinit};
  const at::Tensor* dts[2] = {&dt, dt_b.has_value() ? &*dt_b : nullptr};
  for (size_t i = 0; i < info.dirs.size(); ++i) {
    at::Tensor ddt = at::zeros({Bsz, L, H}, f32), da = at::zeros({Bsz, L, H}, f32);
    at::Tensor dB = at::zeros({Bsz, L, H, N}, f32), dC = at::zeros({Bsz, L, H, N}, f32);
    const SsdBwdOut o{hs.data_ptr<float>(), dx.data_ptr<float>(), ddt.data_ptr<float>(), da.data_ptr<float>(),
                      dB.data_ptr<float>(), dC.data_ptr<float>(), init.has_value() ? dinit.data_ptr<float>() : nullptr};
    launch.bwd(info.p, info.dirs[i], dy.data_ptr<float>(), o);
    at::Tensor raw = bias.has_value() ? *dts[i] + *bias : *dts[i];
    at::Tensor delta = softplus ? at::softplus(raw) : raw;
    dA_rows.add_((delta * da).sum(1));
    ddt.add_(da * A);
    if (softplus) ddt.mul_(at::sigmoid(raw));
    out.insert(out.end(), {ddt, dB, dC});
  }
  return out;
}

}  // namespace vimzoo_cuda
