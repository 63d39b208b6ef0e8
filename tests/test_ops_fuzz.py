"""Fuzzing the public ops (Mamba scans, conv, mixer, norm, the SSD / Hydra scans): random and adversarial shapes,
dtypes, strides, windows, zero-size dims and values through every op and backend, each case in its own (forked)
process, so a crash is caught and attributed, not fatal.

Every case must end in one of two ways, never in a signal or a hang:
  * valid inputs: the same result as the reference backend (forward, and gradients where inputs need them),
    fp32/fp64 within 1e-4 relative, fp16/bf16 within 3e-2;
  * invalid inputs: a TypeError / ValueError whose message names the offending argument.
The cases are generated from a fixed seed (reproducible); `python tests/test_ops_fuzz.py --list` prints them and
`python tests/test_ops_fuzz.py --case ID` runs one in this process (for debugging).
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import traceback

import pytest

HAS_CXX = shutil.which('c++') is not None or shutil.which('g++') is not None
SEED = 20261201
N_RANDOM = 224   # ~32 random cases per op
CASE_TIMEOUT_S = 60
DTYPES = ('float32', 'float64', 'bfloat16', 'float16')

# the names each op's arguments go by in error messages; a message must contain the perturbed one
ARGS = {
    'selective_scan': ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias', 'local_window'),
    'bidirectional_selective_scan': ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias', 'u_b', 'delta_b', 'A_b', 'B_b',
                                     'C_b', 'D_b', 'delta_bias_b', 'z'),
    'causal_conv1d': ('x', 'weight', 'bias', 'activation'),
    'mamba_inner': ('xz', 'weights', 'weights_b', 'local_window', 'scale'),
    'add_rms_norm': ('x', 'residual', 'weight', 'eps'),
    'ssd_scan': ('x', 'dt', 'A', 'B', 'C', 'D', 'dt_bias', 'initial_states', 'dt_softplus', 'reverse'),
    'quasiseparable_scan': ('x', 'dt', 'A', 'B', 'C', 'dt_b', 'B_b', 'C_b', 'D', 'dt_bias', 'initial_states',
                            'dt_softplus'),
}
SSD_OPS = ('ssd_scan', 'quasiseparable_scan')
# the arguments whose shape defines the others: a wrong shape there may be reported through another argument
DEFINING = {'u', 'A', 'x', 'xz'}
DEFINING_BY_OP = {'ssd_scan': {'B'}, 'quasiseparable_scan': {'B', 'B_b'}}   # B's (groups, d_state) fix C's


# ------------------------------------------------------------------------------------------------- case generation
def _t(shape, dtype='float32', layout='contig', scale=1.0, kind='randn'):
    return dict(shape=list(shape), dtype=dtype, layout=layout, scale=scale, kind=kind)


def _scan_args(rng, b, d, l, n, dtype, layout, opt):
    args = dict(u=_t((b, d, l), dtype, layout), delta=_t((b, d, l), dtype, layout, 0.5),
                A=_t((d, n), 'float32', kind='neg_exp'), B=_t((b, n, l), dtype), C=_t((b, n, l), dtype))
    if opt:
        args.update(D=_t((d,)), z=_t((b, d, l), dtype, layout), delta_bias=_t((d,), scale=0.5))
    return args


def _mixer_weights(d, n, rank, k, opt=True, conv_3d=True):
    return [_t((d, 1, k) if conv_3d else (d, k), scale=0.3), _t((d,), scale=0.1) if opt else None,
            _t((rank + 2 * n, d), scale=0.2), _t((d, rank), scale=0.3), _t((d,), scale=0.1) if opt else None,
            _t((d, n), scale=0.3), _t((d,)) if opt else None]


def _ssd_case(rng, op, b, l, dtype, opt):
    """x (b, l, h, p), dt (b, l, h), A (h,), B / C (b, l, g, n) with g | h; dt / B / C in x's dtype or fp32."""
    h = rng.choice([1, 2, 4, 6])
    g = rng.choice([d for d in (1, 2, 3) if h % d == 0])
    p, n = rng.choice([1, 3, 8, 16]), rng.choice([1, 4, 5, 16])
    side = rng.choice([dtype, 'float32'])
    layout = rng.choice(['contig', 'contig', 'strided'])
    args = dict(x=_t((b, l, h, p), dtype, layout), dt=_t((b, l, h), side, rng.choice(['contig', 'expanded']), 0.7),
                A=_t((h,), 'float32', kind='neg_exp'), B=_t((b, l, g, n), side, layout), C=_t((b, l, g, n), side))
    if op == 'quasiseparable_scan':
        args.update(dt_b=_t((b, l, h), side, scale=0.7), B_b=_t((b, l, g, n), side), C_b=_t((b, l, g, n), side))
    per_token = op == 'quasiseparable_scan' and rng.random() < 0.6
    args.update(D=(_t((b, l, h), side) if per_token else _t((h,))) if opt else None,
                dt_bias=_t((h,), scale=0.5) if opt else None,
                initial_states=_t((b, h, p, n), rng.choice(['float32', dtype]), scale=0.5) if opt else None,
                dt_softplus=rng.random() < 0.8)
    if op == 'ssd_scan':
        args['reverse'] = rng.random() < 0.5
    return args


def _valid_case(rng, op):
    """A random valid call of `op` (tensor specs + keyword options)."""
    dtype = rng.choice(DTYPES[:2] * 3 + DTYPES[2:])            # mostly fp32 / fp64
    b, l = rng.choice([1, 2, 3]), rng.choice([1, 2, 5, 16, 17, 33, 70])
    d = rng.choice([1, 3, 16, 32, 48] if op != 'mamba_inner' else [16, 32, 48, 8])
    n = rng.choice([1, 4, 5, 8, 16])
    layout = rng.choice(['contig', 'tokmajor', 'tokmajor', 'strided', 'expanded'])
    opt = rng.random() < 0.7
    if op == 'selective_scan':
        args = _scan_args(rng, b, d, l, n, dtype, layout, opt)
        args.update(delta_softplus=rng.random() < 0.8, reverse=rng.random() < 0.5,
                    local_window=rng.choice([None, None, 1, 2, 4, 8, l, l + 3, 10 ** 6, 'np4']))
    elif op == 'bidirectional_selective_scan':
        f, r = _scan_args(rng, b, d, l, n, dtype, layout, True), _scan_args(rng, b, d, l, n, dtype, layout, opt)
        args = {k: f[k] for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')}
        args.update({f'{k}_b': r.get(k) for k in ('u', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')})
        args.update(z=f['z'] if opt else None, delta_softplus=rng.random() < 0.8)
    elif op in SSD_OPS:
        args = _ssd_case(rng, op, b, l, dtype, opt)
    elif op == 'causal_conv1d':
        k = rng.choice([1, 2, 3, 4, 7])
        args = dict(x=_t((b, d, l), dtype, layout), weight=_t((d, k), rng.choice(['float32', dtype])),
                    bias=_t((d,)) if opt else None, activation=rng.choice([None, 'silu', 'swish']),
                    reverse=rng.random() < 0.5)
    elif op == 'mamba_inner':
        rank, k = rng.choice([1, 2, 3]), rng.choice([1, 2, 4])
        bidir = rng.random() < 0.5
        args = dict(xz=_t((b, l, 2 * d), dtype), weights=_mixer_weights(d, n, rank, k, opt, rng.random() < 0.7),
                    weights_b=_mixer_weights(d, n, rank, k, opt) if bidir else None,
                    reverse=False if bidir else rng.random() < 0.5,
                    local_window=None if bidir else rng.choice([None, 1, 4, l]),
                    scale=rng.choice([1.0, 0.5, 2.0]))
    else:
        c = rng.choice([1, 7, 16, 40])
        shape = [b, l, c][-rng.choice([1, 2, 3]):]
        args = dict(x=_t(shape, dtype), residual=_t(shape, rng.choice(['float32', dtype])) if opt else None,
                    weight=_t((c,)), eps=rng.choice([1e-5, 1e-6, 0.0]))
    return args


def _tensor_names(args):
    names = [k for k, v in args.items() if isinstance(v, dict)]
    for key in ('weights', 'weights_b'):
        if isinstance(args.get(key), list):
            names += [f'{key}[{i}]' for i, v in enumerate(args[key]) if v is not None]
    return names


def _get(args, name):
    m = re.fullmatch(r'(\w+)\[(\d)\]', name)
    return args[m.group(1)][int(m.group(2))] if m else args[name]


def _set(args, name, value):
    m = re.fullmatch(r'(\w+)\[(\d)\]', name)
    if m:
        args[m.group(1)] = list(args[m.group(1)])
        args[m.group(1)][int(m.group(2))] = value
    else:
        args[name] = value


MUTATIONS = ('shape', 'ndim', 'int_dtype', 'complex', 'meta_device', 'not_tensor', 'nan', 'inf', 'bad_window',
             'zero_dim', 'zero_width', 'noncontig_param')


def _mutate(rng, op, args):
    """One adversarial change; returns (args, expected) with expected 'match' or the argument the error must name."""
    args = json.loads(json.dumps(args))
    kind = rng.choice(MUTATIONS)
    names = _tensor_names(args)
    name = rng.choice(names)
    spec = _get(args, name)
    top = name.split('[')[0]
    if kind == 'shape':
        i = rng.randrange(len(spec['shape']))
        spec['shape'][i] += 1
        return args, top
    if kind == 'ndim':
        spec['shape'] = spec['shape'] + [1] if rng.random() < 0.5 else spec['shape'][1:]
        return args, top
    if kind in ('int_dtype', 'complex'):
        spec['dtype'] = 'int64' if kind == 'int_dtype' else 'complex64'
        return args, top
    if kind == 'meta_device':
        if name == names[0]:
            name = names[-1]
            spec, top = _get(args, name), name.split('[')[0]
        spec['layout'] = 'meta'
        return args, top
    if kind == 'not_tensor':
        _set(args, name, 'list:' + json.dumps(spec))
        return args, top
    if kind in ('nan', 'inf'):
        if 0 in spec['shape']:
            return args, 'match'
        spec['kind'] = kind
        if op == 'mamba_inner' and name == 'xz':
            return args, 'x|z'
        return args, top
    if kind == 'bad_window' and 'local_window' in ARGS[op] and not args.get('weights_b'):
        args['local_window'] = rng.choice([0, -5, 2.5, 'np0', 'true', '4'])
        return args, 'local_window'
    if kind == 'zero_dim':   # a valid, empty problem (b = 0 or l = 0 or d = 0 everywhere)
        return _valid_zero(rng, op), 'match'
    if kind == 'zero_width' and op == 'causal_conv1d':
        args['weight']['shape'][1] = 0
        return args, 'weight'
    if kind == 'zero_width' and op == 'mamba_inner':
        args['weights'][0]['shape'][-1] = 0
        return args, 'weights'
    if kind == 'noncontig_param':   # valid: a strided view
        spec['layout'] = 'strided' if len(spec['shape']) >= 2 else 'contig'
        return args, 'match'
    return args, 'match'


def _valid_zero(rng, op):
    g = random.Random(rng.random())
    while True:
        args = _valid_case(g, op)
        dims = {'b': 0} if g.random() < 0.5 else {'l': 0}
        shapes = [_get(args, n)['shape'] for n in _tensor_names(args)]
        if op == 'add_rms_norm':
            if len(shapes[0]) > 1:
                for s in shapes[:1] + ([shapes[1]] if args.get('residual') else []):
                    s[0] = 0
                return args
            continue
        if op in SSD_OPS:   # batch is dim 0 of every per-sample tensor, length dim 1 of x, dt, B, C, D per token
            for name in _tensor_names(args):
                s = _get(args, name)['shape']
                if len(s) >= 3 and (name != 'initial_states' or 'b' in dims):
                    s[0 if 'b' in dims else 1] = 0
            return args
        lead = _get(args, _tensor_names(args)[0])['shape']
        b, l = (lead[0], lead[1]) if op == 'mamba_inner' else (lead[0], lead[2])
        for name in _tensor_names(args):
            s = _get(args, name)['shape']
            if op == 'mamba_inner':
                if name == 'xz':
                    s[0 if 'b' in dims else 1] = 0
            elif len(s) == 3:
                s[0 if 'b' in dims else 2] = 0
        del b, l
        return args


def make_cases():
    rng = random.Random(SEED)
    backends = ['auto', 'reference', 'cpu', 'cuda']
    cases = []
    for i in range(N_RANDOM):
        op = rng.choice(list(ARGS))
        args = _valid_case(rng, op)
        expected = 'match'
        if rng.random() < 0.6:
            args, expected = _mutate(rng, op, args)
        cases.append(dict(id=f'r{i:03d}', op=op, backend=rng.choice(backends[:3]), args=args, expected=expected))
    cases += _named_cases()
    for c in [c for c in cases if c['expected'] == 'match'][:20]:   # the 'cuda' backend with CPU tensors
        cases.append(dict(c, id=c['id'] + '-cuda', backend='cuda', expected='backend'))
    return cases


def _named_cases():
    """The reported crashes and inconsistencies, on every backend."""
    out = []
    base_mixer = _mixer_weights(16, 16, 1, 4)
    named = [
        ('conv-width0-tokmajor', 'causal_conv1d', dict(x=_t((2, 16, 8), layout='tokmajor'), weight=_t((16, 0)),
                                                       bias=None, activation=None, reverse=False), 'weight'),
        ('mixer-conv-width0', 'mamba_inner', dict(xz=_t((1, 8, 32)), weights=[_t((16, 1, 0))] + base_mixer[1:],
                                                  weights_b=None, reverse=False, local_window=None, scale=1.0),
         'weights'),
        ('mixer-window-neg5', 'mamba_inner', dict(xz=_t((1, 8, 32)), weights=base_mixer, weights_b=None,
                                                  reverse=False, local_window=-5, scale=1.0), 'local_window'),
        ('mixer-D-16x2', 'mamba_inner', dict(xz=_t((1, 8, 32)), weights=base_mixer[:6] + [_t((16, 2))],
                                             weights_b=None, reverse=False, local_window=None, scale=1.0), 'weights'),
        ('mixer-dtbias-2x16', 'mamba_inner', dict(xz=_t((1, 8, 32)), weights=base_mixer[:4] + [_t((2, 16))]
                                                  + base_mixer[5:], weights_b=None, reverse=False, local_window=None,
                                                  scale=1.0), 'weights'),
        ('mixer-l0', 'mamba_inner', dict(xz=_t((1, 0, 32)), weights=base_mixer, weights_b=None, reverse=False,
                                         local_window=None, scale=1.0), 'match'),
        ('mixer-state-per-direction', 'mamba_inner', dict(xz=_t((1, 8, 32)), weights=base_mixer,
                                                          weights_b=_mixer_weights(16, 8, 1, 4), reverse=False,
                                                          local_window=None, scale=1.0), 'weights_b'),
        ('scan-window-np-int64', 'selective_scan', dict(_scan_args(None, 2, 16, 9, 4, 'float32', 'tokmajor', True),
                                                        delta_softplus=True, reverse=True, local_window='np4'),
         'match'),
        ('scan-huge-window', 'selective_scan', dict(_scan_args(None, 1, 3, 5, 2, 'float32', 'contig', True),
                                                    delta_softplus=True, reverse=False, local_window=2 ** 62),
         'match'),
        ('scan-d-state-0', 'selective_scan', dict(_scan_args(None, 1, 3, 5, 0, 'float32', 'contig', False),
                                                  delta_softplus=False, reverse=False, local_window=None), 'A'),
        ('bidir-state-per-direction', 'bidirectional_selective_scan', dict(
            {k: v for k, v in _scan_args(None, 1, 16, 5, 4, 'float32', 'tokmajor', True).items() if k != 'z'},
            **{f'{k}_b': v for k, v in _scan_args(None, 1, 16, 5, 8, 'float32', 'tokmajor', True).items()
               if k != 'z'}, z=None, delta_softplus=True), 'A_b'),
    ]
    ssd = _ssd_case(random.Random(1), 'quasiseparable_scan', 2, 9, 'float32', True)
    named += [
        ('qs-state-per-direction', 'quasiseparable_scan', dict(ssd, B_b=_t((2, 9, ssd['B']['shape'][2], 7)),
                                                              C_b=_t((2, 9, ssd['B']['shape'][2], 7))), 'B_b'),
        ('qs-groups-do-not-divide-heads', 'quasiseparable_scan',
         dict(ssd, B=_t((2, 9, ssd['x']['shape'][2] + 1, 4)), C=_t((2, 9, ssd['x']['shape'][2] + 1, 4))), 'B'),
        ('qs-length-1', 'quasiseparable_scan', _ssd_case(random.Random(2), 'quasiseparable_scan', 1, 1, 'float32',
                                                         True), 'match'),
    ]
    for cid, op, args, expected in named:
        for backend in ('auto', 'reference', 'cpu'):
            out.append(dict(id=f'{cid}-{backend}', op=op, backend=backend, args=args, expected=expected))
    return out


# ------------------------------------------------------------------------------------------------- running a case
def _build(spec, gen):
    import numpy as np
    import torch
    if isinstance(spec, str) and spec.startswith('list:'):
        return [[0.0]]                                        # not a tensor
    if isinstance(spec, str) and spec.startswith('np'):
        return np.int64(int(spec[2:]))
    if spec == 'true':
        return True
    if not isinstance(spec, dict):
        return spec
    shape, dtype = spec['shape'], getattr(torch, spec['dtype'])
    t = torch.randn(shape, generator=gen) * spec['scale']
    if spec['kind'] == 'neg_exp':
        t = -torch.exp(t * 0.5)
    if spec['kind'] in ('nan', 'inf') and t.numel():
        t.view(-1)[t.numel() // 2] = float(spec['kind'])
    if spec['layout'] == 'tokmajor' and len(shape) == 3:      # (b, d, l) view of (b, l, d) memory
        t = t.transpose(1, 2).contiguous().transpose(1, 2)
    elif spec['layout'] == 'strided' and len(shape) >= 1:    # every other element of a larger tensor
        t = torch.stack([t, torch.zeros_like(t)], dim=-1).flatten(-2)[..., ::2]
    elif spec['layout'] == 'expanded' and len(shape) == 3 and shape[0]:   # stride 0 over the batch
        t = t[:1].expand(*shape)
    if dtype.is_complex:
        return t.to(dtype)
    if not dtype.is_floating_point:
        return (t * 10).to(dtype)
    t = t.to(dtype)
    return t.to('meta') if spec['layout'] == 'meta' else t


def _call(case, backend, args, grad):
    import vimzoo.ops as ops
    a = dict(args)
    if case['op'] == 'mamba_inner':
        return ops.mamba_inner(a['xz'], a['weights'], a['weights_b'], a['reverse'], a['local_window'], a['scale'],
                               backend=backend)
    if case['op'] == 'add_rms_norm':
        return ops.add_rms_norm(a['x'], a['residual'], a['weight'], a['eps'], backend=backend)[0]
    fn = getattr(ops, case['op'])
    return fn(**a, backend=backend)


def _leaves(args):
    import torch
    out = []
    for v in args.values():
        for t in (v if isinstance(v, list) else [v]):
            if isinstance(t, torch.Tensor) and t.dtype.is_floating_point and t.device.type == 'cpu' and t.numel():
                out.append(t)
    return out


def _rel(got, exp):
    import torch
    if got.shape != exp.shape:
        return float('inf')
    got, exp = got.double(), exp.double()
    finite = torch.isfinite(exp)
    if not torch.equal(finite, torch.isfinite(got)) or not torch.equal(got[~finite].nan_to_num(), exp[~finite].nan_to_num()):
        return float('inf')   # overflow (fp16) must happen at the same places
    if not finite.any():
        return 0.0
    return ((got - exp)[finite].abs().max() / exp[finite].abs().max().clamp_min(1e-6)).item()


def _attempt(case, backend, args, grad):
    import torch
    try:
        with torch.set_grad_enabled(grad):
            return _call(case, backend, args, grad), None
    except Exception as exc:  # noqa: BLE001 - classified by the caller
        return None, exc


def _names_argument(case, exc) -> bool:
    expected = case['expected']
    if expected == 'backend':
        names = ['backend']
    elif expected in ('match',) or expected in DEFINING | DEFINING_BY_OP.get(case['op'], set()):
        names = list(ARGS[case['op']])
    else:
        names = expected.split('|')
    return any(re.search(rf'(?<![\w.]){re.escape(n)}(?![\w])', str(exc)) for n in names)


def run_case(case):
    """-> {'ok': bool, 'detail': str}; runs in the forked child.

    The backend's outcome must equal the reference backend's on the same inputs: both a result (equal within the
    tolerance, gradients too) or both the same TypeError / ValueError, whose message names an argument (the
    perturbed one, when the perturbation does not change what the other arguments must be)."""
    import torch
    import zlib
    if case['op'] == '__crash__':   # the harness's own check: a signal in a case must be reported, not fatal
        os.kill(os.getpid(), signal.SIGSEGV)
    gen = torch.Generator().manual_seed(zlib.crc32(case['id'].encode()))
    args = {}
    for k, v in case['args'].items():
        args[k] = [_build(x, gen) for x in v] if isinstance(v, list) else _build(v, gen)
    leaves = _leaves(args)
    low = any(t.dtype in (torch.float16, torch.bfloat16) for t in leaves)
    tol = 3e-2 if low else 1e-4
    out, exc = _attempt(case, case['backend'], args, False)
    if case['expected'] == 'backend':
        if isinstance(exc, ValueError) and _names_argument(case, exc):
            return dict(ok=True, detail='ValueError naming the backend')
        return dict(ok=False, detail=f'expected a ValueError naming the backend, got {exc!r}'[:400])
    ref, ref_exc = _attempt(case, 'reference', args, False)
    if exc is not None or ref_exc is not None:
        kinds = (type(exc).__name__, type(ref_exc).__name__)
        if exc is None or ref_exc is None:
            return dict(ok=False, detail=f'inconsistent with the reference: {kinds[0]} {exc} vs {kinds[1]} '
                                         f'{ref_exc}'[:400])
        if not isinstance(exc, (TypeError, ValueError)) or type(exc) is not type(ref_exc):
            return dict(ok=False, detail=f'expected the same TypeError/ValueError as the reference, got {kinds[0]}: '
                                         f'{exc} (reference: {kinds[1]}: {ref_exc})'[:400])
        if case['expected'] == 'match':
            return dict(ok=False, detail=f'valid input raised {kinds[0]}: {exc}'[:400])
        if not _names_argument(case, exc):
            return dict(ok=False, detail=f'message does not name the argument ({case["expected"]}): {exc}'[:400])
        return dict(ok=True, detail=f'{kinds[0]} naming the argument')
    err = _rel(out, ref)
    if not err <= tol:
        return dict(ok=False, detail=f'forward differs from the reference: rel {err:.2e} > {tol}')
    if leaves and out.numel() and all(t.dtype != torch.float16 for t in leaves):
        for t in leaves:
            t.requires_grad_(True)
        got, exc = _attempt(case, case['backend'], args, True)
        exp, ref_exc = _attempt(case, 'reference', args, True)
        if exc is not None or ref_exc is not None:
            return dict(ok=False, detail=f'with grad: {exc!r} vs reference {ref_exc!r}'[:400])
        cot = torch.randn(got.shape, generator=gen).to(got.dtype)
        g_got = torch.autograd.grad(got, leaves, cot, allow_unused=True)
        g_exp = torch.autograd.grad(exp, leaves, cot, allow_unused=True)
        for i, (g, e) in enumerate(zip(g_got, g_exp)):
            if (g is None) != (e is None):
                return dict(ok=False, detail=f'grad #{i}: None on one side only')
            if g is not None and not _rel(g, e) <= (5e-2 if low else 1e-4):
                return dict(ok=False, detail=f'grad #{i} differs from the reference: rel {_rel(g, e):.2e}')
    return dict(ok=True, detail=f'match (rel {err:.1e})')


def serve(cases):
    """Fork one child per case; report each case's outcome as a JSON line (a signal or a hang is an outcome)."""
    import torch  # noqa: F401  (imported before forking, so each child starts warm)
    import vimzoo.ops as ops
    from vimzoo.ops._loader import cpu_extension
    cpu_extension(required=False)
    del ops
    for case in cases:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            signal.alarm(CASE_TIMEOUT_S)
            try:
                torch.set_num_threads(2)
                result = run_case(case)
            except BaseException as exc:  # noqa: BLE001
                result = dict(ok=False, detail=f'harness error: {exc!r} {traceback.format_exc()[-500:]}')
            os.write(w, json.dumps(result).encode())
            os.close(w)
            os._exit(0)
        os.close(w)
        data = b''
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            result = dict(ok=False, detail=f'killed by signal {sig} ({signal.Signals(sig).name})'
                          + (' - hung' if sig == signal.SIGALRM else ''))
        elif not data:
            result = dict(ok=False, detail=f'no result, exit status {os.WEXITSTATUS(status)}')
        else:
            result = json.loads(data)
        print(json.dumps(dict(id=case['id'], op=case['op'], backend=case['backend'], **result)), flush=True)


# ------------------------------------------------------------------------------------------------------ the test
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='forks one process per case (Linux)')
def test_fuzz_every_op_and_backend_never_crashes():
    cases = make_cases()
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONFAULTHANDLER='0')
    proc = subprocess.run([sys.executable, __file__, '--serve'], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=1200, env=env)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    assert proc.returncode == 0 and len(results) == len(cases), \
        f'fuzz server failed (rc {proc.returncode}, {len(results)}/{len(cases)} results): {proc.stderr[-3000:]}'
    failures = [r for r in results if not r['ok']]
    by = {c['id']: c for c in cases}
    report = '\n'.join(f"{r['id']} {r['op']} backend={r['backend']}: {r['detail']}\n    "
                       f"{json.dumps(by[r['id']]['args'])[:400]}" for r in failures)
    assert not failures, f'{len(failures)} of {len(cases)} fuzz cases failed:\n{report}'
    # the fuzz exercised the compiled kernel, not only the reference
    assert HAS_CXX is False or sum(r['backend'] in ('cpu', 'auto') and 'match' in r['detail'] for r in results) > 40


def test_fuzz_harness_reports_a_crashing_case():
    cases = [dict(id='crash', op='__crash__', backend='cpu', args={}, expected='match')]
    proc = subprocess.run([sys.executable, __file__, '--serve'], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=300)
    (result,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    assert proc.returncode == 0 and not result['ok'] and 'SIGSEGV' in result['detail']


if __name__ == '__main__':
    if '--serve' in sys.argv:
        serve(json.loads(sys.stdin.read()))
    elif '--list' in sys.argv:
        for c in make_cases():
            print(c['id'], c['op'], c['backend'], c['expected'], json.dumps(c['args'])[:200])
    elif '--case' in sys.argv:
        wanted = sys.argv[sys.argv.index('--case') + 1]
        print(run_case(next(c for c in make_cases() if c['id'] == wanted)))
