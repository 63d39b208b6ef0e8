// CUDA bindings of the SSD (Mamba-2) / Hydra kernels (ssd_cuda_kernel.cu): the shared glue of ssd_torch.h with the
// CUDA launchers on the current stream, plus the NaN/inf input check (ATen reductions on the device).
#include "ssd_cuda.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "../common/finite_check.h"
#include "ssd_torch.h"

namespace vimzoo_cuda {

cudaError_t launch_ssd_dir_fwd(const SsdParams& p, const SsdDirParams& d, float* y, cudaStream_t stream);
cudaError_t launch_ssd_dir_bwd(const SsdParams& p, const SsdDirParams& d, const float* dy, const SsdBwdOut& out,
                               cudaStream_t stream);

namespace {

struct CudaLaunch {
  cudaStream_t stream;
  void fwd(const SsdParams& p, const SsdDirParams& d, float* y) const {
    const cudaError_t err = launch_ssd_dir_fwd(p, d, y, stream);
    TORCH_CHECK(err == cudaSuccess, "vimzoo ssd_cuda: forward launch failed: ", cudaGetErrorString(err));
  }
  void bwd(const SsdParams& p, const SsdDirParams& d, const float* dy, const SsdBwdOut& out) const {
    const cudaError_t err = launch_ssd_dir_bwd(p, d, dy, out, stream);
    TORCH_CHECK(err == cudaSuccess, "vimzoo ssd_cuda: backward launch failed: ", cudaGetErrorString(err));
  }
};

}  // namespace

at::Tensor ssd_fwd_cuda(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                        const at::Tensor& C, const std::optional<at::Tensor>& dt_b,
                        const std::optional<at::Tensor>& B_b, const std::optional<at::Tensor>& C_b,
                        const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& dt_bias,
                        const std::optional<at::Tensor>& init, bool softplus, bool reverse, bool check_finite) {
  TORCH_CHECK(x.is_cuda(), "vimzoo ssd_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(x.device());
  if (check_finite) {
    auto v = [](const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); };
    vimzoo::check_finite_tensors(dt_b.has_value() ? "quasiseparable_scan" : "ssd_scan",
                                 {{"x", x}, {"dt", dt}, {"A", A}, {"B", B}, {"C", C}, {"dt_b", v(dt_b)},
                                  {"B_b", v(B_b)}, {"C_b", v(C_b)}, {"D", v(D)}, {"dt_bias", v(dt_bias)},
                                  {"initial_states", v(init)}});
  }
  return ssd_fwd_glue(CudaLaunch{c10::cuda::getCurrentCUDAStream().stream()}, x, dt, A, B, C, dt_b, B_b, C_b, D,
                      dt_bias, init, softplus, reverse);
}

std::vector<at::Tensor> ssd_bwd_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dt,
                                     const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                     const std::optional<at::Tensor>& dt_b, const std::optional<at::Tensor>& B_b,
                                     const std::optional<at::Tensor>& C_b, const std::optional<at::Tensor>& D,
                                     const std::optional<at::Tensor>& dt_bias, const std::optional<at::Tensor>& init,
                                     bool softplus, bool reverse) {
  TORCH_CHECK(x.is_cuda(), "vimzoo ssd_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(x.device());
  return ssd_bwd_glue(CudaLaunch{c10::cuda::getCurrentCUDAStream().stream()}, dy, x, dt, A, B, C, dt_b, B_b, C_b, D,
                      dt_bias, init, softplus, reverse);
}

}  // namespace vimzoo_cuda
