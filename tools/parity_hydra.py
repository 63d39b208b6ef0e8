#!/usr/bin/env python
"""Numeric parity of vimzoo's `HydraMixer` against the official `Hydra` module (goombalab/hydra), on CPU.

The official `hydra/modules/hydra.py` is imported at run time from a checkout (or bare git mirror) the user passes
(`--hydra-repo PATH`); nothing from it is copied here. It is GPU-only upstream; this script runs it on the CPU by
providing the modules it imports:

* `mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined` -> a stand-in that applies dt_bias / softplus /
  dt_limit as the Triton kernel does and then calls vimzoo's reference SSD scan (`vimzoo.ops.reference_ssd`, the
  chunked form, with the module's own chunk_size);
* `mamba_ssm.ops.triton.layernorm_gated.RMSNorm` -> mamba_ssm's own file (`--mamba-repo PATH`), whose `forward`
  is pointed at that file's pure-PyTorch `rms_norm_ref` (the Triton kernel cannot run on a CPU);
* `hydra.modules.ops` (the fused mem-eff path, Triton only) -> a placeholder; `use_mem_eff_path` stays False.

Independently of Hydra, the stand-in scan is checked against mamba_ssm's own minimal SSD (`ssd_minimal_discrete`,
Listing 1 of the Mamba-2 paper) on random inputs, so the replacement is not only checked against itself.

Per configuration: build the official module, overwrite every parameter with seeded random values (so that no
parameter sits at an init value that would hide a bug), save its state_dict with torch.save, load that file
(weights_only=True) into `vimzoo.models.hydra.HydraMixer` with strict=True, run both in fp32 on the same random input
and compare the output and, with one random cotangent, the input gradient (max |Δ|) and every parameter gradient
(max |Δ| relative to that gradient's max |value|: they are sums over batch and tokens). Ours runs on each requested
vimzoo.ops backend. Exit 1 if any of these exceeds `--tol` (1e-4).

Requirements: checkouts of https://github.com/goombalab/hydra and https://github.com/state-spaces/mamba, and `einops`
and `triton` importable (the official files import them; triton is only imported, never run: `--extra-path DIR`
adds a directory with them to sys.path).

    python tools/parity_hydra.py --hydra-repo /tmp/hydra --mamba-repo /tmp/mamba
"""
from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vimzoo.ops import use_backend  # noqa: E402
from vimzoo.ops.reference_ssd import heads_of_groups, ssd_scan_ref  # noqa: E402

CONFIGS = {
    # Hydra-T's mixer (d_model 192, the module's defaults: d_state 64, d_conv 7, expand 2, headdim 64, 6 heads)
    'tiny': dict(d_model=192),
    # every option the module has off by default: groups, biases, learnable initial states, a dt_limit, conv_init
    'options': dict(d_model=64, d_state=16, headdim=16, ngroups=2, bias=True, learnable_init_states=True,
                    dt_limit=(0.002, 0.08), conv_init=0.5, chunk_size=32),
    # Hydra-B's mixer (d_model 768, 24 heads)
    'base': dict(d_model=768),
}


def _read(repo: Path, path: str) -> str:
    """A file of a checkout, or of a bare git mirror (read with `git show HEAD:path`)."""
    if (repo / path).is_file():
        return (repo / path).read_text()
    git_dir = repo if (repo / 'HEAD').exists() and (repo / 'objects').is_dir() else repo / '.git'
    return subprocess.run(['git', '--git-dir', str(git_dir), 'show', f'HEAD:{path}'], check=True,
                          capture_output=True, text=True).stdout


def _revision(repo: Path) -> str:
    git_dir = repo if (repo / 'HEAD').exists() and (repo / 'objects').is_dir() else repo / '.git'
    out = subprocess.run(['git', '--git-dir', str(git_dir), 'rev-parse', '--short', 'HEAD'], capture_output=True,
                         text=True)
    return out.stdout.strip() or 'unknown'


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _import_file(name: str, source: str, folder: Path) -> types.ModuleType:
    """Import `source` as module `name` from a real file (Triton's @jit reads its functions' source files)."""
    path = folder / (name.replace('.', '_') + '.py')
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float('inf')),
                              return_final_states=False, **unused):
    """The Triton kernel's contract (mamba_ssm ssd_combined.py) on vimzoo's reference scan: dt (+ dt_bias),
    softplus, clamp to dt_limit, then y_t = S_t C_t with S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_tᵀ."""
    if D is not None or z is not None or seq_idx is not None or cu_seqlens is not None or return_final_states:
        raise NotImplementedError('the Hydra module never passes D, z, seq_idx or asks for final states')
    dt = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = dt.clamp(dt_limit[0], dt_limit[1])
    return ssd_scan_ref(x, dt, A, B, C, initial_states=initial_states, chunk_size=chunk_size)


def load_official(hydra_repo: Path, mamba_repo: Path):
    """The official `Hydra` class and mamba_ssm's `ssd_minimal_discrete`, with the stand-ins above."""
    for name in ('mamba_ssm', 'mamba_ssm.ops', 'mamba_ssm.ops.triton', 'mamba_ssm.modules', 'hydra',
                 'hydra.modules'):
        _module(name, __path__=[])
    _module('mamba_ssm.ops.triton.ssd_combined', mamba_chunk_scan_combined=mamba_chunk_scan_combined)
    folder = Path(tempfile.mkdtemp(prefix='vimzoo_parity_hydra_'))
    atexit.register(shutil.rmtree, folder, True)
    norm = _import_file('mamba_ssm.ops.triton.layernorm_gated',
                        _read(mamba_repo, 'mamba_ssm/ops/triton/layernorm_gated.py'), folder)

    def norm_forward(self, x, z=None):   # the file's own pure-PyTorch reference instead of its Triton kernel
        return norm.rms_norm_ref(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                                 norm_before_gate=self.norm_before_gate)
    norm.RMSNorm.forward = norm_forward

    def mem_eff_path(*args, **kwargs):
        raise NotImplementedError('the fused mem-eff path is Triton-only; parity uses use_mem_eff_path=False')
    _module('hydra.modules.ops', hydra_split_conv1d_scan_combined=mem_eff_path)
    hydra = _import_file('hydra.modules.hydra', _read(hydra_repo, 'hydra/modules/hydra.py'), folder)
    minimal = _import_file('mamba_ssm.modules.ssd_minimal', _read(mamba_repo, 'mamba_ssm/modules/ssd_minimal.py'),
                           folder)
    return hydra.Hydra, minimal.ssd_minimal_discrete


def check_scan_against_ssd_minimal(ssd_minimal_discrete, seed: int = 0) -> float:
    """Our reference scan vs mamba_ssm's minimal SSD (per-head B / C, Δ folded into x and A, L % block == 0)."""
    gen = torch.Generator().manual_seed(seed)
    b, l, h, p, g, n, block = 2, 96, 4, 8, 2, 16, 32
    x = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    dt = F.softplus(torch.randn(b, l, h, generator=gen, dtype=torch.float64))
    A = -torch.rand(h, generator=gen, dtype=torch.float64) - 0.1
    B, C = (torch.randn(b, l, g, n, generator=gen, dtype=torch.float64) for _ in range(2))
    init = torch.randn(b, h, p, n, generator=gen, dtype=torch.float64)
    ours = ssd_scan_ref(x, dt, A, B, C, initial_states=init, chunk_size=None)   # the plain recurrence
    theirs, _ = ssd_minimal_discrete(x * dt[..., None], A * dt, heads_of_groups(B, h), heads_of_groups(C, h), block,
                                     initial_states=init[:, None])
    return (ours - theirs).abs().max().item()


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter to seeded random values at a scale where each one matters (A_log around 0, D around 1,
    norm scales around 1, initial states non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name in ('A_log', 'D', 'norm.weight'):
                p.copy_((1.0 if name != 'A_log' else 0.0) + 0.3 * noise)
            elif name == 'dt_bias':
                p.copy_(-3.0 + noise)
            elif name == 'init_states':
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / max(1.0, p[0].numel()) ** 0.5)


class _TorchWithoutShift:
    """`torch` for the official module with `roll` shifting by 0 (the 'no_shift' control)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def roll(t, shifts, dims):
        return torch.roll(t, 0, dims)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


def run_config(Hydra, name: str, kwargs: Dict, args, backends: List[str], control: str = '') -> List[Dict]:
    """One configuration on each backend. `control` breaks the official side on purpose (the comparison must then
    fail): 'gate_before_norm' is Mamba-2's norm order instead of Hydra's; 'no_shift' drops the one-token shift."""
    from vimzoo.models.hydra import HydraMixer
    torch.manual_seed(args.seed)
    official = Hydra(**kwargs).float().train(False)
    _randomise(official, args.seed)
    with tempfile.TemporaryDirectory() as tmp:   # a checkpoint saved from the official module's state_dict
        path = Path(tmp) / 'official_hydra.pth'
        torch.save(official.state_dict(), path)
        state_dict = torch.load(path, map_location='cpu', weights_only=True)
    ours = HydraMixer(**kwargs).float().train(False)   # the official constructor arguments, unchanged
    ours.load_state_dict(state_dict, strict=True)
    assert list(ours.state_dict()) == list(official.state_dict()), 'state_dict key order differs'
    if control == 'gate_before_norm':
        official.norm.norm_before_gate = False
    if control == 'no_shift':   # roll by 0: the scan's own diagonal stays in, token 0 is zeroed instead
        sys.modules[type(official).__module__].torch = _TorchWithoutShift()

    gen = torch.Generator().manual_seed(args.seed + 1)
    u = torch.randn(args.batch, args.length, kwargs['d_model'], generator=gen)
    cot = torch.randn(args.batch, args.length, kwargs['d_model'], generator=gen)

    def run(module, backend=None):
        module.zero_grad(set_to_none=True)
        x = u.clone().requires_grad_(True)
        start = time.perf_counter()
        if backend is None:
            out = module(x)
        else:
            with use_backend(backend):
                out = module(x)
        out.backward(cot)
        elapsed = time.perf_counter() - start
        return out.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}, elapsed

    try:
        ref_out, ref_dx, ref_grads, ref_time = run(official)
    finally:
        sys.modules[type(official).__module__].torch = torch
    rows = []
    for backend in backends:
        out, dx, grads, elapsed = run(ours, backend)
        # parameter grads are sums over batch x tokens (up to ~1e3 in magnitude): compared relative to their max
        param = max(_max_diff(grads[n], ref_grads[n]) / ref_grads[n].abs().max().clamp_min(1e-12).item()
                    for n in ref_grads)
        rows.append(dict(config=name, backend=backend, params=sum(p.numel() for p in ours.parameters()),
                         output=_max_diff(out, ref_out), input_grad=_max_diff(dx, ref_dx), param_grads=param,
                         max_abs_output=ref_out.abs().max().item(), seconds_official=ref_time, seconds_ours=elapsed))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--hydra-repo', type=Path, required=True, help='goombalab/hydra checkout or bare mirror')
    ap.add_argument('--mamba-repo', type=Path, required=True, help='state-spaces/mamba checkout or bare mirror')
    ap.add_argument('--extra-path', action='append', default=[], help='directory to add to sys.path (einops)')
    ap.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument('--backends', nargs='+', default=['cpu', 'reference'])
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--length', type=int, default=197, help='tokens (197 = 14 x 14 patches + 1)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--tol', type=float, default=1e-4)
    ap.add_argument('--json', type=Path, default=None, help='also write the rows as JSON here')
    ap.add_argument('--controls', action='store_true', help='also run broken variants that must FAIL')
    args = ap.parse_args(argv)
    sys.path[:0] = args.extra_path
    torch.set_num_threads(max(1, torch.get_num_threads()))
    Hydra, ssd_minimal_discrete = load_official(args.hydra_repo, args.mamba_repo)
    print(f'goombalab/hydra {_revision(args.hydra_repo)}, state-spaces/mamba {_revision(args.mamba_repo)}, '
          f'torch {torch.__version__}, input {args.batch}x{args.length}')
    scan_diff = check_scan_against_ssd_minimal(ssd_minimal_discrete)
    print(f'vimzoo reference scan vs mamba_ssm ssd_minimal_discrete (fp64): max |Δ| = {scan_diff:.1e}')
    rows = []
    for name in args.configs:
        rows += run_config(Hydra, name, CONFIGS[name], args, args.backends)
    print('| mixer | params | vimzoo backend | output | input grad | param grads (rel.) | max abs output |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['config']} | {r['params']:,} | {r['backend']} | {r['output']:.1e} | {r['input_grad']:.1e} | "
              f"{r['param_grads']:.1e} | {r['max_abs_output']:.2f} |")
    worst = max([scan_diff] + [max(r['output'], r['input_grad'], r['param_grads']) for r in rows])
    ok = worst < args.tol and all(torch.isfinite(torch.tensor(r['output'])) for r in rows)
    print(f"worst max |Δ| = {worst:.1e} {'<' if ok else '>='} {args.tol}: {'PASS' if ok else 'FAIL'}")
    controls = {}
    if args.controls:
        for control in ('gate_before_norm', 'no_shift'):
            (row,) = run_config(Hydra, 'options', CONFIGS['options'], args, ['cpu'], control)
            controls[control] = row['output']
            caught = row['output'] >= args.tol
            ok = ok and caught
            print(f"control {control}: output max |Δ| = {row['output']:.1e} "
                  f"({'detected' if caught else 'NOT detected: the comparison is too weak'})")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, scan_vs_ssd_minimal=scan_diff, controls=controls), indent=1))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
