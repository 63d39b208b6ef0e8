// vimzoo CUDA kernels for the Mamba-2 (SSD) scan and Hydra's quasiseparable core: one direction per launch.
//
// Correctness-first design, like scan_cuda_kernel.cu: one warp per (batch, head, p) row (a row is a scan whose state
// is the N-vector S[p, :]), lanes over the state dim n (n = lane, lane + 32, ...; n <= 32 * kSsdMaxPerLane), a
// sequential loop over the tokens in scan order (position l-1-k when reverse: no flips), warp-shuffle sums over n.
// Per head the decay exp(Δ·A_h) is one scalar and B / C are shared by the heads of a group (Mamba-2), so every row of
// a head reads the same B, C, dt. The backward recomputes the states into an fp32 scratch (rows, l, n) and
// accumulates the per-head dB / dC and the per-token ddt / da with atomicAdd over the p rows; the remaining
// element-wise chain (A·da, softplus', dA, the diagonal term) is ATen code in ssd_torch.h. fp32 only.
#ifndef VIMZOO_CUDA_EMULATION  // tests/cuda_emu compiles this file as C++ with a warp emulator
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "device_math.h"
#include "ssd_params.h"

namespace vimzoo_cuda {

constexpr int kSsdWarpsPerBlock = 4;
constexpr int kSsdMaxPerLane = 8;  // d_state <= 256

struct SsdRow {
  int64_t bi, h, pp, g;
};

__device__ __forceinline__ SsdRow ssd_row(const SsdParams& p, int64_t row) {
  const int64_t hp = p.nheads * p.headdim;
  SsdRow r;
  r.bi = row / hp;
  r.h = (row / p.headdim) % p.nheads;
  r.pp = row % p.headdim;
  r.g = r.h / (p.nheads / p.ngroups);
  return r;
}

__device__ __forceinline__ int64_t ssd_pos(const SsdDirParams& d, int64_t L, int64_t k) {
  return d.reverse ? L - 1 - k : k;
}

// Δ_k of one head at position t.
__device__ __forceinline__ float ssd_delta(const SsdParams& p, const SsdDirParams& d, int64_t tok, int64_t h) {
  float dt = d.dt[tok * p.nheads + h] + (p.bias ? p.bias[h] : 0.f);
  return p.softplus ? softplus_f(dt) : dt;
}

// y (b, l, h, p) += this direction's (shifted) output.
__global__ void ssd_dir_fwd_kernel(SsdParams p, SsdDirParams d, float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSsdWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= p.batch * p.nheads * p.headdim) return;
  const SsdRow r = ssd_row(p, row);
  const int64_t L = p.len, N = p.nstate, H = p.nheads, P = p.headdim;
  float S[kSsdMaxPerLane];
#pragma unroll
  for (int j = 0; j < kSsdMaxPerLane; ++j) {
    const int64_t n = lane + 32 * j;
    S[j] = (n < N && p.init) ? p.init[((r.bi * H + r.h) * N + n) * P + r.pp] : 0.f;
  }
  const float A = p.A[r.h];
  for (int64_t k = 0; k < L; ++k) {
    const int64_t tok = r.bi * L + ssd_pos(d, L, k);
    const float delta = ssd_delta(p, d, tok, r.h);
    const float decay = expf(delta * A), dx = delta * p.x[(tok * H + r.h) * P + r.pp];
    const float* Bk = d.B + (tok * p.ngroups + r.g) * N;
    const float* Ck = d.C + (tok * p.ngroups + r.g) * N;
    float part = 0.f;
#pragma unroll
    for (int j = 0; j < kSsdMaxPerLane; ++j) {
      const int64_t n = lane + 32 * j;
      if (n < N) {
        S[j] = decay * S[j] + dx * Bk[n];
        part += S[j] * Ck[n];
      }
    }
    part = warp_sum(part);
    const int64_t kk = k + d.shift;
    if (lane == 0 && kk < L) y[((r.bi * L + ssd_pos(d, L, kk)) * H + r.h) * P + r.pp] += part;
  }
}

// The adjoint of ssd_dir_fwd_kernel for one direction (see ssd_params.h for the outputs). R = ∂L/∂S_k:
//   R_k = dy_k C_k + exp(Δ_{k+1} A) R_{k+1},   dx_k = Δ_k R_k·B_k,   dB_k += Δ_k x_k R_k,   dC_k += dy_k S_k,
//   da_k = exp(Δ_k A) S_{k-1}·R_k (the gradient of the log-decay a_k = Δ_k A),   dinit = exp(Δ_0 A) R_0.
__global__ void ssd_dir_bwd_kernel(SsdParams p, SsdDirParams d, const float* __restrict__ dy, SsdBwdOut out) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kSsdWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= p.batch * p.nheads * p.headdim) return;
  const SsdRow r = ssd_row(p, row);
  const int64_t L = p.len, N = p.nstate, H = p.nheads, P = p.headdim;
  float* hs = out.hs + row * L * N;
  const float A = p.A[r.h];
  float S[kSsdMaxPerLane], R[kSsdMaxPerLane];
#pragma unroll
  for (int j = 0; j < kSsdMaxPerLane; ++j) {
    const int64_t n = lane + 32 * j;
    S[j] = (n < N && p.init) ? p.init[((r.bi * H + r.h) * N + n) * P + r.pp] : 0.f;
    R[j] = 0.f;
  }
  for (int64_t k = 0; k < L; ++k) {  // recompute the states S_k
    const int64_t tok = r.bi * L + ssd_pos(d, L, k);
    const float delta = ssd_delta(p, d, tok, r.h);
    const float decay = expf(delta * A), dx = delta * p.x[(tok * H + r.h) * P + r.pp];
    const float* Bk = d.B + (tok * p.ngroups + r.g) * N;
#pragma unroll
    for (int j = 0; j < kSsdMaxPerLane; ++j) {
      const int64_t n = lane + 32 * j;
      if (n < N) {
        S[j] = decay * S[j] + dx * Bk[n];
        hs[k * N + n] = S[j];
      }
    }
  }
  for (int64_t k = L - 1; k >= 0; --k) {
    const int64_t tok = r.bi * L + ssd_pos(d, L, k);
    const int64_t kk = k + d.shift;
    const float dyk = kk < L ? dy[((r.bi * L + ssd_pos(d, L, kk)) * H + r.h) * P + r.pp] : 0.f;
    const float delta = ssd_delta(p, d, tok, r.h);
    const float decay = expf(delta * A), xk = p.x[(tok * H + r.h) * P + r.pp];
    const float* Bk = d.B + (tok * p.ngroups + r.g) * N;
    const float* Ck = d.C + (tok * p.ngroups + r.g) * N;
    float gb = 0.f, sr = 0.f;
#pragma unroll
    for (int j = 0; j < kSsdMaxPerLane; ++j) {
      const int64_t n = lane + 32 * j;
      if (n < N) {
        R[j] += dyk * Ck[n];
        gb += R[j] * Bk[n];
        const float sprev = k > 0 ? hs[(k - 1) * N + n]
                                  : (p.init ? p.init[((r.bi * H + r.h) * N + n) * P + r.pp] : 0.f);
        sr += sprev * R[j];
        atomicAdd(out.dB + (tok * H + r.h) * N + n, delta * xk * R[j]);
        atomicAdd(out.dC + (tok * H + r.h) * N + n, hs[k * N + n] * dyk);
      }
    }
    gb = warp_sum(gb);
    sr = warp_sum(sr);
    if (lane == 0) {
      out.dx[(tok * H + r.h) * P + r.pp] += delta * gb;
      atomicAdd(out.ddt_direct + tok * H + r.h, xk * gb);
      atomicAdd(out.da + tok * H + r.h, decay * sr);
    }
#pragma unroll
    for (int j = 0; j < kSsdMaxPerLane; ++j) R[j] *= decay;
  }
  if (out.dinit) {
#pragma unroll
    for (int j = 0; j < kSsdMaxPerLane; ++j) {
      const int64_t n = lane + 32 * j;
      if (n < N) out.dinit[((r.bi * H + r.h) * N + n) * P + r.pp] += R[j];
    }
  }
}

#ifndef VIMZOO_CUDA_EMULATION
inline unsigned ssd_grid_for(const SsdParams& p) {
  return static_cast<unsigned>((p.batch * p.nheads * p.headdim + kSsdWarpsPerBlock - 1) / kSsdWarpsPerBlock);
}

cudaError_t launch_ssd_dir_fwd(const SsdParams& p, const SsdDirParams& d, float* y, cudaStream_t stream) {
  if (p.batch * p.nheads * p.headdim == 0 || p.len == 0) return cudaSuccess;
  ssd_dir_fwd_kernel<<<ssd_grid_for(p), 32 * kSsdWarpsPerBlock, 0, stream>>>(p, d, y);
  return cudaGetLastError();
}

cudaError_t launch_ssd_dir_bwd(const SsdParams& p, const SsdDirParams& d, const float* dy, const SsdBwdOut& out,
                               cudaStream_t stream) {
  if (p.batch * p.nheads * p.headdim == 0 || p.len == 0) return cudaSuccess;
  ssd_dir_bwd_kernel<<<ssd_grid_for(p), 32 * kSsdWarpsPerBlock, 0, stream>>>(p, d, dy, out);
  return cudaGetLastError();
}
#endif  // VIMZOO_CUDA_EMULATION

}  // namespace vimzoo_cuda
