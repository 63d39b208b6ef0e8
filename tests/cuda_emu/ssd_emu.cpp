// CPU emulation harness for csrc/cuda/ssd_cuda_kernel.cu, the SSD (Mamba-2) / Hydra CUDA kernels (test-only).
//
// Compiles the REAL kernel source with the shim of warp_shim.h and drives it through the SAME torch glue as the CUDA
// bindings (csrc/cuda/ssd_torch.h) with an emulated launcher, so the checks, buffers and element-wise math around the
// kernels are exercised too. Not a GPU run: memory model, occupancy and speed are untested.
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "warp_shim.h"

#include "../../csrc/cuda/ssd_cuda_kernel.cu"
#include "../../csrc/cuda/ssd_torch.h"

namespace {

using opt_tensor = std::optional<at::Tensor>;
namespace vc = vimzoo_cuda;

struct EmuLaunch {
  void fwd(const vc::SsdParams& p, const vc::SsdDirParams& d, float* y) const {
    emulate_launch(p.batch * p.nheads * p.headdim, vc::kSsdWarpsPerBlock, [&] { vc::ssd_dir_fwd_kernel(p, d, y); });
  }
  void bwd(const vc::SsdParams& p, const vc::SsdDirParams& d, const float* dy, const vc::SsdBwdOut& out) const {
    emulate_launch(p.batch * p.nheads * p.headdim, vc::kSsdWarpsPerBlock,
                   [&] { vc::ssd_dir_bwd_kernel(p, d, dy, out); });
  }
};

at::Tensor ssd_fwd(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                   const at::Tensor& C, const opt_tensor& dt_b, const opt_tensor& B_b, const opt_tensor& C_b,
                   const opt_tensor& D, const opt_tensor& bias, const opt_tensor& init, bool softplus, bool reverse) {
  return vc::ssd_fwd_glue(EmuLaunch{}, x, dt, A, B, C, dt_b, B_b, C_b, D, bias, init, softplus, reverse);
}

std::vector<at::Tensor> ssd_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                const at::Tensor& B, const at::Tensor& C, const opt_tensor& dt_b,
                                const opt_tensor& B_b, const opt_tensor& C_b, const opt_tensor& D,
                                const opt_tensor& bias, const opt_tensor& init, bool softplus, bool reverse) {
  return vc::ssd_bwd_glue(EmuLaunch{}, dy, x, dt, A, B, C, dt_b, B_b, C_b, D, bias, init, softplus, reverse);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU emulation of the vimzoo CUDA SSD / Hydra kernels (test-only)";
  m.def("ssd_fwd", &ssd_fwd);
  m.def("ssd_bwd", &ssd_bwd);
}
