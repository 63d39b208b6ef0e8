"""The Triton kernels against the reference, run by Triton's interpreter on CPU tensors.

Not collected by a plain `pytest` run (the name does not match test_*.py): tests/test_ops_triton.py runs this file
in a subprocess with TRITON_INTERPRET=1, which Triton reads when it is first imported, so the whole process is
interpreted. To run it by hand: `TRITON_INTERPRET=1 python -m pytest tests/triton_interpreter_cases.py -q`.

The interpreter runs each program in NumPy and folds each associative scan element by element (~0.2 ms per tile
element), so shapes are small and chunks short (8 tokens) to cross chunk boundaries at small l. It checks
semantics (indexing, masks, recurrences, carries, reductions), not GPU behaviour or speed.
"""
import os

import pytest
import torch

if os.environ.get('TRITON_INTERPRET') != '1':
    pytest.skip('needs TRITON_INTERPRET=1 before triton is imported (tests/test_ops_triton.py sets it)',
                allow_module_level=True)

import vimzoo.ops as ops  # noqa: E402
from vimzoo.ops import reference as ref  # noqa: E402
from vimzoo.ops.backends import triton as triton_backend  # noqa: E402
from vimzoo.ops.triton_kernels import interpreted, load  # noqa: E402
from vimzoo.ops.triton_kernels._config import ScanConfig, next_pow2  # noqa: E402

K = load()
F32_TOL, LOW_TOL = 1e-4, 2e-2


def _rel(got, exp):
    got, exp = got.float(), exp.float()
    return ((got - exp).abs().max() / exp.abs().max().clamp_min(1e-6)).item()


def _close(got, exp, tol, what=''):
    assert got.shape == exp.shape, (what, got.shape, exp.shape)
    err = _rel(got, exp)
    assert err < tol, f'{what}: rel. error {err:.2e} >= {tol:.0e}'


def _scan_inputs(b, d, l, n, seed=0, opt=True, dtype=torch.float32, token_major=False):
    g = torch.Generator().manual_seed(seed)

    def act(scale=1.0):
        shape = (b, l, d) if token_major else (b, d, l)
        t = torch.randn(*shape, generator=g) * scale
        return (t.transpose(1, 2) if token_major else t).to(dtype)
    u, delta = act(), act(0.5)
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B, C = torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g)
    D, z, bias = torch.randn(d, generator=g), act(), torch.randn(d, generator=g) * 0.5
    if not opt:
        D = z = bias = None
    return u, delta, A, B, C, D, z, bias


def test_this_process_is_interpreted():
    assert interpreted() and triton_backend.interpreted()
    assert triton_backend.can_run('selective_scan', torch.device('cpu')) is None


# ------------------------------------------------------------------------------------------------ scan kernels
# (b, d, l, n, window, reverse, opt): chunks of 8 tokens and 2 channels per program, d = 3 leaves a partial block.
# W = 4 divides the chunk (windows inside chunks), W = 3 and W = l cross chunks (the carry kernel).
SCAN_CASES = [
    (1, 3, 1, 4, 1, False, True), (1, 3, 1, 4, 4, True, False), (1, 3, 8, 4, 8, True, True),
    (1, 3, 17, 1, 1, False, True), (1, 3, 17, 1, 4, True, False), (1, 3, 17, 1, 3, False, True),
    (2, 3, 17, 4, 1, True, True), (1, 3, 17, 4, 4, False, True), (1, 3, 17, 4, 3, True, True),
    (1, 3, 17, 4, 17, False, False), (1, 3, 23, 4, 4, True, True),
    (1, 2, 17, 16, 1, False, False), (1, 2, 17, 16, 4, True, True), (1, 2, 17, 16, 17, True, True),
]


@pytest.mark.parametrize('case', SCAN_CASES, ids=lambda c: 'b{}d{}l{}n{}W{}{}{}'.format(
    *c[:5], '-rev' if c[5] else '', '' if c[6] else '-bare'))
def test_scan_kernels_match_the_reference(case):
    b, d, l, n, window, reverse, opt = case
    u, delta, A, B, C, D, z, bias = _scan_inputs(b, d, l, n, opt=opt)
    cfg = ScanConfig(block_d=2, block_n=next_pow2(n), chunk=8)
    y = K.scan.scan_fwd(u, delta, A, B, C, D, z, bias, opt, reverse, window, cfg=cfg)
    _close(y, ref.selective_scan_ref(u, delta, A, B, C, D, z, bias, opt, reverse, window), F32_TOL, 'forward')
    dout = torch.randn_like(y)
    got = K.scan.scan_bwd(dout, u, delta, A, B, C, D, z, bias, opt, reverse, window, cfg=cfg)
    exp = ref.selective_scan_bwd_ref(dout, u, delta, A, B, C, D, z, bias, opt, reverse, window)
    for name, g, e in zip(('du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'dz', 'ddelta_bias'), got, exp):
        assert (g is None) == (e is None), name
        if e is not None:
            _close(g, e, F32_TOL, name)


def test_scan_kernel_low_precision_and_mixed_dtypes():
    u, delta, A, B, C, D, z, bias = _scan_inputs(1, 3, 17, 4, dtype=torch.bfloat16)   # B, C stay fp32
    cfg = ScanConfig(block_d=2, block_n=4, chunk=8)
    y = K.scan.scan_fwd(u, delta, A, B, C, D, z, bias, True, False, 3, cfg=cfg)
    assert y.dtype == torch.bfloat16
    _close(y, ref.selective_scan_ref(u, delta, A, B, C, D, z, bias, True, False, 3), LOW_TOL, 'bf16 forward')
    dout = torch.randn_like(y)
    got = K.scan.scan_bwd(dout, u, delta, A, B, C, D, z, bias, True, False, 3, cfg=cfg)
    exp = ref.selective_scan_bwd_ref(dout, u, delta, A, B, C, D, z, bias, True, False, 3)
    for g, e in zip(got, exp):
        _close(g, e, LOW_TOL)


# ------------------------------------------------------------------------------ the backend through the public ops
def _grads(y, inputs):
    used = [t for t in inputs if t is not None]
    gy = torch.linspace(-1, 1, y.numel()).view_as(y).to(y.dtype)
    return [y] + list(torch.autograd.grad(y, used, gy))


@pytest.mark.parametrize('window,reverse,dtype', [(None, False, torch.float32), (4, True, torch.float32),
                                                  (3, False, torch.bfloat16)])
def test_selective_scan_op_on_the_triton_backend(window, reverse, dtype):
    """Default launch configuration, token-major views (read in place), output layout, autograd, dtypes."""
    tol = F32_TOL if dtype == torch.float32 else LOW_TOL
    inputs = _scan_inputs(2, 4, 19, 4, dtype=dtype, token_major=True)
    res = {}
    for be in ('reference', 'triton'):
        ts = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
        y = ops.selective_scan(*ts[:5], D=ts[5], z=ts[6], delta_bias=ts[7], delta_softplus=True, reverse=reverse,
                               local_window=window, backend=be)
        res[be] = _grads(y, ts)
    assert res['triton'][0].stride() == inputs[0].stride() and res['triton'][0].dtype == dtype
    for i, (g, e) in enumerate(zip(res['triton'], res['reference'])):
        _close(g, e, tol, f'output/grad {i}')


def test_bidirectional_scan_is_forward_plus_reverse_and_matches_the_reference():
    f = _scan_inputs(2, 3, 21, 4, seed=1)
    r = _scan_inputs(2, 3, 21, 4, seed=2)
    z = f[6]
    args = [*f[:6], f[7], *r[:6], r[7]]
    y = ops.bidirectional_selective_scan(*args, z=z, backend='triton')
    sum_of_scans = (ops.selective_scan(*f[:5], D=f[5], delta_bias=f[7], delta_softplus=True, backend='triton')
                    + ops.selective_scan(*r[:5], D=r[5], delta_bias=r[7], delta_softplus=True, reverse=True,
                                         backend='triton')) * torch.nn.functional.silu(z)
    _close(y, sum_of_scans, F32_TOL, 'bidirectional == forward + reverse')
    res = {}
    for be in ('reference', 'triton'):
        ts = [None if t is None else t.detach().clone().requires_grad_() for t in args + [z]]
        res[be] = _grads(ops.bidirectional_selective_scan(*ts[:14], z=ts[14], backend=be), ts)
    for i, (g, e) in enumerate(zip(res['triton'], res['reference'])):
        _close(g, e, F32_TOL, f'output/grad {i}')


def test_triton_backend_checks_inputs_for_nan():
    u, delta, A, B, C, D, z, bias = _scan_inputs(1, 2, 5, 4)
    B[0, 1, 2] = float('nan')
    with pytest.raises(ValueError, match='B contains NaN'):
        ops.selective_scan(u, delta, A, B, C, D, z, bias, backend='triton')


# ------------------------------------------------------------------------------------------------ causal conv
@pytest.mark.parametrize('width,silu,reverse,bias,dtype', [
    (4, True, False, True, torch.float32), (4, True, True, False, torch.float32),
    (1, False, False, True, torch.float32), (3, False, True, True, torch.float32),
    (4, True, False, True, torch.bfloat16)])
def test_conv_kernels_match_the_reference(width, silu, reverse, bias, dtype):
    """Blocks of 4 channels x 8 tokens: the filter's halo crosses token blocks."""
    g = torch.Generator().manual_seed(width)
    x = torch.randn(2, 5, 13, generator=g).to(dtype)
    w, b = torch.randn(5, width, generator=g), torch.randn(5, generator=g) if bias else None
    tol = F32_TOL if dtype == torch.float32 else LOW_TOL
    act = 'silu' if silu else None
    y = K.conv.conv_fwd(x, w, b, silu, reverse, block_d=4, block_l=8)
    _close(y, ref.causal_conv1d_ref(x, w, b, act, reverse), tol, 'forward')
    dout = torch.randn(y.shape, generator=g).to(dtype)
    got = K.conv.conv_bwd(dout, x, w, b, silu, reverse, block_d=4, block_l=8)
    exp = ref.causal_conv1d_bwd_ref(dout, x, w, b, act, reverse)
    for name, gv, e in zip(('dx', 'dweight', 'dbias'), got, exp):
        assert (gv is None) == (e is None), name
        if e is not None:
            _close(gv, e, tol, name)


def test_conv_op_on_the_triton_backend_token_major_with_grads():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 11, 6, generator=g).transpose(1, 2)      # (b, d, l) view of token-major memory
    w, b = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    res = {}
    for be in ('reference', 'triton'):
        ts = [t.detach().clone().requires_grad_() for t in (x, w, b)]
        y = ops.causal_conv1d(*ts, activation='silu', backend=be)
        res[be] = _grads(y, ts)
    assert res['triton'][0].stride() == x.stride()
    for i, (gv, e) in enumerate(zip(res['triton'], res['reference'])):
        _close(gv, e, F32_TOL, f'output/grad {i}')


# ------------------------------------------------------------------------------------------------ add + RMSNorm
@pytest.mark.parametrize('with_residual', [True, False])
def test_add_rms_norm_kernels_and_op_match_the_reference(with_residual):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 24, generator=g)
    res = torch.randn(3, 5, 24, generator=g).to(torch.bfloat16) if with_residual else None
    w = torch.randn(24, generator=g)
    normed, summed = K.norm.add_rms_norm_fwd(x, res, w, 1e-5, block_r=4)     # 15 rows: a partial block
    exp_n, exp_s = ref.add_rms_norm_ref(x, res, w, 1e-5)
    _close(normed, exp_n, F32_TOL, 'normed')
    _close(summed, exp_s, F32_TOL, 'summed')
    dn, ds = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    out = {}
    for be in ('reference', 'triton'):
        ts = [None if t is None else t.detach().clone().requires_grad_() for t in (x, res, w)]
        n, s = ops.add_rms_norm(*ts, eps=1e-5, backend=be)
        out[be] = [n, s] + list(torch.autograd.grad((n, s), [t for t in ts if t is not None], (dn, ds)))
    for i, (gv, e) in enumerate(zip(out['triton'], out['reference'])):
        _close(gv, e, F32_TOL if gv.dtype == torch.float32 else LOW_TOL, f'output/grad {i}')


def test_add_rms_norm_backward_kernel_matches_autograd():
    g = torch.Generator().manual_seed(3)
    x, res, w = torch.randn(7, 40, generator=g), torch.randn(7, 40, generator=g), torch.randn(40, generator=g)
    ts = [t.clone().requires_grad_() for t in (x, res, w)]
    n, s = ref.add_rms_norm_ref(*ts, 1e-5)
    dn, ds = torch.randn(n.shape, generator=g), torch.randn(s.shape, generator=g)
    exp = torch.autograd.grad((n, s), ts, (dn, ds))
    got_ds, got_dw = K.norm.add_rms_norm_bwd(dn, ds, s.detach(), w, 1e-5, block_r=2)
    _close(got_ds, exp[0], F32_TOL, 'dx')
    _close(got_dw, exp[2], F32_TOL, 'dweight')
    got_ds, _ = K.norm.add_rms_norm_bwd(dn, None, s.detach(), w, 1e-5, block_r=2)
    _close(got_ds + ds, exp[0], F32_TOL, 'dx without dsummed')


# ------------------------------------------------------------------------------------------------ the mixer
def test_mamba_inner_on_the_triton_backend_runs_the_unfused_ops():
    g = torch.Generator().manual_seed(0)
    d, n, rank, k = 8, 4, 2, 4

    def weights():
        return [torch.randn(d, 1, k, generator=g) * 0.3, torch.randn(d, generator=g) * 0.1,
                torch.randn(rank + 2 * n, d, generator=g) * 0.2, torch.randn(d, rank, generator=g) * 0.3,
                torch.randn(d, generator=g) * 0.1, torch.randn(d, n, generator=g) * 0.3, torch.randn(d, generator=g)]
    xz = torch.randn(2, 9, 2 * d, generator=g)
    fwd, bwd = weights(), weights()
    with torch.no_grad():
        got = ops.mamba_inner(xz, fwd, bwd, scale=0.5, backend='triton')
        exp = ops.mamba_inner(xz, fwd, bwd, scale=0.5, backend='reference')
    _close(got, exp, F32_TOL, 'bidirectional mixer')
    got = ops.mamba_inner(xz, fwd, local_window=4, backend='triton')
    _close(got, ops.mamba_inner(xz, fwd, local_window=4, backend='reference'), F32_TOL, 'LB mixer')
