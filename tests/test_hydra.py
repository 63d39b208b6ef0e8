"""Hydra family tests: the official module's layout and init, the mixer against a restatement of the official forward
(stacked [x; flip x] scan, roll, un-flip), the mirror symmetry of the bidirectional mixer, backends, AMP, weight
decay groups, any input size, checkpoint filtering. The model contract (features, FX, checkpointing, ...) runs for
test_hydra in tests/test_contract.py; the parity run against the official code is tools/parity_hydra.py."""
import math
import shutil

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay

import vimzoo  # noqa: F401  (registers the models)
from vimzoo.models.hydra import HydraMixer, checkpoint_filter_fn
from vimzoo.ops import use_backend
from vimzoo.ops.reference_ssd import ssd_scan_ref

HAS_CXX = shutil.which('c++') is not None or shutil.which('g++') is not None
OFFICIAL_KEYS = ['dt_bias', 'A_log', 'D', 'in_proj.weight', 'conv1d.weight', 'conv1d.bias', 'fc_D.weight',
                 'norm.weight', 'out_proj.weight']


def _randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Every parameter perturbed (A_log, D and the initial states away from their 0 / 1 / 0 init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale / max(1, p[0].numel()) ** 0.5)
    return module


def _official_forward(m: HydraMixer, u: torch.Tensor) -> torch.Tensor:
    """The official Hydra forward restated from the paper's code path: both directions stacked on the batch axis
    ([x; flip x]), one causal SSD scan, roll by one with zero fill, un-flip the second half, diagonal
    x * (fc_D(x) + D), then rmsnorm(y) * w * silu(z) and out_proj."""
    b, l, _ = u.shape
    h, p, gn = m.nheads, m.headdim, m.ngroups * m.d_state
    z, xbc, dt = torch.split(m.in_proj(u), [m.d_inner, m.conv_dim, 2 * h], dim=-1)
    dt = torch.cat([dt[..., :h], dt[..., h:].flip(1)], dim=0)
    dt = F.softplus(dt + m.dt_bias)
    if m.dt_limit != (0.0, float('inf')):
        dt = dt.clamp(*m.dt_limit)
    xbc = F.silu(m.conv1d(xbc.transpose(1, 2)).transpose(1, 2))
    x, bc = torch.split(xbc, [m.d_inner, 4 * gn], dim=-1)
    xx = torch.cat([x, x.flip(1)], dim=0)
    bc = torch.cat([bc[..., :2 * gn], bc[..., 2 * gn:].flip(1)], dim=0)
    B, C = torch.split(bc, [gn, gn], dim=-1)
    init = None if m.init_states is None else m.init_states.expand(2 * b, -1, -1, -1)
    y = ssd_scan_ref(xx.unflatten(-1, (h, p)), dt, -torch.exp(m.A_log), B.unflatten(-1, (m.ngroups, -1)),
                     C.unflatten(-1, (m.ngroups, -1)), initial_states=init, chunk_size=None).flatten(-2)
    y = torch.roll(y, shifts=1, dims=1)
    y[:, 0] = 0
    y = y[:b] + y[b:].flip(1) + x * F.linear(x, m.fc_D.weight, m.D).repeat_interleave(p, dim=-1)
    y = F.rms_norm(y, [y.shape[-1]], m.norm.weight, 1e-5) * F.silu(z)
    return m.out_proj(y)


# ----------------------------------------------------------------------------------------- official layout, init
def test_mixer_state_dict_is_the_official_layout():
    m = HydraMixer(192)
    assert list(m.state_dict()) == OFFICIAL_KEYS
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {'dt_bias': (6,), 'A_log': (6,), 'D': (6,), 'in_proj.weight': (1036, 192),
                      'conv1d.weight': (640, 1, 7), 'conv1d.bias': (640,), 'fc_D.weight': (6, 384),
                      'norm.weight': (384,), 'out_proj.weight': (192, 384)}
    assert sum(p.numel() for p in m.parameters()) == 280466
    with torch.device('meta'):
        assert sum(p.numel() for p in HydraMixer(768).parameters()) == 3825224
    opts = HydraMixer(64, headdim=16, learnable_init_states=True, bias=True)
    assert list(opts.state_dict()) == ['init_states'] + OFFICIAL_KEYS[:4] + ['in_proj.bias'] + OFFICIAL_KEYS[4:] \
        + ['out_proj.bias']


def test_official_constructor_arguments_are_accepted():
    """The official README's call (and every other Hydra() argument) ports unchanged."""
    m = HydraMixer(64, d_state=64, d_conv=7, expand=2, use_mem_eff_path=False, chunk_size=128, layer_idx=3,
                   activation='silu', headdim=32, ngroups=1, conv_init=None, dt_limit=(0.0, float('inf')))
    assert m(torch.randn(1, 5, 64)).shape == (1, 5, 64)
    with pytest.raises(ValueError, match='activation'):
        HydraMixer(64, headdim=32, activation='gelu')


def test_official_init():
    m = HydraMixer(64, headdim=16, learnable_init_states=True)
    assert (m.A_log == 0).all() and (m.D == 1).all() and (m.init_states == 0).all()
    dt = F.softplus(m.dt_bias)
    assert (dt >= 1e-3 - 1e-7).all() and (dt <= 0.1 + 1e-6).all()
    model = timm.create_model('hydra_tiny_patch16_224', depth=2)
    w = model.blocks[0].mixer.in_proj.weight
    assert abs(w.std().item() - 0.02) < 0.003   # timm ViT: trunc_normal_(std=.02)
    assert (model.blocks[1].mixer.A_log == 0).all()   # the model-level init leaves the SSM parameters alone


@pytest.mark.parametrize('kwargs, match', [(dict(d_conv=4), 'd_conv must be odd'), (dict(headdim=40), 'headdim'),
                                           (dict(ngroups=4), 'ngroups'), (dict(d_state=0), 'd_state'),
                                           (dict(dt_limit=(0.1, 0.01)), 'dt_limit')])
def test_mixer_rejects_impossible_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HydraMixer(96, **kwargs)   # 192 inner channels: 3 heads of 64


# --------------------------------------------------------------------------------------------- mixer semantics
@pytest.mark.parametrize('kwargs', [dict(), dict(ngroups=2, learnable_init_states=True, bias=True),
                                    dict(dt_limit=(0.002, 0.05), d_conv=3)], ids=['default', 'options', 'dt_limit'])
def test_mixer_equals_the_official_forward(kwargs):
    torch.manual_seed(0)
    m = _randomise(HydraMixer(32, d_state=8, headdim=8, **kwargs)).double()
    u = torch.randn(2, 19, 32, dtype=torch.float64, requires_grad=True)
    expected = _official_forward(m, u)
    got = m(u)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    cot = torch.randn_like(got)
    params = [u] + list(m.parameters())
    for g, e in zip(torch.autograd.grad(got, params, cot), torch.autograd.grad(expected, params, cot)):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_mixer_is_mirror_symmetric():
    """Flipping the tokens and swapping the two directions' weights (B / C / dt rows of in_proj, conv taps mirrored)
    flips the output: the two scans really are each other's mirror image."""
    torch.manual_seed(1)
    m = _randomise(HydraMixer(32, d_state=8, headdim=8)).double()
    mirrored = HydraMixer(32, d_state=8, headdim=8).double()
    mirrored.load_state_dict(m.state_dict())
    di, gn, h = m.d_inner, m.d_state, m.nheads
    rows = list(range(m.in_proj.weight.shape[0]))
    b_f, b_b = slice(2 * di, 2 * di + 2 * gn), slice(2 * di + 2 * gn, 2 * di + 4 * gn)
    rows[b_f], rows[b_b] = rows[b_b], rows[b_f]
    dt_f, dt_b = slice(2 * di + 4 * gn, 2 * di + 4 * gn + h), slice(2 * di + 4 * gn + h, None)
    rows[dt_f], rows[dt_b] = rows[dt_b], rows[dt_f]
    conv_rows = list(range(m.conv_dim))
    c_f, c_b = slice(di, di + 2 * gn), slice(di + 2 * gn, None)
    conv_rows[c_f], conv_rows[c_b] = conv_rows[c_b], conv_rows[c_f]
    with torch.no_grad():
        mirrored.in_proj.weight.copy_(m.in_proj.weight[rows])
        mirrored.conv1d.weight.copy_(m.conv1d.weight[conv_rows].flip(-1))
        mirrored.conv1d.bias.copy_(m.conv1d.bias[conv_rows])
    u = torch.randn(2, 15, 32, dtype=torch.float64)
    torch.testing.assert_close(mirrored(u.flip(1)), m(u).flip(1), rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not HAS_CXX, reason='no C++ compiler')
def test_backends_agree_in_the_model():
    model = _randomise(timm.create_model('test_hydra', num_classes=5), scale=0.05).train()
    x = torch.randn(2, 3, 64, 64)
    results = {}
    for backend in ('reference', 'cpu'):
        model.zero_grad(set_to_none=True)
        with use_backend(backend):
            out = model(x)
        out.pow(2).mean().backward()
        results[backend] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results['cpu'][0], results['reference'][0], rtol=1e-4, atol=1e-5)
    for name, g in results['reference'][1].items():
        torch.testing.assert_close(results['cpu'][1][name], g, rtol=1e-3, atol=1e-6, msg=name)


def test_bf16_autocast_is_finite_and_close():
    model = timm.create_model('test_hydra').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() / ref.abs().max() < 0.1


def test_no_weight_decay_covers_the_ssm_parameters():
    model = timm.create_model('test_hydra', mixer_kwargs=dict(learnable_init_states=True))
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    by_decay = {g['weight_decay']: {id(p) for p in g['params']} for g in groups}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[i] for i in by_decay[0.0]}
    decay = {names[i] for i in by_decay[0.05]}
    mixer = 'blocks.0.mixer.'
    assert {'pos_embed', mixer + 'init_states', mixer + 'dt_bias', mixer + 'A_log', mixer + 'D'} <= no_decay
    assert {mixer + 'in_proj.weight', mixer + 'fc_D.weight', mixer + 'conv1d.weight'} <= decay   # as upstream


# -------------------------------------------------------------------------------------------- sizes, checkpoints
def test_dynamic_img_size_runs_any_size_and_matches_set_input_size():
    dynamic = timm.create_model('test_hydra', dynamic_img_size=True).eval()
    fixed = timm.create_model('test_hydra').eval()
    fixed.load_state_dict(dynamic.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), fixed(x), rtol=0, atol=0)
        assert dynamic(torch.randn(1, 3, 80, 48)).shape == (1, 1000)   # 5 x 3 patches
        padded = timm.create_model('test_hydra', dynamic_img_size=True, dynamic_img_pad=True).eval()
        assert padded(torch.randn(1, 3, 80, 50)).shape == (1, 1000)    # padded to 5 x 4 patches
        with pytest.raises((ValueError, AssertionError)):
            fixed(torch.randn(1, 3, 96, 64))
        fixed.set_input_size(img_size=(96, 64))
        y = torch.randn(1, 3, 96, 64)
        torch.testing.assert_close(fixed(y), dynamic(y), rtol=1e-5, atol=1e-6)
        maps = dynamic.forward_intermediates(y, indices=2, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 32, 6, 4)] * 2


def test_checkpoint_filter_unwraps_and_resamples_pos_embed():
    small = timm.create_model('test_hydra')
    big = timm.create_model('test_hydra', img_size=96)
    state = checkpoint_filter_fn({'model': {f'module.{k}': v for k, v in small.state_dict().items()}}, big)
    assert state['pos_embed'].shape == (1, 36, 32)
    big.load_state_dict(state, strict=True)
    with pytest.raises(ValueError, match='not a square grid'):
        checkpoint_filter_fn({'pos_embed': torch.zeros(1, 15, 32)}, big)


def test_class_token_variant_and_pool_options():
    model = timm.create_model('test_hydra', class_token=True, global_pool='token').eval()
    assert model.pos_embed.shape == (1, 17, 32)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 0])
        maps = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert maps[0].shape == (2, 32, 4, 4)   # the class token is not part of the maps
    with pytest.raises(ValueError, match='class_token'):
        timm.create_model('test_hydra', global_pool='token')


def test_features_only_through_timm():
    model = timm.create_model('test_hydra', features_only=True, out_indices=(1, 3)).eval()
    assert model.feature_info.channels() == [32, 32] and model.feature_info.reduction() == [16, 16]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 4, 4)] * 2
    assert math.isfinite(sum(f.sum().item() for f in feats))
