"""VAN: official checkpoint layout and loading, LKA as documented, 4-level features, stability."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vimzoo
from vimzoo.models.van import LKA, VAN

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

# stage widths / depths / mlp ratios of the official registered models (VAN-Classification models/van.py)
OFFICIAL_ARCHS = {
    'van_b0': ((32, 64, 160, 256), (3, 3, 5, 2)),
    'van_b1': ((64, 128, 320, 512), (2, 2, 4, 2)),
    'van_b2': ((64, 128, 320, 512), (3, 3, 12, 3)),
    'van_b3': ((64, 128, 320, 512), (3, 5, 27, 3)),
    'van_b4': ((64, 128, 320, 512), (3, 6, 40, 3)),
    'van_b5': ((96, 192, 480, 768), (3, 3, 24, 3)),
    'van_b6': ((96, 192, 384, 768), (6, 6, 90, 6)),
}
TEST_ARCH = ((16, 24, 32, 48), (1, 1, 2, 1), (4, 4, 2, 2))


def official_layout(dims, depths, ratios=(8, 8, 4, 4), in_chans=3, num_classes=1000):
    """Key -> shape of an official VAN state_dict, written from the documented layout (not from our module)."""
    shapes = {}

    def bn(prefix, c):
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{prefix}.{name}'] = (c,)
        shapes[f'{prefix}.num_batches_tracked'] = ()

    prev = in_chans
    for i, (c, d, r) in enumerate(zip(dims, depths, ratios), 1):
        k = 7 if i == 1 else 3
        shapes[f'patch_embed{i}.proj.weight'] = (c, prev, k, k)
        shapes[f'patch_embed{i}.proj.bias'] = (c,)
        bn(f'patch_embed{i}.norm', c)
        hidden = int(c * r)
        for j in range(d):
            p = f'block{i}.{j}'
            shapes[f'{p}.layer_scale_1'] = (c,)
            shapes[f'{p}.layer_scale_2'] = (c,)
            bn(f'{p}.norm1', c)
            bn(f'{p}.norm2', c)
            for name, shape in (('proj_1', (c, c, 1, 1)), ('spatial_gating_unit.conv0', (c, 1, 5, 5)),
                                ('spatial_gating_unit.conv_spatial', (c, 1, 7, 7)),
                                ('spatial_gating_unit.conv1', (c, c, 1, 1)), ('proj_2', (c, c, 1, 1))):
                shapes[f'{p}.attn.{name}.weight'] = shape
                shapes[f'{p}.attn.{name}.bias'] = (c,)
            shapes[f'{p}.mlp.fc1.weight'] = (hidden, c, 1, 1)
            shapes[f'{p}.mlp.fc1.bias'] = (hidden,)
            shapes[f'{p}.mlp.dwconv.dwconv.weight'] = (hidden, 1, 3, 3)
            shapes[f'{p}.mlp.dwconv.dwconv.bias'] = (hidden,)
            shapes[f'{p}.mlp.fc2.weight'] = (c, hidden, 1, 1)
            shapes[f'{p}.mlp.fc2.bias'] = (c,)
        shapes[f'norm{i}.weight'] = (c,)
        shapes[f'norm{i}.bias'] = (c,)
        prev = c
    shapes['head.weight'] = (num_classes, dims[-1])
    shapes['head.bias'] = (num_classes,)
    return shapes


def synthetic_official_checkpoint(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in shapes.items():
        sd[k] = torch.tensor(7) if k.endswith('num_batches_tracked') else torch.randn(s, generator=g) * 0.1
        if k.endswith('running_var'):
            sd[k] = sd[k].abs() + 0.5
    return sd


@pytest.mark.parametrize('name', list(OFFICIAL_ARCHS))
def test_state_dict_layout_equals_official(name):
    dims, depths = OFFICIAL_ARCHS[name]
    with torch.device('meta'):
        model = timm.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_layout(dims, depths)


def test_b6_width_is_the_official_code_width():
    """docs/van.md: 384 at stage 3 as in the official code and seg configs (mmpretrain's 283.9 M implies 480)."""
    with torch.device('meta'):
        model = timm.create_model('van_b6')
    assert model.embed_dims == (96, 192, 384, 768)
    assert sum(p.numel() for p in model.parameters()) == 199829416


def _save(tmp_path, payload, name='van.pth.tar'):
    path = tmp_path / name
    torch.save(payload, path)
    return str(path)


def test_official_checkpoint_loads_through_filter(tmp_path):
    """An official-layout timm-trainer file ('state_dict' + argparse `args` + 'module.' prefix) loads strictly."""
    sd = synthetic_official_checkpoint(official_layout(*TEST_ARCH))
    payload = {'epoch': 300, 'arch': 'test_van', 'args': argparse.Namespace(lr=1e-3, model='test_van'),
               'state_dict': {f'module.{k}': v for k, v in sd.items()}}
    model = timm.create_model('test_van', pretrained=True, pretrained_cfg_overlay=dict(file=_save(tmp_path, payload)))
    loaded = model.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 64, 64))).all()


def test_checkpoint_head_adaptation(tmp_path):
    sd = synthetic_official_checkpoint(official_layout(*TEST_ARCH))
    path = _save(tmp_path, {'state_dict': sd})
    # num_classes differs from the cfg: timm drops the classifier, the backbone still loads
    model = timm.create_model('test_van', pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=path))
    assert model.head.weight.shape == (10, 48)
    assert torch.equal(model.state_dict()['block3.1.attn.spatial_gating_unit.conv_spatial.weight'],
                       sd['block3.1.attn.spatial_gating_unit.conv_spatial.weight'])
    # a head of another size inside the file (e.g. ImageNet-22k) is not forced into a 1000-class model
    sd22k = synthetic_official_checkpoint(official_layout(*TEST_ARCH, num_classes=21841))
    with pytest.warns(UserWarning, match='classifier stays randomly initialised'):
        model = timm.create_model('test_van', pretrained=True,
                                  pretrained_cfg_overlay=dict(file=_save(tmp_path, {'state_dict': sd22k}, 'x.pth')))
    assert model.head.weight.shape == (1000, 48)
    assert torch.equal(model.state_dict()['norm4.weight'], sd22k['norm4.weight'])


def test_checkpoint_width_mismatch_is_a_clear_error(tmp_path):
    dims, depths, ratios = TEST_ARCH
    wrong = synthetic_official_checkpoint(official_layout((16, 24, 40, 48), depths, ratios))
    with pytest.raises(ValueError, match='stage 3 has width 40 but the model has 32'):
        timm.create_model('test_van', pretrained=True,
                          pretrained_cfg_overlay=dict(file=_save(tmp_path, {'state_dict': wrong})))


def test_mmpretrain_layout_loads(tmp_path):
    sd = synthetic_official_checkpoint(official_layout(*TEST_ARCH))
    mm = {}
    for k, v in sd.items():
        if k.startswith('head.'):
            mm['head.fc.' + k[len('head.'):]] = v
            continue
        k2 = k.replace('.proj.', '.projection.').replace('conv_spatial', 'DW_D_conv').replace('conv0', 'DW_conv')
        k2 = k2.replace('mlp.dwconv.dwconv.', 'mlp.dwconv.')
        k2 = 'blocks' + k2[len('block'):] if k2.startswith('block') else k2
        mm['backbone.' + k2] = v
    model = timm.create_model('test_van', pretrained=True,
                              pretrained_cfg_overlay=dict(file=_save(tmp_path, {'state_dict': mm})))
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_lka_is_documented_operator():
    lka = LKA(6).eval()
    assert (lka.conv0.kernel_size, lka.conv0.padding, lka.conv0.groups) == ((5, 5), (2, 2), 6)
    cs = lka.conv_spatial
    assert (cs.kernel_size, cs.dilation, cs.padding, cs.groups) == ((7, 7), (3, 3), (9, 9), 6)
    assert lka.conv1.kernel_size == (1, 1) and lka.conv1.groups == 1
    x = torch.randn(2, 6, 20, 24)
    attn = F.conv2d(x, lka.conv0.weight, lka.conv0.bias, padding=2, groups=6)
    attn = F.conv2d(attn, cs.weight, cs.bias, padding=9, dilation=3, groups=6)
    attn = F.conv2d(attn, lka.conv1.weight, lka.conv1.bias)
    with torch.no_grad():
        torch.testing.assert_close(lka(x), x * attn)  # plain product, no sigmoid


def test_lka_receptive_field_is_23():
    """5x5 followed by 7x7 with dilation 3 covers (5 - 1) + (7 - 1) * 3 + 1 = 23 pixels per side."""
    lka = LKA(1)
    with torch.no_grad():
        for conv in (lka.conv0, lka.conv_spatial, lka.conv1):
            conv.weight.fill_(1.)
            conv.bias.zero_()
        impulse = torch.zeros(1, 1, 41, 41)
        impulse[0, 0, 20, 20] = 1.
        support = lka.conv1(lka.conv_spatial(lka.conv0(impulse)))[0, 0] != 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (23, 23)


@pytest.mark.parametrize('size', [(64, 64), (65, 97)])
def test_four_level_features(size):
    model = timm.create_model('test_van', features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [16, 24, 32, 48]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    for f, r, c in zip(feats, [4, 8, 16, 32], [16, 24, 32, 48]):
        assert f.shape == (1, c, -(-size[0] // r), -(-size[1] // r))
    ref = timm.create_model('test_van').eval()
    ref.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        inter = ref.forward_intermediates(torch.randn(1, 3, 64, 64), indices=[1, 3], intermediates_only=True)
    assert [t.shape[1] for t in inter] == [24, 48]


def test_stage_features_are_post_layernorm():
    model = timm.create_model('test_van').eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(2, 3, 64, 64), intermediates_only=True)
    for f, i in zip(feats, range(1, 5)):
        norm = getattr(model, f'norm{i}')
        z = (f - norm.bias[:, None, None]) / norm.weight[:, None, None]
        torch.testing.assert_close(z.mean(1), torch.zeros_like(z.mean(1)), atol=1e-4, rtol=0)


def test_default_cfgs():
    cfg = timm.create_model('van_b0', pretrained=False).pretrained_cfg
    assert cfg['mean'] == (0.5, 0.5, 0.5) and cfg['std'] == (0.5, 0.5, 0.5)
    assert cfg['crop_pct'] == 0.9 and cfg['interpolation'] == 'bicubic' and cfg['tag'] == 'in1k'
    assert cfg['hf_hub_id'] == 'Visual-Attention-Network/VAN-Tiny-original'
    for name in ('van_b5', 'van_b6'):  # only 22k weights exist; the default model is still the 1k classifier
        with torch.device('meta'):
            m = timm.create_model(name)
        assert m.num_classes == 1000 and m.pretrained_cfg['tag'] == 'untrained'
    assert 'van_b6.in22k' in timm.list_pretrained('van_b6*')


@pytest.mark.parametrize('autocast', [False, True], ids=['fp32', 'bf16-autocast'])
def test_stable_after_sgd_steps(autocast):
    model = timm.create_model('test_van', num_classes=10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(6):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_listed_in_zoo():
    assert vimzoo.list_models('van') == [f'van_b{i}' for i in range(7)]
    assert isinstance(timm.create_model('test_van'), VAN)


@pytest.mark.skipif(not os.environ.get('VAN_OFFICIAL_REPO'), reason='set VAN_OFFICIAL_REPO to a VAN-Classification '
                    'checkout to run the official-code parity check')
def test_parity_with_official_code():
    cmd = [sys.executable, str(ROOT / 'tools' / 'parity_van.py'), '--official-repo', os.environ['VAN_OFFICIAL_REPO'],
           '--variants', 'van_b0', 'van_b1']
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
