// Fused mixer core, the CPU counterpart of the official `mamba_inner_fn` / `bimamba_inner_fn` minus
// in_proj / out_proj: xz (b, l, 2d) = in_proj output -> causal conv + SiLU -> x_proj -> scan (Δ = softplus(dt_proj
// + bias) computed inside the scan) -> gate by silu(z) -> scale; both directions when the `_b` weights are given.
// Returns {out (b, l, d), x_proj's output per direction (dirs, b, l, R + 2N)}: the training backward reads the second
// instead of recomputing that GEMM (2 x 44 floats per token for Vim-T; the conv output and Δ are recomputed).
#include "kernels.h"
#include "scan_tm.h"

#include <c10/core/GradMode.h>

#include <string>
#include <vector>

namespace vimzoo::cpu {
namespace {

// One direction's module parameters; absent optional ones (conv bias, dt bias, D) are undefined tensors.
struct MixerDir {
  at::Tensor conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A_log, D;
};

// Names as in vimzoo/ops/_validate.py (mixer_weight_name), so every route reports the same argument.
const char* const kWeightNames[7] = {"conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                                     "dt_proj.bias", "A_log", "D"};

MixerDir unpack_direction(const std::vector<at::Tensor>& p, int64_t Dm) {
  TORCH_CHECK(p.size() == 7, "vimzoo mamba_inner_fwd: each direction takes 7 tensors");
  TORCH_CHECK(p[0].dim() >= 2 && p[0].size(0) == Dm, "vimzoo mamba_inner_fwd: conv weight must be (d, [1,] k)");
  auto opt = [](const at::Tensor& t) { return t.numel() ? t.contiguous() : at::Tensor(); };  // empty = absent
  MixerDir d{p[0].reshape({Dm, -1}).contiguous(), opt(p[1]), p[2].contiguous(), p[3].contiguous(), opt(p[4]),
             p[5].contiguous(), opt(p[6])};
  for (const at::Tensor* t : {&d.conv_w, &d.conv_b, &d.x_proj_w, &d.dt_proj_w, &d.dt_bias, &d.A_log, &d.D})
    TORCH_CHECK(!t->defined() || (t->scalar_type() == at::kFloat && t->device().is_cpu()),
                "vimzoo mamba_inner_fwd: fp32 CPU weights");
  TORCH_CHECK(d.conv_w.size(1) >= 1, "vimzoo mamba_inner_fwd: conv width must be >= 1");
  TORCH_CHECK(d.A_log.dim() == 2 && d.A_log.size(0) == Dm && d.A_log.size(1) >= 1 && d.dt_proj_w.dim() == 2 &&
                  d.dt_proj_w.size(0) == Dm && d.dt_proj_w.size(1) >= 1 && d.x_proj_w.dim() == 2 &&
                  d.x_proj_w.size(1) == Dm && d.x_proj_w.size(0) == d.dt_proj_w.size(1) + 2 * d.A_log.size(1),
              "vimzoo mamba_inner_fwd: weight shapes do not match d = ", Dm);
  for (const at::Tensor* t : {&d.conv_b, &d.dt_bias, &d.D})
    TORCH_CHECK(!t->defined() || (t->dim() == 1 && t->numel() == Dm), "vimzoo mamba_inner_fwd: biases / D must be (d,)");
  return d;
}

void check_direction_finite(const MixerDir& d, const std::string& sfx) {
  const at::Tensor* items[7] = {&d.conv_w, &d.conv_b, &d.x_proj_w, &d.dt_proj_w, &d.dt_bias, &d.A_log, &d.D};
  for (int i = 0; i < 7; ++i) {
    const at::Tensor& t = *items[i];
    if (t.defined() && !all_finite(t.data_ptr<float>(), t.numel()))
      raise_nonfinite("mamba_inner", "weights" + sfx + "[" + std::to_string(i) + "] (" + kWeightNames[i] + ")");
  }
}

// The scan of one direction over the conv output U (b, l, d) and x_proj's output xdbl (b, l, R + 2N).
TmScan direction_scan(const MixerDir& d, const at::Tensor& U, const at::Tensor& xdbl, bool reverse, int64_t W) {
  const int64_t L = U.size(1), Dm = U.size(2), R = d.dt_proj_w.size(1), N = d.A_log.size(1), S = R + 2 * N;
  const float* xd = xdbl.data_ptr<float>();
  TmScan s;
  s.u = TokView{U.data_ptr<float>(), L * Dm, Dm};
  s.dt = xd;
  s.Wdt = d.dt_proj_w.data_ptr<float>();
  s.dt_sb = L * S;
  s.dt_st = S;
  s.R = R;
  s.A = d.A_log.data_ptr<float>();
  s.a_is_log = true;
  s.B = xd + R;
  s.C = xd + R + N;
  s.bc_sb = L * S;
  s.bc_st = S;
  s.D = d.D.defined() ? d.D.data_ptr<float>() : nullptr;
  s.bias = d.dt_bias.defined() ? d.dt_bias.data_ptr<float>() : nullptr;
  s.softplus = true;
  s.reverse = reverse;
  s.W = std::min(std::max<int64_t>(W, 1), std::max<int64_t>(L, 1));
  return s;
}

}  // namespace

std::vector<at::Tensor> mamba_inner_fwd(const at::Tensor& xz, const std::vector<at::Tensor>& fwd,
                                        const std::vector<at::Tensor>& bwd, bool reverse, int64_t W, double scale,
                                        bool check_finite) {
  const char* op = "mamba_inner";
  c10::AutoGradMode no_grad(false);   // a kernel: x_proj writes into its output, whatever the caller's grad mode
  TORCH_CHECK(xz.dim() == 3 && xz.is_contiguous() && xz.scalar_type() == at::kFloat && xz.device().is_cpu(),
              "vimzoo mamba_inner_fwd: xz must be a contiguous fp32 CPU (b, l, 2d) tensor");
  const int64_t Bsz = xz.size(0), L = xz.size(1), Dm = xz.size(2) / 2;
  TORCH_CHECK(xz.size(2) == 2 * Dm && Dm % kLanes == 0, "vimzoo mamba_inner_fwd: 2d channels with d % 16 == 0");
  const bool bidir = !bwd.empty();
  std::vector<MixerDir> dirs{unpack_direction(fwd, Dm)};
  if (bidir) dirs.push_back(unpack_direction(bwd, Dm));
  const int64_t N = dirs[0].A_log.size(1);
  if (bidir) {
    TORCH_CHECK(dirs[1].A_log.size(1) == N && dirs[1].dt_proj_w.size(1) == dirs[0].dt_proj_w.size(1),
                "vimzoo mamba_inner_fwd: directions differ in shape");
  }
  if (check_finite) {
    for (size_t i = 0; i < dirs.size(); ++i) check_direction_finite(dirs[i], i == 0 ? "" : "_b");
  }
  const TokView xv{xz.data_ptr<float>(), L * 2 * Dm, 2 * Dm};
  const TokView zv{xz.data_ptr<float>() + Dm, L * 2 * Dm, 2 * Dm};
  auto U = at::empty({static_cast<int64_t>(dirs.size()), Bsz, L, Dm}, xz.options());
  const int64_t S = dirs[0].x_proj_w.size(0);   // R + 2N: the same for both directions (checked above)
  auto xdbl = at::empty({static_cast<int64_t>(dirs.size()), Bsz, L, S}, xz.options());
  bool bad_x = false;
  std::vector<TmScan> scans;
  for (size_t i = 0; i < dirs.size(); ++i) {
    const MixerDir& d = dirs[i];
    const bool rev = i == 0 ? reverse : true;
    bad_x |= conv_tm_into(xv, d.conv_w.data_ptr<float>(), d.conv_b.defined() ? d.conv_b.data_ptr<float>() : nullptr,
                          d.conv_w.size(1), true, rev, Bsz, Dm, L, U[i].data_ptr<float>(), L * Dm, Dm);
    at::Tensor xdbl_rows = xdbl[i].view({Bsz * L, S});                                 // (b, l, R + 2N)
    at::mm_out(xdbl_rows, U[i].view({Bsz * L, Dm}), d.x_proj_w.t());
    scans.push_back(direction_scan(d, U[i], xdbl[i], rev, i == 0 ? W : 1));
  }
  if (check_finite && bad_x) raise_nonfinite(op, "x");
  auto out = at::empty({Bsz, L, Dm}, xz.options());
  const int bad = scan_tm_run(scans[0], bidir ? &scans[1] : nullptr, zv, static_cast<float>(scale), Bsz, Dm, L, N,
                              out.data_ptr<float>(), L * Dm, Dm);
  if (check_finite && (bad & kTmBadZ)) raise_nonfinite(op, "z");
  if (check_finite && (bad & (kTmBadIn | kTmBadInB))) raise_nonfinite(op, "the scan input (x_proj / dt_proj output)");
  return {out, xdbl};
}

}  // namespace vimzoo::cpu
