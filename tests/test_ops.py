"""vimzoo.ops: reference semantics, every backend == reference, gradients, errors, compile/FX, FLOP counting."""
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

import vimzoo.ops as ops
from vimzoo.ops.reference import selective_scan_bwd_ref, selective_scan_ref

HAS_CXX = shutil.which('c++') is not None or shutil.which('g++') is not None


def _cpu_kernel_ok() -> bool:
    if not HAS_CXX:
        return False
    from vimzoo.ops._loader import cpu_extension
    try:
        return cpu_extension(required=True) is not None
    except RuntimeError as exc:
        if 'disabled' in str(exc):
            return False
        raise      # a compiler is present: a build failure is a test failure, not a skip


def _make(b, d, l, n, dtype=torch.float32, device='cpu', with_d=True, with_z=True, with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)
    u = r(b, d, l).to(dtype)
    delta = r(b, d, l, scale=0.5).to(dtype)
    A = -torch.exp(r(d, n, scale=0.5))
    B = r(b, n, l).to(dtype)
    C = r(b, n, l).to(dtype)
    D = r(d) if with_d else None
    z = r(b, d, l).to(dtype) if with_z else None
    bias = r(d, scale=0.5) if with_bias else None
    return u, delta, A, B, C, D, z, bias


def _flip(t):
    return None if t is None else t.flip(-1)


# --------------------------------------------------------------------------------------------------------------
# Reference semantics
# --------------------------------------------------------------------------------------------------------------
def test_reference_matches_plain_mamba_recurrence():
    """Independent scalar loop (mamba selective_scan_ref math) on one (b, d) pair."""
    u, delta, A, B, C, D, z, bias = _make(2, 3, 9, 4)
    out = selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    for bi, di in [(0, 0), (1, 2)]:
        h = torch.zeros(4)
        for t in range(9):
            dt = F.softplus(delta[bi, di, t] + bias[di])
            h = torch.exp(dt * A[di]) * h + dt * B[bi, :, t] * u[bi, di, t]
            y = (h * C[bi, :, t]).sum() + D[di] * u[bi, di, t]
            y = y * F.silu(z[bi, di, t])
            torch.testing.assert_close(out[bi, di, t], y, rtol=1e-5, atol=1e-5)


def test_lb_window_one_is_plain_scan():
    args = _make(2, 3, 17, 4)
    plain = selective_scan_ref(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True)
    lb1 = selective_scan_ref(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True,
                             local_window=1)
    torch.testing.assert_close(lb1, plain, rtol=0, atol=0)


@pytest.mark.parametrize('reverse', [False, True])
def test_lb_full_window_is_forward_plus_backward_minus_b(reverse):
    """W >= l: h = hf + hb - b, so y = y_fwd + y_rev - Σ_n C Δ B u (D·u counted once)."""
    u, delta, A, B, C, D, _, bias = _make(2, 3, 13, 4)
    kw = dict(delta_bias=bias, delta_softplus=True)
    full = selective_scan_ref(u, delta, A, B, C, D, local_window=13, reverse=reverse, **kw)
    fwd = selective_scan_ref(u, delta, A, B, C, D, **kw)
    rev = selective_scan_ref(u, delta, A, B, C, None, reverse=True, **kw)
    dt = F.softplus(delta + bias[:, None])
    b_term = torch.einsum('bdl,bnl,bnl->bdl', dt * u, B, C)
    torch.testing.assert_close(full, fwd + rev - b_term, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(selective_scan_ref(u, delta, A, B, C, D, local_window=50, reverse=reverse, **kw),
                               full, rtol=0, atol=0)


@pytest.mark.parametrize('window', [None, 3, 4])
def test_reverse_is_flip_op_flip(window):
    u, delta, A, B, C, D, z, bias = _make(2, 3, 14, 4)
    rev = ops.selective_scan(u, delta, A, B, C, D, z, bias, True, reverse=True, local_window=window,
                             backend='reference')
    ref = ops.selective_scan(_flip(u), _flip(delta), A, _flip(B), _flip(C), D, _flip(z), bias, True,
                             local_window=window, backend='reference').flip(-1)
    torch.testing.assert_close(rev, ref, rtol=1e-6, atol=1e-6)


def test_bidirectional_reference_is_forward_plus_reverse():
    f = _make(2, 3, 10, 4, seed=1)
    r = _make(2, 3, 10, 4, seed=2)
    z = f[6]
    out = ops.bidirectional_selective_scan(*f[:6], f[7], *r[:6], r[7], z=z, backend='reference')
    exp = (selective_scan_ref(*f[:5], D=f[5], z=z, delta_bias=f[7], delta_softplus=True)
           + selective_scan_ref(*r[:5], D=r[5], z=z, delta_bias=r[7], delta_softplus=True, reverse=True))
    torch.testing.assert_close(out, exp, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('activation', [None, 'silu'])
def test_causal_conv1d_reference(reverse, activation):
    x = torch.randn(2, 5, 12)
    w, bias = torch.randn(5, 4), torch.randn(5)
    out = ops.causal_conv1d(x, w, bias, activation, reverse=reverse)
    if reverse:
        exp = F.conv1d(x.flip(-1), w[:, None], bias, padding=3, groups=5)[..., :12].flip(-1)
    else:
        exp = F.conv1d(x, w[:, None], bias, padding=3, groups=5)[..., :12]
    if activation:
        exp = F.silu(exp)
    torch.testing.assert_close(out, exp, rtol=1e-6, atol=1e-6)


def test_lb_window_thresholds():
    assert [ops.lb_window(x) for x in (1, 128, 129, 196, 256, 257, 4096)] == [4, 4, 8, 8, 8, 16, 16]


# --------------------------------------------------------------------------------------------------------------
# Gradients of the reference backend (explicit backward formulas) vs autograd through the reference
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('window,reverse', [(None, False), (None, True), (3, False), (4, True), (50, False)])
def test_reference_backward_formulas_match_autograd(window, reverse):
    ts = [t.requires_grad_() for t in _make(2, 3, 11, 4)]
    y = selective_scan_ref(*ts[:5], D=ts[5], z=ts[6], delta_bias=ts[7], delta_softplus=True, reverse=reverse,
                           local_window=window)
    g = torch.randn_like(y)
    auto = torch.autograd.grad(y, ts, g)
    mine = selective_scan_bwd_ref(g, *[t.detach() for t in ts], delta_softplus=True, reverse=reverse,
                                  local_window=window)
    for a, m in zip(auto, mine):
        torch.testing.assert_close(m, a, rtol=1e-4, atol=1e-5)


def _gradcheck(backend, window, reverse, with_opt=True):
    u, delta, A, B, C, D, z, bias = _make(1, 2, 7, 3, dtype=torch.float64, with_d=with_opt, with_z=with_opt,
                                          with_bias=with_opt)
    ts = [None if t is None else t.double().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    used = [t for t in ts if t is not None]

    def fn(*args):
        it = iter(args)
        full = [None if t is None else next(it) for t in ts]
        return ops.selective_scan(*full[:5], D=full[5], z=full[6], delta_bias=full[7], delta_softplus=with_opt,
                                  reverse=reverse, local_window=window, backend=backend)
    assert torch.autograd.gradcheck(fn, used, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('window,reverse', [(None, False), (3, True), (4, False)])
def test_gradcheck_reference(window, reverse):
    _gradcheck('reference', window, reverse)


def test_gradcheck_causal_conv1d():
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for reverse in (False, True):
        assert torch.autograd.gradcheck(lambda *a: ops.causal_conv1d(*a, 'silu', reverse=reverse), (x, w, bias))


def test_gradcheck_bidirectional_reference():
    f = [t.double().requires_grad_() if t is not None else None for t in _make(1, 2, 6, 3, seed=3)]
    r = [t.double().requires_grad_() if t is not None else None for t in _make(1, 2, 6, 3, seed=4)]
    inputs = f[:6] + [f[7]] + r[:6] + [r[7], f[6]]
    assert torch.autograd.gradcheck(
        lambda *a: ops.bidirectional_selective_scan(*a[:14], z=a[14], backend='reference'), inputs, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Kernel backends == reference (forward and backward), bf16, gradcheck, threads
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def cpu_kernel():
    if not _cpu_kernel_ok():
        pytest.skip('no C++ compiler (or kernels disabled): the CPU kernel cannot be built here')
    return 'cpu'


def _grads_close(backend, b, d, l, n, window, reverse, opt, dtype=torch.float32, rtol=1e-4, seed=0):
    ts = [None if t is None else t.requires_grad_() for t in _make(b, d, l, n, dtype=dtype, with_d=opt, with_z=opt,
                                                                    with_bias=opt, seed=seed)]
    used = [t for t in ts if t is not None]
    res = {}
    for be in ('reference', backend):
        y = ops.selective_scan(*ts[:5], D=ts[5], z=ts[6], delta_bias=ts[7], delta_softplus=opt, reverse=reverse,
                               local_window=window, backend=be)
        g = torch.linspace(-1, 1, y.numel()).view_as(y).to(y.dtype)
        res[be] = (y,) + torch.autograd.grad(y, used, g)
    names = ['out', 'du', 'ddelta', 'dA', 'dB', 'dC'] + (['dD', 'dz', 'ddelta_bias'] if opt else [])
    for name, got, exp in zip(names, res[backend], res['reference']):
        assert got.dtype == exp.dtype and got.shape == exp.shape, name
        err = ((got.float() - exp.float()).abs().max() / exp.float().abs().max().clamp_min(1e-6)).item()
        assert err < rtol, f'{backend} {name} l={l} n={n} W={window} reverse={reverse} opt={opt}: rel err {err:.2e}'


SHAPES = [(1, 1, 1, 1), (2, 3, 7, 4), (1, 4, 33, 16), (2, 2, 197, 16), (1, 2, 300, 1), (1, 3, 40, 8), (1, 2, 37, 32),
          (1, 2, 2049, 16)]


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'b{}d{}l{}n{}'.format(*s))
def test_cpu_kernel_matches_reference(cpu_kernel, shape):
    b, d, l, n = shape
    for window in (None, 3, 8, l):
        for reverse in (False, True):
            for opt in (True, False):
                if l > 1000 and (opt is False or window == 3):
                    continue   # keep the long-sequence case cheap: the reference loops in Python
                _grads_close(cpu_kernel, b, d, l, n, window, reverse, opt)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU (none here: CUDA is compiled, not run)')
@pytest.mark.parametrize('shape', [(1, 1, 1, 1), (2, 3, 7, 4), (2, 2, 197, 16), (1, 2, 37, 40), (1, 2, 2049, 16)],
                         ids=lambda s: 'b{}d{}l{}n{}'.format(*s))
def test_cuda_kernel_matches_reference(shape):
    b, d, l, n = shape
    ts = [None if t is None else t.cuda() for t in _make(b, d, l, n)]
    for window in (None, 3, 8, l):
        for reverse in (False, True):
            for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
                args = [None if t is None else (t.to(dtype) if i in (0, 1, 3, 4, 6) else t).requires_grad_()
                        for i, t in enumerate(ts)]
                used = [t for t in args if t is not None]
                res = {}
                for be in ('reference', 'cuda'):
                    y = ops.selective_scan(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True,
                                           reverse=reverse, local_window=window, backend=be)
                    res[be] = (y,) + torch.autograd.grad(y, used, torch.ones_like(y))
                for got, exp in zip(res['cuda'], res['reference']):
                    err = ((got.float() - exp.float()).abs().max() / exp.float().abs().max().clamp_min(1e-6)).item()
                    assert err < tol, f'cuda {shape} W={window} reverse={reverse} {dtype}: rel err {err:.2e}'


@pytest.mark.parametrize('reverse', [False, True])
def test_cpu_kernel_lb_reductions(cpu_kernel, reverse):
    """On the kernel itself: W=1 == plain scan; W >= l == forward + full reverse scan - Σ_n C Δ B u."""
    u, delta, A, B, C, D, _, bias = _make(2, 3, 29, 16)
    kw = dict(delta_bias=bias, delta_softplus=True, backend=cpu_kernel)
    plain = ops.selective_scan(u, delta, A, B, C, D, reverse=reverse, **kw)
    torch.testing.assert_close(ops.selective_scan(u, delta, A, B, C, D, reverse=reverse, local_window=1, **kw),
                               plain, rtol=0, atol=0)
    full = ops.selective_scan(u, delta, A, B, C, D, reverse=reverse, local_window=29, **kw)
    fwd = ops.selective_scan(u, delta, A, B, C, D, **kw)
    rev = ops.selective_scan(u, delta, A, B, C, None, reverse=True, **kw)
    dt = F.softplus(delta + bias[:, None])
    b_term = torch.einsum('bdl,bnl,bnl->bdl', dt * u, B, C)
    torch.testing.assert_close(full, fwd + rev - b_term, rtol=1e-4, atol=1e-4)


def test_cpu_kernel_bf16_and_fp16(cpu_kernel):
    for dtype in (torch.bfloat16, torch.float16):
        for window in (None, 4):
            _grads_close(cpu_kernel, 2, 3, 40, 16, window, True, True, dtype=dtype, rtol=2e-2)


def test_cpu_kernel_mixed_bc_dtype_and_noncontiguous(cpu_kernel):
    u, delta, A, B, C, D, z, bias = _make(2, 3, 20, 4, dtype=torch.bfloat16)
    B32, C32 = B.float(), C.float()
    u_nc = u.transpose(0, 1).contiguous().transpose(0, 1)   # non-contiguous view, same values
    assert not u_nc.is_contiguous()
    out = ops.selective_scan(u_nc, delta, A, B32, C32, D, z, bias, True, local_window=4, backend='cpu')
    exp = ops.selective_scan(u, delta, A, B32, C32, D, z, bias, True, local_window=4, backend='reference')
    torch.testing.assert_close(out, exp, rtol=2e-2, atol=2e-2)


def test_cpu_kernel_multithreaded_backward(cpu_kernel):
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _grads_close(cpu_kernel, 3, 5, 50, 16, 8, False, True)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize('window,reverse', [(None, False), (None, True), (3, False), (4, True), (7, False)])
def test_gradcheck_cpu_kernel(cpu_kernel, window, reverse):
    _gradcheck(cpu_kernel, window, reverse)
    _gradcheck(cpu_kernel, window, reverse, with_opt=False)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_bidirectional_kernel_matches_reference(cpu_kernel, dtype):
    f = [None if t is None else t.requires_grad_() for t in _make(2, 4, 45, 16, dtype=dtype, seed=5)]
    r = [None if t is None else t.requires_grad_() for t in _make(2, 4, 45, 16, dtype=dtype, seed=6)]
    inputs = f[:6] + [f[7]] + r[:6] + [r[7], f[6]]
    res = {}
    for be in ('reference', cpu_kernel):
        y = ops.bidirectional_selective_scan(*inputs[:14], z=inputs[14], backend=be)
        res[be] = (y,) + torch.autograd.grad(y, inputs, torch.ones_like(y))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for i, (got, exp) in enumerate(zip(res[cpu_kernel], res['reference'])):
        err = ((got.float() - exp.float()).abs().max() / exp.float().abs().max().clamp_min(1e-6)).item()
        assert err < tol, f'bidirectional output/grad #{i}: rel err {err:.2e}'


def test_auto_backend_uses_cpu_kernel(cpu_kernel, monkeypatch):
    from vimzoo.ops import _choose, _ops
    calls = []

    def spy(*args, **kwargs):
        calls.append(_choose.choose(*args, **kwargs).NAME)
        return _choose.REGISTRY[calls[-1]]
    monkeypatch.setattr(_ops, 'choose', spy)
    args = _make(1, 2, 9, 4)
    ops.selective_scan(*args[:5], backend=None)
    assert calls == ['cpu']


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    from vimzoo.ops import _loader, _state
    monkeypatch.setitem(_loader._errors, 'cpu', RuntimeError('no C++ compiler found'))
    monkeypatch.setattr(_state, '_warned', set())
    args = _make(1, 2, 9, 4)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        out = ops.selective_scan(*args[:5])
        ops.selective_scan(*args[:5])
    msgs = [str(w.message) for w in rec if 'CPU scan kernel unavailable' in str(w.message)]
    assert len(msgs) == 1 and 'no C++ compiler' in msgs[0]
    torch.testing.assert_close(out, selective_scan_ref(*args[:5]))
    with pytest.raises(RuntimeError, match='could not be built'):
        ops.selective_scan(*args[:5], backend='cpu')


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------
def test_errors_are_clear():
    u, delta, A, B, C, D, z, bias = _make(2, 3, 8, 4)
    with pytest.raises(ValueError, match='3-D'):
        ops.selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match=r'delta must have shape \(2, 3, 8\)'):
        ops.selective_scan(u, delta[..., :5], A, B, C)
    with pytest.raises(ValueError, match='B must have shape'):
        ops.selective_scan(u, delta, A, B[:, :2], C)
    with pytest.raises(ValueError, match='D must have shape'):
        ops.selective_scan(u, delta, A, B, C, D=torch.zeros(5))
    with pytest.raises(TypeError, match='delta has dtype torch.float64'):
        ops.selective_scan(u, delta.double(), A, B, C)
    with pytest.raises(TypeError, match='A has dtype torch.bfloat16'):
        ops.selective_scan(u, delta, A.bfloat16(), B, C)
    with pytest.raises(TypeError, match='complex'):
        ops.selective_scan(u, delta, A.to(torch.complex64), B, C)
    with pytest.raises(TypeError, match='must be a torch.Tensor'):
        ops.selective_scan(u, delta, A, B.tolist(), C)
    with pytest.raises(ValueError, match='local_window'):
        ops.selective_scan(u, delta, A, B, C, local_window=0)
    with pytest.raises(ValueError, match='backend'):
        ops.selective_scan(u, delta, A, B, C, backend='tpu')
    with pytest.raises(ValueError, match="backend 'cuda' needs CUDA tensors"):
        ops.selective_scan(u, delta, A, B, C, backend='cuda')
    with pytest.raises(ValueError, match='same device'):
        ops.selective_scan(u, delta, A.to('meta'), B, C)
    bad = u.clone()
    bad[0, 1, 3] = float('nan')
    with pytest.raises(ValueError, match='u contains NaN or inf'):
        ops.selective_scan(bad, delta, A, B, C)
    bad_b = B.clone()
    bad_b[1, 0, 0] = float('inf')
    with pytest.raises(ValueError, match='B contains NaN or inf'):
        ops.selective_scan(u, delta, A, bad_b, C)
    with pytest.raises(ValueError, match=r'u_b must have shape \(2, 3, 8\)'):
        ops.bidirectional_selective_scan(u, delta, A, B, C, D, bias, u[:1], delta[:1], A, B[:1], C[:1], D, bias)
    with pytest.raises(ValueError, match='activation'):
        ops.causal_conv1d(u, torch.randn(3, 4), activation='relu')
    with pytest.raises(ValueError, match='weight must have shape'):
        ops.causal_conv1d(u, torch.randn(4, 4))
    with pytest.raises(ValueError):
        ops.set_backend('nope')


@pytest.mark.parametrize('backend', ['reference', 'auto'])
def test_nonfinite_inputs_raise_value_error(backend):
    """Checked inside each implementation: Python for the reference (and CUDA), in-kernel for the CPU kernel."""
    u, delta, A, B, C, D, z, bias = _make(2, 3, 8, 16)
    cases = {'u': 0, 'delta': 1, 'A': 2, 'B': 3, 'C': 4, 'D': 5, 'z': 6, 'delta_bias': 7}
    for name, idx in cases.items():
        args = [u, delta, A, B, C, D, z, bias]
        bad = args[idx].clone()
        bad.view(-1)[bad.numel() // 2] = float('nan') if idx % 2 else float('-inf')
        args[idx] = bad
        with pytest.raises(ValueError, match=f'selective_scan: {name} contains NaN or inf'):
            ops.selective_scan(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True,
                               local_window=4, backend=backend)
    bad = u.clone()
    bad[1, 2, 7] = float('inf')
    with pytest.raises(ValueError, match='u_b contains NaN or inf'):
        ops.bidirectional_selective_scan(u, delta, A, B, C, D, bias, bad, delta, A, B, C, D, bias, z=z, backend=backend)
    with pytest.raises(ValueError, match='z contains NaN or inf'):
        ops.bidirectional_selective_scan(u, delta, A, B, C, D, bias, u, delta, A, B, C, D, bias, z=bad,
                                         backend=backend)
    with pytest.raises(ValueError, match='x contains NaN or inf'):
        ops.causal_conv1d(bad, torch.randn(3, 4), backend=backend)
    ops.set_check_finite(False)
    try:   # opt-out: no check, the NaN simply propagates
        out = ops.selective_scan(bad, delta, A, B, C, backend=backend)
        assert not torch.isfinite(out).all()
    finally:
        ops.set_check_finite(True)


def test_use_backend_context_restores():
    assert ops.get_backend() == 'auto'
    with ops.use_backend('reference'):
        assert ops.get_backend() == 'reference'
    assert ops.get_backend() == 'auto'


# --------------------------------------------------------------------------------------------------------------
# One op in graphs: meta/fake, torch.compile(fullgraph), FlopCounterMode
# --------------------------------------------------------------------------------------------------------------
def test_meta_device_shapes():
    args = [None if t is None else t.to('meta') for t in _make(2, 3, 8, 4)]
    out = ops.selective_scan(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True,
                             local_window=4)
    assert out.shape == (2, 3, 8) and out.device.type == 'meta'


def test_torch_compile_fullgraph_sees_one_op():
    u, delta, A, B, C, D, z, bias = _make(2, 3, 8, 4)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(u, delta, A, B, C, D, z, bias):
        return ops.selective_scan(u, delta, A, B, C, D, z, bias, True, local_window=4, backend='reference') * 2

    compiled = torch.compile(f, backend=backend, fullgraph=True)
    out = compiled(u, delta, A, B, C, D, z, bias)
    torch.testing.assert_close(out, f(u, delta, A, B, C, D, z, bias))
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == 'call_function']
    assert sum('vimzoo.selective_scan' in t for t in targets) == 1, targets


@pytest.mark.parametrize('backend', ['reference', 'auto'])
def test_torch_compile_aot_backward_matches_eager(backend):
    """AOTAutograd traces the registered backward through the fake impls; grads equal eager."""
    ts = [t.requires_grad_() for t in _make(2, 3, 8, 4)]

    def f(*a):
        return ops.selective_scan(*a[:5], D=a[5], z=a[6], delta_bias=a[7], delta_softplus=True, local_window=4,
                                  backend=backend).square().sum()
    compiled = torch.compile(f, backend='aot_eager', fullgraph=True)
    got = torch.autograd.grad(compiled(*ts), ts)
    exp = torch.autograd.grad(f(*ts), ts)
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_make_fx_and_aot_backward_hold_the_ops():
    from torch.fx.experimental.proxy_tensor import make_fx
    u, delta, A, B, C, D, z, bias = _make(1, 2, 5, 3)

    def f(u, delta, A, B, C):
        return ops.selective_scan(u, delta, A, B, C, local_window=2, backend='reference')
    gm = make_fx(f, tracing_mode='fake')(u, delta, A, B, C)
    assert [str(n.target) for n in gm.graph.nodes if n.op == 'call_function'] == ['vimzoo.selective_scan.default']


def test_flop_counter_counts_scan_ops():
    from torch.utils.flop_counter import FlopCounterMode
    b, d, l, n = 2, 3, 8, 4
    ts = [t.requires_grad_() for t in _make(b, d, l, n)]
    with FlopCounterMode(display=False) as fc:
        y = ops.selective_scan(*ts[:5], D=ts[5], z=ts[6], delta_bias=ts[7], delta_softplus=True)
        y.sum().backward()
    counts = {str(k): v for k, v in fc.get_flop_counts()['Global'].items()}
    fwd = 9 * b * d * l * n + 2 * b * d * l
    assert counts['vimzoo.selective_scan'] == fwd
    assert counts['vimzoo.selective_scan_bwd'] == 2 * fwd
    with FlopCounterMode(display=False) as fc:
        ops.causal_conv1d(ts[0].detach(), torch.randn(d, 4))
    assert fc.get_total_flops() == 2 * b * d * l * 4
