// The CUDA-on-CPU shim shared by the emulation harnesses (cuda_emu.cpp: selective scan; ssd_emu.cpp: SSD / Hydra).
//
// Every CUDA thread becomes a std::thread; each warp of 32 threads shares a std::barrier that implements
// __shfl_xor_sync / __syncwarp in lock-step; atomicAdd maps to std::atomic_ref. Blocks run one after another. This
// checks a kernel's indexing, recurrences and reductions; it says nothing about GPU-specific behaviour (memory
// model, occupancy, speed). Include it before the kernel source.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#define VIMZOO_CUDA_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
thread_local dim3 threadIdx, blockIdx;

struct WarpCtx {
  std::barrier<> bar{32};
  float buf[32];
};
thread_local WarpCtx* tl_warp = nullptr;
thread_local int tl_lane = 0;

inline float __shfl_xor_sync(unsigned, float v, int off) {
  tl_warp->buf[tl_lane] = v;
  tl_warp->bar.arrive_and_wait();
  const float r = tl_warp->buf[tl_lane ^ off];
  tl_warp->bar.arrive_and_wait();
  return r;
}
inline void __syncwarp(unsigned = 0xffffffffu) { tl_warp->bar.arrive_and_wait(); }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }

// grid = ceil(rows / warps per block) blocks of 32 * warps threads, one block at a time.
template <typename F>
void emulate_launch(int64_t rows, int warps_per_block, F&& kernel) {
  const int64_t grid = (rows + warps_per_block - 1) / warps_per_block;
  for (int64_t b = 0; b < grid; ++b) {
    std::vector<std::unique_ptr<WarpCtx>> warps;
    for (int w = 0; w < warps_per_block; ++w) warps.push_back(std::make_unique<WarpCtx>());
    std::vector<std::thread> threads;
    for (int t = 0; t < 32 * warps_per_block; ++t) {
      threads.emplace_back([&, t, b] {
        blockIdx = dim3(static_cast<unsigned>(b));
        threadIdx = dim3(static_cast<unsigned>(t));
        tl_warp = warps[t / 32].get();
        tl_lane = t % 32;
        kernel();
      });
    }
    for (auto& th : threads) th.join();
  }
}
