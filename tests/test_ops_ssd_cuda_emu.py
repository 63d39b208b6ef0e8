"""The SSD / Hydra CUDA kernels (csrc/cuda/ssd_cuda_kernel.cu) and their torch glue (csrc/cuda/ssd_torch.h),
compiled as C++ with the warp emulator of tests/cuda_emu/warp_shim.h, match the reference forward and backward.

There is no GPU here: this validates the kernels' indexing, recurrences, warp reductions, atomics and the glue's
element-wise gradient chain on the CPU; it is NOT a GPU run (memory model, occupancy and speed are untested).
"""
import shutil
from pathlib import Path

import pytest
import torch

from vimzoo.ops.backends._common import ssd_kernel_grads, ssd_kernel_inputs
from vimzoo.ops.reference_ssd import quasiseparable_scan_ref, ssd_scan_ref

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(shutil.which('c++') is None and shutil.which('g++') is None,
                                reason='no C++ compiler')


@pytest.fixture(scope='module')
def emu():
    from vimzoo.ops._loader import cuda_sources, load_extension
    return load_extension('SSD CUDA-kernel CPU emulator (tests only)', 'vimzoo_ssd_cuda_emu',
                          [HERE / 'cuda_emu' / 'ssd_emu.cpp'], ['-O2', '-std=c++20', '-pthread'], ['-pthread'],
                          fingerprint_extra=[p.read_text() for p in cuda_sources()])


def _inputs(b, l, h, p, g, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(x=r(b, l, h, p), dt=r(b, l, h) * 0.7, A=-torch.rand(h, generator=gen) - 0.2, B=r(b, l, g, n),
                C=r(b, l, g, n), dt_b=r(b, l, h) * 0.7, B_b=r(b, l, g, n), C_b=r(b, l, g, n), D=r(b, l, h),
                dt_bias=r(h) * 0.5, initial_states=r(b, h, p, n) * 0.5)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def _reference_grads(fn, inputs, names, dy):
    leaves = {k: inputs[k].clone().requires_grad_() for k in names}
    out = fn(**leaves)
    return out.detach(), dict(zip(names, torch.autograd.grad(out, list(leaves.values()), dy)))


@pytest.mark.parametrize('shape', [(1, 1, 1, 1, 1, 1), (2, 9, 4, 3, 2, 5), (1, 21, 2, 4, 1, 40)],
                         ids=lambda s: 'b{}l{}h{}p{}g{}n{}'.format(*s))
def test_emulated_ssd_kernels_match_reference(emu, shape):
    t = _inputs(*shape)
    names = ['x', 'dt', 'A', 'B', 'C', 'D', 'dt_bias', 'initial_states']
    for reverse in (False, True):
        plain = dict(t, D=t['D'][0, 0, :].clone())   # the plain scan's D is per head
        dy = torch.randn_like(t['x'])
        ref, grads = _reference_grads(
            lambda **a: ssd_scan_ref(**a, dt_softplus=True, reverse=reverse, chunk_size=None), plain, names, dy)
        args = ssd_kernel_inputs(torch.float32, plain['x'], plain['dt'], plain['A'], plain['B'], plain['C'],
                                 D=plain['D'], dt_bias=plain['dt_bias'], initial_states=plain['initial_states'])
        out = emu.ssd_fwd(*args, True, reverse)
        assert _rel(out, ref) < 1e-4, f'fwd reverse={reverse}: {_rel(out, ref):.2e}'
        raw = emu.ssd_bwd(dy, *args, True, reverse)
        got = ssd_kernel_grads(raw, plain['x'], plain['dt'], plain['A'], plain['B'], plain['C'], D=plain['D'],
                               dt_bias=plain['dt_bias'], initial_states=plain['initial_states'])
        for name, g in zip(['x', 'dt', 'A', 'B', 'C', 'D', 'dt_bias', 'initial_states'], got):
            assert _rel(g, grads[name]) < 1e-4, f'd{name} reverse={reverse}: {_rel(g, grads[name]):.2e}'


def test_emulated_quasiseparable_kernels_match_reference(emu):
    t = _inputs(2, 11, 4, 3, 2, 6, seed=3)
    names = ['x', 'dt', 'A', 'B', 'C', 'dt_b', 'B_b', 'C_b', 'D', 'dt_bias', 'initial_states']
    dy = torch.randn_like(t['x'])
    ref, grads = _reference_grads(lambda **a: quasiseparable_scan_ref(**a, dt_softplus=True, chunk_size=None), t,
                                  names, dy)
    args = ssd_kernel_inputs(torch.float32, *(t[k] for k in names))
    out = emu.ssd_fwd(*args, True, False)
    assert _rel(out, ref) < 1e-4
    got = ssd_kernel_grads(emu.ssd_bwd(dy, *args, True, False), *(t[k] for k in names))
    for name, g in zip(['x', 'dt', 'A', 'B', 'C', 'dt_b', 'B_b', 'C_b', 'D', 'dt_bias', 'initial_states'], got):
        assert _rel(g, grads[name]) < 1e-4, f'd{name}: {_rel(g, grads[name]):.2e}'
