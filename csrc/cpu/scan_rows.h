// Shared by the row-layout scan kernels (scan_rows_fwd.cpp, scan_rows_bwd.cpp): the layout check.
#pragma once

#include "common.h"

namespace vimzoo::cpu {

// u, delta, z (b, d, l) contiguous, one dtype; A (d, n), Bt / Ct (b, l, n), D / bias (d,) contiguous in the compute
// dtype. Every size the row kernels index is checked here.
inline void check_row_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                             const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias) {
  TORCH_CHECK(u.device().is_cpu(), "vimzoo scan_cpu: tensors must be on the CPU");
  TORCH_CHECK(u.dim() == 3 && u.is_contiguous() && delta.is_contiguous() && delta.sizes() == u.sizes(),
              "vimzoo scan_cpu: u/delta must be contiguous (b, d, l) of equal shape");
  TORCH_CHECK(delta.scalar_type() == u.scalar_type(), "vimzoo scan_cpu: delta dtype must equal u dtype");
  const auto acc = u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = u.size(0), Dm = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == Dm && A.is_contiguous() && A.scalar_type() == acc,
              "vimzoo scan_cpu: A must be (d, n) contiguous in the compute dtype");
  const int64_t N = A.size(1);
  for (const at::Tensor* t : {&Bt, &Ct}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == B && t->size(1) == L && t->size(2) == N && t->is_contiguous() &&
                    t->scalar_type() == acc,
                "vimzoo scan_cpu: B/C must be (b, l, n) contiguous in the compute dtype");
  }
  for (const opt_tensor* t : {&D, &bias}) {
    TORCH_CHECK(!t->has_value() || ((*t)->dim() == 1 && (*t)->numel() == Dm && (*t)->is_contiguous() &&
                                    (*t)->scalar_type() == acc),
                "vimzoo scan_cpu: D/delta_bias must be (d,) contiguous in the compute dtype");
  }
  TORCH_CHECK(!z.has_value() || (z->sizes() == u.sizes() && z->is_contiguous() && z->scalar_type() == u.scalar_type()),
              "vimzoo scan_cpu: z must match u");
}

}  // namespace vimzoo::cpu
