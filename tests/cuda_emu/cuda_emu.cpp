// CPU emulation harness for csrc/cuda/scan_cuda_kernel.cu (test-only; there is no GPU on the CI machine).
//
// Compiles the REAL kernel source as C++ with the shim of warp_shim.h (every CUDA thread a std::thread, warps in
// lock-step through a barrier, atomicAdd through std::atomic_ref). This checks the kernels' indexing, recurrences
// and reductions against the PyTorch reference; it says nothing about GPU-specific behaviour (memory model,
// occupancy, speed).
#include <torch/extension.h>

#include <optional>

#include "warp_shim.h"

#include "../../csrc/cuda/scan_cuda_kernel.cu"
#include "../../csrc/cuda/scan_params_torch.h"

namespace {

using opt_tensor = std::optional<at::Tensor>;
using vimzoo_cuda::ScanParams;
constexpr int kWarps = vimzoo_cuda::kWarpsPerBlock;

template <typename F>
void launch(int64_t rows, F&& kernel) {  // grid = ceil(rows / warps per block), block = 32 * warps
  emulate_launch(rows, kWarps, kernel);
}

// The packing of csrc/cuda/scan_cuda.cpp (csrc/cuda/scan_params_torch.h), with CPU tensors instead of CUDA ones.
ScanParams make_params(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                       const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                       bool softplus, bool reverse, int64_t W) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kBFloat16, "emu: fp32/bf16 only");
  TORCH_CHECK(A.size(1) <= 256, "emu: d_state <= 256");
  return vimzoo_cuda::pack_scan_params(u, delta, A, Bt, Ct, D, z, bias, softplus, reverse, W);
}

template <typename T>
void fwd_t(const ScanParams& p, float* y, void* out) {
  launch(p.batch * p.dim, [&] { vimzoo_cuda::scan_fwd_kernel<T>(p, y, static_cast<T*>(out)); });
}

at::Tensor scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                    const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                    bool softplus, bool reverse, int64_t W) {
  auto p = make_params(u, delta, A, Bt, Ct, D, z, bias, softplus, reverse, W);
  auto y = at::empty(u.sizes(), u.options().dtype(at::kFloat));
  auto out = at::empty_like(u);
  if (u.scalar_type() == at::kFloat) {
    fwd_t<float>(p, y.data_ptr<float>(), out.data_ptr());
  } else {
    fwd_t<c10::BFloat16>(p, y.data_ptr<float>(), out.data_ptr());
  }
  return out;
}

at::Tensor bidir_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                     const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, const at::Tensor& u_b,
                     const at::Tensor& delta_b, const at::Tensor& A_b, const at::Tensor& Bt_b, const at::Tensor& Ct_b,
                     const opt_tensor& D_b, const opt_tensor& bias_b, const opt_tensor& z, bool softplus) {
  auto pf = make_params(u, delta, A, Bt, Ct, D, z, bias, softplus, false, 1);
  auto pb = make_params(u_b, delta_b, A_b, Bt_b, Ct_b, D_b, z, bias_b, softplus, true, 1);
  auto y = at::empty(u.sizes(), u.options().dtype(at::kFloat));
  auto out = at::empty_like(u);
  float* yp = y.data_ptr<float>();
  if (u.scalar_type() == at::kFloat) {
    launch(pf.batch * pf.dim,
           [&] { vimzoo_cuda::bidir_fwd_kernel<float>(pf, pb, yp, static_cast<float*>(out.data_ptr())); });
  } else {
    using bf = c10::BFloat16;
    launch(pf.batch * pf.dim, [&] { vimzoo_cuda::bidir_fwd_kernel<bf>(pf, pb, yp, static_cast<bf*>(out.data_ptr())); });
  }
  return out;
}

std::vector<at::Tensor> scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct, const opt_tensor& D,
                                 const opt_tensor& z, const opt_tensor& bias, bool softplus, bool reverse,
                                 int64_t W) {
  auto p = make_params(u, delta, A, Bt, Ct, D, z, bias, softplus, reverse, W);
  p.dout = dout.data_ptr();
  vimzoo_cuda::ScanBwdBuffers g(p, u, delta, z);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    launch(p.batch * p.dim, [&] {
      vimzoo_cuda::scan_bwd_kernel<T>(p, g.hf.data_ptr<float>(), g.hb.data_ptr<float>(), g.dxl.data_ptr<float>(),
                                      static_cast<T*>(g.du.data_ptr()), static_cast<T*>(g.ddelta.data_ptr()),
                                      z.has_value() ? static_cast<T*>(g.dz.data_ptr()) : nullptr,
                                      g.dA_rows.data_ptr<float>(), g.dD_rows.data_ptr<float>(),
                                      g.dbias_rows.data_ptr<float>(), g.dBt.data_ptr<float>(),
                                      g.dCt.data_ptr<float>());
    });
  };
  if (u.scalar_type() == at::kFloat) {
    run(float{});
  } else {
    run(c10::BFloat16{});
  }
  return g.results(D.has_value(), bias.has_value());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU emulation of the vimzoo CUDA scan kernels (test-only)";
  m.def("scan_fwd", &scan_fwd);
  m.def("scan_bwd", &scan_bwd);
  m.def("bidir_fwd", &bidir_fwd);
}
