"""Vim / LBVim family tests: official layout and checkpoint loading, middle-class-token pos_embed resampling, any
input size, LBVim's per-layer direction flip and local window, backends, AMP, weight-decay groups."""
import argparse
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

import vimzoo  # noqa: F401  (registers the models)
from vimzoo.models.vim import (checkpoint_filter_fn, join_mid_cls_pos_embed, resample_mid_cls_pos_embed,
                               split_mid_cls_pos_embed)
from vimzoo.ops import kernel_status, lb_window


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (incl. zero-initialised biases) so that each one influences the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _make(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _randomize(timm.create_model(name, **kwargs), seed).eval()


# ------------------------------------------------------------------------------------------------ official layout
def test_vim_tiny_state_dict_is_the_official_layout():
    with torch.device('meta'):
        sd = timm.create_model('vim_tiny_patch16_224').state_dict()
    assert len(sd) == 415
    expected = {
        'cls_token': (1, 1, 192), 'pos_embed': (1, 197, 192), 'patch_embed.proj.weight': (192, 3, 16, 16),
        'patch_embed.proj.bias': (192,), 'head.weight': (1000, 192), 'head.bias': (1000,), 'norm_f.weight': (192,),
    }
    per_layer = {
        'A_log': (384, 16), 'D': (384,), 'A_b_log': (384, 16), 'D_b': (384,), 'in_proj.weight': (768, 192),
        'conv1d.weight': (384, 1, 4), 'conv1d.bias': (384,), 'x_proj.weight': (44, 384), 'dt_proj.weight': (384, 12),
        'dt_proj.bias': (384,), 'conv1d_b.weight': (384, 1, 4), 'conv1d_b.bias': (384,), 'x_proj_b.weight': (44, 384),
        'dt_proj_b.weight': (384, 12), 'dt_proj_b.bias': (384,), 'out_proj.weight': (192, 384),
    }
    for i in range(24):
        expected.update({f'layers.{i}.mixer.{k}': v for k, v in per_layer.items()})
        expected[f'layers.{i}.norm.weight'] = (192,)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # official state_dict() order: embeddings, head, then layers (parameters before submodules), norm_f
    assert list(sd)[:6] == ['cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias',
                            'head.weight', 'head.bias']
    assert list(sd)[6:10] == [f'layers.0.mixer.{k}' for k in ('A_log', 'D', 'A_b_log', 'D_b')]


def test_lbvim_state_dict_is_vim_without_backward_params_and_cls():
    with torch.device('meta'):
        vim = timm.create_model('vim_tiny_patch16_224').state_dict()
        lb = timm.create_model('lbvim_tiny_patch16_224').state_dict()
        lb528 = timm.create_model('lbvim_528_patch16_224').state_dict()
    backward_only = ('A_b_log', 'D_b', 'conv1d_b.', 'x_proj_b.', 'dt_proj_b.')
    expected = {k: tuple(v.shape) for k, v in vim.items()
                if k != 'cls_token' and not any(s in k for s in backward_only)}
    expected['pos_embed'] = (1, 196, 192)
    assert {k: tuple(v.shape) for k, v in lb.items()} == expected
    assert {k for k in lb528 if k.startswith(('head', 'attn_pool'))} == {
        'attn_pool.latent', 'attn_pool.kv.weight', 'attn_pool.kv.bias', 'attn_pool.post_norm.weight',
        'attn_pool.post_norm.bias', 'head.weight', 'head.bias'}


def test_lbvim_528_official_head_keys_load_through_the_filter():
    """The official LBVim-528 head is Sequential(pool, Linear): `head.0.*` / `head.1.*` map to attn_pool / head."""
    model = _make('lbvim_528_patch16_224', depth=2, embed_dim=48, attn_pool_heads=6)
    renames = {'attn_pool.': 'head.0.', 'head.': 'head.1.'}
    official = {}
    for k, v in model.state_dict().items():
        prefix = next((p for p in renames if k.startswith(p)), None)
        official[renames[prefix] + k[len(prefix):] if prefix else k] = v
    assert 'head.0.latent' in official and 'head.1.weight' in official
    fresh = timm.create_model('lbvim_528_patch16_224', depth=2, embed_dim=48, attn_pool_heads=6).eval()
    fresh.load_state_dict(checkpoint_filter_fn({'model': official}, fresh), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_stride8_variants_and_official_init_quirks():
    with torch.device('meta'):
        plus = timm.create_model('vim_tiny_patch16_stride8_224')
    assert plus.pos_embed.shape == (1, 27 * 27 + 1, 192) and plus.feature_info[0]['reduction'] == 8
    model = timm.create_model('vim_tiny_patch16_224', depth=2)
    mixer = model.layers[0].mixer
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1., 17.)).expand(384, -1))
    assert torch.equal(mixer.A_b_log, mixer.A_log) and (mixer.D == 1).all() and (mixer.D_b == 1).all()
    assert (mixer.dt_proj_b.bias == 0).all()  # zeroed by the official model-level init (no _no_reinit flag)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    assert model.layers[0].norm.eps == 1e-5 and model.norm_f.eps == 1e-5


def test_default_cfgs_point_to_official_weights():
    cfg = timm.create_model('vim_tiny_patch16_224', pretrained=False, depth=1).pretrained_cfg
    assert cfg['hf_hub_id'] == 'hustvl/Vim-tiny-midclstok'
    assert cfg['hf_hub_filename'] == 'vim_t_midclstok_76p1acc.pth'
    url, file_name = cfg['url']  # (url, cache file name): see tests/test_pretrained.py
    assert url.endswith('/hustvl/Vim-tiny-midclstok/resolve/main/vim_t_midclstok_76p1acc.pth')
    assert file_name == 'vim_t_midclstok_76p1acc.pth'
    assert cfg['interpolation'] == 'bicubic' and cfg['crop_pct'] == 0.875
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    files = {n: timm.models.get_pretrained_cfg(n).hf_hub_filename for n in (
        'vim_tiny_patch16_stride8_224', 'vim_small_patch16_224', 'vim_small_patch16_stride8_224',
        'vim_base_patch16_224')}
    assert files == {
        'vim_tiny_patch16_stride8_224': 'vim_t_midclstok_ft_78p3acc.pth',
        'vim_small_patch16_224': 'vim_s_midclstok_80p5acc.pth',
        'vim_small_patch16_stride8_224': 'vim_s_midclstok_ft_81p6acc.pth',
        'vim_base_patch16_224': 'vim_b_midclstok_81p9acc.pth'}


# ------------------------------------------------------------------------------------------- checkpoint loading
@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_pretrained_loads_official_checkpoint_file_offline(tmp_path, fmt):
    """An official-layout snapshot ({'model': sd, 'args': Namespace, ...}) or a bare safetensors file."""
    source = _make('test_vim', seed=1)
    sd = source.state_dict()
    path = tmp_path / f'vim.{fmt}'
    if fmt == 'pth':
        torch.save({'model': sd, 'epoch': 299, 'args': argparse.Namespace(model='vim_tiny', lr=5e-4)}, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = timm.create_model('test_vim', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_pretrained_hub_path_uses_official_files(tmp_path, monkeypatch):
    """pretrained=True resolves to hustvl/Vim-tiny-midclstok / vim_t_midclstok_76p1acc.pth and loads the DeiT-style
    snapshot through torch.load(weights_only=True) + the filter (download replaced by a local file: offline)."""
    import timm.models._hub as hub
    source = _make('vim_tiny_patch16_224', seed=9, depth=2)
    path = tmp_path / 'vim_t_midclstok_76p1acc.pth'
    torch.save({'model': source.state_dict(), 'epoch': 299, 'args': argparse.Namespace(model='vim_tiny')}, path)
    requested = []

    def fake_download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        if filename.endswith('.safetensors'):
            raise hub.EntryNotFoundError(f'no {filename}')
        return str(path)

    monkeypatch.setattr(hub, 'hf_hub_download', fake_download)
    loaded = timm.create_model('vim_tiny_patch16_224', pretrained=True, depth=2)
    assert requested[-1] == ('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth')
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k


def test_filter_detects_stride_and_resamples_with_middle_cls():
    """A stride-8 checkpoint (7x7 grid + cls) into a stride-16 model (4x4) and back; cls entry stays in the middle."""
    s8 = _make('test_vim', seed=2, stride=8)   # 64px: (64 - 16) // 8 + 1 = 7 -> 49 + 1 tokens
    s16 = timm.create_model('test_vim')
    assert s8.pos_embed.shape[1] == 50 and s16.pos_embed.shape[1] == 17
    out = checkpoint_filter_fn({'model': s8.state_dict()}, s16)
    pos = out['pos_embed']
    assert pos.shape == (1, 17, 32)
    torch.testing.assert_close(pos[:, 8], s8.pos_embed[:, 24])           # cls: index 49 // 2 -> index 16 // 2
    grid = torch.cat([s8.pos_embed[:, :24], s8.pos_embed[:, 25:]], dim=1)
    expected = resample_abs_pos_embed(grid, [4, 4], [7, 7], num_prefix_tokens=0)
    torch.testing.assert_close(torch.cat([pos[:, :8], pos[:, 9:]], dim=1), expected)
    s16.load_state_dict(out)  # strict: every other key and shape matches
    back = checkpoint_filter_fn(s16.state_dict(), s8)
    assert back['pos_embed'].shape == (1, 50, 32)
    torch.testing.assert_close(back['pos_embed'][:, 24], s8.pos_embed[:, 24])


def test_mid_cls_split_join_roundtrip_and_identity():
    pos = torch.randn(1, 197, 8)
    cls_pos, grid = split_mid_cls_pos_embed(pos)
    assert torch.equal(cls_pos, pos[:, 98:99]) and grid.shape == (1, 196, 8)
    assert torch.equal(join_mid_cls_pos_embed(cls_pos, grid), pos)
    assert resample_mid_cls_pos_embed(pos, (14, 14), (14, 14)) is pos
    new = resample_mid_cls_pos_embed(pos, (16, 12), (14, 14))
    assert new.shape == (1, 16 * 12 + 1, 8) and torch.equal(new[:, 96], pos[:, 98])


# ------------------------------------------------------------------------------------------------- input sizes
@pytest.mark.parametrize('size', [(224, 224), (256, 256), (384, 384), (512, 512), (96, 160), (80, 64)])
def test_dynamic_input_size_equals_model_built_for_that_size(size):
    """On-the-fly pos_embed resampling == a model created at that size and loaded through the checkpoint filter."""
    model = _make('test_vim', seed=3)
    sized = timm.create_model('test_vim', img_size=size).eval()
    sized.load_state_dict(checkpoint_filter_fn(model.state_dict(), sized))
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, sized(x))
        feats = model.forward_features(x)
    assert torch.isfinite(out).all()
    assert feats.shape[1] == (size[0] // 16) * (size[1] // 16) + 1


def test_full_vim_tiny_non_square_input():
    model = timm.create_model('vim_tiny_patch16_224').eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 288))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize('name', ['test_vim', 'test_lbvim'])
def test_forward_intermediates_are_maps_in_original_order(name):
    model = _make(name, seed=4)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=[0, 3], norm=True, intermediates_only=True)
        nhwc = model.forward_intermediates(x, indices=[3], norm=True, output_fmt='NHWC', intermediates_only=True)
        tokens = model.forward_features(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 6)] * 2
    # the normed last map is forward_features without the class token, in raster order
    if model.num_prefix_tokens:
        mid = (tokens.shape[1] - 1) // 2
        tokens = torch.cat([tokens[:, :mid], tokens[:, mid + 1:]], dim=1)
    torch.testing.assert_close(maps[1].flatten(2).transpose(1, 2), tokens)
    torch.testing.assert_close(nhwc[0], maps[1].permute(0, 2, 3, 1))
    feats = timm.create_model(name, features_only=True, out_indices=(1, 2, 3))
    feats.load_state_dict(model.state_dict(), strict=False)
    assert feats.feature_info.channels() == [32, 32, 32] and feats.feature_info.reduction() == [16, 16, 16]
    assert [tuple(f.shape) for f in feats(x)] == [(2, 32, 4, 6)] * 3


# ------------------------------------------------------------------------------------------------------- LBVim
def _lb_scan_independent(u, delta, A, B, C, D, z, bias, window):
    """LBMamba scan written from the paper/kernel math (research notes §3.2), vectorised over windows."""
    delta = F.softplus(delta + bias[:, None])
    a = torch.exp(delta[..., None] * A[:, None])                          # (b, d, l, n)
    b = (delta * u)[..., None] * B.transpose(1, 2)[:, None]
    length = u.shape[-1]
    h, hf = torch.zeros_like(a[:, :, 0]), []
    for t in range(length):
        h = a[:, :, t] * h + b[:, :, t]
        hf.append(h)
    hf = torch.stack(hf, 2)
    pad = (-length) % window
    a_p = F.pad(a, (0, 0, 0, pad), value=1.).unflatten(2, (-1, window))
    b_p = F.pad(b, (0, 0, 0, pad)).unflatten(2, (-1, window))
    hb, local = torch.zeros_like(a_p[:, :, :, 0]), [None] * window
    for k in range(window - 1, -1, -1):                                   # backward inside every window at once
        local[k] = a_p[:, :, :, k] * hb
        hb = local[k] + b_p[:, :, :, k]
    local = torch.stack(local, 3).flatten(2, 3)[:, :, :length]
    y = torch.einsum('bdln,bnl->bdl', hf + local, C) + u * D[:, None]
    return y * F.silu(z)


@pytest.mark.parametrize('reverse', [False, True])
def test_lbvim_mixer_matches_independent_local_bidirectional_scan(reverse):
    model = _make('test_lbvim', seed=5)
    mixer = model.layers[1].mixer
    with torch.no_grad():  # long memory and O(1) steps, so that the window visibly matters
        mixer.A_log.copy_(torch.log(0.05 + torch.rand(mixer.A_log.shape)))
        mixer.dt_proj.bias.copy_(0.5 + 0.5 * torch.randn(mixer.dt_proj.bias.shape))
    x = torch.randn(2, 17, 32)                     # 17 tokens -> W = 4, last window partial
    assert lb_window(17) == 4 and lb_window(196) == 8 and lb_window(257) == 16
    with torch.no_grad():
        got = mixer(x, reverse=reverse)
        xs = x.flip(1) if reverse else x
        xz = mixer.in_proj(xs).transpose(1, 2)
        u, z = xz.chunk(2, 1)
        u = F.silu(mixer.conv1d(u)[..., :17])
        dt, b_mat, c_mat = mixer.x_proj(u.transpose(1, 2)).split([mixer.dt_rank, 8, 8], -1)
        outs = {}
        for window in (4, 8):
            y = _lb_scan_independent(u, (dt @ mixer.dt_proj.weight.T).transpose(1, 2), -torch.exp(mixer.A_log),
                                     b_mat.transpose(1, 2), c_mat.transpose(1, 2), mixer.D, z, mixer.dt_proj.bias,
                                     window)
            outs[window] = mixer.out_proj(y.transpose(1, 2))
            outs[window] = outs[window].flip(1) if reverse else outs[window]
    torch.testing.assert_close(got, outs[4], rtol=1e-4, atol=1e-5)
    assert (got - outs[8]).abs().max() > 1e-3, (got - outs[8]).abs().max()  # the check tells the windows apart


def test_lbvim_equals_official_flip_every_layer_formulation():
    """Official BiVisionMamba flips hidden and residual after every layer; ours runs odd layers mirrored instead."""
    model = _make('test_lbvim', seed=6)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        hidden, _ = model._embed(x)
        residual = None
        for layer in model.layers:
            hidden, residual = layer(hidden, residual, reverse=False)
            hidden, residual = hidden.flip(1), residual.flip(1)
        official = model.head(model.norm_f(hidden, residual)[0].mean(1))
        ours = model(x)
        # direction really alternates: running every layer left-to-right gives something else
        model.alternate_direction = False
        same_direction = model(x)
    torch.testing.assert_close(ours, official, rtol=1e-4, atol=1e-5)
    assert (same_direction - ours).abs().max() > 1e-3


def test_lbvim_528_attention_pool_head():
    model = timm.create_model('lbvim_528_patch16_224', depth=2, embed_dim=48, attn_pool_heads=6).eval()
    assert model.global_pool == 'map' and model.pretrained_cfg['classifier'] == 'head'
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
        pool = model.attn_pool
        kv = pool.kv(tokens).reshape(2, 16, 2, 6, 8)
        q = pool.latent.reshape(1, 6, 8)
        attn = torch.softmax(torch.einsum('hc,bnhc->bhn', q[0], kv[:, :, 0]) / math.sqrt(8), -1)
        want = pool.post_norm(torch.einsum('bhn,bnhc->bhc', attn, kv[:, :, 1]).reshape(2, 48))
        torch.testing.assert_close(pooled, want, rtol=1e-4, atol=1e-5)
        assert model(x).shape == (2, 1000)
        model.reset_classifier(10)
        assert model.attn_pool is pool and model(x).shape == (2, 10)
        model.reset_classifier(0, 'avg')  # timm's ViT rule: other pooling removes the pool, 'map' never adds one
        assert model.attn_pool is None and torch.equal(model(x), tokens.mean(1))
        with pytest.raises(ValueError, match='global_pool="map"'):
            model.reset_classifier(0, 'map')


# ------------------------------------------------------------------------------------------ backends and AMP
@pytest.mark.parametrize('name', ['test_vim', 'test_lbvim'])
def test_reference_and_fast_backend_agree(name):
    if not kernel_status()['cpu']:
        pytest.skip('the C++ CPU scan kernel is not available here; only the reference backend runs')
    ref = _make(name, seed=7, scan_backend='reference', drop_path_rate=0.).train()
    fast = _make(name, seed=7, scan_backend='cpu', drop_path_rate=0.).train()
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for model in (ref, fast):
        out = model(x)
        out.pow(2).mean().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for (n, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=f'grad of {n}')


def test_scan_backend_argument_reaches_every_mixer():
    model = timm.create_model('test_lbvim', scan_backend='reference')
    assert {layer.mixer.scan_backend for layer in model.layers} == {'reference'}


@pytest.mark.parametrize('name', ['test_vim', 'test_lbvim'])
def test_bf16_autocast_forward_is_finite_and_close(name):
    model = _make(name, seed=8)
    x = torch.randn(2, 3, 64, 64)
    residual_dtypes = []
    hook = model.layers[-1].register_forward_hook(lambda m, i, o: residual_dtypes.append(o[1].dtype))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            amp = model(x)
    hook.remove()
    assert residual_dtypes == [torch.float32, torch.float32]  # residual stream stays fp32 under autocast
    assert torch.isfinite(amp).all()
    rel = (amp.float() - ref).abs().max() / ref.abs().max()
    assert rel < 0.02, f'bf16 autocast deviates by {rel:.3g} (relative to max |logit|)'


# --------------------------------------------------------------------------------------------------- optimizer
def test_no_weight_decay_patterns_reach_the_optimizer():
    model = timm.create_model('test_vim')
    from timm.optim import create_optimizer_v2
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g['weight_decay'] == 0. for p in g['params']}
    decay = {names[id(p)] for g in optimizer.param_groups if g['weight_decay'] > 0. for p in g['params']}
    for must in ('pos_embed', 'cls_token', 'layers.0.mixer.A_log', 'layers.3.mixer.A_b_log', 'layers.1.mixer.D',
                 'layers.2.mixer.D_b'):
        assert must in no_decay, must
    assert 'layers.0.mixer.in_proj.weight' in decay and 'layers.0.mixer.x_proj_b.weight' in decay
    assert not any(n.endswith(('A_log', 'A_b_log')) for n in decay)


# ---------------------------------------------------------------------------------------- one class, timm options
def test_lbvim_is_configuration_of_vision_mamba():
    from vimzoo.models.vim import VisionMamba
    lb, vim = timm.create_model('test_lbvim'), timm.create_model('test_vim')
    assert type(lb) is VisionMamba and type(vim) is VisionMamba
    assert lb.cls_token is None and lb.global_pool == 'avg' and lb.alternate_direction
    assert {layer.mixer.local_window for layer in lb.layers} == {'auto'}
    assert {layer.mixer.local_window for layer in vim.layers} == {None}
    fixed = timm.create_model('test_lbvim', local_window=8)
    assert {layer.mixer.window for layer in fixed.layers} == {8}
    for bad in (0, 'wide'):
        with pytest.raises(ValueError, match='local_window'):
            timm.create_model('test_lbvim', local_window=bad)


def test_fixed_local_window_changes_the_scan():
    auto = _make('test_lbvim', seed=9)  # 16 tokens -> W(16) = 4
    wide = timm.create_model('test_lbvim', local_window=8).eval()
    wide.load_state_dict(auto.state_dict())
    same = timm.create_model('test_lbvim', local_window=4).eval()
    same.load_state_dict(auto.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = auto(x)
        torch.testing.assert_close(same(x), ref, rtol=0, atol=0)
        assert (wide(x) - ref).abs().max() > 1e-6


def test_set_input_size_patch_size_and_fixed_size_errors():
    model = _make('test_vim', seed=10, dynamic_img_size=False)
    with pytest.raises(ValueError, match='dynamic_img_size=False'):
        model(torch.randn(1, 3, 80, 64))
    model.set_input_size(img_size=(96, 64), patch_size=8)
    assert model.patch_embed.proj.kernel_size == (8, 8) and model.patch_embed.proj.stride == (8, 8)
    assert model.pos_embed.shape == (1, 12 * 8 + 1, 32) and model.feature_info[0]['reduction'] == 8
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 96, 64))).all()
    plus = timm.create_model('test_vim', stride=8)
    with pytest.raises(ValueError, match='stride'):
        plus.set_input_size(patch_size=8)
