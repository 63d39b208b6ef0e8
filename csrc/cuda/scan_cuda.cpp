// Torch bindings for the vimzoo CUDA selective-scan kernels (scan_cuda_kernel.cu). Same Python interface as the
// CPU extension (scan_cpu.cpp): scan_fwd, scan_bwd, bidir_fwd; and ssd_fwd / ssd_bwd (ssd_cuda.cpp).
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../common/finite_check.h"
#include "scan_params_torch.h"
#include "ssd_cuda.h"

namespace vimzoo_cuda {
cudaError_t launch_scan_fwd(const ScanParams& p, int dtype, float* y, void* out, cudaStream_t stream);
cudaError_t launch_bidir_fwd(const ScanParams& pf, const ScanParams& pb, int dtype, float* y, void* out,
                             cudaStream_t stream);
cudaError_t launch_scan_bwd(const ScanParams& p, int dtype, float* hf, float* hb, float* dxl, void* du,
                            void* ddelta, void* dz, float* dA_rows, float* dD_rows, float* dbias_rows, float* dBt,
                            float* dCt, cudaStream_t stream);
}  // namespace vimzoo_cuda

namespace {

using opt_tensor = std::optional<at::Tensor>;
using vimzoo_cuda::ScanParams;

int dtype_code(const at::Tensor& u) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kBFloat16,
              "vimzoo scan_cuda: input dtype must be float32 or bfloat16 (got ", u.scalar_type(), ")");
  return u.scalar_type() == at::kFloat ? 0 : 1;
}

void check_f32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == at::kFloat, "vimzoo scan_cuda: ", name,
              " must be a contiguous float32 CUDA tensor");
}

ScanParams make_params(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                       const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                       bool softplus, bool reverse, int64_t W) {
  TORCH_CHECK(u.is_cuda() && u.dim() == 3 && u.is_contiguous(), "vimzoo scan_cuda: u must be contiguous (b, d, l)");
  TORCH_CHECK(delta.sizes() == u.sizes() && delta.is_contiguous() && delta.scalar_type() == u.scalar_type(),
              "vimzoo scan_cuda: delta must match u");
  check_f32(A, "A");
  check_f32(Bt, "Bt");
  check_f32(Ct, "Ct");
  const int64_t B = u.size(0), Dm = u.size(1), L = u.size(2), N = A.size(1);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == Dm, "vimzoo scan_cuda: A must be (d, n)");
  TORCH_CHECK(N <= 256, "vimzoo scan_cuda: d_state must be <= 256");
  TORCH_CHECK(Bt.dim() == 3 && Bt.size(0) == B && Bt.size(1) == L && Bt.size(2) == N && Ct.sizes() == Bt.sizes(),
              "vimzoo scan_cuda: B/C must be (b, l, n)");
  for (const auto& [t, name] : {std::pair<const opt_tensor*, const char*>{&D, "D"}, {&bias, "delta_bias"}}) {
    if (!t->has_value()) continue;
    check_f32(**t, name);
    TORCH_CHECK((*t)->dim() == 1 && (*t)->numel() == Dm, "vimzoo scan_cuda: ", name, " must be (d,)");
  }
  if (z.has_value()) {
    TORCH_CHECK(z->sizes() == u.sizes() && z->is_contiguous() && z->scalar_type() == u.scalar_type(),
                "vimzoo scan_cuda: z must match u");
  }
  return vimzoo_cuda::pack_scan_params(u, delta, A, Bt, Ct, D, z, bias, softplus, reverse, W);
}

using Named = std::vector<std::pair<std::string, at::Tensor>>;
void add_scan_inputs(Named& items, const std::string& sfx, const at::Tensor& u, const at::Tensor& delta,
                     const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct, const opt_tensor& D,
                     const opt_tensor& bias) {
  items.insert(items.end(), {{"u" + sfx, u}, {"delta" + sfx, delta}, {"A" + sfx, A}, {"B" + sfx, Bt}, {"C" + sfx, Ct},
                             {"D" + sfx, D.value_or(at::Tensor())}, {"delta_bias" + sfx, bias.value_or(at::Tensor())}});
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "vimzoo scan_cuda: ", what, " launch failed: ", cudaGetErrorString(err));
}

at::Tensor scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                    const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                    bool softplus, bool reverse, int64_t W, bool check_finite) {
  const c10::cuda::CUDAGuard guard(u.device());
  const int code = dtype_code(u);
  auto p = make_params(u, delta, A, Bt, Ct, D, z, bias, softplus, reverse, W);
  if (check_finite) {
    Named items;
    add_scan_inputs(items, "", u, delta, A, Bt, Ct, D, bias);
    items.push_back({"z", z.value_or(at::Tensor())});
    vimzoo::check_finite_tensors("selective_scan", items);
  }
  auto y = at::empty(u.sizes(), u.options().dtype(at::kFloat));
  auto out = at::empty_like(u);
  check_launch(vimzoo_cuda::launch_scan_fwd(p, code, y.data_ptr<float>(), out.data_ptr(),
                                            c10::cuda::getCurrentCUDAStream().stream()),
               "scan_fwd");
  return out;
}

at::Tensor bidir_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                     const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, const at::Tensor& u_b,
                     const at::Tensor& delta_b, const at::Tensor& A_b, const at::Tensor& Bt_b, const at::Tensor& Ct_b,
                     const opt_tensor& D_b, const opt_tensor& bias_b, const opt_tensor& z, bool softplus,
                     bool check_finite) {
  const c10::cuda::CUDAGuard guard(u.device());
  const int code = dtype_code(u);
  TORCH_CHECK(u_b.sizes() == u.sizes() && u_b.scalar_type() == u.scalar_type() && A_b.sizes() == A.sizes(),
              "vimzoo bidir_fwd: both directions must have equal shapes/dtypes");
  auto pf = make_params(u, delta, A, Bt, Ct, D, z, bias, softplus, false, 1);
  auto pb = make_params(u_b, delta_b, A_b, Bt_b, Ct_b, D_b, z, bias_b, softplus, true, 1);
  if (check_finite) {
    Named items;
    add_scan_inputs(items, "", u, delta, A, Bt, Ct, D, bias);
    add_scan_inputs(items, "_b", u_b, delta_b, A_b, Bt_b, Ct_b, D_b, bias_b);
    items.push_back({"z", z.value_or(at::Tensor())});
    vimzoo::check_finite_tensors("bidirectional_selective_scan", items);
  }
  auto y = at::empty(u.sizes(), u.options().dtype(at::kFloat));
  auto out = at::empty_like(u);
  check_launch(vimzoo_cuda::launch_bidir_fwd(pf, pb, code, y.data_ptr<float>(), out.data_ptr(),
                                             c10::cuda::getCurrentCUDAStream().stream()),
               "bidir_fwd");
  return out;
}

std::vector<at::Tensor> scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct, const opt_tensor& D,
                                 const opt_tensor& z, const opt_tensor& bias, bool softplus, bool reverse,
                                 int64_t W) {
  const c10::cuda::CUDAGuard guard(u.device());
  const int code = dtype_code(u);
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() && dout.scalar_type() == u.scalar_type(),
              "vimzoo scan_cuda: dout must match u");
  auto p = make_params(u, delta, A, Bt, Ct, D, z, bias, softplus, reverse, W);
  p.dout = dout.data_ptr();
  vimzoo_cuda::ScanBwdBuffers g(p, u, delta, z);
  check_launch(vimzoo_cuda::launch_scan_bwd(p, code, g.hf.data_ptr<float>(), g.hb.data_ptr<float>(),
                                            g.dxl.data_ptr<float>(), g.du.data_ptr(), g.ddelta.data_ptr(),
                                            z.has_value() ? g.dz.data_ptr() : nullptr, g.dA_rows.data_ptr<float>(),
                                            g.dD_rows.data_ptr<float>(), g.dbias_rows.data_ptr<float>(),
                                            g.dBt.data_ptr<float>(), g.dCt.data_ptr<float>(),
                                            c10::cuda::getCurrentCUDAStream().stream()),
               "scan_bwd");
  return g.results(D.has_value(), bias.has_value());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vimzoo CUDA selective-scan kernels (plain / reverse / LB / bidirectional; forward + backward)";
  m.def("scan_fwd", &scan_fwd, "selective scan forward (gated by silu(z) when given); ValueError on NaN/inf input");
  m.def("scan_bwd", &scan_bwd, "selective scan backward (recomputes states): du, ddelta, dA, dBt, dCt, dD, dz, dbias");
  m.def("bidir_fwd", &bidir_fwd, "fused forward + reverse scan, gated by silu(z); ValueError on NaN/inf input");
  m.def("ssd_fwd", &vimzoo_cuda::ssd_fwd_cuda, "Mamba-2 SSD scan, or Hydra's quasiseparable core when dt_b is given");
  m.def("ssd_bwd", &vimzoo_cuda::ssd_bwd_cuda, "backward of ssd_fwd: dx, dA, dD, dinit; ddt, dB, dC per direction");
}
