"""The CPU kernel's inference fast paths against the reference: token-major (channel-contiguous) scans and conv, the
fused mixer core `mamba_inner`, fused add + RMSNorm, output layouts, NaN/inf errors, threads, and the portable
(non-AVX-512) build of the same source."""
import shutil
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import vimzoo  # noqa: F401  (registers the models)
import vimzoo.ops as ops
from vimzoo.ops._loader import build_cpu_extension, cpu_build_flags

HAS_CXX = shutil.which('c++') is not None or shutil.which('g++') is not None


@pytest.fixture(scope='module')
def ext():
    if not HAS_CXX:
        pytest.skip('no C++ compiler: the CPU kernel cannot be built here')
    from vimzoo.ops._loader import cpu_extension
    return cpu_extension(required=True)   # a compiler is present: a build failure is a test failure


def _tok(b, d, l, gen, scale=1.0):
    """(b, d, l) view of token-major (b, l, d) memory, as the Vim mixer produces it."""
    return (torch.randn(b, l, d, generator=gen) * scale).transpose(1, 2)


def _scan_inputs(b, d, l, n, seed=0, with_z=True):
    g = torch.Generator().manual_seed(seed)
    u, delta = _tok(b, d, l, g), _tok(b, d, l, g, 0.5)
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B, C = torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.5
    z = _tok(b, d, l, g) if with_z else None
    return u, delta, A, B, C, D, z, bias


def _rel(got, exp):
    return ((got - exp).abs().max() / exp.abs().max().clamp_min(1e-6)).item()


def _contig(t):
    return None if t is None else t.contiguous()


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the kernel is built with OpenMP on Linux only')
def test_extension_is_built_with_openmp(ext):
    assert ext.built_with_openmp(), 'at::parallel_for in the extension would silently run on one thread'


# ----------------------------------------------------------------------------------------------- token-major scans
@pytest.mark.parametrize('shape', [(1, 16, 1, 16), (2, 32, 37, 16), (1, 48, 70, 8), (1, 16, 45, 5), (2, 24, 19, 16)],
                         ids=lambda s: 'b{}d{}l{}n{}'.format(*s))
def test_token_major_scan_matches_reference(ext, shape):
    b, d, l, n = shape   # d = 24 is not a multiple of 16: the row kernel serves it, the layout contract still holds
    for window in (None, 4, 40, l):
        for reverse in (False, True):
            for with_z in (True, False):
                u, delta, A, B, C, D, z, bias = _scan_inputs(b, d, l, n, seed=l + n, with_z=with_z)
                got = ops.selective_scan(u, delta, A, B, C, D, z, bias, True, reverse, window, backend='cpu')
                exp = ops.selective_scan(_contig(u), _contig(delta), A, B, C, D, _contig(z), bias, True, reverse,
                                         window, backend='reference')
                assert got.stride() == torch.empty_like(u).stride(), 'outputs keep the token-major layout'
                assert _rel(got, exp) < 2e-5, f'{shape} W={window} reverse={reverse} z={with_z}'


@pytest.mark.parametrize('shape', [(1, 16, 1, 16), (2, 32, 53, 16), (1, 64, 197, 16), (1, 48, 33, 4)],
                         ids=lambda s: 'b{}d{}l{}n{}'.format(*s))
def test_token_major_bidirectional_matches_reference(ext, shape):
    b, d, l, n = shape
    fwd = _scan_inputs(b, d, l, n, seed=1)
    bwd = _scan_inputs(b, d, l, n, seed=2, with_z=False)
    z = fwd[6]
    args = [*fwd[:6], fwd[7], *bwd[:6], bwd[7]]
    got = ops.bidirectional_selective_scan(*args, z=z, backend='cpu')
    exp = ops.bidirectional_selective_scan(*[_contig(a) for a in args], z=z.contiguous(), backend='reference')
    assert got.stride() == torch.empty_like(fwd[0]).stride()
    assert _rel(got, exp) < 2e-5


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('width', [2, 4, 5])
@pytest.mark.parametrize('length', [29, 3])   # 3: shorter than the conv
@pytest.mark.parametrize('d', [32, 128])      # 128: width 4 runs four 16-channel blocks per task
def test_token_major_causal_conv_matches_reference(ext, reverse, width, length, d):
    g = torch.Generator().manual_seed(width)
    x = _tok(2, d, length, g)
    w, bias = torch.randn(d, width, generator=g), torch.randn(d, generator=g)
    for b_ in (bias, None):
        for act in ('silu', None):
            got = ops.causal_conv1d(x, w, b_, act, reverse, backend='cpu')
            exp = ops.causal_conv1d(x.contiguous(), w, b_, act, reverse, backend='reference')
            assert got.stride() == torch.empty_like(x).stride()
            torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(1, 16, 1, 16), (2, 32, 37, 16), (1, 48, 70, 8), (1, 16, 45, 5)],
                         ids=lambda s: 'b{}d{}l{}n{}'.format(*s))
def test_token_major_scan_backward_matches_reference(ext, shape):
    """The token-major backward kernel (training without layout copies): every gradient, plain / reverse / LB."""
    b, d, l, n = shape
    for window in (None, 4, l):
        for reverse in (False, True):
            inputs = _scan_inputs(b, d, l, n, seed=l + n + 1, with_z=window != 4)
            grads = {}
            for backend in ('cpu', 'reference'):
                leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
                out = ops.selective_scan(*leaves[:8], True, reverse, window, backend=backend)
                cot = torch.linspace(-1, 1, out.numel()).view(b, l, d).transpose(1, 2)
                used = [t for t in leaves if t is not None]
                grads[backend] = torch.autograd.grad(out, used, cot)
            assert grads['cpu'][0].stride() == inputs[0].stride(), 'du keeps the token-major layout'
            for i, (got, exp) in enumerate(zip(grads['cpu'], grads['reference'])):
                assert _rel(got, exp) < 1e-4, f'{shape} W={window} reverse={reverse}: grad #{i}'


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('width', [1, 3, 4])
@pytest.mark.parametrize('length', [29, 3])
@pytest.mark.parametrize('d', [32, 128])
def test_token_major_causal_conv_backward_matches_reference(ext, reverse, width, length, d):
    g = torch.Generator().manual_seed(width)
    for act in ('silu', None):
        for with_bias in (True, False):
            x, w = _tok(2, d, length, g), torch.randn(d, width, generator=g)
            bias = torch.randn(d, generator=g) if with_bias else None
            cot = _tok(2, d, length, g)
            grads = {}
            for backend in ('cpu', 'reference'):
                leaves = [t.clone().requires_grad_() for t in (x, w, bias) if t is not None]
                out = ops.causal_conv1d(leaves[0], leaves[1], leaves[2] if with_bias else None, act, reverse,
                                        backend=backend)
                grads[backend] = torch.autograd.grad(out, leaves, cot)
            for got, exp in zip(grads['cpu'], grads['reference']):
                torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)


def test_token_major_extreme_finite_values_stay_finite(ext):
    """SiLU / sigmoid of very negative values (e^-x overflows fp32) must give ~0, not NaN: gate, conv and row kernel."""
    u, delta, A, B, C, D, z, bias = _scan_inputs(1, 32, 20, 16)
    z = z * 300.0   # |z| up to ~1000
    got = ops.selective_scan(u, delta, A, B, C, D, z, bias, True, backend='cpu')
    exp = ops.selective_scan(_contig(u), _contig(delta), A, B, C, D, _contig(z), bias, True, backend='reference')
    assert torch.isfinite(got).all() and _rel(got, exp) < 2e-5
    row = ops.selective_scan(_contig(u), _contig(delta), A, B, C, D, _contig(z), bias, True, backend='cpu')
    assert torch.isfinite(row).all() and _rel(row, exp) < 2e-5
    x = u * 500.0
    w = torch.randn(32, 4)
    got = ops.causal_conv1d(x, w, None, 'silu', backend='cpu')
    exp = ops.causal_conv1d(x.contiguous(), w, None, 'silu', backend='reference')
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-4)


def test_token_major_nonfinite_inputs_name_the_tensor(ext):
    u, delta, A, B, C, D, z, bias = _scan_inputs(1, 32, 20, 16)
    for name in ('u', 'delta', 'z'):
        bad = {'u': u.clone(), 'delta': delta.clone(), 'z': z.clone()}
        bad[name][0, 5, 7] = float('nan')   # clone() keeps the token-major strides
        with pytest.raises(ValueError, match=f'{name} contains NaN or inf'):
            ops.selective_scan(bad['u'], bad['delta'], A, B, C, D, bad['z'], bias, True, backend='cpu')
    x = u.clone()
    x[0, 3, 2] = float('inf')
    with pytest.raises(ValueError, match='x contains NaN or inf'):
        ops.causal_conv1d(x, torch.randn(32, 4), None, 'silu', backend='cpu')


def test_token_major_results_do_not_depend_on_threads(ext):
    u, delta, A, B, C, D, z, bias = _scan_inputs(2, 64, 150, 16)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(ops.selective_scan(u, delta, A, B, C, D, z, bias, True, False, 8, backend='cpu'))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize('window', [None, 8])
@pytest.mark.parametrize('batch', [2, 9])
def test_token_major_backward_partial_sums_across_workers(ext, window, batch):
    """The backward's per-worker dB / dC partial sums give the reference gradients for 1, 2 and 3 threads, both
    when workers own whole batch rows (1 thread; 9 rows on 2 threads, unevenly) and when a row's blocks spread over
    workers (2 rows; 9 rows on 3 threads): zeroed when a worker first meets a row, reduced over those that met it."""
    inputs = _scan_inputs(batch, 64, 150, 16, seed=3)
    cot = torch.randn(batch, 150, 64, generator=torch.Generator().manual_seed(4)).transpose(1, 2)

    def grads(backend):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = ops.selective_scan(*leaves, True, False, window, backend=backend)
        return torch.autograd.grad(out, leaves, cot)
    expected = grads('reference')
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            for i, (got, exp) in enumerate(zip(grads('cpu'), expected)):
                assert _rel(got, exp) < 1e-4, f'{threads} threads: grad #{i} rel {_rel(got, exp):.1e}'
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize('rank,n,window,reverse,with_z', [(12, 16, 1, False, True), (1, 16, 1, True, True),
                                                          (2, 8, 4, False, False), (5, 16, 8, True, True),
                                                          (3, 5, 1, False, True)])
def test_lowrank_backward_matches_formed_delta(ext, rank, n, window, reverse, with_z):
    """scan_bwd_tm_lowrank (the fused mixer's backward: Δ = dt · dt_projᵀ formed per token, the gradients of dt and
    dt_proj summed in the kernel) == scan_bwd_tm on the formed Δ followed by the two GEMMs, at 1 and 2 threads."""
    b, d, l = 3, 48, 29
    u, _, A, B, C, D, z, bias = _scan_inputs(b, d, l, n, seed=rank + n + window, with_z=with_z)
    g = torch.Generator().manual_seed(rank)
    xdbl = torch.randn(b, l, rank + 2 * n, generator=g)
    dt = xdbl[..., :rank]                         # a strided slice, as the mixer passes it
    dtw = torch.randn(d, rank, generator=g) * rank ** -0.5
    dout = _tok(b, d, l, g)
    bt, ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
    delta = F.linear(dt, dtw).transpose(1, 2)      # token-major (b, d, l) view
    args = (A, bt, ct, D, z, bias, True, reverse, window, 0.5)
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            du, dd, dA, dB, dC, dD, dz, dbias = ext.scan_bwd_tm(dout, u, delta, *args)
            dd_tok = dd.transpose(1, 2)
            expected = [du, dd_tok @ dtw, dd_tok.flatten(0, 1).t() @ dt.flatten(0, 1), dA, dB, dC, dD, dz, dbias]
            got = ext.scan_bwd_tm_lowrank(dout, u, dt, dtw, *args)
            names = ['du', 'd_dt', 'd_dtw', 'dA', 'dB', 'dC', 'dD', 'dz', 'dbias']
            for name, x, e in zip(names, got, expected):
                assert x.shape == e.shape, name
                if e.numel():
                    assert _rel(x, e) < 1e-5, f'{threads} threads: {name} rel {_rel(x, e):.1e}'
    finally:
        torch.set_num_threads(old)


def test_lowrank_backward_rejects_bad_dt(ext):
    u, delta, A, B, C, D, z, bias = _scan_inputs(1, 16, 5, 16)
    bt, ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
    dout = _tok(1, 16, 5, torch.Generator().manual_seed(0))
    args = (A, bt, ct, D, z, bias, True, False, 1, 1.0)
    with pytest.raises(RuntimeError, match='dt_proj_w'):
        ext.scan_bwd_tm_lowrank(dout, u, torch.randn(1, 5, 3), torch.randn(8, 3), *args)   # d != 16
    with pytest.raises(RuntimeError, match='dt must be'):
        ext.scan_bwd_tm_lowrank(dout, u, torch.randn(1, 5, 4), torch.randn(16, 3), *args)   # rank 4 != 3
    with pytest.raises(RuntimeError, match='dt must be'):
        ext.scan_bwd_tm_lowrank(dout, u, torch.randn(1, 3, 5).transpose(1, 2), torch.randn(16, 3), *args)


def test_backward_kernels_write_and_add_into_given_halves(ext):
    """The fused mixer's dx / dz outputs: written into (or, for the second direction, added to) a half of a (b, l, 2d)
    buffer, equal to the kernels' own outputs; a mismatched or missing output tensor is an error."""
    b, d, l = 2, 32, 11
    u, _, A, B, C, D, z, bias = _scan_inputs(b, d, l, 16, seed=3)
    g = torch.Generator().manual_seed(4)
    dt, dtw, dout = torch.randn(b, l, 4, generator=g), torch.randn(d, 4, generator=g) * 0.5, _tok(b, d, l, g)
    bt, ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
    args = (A, bt, ct, D, z, bias, True, False, 1, 0.5)
    conv_w, conv_b = torch.randn(d, 4, generator=g), torch.randn(d, generator=g)
    base = torch.randn(b, l, 2 * d, generator=g)
    buf = base.clone()
    dx_half, dz_half = buf.transpose(1, 2).split(d, dim=1)
    dz = ext.scan_bwd_tm_lowrank(dout, u, dt, dtw, *args)[7]
    dx = ext.causal_conv1d_bwd_tm(dout, u, conv_w, conv_b, True, False)[0]
    assert ext.scan_bwd_tm_lowrank(dout, u, dt, dtw, *args, dz_half, False)[7].data_ptr() == dz_half.data_ptr()
    ext.causal_conv1d_bwd_tm(dout, u, conv_w, conv_b, True, False, dx_half, False)
    torch.testing.assert_close(dz_half, dz, rtol=0, atol=0)
    torch.testing.assert_close(dx_half, dx, rtol=0, atol=0)
    ext.scan_bwd_tm_lowrank(dout, u, dt, dtw, *args, dz_half, True)
    ext.causal_conv1d_bwd_tm(dout, u, conv_w, conv_b, True, False, dx_half, True)
    torch.testing.assert_close(dz_half, 2 * dz)
    torch.testing.assert_close(dx_half, 2 * dx)
    with pytest.raises(RuntimeError, match='dz_out must be'):
        ext.scan_bwd_tm_lowrank(dout, u, dt, dtw, *args, buf[:, :5, :d].transpose(1, 2), False)
    with pytest.raises(RuntimeError, match='needs dz_out'):
        ext.scan_bwd_tm_lowrank(dout, u, dt, dtw, *args, None, True)
    with pytest.raises(RuntimeError, match='dx_out must be'):
        ext.causal_conv1d_bwd_tm(dout, u, conv_w, conv_b, True, False, buf.transpose(1, 2), False)
    with pytest.raises(RuntimeError, match='needs dx_out'):
        ext.causal_conv1d_bwd_tm(dout, u, conv_w, conv_b, True, False, None, True)


# ---------------------------------------------------------------------------------------------------- mamba_inner
def _mixer_weights(d, n, rank, k, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d, 1, k, generator=g) * 0.5, torch.randn(d, generator=g) * 0.1,
            torch.randn(rank + 2 * n, d, generator=g) * d ** -0.5, torch.randn(d, rank, generator=g) * rank ** -0.5,
            torch.randn(d, generator=g) * 0.5 - 2.0, torch.log(torch.arange(1, n + 1.0)).expand(d, n)
            + torch.randn(d, n, generator=g) * 0.2, torch.randn(d, generator=g))


MIXER_CASES = [dict(bidir=True), dict(bidir=False), dict(bidir=False, reverse=True, window=4),
               dict(bidir=False, reverse=False, window=8)]


@pytest.mark.parametrize('case', MIXER_CASES, ids=lambda c: '-'.join(f'{k}{v}' for k, v in c.items()))
def test_mamba_inner_fused_matches_unfused_and_reference(ext, case):
    """The fused op (inference and training: its backward reads x_proj's output, recomputes conv / Δ) == the unfused
    route (the differentiable row-layout ops) == the reference backend, outputs and every gradient."""
    b, l, d, n, rank = 2, 41, 48, 16, 3
    g = torch.Generator().manual_seed(0)
    xz = torch.randn(b, l, 2 * d, generator=g)
    wf = _mixer_weights(d, n, rank, 4, 1)
    wb = _mixer_weights(d, n, rank, 4, 2) if case['bidir'] else None
    kw = dict(reverse=case.get('reverse', False), local_window=case.get('window'), scale=0.5 if case['bidir'] else 1.)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fused = ops.mamba_inner(xz, wf, wb, **kw)
    assert any('mamba_inner_fwd' in str(op) for op in counter.get_flop_counts()['Global']), 'the fused op did not run'
    cot = torch.randn(b, l, d, generator=g)

    def run(route):
        leaves = [xz.clone().requires_grad_()] + [t.clone().requires_grad_() for t in (*wf, *(wb or ()))]
        ws, wbs = leaves[1:8], leaves[8:] or None
        if route == 'unfused':   # the composite math with the CPU backend's differentiable ops plugged in
            from functools import partial
            out = ops.mamba_inner_ref(leaves[0], ws, wbs, kw['reverse'], kw['local_window'], kw['scale'],
                                      conv=partial(ops.causal_conv1d, backend='cpu'),
                                      scan=partial(ops.selective_scan, backend='cpu'),
                                      bidirectional_scan=partial(ops.bidirectional_selective_scan, backend='cpu'))
        else:
            out = ops.mamba_inner(leaves[0], ws, wbs, backend=route, **kw)
        return out, torch.autograd.grad(out, leaves, cot)
    results = {route: run(route) for route in ('cpu', 'unfused', 'reference')}
    exp_out, exp_grads = results['reference']
    assert fused.shape == (b, l, d) and _rel(fused, exp_out) < 2e-5
    for route, (out, grads) in results.items():
        assert _rel(out.detach(), exp_out) < 2e-5, route
        for i, (got, exp) in enumerate(zip(grads, exp_grads)):
            assert _rel(got, exp) < 1e-4, f'{route}: grad #{i} rel {_rel(got, exp):.1e}'


@pytest.mark.parametrize('backend', ['cpu', 'reference'])
@pytest.mark.parametrize('bidir', [True, False])
def test_mamba_inner_backward_reads_the_saved_x_proj_output(ext, backend, bidir):
    """The op's second output is x_proj's output per direction, and its backward reads that instead of recomputing
    the GEMM: an empty x_dbl (recompute) gives the same gradients, a perturbed one different ones."""
    b, l, d, n, rank = 2, 19, 32, 8, 2
    g = torch.Generator().manual_seed(5)
    xz = torch.randn(b, l, 2 * d, generator=g)
    wf = list(_mixer_weights(d, n, rank, 4, 1))
    wb = list(_mixer_weights(d, n, rank, 4, 2)) if bidir else []
    window = 1 if bidir else 4
    out, x_dbl = torch.ops.vimzoo.mamba_inner_fwd(xz, wf, wb, False, window, 0.5, backend, True)
    exp_out, exp_x_dbl = ops.reference.mamba_inner_fwd_ref(xz, wf, wb or None, False, window, 0.5)
    assert x_dbl.shape == (2 if bidir else 1, b, l, rank + 2 * n) and _rel(x_dbl, exp_x_dbl) < 1e-5
    assert _rel(out, exp_out) < 2e-5
    dout = torch.randn(b, l, d, generator=g)

    def grads(saved):
        dxz, dfwd, dbwd = torch.ops.vimzoo.mamba_inner_bwd(dout, xz, saved, wf, wb, False, window, 0.5, backend)
        return [dxz, *dfwd, *dbwd]
    read, recomputed = grads(x_dbl), grads(torch.empty(0))
    for i, (got, exp) in enumerate(zip(read, recomputed)):
        assert _rel(got, exp) < 1e-5, f'grad #{i}'
    perturbed = grads(x_dbl + 0.1 * torch.randn(x_dbl.shape, generator=g))
    assert _rel(perturbed[0], read[0]) > 1e-3 and _rel(perturbed[3], read[3]) > 1e-3   # dxz, d x_proj.weight
    with pytest.raises(ValueError, match="x_dbl must be the forward's second output"):
        grads(x_dbl[:, :, 1:])
    if backend == 'cpu':   # the kernel itself, called with parameters that require grad (as benchmarks replay it)
        leaves = [t.clone().requires_grad_() for t in wf]
        raw = ext.mamba_inner_fwd(xz, leaves, [t.detach() for t in wb], False, window, 0.5, True)
        assert _rel(raw[0], out) < 1e-6 and _rel(raw[1], x_dbl) < 1e-6


@pytest.mark.parametrize('bidir', [True, False])
def test_mamba_inner_compiled_backward_matches_eager(ext, bidir):
    """torch.compile (AOTAutograd, fullgraph) traces the fused op with its x_proj output and its backward through
    the fake impls; the gradients equal eager mode's."""
    b, l, d, n, rank = 2, 13, 32, 8, 2
    g = torch.Generator().manual_seed(7)
    leaves = [torch.randn(b, l, 2 * d, generator=g).requires_grad_()] + [
        t.clone().requires_grad_() for t in (*_mixer_weights(d, n, rank, 4, 1),
                                             *(_mixer_weights(d, n, rank, 4, 2) if bidir else ()))]
    kw = dict(scale=0.5) if bidir else dict(reverse=True, local_window=4)

    def f(xz, *w):
        return ops.mamba_inner(xz, w[:7], w[7:] or None, backend='cpu', **kw).square().sum()
    torch._dynamo.reset()
    got = torch.autograd.grad(torch.compile(f, backend='aot_eager', fullgraph=True)(*leaves), leaves)
    exp = torch.autograd.grad(f(*leaves), leaves)
    torch._dynamo.reset()
    for i, (a, e) in enumerate(zip(got, exp)):
        assert _rel(a, e) < 1e-5, f'grad #{i}'


def test_mamba_inner_errors(ext):
    xz = torch.randn(1, 8, 64)
    w = _mixer_weights(32, 16, 2, 4, 0)
    with pytest.raises(ValueError, match='2 \\* d'):
        ops.mamba_inner(torch.randn(1, 8, 63), w)
    with pytest.raises(ValueError, match='7 tensors'):
        ops.mamba_inner(xz, w[:6])
    with pytest.raises(ValueError, match='reverse must be False'):
        ops.mamba_inner(xz, w, w, reverse=True)
    bad = xz.clone()
    bad[0, 3, 40] = float('nan')   # a z channel
    with torch.no_grad(), pytest.raises(ValueError, match='z contains NaN'):
        ops.mamba_inner(bad, w)
    bad = xz.clone()
    bad[0, 3, 1] = float('nan')    # an x channel
    with torch.no_grad(), pytest.raises(ValueError, match='x contains NaN'):
        ops.mamba_inner(bad, w)


# -------------------------------------------------------------------------------------------------- add_rms_norm
def test_add_rms_norm_fused_matches_torch(ext):
    g = torch.Generator().manual_seed(0)
    x, res, w = torch.randn(2, 9, 40, generator=g), torch.randn(2, 9, 40, generator=g), torch.randn(40, generator=g)
    for residual in (res, None):
        with torch.no_grad():
            normed, summed = ops.add_rms_norm(x, residual, w, 1e-5)
        exp_sum = x if residual is None else residual + x
        torch.testing.assert_close(summed, exp_sum)
        torch.testing.assert_close(normed, F.rms_norm(exp_sum, (40,), w, 1e-5), rtol=1e-5, atol=1e-6)
        assert summed.data_ptr() != x.data_ptr()



@pytest.mark.parametrize('with_residual,use_summed', [(True, True), (True, False), (False, True)])
def test_add_rms_norm_training_matches_torch(ext, with_residual, use_summed):
    """Under grad the fused op (C++ forward and one-pass backward) gives torch's gradients for x, residual and the
    weight, whether or not the sum output feeds the loss; at 1 and 2 threads (dweight sums per-thread parts)."""
    g = torch.Generator().manual_seed(1)
    x, res, w = torch.randn(3, 37, 48, generator=g), torch.randn(3, 37, 48, generator=g), torch.randn(48, generator=g)
    cot_n, cot_s = torch.randn(3, 37, 48, generator=g), torch.randn(3, 37, 48, generator=g)

    def grads(fn):
        leaves = [x.clone().requires_grad_(), res.clone().requires_grad_(), w.clone().requires_grad_()]
        normed, summed = fn(leaves[0], leaves[1] if with_residual else None, leaves[2])
        loss = (normed * cot_n).sum() + ((summed * cot_s).sum() if use_summed else 0)
        used = leaves if with_residual else [leaves[0], leaves[2]]
        return normed, torch.autograd.grad(loss, used)

    def torch_ops(xx, rr, ww):
        summed = xx if rr is None else rr + xx
        return F.rms_norm(summed, (48,), ww, 1e-5), summed
    exp_out, expected = grads(torch_ops)
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, got = grads(lambda a, b, c: ops.add_rms_norm(a, b, c, 1e-5))
            assert 'vimzoo_add_rms_norm' in type(out.grad_fn).__name__, 'the fused op, not torch ops, ran'
            torch.testing.assert_close(out, exp_out, rtol=1e-5, atol=1e-6)
            for gt, ex in zip(got, expected):
                torch.testing.assert_close(gt, ex, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------- models, builds
@pytest.mark.parametrize('name', ['test_vim', 'test_lbvim'])
def test_model_inference_fast_path_matches_training_path(ext, name):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fast = model(x)
    slow = model(x)   # parameters require grad: the differentiable ops run
    with torch.no_grad(), ops.use_backend('reference'):
        ref = model(x)
    assert _rel(fast, ref) < 1e-5 and _rel(slow.detach(), ref) < 1e-5


@pytest.mark.slow
def test_portable_build_without_avx512_matches_reference(tmp_path):
    """The same source compiled for AVX2 only (or baseline x86-64) takes the generic exp2/reciprocal paths."""
    if not HAS_CXX:
        pytest.skip('no C++ compiler')
    flags = [f for f in cpu_build_flags() if not f.startswith('-mavx512')]
    name = 'vimzoo_scan_cpu_portable_test' + ('_avx2' if '-mavx2' in flags else '')
    port = build_cpu_extension(flags, name, build_directory=str(tmp_path / 'build'))
    u, delta, A, B, C, D, z, bias = _scan_inputs(1, 32, 50, 16)
    bt, ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
    for window in (1, 4):
        got = port.scan_fwd_tm(u, delta, A, bt, ct, D, z, bias, True, True, window, True)
        exp = ops.selective_scan(_contig(u), _contig(delta), A, B, C, D, _contig(z), bias, True, True,
                                 None if window == 1 else window, backend='reference')
        assert _rel(got, exp) < 2e-5
    x = torch.randn(1, 9, 64)
    wgt = torch.randn(32, 4)
    got = port.causal_conv1d_tm(x[..., :32].transpose(1, 2), wgt, None, True, False, True)
    exp = ops.causal_conv1d(x[..., :32].transpose(1, 2).contiguous(), wgt, None, 'silu', backend='reference')
    torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-5)
