"""BiFormer family tests: official layout and checkpoint loading, auto_pad, memory-lean routed attention vs the
official gather formulation, n_win override, MACs."""
import pytest
import timm
import torch

import vimzoo  # noqa: F401
from vimzoo.models.biformer import (BiLevelRoutingAttention, region_attention, region_attention_naive)


def _tiny(**kwargs):
    return timm.create_model('test_biformer', **kwargs)


def test_official_state_dict_layout():
    with torch.device('meta'):
        model = timm.create_model('biformer_tiny')
    sd = model.state_dict()
    assert len(sd) == 264  # official biformer_tiny state_dict entries (incl. BN buffers)
    expected = {
        'downsample_layers.0.0.weight': (32, 3, 3, 3), 'downsample_layers.0.4.running_var': (64,),
        'downsample_layers.3.0.weight': (512, 256, 3, 3),
        'stages.0.0.pos_embed.weight': (64, 1, 3, 3), 'stages.0.0.attn.lepe.weight': (64, 1, 5, 5),
        'stages.0.0.attn.qkv.qkv.weight': (192, 64), 'stages.0.0.attn.qkv.qkv.bias': (192,),
        'stages.2.7.attn.wo.weight': (256, 256), 'stages.2.7.mlp.0.weight': (768, 256),
        'stages.2.7.mlp.3.weight': (256, 768),
        'stages.3.1.attn.qkv.weight': (1536, 512), 'stages.3.1.attn.proj.bias': (512,),
        'stages.3.1.attn.lepe.weight': (512, 1, 5, 5), 'norm.running_mean': (512,), 'head.weight': (1000, 512),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert 'stages.3.1.attn.qkv.bias' not in sd
    assert list(k for k in sd if k.startswith('stages.3.0.'))[4:9] == [
        'stages.3.0.attn.qkv.weight', 'stages.3.0.attn.proj.weight', 'stages.3.0.attn.proj.bias',
        'stages.3.0.attn.lepe.weight', 'stages.3.0.attn.lepe.bias']
    bra = model.stages[1][0].attn
    assert bra.num_heads == 4 and bra.scale == pytest.approx(128 ** -0.5)  # full qk_dim scale (legacy quirk)
    with torch.device('meta'):
        base = timm.create_model('biformer_base')
    assert base.stages[3][0].attn.num_heads == 8 and base.stages[2][0].attn.scale == pytest.approx(384 ** -0.5)


def test_checkpoint_filter_through_create_model(tmp_path):
    src = _tiny().eval()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    official = {'model': {'module.' + k: v for k, v in src.state_dict().items()}, 'epoch': 299}
    path = tmp_path / 'biformer_official.pth'
    torch.save(official, path)
    model = timm.create_model('test_biformer', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
    # another class count: backbone loads, classifier is new
    other = timm.create_model('test_biformer', pretrained=True, num_classes=7,
                              pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(other.stages[0][0].attn.wo.weight, src.stages[0][0].attn.wo.weight)
    assert other.head.weight.shape == (7, 64)
    # features_only from the same file
    feats = timm.create_model('test_biformer', pretrained=True, features_only=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        outs = feats(x)
        _, ref = src.forward_intermediates(x)
    assert [o.shape[1] for o in outs] == [16, 32, 48, 64] and feats.feature_info.reduction() == [4, 8, 16, 32]
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('size', [(64, 64), (70, 45), (33, 97)])
def test_auto_pad_any_size(size):
    model = _tiny().eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    for f, red in zip(feats, (4, 8, 16, 32)):
        assert f.shape[-2:] == tuple(-(-s // red) for s in size)  # ceil: 3x3/s2/p1 convs


def test_auto_pad_off_divisible_same_and_odd_raises():
    model = _tiny().eval()
    strict = _tiny(auto_pad=False).eval()
    strict.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(strict(x), model(x), rtol=0, atol=0)
        with pytest.raises(ValueError, match='not divisible by n_win'):
            strict(torch.randn(1, 3, 72, 64))


def test_padding_is_not_masked():
    """Legacy auto_pad: zero rows of the normed input become q=k=v=bias tokens that take part in the attention."""
    attn = BiLevelRoutingAttention(8, num_heads=2, n_win=2, topk=4).eval()
    x = torch.randn(1, 3, 4, 8)
    with torch.no_grad():
        out = attn(x)
        attn.qkv.qkv.bias.add_(1.)  # only padded tokens (zero input) and the real ones change through the bias
        out_b = attn(x)
    assert out.shape == (1, 3, 4, 8)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 1))
    with torch.no_grad():
        torch.testing.assert_close(attn(padded)[:, :3], out_b)  # explicit zero rows == auto_pad


def _rand_routing(n, r, k, gen):
    return torch.stack([torch.randperm(r, generator=gen)[:k] for _ in range(n * r)]).view(n, r, k)


@pytest.mark.parametrize('chunk_elems', [2 ** 24, 1000, 1])
def test_lean_equals_naive_values_and_grads(chunk_elems):
    gen = torch.Generator().manual_seed(0)
    n, r, t, qk, c, heads, k = 2, 9, 6, 12, 8, 2, 4
    qkv = torch.randn(n, r, t, 2 * qk + c, generator=gen, dtype=torch.float64, requires_grad=True)
    r_idx = _rand_routing(n, r, k, gen)
    weight = torch.randn(n, r, t, c, generator=gen, dtype=torch.float64)
    results = []
    for fn in (lambda q, kv: region_attention(q, kv, r_idx, heads, 0.37, chunk_elems),
               lambda q, kv: region_attention_naive(q, kv, r_idx, heads, 0.37)):
        qkv.grad = None
        out = fn(qkv[..., :qk], qkv[..., qk:])
        (out * weight).sum().backward()
        results.append((out.detach(), qkv.grad.clone()))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # inference path (no autograd function) with the same chunking
        torch.testing.assert_close(region_attention(qkv[..., :qk], qkv[..., qk:], r_idx, heads, 0.37, chunk_elems), o2)


def test_lean_model_equals_naive_model():
    lean = _tiny(drop_path_rate=0.).train()
    naive = _tiny(attn_impl='naive').train()
    naive.load_state_dict(lean.state_dict())
    x = torch.randn(2, 3, 64, 64)
    out_l, out_n = lean(x), naive(x)
    torch.testing.assert_close(out_l, out_n, rtol=1e-5, atol=1e-5)
    out_l.square().mean().backward()
    out_n.square().mean().backward()
    scale = max(p.grad.abs().max() for p in naive.parameters())
    for (name, p), q in zip(lean.named_parameters(), naive.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-5 * scale, name


def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_lean_saves_no_topk_copies():
    """Autograd-saved bytes: the official formulation keeps the topk-fold gathered K/V; the lean one does not."""
    gen = torch.Generator().manual_seed(0)
    n, r, t, qk, c, heads, k = 1, 49, 16, 32, 32, 2, 16
    qkv = torch.randn(n, r, t, 2 * qk + c, generator=gen, requires_grad=True)
    r_idx = _rand_routing(n, r, k, gen)
    lean = _saved_bytes(lambda: region_attention(qkv[..., :qk], qkv[..., qk:], r_idx, heads, 0.2))
    naive = _saved_bytes(lambda: region_attention_naive(qkv[..., :qk], qkv[..., qk:], r_idx, heads, 0.2))
    kv_copy = n * r * k * t * (qk + c) * 4
    assert naive >= kv_copy  # gathered K/V are saved for backward
    assert lean <= qkv.numel() * 4 * 2 + r_idx.numel() * 8
    assert lean * 4 < naive


def test_n_win_override():
    base = _tiny().eval()
    other = _tiny(n_win=2).eval()
    other.load_state_dict(base.state_dict())
    assert all(m.n_win == 2 for m in other.modules() if isinstance(m, BiLevelRoutingAttention))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = base(x), other(x)
        assert not torch.allclose(a, b)  # a different routing grid is a different attention pattern
        base.set_n_win(2)
        torch.testing.assert_close(base(x), b)
        base.set_n_win(16)  # topk clamps to n_win**2 where needed; bigger grid than the map pads
        assert torch.isfinite(base(x)).all()


def test_routing_gets_no_gradient():
    """Routing runs on detached region means: perturbing it (here: choosing other regions) must not need grads,
    and the lean backward equals autograd through the naive path with the same fixed indices (covered above)."""
    attn = BiLevelRoutingAttention(16, num_heads=2, n_win=2, topk=1)
    x = torch.randn(1, 4, 4, 16, requires_grad=True)
    attn(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_tiny_macs_match_readme():
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device('meta'):
        model = timm.create_model('biformer_tiny').eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224, device='meta'))
    macs = counter.get_total_flops() / 2
    assert abs(macs / 1e9 - 2.216) < 0.02, macs  # official code measured 2.216 G, README 2.2 G
