// vimzoo CUDA selective-scan kernels (plain / reverse / locally bi-directional / bidirectional; fwd + bwd).
//
// Straightforward, correctness-first design: one warp per (batch, channel) row, lanes over the state dim n
// (lane handles n = lane, lane+32, ...; n <= 32 * kMaxPerLane), a sequential loop over the tokens in scan order
// (position t = k, or l-1-k when reverse: no flips), warp-shuffle reductions for the per-token sums over n.
// The backward recomputes the forward states into an fp32 scratch buffer (b, d, l, n) (plus two (b, d, W, n) window
// buffers) and accumulates dB/dC with atomicAdd. Layout contract as the CPU kernel: u, delta, z, dout (b, d, l);
// A (d, n), Bt, Ct (b, l, n), D, delta_bias (d,) in fp32. Input dtypes: fp32 and bf16 (compute in fp32). Only plain
// C++/CUDA headers are included here so nvcc compiles quickly; the torch-facing code lives in scan_cuda.cpp.
#ifndef VIMZOO_CUDA_EMULATION  // tests/cuda_emu compiles this file as C++ with a warp emulator
#include <cuda_runtime.h>
#endif
#include <c10/util/BFloat16.h>

#include <cstdint>

#include "device_math.h"
#include "scan_params.h"

namespace vimzoo_cuda {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxPerLane = 8;  // n <= 256

__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float silu_f(float x) { return x * sigmoid_f(x); }
__device__ __forceinline__ float dsilu_f(float x) {
  const float s = sigmoid_f(x);
  return s * (1.f + x * (1.f - s));
}
template <typename T>
__device__ __forceinline__ float ld(const void* p, int64_t i) {
  return static_cast<float>(static_cast<const T*>(p)[i]);
}

// Forward of one row: y[t] (+)= Σ_n C h + D u for every token; lane 0 writes y (fp32 scratch, original order).
template <typename T>
__device__ void row_forward(const ScanParams& p, int64_t row, int lane, float* __restrict__ y, bool accumulate) {
  const int64_t L = p.len, N = p.nstate, W = p.window < 1 ? 1 : p.window;
  const int64_t bi = row / p.dim, di = row % p.dim;
  const int64_t base = row * L;
  const float* Bt = p.Bt + bi * L * N;
  const float* Ct = p.Ct + bi * L * N;
  float A[kMaxPerLane], h[kMaxPerLane], hb[kMaxPerLane];
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t n = lane + 32 * j;
    A[j] = n < N ? p.A[di * N + n] : 0.f;
    h[j] = 0.f;
  }
  const float Dv = p.D ? p.D[di] : 0.f, bias = p.bias ? p.bias[di] : 0.f;
  for (int64_t k0 = 0; k0 < L; k0 += W) {
    const int64_t k1 = k0 + W < L ? k0 + W : L;
    for (int64_t k = k0; k < k1; ++k) {  // global forward scan
      const int64_t t = p.reverse ? L - 1 - k : k;
      float dt = ld<T>(p.delta, base + t) + bias;
      if (p.softplus) dt = softplus_f(dt);
      const float uu = ld<T>(p.u, base + t);
      const float du = dt * uu;
      float part = 0.f;
#pragma unroll
      for (int j = 0; j < kMaxPerLane; ++j) {
        const int64_t n = lane + 32 * j;
        if (n < N) {
          h[j] = expf(dt * A[j]) * h[j] + du * Bt[t * N + n];
          part += h[j] * Ct[t * N + n];
        }
      }
      part = warp_sum(part);
      if (lane == 0) y[base + t] = (accumulate ? y[base + t] : 0.f) + part + Dv * uu;
    }
    if (W > 1) {  // local backward scan inside the window: adds a_k · hb_{k+1}
#pragma unroll
      for (int j = 0; j < kMaxPerLane; ++j) hb[j] = 0.f;
      for (int64_t k = k1 - 1; k >= k0; --k) {
        const int64_t t = p.reverse ? L - 1 - k : k;
        float dt = ld<T>(p.delta, base + t) + bias;
        if (p.softplus) dt = softplus_f(dt);
        const float du = dt * ld<T>(p.u, base + t);
        float part = 0.f;
#pragma unroll
        for (int j = 0; j < kMaxPerLane; ++j) {
          const int64_t n = lane + 32 * j;
          if (n < N) {
            const float a = expf(dt * A[j]);
            const float r = a * hb[j];
            hb[j] = r + du * Bt[t * N + n];
            part += r * Ct[t * N + n];
          }
        }
        part = warp_sum(part);
        if (lane == 0) y[base + t] += part;
      }
    }
  }
}

template <typename T>
__device__ void gate_store(const ScanParams& p, int64_t row, int lane, const float* __restrict__ y, T* out) {
  __syncwarp();
  const int64_t L = p.len, base = row * L;
  for (int64_t t = lane; t < L; t += 32) {
    float v = y[base + t];
    if (p.z) v *= silu_f(ld<T>(p.z, base + t));
    out[base + t] = static_cast<T>(v);
  }
}

template <typename T>
__global__ void scan_fwd_kernel(ScanParams p, float* y, T* out) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= p.batch * p.dim) return;
  row_forward<T>(p, row, lane, y, false);
  gate_store<T>(p, row, lane, y, out);
}

template <typename T>
__global__ void bidir_fwd_kernel(ScanParams pf, ScanParams pb, float* y, T* out) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= pf.batch * pf.dim) return;
  row_forward<T>(pf, row, lane, y, false);
  row_forward<T>(pb, row, lane, y, true);  // same lane 0 wrote y: program order suffices
  gate_store<T>(pf, row, lane, y, out);
}

// Backward (docs/kernels.md, "Backward"). Scratch (fp32): hf (b, d, l, n) indexed by scan step k; hb and dxl (b, d, W, n) for the
// current window only (W = the clamped window; 1 for the plain scan).
template <typename T>
__global__ void scan_bwd_kernel(ScanParams p, float* __restrict__ hf, float* __restrict__ hbs,
                                float* __restrict__ dxls, T* du_out, T* ddelta_out, T* dz_out, float* dA_rows,
                                float* dD_rows, float* dbias_rows, float* dBt, float* dCt) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= p.batch * p.dim) return;
  const int64_t L = p.len, N = p.nstate, W = p.window < 1 ? 1 : (p.window > L ? L : p.window);
  const int64_t bi = row / p.dim, di = row % p.dim;
  const int64_t base = row * L;
  const float* Bt = p.Bt + bi * L * N;
  const float* Ct = p.Ct + bi * L * N;
  float* dB = dBt + bi * L * N;
  float* dC = dCt + bi * L * N;
  float* hfr = hf + base * N;
  float* hbr = hbs + row * W * N;     // window-local scratch: (b, d, W, n)
  float* dxl_s = dxls + row * W * N;
  const float Dv = p.D ? p.D[di] : 0.f, bias = p.bias ? p.bias[di] : 0.f;
  float A[kMaxPerLane], h[kMaxPerLane], anext[kMaxPerLane], dxl[kMaxPerLane], aprev[kMaxPerLane],
      dxr[kMaxPerLane], dA[kMaxPerLane];
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t n = lane + 32 * j;
    A[j] = n < N ? p.A[di * N + n] : 0.f;
    h[j] = 0.f;
    anext[j] = 0.f;
    dxl[j] = 0.f;
    dA[j] = 0.f;
    aprev[j] = 0.f;
    dxr[j] = 0.f;
  }
  // 1) forward recompute of hf.
  for (int64_t k = 0; k < L; ++k) {
    const int64_t t = p.reverse ? L - 1 - k : k;
    float dt = ld<T>(p.delta, base + t) + bias;
    if (p.softplus) dt = softplus_f(dt);
    const float du = dt * ld<T>(p.u, base + t);
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j) {
      const int64_t n = lane + 32 * j;
      if (n < N) {
        h[j] = expf(dt * A[j]) * h[j] + du * Bt[t * N + n];
        hfr[k * N + n] = h[j];
      }
    }
  }
  float dD_acc = 0.f, dbias_acc = 0.f;
  const int64_t nwin = (L + W - 1) / W;
  for (int64_t w = nwin - 1; w >= 0; --w) {
    const int64_t k0 = w * W, k1 = k0 + W < L ? k0 + W : L;
    // 2a) reverse: local hb and global adjoint dxl.
    for (int64_t k = k1 - 1; k >= k0; --k) {
      const int64_t t = p.reverse ? L - 1 - k : k;
      float dt = ld<T>(p.delta, base + t) + bias;
      if (p.softplus) dt = softplus_f(dt);
      const float du = dt * ld<T>(p.u, base + t);
      float g = ld<T>(p.dout, base + t);
      if (p.z) g *= silu_f(ld<T>(p.z, base + t));
      const bool wend = (k + 1 == k1);
#pragma unroll
      for (int j = 0; j < kMaxPerLane; ++j) {
        const int64_t n = lane + 32 * j;
        if (n < N) {
          const float a = expf(dt * A[j]);
          const float bv = du * Bt[t * N + n];
          h[j] = wend ? bv : a * h[j] + bv;  // h reused as hb
          hbr[(k - k0) * N + n] = h[j];
          dxl[j] = g * Ct[t * N + n] + anext[j] * dxl[j];
          dxl_s[(k - k0) * N + n] = dxl[j];
          anext[j] = a;
        }
      }
    }
    // 2b) forward: window-local adjoint dxr and all gradients.
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t = p.reverse ? L - 1 - k : k;
      const float raw = ld<T>(p.delta, base + t) + bias;
      const float dt = p.softplus ? softplus_f(raw) : raw;
      const float uu = ld<T>(p.u, base + t);
      const float du = dt * uu;
      const float gout = ld<T>(p.dout, base + t);
      const float zv = p.z ? ld<T>(p.z, base + t) : 0.f;
      const float g = p.z ? gout * silu_f(zv) : gout;
      const bool wstart = (k == k0);
      float s_dbB = 0.f, s_gAA = 0.f, s_y = 0.f;
#pragma unroll
      for (int j = 0; j < kMaxPerLane; ++j) {
        const int64_t n = lane + 32 * j;
        if (n < N) {
          const float a = expf(dt * A[j]);
          const float bv = du * Bt[t * N + n];
          const float c = Ct[t * N + n];
          const float G = g * c;
          dxr[j] = wstart ? G : G + aprev[j] * dxr[j];
          const float xl = dxl_s[(k - k0) * N + n];
          const float hfk = hfr[k * N + n], hbk = hbr[(k - k0) * N + n];
          const float db = xl + dxr[j] - G;
          const float gA = xl * (hfk - bv) + dxr[j] * (hbk - bv);
          const float hk = hfk + hbk - bv;
          s_dbB += db * Bt[t * N + n];
          s_gAA += gA * A[j];
          s_y += hk * c;
          dA[j] += dt * gA;
          atomicAdd(dB + t * N + n, db * du);
          atomicAdd(dC + t * N + n, g * hk);
          aprev[j] = a;
        }
      }
      s_dbB = warp_sum(s_dbB);
      s_gAA = warp_sum(s_gAA);
      s_y = warp_sum(s_y);
      if (lane == 0) {
        static_cast<T*>(du_out)[base + t] = static_cast<T>(s_dbB * dt + Dv * g);
        float ddt = s_dbB * uu + s_gAA;
        if (p.softplus) ddt *= sigmoid_f(raw);
        static_cast<T*>(ddelta_out)[base + t] = static_cast<T>(ddt);
        dbias_acc += ddt;
        dD_acc += g * uu;
        if (p.z) dz_out[base + t] = static_cast<T>(gout * (s_y + Dv * uu) * dsilu_f(zv));
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t n = lane + 32 * j;
    if (n < N) dA_rows[row * N + n] = dA[j];
  }
  if (lane == 0) {
    dD_rows[row] = dD_acc;
    dbias_rows[row] = dbias_acc;
  }
}

#ifndef VIMZOO_CUDA_EMULATION
inline unsigned grid_for(const ScanParams& p) {
  return static_cast<unsigned>((p.batch * p.dim + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

// Host launchers (dtype: 0 = fp32, 1 = bf16). Return the launch error, if any.
cudaError_t launch_scan_fwd(const ScanParams& p, int dtype, float* y, void* out, cudaStream_t stream) {
  if (p.batch * p.dim == 0) return cudaSuccess;
  const dim3 block(32 * kWarpsPerBlock), grid(grid_for(p));
  if (dtype == 0) {
    scan_fwd_kernel<float><<<grid, block, 0, stream>>>(p, y, static_cast<float*>(out));
  } else {
    scan_fwd_kernel<c10::BFloat16><<<grid, block, 0, stream>>>(p, y, static_cast<c10::BFloat16*>(out));
  }
  return cudaGetLastError();
}

cudaError_t launch_bidir_fwd(const ScanParams& pf, const ScanParams& pb, int dtype, float* y, void* out,
                             cudaStream_t stream) {
  if (pf.batch * pf.dim == 0) return cudaSuccess;
  const dim3 block(32 * kWarpsPerBlock), grid(grid_for(pf));
  if (dtype == 0) {
    bidir_fwd_kernel<float><<<grid, block, 0, stream>>>(pf, pb, y, static_cast<float*>(out));
  } else {
    bidir_fwd_kernel<c10::BFloat16><<<grid, block, 0, stream>>>(pf, pb, y, static_cast<c10::BFloat16*>(out));
  }
  return cudaGetLastError();
}

cudaError_t launch_scan_bwd(const ScanParams& p, int dtype, float* hf, float* hb, float* dxl, void* du,
                            void* ddelta, void* dz, float* dA_rows, float* dD_rows, float* dbias_rows, float* dBt,
                            float* dCt, cudaStream_t stream) {
  if (p.batch * p.dim == 0) return cudaSuccess;
  const dim3 block(32 * kWarpsPerBlock), grid(grid_for(p));
  if (dtype == 0) {
    scan_bwd_kernel<float><<<grid, block, 0, stream>>>(p, hf, hb, dxl, static_cast<float*>(du),
                                                       static_cast<float*>(ddelta), static_cast<float*>(dz), dA_rows,
                                                       dD_rows, dbias_rows, dBt, dCt);
  } else {
    using bf = c10::BFloat16;
    scan_bwd_kernel<bf><<<grid, block, 0, stream>>>(p, hf, hb, dxl, static_cast<bf*>(du), static_cast<bf*>(ddelta),
                                                    static_cast<bf*>(dz), dA_rows, dD_rows, dbias_rows, dBt, dCt);
  }
  return cudaGetLastError();
}

#endif  // VIMZOO_CUDA_EMULATION

}  // namespace vimzoo_cuda
