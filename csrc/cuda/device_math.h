// Device helpers shared by the CUDA kernels (scan_cuda_kernel.cu, ssd_cuda_kernel.cu): a full-warp sum and the
// softplus both kernels apply to delta / dt. Plain CUDA (no torch headers); tests/cuda_emu provides the shuffle.
#pragma once

namespace vimzoo_cuda {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ __forceinline__ float softplus_f(float x) { return x <= 20.f ? log1pf(expf(x)) : x; }

}  // namespace vimzoo_cuda
