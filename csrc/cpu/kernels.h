// Entry points of the vimzoo CPU extension (bound to Python in bindings.cpp; called by vimzoo/ops/backends/cpu.py).
//
// Layout contract: u, delta, z, dout (b, d, l) in the input dtype; A (d, n), D, delta_bias (d,) and Bt, Ct (b, l, n)
// contiguous in the compute dtype (fp32; fp64 for fp64 input). The row kernels (scan_rows_*.cpp) take contiguous
// (b, d, l) tensors; the token-major kernels (*_tm) take fp32 (b, d, l) views whose channels are contiguous
// (stride(1) == 1, d % 16 == 0) and return outputs in the same layout. Every entry point TORCH_CHECKs the sizes it
// indexes, so a call that bypasses vimzoo.ops's validation still cannot read out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace vimzoo::cpu {

using opt_tensor = std::optional<at::Tensor>;

// Row kernels: any float dtype.
at::Tensor scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                    const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                    bool softplus, bool reverse, int64_t W, bool check_finite);
at::Tensor bidir_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                     const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, const at::Tensor& u_b,
                     const at::Tensor& delta_b, const at::Tensor& A_b, const at::Tensor& Bt_b, const at::Tensor& Ct_b,
                     const opt_tensor& D_b, const opt_tensor& bias_b, const opt_tensor& z, bool softplus,
                     bool check_finite);
std::vector<at::Tensor> scan_bwd(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct, const opt_tensor& D,
                                 const opt_tensor& z, const opt_tensor& bias, bool softplus, bool reverse, int64_t W);

// Token-major kernels: fp32, channel-contiguous views (forward only).
at::Tensor scan_fwd_tm(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                       const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                       bool softplus, bool reverse, int64_t W, bool check_finite);
at::Tensor bidir_fwd_tm(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                        const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, const at::Tensor& u_b,
                        const at::Tensor& delta_b, const at::Tensor& A_b, const at::Tensor& Bt_b,
                        const at::Tensor& Ct_b, const opt_tensor& D_b, const opt_tensor& bias_b, const opt_tensor& z,
                        bool softplus, bool check_finite);
at::Tensor causal_conv1d_tm(const at::Tensor& x, const at::Tensor& weight, const opt_tensor& bias, bool silu,
                            bool reverse, bool check_finite);

// Token-major backward kernels (fp32): dout, u, delta, z and the outputs du, ddelta, dz are channel-contiguous
// (b, d, l) views; Bt, Ct (b, l, n) with contiguous n; `scale` multiplied the forward output. Returns (du, ddelta,
// dA, dBt, dCt, dD, dz, dbias) like scan_bwd.
std::vector<at::Tensor> scan_bwd_tm(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                    const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct,
                                    const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias, bool softplus,
                                    bool reverse, int64_t W, double scale);
// The fused mixer's scan_bwd_tm: Δ = dt · dt_proj_wᵀ (dt (b, l, rank) with contiguous rank, dt_proj_w (d, rank)),
// formed per token; returns (du, d dt (b, l, rank), d dt_proj_w, dA, dBt, dCt, dD, dz, dbias). dz goes into dz_out
// when given (a (b, d, l) view with contiguous channels, e.g. half of the mixer's dxz; added to it with
// dz_accumulate), and that tensor is returned.
std::vector<at::Tensor> scan_bwd_tm_lowrank(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& dt,
                                            const at::Tensor& dt_proj_w, const at::Tensor& A, const at::Tensor& Bt,
                                            const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z,
                                            const opt_tensor& bias, bool softplus, bool reverse, int64_t W,
                                            double scale, const opt_tensor& dz_out, bool dz_accumulate);
// (dx, dweight, dbias): the conv + bias + SiLU backward in one pass (the pre-activation is recomputed). dx goes into
// dx_out when given (as dz_out above; added to it with accumulate).
std::vector<at::Tensor> causal_conv1d_bwd_tm(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& weight,
                                             const opt_tensor& bias, bool silu, bool reverse,
                                             const opt_tensor& dx_out, bool accumulate);
// Mamba-2 SSD scan (one direction; `reverse` runs it anti-causally) and, when dt_b / B_b / C_b are given, Hydra's
// quasiseparable mixer core (forward + reverse scan shifted by one token, plus the diagonal D·x). fp32 or fp64, all
// contiguous in x's dtype: x (b, l, h, p), dt (b, l, h) raw (dt_bias and softplus are applied inside), A (h,),
// B / C (b, l, g, n), D (h,) or (Hydra) (b, l, h), dt_bias (h,), init (b, h, n, p) (transposed state).
// ssd_bwd returns {dx, dA per (b, h), dD per (b, h) or (b, l, h), dinit, then per direction: ddt (w.r.t. the raw
// dt), dB and dC per head (b, l, h, n)}.
at::Tensor ssd_fwd(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                   const at::Tensor& C, const opt_tensor& dt_b, const opt_tensor& B_b, const opt_tensor& C_b,
                   const opt_tensor& D, const opt_tensor& dt_bias, const opt_tensor& init, bool softplus,
                   bool reverse, int64_t chunk, bool check_finite);
std::vector<at::Tensor> ssd_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                const at::Tensor& B, const at::Tensor& C, const opt_tensor& dt_b,
                                const opt_tensor& B_b, const opt_tensor& C_b, const opt_tensor& D,
                                const opt_tensor& dt_bias, const opt_tensor& init, bool softplus, bool reverse,
                                int64_t chunk);

// Fused ops (fp32): the mixer's forward ({out, x_proj output}), residual add + RMSNorm and its backward.
std::vector<at::Tensor> mamba_inner_fwd(const at::Tensor& xz, const std::vector<at::Tensor>& fwd,
                                        const std::vector<at::Tensor>& bwd, bool reverse, int64_t W, double scale,
                                        bool check_finite);
std::vector<at::Tensor> add_rms_norm_fwd(const at::Tensor& x, const opt_tensor& residual, const at::Tensor& weight,
                                         double eps, bool check_finite);
// Its backward from the fp32 sum s: (ds = the gradient of x and of residual, dweight), both fp32.
std::vector<at::Tensor> add_rms_norm_bwd(const at::Tensor& dnormed, const opt_tensor& dsummed,
                                         const at::Tensor& summed, const at::Tensor& weight, double eps);

}  // namespace vimzoo::cpu
