"""The 'triton' backend: its kernels against the reference under Triton's interpreter (in a subprocess, see
tests/triton_interpreter_cases.py), the scan combine functions' associativity (GPU scans combine in a tree, the
interpreter left to right), where the backend may run, launch configurations, and 'auto' on CUDA tensors."""
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vimzoo.ops as ops
from vimzoo.ops import _choose
from vimzoo.ops.backends import REGISTRY
from vimzoo.ops.backends import triton as triton_backend
from vimzoo.ops.triton_kernels._config import ScanConfig, scan_config

HERE = Path(__file__).resolve().parent
HAS_TRITON = triton_backend._import_error() is None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason=f'triton is not importable: {triton_backend._import_error()}')


# ----------------------------------------------------------------------------------- the kernels, interpreted
@needs_triton
@pytest.mark.slow
def test_kernels_match_the_reference_under_the_interpreter():
    """~1 min on 2 busy cores: every kernel (scan fwd/bwd incl. LB carries, bidirectional, conv fwd/bwd, add +
    RMSNorm fwd/bwd) and the backend through the public ops, on CPU tensors, TRITON_INTERPRET=1."""
    env = dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'pytest', str(HERE / 'triton_interpreter_cases.py'), '-q', '-p', 'no:cacheprovider',
           '-rfEs']
    proc = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r'(\d+) passed', out)
    assert passed and int(passed.group(1)) >= 25, out[-3000:]
    assert 'skipped' not in out and 'failed' not in out, out[-3000:]


# ----------------------------------------------------------------------------------- combine functions
def _sequential(kind, a, g):
    """The recurrence each combine function implements, written as a loop (float64 vectors over l)."""
    out = torch.empty_like(g)
    h = torch.zeros(())
    steps = range(len(g) - 1, -1, -1) if kind == 'adj_rev' else range(len(g))
    prev = None
    for k in steps:
        if kind == 'lin':   # h_k = a_k h_{k-1} + b_k
            h = a[k] * h + g[k]
        else:               # adj_fwd: s_k = G_k + λ_{k-1} s_{k-1};  adj_rev: s_k = G_k + a_{k+1} s_{k+1}
            h = g[k] + (a[prev] * h if prev is not None else 0)
        out[k] = h
        prev = k
    return out


def _tree_scan(fn, elems, reverse):
    """Hillis-Steele inclusive scan with `fn`: log-depth, pairs segments as a GPU warp scan does (reverse = flip,
    scan, flip, Triton's semantics)."""
    elems = [e.flip(0) if reverse else e for e in elems]
    offset = 1
    while offset < len(elems[0]):
        left = [e[:-offset] for e in elems]
        right = [e[offset:] for e in elems]
        combined = fn(*left, *right)
        elems = [torch.cat([e[:offset], c]) for e, c in zip(elems, combined)]
        offset *= 2
    return [e.flip(0) if reverse else e for e in elems]


@needs_triton
@pytest.mark.parametrize('kind', ['lin', 'adj_fwd', 'adj_rev'])
def test_scan_combine_functions_are_associative_and_implement_their_recurrence(kind):
    from vimzoo.ops.triton_kernels import load
    fn, size = load().scan.combine_functions()[kind]
    g = torch.Generator().manual_seed(0)
    a = torch.rand(37, generator=g, dtype=torch.float64) * 0.9 + 0.05
    a[[5, 16, 30]] = 0.0                                   # window ends (zeroed links)
    vals = torch.randn(37, generator=g, dtype=torch.float64)
    elems = (a, vals) if size == 2 else (torch.ones_like(a), a, vals)
    x, y, z = ([e[i:i + 10] for e in elems] for i in (0, 10, 20))
    left, right = fn(*fn(*x, *y), *z), fn(*x, *fn(*y, *z))
    for p, q in zip(left, right):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    got = _tree_scan(fn, list(elems), reverse=kind == 'adj_rev')[-1]
    torch.testing.assert_close(got, _sequential(kind, a, vals), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------- where the backend runs
@needs_triton
def test_triton_backend_is_selectable_on_cuda_tensors_only():
    if triton_backend.interpreted():
        pytest.skip('this process runs under TRITON_INTERPRET=1, where CPU tensors are allowed')
    reason = triton_backend.can_run('selective_scan', torch.device('cpu'))
    assert 'CUDA' in reason and 'TRITON_INTERPRET=1' in reason
    assert triton_backend.can_run('selective_scan', torch.device('cuda')) is None
    u = torch.randn(1, 2, 5)
    with pytest.raises(RuntimeError, match="cannot run on backend 'triton': needs CUDA tensors"):
        ops.selective_scan(u, u, -torch.ones(2, 3), torch.randn(1, 3, 5), torch.randn(1, 3, 5), backend='triton')
    assert _choose.choose('selective_scan', 'auto', torch.device('cpu')).NAME in ('cpu', 'reference')


def test_triton_backend_reasons():
    cuda = torch.device('cuda')
    assert 'fused' in triton_backend.can_run('mamba_inner_fwd', cuda)
    if not HAS_TRITON:
        assert 'triton is not importable' in triton_backend.can_run('selective_scan', cuda)
        return
    assert 'fp64' in triton_backend.can_run('selective_scan', cuda, (torch.zeros(1, dtype=torch.float64),))
    assert 'd_state <= 256' in triton_backend.can_run('selective_scan_bwd', cuda, d_state=257)
    assert 'channels' in triton_backend.can_run('add_rms_norm', cuda, (None, None, torch.zeros(20000)))
    assert triton_backend.can_run('causal_conv1d', torch.device('meta')) is not None


def test_scan_configs_are_powers_of_two_within_budget_and_align_windows():
    for d, n, l, w, bwd in [(384, 16, 197, 1, False), (384, 16, 197, 8, True), (3, 1, 1, 1, False),
                            (192, 64, 4096, 16, True), (8, 256, 50, 3, False), (16, 16, 100, 128, False),
                            (8, 256, 50, 1, True)]:
        cfg = scan_config(d, n, l, w, bwd)
        tile = cfg.block_d * cfg.block_n * cfg.chunk
        assert cfg.block_n >= n and tile <= max(512 if bwd else 2048, cfg.block_n * max(8, w)), (d, n, l, w, cfg)
        assert tile <= cfg.num_warps * 32 * (4 if bwd else 8) or cfg.num_warps == 16, cfg   # elements per thread
        if not bwd and 1 < w < l and w & (w - 1) == 0:
            assert cfg.chunk % w == 0, (d, n, l, w, cfg)   # forward LB windows never cross a chunk
    with pytest.raises(ValueError, match='power of two'):
        ScanConfig(block_d=3, block_n=4, chunk=8)


# ----------------------------------------------------------------------------------- 'auto' on CUDA tensors
def test_auto_order_on_cuda_and_its_one_time_log_line(monkeypatch, caplog):
    assert _choose.AUTO_ORDER['cuda'] == ('triton', 'mamba_ssm', 'cuda', 'reference')
    assert 'triton' not in _choose.AUTO_ORDER['cpu'] and 'mamba_ssm' not in _choose.AUTO_ORDER['cpu']
    monkeypatch.setattr(_choose, '_logged', set())
    cuda = torch.device('cuda')
    monkeypatch.setattr(REGISTRY['triton'], 'can_run', lambda *a, **k: None)
    with caplog.at_level(logging.INFO, logger='vimzoo.ops'):
        for _ in range(3):
            assert _choose.choose('selective_scan', 'auto', cuda).NAME == 'triton'
        monkeypatch.setattr(REGISTRY['triton'], 'can_run', lambda *a, **k: 'no triton here')
        monkeypatch.setattr(REGISTRY['mamba_ssm'], 'can_run', lambda *a, **k: None)
        for _ in range(2):
            assert _choose.choose('selective_scan', 'auto', cuda).NAME == 'mamba_ssm'
    lines = [r.getMessage() for r in caplog.records if r.name == 'vimzoo.ops']
    assert len(lines) == 2, lines
    assert "selective_scan on CUDA tensors runs on backend 'triton'" in lines[0]
    assert "backend 'mamba_ssm'" in lines[1] and 'triton: no triton here' in lines[1]


# ----------------------------------------------------------------------------------- tools/gpu_check.py plumbing
@pytest.mark.slow
def test_gpu_check_script_runs_its_cpu_smoke_test(tmp_path):
    """`--device cpu --quick` runs every part of tools/gpu_check.py (correctness, Vim-T, speed, report files) with
    the 'cpu' backend, so the GPU run is not the script's first run."""
    import shutil
    backends = 'cpu' if (shutil.which('c++') or shutil.which('g++')) else 'reference'
    cmd = [sys.executable, str(HERE.parent / 'tools' / 'gpu_check.py'), '--device', 'cpu', '--quick', '--rounds', '1',
           '--backends', backends, '--out', str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    import json
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    ops_checked = {row['op'] for row in report['correctness']}
    assert {'selective_scan', 'bidirectional_selective_scan', 'causal_conv1d', 'add_rms_norm'} <= ops_checked
    assert all(isinstance(row['errors'][backends], float) for row in report['correctness'])
    assert {r['mode'] for r in report['speed']} >= {'fwd', 'fwd+bwd', 'forward', 'train step'}
    assert (tmp_path / 'gpu_check.md').read_text().count('|') > 20 and (tmp_path / 'gpu_check_speed.csv').exists()


# ----------------------------------------------------------------------------------- compiled for a GPU, no GPU
class _Recorder:
    """Stands in for a @triton.jit kernel: records each launch (arguments, constexprs, num_warps) instead."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.kernel, args, kwargs))
        return launch


def _signature(kernel, args, kwargs):
    import inspect
    types = {torch.float32: '*fp32', torch.bfloat16: '*bf16', torch.float16: '*fp16'}
    names = list(inspect.signature(kernel.fn).parameters)
    sig, const = {}, {k: v for k, v in kwargs.items() if k != 'num_warps'}
    for name, value in zip(names, args):
        sig[name] = types[value.dtype] if isinstance(value, torch.Tensor) else 'fp32' if isinstance(value, float) \
            else 'i32'
    sig.update({name: 'constexpr' for name in const})
    return sig, const


@needs_triton
@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu_and_without_register_spills(monkeypatch):
    """The launch variants Vim-T uses (bf16, d_inner 384, n 16, l 197; LB windows inside and across chunks, the
    bidirectional accumulate, the LB backward, the conv with SiLU, the norm at C = 192) compiled by Triton for
    sm_90 down to a cubin, then ptxas's register report: compiled, not run; ~40 s."""
    import shutil
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vimzoo.ops.triton_kernels import load
    kernels = load()
    log = []
    for module in (kernels.scan, kernels.conv, kernels.norm):
        for name in dir(module):
            if name.endswith('_kernel'):
                monkeypatch.setattr(module, name, _Recorder(getattr(module, name), log))
    meta = dict(device='meta', dtype=torch.bfloat16)
    b, d, l, n = 8, 384, 197, 16
    u, delta, z = (torch.empty(b, l, d, **meta).transpose(1, 2) for _ in range(3))
    A, D, bias = torch.empty(d, n, device='meta'), torch.empty(d, device='meta'), torch.empty(d, device='meta')
    B, C = torch.empty(b, n, l, **meta), torch.empty(b, n, l, **meta)
    kernels.scan.scan_fwd(u, delta, A, B, C, D, z, bias, True, False, 8)
    kernels.scan.scan_fwd(u, delta, A, B, C, D, z, bias, True, True, 3)
    acc = torch.empty(b, d, l, device='meta')
    kernels.scan.scan_fwd(u, delta, A, B, C, D, z, bias, True, True, 1, acc=acc)
    kernels.scan.scan_bwd(u, u, delta, A, B, C, D, z, bias, True, False, 8)
    kernels.conv.conv_bwd(u, u, torch.empty(d, 4, **meta), torch.empty(d, **meta), True, False)
    kernels.conv.conv_fwd(u, torch.empty(d, 4, **meta), torch.empty(d, **meta), True, False)
    x = torch.empty(b, l, 192, **meta)
    kernels.norm.add_rms_norm_fwd(x, x, torch.empty(192, device='meta'), 1e-5)
    kernels.norm.add_rms_norm_bwd(x, torch.empty(b, l, 192, device='meta'), torch.empty(b, l, 192, device='meta'),
                                  torch.empty(192, device='meta'), 1e-5)
    ptxas = Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / 'ptxas'
    seen, reports = set(), []
    for kernel, args, kwargs in log:
        sig, const = _signature(kernel, args, kwargs)
        key = (kernel.fn.__name__, tuple(sorted(const.items())), tuple(sorted(sig.items())))
        if key in seen:
            continue
        seen.add(key)
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const),
                                  target=GPUTarget('cuda', 90, 32), options=dict(num_warps=kwargs.get('num_warps', 4)))
        assert compiled.asm['cubin'], key
        if ptxas.exists() and shutil.which(str(ptxas)):
            ptx = Path(os.environ.get('TMPDIR', '/tmp')) / f'vimzoo_{os.getpid()}_{len(seen)}.ptx'
            ptx.write_text(compiled.asm['ptx'])
            res = subprocess.run([str(ptxas), '-arch=sm_90a', '-v', str(ptx), '-o', os.devnull],
                                 capture_output=True, text=True)
            ptx.unlink()
            assert res.returncode == 0, res.stderr[-2000:]
            usage = ' '.join(line.strip() for line in res.stderr.splitlines() if 'registers' in line or 'spill' in line)
            reports.append(f'{key[0]} {dict(const)}: {usage}')
            assert ' 0 bytes spill stores' in usage, reports[-1]
    assert len(seen) >= 10, [k[0] for k in seen]
    print('\n'.join(reports))
