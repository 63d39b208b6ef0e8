// Token-major backward of the selective scan (plain / reverse / LB) for fp32 channel-contiguous (b, d, l) views:
// the training counterpart of scan_tm.cpp, with no layout copies.
//
// Per (batch, 16-channel block) task: a pre-pass computes Δ, u, σ(δ + bias) and the gate terms for every token; the
// forward recompute keeps h and a in the task's buffers (recurrence.h); the reverse pass runs the adjoints and
// accumulates every gradient (the formulas of docs/kernels.md "Backward", as the row kernel scan_rows_bwd.cpp). Sums
// over the state dim n are vector adds (lanes are channels); sums over channels (dB, dC) are kept per worker as
// 16-lane partial sums and reduced over lanes once, so no horizontal sum runs per token. With
// enough batch rows each worker takes whole rows: its partial sums cover one row (and stay in cache) and are reduced
// as the row ends; otherwise a row's blocks spread over the workers, which keep partial sums per batch row, reduced
// over workers and lanes at the end.
//
// The fused mixer's variant (scan_bwd_tm_lowrank) takes Δ as the low-rank product dt · dt_projᵀ, formed per token as
// the forward kernel does, and returns the gradients of dt and dt_proj instead of dΔ: dt_proj's is a per-block sum
// over tokens, dt's a sum over channels kept like dB / dC. The tall-skinny GEMMs this replaces (rank 12 for Vim-T)
// run far below the GEMM library's peak, and dΔ is never written.
#include "kernels.h"
#include "recurrence.h"
#include "scan_tm.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace vimzoo::cpu {
namespace {

using O = VecOps<v16f>;

struct TmBwd {
  TmScan s;              // the forward's inputs (Δ from the (b, d, l) view)
  TokView dout;
  std::optional<TokView> z;
  float scale;           // the forward's output was scale · y · silu(z)
  float *du, *dd, *dz;   // token-major outputs (b, l, d): du, dd at bi * o_sb + t * o_st + c, dz at its own strides
  int64_t o_sb, o_st, dz_sb = 0, dz_st = 0;
  bool dz_accumulate = false;   // add dz to what the caller's tensor holds (the fused mixer's second direction)
  float *dA_rows, *dD_rows, *dbias_rows;  // (b, d, n), (b, d), (b, d)
  v16f *dBv, *dCv;       // per worker: (slot, prow, l, n) 16-lane partial sums over channels
  v16f* dDTv = nullptr;      // low-rank Δ: per worker (slot, prow, l, R) partial sums of d dt
  int64_t prow = 0;          // partial-sum rows per worker: 1 when workers own whole batch rows, else b
  float* dW_rows = nullptr;  // low-rank Δ: (b, d, R) d dt_proj per batch row
  int64_t Bsz, Dm, L, N;
  // The partial-sum row a worker (slot) uses for batch row bi: its only one when workers own whole rows.
  int64_t partial_row(int64_t slot, int64_t bi) const { return slot * prow + (prow == 1 ? 0 : bi); }
};

// Per-worker buffers: hs and abuf keep h_k and a_k at row k (scan order), xrw an LB window's dxr.
struct TmBwdWork {
  std::vector<v16f> A2, An, hs, abuf, vd, vu, vg, vsig, vdz, carry, hb, dA, xrw, Wv, dWv;
  TmBwdWork(int64_t L, int64_t N, int64_t W, int64_t R)
      : A2(N), An(N), hs(L * N), abuf(L * N), vd(L), vu(L), vg(L), vsig(L), vdz(L), carry(N), hb(N), dA(N),
        xrw(W > 1 ? W * N : 0), Wv(R), dWv(R) {}
};

// Δ, u, σ(δ + bias), g = scale·dout·silu(z) and scale·dout·silu'(z) for every token of the block (original order).
void bwd_prepass(const TmBwd& p, int64_t bi, int64_t c0, TmBwdWork& w) {
  const TmScan& s = p.s;
  const v16f vbias = s.bias ? O::load(s.bias + c0) : splatv<v16f>(0.0f);
  for (int64_t t = 0; t < p.L; ++t) {
    const v16f raw = tm_delta_raw(s, w.Wv.data(), bi, t, c0) + vbias;
    w.vd[t] = s.softplus ? softplus_fast(raw) : raw;
    w.vsig[t] = sigmoid_fast(raw);
    w.vu[t] = O::load(s.u.at(bi, t, c0));
    const v16f go = O::load(p.dout.at(bi, t, c0)) * p.scale;
    if (p.z) {
      const v16f zt = O::load(p.z->at(bi, t, c0));
      const v16f sz = sigmoid_fast(zt);
      w.vg[t] = go * zt * sz;
      w.vdz[t] = go * sz * (1.0f + zt * (1.0f - sz));   // · y gives dz
    } else {
      w.vg[t] = go;
    }
  }
}

// Per-token outputs and per-block accumulators shared by the plain and the LB reverse pass.
struct TokenGrads {
  v16f vD, dD, dbias;
  v16f* dDTrow;   // low-rank Δ: this worker's (l, R) partial sums of d dt for the batch row, else null
  inline void emit(const TmBwd& p, TmBwdWork& w, int64_t bi, int64_t t, int64_t c0, v16f s_dbB, v16f s_gAA,
                   v16f y) {
    const v16f vd = w.vd[t], vu = w.vu[t], g = w.vg[t];
    const int64_t off = bi * p.o_sb + t * p.o_st + c0;
    O::store(p.du + off, s_dbB * vd + vD * g);
    v16f ddt = s_dbB * vu + s_gAA;
    if (p.s.softplus) ddt *= w.vsig[t];
    if (dDTrow != nullptr) {   // Δ = dt · Wdtᵀ: d dt[t, r] += Σ_c dΔ Wdt[c, r], d Wdt[c, r] += dΔ dt[t, r]
      const float* dt = p.s.dt + bi * p.s.dt_sb + t * p.s.dt_st;
      v16f* ddt_row = dDTrow + t * p.s.R;
      for (int64_t r = 0; r < p.s.R; ++r) {
        ddt_row[r] += ddt * w.Wv[r];
        w.dWv[r] += ddt * dt[r];
      }
    } else {
      O::store(p.dd + off, ddt);
    }
    dbias += ddt;
    dD += g * vu;
    if (p.z) {
      float* q = p.dz + bi * p.dz_sb + t * p.dz_st + c0;
      const v16f v = (y + vD * vu) * w.vdz[t];
      O::store(q, p.dz_accumulate ? O::load(q) + v : v);
    }
  }
};

// What one (batch row, 16-channel block) task's passes share: the scan inputs of the row, the forward recompute's
// h and a (w.hs, w.abuf at row k, scan order), this worker's dB / dC partial-sum rows and the block's accumulators.
struct BlockBwd {
  const TmBwd& p;
  TmBwdWork& w;
  TokenGrads& tg;
  int64_t bi, c0, L, N;
  const float *Bb, *Cb;   // B, C of batch row bi, token t at t * bc_st
  v16f *dBrow, *dCrow;    // (l, n) partial sums over channels
  const v16f* zeros;      // h_{-1} = 0
  int64_t t_of(int64_t k) const { return p.s.reverse ? L - 1 - k : k; }
};

// 1) Forward recompute in scan order: h_k and a_k for every state.
template <int NC>
void recompute_states(const BlockBwd& c) {
  const TmScan& s = c.p.s;
  const int64_t N = NC > 0 ? NC : c.N;
  const v16f* A2 = c.w.A2.data();
  v16f* hs = c.w.hs.data();
  for (int64_t k = 0; k < c.L; ++k) {
    const int64_t t = c.t_of(k);
    const v16f vd = c.w.vd[t];
    const v16f vdu = vd * c.w.vu[t];
    const float* b = c.Bb + t * s.bc_st;
    v16f* hk = hs + k * N;
    const v16f* hprev = k ? hk - N : c.zeros;
    v16f* ak = c.w.abuf.data() + k * N;
    for (int64_t n = 0; n < N; ++n) {
      const StateStep<v16f> st = tm_state_step(vd, vdu, A2[n], b[n], hprev[n]);
      ak[n] = st.a;
      hk[n] = st.h;
    }
  }
}

// 2) Plain reverse pass: dxl_k = g_k C_k + a_{k+1} dxl_{k+1} (carry = a_{k+1} dxl_{k+1}); db = dxl;
//    gA = dxl (h_k - b_k) = dxl a_k h_{k-1} (the product form has no cancellation). The carry lives in a local
//    array (registers when N is a compile-time 16), not behind the dB / dC stores.
template <int NC>
void reverse_plain(const BlockBwd& c) {
  const int64_t N = NC > 0 ? NC : c.N;
  const v16f* An = c.w.An.data();
  const v16f* hs = c.w.hs.data();
  v16f* dA = c.w.dA.data();
  v16f cr_local[NC > 0 ? NC : 1];
  v16f* cr = NC > 0 ? cr_local : c.w.carry.data();
  for (int64_t n = 0; n < N; ++n) cr[n] = splatv<v16f>(0.0f);
  for (int64_t k = c.L - 1; k >= 0; --k) {
    const int64_t t = c.t_of(k);
    const v16f vd = c.w.vd[t], vdu = vd * c.w.vu[t], g = c.w.vg[t];
    const float* b = c.Bb + t * c.p.s.bc_st;
    const float* cc = c.Cb + t * c.p.s.bc_st;
    const v16f* hk = hs + k * N;
    const v16f* hprev = k ? hk - N : c.zeros;
    const v16f* ak = c.w.abuf.data() + k * N;
    v16f* dB = c.dBrow + t * N;
    v16f* dC = c.dCrow + t * N;
    v16f s_dbB = splatv<v16f>(0.0f), s_gAA = splatv<v16f>(0.0f), y = splatv<v16f>(0.0f);
    for (int64_t n = 0; n < N; ++n) {
      const v16f a = ak[n];
      const v16f dxl = g * cc[n] + cr[n];
      cr[n] = a * dxl;
      const v16f gA = dxl * a * hprev[n];
      s_dbB += dxl * b[n];
      s_gAA += gA * An[n];
      dA[n] += vd * gA;
      dB[n] += dxl * vdu;
      dC[n] += g * hk[n];
      y += hk[n] * cc[n];
    }
    c.tg.emit(c.p, c.w, c.bi, t, c.c0, s_dbB, s_gAA, y);
  }
}

// 2a) An LB window's forward pass: the window-local adjoint dxr_k = G_k + a_{k-1} dxr_{k-1} (G = g C, restarted at
//     the window start), kept per token in w.xrw.
template <int NC>
void lb_window_adjoint(const BlockBwd& c, int64_t k0, int64_t k1) {
  const int64_t N = NC > 0 ? NC : c.N;
  const v16f* abuf = c.w.abuf.data();
  v16f* xrw = c.w.xrw.data();
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t t = c.t_of(k);
    const v16f g = c.w.vg[t];
    const float* cc = c.Cb + t * c.p.s.bc_st;
    v16f* x = xrw + (k - k0) * N;
    if (k == k0) {
      for (int64_t n = 0; n < N; ++n) x[n] = g * cc[n];
    } else {
      const v16f* aprev = abuf + (k - 1) * N;
      for (int64_t n = 0; n < N; ++n) x[n] = g * cc[n] + aprev[n] * x[n - N];
    }
  }
}

// 2) LB reverse pass, windows last to first: 2a) above, then 2b) reverse through the window with the local state hb
//    (zero past the window end) and the global adjoint dxl carried in local arrays (registers when N is a
//    compile-time 16), b_k = Δ u B recomputed, and every gradient (the formulas of scan_rows_bwd.cpp).
template <int NC>
void reverse_lb(const BlockBwd& c) {
  const int64_t N = NC > 0 ? NC : c.N, L = c.L, W = c.p.s.W;
  const v16f* An = c.w.An.data();
  const v16f* hs = c.w.hs.data();
  const v16f* abuf = c.w.abuf.data();
  const v16f* xrw = c.w.xrw.data();
  v16f* dA = c.w.dA.data();
  v16f cr_local[NC > 0 ? NC : 1], hb_local[NC > 0 ? NC : 1];
  v16f* cr = NC > 0 ? cr_local : c.w.carry.data();   // a_{k+1} dxl_{k+1}
  v16f* hb = NC > 0 ? hb_local : c.w.hb.data();      // hb_{k+1}
  for (int64_t n = 0; n < N; ++n) cr[n] = splatv<v16f>(0.0f);
  for (int64_t win = (L + W - 1) / W - 1; win >= 0; --win) {
    const int64_t k0 = win * W, k1 = std::min(k0 + W, L);
    lb_window_adjoint<NC>(c, k0, k1);
    for (int64_t n = 0; n < N; ++n) hb[n] = splatv<v16f>(0.0f);
    for (int64_t k = k1 - 1; k >= k0; --k) {
      const int64_t t = c.t_of(k);
      const v16f vd = c.w.vd[t], vdu = vd * c.w.vu[t], g = c.w.vg[t];
      const float* b = c.Bb + t * c.p.s.bc_st;
      const float* cc = c.Cb + t * c.p.s.bc_st;
      const v16f* ak = abuf + k * N;
      const v16f* hk = hs + k * N;
      const v16f* hf_prev = k ? hk - N : c.zeros;
      const v16f* x = xrw + (k - k0) * N;
      v16f* dB = c.dBrow + t * N;
      v16f* dC = c.dCrow + t * N;
      v16f s_dbB = splatv<v16f>(0.0f), s_gAA = splatv<v16f>(0.0f), y = splatv<v16f>(0.0f);
      for (int64_t n = 0; n < N; ++n) {
        const v16f G = g * cc[n];
        const v16f dxl = G + cr[n];
        cr[n] = ak[n] * dxl;
        const LocalStep<v16f> ls = local_step(ak[n], vdu * b[n], hb[n]);   // ls.r = hb_k - b_k
        hb[n] = ls.hb;
        const v16f db = dxl + x[n] - G;
        const v16f gA = ak[n] * (dxl * hf_prev[n]) + x[n] * ls.r;   // (hf_k - b_k) = a_k hf_{k-1}
        const v16f h = hk[n] + ls.r;
        s_dbB += db * b[n];
        s_gAA += gA * An[n];
        y += h * cc[n];
        dA[n] += vd * gA;
        dB[n] += db * vdu;
        dC[n] += g * h;
      }
      c.tg.emit(c.p, c.w, c.bi, t, c.c0, s_dbB, s_gAA, y);
    }
  }
}

// Per-block results: dA (channels c0.., every n), dD, dbias, d dt_proj, for this batch row (summed over the batch
// later).
void store_block_results(const BlockBwd& c, int64_t R) {
  const TmBwd& p = c.p;
  for (int j = 0; j < kLanes; ++j) {
    const int64_t row = c.bi * p.Dm + c.c0 + j;
    for (int64_t n = 0; n < c.N; ++n) p.dA_rows[row * c.N + n] = c.w.dA[n][j];
    p.dD_rows[row] = c.tg.dD[j];
    p.dbias_rows[row] = c.tg.dbias[j];
    for (int64_t r = 0; r < R; ++r) p.dW_rows[row * R + r] = c.w.dWv[r][j];
  }
}

template <int NC>
void scan_block_bwd_tm(const TmBwd& p, int64_t bi, int64_t c0, int64_t slot, TmBwdWork& w) {
  const TmScan& s = p.s;
  const int64_t L = p.L, N = NC > 0 ? NC : p.N;
  tm_load_A(s, c0, N, w.A2.data(), w.An.data());
  const int64_t R = s.dt != nullptr ? s.R : 0;
  for (int64_t r = 0; r < R; ++r) {
    for (int j = 0; j < kLanes; ++j) w.Wv[r][j] = s.Wdt[(c0 + j) * R + r];
    w.dWv[r] = splatv<v16f>(0.0f);
  }
  bwd_prepass(p, bi, c0, w);
  for (int64_t n = 0; n < N; ++n) w.dA[n] = splatv<v16f>(0.0f);
  const int64_t prow = p.partial_row(slot, bi);
  TokenGrads tg{s.D ? O::load(s.D + c0) : splatv<v16f>(0.0f), splatv<v16f>(0.0f), splatv<v16f>(0.0f),
                R ? p.dDTv + prow * L * R : nullptr};
  const std::vector<v16f> zeros(N, splatv<v16f>(0.0f));
  const BlockBwd blk{p, w, tg, bi, c0, L, N, s.B + bi * s.bc_sb, s.C + bi * s.bc_sb, p.dBv + prow * L * N,
                     p.dCv + prow * L * N, zeros.data()};
  recompute_states<NC>(blk);
  if (s.W <= 1) {
    reverse_plain<NC>(blk);
  } else {
    reverse_lb<NC>(blk);
  }
  store_block_results(blk, R);
}

// out (b, l, n) = Σ over the workers that touched batch row bi, and over the 16 lanes, of the partial sums
// (slot, b, l, n, 16). Untouched (slot, bi) rows were never zeroed and are skipped.
at::Tensor reduce_partials(const v16f* partial, const std::vector<uint8_t>& touched, int64_t nslots, int64_t Bsz,
                           int64_t L, int64_t N, const at::TensorOptions& opts) {
  auto out = at::empty({Bsz, L, N}, opts);
  float* op = out.data_ptr<float>();
  const int64_t per_b = L * N;
  at::parallel_for(0, Bsz * per_b, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bi = i / per_b;
      v16f acc = splatv<v16f>(0.0f);
      for (int64_t slot = 0; slot < nslots; ++slot) {
        if (touched[slot * Bsz + bi]) acc += partial[slot * Bsz * per_b + i];
      }
      op[i] = hsum(acc);
    }
  });
  return out;
}

// out[i] = Σ over the 16 lanes of partial[i] (one worker's partial sums of one batch row).
void reduce_lanes(const v16f* partial, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = hsum(partial[i]);
}

void check_bc(const at::Tensor& t, int64_t B, int64_t L, int64_t N, const char* name) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == B && t.size(1) == L && t.size(2) == N && t.stride(2) == 1 &&
                  t.scalar_type() == at::kFloat && t.device().is_cpu(),
              "vimzoo scan_bwd_tm: ", name, " must be an fp32 (b, l, n) tensor with contiguous n");
}

// The checks and scan inputs both entry points share (everything but Δ).
void setup_common(TmBwd& p, const at::Tensor& dout, const at::Tensor& u, const at::Tensor& A, const at::Tensor& Bt,
                  const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                  bool softplus, bool reverse, int64_t W, double scale) {
  TORCH_CHECK(tok_major_ok(u) && tok_major_ok(dout) && dout.sizes() == u.sizes(),
              "vimzoo scan_bwd_tm: dout/u must be fp32 (b, d, l) views with contiguous channels, d % 16 == 0");
  TORCH_CHECK(!z.has_value() || (tok_major_ok(*z) && z->sizes() == u.sizes()), "vimzoo scan_bwd_tm: z must match u");
  const int64_t Bsz = u.size(0), Dm = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == Dm && A.is_contiguous() && A.scalar_type() == at::kFloat,
              "vimzoo scan_bwd_tm: A must be (d, n) contiguous fp32");
  const int64_t N = A.size(1);
  check_bc(Bt, Bsz, L, N, "B");
  check_bc(Ct, Bsz, L, N, "C");
  TORCH_CHECK(Bt.strides() == Ct.strides(), "vimzoo scan_bwd_tm: B and C must share strides");
  for (const opt_tensor* t : {&D, &bias}) {
    TORCH_CHECK(!t->has_value() || ((*t)->dim() == 1 && (*t)->numel() == Dm && (*t)->is_contiguous() &&
                                    (*t)->scalar_type() == at::kFloat),
                "vimzoo scan_bwd_tm: D/delta_bias must be (d,) contiguous fp32");
  }
  p.s.u = tok_view(u);
  p.s.A = A.data_ptr<float>();
  p.s.B = Bt.data_ptr<float>();
  p.s.C = Ct.data_ptr<float>();
  p.s.bc_sb = Bt.stride(0);
  p.s.bc_st = Bt.stride(1);
  p.s.D = opt_ptr(D);
  p.s.bias = opt_ptr(bias);
  p.s.softplus = softplus;
  p.s.reverse = reverse;
  p.s.W = std::min(std::max<int64_t>(W, 1), std::max<int64_t>(L, 1));
  p.dout = tok_view(dout);
  if (z.has_value()) p.z = tok_view(*z);
  p.scale = static_cast<float>(scale);
  p.Bsz = Bsz;
  p.Dm = Dm;
  p.L = L;
  p.N = N;
}

struct BwdOut {
  at::Tensor du, dd, dz, dA, dB, dC, dD_rows, dbias_rows, ddt, dW;   // dd or (ddt, dW): plain or low-rank Δ
};

// Allocates the outputs, runs every (batch row, 16-channel block) task and reduces the per-worker partial sums.
BwdOut run_bwd(TmBwd& p, const at::Tensor& u, bool has_z, const opt_tensor& dz_out = std::nullopt) {
  const int64_t Bsz = p.Bsz, Dm = p.Dm, L = p.L, N = p.N, R = p.s.dt != nullptr ? p.s.R : 0;
  const auto fopts = u.options();
  BwdOut o;
  o.du = tok_major_empty(u);
  o.dd = R ? at::empty({0}, fopts) : tok_major_empty(u);
  o.dz = !has_z ? at::empty({0}, fopts) : dz_out.has_value() ? *dz_out : tok_major_empty(u);
  p.du = o.du.data_ptr<float>();
  p.dd = R ? nullptr : o.dd.data_ptr<float>();
  p.dz = has_z ? o.dz.data_ptr<float>() : nullptr;
  p.o_sb = o.du.stride(0);
  p.o_st = o.du.stride(2);
  p.dz_sb = has_z ? o.dz.stride(0) : 0;
  p.dz_st = has_z ? o.dz.stride(2) : 0;
  auto dA_rows = at::empty({Bsz, Dm, N}, fopts), dW_rows = at::empty({Bsz, Dm, R}, fopts);
  o.dD_rows = at::empty({Bsz, Dm}, fopts);
  o.dbias_rows = at::empty({Bsz, Dm}, fopts);
  const int64_t nthreads = at::get_num_threads(), nblk = Dm / kLanes;
  const bool own_rows = nthreads == 1 || Bsz >= 4 * nthreads;   // enough rows for workers to take whole ones
  p.prow = own_rows ? 1 : Bsz;
  // Per-worker partial sums of dB / dC (and d dt). Owned rows: zeroed as a row starts, reduced over lanes into the
  // outputs as it ends. Shared rows: zeroed by a worker when it first meets a batch row (in parallel, and only the
  // rows it uses), then reduced over workers and lanes in one pass.
  auto dBv = at::empty({nthreads, p.prow, L, N, kLanes}, fopts), dCv = at::empty_like(dBv);
  auto dDTv = at::empty({nthreads, p.prow, L, R, kLanes}, fopts);
  std::vector<uint8_t> touched(nthreads * Bsz, 0);
  p.dA_rows = dA_rows.data_ptr<float>();
  p.dD_rows = o.dD_rows.data_ptr<float>();
  p.dbias_rows = o.dbias_rows.data_ptr<float>();
  p.dBv = reinterpret_cast<v16f*>(dBv.data_ptr<float>());
  p.dCv = reinterpret_cast<v16f*>(dCv.data_ptr<float>());
  p.dDTv = R ? reinterpret_cast<v16f*>(dDTv.data_ptr<float>()) : nullptr;
  p.dW_rows = R ? dW_rows.data_ptr<float>() : nullptr;
  if (own_rows) {
    o.dB = at::empty({Bsz, L, N}, fopts);
    o.dC = at::empty({Bsz, L, N}, fopts);
    if (R) o.ddt = at::empty({Bsz, L, R}, fopts);
  }
  struct State {
    int64_t slot;
    TmBwdWork w;
  };
  parallel_rows(
      Bsz * nblk,
      [&](int64_t slot) {
        TORCH_CHECK(slot < nthreads, "vimzoo scan_bwd_tm: more workers than accumulation slots");
        return State{slot, TmBwdWork(L, N, p.s.W, R)};
      },
      [&](State& st, int64_t task) {
        const int64_t bi = task / nblk, blk = task % nblk;
        const int64_t off = p.partial_row(st.slot, bi) * L;
        if (own_rows ? blk == 0 : !touched[st.slot * Bsz + bi]) {   // each slot belongs to one worker: no race
          std::fill(p.dBv + off * N, p.dBv + (off + L) * N, splatv<v16f>(0.0f));
          std::fill(p.dCv + off * N, p.dCv + (off + L) * N, splatv<v16f>(0.0f));
          if (R) std::fill(p.dDTv + off * R, p.dDTv + (off + L) * R, splatv<v16f>(0.0f));
          touched[st.slot * Bsz + bi] = 1;
        }
        if (N == 16) {
          scan_block_bwd_tm<16>(p, bi, blk * kLanes, st.slot, st.w);
        } else {
          scan_block_bwd_tm<0>(p, bi, blk * kLanes, st.slot, st.w);
        }
        if (own_rows && blk == nblk - 1) {   // the row is complete
          reduce_lanes(p.dBv + off * N, L * N, o.dB.data_ptr<float>() + bi * L * N);
          reduce_lanes(p.dCv + off * N, L * N, o.dC.data_ptr<float>() + bi * L * N);
          if (R) reduce_lanes(p.dDTv + off * R, L * R, o.ddt.data_ptr<float>() + bi * L * R);
        }
      },
      own_rows ? nblk : 0);
  o.dA = dA_rows.sum(0);
  if (!own_rows) {
    o.dB = reduce_partials(p.dBv, touched, nthreads, Bsz, L, N, fopts);
    o.dC = reduce_partials(p.dCv, touched, nthreads, Bsz, L, N, fopts);
    if (R) o.ddt = reduce_partials(p.dDTv, touched, nthreads, Bsz, L, R, fopts);
  }
  if (R) o.dW = dW_rows.sum(0);
  return o;
}

}  // namespace

std::vector<at::Tensor> scan_bwd_tm(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& delta,
                                    const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct,
                                    const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias, bool softplus,
                                    bool reverse, int64_t W, double scale) {
  TORCH_CHECK(tok_major_ok(delta) && delta.sizes() == u.sizes(),
              "vimzoo scan_bwd_tm: delta must be an fp32 (b, d, l) view like u, with contiguous channels");
  TmBwd p;
  setup_common(p, dout, u, A, Bt, Ct, D, z, bias, softplus, reverse, W, scale);
  p.s.delta = tok_view(delta);
  BwdOut o = run_bwd(p, u, z.has_value());
  auto fo = at::empty({0}, A.options());
  return {o.du, o.dd, o.dA, o.dB, o.dC, D.has_value() ? o.dD_rows.sum(0) : fo, o.dz,
          bias.has_value() ? o.dbias_rows.sum(0) : fo};
}

std::vector<at::Tensor> scan_bwd_tm_lowrank(const at::Tensor& dout, const at::Tensor& u, const at::Tensor& dt,
                                            const at::Tensor& dt_proj_w, const at::Tensor& A, const at::Tensor& Bt,
                                            const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z,
                                            const opt_tensor& bias, bool softplus, bool reverse, int64_t W,
                                            double scale, const opt_tensor& dz_out, bool dz_accumulate) {
  TmBwd p;
  setup_common(p, dout, u, A, Bt, Ct, D, z, bias, softplus, reverse, W, scale);
  const int64_t R = dt_proj_w.dim() == 2 ? dt_proj_w.size(1) : 0;
  TORCH_CHECK(R > 0 && dt_proj_w.size(0) == p.Dm && dt_proj_w.is_contiguous() &&
                  dt_proj_w.scalar_type() == at::kFloat && dt_proj_w.device().is_cpu(),
              "vimzoo scan_bwd_tm_lowrank: dt_proj_w must be a contiguous fp32 (d, rank) tensor");
  TORCH_CHECK(dt.dim() == 3 && dt.size(0) == p.Bsz && dt.size(1) == p.L && dt.size(2) == R && dt.stride(2) == 1 &&
                  dt.scalar_type() == at::kFloat && dt.device().is_cpu(),
              "vimzoo scan_bwd_tm_lowrank: dt must be an fp32 (b, l, rank) tensor with contiguous rank");
  p.s.dt = dt.data_ptr<float>();
  p.s.dt_sb = dt.stride(0);
  p.s.dt_st = dt.stride(1);
  p.s.R = R;
  p.s.Wdt = dt_proj_w.data_ptr<float>();
  TORCH_CHECK(!dz_out.has_value() || (z.has_value() && tok_major_ok(*dz_out) && dz_out->sizes() == u.sizes()),
              "vimzoo scan_bwd_tm_lowrank: dz_out must be an fp32 (b, d, l) view like u, with contiguous channels "
              "(and z given)");
  TORCH_CHECK(!dz_accumulate || dz_out.has_value(), "vimzoo scan_bwd_tm_lowrank: dz_accumulate needs dz_out");
  p.dz_accumulate = dz_accumulate;
  BwdOut o = run_bwd(p, u, z.has_value(), dz_out);
  auto fo = at::empty({0}, A.options());
  return {o.du, o.ddt, o.dW, o.dA, o.dB, o.dC, D.has_value() ? o.dD_rows.sum(0) : fo, o.dz,
          bias.has_value() ? o.dbias_rows.sum(0) : fo};
}

}  // namespace vimzoo::cpu
