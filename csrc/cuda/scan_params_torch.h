// Host-side packing of torch tensors into ScanParams and the backward's buffers, shared by the CUDA bindings
// (scan_cuda.cpp) and the CPU emulation harness (tests/cuda_emu), which add their own device/dtype checks.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "scan_params.h"

namespace vimzoo_cuda {

// u, delta, z, dout (b, d, l); A (d, n); Bt, Ct (b, l, n); D, bias (d,) fp32. W is clamped to [1, l].
inline ScanParams pack_scan_params(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                   const at::Tensor& Bt, const at::Tensor& Ct, const std::optional<at::Tensor>& D,
                                   const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                                   bool softplus, bool reverse, int64_t W) {
  ScanParams p;
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.len = u.size(2);
  p.nstate = A.size(1);
  p.window = std::max<int64_t>(1, std::min<int64_t>(W, u.size(2)));
  p.reverse = reverse;
  p.softplus = softplus;
  p.u = u.data_ptr();
  p.delta = delta.data_ptr();
  p.z = z.has_value() ? z->data_ptr() : nullptr;
  p.dout = nullptr;
  p.A = A.data_ptr<float>();
  p.Bt = Bt.data_ptr<float>();
  p.Ct = Ct.data_ptr<float>();
  p.D = D.has_value() ? D->data_ptr<float>() : nullptr;
  p.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  return p;
}

// The backward's outputs and fp32 scratch: hf (b, d, l, n) recomputed states, hb / dxl one window each; dA, dD and
// dbias per row (summed over the batch by results()), dB / dC accumulated atomically.
struct ScanBwdBuffers {
  at::Tensor hf, hb, dxl, du, ddelta, dz, dA_rows, dD_rows, dbias_rows, dBt, dCt;

  ScanBwdBuffers(const ScanParams& p, const at::Tensor& u, const at::Tensor& delta,
                 const std::optional<at::Tensor>& z) {
    const int64_t B = p.batch, Dm = p.dim, L = p.len, N = p.nstate;
    auto f32 = u.options().dtype(at::kFloat);
    hf = at::empty({B, Dm, L, N}, f32);
    hb = at::empty({B, Dm, p.window, N}, f32);
    dxl = at::empty({B, Dm, p.window, N}, f32);
    du = at::empty_like(u);
    ddelta = at::empty_like(delta);
    dz = z.has_value() ? at::empty_like(*z) : at::empty({0}, u.options());
    dA_rows = at::zeros({B, Dm, N}, f32);
    dD_rows = at::zeros({B, Dm}, f32);
    dbias_rows = at::zeros({B, Dm}, f32);
    dBt = at::zeros({B, L, N}, f32);
    dCt = at::zeros({B, L, N}, f32);
  }

  // (du, ddelta, dA, dBt, dCt, dD, dz, dbias); empty fp32 tensors stand for absent D / bias.
  std::vector<at::Tensor> results(bool has_d, bool has_bias) const {
    auto f32 = dA_rows.options();
    return {du, ddelta, dA_rows.sum(0), dBt, dCt, has_d ? dD_rows.sum(0) : at::empty({0}, f32), dz,
            has_bias ? dbias_rows.sum(0) : at::empty({0}, f32)};
  }
};

}  // namespace vimzoo_cuda
