// Token-major forward scans (plain / reverse / LB / bidirectional) for fp32 channel-contiguous (b, d, l) views: the
// inference fast path (scan_tm.h). Per (batch, 16-channel block) task, one vector per state n holds the 16
// channels' states in registers; Δ and u of a chunk of tokens are computed ahead (no carried dependency), so the
// recurrence (recurrence.h) only waits on h.
#include "kernels.h"
#include "recurrence.h"
#include "scan_tm.h"

#include <vector>

namespace vimzoo::cpu {
namespace {

constexpr int64_t kChunk = 32;  // tokens per Δ / u pre-pass (an LB window is pre-passed whole)
int64_t tm_work_vecs(int64_t N, int64_t W, int64_t R) { return 2 * N + R + (W > 1 ? W * N + N : 0); }

// What one (batch row, 16-channel block) forward task's passes share. Δ (softplus) and u for a chunk of tokens are
// computed first (`prep`), in a loop without a carried dependency, so their long latency chains overlap; the
// recurrence loops then only wait on h.
struct FwdBlock {
  using O = VecOps<v16f>;
  const TmScan& s;
  int64_t bi, c0, L, N;
  float* __restrict y;   // y[t * 16 + lane]
  bool accumulate;
  const v16f* A2;        // A[c0 + j, n] * log2(e) for the 16 channels j
  v16f* h;               // the state, one vector per n
  const v16f* Wv;        // Wdt[c0 + j, r]
  v16f vbias, vD;
  const float *Bb, *Cb;  // B, C of batch row bi
  v16f *cd, *cu;         // the chunk's Δ and u vectors
  v16f chk;              // non-zero (NaN) iff a u / Δ input was NaN or inf
  int64_t t_of(int64_t k) const { return s.reverse ? L - 1 - k : k; }
  void prep(int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t = t_of(k);
      const v16f vu = O::load(s.u.at(bi, t, c0));
      const v16f raw = tm_delta_raw(s, Wv, bi, t, c0);
      chk += vu * 0.0f + raw * 0.0f;
      const v16f vd = raw + vbias;
      cd[k - k0] = s.softplus ? softplus_fast(vd) : vd;
      cu[k - k0] = vu;
    }
  }
  void store(int64_t t, v16f v, bool add) {
    float* yt = y + t * kLanes;
    O::store(yt, add ? O::load(yt) + v : v);
  }
};

// The plain scan: y_k = C_k·h_k + D·u_k, Δ / u prepared kChunk tokens at a time.
template <int NC>
void forward_plain(FwdBlock& f) {
  const int64_t N = NC > 0 ? NC : f.N;
  v16f* h = f.h;
  for (int64_t k = 0; k < f.L; ++k) {
    if (k % kChunk == 0) f.prep(k, std::min(k + kChunk, f.L));
    const int64_t t = f.t_of(k);
    const v16f vd = f.cd[k % kChunk], vu = f.cu[k % kChunk];
    const float* c = f.Cb + t * f.s.bc_st;
    const float* b = f.Bb + t * f.s.bc_st;
    const v16f vdu = vd * vu;
    v16f acc0 = f.vD * vu, acc1 = splatv<v16f>(0.0f);  // two accumulators: shorter add chains
    for (int64_t n = 0; n < N; n += 2) {
      h[n] = tm_state_step(vd, vdu, f.A2[n], b[n], h[n]).h;
      acc0 += h[n] * c[n];
      if (n + 1 < N) {
        h[n + 1] = tm_state_step(vd, vdu, f.A2[n + 1], b[n + 1], h[n + 1]).h;
        acc1 += h[n + 1] * c[n + 1];
      }
    }
    f.store(t, acc0 + acc1, f.accumulate);
  }
}

// LB: per window, pass 1 = the global forward scan, y_k = C_k·hf_k + D·u_k, keeping a_k in abuf; pass 2 = the local
// backward scan in reverse scan order (hb restarted at each window end, b_k = Δ u B recomputed),
// y_k += C_k·(a_k·hb_{k+1}) (the same math as scan_row_fwd).
template <int NC>
void forward_lb(FwdBlock& f, int64_t W, v16f* __restrict abuf, v16f* __restrict hb) {
  const int64_t N = NC > 0 ? NC : f.N;
  v16f* h = f.h;
  for (int64_t k0 = 0; k0 < f.L; k0 += W) {
    const int64_t k1 = std::min(k0 + W, f.L);
    f.prep(k0, k1);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t t = f.t_of(k);
      const v16f vd = f.cd[k - k0], vu = f.cu[k - k0];
      const v16f vdu = vd * vu;
      const float* b = f.Bb + t * f.s.bc_st;
      const float* c = f.Cb + t * f.s.bc_st;
      v16f* ak = abuf + (k - k0) * N;
      v16f acc = f.vD * vu;
      for (int64_t n = 0; n < N; ++n) {
        const StateStep<v16f> st = tm_state_step(vd, vdu, f.A2[n], b[n], h[n]);
        ak[n] = st.a;
        h[n] = st.h;
        acc += st.h * c[n];
      }
      f.store(t, acc, f.accumulate);
    }
    for (int64_t n = 0; n < N; ++n) hb[n] = splatv<v16f>(0.0f);
    for (int64_t k = k1 - 1; k >= k0; --k) {
      const int64_t t = f.t_of(k);
      const v16f vdu = f.cd[k - k0] * f.cu[k - k0];
      const float* b = f.Bb + t * f.s.bc_st;
      const float* c = f.Cb + t * f.s.bc_st;
      const v16f* ak = abuf + (k - k0) * N;
      v16f acc = splatv<v16f>(0.0f);
      for (int64_t n = 0; n < N; ++n) {
        const LocalStep<v16f> ls = local_step(ak[n], vdu * b[n], hb[n]);
        hb[n] = ls.hb;
        acc += ls.r * c[n];
      }
      f.store(t, acc, true);
    }
  }
}

// One direction for a block of 16 channels, in scan order; y[t] (16 lanes per token) gets the un-gated output
// C·h + D·u (`accumulate`: added to what y holds). Returns a vector that is non-zero (NaN) iff a u / Δ input was
// NaN or inf.
template <int NC>
v16f scan_block_tm(const TmScan& s, int64_t bi, int64_t c0, int64_t L, int64_t Nr, float* __restrict y,
                   bool accumulate, v16f* __restrict work) {
  using O = VecOps<v16f>;
  const int64_t N = NC > 0 ? NC : Nr, R = s.R, W = s.W;
  v16f* A2 = work;
  v16f* h = A2 + N;
  v16f* Wv = h + N;
  tm_load_A(s, c0, N, A2, nullptr);
  for (int64_t n = 0; n < N; ++n) h[n] = splatv<v16f>(0.0f);
  for (int64_t r = 0; r < R; ++r)
    for (int j = 0; j < kLanes; ++j) Wv[r][j] = s.Wdt[(c0 + j) * R + r];
  v16f* cd = work + tm_work_vecs(N, W, R);  // chunk Δ vectors, then chunk u vectors (chunk = max(kChunk, W))
  FwdBlock f{s, bi, c0, L, N, y, accumulate, A2, h, Wv,
             s.bias ? O::load(s.bias + c0) : splatv<v16f>(0.0f), s.D ? O::load(s.D + c0) : splatv<v16f>(0.0f),
             s.B + bi * s.bc_sb, s.C + bi * s.bc_sb, cd, cd + std::max(kChunk, W), splatv<v16f>(0.0f)};
  if (W <= 1) {
    forward_plain<NC>(f);
  } else {
    v16f* abuf = Wv + R;
    forward_lb<NC>(f, W, abuf, abuf + W * N);
  }
  return f.chk;
}

v16f scan_block_tm_any(const TmScan& s, int64_t bi, int64_t c0, int64_t L, int64_t N, float* y, bool accumulate,
                       v16f* work) {
  if (N == 16) return scan_block_tm<16>(s, bi, c0, L, N, y, accumulate, work);
  return scan_block_tm<0>(s, bi, c0, L, N, y, accumulate, work);
}

// out[t] = scale·y[t]·silu(z[t]) (or scale·y[t]) for one 16-channel block; returns the z NaN/inf witness.
v16f gate_store_tm(const float* __restrict y, const TokView* z, float scale, float* out, int64_t out_sb,
                   int64_t out_st, int64_t bi, int64_t c0, int64_t L) {
  using O = VecOps<v16f>;
  v16f chk = splatv<v16f>(0.0f);
  for (int64_t t = 0; t < L; ++t) {
    v16f v = O::load(y + t * kLanes);
    if (scale != 1.0f) v *= scale;
    if (z != nullptr) {
      const v16f zv = O::load(z->at(bi, t, c0));
      chk += zv * 0.0f;
      v = v * silu_fast(zv);
    }
    O::store(out + bi * out_sb + t * out_st + c0, v);
  }
  return chk;
}

// Per-worker buffers: y (L tokens x 16 lanes) and the scan work area.
struct TmBuffers {
  std::vector<v16f> y, work;
  TmBuffers(int64_t L, int64_t N, int64_t W, int64_t R) : y(L), work(tm_work_vecs(N, W, R) + 2 * std::max(kChunk, W)) {}
  float* yp() { return reinterpret_cast<float*>(y.data()); }
};

}  // namespace

int scan_tm_run(const TmScan& f, const TmScan* b2, const std::optional<TokView>& z, float scale, int64_t Bsz,
                int64_t Dm, int64_t L, int64_t N, float* out, int64_t out_sb, int64_t out_st) {
  std::atomic<int> bad{0};
  const int64_t nblk = Dm / kLanes;
  const int64_t W = std::max(f.W, b2 ? b2->W : int64_t(1)), R = std::max(f.R, b2 ? b2->R : int64_t(0));
  parallel_rows(
      Bsz * nblk, [&](int64_t) { return TmBuffers(L, N, W, R); },
      [&](TmBuffers& buf, int64_t task) {
        const int64_t bi = task / nblk, c0 = (task % nblk) * kLanes;
        int flags = witness_bad(scan_block_tm_any(f, bi, c0, L, N, buf.yp(), false, buf.work.data())) ? kTmBadIn : 0;
        if (b2 && witness_bad(scan_block_tm_any(*b2, bi, c0, L, N, buf.yp(), true, buf.work.data())))
          flags |= kTmBadInB;
        if (witness_bad(gate_store_tm(buf.yp(), z ? &*z : nullptr, scale, out, out_sb, out_st, bi, c0, L)))
          flags |= kTmBadZ;
        if (flags) bad.fetch_or(flags);
      });
  return bad.load();
}

namespace {

void check_tm_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                     const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias) {
  TORCH_CHECK(tok_major_ok(u) && tok_major_ok(delta) && delta.sizes() == u.sizes(),
              "vimzoo scan_fwd_tm: u/delta must be fp32 (b, d, l) views with contiguous channels, d % 16 == 0");
  TORCH_CHECK(!z.has_value() || (tok_major_ok(*z) && z->sizes() == u.sizes()), "vimzoo scan_fwd_tm: z must match u");
  const int64_t B = u.size(0), Dm = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == Dm && A.is_contiguous() && A.scalar_type() == at::kFloat,
              "vimzoo scan_fwd_tm: A must be (d, n) contiguous fp32");
  const int64_t N = A.size(1);
  for (const at::Tensor* t : {&Bt, &Ct}) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == B && t->size(1) == L && t->size(2) == N && t->is_contiguous() &&
                    t->scalar_type() == at::kFloat,
                "vimzoo scan_fwd_tm: B/C must be (b, l, n) contiguous fp32");
  }
  for (const opt_tensor* t : {&D, &bias}) {
    TORCH_CHECK(!t->has_value() || ((*t)->dim() == 1 && (*t)->numel() == Dm && (*t)->is_contiguous() &&
                                    (*t)->scalar_type() == at::kFloat),
                "vimzoo scan_fwd_tm: D/delta_bias must be (d,) contiguous fp32");
  }
}

TmScan tm_scan_of(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                  const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, bool softplus_, bool reverse,
                  int64_t W) {
  TmScan s;
  s.u = tok_view(u);
  s.delta = tok_view(delta);
  s.A = A.data_ptr<float>();
  s.B = Bt.data_ptr<float>();
  s.C = Ct.data_ptr<float>();
  s.bc_sb = Bt.size(1) * Bt.size(2);
  s.bc_st = Bt.size(2);
  s.D = opt_ptr(D);
  s.bias = opt_ptr(bias);
  s.softplus = softplus_;
  s.reverse = reverse;
  s.W = std::min(std::max<int64_t>(W, 1), u.size(2));
  return s;
}

// After an in-kernel witness fired: find which input holds the NaN/inf (same messages as the row kernels).
void check_finite_named(const char* op, const std::string& sfx, const at::Tensor& u, const at::Tensor& delta,
                        const opt_tensor& z) {
  if (!at::isfinite(u).all().item<bool>()) raise_nonfinite(op, "u" + sfx);
  if (!at::isfinite(delta).all().item<bool>()) raise_nonfinite(op, "delta" + sfx);
  if (z.has_value() && !at::isfinite(*z).all().item<bool>()) raise_nonfinite(op, "z");
}

}  // namespace

at::Tensor scan_fwd_tm(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                       const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& z, const opt_tensor& bias,
                       bool softplus_, bool reverse, int64_t W, bool check_finite) {
  check_tm_inputs(u, delta, A, Bt, Ct, D, z, bias);
  if (check_finite) check_params_finite("selective_scan", "", A, Bt, Ct, D, bias);
  auto out = tok_major_empty(u);
  const TmScan s = tm_scan_of(u, delta, A, Bt, Ct, D, bias, softplus_, reverse, W);
  const std::optional<TokView> zv = z.has_value() ? std::optional<TokView>(tok_view(*z)) : std::nullopt;
  const int bad = scan_tm_run(s, nullptr, zv, 1.0f, u.size(0), u.size(1), u.size(2), A.size(1), out.data_ptr<float>(),
                              out.stride(0), out.stride(2));
  if (check_finite && bad) check_finite_named("selective_scan", "", u, delta, z);  // names the culprit (rare path)
  return out;
}

at::Tensor bidir_fwd_tm(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                        const at::Tensor& Ct, const opt_tensor& D, const opt_tensor& bias, const at::Tensor& u_b,
                        const at::Tensor& delta_b, const at::Tensor& A_b, const at::Tensor& Bt_b,
                        const at::Tensor& Ct_b, const opt_tensor& D_b, const opt_tensor& bias_b, const opt_tensor& z,
                        bool softplus_, bool check_finite) {
  check_tm_inputs(u, delta, A, Bt, Ct, D, z, bias);
  check_tm_inputs(u_b, delta_b, A_b, Bt_b, Ct_b, D_b, z, bias_b);
  TORCH_CHECK(u_b.sizes() == u.sizes() && A_b.sizes() == A.sizes(), "vimzoo bidir_fwd_tm: directions differ in shape");
  const char* op = "bidirectional_selective_scan";
  if (check_finite) {
    check_params_finite(op, "", A, Bt, Ct, D, bias);
    check_params_finite(op, "_b", A_b, Bt_b, Ct_b, D_b, bias_b);
  }
  auto out = tok_major_empty(u);
  const TmScan f = tm_scan_of(u, delta, A, Bt, Ct, D, bias, softplus_, false, 1);
  const TmScan b = tm_scan_of(u_b, delta_b, A_b, Bt_b, Ct_b, D_b, bias_b, softplus_, true, 1);
  const std::optional<TokView> zv = z.has_value() ? std::optional<TokView>(tok_view(*z)) : std::nullopt;
  const int bad = scan_tm_run(f, &b, zv, 1.0f, u.size(0), u.size(1), u.size(2), A.size(1), out.data_ptr<float>(),
                              out.stride(0), out.stride(2));
  if (check_finite && bad) {
    check_finite_named(op, "", u, delta, z);
    check_finite_named(op, "_b", u_b, delta_b, std::nullopt);
  }
  return out;
}

}  // namespace vimzoo::cpu
