// The NaN/inf input check shared by the CPU and CUDA extensions: the same message (a Python ValueError naming the
// argument) as vimzoo/ops/_validate.py's check_finite. The CPU kernels detect non-finite values while they read the
// data and call raise_nonfinite; other callers check whole tensors with ATen reductions (on any device).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

namespace vimzoo {

[[noreturn]] inline void raise_nonfinite(const char* op, const std::string& name) {
  TORCH_CHECK_VALUE(false, op, ": ", name, " contains NaN or inf values.");
  __builtin_unreachable();
}

// Each (name, tensor) pair; undefined or empty tensors are skipped. One device reduction + host sync per tensor.
inline void check_finite_tensors(const char* op, const std::vector<std::pair<std::string, at::Tensor>>& items) {
  for (const auto& [name, t] : items) {
    if (t.defined() && t.numel() && !at::isfinite(t).all().item<bool>()) raise_nonfinite(op, name);
  }
}

}  // namespace vimzoo
