// The plain-pointer view of one scan's inputs, shared by the CUDA kernels (scan_cuda_kernel.cu), their torch
// bindings (scan_cuda.cpp) and the CPU emulation harness (tests/cuda_emu): one definition, so one layout.
// No torch or CUDA headers here: nvcc compiles the kernel file without them.
#pragma once

#include <cstdint>

namespace vimzoo_cuda {

struct ScanParams {
  int64_t batch, dim, len, nstate, window;
  bool reverse, softplus;
  const void* u;
  const void* delta;
  const void* z;     // may be null
  const void* dout;  // backward only
  const float* A;
  const float* Bt;
  const float* Ct;
  const float* D;     // may be null
  const float* bias;  // may be null
};

}  // namespace vimzoo_cuda
