"""vimzoo.ops's contract beyond the math: one set of input rules for every route (fused or not, any backend), empty
inputs, per-thread backend selection, the backend interface, and model hyper-parameter checks."""
import shutil
import threading

import numpy as np
import pytest
import timm
import torch

import vimzoo  # noqa: F401  (registers the models)
import vimzoo.ops as ops
from vimzoo.ops import _choose, _state
from vimzoo.ops.backends import REGISTRY

HAS_CXX = shutil.which('c++') is not None or shutil.which('g++') is not None
BACKENDS = ['reference', 'auto'] + (['cpu'] if HAS_CXX else [])
INTERFACE = ('can_run', 'scan_fwd', 'scan_bwd', 'bidir_fwd', 'conv_fwd', 'conv_bwd', 'mamba_inner_fwd',
             'mamba_inner_bwd', 'add_rms_norm_fwd', 'add_rms_norm_bwd', 'ssd_fwd', 'ssd_bwd', 'qs_fwd',
             'qs_bwd')


def _scan(b=2, d=16, l=9, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, delta = torch.randn(b, d, l, generator=g), torch.randn(b, d, l, generator=g) * 0.5
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B, C = torch.randn(b, n, l, generator=g), torch.randn(b, n, l, generator=g)
    return u, delta, A, B, C, torch.randn(d, generator=g), torch.randn(b, d, l, generator=g), torch.randn(d)


def _mixer(d=32, n=4, rank=2, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(d, 1, k, generator=g) * 0.3, torch.randn(d, generator=g) * 0.1,
            torch.randn(rank + 2 * n, d, generator=g) * 0.2, torch.randn(d, rank, generator=g) * 0.3,
            torch.randn(d, generator=g) * 0.1, torch.randn(d, n, generator=g) * 0.3, torch.randn(d, generator=g)]


def _routes(fn):
    """Run `fn` with grad off (fused kernels where they fit) and on (differentiable ops), on every backend."""
    for backend in BACKENDS:
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                yield backend, grad, fn(backend, grad)


# ------------------------------------------------------------------------------------------- the backend interface
def test_every_backend_module_has_the_same_functions():
    for name, module in REGISTRY.items():
        assert module.NAME == name
        missing = [f for f in INTERFACE if not callable(getattr(module, f, None))]
        assert not missing, f'backend {name!r} lacks {missing}'
    assert set(REGISTRY) | {'auto'} == set(ops.BACKENDS)


def test_choose_explains_why_a_requested_backend_cannot_run():
    with pytest.raises(RuntimeError, match="mamba_inner_fwd cannot run on backend 'cuda'.*CUDA tensors"):
        _choose.choose('mamba_inner_fwd', 'cuda', torch.device('cpu'))
    assert _choose.choose('mamba_inner_fwd', 'cuda', torch.device('cpu'), fallback=False) is None
    assert _choose.choose('selective_scan', 'auto', torch.device('meta')).NAME == 'reference'


def _ops_imports():
    """{module: set of vimzoo modules it imports} for every file of vimzoo/ops, read from the source."""
    import ast
    from pathlib import Path
    root = Path(ops.__file__).resolve().parent
    graph = {}
    for path in root.rglob('*.py'):
        mod = 'vimzoo.' + '.'.join(path.relative_to(root.parent).with_suffix('').parts)
        mod = mod.removesuffix('.__init__')
        package = mod if path.name == '__init__.py' else mod.rsplit('.', 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                target = (base + ('.' + node.module if node.module else '')) if node.level else node.module
                deps.add(target)
                deps.update(f'{target}.{a.name}' for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d.startswith('vimzoo')}
    return graph


def test_ops_do_not_import_the_model_index_and_have_no_cycles():
    graph = _ops_imports()
    outside = {m: sorted(d for d in deps if not d.startswith('vimzoo.ops')) for m, deps in graph.items()}
    assert not any(outside.values()), f'vimzoo.ops imports outside itself: {outside}'
    modules = set(graph)
    edges = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    # a package may import its own submodules; any other path back to a module is a cycle
    for start in modules:
        stack, seen = [(start, d) for d in edges[start] if not d.startswith(start + '.')], set()
        while stack:
            _, node = stack.pop()
            assert node != start, f'import cycle through {start}'
            if node not in seen:
                seen.add(node)
                stack.extend((node, d) for d in edges[node] if not d.startswith(node + '.'))


# ---------------------------------------------------------------------------------------- one rule set, every route
@pytest.mark.parametrize('backend', BACKENDS)
def test_windows_accept_integer_like_values_and_reject_the_rest(backend):
    u, delta, A, B, C, D, z, bias = _scan()
    exp = ops.selective_scan(u, delta, A, B, C, D, z, bias, True, local_window=4, backend='reference')
    for window in (np.int64(4), np.int32(4), torch.tensor(4)):
        got = ops.selective_scan(u, delta, A, B, C, D, z, bias, True, local_window=window, backend=backend)
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5)
    for window in (0, -5, 2.5, True, '4', np.float32(4.0)):
        with pytest.raises(ValueError, match='local_window'):
            ops.selective_scan(u, delta, A, B, C, local_window=window, backend=backend)


def test_mamba_inner_rules_are_the_same_on_fused_and_unfused_routes():
    xz = torch.randn(2, 9, 64)
    w = _mixer()
    cases = {
        'local_window': dict(local_window=-5),
        'D': dict(weights=w[:6] + [torch.randn(32, 2)]),
        r'dt_proj.bias': dict(weights=w[:4] + [torch.randn(2, 32)] + w[5:]),
        'conv width': dict(weights=[torch.randn(32, 1, 0)] + w[1:]),
        'd_state': dict(weights=w[:5] + [torch.randn(32, 0)] + w[6:]),
        'weights_b': dict(weights_b=_mixer(n=8)),                          # another state size per direction
        'local_window applies to one-direction': dict(weights_b=_mixer(), local_window=4),
        'scale': dict(scale=float('nan')),
    }
    for expected, kw in cases.items():
        args = dict(weights=w, weights_b=None)
        args.update(kw)
        for backend, grad, outcome in _routes(lambda be, g: _outcome(ops.mamba_inner, xz.clone().requires_grad_(g),
                                                                     backend=be, **args)):
            assert isinstance(outcome, ValueError) and expected in str(outcome), (expected, backend, grad, outcome)


def _outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


def test_mamba_inner_optional_parameters_agree_on_every_route():
    xz = torch.randn(2, 9, 64)
    w = _mixer()
    for missing in ((1,), (4,), (6,), (1, 4, 6)):
        weights = [None if i in missing else t for i, t in enumerate(w)]
        results = {(be, g): out.detach() for be, g, out in
                   _routes(lambda be, g: ops.mamba_inner(xz.clone().requires_grad_(g), weights, backend=be))}
        exp = results[('reference', False)]
        for key, got in results.items():
            torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5, msg=f'{missing} {key}')


def test_bidirectional_scan_requires_equal_direction_shapes():
    f, r = _scan(n=4), _scan(n=8, seed=1)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match='A_b must match A'):
            ops.bidirectional_selective_scan(*f[:6], f[7], *r[:6], r[7], z=f[6], backend=backend)


def test_conv_width_must_be_positive():
    x = torch.randn(2, 8, 16).transpose(1, 2)   # channel-contiguous (the layout of the fast CPU path)
    for backend in BACKENDS:
        with pytest.raises(ValueError, match='conv width must be >= 1'):
            ops.causal_conv1d(x, torch.randn(16, 0), backend=backend)


def test_add_rms_norm_is_validated():
    x, w = torch.randn(2, 5, 8), torch.randn(8)
    with pytest.raises(ValueError, match=r'weight must have shape \(8,\)'):
        ops.add_rms_norm(x, None, torch.randn(7))
    with pytest.raises(ValueError, match=r'residual must have shape \(2, 5, 8\)'):
        ops.add_rms_norm(x, torch.randn(2, 5, 7), w)
    with pytest.raises(ValueError, match='eps'):
        ops.add_rms_norm(x, None, w, eps=-1.0)
    with pytest.raises(TypeError, match='x must be a torch.Tensor'):
        ops.add_rms_norm(x.tolist(), None, w)


# ---------------------------------------------------------------------------------------------- empty inputs
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dims', [(0, 16, 9), (2, 16, 0), (2, 0, 9)], ids=['b0', 'l0', 'd0'])
def test_zero_size_inputs_give_empty_results_and_grads(backend, dims):
    b, d, l = dims
    ts = [t.requires_grad_() for t in _scan(b, d, l)]
    out = ops.selective_scan(*ts[:5], D=ts[5], z=ts[6], delta_bias=ts[7], delta_softplus=True, local_window=4,
                             backend=backend)
    assert out.shape == (b, d, l)
    grads = torch.autograd.grad(out.sum(), ts, allow_unused=True)
    assert all(g is None or (g.shape == t.shape and not g.abs().sum()) for g, t in zip(grads, ts))
    r = _scan(b, d, l, seed=1)
    assert ops.bidirectional_selective_scan(*ts[:6], ts[7], *r[:6], r[7], z=ts[6], backend=backend).shape == (b, d, l)
    assert ops.causal_conv1d(ts[0], torch.randn(d, 4), activation='silu', backend=backend).shape == (b, d, l)
    with torch.no_grad():
        mixed = ops.mamba_inner(torch.randn(b, l, 2 * d), _mixer(d), backend=backend)
    assert mixed.shape == (b, l, d)


# ------------------------------------------------------------------------------------------ per-thread selection
def test_use_backend_is_per_thread_and_restores_the_default():
    seen, errors = {}, []
    entered = [threading.Event(), threading.Event()]
    release = threading.Event()

    def worker(i, name):
        try:
            with ops.use_backend(name):
                entered[i].set()
                release.wait(10)               # both threads are inside their `with` block now
                seen[name] = ops.get_backend()
                with ops.use_check_finite(i == 0):
                    seen[f'finite-{name}'] = _state.check_finite_enabled()
            seen[f'after-{name}'] = ops.get_backend()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    ops.set_backend('auto')
    threads = [threading.Thread(target=worker, args=(0, 'reference')), threading.Thread(target=worker, args=(1, 'cpu'))]
    threads[0].start()
    entered[0].wait(10)
    threads[1].start()
    entered[1].wait(10)
    assert ops.get_backend() == 'auto'         # the main thread is unaffected by either block
    release.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert seen == {'reference': 'reference', 'cpu': 'cpu', 'finite-reference': True, 'finite-cpu': False,
                    'after-reference': 'auto', 'after-cpu': 'auto'}
    assert ops.get_backend() == 'auto' and _state.check_finite_enabled()


def test_set_backend_is_the_default_for_new_threads():
    seen = []
    try:
        ops.set_backend('reference')
        t = threading.Thread(target=lambda: seen.append(ops.get_backend()))
        t.start()
        t.join()
        with ops.use_backend('cpu'):
            ops.set_backend('auto')            # changes the default, not this context's override
            assert ops.get_backend() == 'cpu'
    finally:
        ops.set_backend('auto')
    assert seen == ['reference'] and ops.get_backend() == 'auto'


# ------------------------------------------------------------------------------------------- models reject nonsense
@pytest.mark.parametrize('name', ['test_vim', 'test_lbvim'])
@pytest.mark.parametrize('kwargs, match', [(dict(d_conv=0), 'd_conv'), (dict(d_state=0), 'd_state'),
                                           (dict(expand=0), 'expand'), (dict(dt_rank=0), 'dt_rank')],
                         ids=['d_conv', 'd_state', 'expand', 'dt_rank'])
def test_vim_constructors_reject_impossible_hyper_parameters(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model(name, **kwargs)


@pytest.mark.parametrize('backend', BACKENDS)
def test_outputs_have_the_strides_the_fake_impls_promise(backend):
    """Compiled graphs (inductor) assert the fake impl's output strides; a strided input (the patch embedding's
    transposed output, a token-major view) must get those strides from the real impl too."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    x = torch.randn(2, 16, 9).transpose(1, 2)                      # (2, 9, 16), not contiguous
    res, weight = torch.randn(2, 9, 16), torch.rand(16) + 0.5
    xc = torch.randn(2, 9, 16).transpose(1, 2)                     # (b, d, l) view of token-major activations
    conv_w, conv_b = torch.randn(16, 4), torch.randn(16)
    u, delta, A, B, C, D, z, bias = _scan(d=16)
    calls = {
        'add_rms_norm_fwd': lambda: torch.ops.vimzoo.add_rms_norm_fwd(x, None, weight, 1e-5, backend, True),
        'add_rms_norm_fwd+res': lambda: torch.ops.vimzoo.add_rms_norm_fwd(x, res, weight, 1e-5, backend, True),
        'causal_conv1d': lambda: (torch.ops.vimzoo.causal_conv1d(xc, conv_w, conv_b, 'silu', False, backend, True),),
        'selective_scan': lambda: (torch.ops.vimzoo.selective_scan(u.transpose(1, 2).contiguous().transpose(1, 2),
                                                                   delta, A, B, C, D, z, bias, True, False, 1,
                                                                   backend, True),),
    }
    for name, call in calls.items():
        real = call()
        with FakeTensorMode(allow_non_fake_inputs=True):
            fake = call()
        assert [t.stride() for t in real] == [t.stride() for t in fake], name


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_all_finite_finds_one_bad_value_anywhere(dtype):
    """The Python-side NaN/inf check (one aminmax) sees a single NaN / +inf / -inf at any position and layout."""
    from vimzoo.ops._validate import all_finite
    base = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert all_finite(base) and all_finite(base.transpose(0, 2)) and all_finite(base[:, ::2])
    assert all_finite(torch.tensor([3, 4])) and all_finite(torch.tensor([True]))
    for bad in (float('nan'), float('inf'), -float('inf')):
        for pos in range(base.numel()):
            t = base.clone()
            t.view(-1)[pos] = bad
            assert not all_finite(t), (bad, pos)
            assert not all_finite(t.transpose(0, 2)), (bad, pos)


def test_finite_check_stays_out_of_the_autograd_graph():
    """The check runs on tensors that require grad (training): it must save nothing for backward."""
    from vimzoo.ops._validate import check_finite
    x = torch.randn(4, 8, requires_grad=True) * 2   # a non-leaf, as activations are
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        check_finite('op', {'x': x})
    assert not packed, f'the NaN/inf check saved {len(packed)} tensors for backward'
