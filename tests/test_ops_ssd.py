"""vimzoo.ops's Mamba-2 SSD scan and Hydra's quasiseparable core: the references against each other and against the
official construction, every backend against the reference (forward and gradients), gradcheck, errors, tracing."""
import shutil

import pytest
import torch
import torch.nn.functional as F

import vimzoo.ops as ops
from vimzoo.ops.reference_ssd import (quasiseparable_matrix, quasiseparable_scan_ref, ssd_scan_chunked,
                                      ssd_scan_recurrence, ssd_scan_ref)

HAS_CXX = shutil.which('c++') is not None or shutil.which('g++') is not None
BACKENDS = ['reference', 'auto'] + (['cpu'] if HAS_CXX else [])


def _make(b=2, l=13, h=4, p=3, g=2, n=5, dtype=torch.float32, seed=0):
    """Random SSD / Hydra inputs: x, dt, dt_b (raw), A < 0, B, C, B_b, C_b, dt_bias, initial states, D per token
    (b, l, h) and D_head (h,)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)
    par = torch.float64 if dtype == torch.float64 else torch.float32
    x, dt, dt_b = r(b, l, h, p), r(b, l, h, scale=0.7), r(b, l, h, scale=0.7)
    A = -torch.rand(h, generator=gen).to(par) - 0.2
    B, C, B_b, C_b = (r(b, l, g, n) for _ in range(4))
    bias = (torch.randn(h, generator=gen) * 0.5).to(par)
    init = r(b, h, p, n, scale=0.5)
    D, D_head = r(b, l, h), torch.randn(h, generator=gen).to(par)
    return dict(x=x, dt=dt, dt_b=dt_b, A=A, B=B, C=C, B_b=B_b, C_b=C_b, dt_bias=bias, initial_states=init, D=D,
                D_head=D_head)


def _ssd_args(t, with_opt=True):
    return dict(x=t['x'], dt=t['dt'], A=t['A'], B=t['B'], C=t['C'],
                D=t['D_head'] if with_opt else None,
                dt_bias=t['dt_bias'] if with_opt else None, dt_softplus=with_opt,
                initial_states=t['initial_states'] if with_opt else None)


def _qs_args(t, with_opt=True):
    return dict(x=t['x'], dt=t['dt'], A=t['A'], B=t['B'], C=t['C'], dt_b=t['dt_b'], B_b=t['B_b'], C_b=t['C_b'],
                D=t['D'] if with_opt else None, dt_bias=t['dt_bias'] if with_opt else None, dt_softplus=with_opt,
                initial_states=t['initial_states'] if with_opt else None)


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


# -------------------------------------------------------------------------------------------- reference semantics
@pytest.mark.parametrize('reverse', [False, True])
def test_chunked_form_equals_the_recurrence_for_every_chunk_size(reverse):
    t = _make(dtype=torch.float64, l=37)
    rec = ssd_scan_recurrence(t['x'], t['dt'], t['A'], t['B'], t['C'], t['dt_bias'], True, t['initial_states'],
                              reverse)
    for chunk in (1, 2, 5, 16, 37, 64):
        got = ssd_scan_chunked(t['x'], t['dt'], t['A'], t['B'], t['C'], t['dt_bias'], True, t['initial_states'],
                               reverse, chunk)
        assert _rel(got, rec) < 1e-12, chunk


def test_recurrence_is_the_scalar_definition():
    """One (batch, head, p) row by hand: S = exp(Δ A) S + Δ x B, y = S·C + D x."""
    t = _make(b=1, l=6, h=2, p=2, g=1, n=3, dtype=torch.float64)
    y = ssd_scan_ref(t['x'], t['dt'], t['A'], t['B'], t['C'], t['D_head'], t['dt_bias'], True, None, False, None)
    for hh, pp in [(0, 0), (1, 1)]:
        s = torch.zeros(3, dtype=torch.float64)
        for k in range(6):
            delta = F.softplus(t['dt'][0, k, hh] + t['dt_bias'][hh])
            s = torch.exp(delta * t['A'][hh]) * s + delta * t['x'][0, k, hh, pp] * t['B'][0, k, 0]
            expected = (s * t['C'][0, k, 0]).sum() + t['D_head'][hh] * t['x'][0, k, hh, pp]
            assert torch.allclose(y[0, k, hh, pp], expected, rtol=1e-12, atol=1e-12)


def test_reverse_is_flip_scan_flip():
    t = _make(dtype=torch.float64)
    a = _ssd_args(t)
    rev = ops.ssd_scan(**a, reverse=True, backend='reference')
    flipped = {k: (v.flip(1) if k in ('x', 'dt', 'B', 'C') else v) for k, v in a.items()}
    torch.testing.assert_close(rev, ops.ssd_scan(**flipped, backend='reference').flip(1), rtol=1e-12, atol=1e-12)


def test_quasiseparable_equals_the_official_stacked_roll_construction():
    """Hydra's code: stack [x; flip x] on the batch axis, one causal scan, roll by one with zero fill, un-flip the
    second half, add x * (fc_D(x) + D) — against our flip-free definition."""
    t = _make(dtype=torch.float64, l=11)
    b = t['x'].shape[0]
    got = quasiseparable_scan_ref(**_qs_args(t))
    cat = lambda f, r: torch.cat([f, r.flip(1)], dim=0)   # noqa: E731
    delta = F.softplus(cat(t['dt'], t['dt_b']) + t['dt_bias'])
    init = t['initial_states'].repeat(2, 1, 1, 1)
    y = ssd_scan_ref(cat(t['x'], t['x']), delta, t['A'], cat(t['B'], t['B_b']), cat(t['C'], t['C_b']),
                     initial_states=init)
    y = torch.roll(y, shifts=1, dims=1)
    y[:, 0] = 0
    expected = y[:b] + y[b:].flip(1) + t['x'] * t['D'][..., None]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_quasiseparable_matrix_has_strict_triangles_and_the_free_diagonal():
    t = _make(dtype=torch.float64, l=9)
    M = quasiseparable_matrix(t['dt'], t['A'], t['B'], t['C'], t['dt_b'], t['B_b'], t['C_b'], t['D'], t['dt_bias'],
                              True)
    y = torch.einsum('bhij,bjhp->bihp', M, t['x'])
    torch.testing.assert_close(y, quasiseparable_scan_ref(**dict(_qs_args(t), initial_states=None)),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(M, dim1=-2, dim2=-1), t['D'].permute(0, 2, 1))
    no_diag = quasiseparable_matrix(t['dt'], t['A'], t['B'], t['C'], t['dt_b'], t['B_b'], t['C_b'], None,
                                    t['dt_bias'], True)
    assert not torch.diagonal(no_diag, dim1=-2, dim2=-1).any()   # the shift makes both SSD parts strict


def test_gradcheck_reference():
    t = _make(b=1, l=5, h=2, p=2, g=1, n=3, dtype=torch.float64)
    names = ['x', 'dt', 'A', 'B', 'C', 'dt_b', 'B_b', 'C_b', 'D', 'dt_bias', 'initial_states']
    inputs = tuple(t[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(lambda *a: quasiseparable_scan_ref(*a[:10], True, a[10], chunk_size=2), inputs)


# ------------------------------------------------------------------------------------- backends vs the reference
SHAPES = [(1, 1, 1, 1, 1, 1), (2, 13, 4, 3, 2, 5), (1, 70, 3, 16, 1, 16), (2, 130, 2, 8, 2, 4)]


def _grads(out, inputs, seed=1):
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    return torch.autograd.grad(out, inputs, cot, allow_unused=True)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'b{}l{}h{}p{}g{}n{}'.format(*s))
@pytest.mark.parametrize('op', ['ssd_scan', 'quasiseparable_scan'])
def test_backend_matches_reference_fp32(backend, shape, op):
    for with_opt, reverse in ((True, False), (True, True), (False, False)):
        if op == 'quasiseparable_scan' and reverse:
            continue
        t = _make(*shape, seed=sum(shape))
        args = _ssd_args(t, with_opt) if op == 'ssd_scan' else _qs_args(t, with_opt)
        if op == 'ssd_scan':
            args['reverse'] = reverse
        leaves = {k: v.clone().requires_grad_() for k, v in args.items() if isinstance(v, torch.Tensor)}
        ref = getattr(ops, op)(**dict(args, **leaves), backend='reference')
        got = getattr(ops, op)(**dict(args, **leaves), backend=backend)
        assert got.shape == ref.shape and got.dtype == ref.dtype and got.is_contiguous()
        assert _rel(got, ref) < 1e-4, (backend, op, with_opt, reverse)
        for name, g, e in zip(leaves, _grads(got, list(leaves.values())), _grads(ref, list(leaves.values()))):
            assert (g is None) == (e is None), name
            if e is not None and e.abs().max() > 0:
                assert g.dtype == leaves[name].dtype and _rel(g, e) < 1e-4, (backend, op, name, _rel(g, e))


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_backend_matches_reference_low_precision(backend, dtype):
    t = _make(2, 40, 4, 8, 2, 16, dtype=dtype)
    for op, args in (('ssd_scan', _ssd_args(t)), ('quasiseparable_scan', _qs_args(t))):
        ref = getattr(ops, op)(**args, backend='reference')
        got = getattr(ops, op)(**args, backend=backend)
        assert got.dtype == dtype
        assert _rel(got, ref) < 2e-2, (op, backend)
        exact = getattr(ops, op)(**{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in args.items()},
                                 backend='reference')
        assert _rel(got, exact) < 3e-2, (op, backend)   # rounding of the output only: the math is fp32


@pytest.mark.skipif(not HAS_CXX, reason='no C++ compiler')
@pytest.mark.parametrize('op', ['ssd_scan', 'quasiseparable_scan'])
def test_gradcheck_cpu_kernel(op):
    t = _make(b=1, l=9, h=2, p=2, g=1, n=3, dtype=torch.float64)
    args = _ssd_args(t) if op == 'ssd_scan' else _qs_args(t)
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor)]

    def f(*tensors):
        return getattr(ops, op)(**dict(args, **dict(zip(names, tensors))), backend='cpu')
    assert torch.autograd.gradcheck(f, tuple(args[k].clone().requires_grad_() for k in names))


@pytest.mark.skipif(not HAS_CXX, reason='no C++ compiler')
def test_cpu_kernel_does_not_depend_on_the_chunk_size():
    from vimzoo.ops._loader import cpu_extension
    from vimzoo.ops.backends._common import ssd_kernel_inputs
    ext = cpu_extension()
    t = _make(2, 67, 3, 8, 1, 16, dtype=torch.float64)
    args = ssd_kernel_inputs(torch.float64, t['x'], t['dt'], t['A'], t['B'], t['C'], t['dt_b'], t['B_b'], t['C_b'],
                             t['D'], t['dt_bias'], t['initial_states'])
    dy = torch.randn_like(t['x'])
    base_fwd = ext.ssd_fwd(*args, True, False, 64, False)
    base_bwd = ext.ssd_bwd(dy, *args, True, False, 64)
    for chunk in (1, 3, 16, 67, 1000):
        torch.testing.assert_close(ext.ssd_fwd(*args, True, False, chunk, False), base_fwd, rtol=1e-12, atol=1e-12)
        for got, exp in zip(ext.ssd_bwd(dy, *args, True, False, chunk), base_bwd):
            torch.testing.assert_close(got, exp, rtol=1e-11, atol=1e-11)


@pytest.mark.skipif(not HAS_CXX, reason='no C++ compiler')
def test_cpu_kernel_threads_and_layouts():
    """Results do not depend on the thread count, and strided views (Hydra's B / C slices) are accepted."""
    t = _make(2, 50, 4, 16, 2, 16)
    wide = torch.randn(2, 50, 2, 40)
    x = t['x'].transpose(1, 2).contiguous().transpose(1, 2)
    args = dict(_qs_args(t), B=wide[..., :16], C=wide[..., 16:32], x=x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.quasiseparable_scan(**args, backend='cpu')
        torch.set_num_threads(max(2, threads))
        many = ops.quasiseparable_scan(**args, backend='cpu')
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, many, rtol=0, atol=0)
    torch.testing.assert_close(one, ops.quasiseparable_scan(**args, backend='reference'), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize('backend', BACKENDS)
def test_errors_name_the_argument(backend):
    t = _make()
    qs = _qs_args(t)
    cases = [
        (dict(B=torch.randn(2, 13, 3, 5)), ValueError, 'B must have shape .* ngroups >= 1 dividing'),
        (dict(B=torch.randn(2, 13, 2, 0), C=torch.randn(2, 13, 2, 0)), ValueError, 'd_state'),
        (dict(C=torch.randn(2, 13, 2, 6)), ValueError, r'C must have shape \(2, 13, 2, 5\)'),
        (dict(B_b=torch.randn(2, 13, 1, 5), C_b=torch.randn(2, 13, 1, 5)), ValueError, 'B_b must match B'),
        (dict(D=torch.randn(2, 13)), ValueError, 'D must be'),
        (dict(D=torch.randn(2, 13, 5)), ValueError, r'D must have shape \(2, 13, 4\)'),
        (dict(dt_b=torch.randn(2, 13, 4).double()), TypeError, 'dt_b has dtype'),
        (dict(A=torch.randn(4, 1)), ValueError, r'A must have shape \(4,\)'),
        (dict(initial_states=torch.randn(4, 3, 5)), ValueError, 'initial_states must have shape'),
        (dict(dt_softplus=1), TypeError, 'dt_softplus must be a bool'),
        (dict(x=t['x'][0]), ValueError, 'x must be 4-D'),
        (dict(x=t['x'].tolist()), TypeError, 'x must be a torch.Tensor'),
    ]
    for change, exc, match in cases:
        with pytest.raises(exc, match=match):
            ops.quasiseparable_scan(**dict(qs, **change), backend=backend)
    with pytest.raises(ValueError, match=r'D must have shape \(4,\)'):
        ops.ssd_scan(**dict(_ssd_args(t), D=t['D']), backend=backend)   # the plain scan's D is per head only
    with pytest.raises(TypeError, match='reverse must be a bool'):
        ops.ssd_scan(**_ssd_args(t), reverse='yes', backend=backend)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('name', ['x', 'dt', 'B', 'C_b', 'D', 'dt_bias', 'initial_states'])
def test_nonfinite_inputs_raise_value_error(backend, name):
    t = _make()
    args = _qs_args(t)
    bad = args[name].clone()
    bad.view(-1)[bad.numel() // 2] = float('nan')
    with pytest.raises(ValueError, match=f'quasiseparable_scan: {name} contains NaN or inf'):
        ops.quasiseparable_scan(**dict(args, **{name: bad}), backend=backend)
    with ops.use_check_finite(False):
        ops.quasiseparable_scan(**dict(args, **{name: bad}), backend=backend)


def test_cuda_backend_refuses_cpu_tensors():
    t = _make()
    with pytest.raises(ValueError, match="backend 'cuda' needs CUDA tensors"):
        ops.ssd_scan(**_ssd_args(t), backend='cuda')


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dims', [(0, 5, 2, 3), (2, 0, 2, 3), (2, 5, 2, 0)], ids=['b0', 'l0', 'p0'])
def test_zero_size_inputs_give_empty_results_and_grads(backend, dims):
    b, l, h, p = dims
    t = _make(b, l, h, p, 1, 4)
    leaves = {k: v.requires_grad_() for k, v in _qs_args(t).items() if isinstance(v, torch.Tensor)}
    out = ops.quasiseparable_scan(**dict(_qs_args(t), **leaves), backend=backend)
    assert out.shape == (b, l, h, p)
    grads = torch.autograd.grad(out.sum(), list(leaves.values()), allow_unused=True)
    assert all(g is None or (g.shape == v.shape and not g.abs().sum()) for g, v in zip(grads, leaves.values()))
    assert ops.ssd_scan(**_ssd_args(t), backend=backend).shape == (b, l, h, p)


# ------------------------------------------------------------------------------------------ tracing and FLOPs
def test_meta_compile_and_flop_counter():
    t = _make()
    meta = {k: (v.to('meta') if isinstance(v, torch.Tensor) else v) for k, v in _qs_args(t).items()}
    assert ops.quasiseparable_scan(**meta).shape == t['x'].shape
    from torch.utils.flop_counter import FlopCounterMode

    def f(x, dt, B):
        return ops.quasiseparable_scan(**dict(_qs_args(t), x=x, dt=dt, B=B)) + ops.ssd_scan(**_ssd_args(t))
    compiled = torch.compile(f, fullgraph=True, backend='aot_eager')
    torch.testing.assert_close(compiled(t['x'], t['dt'], t['B']), f(t['x'], t['dt'], t['B']))
    with FlopCounterMode(display=False) as counter:
        f(t['x'], t['dt'], t['B'])
    b, l, h, p = t['x'].shape
    n = t['B'].shape[-1]
    assert counter.get_total_flops() == ops.ssd_flops(b, l, h, p, n, 2, True) + ops.ssd_flops(b, l, h, p, n, 1, True)
