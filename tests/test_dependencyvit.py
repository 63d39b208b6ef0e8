"""DependencyViT (paper re-implementation, no official weights): reversed-attention math, Lite pruning, honest
intermediates, gradients, numerical stability, checkpoint loading."""
import pytest
import timm
import torch
import torch.nn.functional as F

import vimzoo
from vimzoo.models.dependencyvit import DependencyViT, ReversedAttention, init_message_state

torch.set_num_threads(1)


def _dense_reversed_attention(attn: ReversedAttention, x: torch.Tensor, log_m: torch.Tensor):
    """The paper's formulation written out with the full N x N reversed matrix A_R = A_F^T * P * M."""
    B, N, C = x.shape
    H, D = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
    a_f = torch.softmax(q @ k.transpose(-2, -1) / D ** 0.5, dim=-1)  # rows: senders, normalised over keys
    p = torch.softmax(attn.head_selector(x) / 0.1, dim=-1)  # (B, N, H), per token over heads
    m = torch.exp(log_m) * torch.sigmoid(attn.message_controller(x)).squeeze(-1)  # cumulative product
    a_r = a_f.transpose(-2, -1) * p.permute(0, 2, 1)[:, :, None, :] * m[:, None, None, :]  # column = sender
    out = attn.proj((a_r @ v).transpose(1, 2).reshape(B, N, C))
    return out, m, a_r


def test_reversed_attention_matches_dense_formula():
    attn = ReversedAttention(32, num_heads=4).eval()
    x = torch.randn(2, 10, 32)
    log_m = torch.randn(2, 10) * 0.3 - 0.5
    attn.track_dependency = True
    with torch.no_grad():
        out, new_log_m, received = attn(x, log_m, need_received=True)
        ref_out, ref_m, a_r = _dense_reversed_attention(attn, x, log_m)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new_log_m.exp(), ref_m, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(received, a_r.sum(dim=(1, 3)), rtol=1e-5, atol=1e-6)  # messages received per token
    dep = attn.dependency_mask
    torch.testing.assert_close(dep, a_r.sum(dim=1), rtol=1e-5, atol=1e-6)  # A^M: sum over heads
    # each sender distributes exactly its message strength M(i) over receivers (A_F rows and P sum to 1)
    torch.testing.assert_close(dep.sum(dim=1), ref_m, rtol=1e-5, atol=1e-6)


def test_lite_tiny_token_schedule_and_param_count():
    model = timm.create_model('dependencyvit_lite_tiny_patch16_224').eval()
    assert model.prune_layers == (2, 5, 8, 11)
    counts = []
    hooks = [blk.register_forward_hook(lambda m, i, o: counts.append(o[0].shape[1])) for blk in model.blocks]
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    # 1 - k * 0.16 of the 196 tokens after the k-th pruning block (2, 5, 8, 11)
    assert counts == [196, 164, 164, 164, 133, 133, 133, 101, 101, 101, 70, 70]
    assert feats.shape == (1, 70, 192)
    tiny = sum(p.numel() for p in timm.create_model('dependencyvit_tiny_patch16_224').parameters())
    assert sum(p.numel() for p in model.parameters()) == tiny  # pruning adds no parameters


def test_pruning_keeps_tokens_receiving_most_messages():
    model = timm.create_model('test_dependencyvit_lite').eval()
    blk = model.blocks[0]
    assert blk.keep_ratio == 0.75
    x, _ = model._embed(torch.randn(2, 3, 64, 64))
    log_m, pos_idx = init_message_state(x)
    with torch.no_grad():
        _, _, received = blk.attn(blk.norm1(x), log_m, need_received=True)
        out, _, kept = blk(x, log_m, pos_idx, x.shape[1])
    assert out.shape[1] == kept.shape[1] == 48
    for b in range(2):
        expected = set(received[b].topk(48).indices.tolist())
        assert set(kept[b].tolist()) == expected
        assert received[b, kept[b]].min() >= received[b].kthvalue(64 - 48).values  # dropped ones are the leaves
        assert torch.all(kept[b][1:] > kept[b][:-1])  # raster order preserved


def test_lite_intermediates_scatter_to_grid():
    model = timm.create_model('test_dependencyvit_lite').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        tokens = model.forward_intermediates(x, output_fmt='NLC', intermediates_only=True)
        reference = model.forward_features(x)
    torch.testing.assert_close(final, reference)
    assert final.shape == (2, 32, 32)  # 64 tokens -> 48 (block 1) -> 32 (block 3)
    kept_per_block = [48, 48, 32, 32]
    for feat, tok, kept in zip(maps, tokens, kept_per_block):
        assert feat.shape == (2, 32, 8, 8)
        nonzero = feat.abs().sum(1).flatten(1) > 0
        assert nonzero.sum(1).tolist() == [kept, kept]
        torch.testing.assert_close(feat.flatten(2).transpose(1, 2), tok)
    # pruning is monotone: a position dropped earlier stays empty later
    assert torch.all((maps[3].abs().sum(1) > 0) <= (maps[1].abs().sum(1) > 0))


def test_unpruned_intermediates_are_block_outputs():
    model = timm.create_model('test_dependencyvit').eval()
    x = torch.randn(1, 3, 64, 64)
    outs = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outs.append(o[0])) for blk in model.blocks]
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=[0, 3], intermediates_only=True)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(maps[0], outs[0].transpose(1, 2).reshape(1, 32, 8, 8))
    torch.testing.assert_close(maps[1], outs[3].transpose(1, 2).reshape(1, 32, 8, 8))


@pytest.mark.parametrize('name', ['dependencyvit_lite_tiny_patch16_224', 'test_dependencyvit_lite'])
def test_lite_every_parameter_gets_gradient(name):
    model = timm.create_model(name, drop_path_rate=0.1).train()
    size = model.pretrained_cfg['input_size']
    loss = F.cross_entropy(model(torch.randn(2, *size)), torch.tensor([1, 2]))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not no_grad, f'parameters without (non-zero) gradient: {no_grad}'


@pytest.mark.parametrize('name', ['dependencyvit_tiny_patch16_224', 'dependencyvit_lite_tiny_patch16_224'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_full_size_finite_at_init(name, dtype):
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = model(x)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', ['test_dependencyvit', 'test_dependencyvit_lite'])
@pytest.mark.parametrize('autocast', [False, True], ids=['fp32', 'bf16-autocast'])
def test_stable_after_sgd_steps(name, autocast):
    model = timm.create_model(name, num_classes=10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(6):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0], f'no progress on a fixed batch: {losses}'


def test_message_product_cannot_underflow():
    """Controllers that shut every token off (sigmoid ~ e^-200 per layer) must not produce 0/0 = NaN."""
    model = timm.create_model('test_dependencyvit_lite').eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.message_controller.fc2.weight.fill_(-50.)
            blk.attn.message_controller.fc1.weight.abs_()
        x = torch.rand(2, 3, 64, 64) + 1.
        for dtype in (torch.float32, torch.bfloat16):
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                out = model(x)
            assert torch.isfinite(out).all()


def test_dependency_mask_tracking():
    model = timm.create_model('test_dependencyvit_lite').eval()
    model.set_dependency_tracking(True)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    masks = model.get_dependency_masks()
    assert [m.shape[-1] for m in masks] == [64, 48, 48, 32]
    assert all((m >= 0).all() for m in masks)
    model.set_dependency_tracking(False)
    assert all(m is None for m in model.get_dependency_masks())


def test_other_input_size_resamples_pos_embed():
    model = timm.create_model('test_dependencyvit').eval()
    with torch.no_grad():
        final, maps = model.forward_intermediates(torch.randn(1, 3, 96, 80))
    assert final.shape == (1, 12 * 10, 32) and maps[-1].shape == (1, 32, 12, 10)


def test_checkpoint_filter_loads_trainer_checkpoint(tmp_path):
    """No official checkpoint exists; trainer-style files in timm-ViT key layout (as the unofficial timm PR #2062
    would write) load, with `module.` stripped and pos_embed resampled to the model's grid."""
    src = timm.create_model('test_dependencyvit')
    sd = {f'module.{k}': v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / 'depvit.pth'
    torch.save({'model': sd, 'epoch': 3}, path)
    model = timm.create_model('test_dependencyvit', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    bigger = timm.create_model('test_dependencyvit', img_size=96, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)))
    assert bigger.pos_embed.shape == (1, 144, 32)


def test_marked_untrained_everywhere():
    meta = vimzoo.model_index()['dependencyvit']
    assert 'WITHOUT OFFICIAL WEIGHTS' in meta['notes']
    for variant in meta['variants']:
        assert variant['weights'] is None and variant['top1'] is None
        assert 'paper' not in variant['params_source'].split(';')[0]  # not claimed as an official/paper count
        model_cfg = timm.create_model(variant['name'], pretrained=False).pretrained_cfg
        assert model_cfg['tag'] == 'untrained' and not model_cfg.get('url') and not model_cfg.get('hf_hub_id')
    with pytest.raises(RuntimeError):
        timm.create_model('test_dependencyvit', pretrained=True)


def test_bad_config_errors():
    with pytest.raises(ValueError, match='1-based'):
        DependencyViT(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=4, prune_layers=(0,))
    with pytest.raises(ValueError, match='prune_ratio'):
        DependencyViT(img_size=64, patch_size=8, embed_dim=32, depth=4, num_heads=4, prune_layers=(1, 2),
                      prune_ratio=0.5)
    with pytest.raises(ValueError, match='divisible'):
        ReversedAttention(30, num_heads=4)
