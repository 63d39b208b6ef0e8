"""timm-backed families (DaViT, ConViT, HaloNet): the zoo reuses timm's code, never shadows timm names, and the
HaloNet paper variants it adds (H0, H2-H7 on timm's ByobNet + HaloAttn) have the paper's parameter counts."""
import dataclasses
import subprocess
import sys

import pytest
import timm
import torch
from timm.models.byobnet import ByobNet, SelfAttnBlock
from timm.models.convit import ConVit
from timm.models.davit import DaVit

import vimzoo
from vimzoo.models.convit import TIMM_CONVIT_MODELS, ZooConVit, create_zoo_convit
from vimzoo.models.davit import TIMM_DAVIT_MODELS, ZooDaVit
from vimzoo.models.halonet import (
    HALONET_PAPER, TIMM_HALONET_MODELS, HaloValueBlock, ZooByobNet, halonet_cfg, model_cfgs)

ADOPTED = {'davit': TIMM_DAVIT_MODELS, 'convit': TIMM_CONVIT_MODELS, 'halonet': TIMM_HALONET_MODELS}
ADDED_HALONETS = [n for n in HALONET_PAPER if n != 'halonet_h1']


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


# ---------------------------------------------------------------------------------------------- no shadowing


@pytest.mark.parametrize('family', sorted(ADOPTED))
def test_adopted_models_are_timms_own(family):
    for name in ADOPTED[family]:
        assert vimzoo.family_of(name) == family
        module = timm.models.model_entrypoint(name).__module__
        assert module.startswith('timm.models.'), f'{name} is registered by {module}, not timm'
    assert timm.models.model_entrypoint('davit_tiny').__module__ == 'timm.models.davit'
    assert timm.models.model_entrypoint('convit_tiny').__module__ == 'timm.models.convit'
    assert timm.models.model_entrypoint('halonet_h1').__module__ == 'timm.models.byoanet'


def test_added_models_are_new_names():
    for name in ADDED_HALONETS + ['test_halonet']:
        assert timm.models.model_entrypoint(name).__module__ == 'vimzoo.models.halonet'
    assert timm.models.model_entrypoint('test_davit').__module__ == 'vimzoo.models.davit'
    assert timm.models.model_entrypoint('test_convit').__module__ == 'vimzoo.models.convit'


def test_import_overwrites_no_timm_entrypoint():
    """Every model timm registers by itself keeps its entrypoint (and no 'Overwriting' warning) once vimzoo loads."""
    code = (
        'import warnings; warnings.simplefilter("error")\n'
        'import timm\n'
        'before = {n: timm.models.model_entrypoint(n) for n in timm.list_models()}\n'
        'import vimzoo\n'
        'changed = [n for n, fn in before.items() if timm.models.model_entrypoint(n) is not fn]\n'
        'assert not changed, changed\n'
        'added = set(timm.list_models()) - set(before)\n'
        'assert {"halonet_h0", "halonet_h7", "test_davit", "test_convit", "test_halonet"} <= added, added\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True)


# ------------------------------------------------------------------------------------------- tiny variants


def test_test_variants_are_built_from_timm_classes():
    for name, zoo_cls, timm_cls in (('test_davit', ZooDaVit, DaVit), ('test_convit', ZooConVit, ConVit),
                                    ('test_halonet', ZooByobNet, ByobNet)):
        assert name in vimzoo.list_models(include_test=True)
        model = timm.create_model(name)
        assert type(model) is zoo_cls and isinstance(model, timm_cls)
        assert model.pretrained_cfg['input_size'] == (3, 64, 64)
        assert isinstance(model.no_weight_decay(), set)


def test_convit_gradient_checkpointing_added():
    """timm's ConVit refuses checkpointing; ZooConVit checkpoints every block with identical numbers."""
    with pytest.raises(AssertionError):
        ConVit(img_size=32, patch_size=8, embed_dim=8, num_heads=4, depth=2).set_grad_checkpointing(True)
    model = timm.create_model('test_convit').train()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    ref.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    out = model(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


@pytest.mark.parametrize('name', TIMM_CONVIT_MODELS)
def test_zoo_convit_full_size_matches_timm(name):
    ref = _meta(name)
    with torch.device('meta'):
        zoo = create_zoo_convit(name)
    assert {k: v.shape for k, v in zoo.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert zoo.pretrained_cfg['hf_hub_id'] == f'timm/{name}.fb_in1k'


# ------------------------------------------------------------------------------------------ HaloNet variants


def test_paper_table_matches_metafile():
    variants = {v['name']: v for v in vimzoo.model_index()['halonet']['variants']}
    for name, paper in HALONET_PAPER.items():
        assert variants[name]['params'] == round(paper['params_m'] * 1e6)
        assert variants[name]['top1'] == paper['top1'] and variants[name]['img_size'] == paper['img_size']


@pytest.mark.parametrize('name', list(HALONET_PAPER))
def test_paper_variant_param_count_on_meta(name):
    model = _meta(name)
    official = next(v['params'] for v in vimzoo.model_index()['halonet']['variants'] if v['name'] == name)
    count = _count(model)
    assert abs(count - official) / official <= 0.005, f'{name}: {count:,} vs paper {official:,}'
    cfg = timm.models.get_pretrained_cfg(name)
    b, img = HALONET_PAPER[name]['b'], HALONET_PAPER[name]['img_size']
    assert cfg.min_input_size == (3, 32 * b, 32 * b)
    assert cfg.input_size == ((3, img, img) if img % (32 * b) == 0 else (3, 640, 640))  # H7: 600 -> 640
    assert cfg.pool_size == (cfg.input_size[1] // 32, cfg.input_size[2] // 32)


def test_h1_cfg_reproduces_timms_halonet_h1():
    """The zoo's (b, h, r_v, r_b, l_3, d_f) mapping rebuilds timm's own H1 layer for layer."""
    with torch.device('meta'):
        ours = ZooByobNet(halonet_cfg(**HALONET_PAPER['halonet_h1']))
    theirs = _meta('halonet_h1')
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_value_ratio_widens_only_values():
    """r_v (H5: 2.5) scales the value width; queries/keys stay at the bottleneck width, the output at c = w * r_b."""
    model = _meta('halonet_h5')
    block = model.stages[2][1]  # third stage, base width 256, r_b 2 -> 512 out, r_v 2.5 -> 640 value channels
    assert isinstance(block, HaloValueBlock)
    assert block.conv1_1x1.conv.out_channels == 256
    assert block.self_attn.q.out_channels == 256 and block.self_attn.kv.out_channels == 256 + 640
    assert block.post_attn.num_features == 640
    assert block.conv3_1x1.conv.in_channels == 640 and block.conv3_1x1.conv.out_channels == 512
    assert model.num_features == 1536  # d_f
    # r_v == 1 keeps timm's SelfAttnBlock itself
    assert type(_meta('halonet_h4').stages[0][0]) is SelfAttnBlock


def _shallow(name: str) -> ZooByobNet:
    """The variant with one block per stage (same b, h, r_v, r_b, d_f): the full depths cost ~90 s on 2 CPU cores."""
    cfg = model_cfgs[name]
    cfg = dataclasses.replace(cfg, blocks=tuple(dataclasses.replace(b, d=1) for b in cfg.blocks))
    return ZooByobNet(cfg, input_multiple=32 * HALONET_PAPER[name]['b']).eval()


@pytest.mark.parametrize('name', list(HALONET_PAPER))
def test_paper_variant_forward_smallest_size(name):
    b = HALONET_PAPER[name]['b']
    size = 32 * b  # smallest input: the last (stride 32) stage must hold one b x b attention block
    model = _shallow(name)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out = model(x)
        final, feats = model.forward_intermediates(x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert [f.shape[-1] for f in feats[-4:]] == [size // 4, size // 8, size // 16, size // 32]
    assert final.shape[1] == model.num_features


def test_full_depth_h0_forward():
    model = timm.create_model('halonet_h0').eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_input_not_multiple_of_block_grid_is_a_clear_error():
    model = _shallow('halonet_h7')
    with pytest.raises(ValueError, match='multiples of 320'):
        model(torch.randn(1, 3, 600, 600))
    with pytest.raises(ValueError, match='at least'):
        model(torch.randn(1, 3, 160, 160))
    cfg = timm.models.get_pretrained_cfg('halonet_h7')
    assert cfg.input_size == (3, 640, 640)


def test_convit_grid_rel_indices_match_timm_for_square_grids():
    from timm.models.convit import GPSA
    from vimzoo.models.convit import grid_rel_indices
    gpsa = GPSA(16, num_heads=4)
    for side in (2, 5, 14):
        assert torch.equal(gpsa.get_rel_indices(side * side), grid_rel_indices(side, side))
    rel = grid_rel_indices(2, 3)  # token 1 = (y0, x1), token 5 = (y1, x2): dx 1, dy 1
    assert rel[0, 1, 5].tolist() == [1.0, 1.0, 2.0] and rel[0, 5, 1].tolist() == [-1.0, -1.0, 2.0]


def test_convit_dynamic_img_size_for_dense_prediction():
    """Native size: bit-identical to timm's ConVit; other (non-square) sizes run and give NCHW maps."""
    ref = timm.create_model('test_convit').eval()
    dyn = timm.create_model('test_convit', dynamic_img_size=True).eval()
    dyn.load_state_dict(ref.state_dict())
    plain = ConVit(img_size=64, patch_size=8, embed_dim=16, num_heads=4, depth=4, local_up_to_layer=2).eval()
    plain.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = plain(x)
        assert torch.equal(ref(x), expected) and torch.equal(dyn(x), expected)
        with pytest.raises(AssertionError):
            ref(torch.randn(1, 3, 48, 96))  # timm's strict patch embed
        out = dyn(torch.randn(1, 3, 48, 96))
        feats = dyn.forward_intermediates(torch.randn(1, 3, 48, 96), intermediates_only=True)
        assert torch.equal(dyn(x), expected)  # back at the native grid, GPSA positions are rebuilt
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert all(f.shape == (1, 64, 6, 12) for f in feats)


def test_halonet_features_only_default_is_four_stages():
    model = timm.create_model('test_halonet', features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    with_stem = timm.create_model('test_halonet', features_only=True, out_indices=(0, 1, 2, 3, 4))
    assert with_stem.feature_info.reduction() == [2, 4, 8, 16, 32]


@pytest.mark.parametrize('family', ['davit', 'convit'])
def test_timm_counts_equal_official_code_exactly(family):
    """models/<family>.yml counts were measured on the official code; timm's implementation matches them exactly."""
    for variant in vimzoo.model_index()[family]['variants']:
        assert _count(_meta(variant['name'])) == variant['params'], variant['name']


def test_halonet_table_discriminates_value_ratio_readings():
    """Negative control for the r_v derivation: the alternative readings miss the paper's H5-H7 counts by >30%."""
    for name in ('halonet_h5', 'halonet_h6', 'halonet_h7'):
        paper = HALONET_PAPER[name]
        official = paper['params_m'] * 1e6
        with torch.device('meta'):
            no_rv = _count(ZooByobNet(halonet_cfg(**dict(paper, rv=1.0))))
            wide = dict(paper, rv=1.0)
            cfg = halonet_cfg(**wide)
            # whole bottleneck widened by r_v (1x1 reduction to w * r_v, q/k kept at w)
            cfg = dataclasses.replace(
                cfg, blocks=tuple(dataclasses.replace(b, br=paper['rv'] / paper['rb']) for b in cfg.blocks),
                self_attn_kwargs=dict(cfg.self_attn_kwargs, qk_ratio=1.0 / paper['rv']))
            widened = _count(ZooByobNet(cfg))
        assert no_rv < 0.7 * official and widened > 1.3 * official, (name, no_rv, widened)


def test_halonet_features_only_rejects_bad_sizes_like_the_model():
    """features_only HaloNets run the model's input check (timm's HaloAttn would fail with a bare assert)."""
    for name, size, match in (('test_halonet', 224, 'multiples of 64'), ('halonet_h0', 224, 'at least 256x256')):
        model = timm.create_model(name).eval()
        features = timm.create_model(name, features_only=True).eval()
        x = torch.randn(1, 3, size, size)
        for net in (model, features):
            with pytest.raises(ValueError, match=match):
                net(x)
