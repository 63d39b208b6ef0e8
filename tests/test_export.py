"""ONNX export: `torch.onnx.export(model, dynamo=True)` for every family, run in onnxruntime (CPU) against eager.

The vimzoo custom ops get their ONNX translations from `vimzoo/ops/_onnx.py`, registered lazily by
`vimzoo.export` (onnxscript is imported only when an export imports it). Each op translation is also checked
alone against the PyTorch reference, including the fused CPU inference ops that the model graphs do not contain.
"""
import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import timm
import torch

import vimzoo
from vimzoo import ops
from vimzoo.ops.reference import mamba_inner_fwd_ref

ort = pytest.importorskip('onnxruntime')
onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxscript')

TEST_MODELS = sorted(n for n in vimzoo.list_models(include_test=True) if n.startswith('test_'))
ATOL = 1e-4


def _export(module: torch.nn.Module, args: tuple, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return torch.onnx.export(module, args, dynamo=True, verbose=False, **kwargs)


def _run(program, *args: torch.Tensor):
    sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=['CPUExecutionProvider'])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
    return [torch.from_numpy(o) for o in sess.run(None, feeds)]


def _op_types(program) -> set:
    return {node.op_type for node in program.model.graph}


@pytest.mark.parametrize('name', TEST_MODELS)
def test_family_exports_to_onnx_and_matches_eager(name):
    model = timm.create_model(name).eval()
    x = torch.randn(2, *model.pretrained_cfg['input_size'])
    program = _export(model, (x,))
    with torch.no_grad():
        expected = model(x)
    (got,) = _run(program, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    with torch.no_grad():   # the torch.export program the ONNX graph was made from
        torch.testing.assert_close(program.exported_program.module()(x), expected, rtol=0, atol=1e-6)
    onnx.checker.check_model(program.model_proto, full_check=True)
    domains = {node.domain for node in program.model.graph}
    assert domains <= {'', 'ai.onnx'}, domains   # standard operators only: runs in any ONNX runtime
    if name in ('test_vim', 'test_lbvim'):
        assert 'Scan' in _op_types(program)


def test_vim_full_width_with_dynamic_batch():
    """Vim-Ti's widths and 197-token sequence (2 of its 24 layers), exported once for any batch size."""
    model = timm.create_model('vim_tiny_patch16_224', depth=2).eval()
    program = _export(model, (torch.randn(2, 3, 224, 224),), dynamic_shapes=({0: torch.export.Dim('batch')},))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            expected = model(x)
        (got,) = _run(program, x)
        torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------------------------- op translations
class _Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _scan_inputs(b=2, d=6, n=3, length=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, delta, z = (torch.randn(b, d, length, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) - 0.1
    B, C = torch.randn(b, n, length, generator=g), torch.randn(b, n, length, generator=g)
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.1
    return u, delta, A, B, C, D, z, bias


@pytest.mark.parametrize('reverse,window,optional', [
    (False, None, True), (True, None, True), (False, None, False), (False, 4, True), (True, 4, True),
    (False, 5, False),
])
def test_selective_scan_translation(reverse, window, optional):
    """Plain / reverse / LBMamba local-window scans; 13 tokens leave a partial last window."""
    u, delta, A, B, C, D, z, bias = _scan_inputs()
    if not optional:
        D = z = bias = None

    def fn(u, delta, A, B, C, *extra):
        d_, z_, b_ = extra if extra else (None, None, None)
        return ops.selective_scan(u, delta, A, B, C, D=d_, z=z_, delta_bias=b_, delta_softplus=True,
                                  reverse=reverse, local_window=window, backend='reference')

    args = (u, delta, A, B, C) + ((D, z, bias) if optional else ())
    expected = fn(*args)
    (got,) = _run(_export(_Call(fn), args), *args)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_bidirectional_selective_scan_translation():
    fwd, bwd = _scan_inputs(seed=1), _scan_inputs(seed=2)

    def fn(u, delta, A, B, C, D, z, bias, u_b, delta_b, A_b, B_b, C_b, D_b, bias_b):
        return ops.bidirectional_selective_scan(u, delta, A, B, C, D, bias, u_b, delta_b, A_b, B_b, C_b, D_b,
                                                bias_b, z=z, backend='reference')

    args = fwd + tuple(t for i, t in enumerate(bwd) if i != 6)
    expected = fn(*args)
    (got,) = _run(_export(_Call(fn), args), *args)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize('reverse,activation,with_bias', [(False, 'silu', True), (True, 'silu', False),
                                                          (True, None, True)])
def test_causal_conv1d_translation(reverse, activation, with_bias):
    x, w, b = torch.randn(2, 8, 11), torch.randn(8, 4), torch.randn(8)

    def fn(x, w, *bias):
        return ops.causal_conv1d(x, w, bias[0] if bias else None, activation=activation, reverse=reverse,
                                 backend='reference')

    args = (x, w, b) if with_bias else (x, w)
    expected = fn(*args)
    (got,) = _run(_export(_Call(fn), args), *args)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def _mixer_weights(d=32, n=4, rank=2, width=4, seed=0, conv_bias=True):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(d, 1, width, generator=g) * 0.5, torch.randn(d, generator=g) if conv_bias else None,
            torch.randn(rank + 2 * n, d, generator=g) * 0.2, torch.randn(d, rank, generator=g) * 0.5,
            torch.randn(d, generator=g) * 0.1, torch.log(torch.rand(d, n, generator=g) + 0.5),
            torch.randn(d, generator=g)]


@pytest.mark.parametrize('bidirectional,reverse,window', [(True, False, 1), (False, True, 1), (False, False, 4)])
def test_mamba_inner_fwd_translation(bidirectional, reverse, window):
    """The fused mixer op (what an exported fp32 Vim / LBVim graph holds) == the composite reference math, both of
    its outputs (the mixer's and x_proj's per direction)."""
    xz = torch.randn(2, 10, 64)
    fwd = _mixer_weights(seed=3, conv_bias=not reverse)
    bwd = _mixer_weights(seed=4) if bidirectional else None
    empty = torch.empty(0)

    def fn(xz):
        pack = [fwd[0], fwd[1] if fwd[1] is not None else empty, *fwd[2:]]
        packed_b = [bwd[0], bwd[1], *bwd[2:]] if bwd is not None else []
        return torch.ops.vimzoo.mamba_inner_fwd(xz, pack, packed_b, reverse, window, 0.5, 'auto', True)

    expected = ops.mamba_inner(xz, fwd, bwd, reverse=reverse, local_window=window if window > 1 else None,
                               scale=0.5, backend='reference')
    x_dbl = mamba_inner_fwd_ref(xz, fwd, bwd, reverse, window if window > 1 else None, 0.5)[1]
    got, got_x_dbl = _run(_export(_Call(fn), (xz,)), xz)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(got_x_dbl, x_dbl, rtol=0, atol=ATOL)


@pytest.mark.parametrize('with_residual', [True, False])
def test_add_rms_norm_fwd_translation(with_residual):
    x, residual, weight = torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.rand(16) + 0.5

    def fn(x, weight, *res):
        return torch.ops.vimzoo.add_rms_norm_fwd(x, res[0] if res else None, weight, 1e-5, 'auto', True)

    args = (x, weight, residual) if with_residual else (x, weight)
    summed = x + residual if with_residual else x
    normed = torch.nn.functional.rms_norm(summed, (16,), weight, 1e-5)
    got_normed, got_summed = _run(_export(_Call(fn), args), *args)
    torch.testing.assert_close(got_summed, summed, rtol=0, atol=ATOL)
    torch.testing.assert_close(got_normed, normed, rtol=0, atol=ATOL)


def _ssd_inputs(b=2, length=11, h=4, p=3, g=2, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, h, p, generator=gen)
    dt = torch.randn(b, length, h, generator=gen) * 0.5
    A = -torch.rand(h, generator=gen) - 0.2
    B, C = (torch.randn(b, length, g, n, generator=gen) for _ in range(2))
    D, dt_bias = torch.randn(h, generator=gen), torch.randn(h, generator=gen) * 0.1
    init = torch.randn(b, h, p, n, generator=gen) * 0.3
    return x, dt, A, B, C, D, dt_bias, init


@pytest.mark.parametrize('reverse,optional', [(False, True), (True, True), (False, False)])
def test_ssd_scan_translation(reverse, optional):
    """Mamba-2 SSD scan, 2 groups for 4 heads, with / without D, dt_bias and an initial state."""
    x, dt, A, B, C, D, dt_bias, init = _ssd_inputs()

    def fn(x, dt, A, B, C, *extra):
        d_, b_, s_ = extra if extra else (None, None, None)
        return ops.ssd_scan(x, dt, A, B, C, D=d_, dt_bias=b_, dt_softplus=True, initial_states=s_, reverse=reverse,
                            backend='reference')

    args = (x, dt, A, B, C) + ((D, dt_bias, init) if optional else ())
    expected = fn(*args)
    (got,) = _run(_export(_Call(fn), args), *args)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize('per_token_d', [False, True])
def test_quasiseparable_scan_translation(per_token_d):
    """Hydra's core: both directions shifted by one token plus the diagonal, (h,) or per-token (b, l, h) D."""
    x, dt, A, B, C, D, dt_bias, _ = _ssd_inputs()
    _, dt_b, _, B_b, C_b, *_ = _ssd_inputs(seed=1)
    if per_token_d:
        D = torch.randn(x.shape[:3])

    def fn(x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias):
        return ops.quasiseparable_scan(x, dt, A, B, C, dt_b, B_b, C_b, D=D, dt_bias=dt_bias, dt_softplus=True,
                                       backend='reference')

    args = (x, dt, A, B, C, dt_b, B_b, C_b, D, dt_bias)
    expected = fn(*args)
    (got,) = _run(_export(_Call(fn), args), *args)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_translation_table_covers_every_vimzoo_op():
    table = vimzoo.export.onnx_translation_table()
    forward_ops = {'selective_scan', 'bidirectional_selective_scan', 'causal_conv1d', 'mamba_inner_fwd',
                   'add_rms_norm_fwd', 'ssd_scan', 'quasiseparable_scan'}
    assert {op.name().split('::')[1] for op in table} == forward_ops


# --------------------------------------------------------------------------------------------- lazy registration
def test_import_vimzoo_does_not_import_onnx_and_plain_export_finds_the_translations():
    code = textwrap.dedent('''
        import json, sys, warnings
        import torch, timm, vimzoo
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxscript', 'onnx_ir', 'onnxruntime'))
        warnings.simplefilter('ignore')
        model = timm.create_model('test_lbvim').eval()
        x = torch.randn(1, 3, 64, 64)
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
        import onnxruntime as ort
        sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=['CPUExecutionProvider'])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            diff = float(abs(torch.from_numpy(got) - model(x)).max())
        print(json.dumps(dict(loaded=loaded, diff=diff)))
    ''')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['loaded'] == []
    assert result['diff'] < ATOL


def test_registration_hook_runs_once_after_its_module_and_leaves_other_imports_alone(tmp_path, monkeypatch):
    from vimzoo.export import _AfterImport
    (tmp_path / 'vimzoo_hook_target.py').write_text('VALUE = 3\n')
    (tmp_path / 'vimzoo_hook_other.py').write_text('VALUE = 4\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []
    hook = _AfterImport('vimzoo_hook_target', lambda: calls.append(sys.modules['vimzoo_hook_target'].VALUE))
    monkeypatch.setattr(sys, 'meta_path', [hook, *sys.meta_path])
    try:
        import vimzoo_hook_other  # noqa: F401
        assert calls == [] and hook in sys.meta_path
        import vimzoo_hook_target  # noqa: F401
        assert calls == [3] and hook not in sys.meta_path   # the module was complete when the callback ran
    finally:
        sys.modules.pop('vimzoo_hook_target', None)
        sys.modules.pop('vimzoo_hook_other', None)
