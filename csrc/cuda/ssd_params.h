// The plain-pointer view of one SSD (Mamba-2) scan call, shared by the CUDA kernels (ssd_cuda_kernel.cu), their
// torch glue (ssd_torch.h) and the CPU emulation harness (tests/cuda_emu). No torch or CUDA headers here.
#pragma once

#include <cstdint>

namespace vimzoo_cuda {

// What both directions share: x (b, l, h, p), A (h,), dt_bias (h,) or null, initial states (b, h, n, p) or null;
// all fp32, contiguous.
struct SsdParams {
  int64_t batch, len, nheads, headdim, ngroups, nstate;
  bool softplus;
  const float* x;
  const float* A;
  const float* bias;
  const float* init;
};

// One direction: raw dt (b, l, h), B / C (b, l, g, n). Scan step k visits position k (or l-1-k when reverse); its
// output goes to the position of step k + shift (shift 1: Hydra's strict triangles), dropped past the end.
struct SsdDirParams {
  const float* dt;
  const float* B;
  const float* C;
  bool reverse;
  int64_t shift;
};

// Backward outputs of one direction (fp32): dx (b, l, h, p) accumulated, ddt_direct / da (b, l, h) and dB / dC per
// head (b, l, h, n) accumulated atomically over the p rows, dinit (b, h, n, p) accumulated (or null); hs is the
// (b * h * p, l, n) scratch of recomputed states.
struct SsdBwdOut {
  float* hs;
  float* dx;
  float* ddt_direct;
  float* da;
  float* dB;
  float* dC;
  float* dinit;
};

}  // namespace vimzoo_cuda
