"""The CUDA scan kernels (csrc/scan_cuda_kernel.cu), compiled as C++ with a warp emulator, match the reference.

There is no GPU here. tests/cuda_emu/cuda_emu.cpp includes the real kernel source and runs every CUDA thread as
a std::thread (warps in lock-step through a barrier for __shfl_xor_sync/__syncwarp, atomicAdd via atomic_ref).
This validates the kernels' indexing, recurrences, reductions and gradient formulas on CPU; it is NOT a GPU run
(memory model, occupancy and speed are untested: tools/gpu_check.sh does that on a GPU).
"""
import shutil
from pathlib import Path

import pytest
import torch

from vimzoo.ops.backends._common import kernel_inputs
from vimzoo.ops.reference import bidirectional_selective_scan_ref, selective_scan_bwd_ref, selective_scan_ref

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(shutil.which('c++') is None and shutil.which('g++') is None,
                                reason='no C++ compiler')


@pytest.fixture(scope='module')
def emu():
    from vimzoo.ops._loader import cuda_sources, load_extension
    # the harness includes the kernel source: both are part of the build's hash
    return load_extension('CUDA-kernel CPU emulator (tests only)', 'vimzoo_cuda_emu',
                          [HERE / 'cuda_emu' / 'cuda_emu.cpp'], ['-O2', '-std=c++20', '-pthread'], ['-pthread'],
                          fingerprint_extra=[p.read_text() for p in cuda_sources()])


def _make(b, d, l, n, dtype, opt, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, l, generator=g).to(dtype)
    delta = (torch.randn(b, d, l, generator=g) * 0.5).to(dtype)
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B, C = torch.randn(b, n, l, generator=g).to(dtype), torch.randn(b, n, l, generator=g).to(dtype)
    D = torch.randn(d, generator=g) if opt else None
    z = torch.randn(b, d, l, generator=g).to(dtype) if opt else None
    bias = torch.randn(d, generator=g) * 0.5 if opt else None
    return u, delta, A, B, C, D, z, bias


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


@pytest.mark.parametrize('shape', [(1, 1, 1, 1), (2, 3, 13, 4), (1, 5, 40, 16), (1, 2, 37, 40)],
                         ids=lambda s: 'b{}d{}l{}n{}'.format(*s))
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
def test_emulated_cuda_kernel_matches_reference(emu, shape, dtype):
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    b, d, l, n = shape
    for window in (None, 3, 8, l):
        for reverse in (False, True):
            for opt in (True, False):
                u, delta, A, B, C, D, z, bias = _make(b, d, l, n, dtype, opt)
                args = kernel_inputs(dtype, u, delta, A, B, C, D, z, bias)
                w = 1 if window is None else window
                out = emu.scan_fwd(*args, opt, reverse, w)
                ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, opt, reverse, window)
                assert _rel(out, ref) < tol, f'fwd {shape} W={window} rev={reverse} opt={opt}: {_rel(out, ref)}'
                dout = torch.linspace(-1, 1, u.numel()).view_as(u).to(dtype)
                got = emu.scan_bwd(dout, *args, opt, reverse, w)
                got = list(got)
                got[3], got[4] = got[3].transpose(1, 2), got[4].transpose(1, 2)   # dBt, dCt -> (b, n, l)
                exp = selective_scan_bwd_ref(dout, u, delta, A, B, C, D, z, bias, opt, reverse, window)
                names = ['du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'dz', 'ddelta_bias']
                for name, g_, e_ in zip(names, got, exp):
                    if e_ is None:
                        continue
                    err = _rel(g_, e_)
                    assert err < tol, f'{name} {shape} W={window} rev={reverse} opt={opt} {dtype}: {err:.2e}'


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=['fp32', 'bf16'])
def test_emulated_cuda_bidirectional(emu, dtype):
    f = _make(2, 3, 21, 16, dtype, True, seed=1)
    r = _make(2, 3, 21, 16, dtype, True, seed=2)
    z = f[6]
    fa = kernel_inputs(dtype, *f[:6], None, f[7])
    ra = kernel_inputs(dtype, *r[:6], None, r[7])
    out = emu.bidir_fwd(*fa[:6], fa[7], *ra[:6], ra[7], z.contiguous(), True)
    ref = bidirectional_selective_scan_ref(*f[:6], f[7], *r[:6], r[7], z=z)
    assert _rel(out, ref) < (1e-4 if dtype == torch.float32 else 2e-2)
