// The SSD (Mamba-2) / Hydra entry points of the CUDA extension (defined in ssd_cuda.cpp, bound in scan_cuda.cpp).
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

namespace vimzoo_cuda {

at::Tensor ssd_fwd_cuda(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                        const at::Tensor& C, const std::optional<at::Tensor>& dt_b,
                        const std::optional<at::Tensor>& B_b, const std::optional<at::Tensor>& C_b,
                        const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& dt_bias,
                        const std::optional<at::Tensor>& init, bool softplus, bool reverse, bool check_finite);
std::vector<at::Tensor> ssd_bwd_cuda(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dt,
                                     const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                     const std::optional<at::Tensor>& dt_b, const std::optional<at::Tensor>& B_b,
                                     const std::optional<at::Tensor>& C_b, const std::optional<at::Tensor>& D,
                                     const std::optional<at::Tensor>& dt_bias, const std::optional<at::Tensor>& init,
                                     bool softplus, bool reverse);

}  // namespace vimzoo_cuda
