"""The optional 'mamba_ssm' backend: its argument mapping onto `mamba_ssm`'s `selective_scan_fn` / `SelectiveScanFn`
and `causal_conv1d`'s `causal_conv1d_fn` / `CausalConv1dFn`, checked with stand-in modules that wrap vimzoo's
reference (the real packages need CUDA to import), plus what it refuses, and that `import vimzoo` never imports
them. The stand-ins have the packages' signatures and enforce their documented input rules (forward-only scans:
no `reverse`, B/C in the input dtype, fp32 A/D/delta_bias, width 2..4), so a wrong mapping fails here."""
import os
import subprocess
import sys
import types

import pytest
import torch

import vimzoo.ops as ops
from vimzoo.ops import reference as ref
from vimzoo.ops.backends import mamba_ssm as backend

_F32 = torch.float32


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias):
    assert u.dim() == 3 and delta.shape == u.shape and delta.dtype == u.dtype
    assert A.dtype == _F32 and B.dim() == 3 and C.dim() == 3 and B.dtype == C.dtype == u.dtype
    assert D is None or D.dtype == _F32
    assert delta_bias is None or delta_bias.dtype == _F32
    assert z is None or (z.shape == u.shape and z.dtype == u.dtype)


def _stand_ins(calls):
    """{module name: module} mimicking mamba_ssm.ops.selective_scan_interface and causal_conv1d."""
    scan_mod = types.ModuleType(backend.SCAN_MODULE)

    class SelectiveScanFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                    return_last_state=False, prev_state=None):
            _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
            calls.append(('scan', u, delta_softplus, D is not None, z is not None, delta_bias is not None))
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
            ctx.delta_softplus = delta_softplus
            return ref.selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

        @staticmethod
        def backward(ctx, dout, *args):
            u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
            calls.append(('scan_bwd', dout))
            grads = ref.selective_scan_bwd_ref(dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus)
            return (*grads, None, None, None)

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, prev_state=None):
        return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                     prev_state)
    scan_mod.SelectiveScanFn, scan_mod.selective_scan_fn = SelectiveScanFn, selective_scan_fn

    conv_mod = types.ModuleType(backend.CONV_MODULE)

    class CausalConv1dFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                    final_states_out=None, activation=None):
            assert activation in (None, 'silu', 'swish') and 2 <= weight.shape[1] <= 4
            assert x.stride(2) == 1 or x.stride(1) == 1
            calls.append(('conv', x, activation))
            ctx.save_for_backward(x, weight, bias)
            ctx.activation = activation
            return ref.causal_conv1d_ref(x, weight, bias, activation)

        @staticmethod
        def backward(ctx, dout, *args):
            x, weight, bias = ctx.saved_tensors
            calls.append(('conv_bwd', dout))
            return (*ref.causal_conv1d_bwd_ref(dout, x, weight, bias, ctx.activation), None, None, None, None, None)

    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):
        return CausalConv1dFn.apply(x, weight, bias, seq_idx, initial_states, return_final_states,
                                    final_states_out, activation)
    conv_mod.CausalConv1dFn, conv_mod.causal_conv1d_fn = CausalConv1dFn, causal_conv1d_fn
    return {backend.SCAN_MODULE: scan_mod, backend.CONV_MODULE: conv_mod}


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in packages installed and CPU tensors allowed; yields the list of calls they received."""
    calls = []
    for name, module in _stand_ins(calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, '_DEVICE_TYPES', ('cuda', 'cpu'))
    backend._module.cache_clear()
    yield calls
    backend._module.cache_clear()


def _scan_inputs(b=2, d=3, l=11, n=4, seed=0, opt=True, dtype=_F32):
    g = torch.Generator().manual_seed(seed)
    u, delta = torch.randn(b, d, l, generator=g).to(dtype), (torch.randn(b, d, l, generator=g) * 0.5).to(dtype)
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B, C = torch.randn(b, n, l, generator=g).to(dtype), torch.randn(b, n, l, generator=g).to(dtype)
    D, z, bias = torch.randn(d, generator=g), torch.randn(b, d, l, generator=g).to(dtype), torch.randn(d) * 0.5
    return (u, delta, A, B, C) + ((D, z, bias) if opt else (None, None, None))


def _run(fn, inputs, backend_name):
    ts = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    y = fn(ts, backend_name)
    gy = torch.linspace(-1, 1, y.numel()).view_as(y)
    return [y] + list(torch.autograd.grad(y, [t for t in ts if t is not None], gy.to(y.dtype)))


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('opt', [True, False])
def test_scan_routes_through_selective_scan_fn_with_flips_for_reverse(stand_in, reverse, opt):
    inputs = _scan_inputs(opt=opt)

    def scan(ts, be):
        return ops.selective_scan(*ts[:5], D=ts[5], z=ts[6], delta_bias=ts[7], delta_softplus=opt, reverse=reverse,
                                  backend=be)
    got, exp = _run(scan, inputs, 'mamba_ssm'), _run(scan, inputs, 'reference')
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    fwd = [c for c in stand_in if c[0] == 'scan']
    assert [c[0] for c in stand_in] == ['scan', 'scan', 'scan_bwd']   # forward; backward = its forward + backward
    _, u_seen, softplus, has_d, has_z, has_bias = fwd[0]
    torch.testing.assert_close(u_seen, inputs[0].flip(-1) if reverse else inputs[0])
    assert (softplus, has_d, has_z, has_bias) == (opt, opt, opt, opt)


def test_bidirectional_scan_is_two_calls_summed_before_the_gate(stand_in):
    f, r = _scan_inputs(seed=1), _scan_inputs(seed=2)
    args = [*f[:6], f[7], *r[:6], r[7], f[6]]

    def bidir(ts, be):
        return ops.bidirectional_selective_scan(*ts[:14], z=ts[14], backend=be)
    got, exp = _run(bidir, args, 'mamba_ssm'), _run(bidir, args, 'reference')
    for g, e in zip(got, exp):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert [c[4] for c in stand_in if c[0] == 'scan'][:2] == [False, False]   # ungated calls, one gate after


@pytest.mark.parametrize('reverse', [False, True])
def test_conv_routes_through_causal_conv1d_fn(stand_in, reverse):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, 6, generator=g).transpose(1, 2)   # token-major view
    inputs = [x, torch.randn(6, 4, generator=g), torch.randn(6, generator=g)]

    def conv(ts, be):
        return ops.causal_conv1d(*ts, activation='silu', reverse=reverse, backend=be)
    got, exp = _run(conv, inputs, 'mamba_ssm'), _run(conv, inputs, 'reference')
    assert got[0].stride() == x.stride()
    for gv, e in zip(got, exp):
        torch.testing.assert_close(gv, e, rtol=1e-5, atol=1e-5)
    assert [c[0] for c in stand_in] == ['conv', 'conv', 'conv_bwd'] and stand_in[0][2] == 'silu'


def test_what_the_backend_refuses(stand_in):
    cuda = torch.device('cuda')
    u, delta, A, B, C, D, z, bias = _scan_inputs()
    scan_tensors = (u, A, delta, B, C, D, z, bias)
    assert backend.can_run('selective_scan', cuda, scan_tensors, d_state=4) is None
    assert 'local_window=4' in backend.can_run('selective_scan', cuda, scan_tensors, window=4)
    assert 'fp64' in backend.can_run('selective_scan', cuda, (u.double(), A))
    low = (u.bfloat16(), A, delta.bfloat16(), B, C, D, z.bfloat16(), bias)          # B, C left in fp32
    assert 'dtype of u' in backend.can_run('selective_scan_bwd', cuda, low)
    assert 'widths 2..4' in backend.can_run('causal_conv1d', cuda, (u, torch.randn(3, 5), None))
    assert 'no fused mixer' in backend.can_run('mamba_inner_fwd', cuda)
    assert 'fused add + RMSNorm backward' in backend.can_run('add_rms_norm', cuda)
    assert backend.can_run('add_rms_norm_fwd', cuda) is None          # PyTorch's ops, as on 'cuda'
    with pytest.raises(RuntimeError, match="cannot run on backend 'mamba_ssm'.*local_window=4"):
        ops.selective_scan(u, delta, A, B, C, local_window=4, backend='mamba_ssm')


def test_missing_packages_and_cpu_tensors_give_reasons(monkeypatch):
    monkeypatch.setitem(sys.modules, backend.SCAN_MODULE, None)   # import raises ImportError
    monkeypatch.setitem(sys.modules, backend.CONV_MODULE, None)
    backend._module.cache_clear()
    try:
        cuda = torch.device('cuda')
        assert 'not importable' in backend.can_run('selective_scan', cuda, (torch.zeros(1, 1, 1),))
        assert 'not importable' in backend.can_run('causal_conv1d', cuda, (None, torch.zeros(1, 4)))
        assert 'CUDA tensors' in backend.can_run('selective_scan', torch.device('cpu'))
        assert 'CUDA tensors' in backend.can_run('add_rms_norm_fwd', torch.device('cpu'))
    finally:
        backend._module.cache_clear()


def test_importing_vimzoo_and_running_ops_on_cpu_imports_no_optional_kernel_package():
    code = ('import sys, torch, vimzoo, vimzoo.ops as ops\n'
            'x = torch.randn(1, 4, 6)\n'
            'ops.causal_conv1d(x, torch.randn(4, 3), activation="silu")\n'
            'ops.selective_scan(x, x, -torch.ones(4, 2), torch.randn(1, 2, 6), torch.randn(1, 2, 6))\n'
            'bad = [m for m in ("mamba_ssm", "causal_conv1d", "selective_scan_cuda", "vimzoo.ops.triton_kernels.scan",\n'
            '                   "vimzoo.ops.triton_kernels.conv", "vimzoo.ops.triton_kernels.norm") if m in sys.modules]\n'
            'assert not bad, bad\n')
    env = dict(os.environ, VIMZOO_DISABLE_KERNELS='1')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
