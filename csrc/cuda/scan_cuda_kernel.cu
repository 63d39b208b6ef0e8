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

// Backward (docs/kernels.md, "Backward"). Scratch (fp32): hf (b, d, l, n) indexed by scan step k; hb and dxl
// (b, d, W, n) for the current window only (W = the clamped window; 1 for the plain scan). One warp per row, as the
// forward; the row's passes below share its pointers (BwdRow) and keep their per-lane state (kMaxPerLane floats) in
// registers.
using LaneArr = float[kMaxPerLane];

struct BwdRow {
  int64_t L, N, W, base;
  const float *Bt, *Ct;
  float *dB, *dC;                 // (l, n) of the row's batch element, summed over channels with atomicAdd
  float *hf, *hb, *dxl;           // the row's scratch: hf (l, n); hb, dxl (W, n) of the current window
  float Dv, bias;
};

// Δ of token t (bias and softplus applied) from the raw δ.
template <typename T>
__device__ __forceinline__ float token_delta(const ScanParams& p, const BwdRow& r, int64_t t, float* raw_out) {
  const float raw = ld<T>(p.delta, r.base + t) + r.bias;
  if (raw_out) *raw_out = raw;
  return p.softplus ? softplus_f(raw) : raw;
}

// Token t's scalars for the window passes: Δ (and the raw δ + bias it came from), u, dout, z and the gated output
// gradient g = dout·silu(z).
struct BwdToken {
  float raw, dt, uu, gout, zv, g;
};

template <typename T>
__device__ __forceinline__ BwdToken bwd_token(const ScanParams& p, const BwdRow& r, int64_t t) {
  BwdToken tk;
  tk.dt = token_delta<T>(p, r, t, &tk.raw);
  tk.uu = ld<T>(p.u, r.base + t);
  tk.gout = ld<T>(p.dout, r.base + t);
  tk.zv = p.z ? ld<T>(p.z, r.base + t) : 0.f;
  tk.g = p.z ? tk.gout * silu_f(tk.zv) : tk.gout;
  return tk;
}

// 1) Forward recompute of hf in scan order.
template <typename T>
__device__ __forceinline__ void bwd_recompute(const ScanParams& p, const BwdRow& r, int lane, const LaneArr& A,
                                              LaneArr& h) {
  for (int64_t k = 0; k < r.L; ++k) {
    const int64_t t = p.reverse ? r.L - 1 - k : k;
    const float dt = token_delta<T>(p, r, t, nullptr);
    const float du = dt * ld<T>(p.u, r.base + t);
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j) {
      const int64_t n = lane + 32 * j;
      if (n < r.N) {
        h[j] = expf(dt * A[j]) * h[j] + du * r.Bt[t * r.N + n];
        r.hf[k * r.N + n] = h[j];
      }
    }
  }
}

// 2a) Reverse through window [k0, k1): the local state hb (in h) and the global adjoint dxl (carried across
//     windows with a_{k+1} in anext), both kept per step for 2b.
template <typename T>
__device__ __forceinline__ void bwd_window_reverse(const ScanParams& p, const BwdRow& r, int lane, int64_t k0,
                                                   int64_t k1, const LaneArr& A, LaneArr& h, LaneArr& anext,
                                                   LaneArr& dxl) {
  for (int64_t k = k1 - 1; k >= k0; --k) {
    const int64_t t = p.reverse ? r.L - 1 - k : k;
    const BwdToken tk = bwd_token<T>(p, r, t);
    const float dt = tk.dt, du = dt * tk.uu, g = tk.g;
    const bool wend = (k + 1 == k1);
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j) {
      const int64_t n = lane + 32 * j;
      if (n < r.N) {
        const float a = expf(dt * A[j]);
        const float bv = du * r.Bt[t * r.N + n];
        h[j] = wend ? bv : a * h[j] + bv;  // h reused as hb
        r.hb[(k - k0) * r.N + n] = h[j];
        dxl[j] = g * r.Ct[t * r.N + n] + anext[j] * dxl[j];
        r.dxl[(k - k0) * r.N + n] = dxl[j];
        anext[j] = a;
      }
    }
  }
}

// Per-row gradient sums that 2b accumulates: dA per lane state, dD and dΔ-bias on lane 0.
struct BwdSums {
  LaneArr dA;
  float dD, dbias;
};

// 2b) Forward through window [k0, k1): the window-local adjoint dxr (restarted at the window start) and every
//     gradient; lane 0 writes the per-token outputs.
template <typename T>
__device__ __forceinline__ void bwd_window_grads(const ScanParams& p, const BwdRow& r, int lane, int64_t k0,
                                                 int64_t k1, const LaneArr& A, LaneArr& aprev, LaneArr& dxr,
                                                 BwdSums& acc, T* du_out, T* ddelta_out, T* dz_out) {
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t t = p.reverse ? r.L - 1 - k : k;
    const BwdToken tk = bwd_token<T>(p, r, t);
    const float dt = tk.dt, uu = tk.uu, du = dt * uu, g = tk.g;
    const bool wstart = (k == k0);
    float s_dbB = 0.f, s_gAA = 0.f, s_y = 0.f;
#pragma unroll
    for (int j = 0; j < kMaxPerLane; ++j) {
      const int64_t n = lane + 32 * j;
      if (n < r.N) {
        const float a = expf(dt * A[j]);
        const float bv = du * r.Bt[t * r.N + n];
        const float c = r.Ct[t * r.N + n];
        const float G = g * c;
        dxr[j] = wstart ? G : G + aprev[j] * dxr[j];
        const float xl = r.dxl[(k - k0) * r.N + n];
        const float hfk = r.hf[k * r.N + n], hbk = r.hb[(k - k0) * r.N + n];
        const float db = xl + dxr[j] - G;
        const float gA = xl * (hfk - bv) + dxr[j] * (hbk - bv);
        const float hk = hfk + hbk - bv;
        s_dbB += db * r.Bt[t * r.N + n];
        s_gAA += gA * A[j];
        s_y += hk * c;
        acc.dA[j] += dt * gA;
        atomicAdd(r.dB + t * r.N + n, db * du);
        atomicAdd(r.dC + t * r.N + n, g * hk);
        aprev[j] = a;
      }
    }
    s_dbB = warp_sum(s_dbB);
    s_gAA = warp_sum(s_gAA);
    s_y = warp_sum(s_y);
    if (lane == 0) {
      const int64_t i = r.base + t;
      du_out[i] = static_cast<T>(s_dbB * dt + r.Dv * g);
      float ddt = s_dbB * uu + s_gAA;
      if (p.softplus) ddt *= sigmoid_f(tk.raw);
      ddelta_out[i] = static_cast<T>(ddt);
      acc.dbias += ddt;
      acc.dD += g * uu;
      if (p.z) dz_out[i] = static_cast<T>(tk.gout * (s_y + r.Dv * uu) * dsilu_f(tk.zv));
    }
  }
}

template <typename T>
__global__ void scan_bwd_kernel(ScanParams p, float* __restrict__ hf, float* __restrict__ hbs,
                                float* __restrict__ dxls, T* du_out, T* ddelta_out, T* dz_out, float* dA_rows,
                                float* dD_rows, float* dbias_rows, float* dBt, float* dCt) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= p.batch * p.dim) return;
  const int64_t L = p.len, N = p.nstate, W = p.window < 1 ? 1 : (p.window > L ? L : p.window);
  const int64_t bi = row / p.dim, di = row % p.dim;
  const BwdRow r{L, N, W, row * L, p.Bt + bi * L * N, p.Ct + bi * L * N, dBt + bi * L * N, dCt + bi * L * N,
                 hf + row * L * N, hbs + row * W * N, dxls + row * W * N, p.D ? p.D[di] : 0.f,
                 p.bias ? p.bias[di] : 0.f};
  float A[kMaxPerLane], h[kMaxPerLane], anext[kMaxPerLane], dxl[kMaxPerLane], aprev[kMaxPerLane],
      dxr[kMaxPerLane];
  BwdSums acc;
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t n = lane + 32 * j;
    A[j] = n < N ? p.A[di * N + n] : 0.f;
    h[j] = anext[j] = dxl[j] = aprev[j] = dxr[j] = acc.dA[j] = 0.f;
  }
  acc.dD = acc.dbias = 0.f;
  bwd_recompute<T>(p, r, lane, A, h);
  for (int64_t w = (L + W - 1) / W - 1; w >= 0; --w) {   // 2) windows, last to first
    const int64_t k0 = w * W, k1 = k0 + W < L ? k0 + W : L;
    bwd_window_reverse<T>(p, r, lane, k0, k1, A, h, anext, dxl);
    bwd_window_grads<T>(p, r, lane, k0, k1, A, aprev, dxr, acc, du_out, ddelta_out, dz_out);
  }
#pragma unroll
  for (int j = 0; j < kMaxPerLane; ++j) {
    const int64_t n = lane + 32 * j;
    if (n < N) dA_rows[row * N + n] = acc.dA[j];
  }
  if (lane == 0) {
    dD_rows[row] = acc.dD;
    dbias_rows[row] = acc.dbias;
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
