"""The model contract: every zoo family, through its tiny `test_<family>` variant, must behave like a good timm
model -- what timm's own tests/test_models.py checks for its families (forward, backward, cfgs, unpooled features,
features_only, forward_intermediates, FX, TorchScript) plus torch.compile / torch.export; every full-size variant in
`models/` must build (on the meta device) with the official parameter count."""
import math

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import vimzoo
from vimzoo.zoo import FAMILIES

TEST_MODELS = sorted(n for n in vimzoo.list_models(include_test=True) if n.startswith('test_'))
FULL_VARIANTS = [
    pytest.param(v['name'], v['params'], id=v['name'])
    for meta in vimzoo.model_index().values() for v in meta['variants']
]
TIMM_BACKED = {'davit', 'convit', 'halonet'}
# token (ViT-like) models: forward_features gives (B, N, C) and there is no spatial pool_size (timm's NON_STD_FILTERS)
TOKEN_MODELS = [n for n in TEST_MODELS if timm.models.get_pretrained_cfg(n).pool_size is None]
# TorchScript exclusions, each with its reason (timm's EXCLUDE_JIT_FILTERS convention). Every zoo family scripts.
EXCLUDE_JIT = {}


def _input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg['input_size'])


def _create(name: str, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, **kwargs)


@pytest.mark.parametrize('family', FAMILIES)
def test_family_is_complete(family):
    names = vimzoo.list_models(family, include_test=True)
    assert f'test_{family}' in names, f'{family} has no tiny test_{family} variant'
    meta = vimzoo.model_index().get(family)
    assert meta is not None, f'models/{family}.yml is missing'
    for key in ('title', 'paper', 'code', 'license', 'variants'):
        assert key in meta, f'models/{family}.yml lacks {key!r}'
    for variant in meta['variants']:
        assert variant['name'] in timm.list_models(), f'{variant["name"]} (models/{family}.yml) is not registered'
        assert vimzoo.family_of(variant['name']) == family
        assert isinstance(variant['params'], int) and variant['params'] > 0


@pytest.mark.parametrize('name', TEST_MODELS)
def test_forward(name):
    model = _create(name).eval()
    x = _input(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (x.shape[0], model.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', TEST_MODELS)
def test_backward_reaches_every_parameter(name):
    model = _create(name, num_classes=7).train()
    x = _input(model)
    out = model(x)
    assert out.shape == (x.shape[0], 7)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'parameters without gradient: {missing}'
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_default_cfg_and_head(name):
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    state_dict = model.state_dict()
    assert model.num_classes == cfg.get('num_classes', 1000)
    assert model.num_features > 0 and model.head_hidden_size > 0
    assert cfg['classifier'] + '.weight' in state_dict, f'classifier {cfg["classifier"]!r} not found'
    first_convs = cfg['first_conv'] if isinstance(cfg['first_conv'], (tuple, list)) else [cfg['first_conv']]
    for first_conv in first_convs:
        assert first_conv + '.weight' in state_dict, f'first_conv {first_conv!r} not found'
    x = _input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (x.shape[0], model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
    assert pooled.shape == (x.shape[0], model.head_hidden_size)
    torch.testing.assert_close(pooled, pre_logits)
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (x.shape[0], 5)
    assert model.get_classifier() is not None
    assert isinstance(model.no_weight_decay(), (set, list, tuple))
    groups = model.group_matcher()
    assert 'stem' in groups and 'blocks' in groups


@pytest.mark.parametrize('name', TEST_MODELS)
def test_features_only(name):
    model = _create(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    size = timm.create_model(name).pretrained_cfg['input_size']
    x = torch.randn(2, *size)
    with torch.no_grad():
        outputs = model(x)
    assert len(outputs) == len(channels)
    for out, chs, red in zip(outputs, channels, reductions):
        assert out.ndim == 4 and out.shape[:2] == (2, chs)
        assert out.shape[2] <= math.ceil(size[1] / red) + 1 and out.shape[3] <= math.ceil(size[2] / red) + 1
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('name', TEST_MODELS)
def test_forward_intermediates(name):
    model = _create(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    assert len(info.channels()) >= 3
    x = _input(model)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
        reference = model.forward_features(x)
        only = model.forward_intermediates(x, intermediates_only=True)
    torch.testing.assert_close(final, reference, rtol=1e-5, atol=1e-5)
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        final_ckpt, _ = model.forward_intermediates(x, output_fmt='NCHW')
    torch.testing.assert_close(final_ckpt, reference, rtol=1e-5, atol=1e-5)
    assert len(intermediates) == len(info.channels()) == len(only)
    for feat, again, chs, red in zip(intermediates, only, info.channels(), info.reduction()):
        assert feat.shape[:2] == (x.shape[0], chs)
        assert feat.shape[2] <= math.ceil(x.shape[2] / red) + 1
        torch.testing.assert_close(feat, again)
    last = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert len(last) == 1 and last[0].shape == intermediates[-1].shape


def _count_module_calls(model: torch.nn.Module, x: torch.Tensor):
    calls = [0]
    hooks = [m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for m in model.modules()]
    out = model(x)
    out.float().pow(2).mean().backward()
    for hook in hooks:
        hook.remove()
    return out.detach(), calls[0]


@pytest.mark.parametrize('name', TEST_MODELS)
def test_grad_checkpointing(name):
    """Same output and gradients, and the forward really re-runs during backward (checkpointing is not a no-op)."""
    model = _create(name, drop_rate=0., drop_path_rate=0.).train()
    x = _input(model)
    out_plain, calls_plain = _count_module_calls(model, x)
    grads_plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    out_ckpt, calls_ckpt = _count_module_calls(model, x)
    torch.testing.assert_close(out_ckpt, out_plain, rtol=1e-4, atol=1e-5)
    for n, p in model.named_parameters():
        if n in grads_plain:
            torch.testing.assert_close(p.grad, grads_plain[n], rtol=1e-3, atol=1e-5, msg=f'grad of {n} differs')
    assert calls_ckpt > calls_plain, 'set_grad_checkpointing(True) did not recompute anything in backward'


@pytest.mark.parametrize('name', TEST_MODELS)
def test_bad_input_errors(name):
    family = vimzoo.family_of(name)
    models = [vimzoo.create_model(name).eval()]
    if family not in TIMM_BACKED:  # zoo-native families validate inside forward, also via timm.create_model
        models.append(_create(name).eval())
    size = models[0].pretrained_cfg['input_size']
    for model in models:
        with pytest.raises(ValueError, match='input channels'):
            model(torch.randn(1, size[0] + 1, *size[1:]))
        with pytest.raises(ValueError, match='at least'):
            model(torch.randn(1, size[0], 2, 2))
        with pytest.raises(ValueError, match='4-D'):
            model(torch.randn(size[0], *size[1:]))


@pytest.mark.parametrize('name,kwargs,arg', [
    ('test_vim', dict(patch_size=0), 'patch_size'), ('test_vim', dict(in_chans=0), 'in_chans'),
    ('test_lbvim', dict(embed_dim=0), 'embed_dim'), ('test_biformer', dict(n_win=0), 'n_win'),
    ('test_vim', dict(d_state=0), 'd_state'),
])
def test_impossible_sizes_fail_at_construction(name, kwargs, arg):
    with pytest.raises(ValueError, match=f'{arg} must be an int >= 1'):
        _create(name, **kwargs)


EMPTY_BATCH_XFAIL = {'test_halonet': "timm's own HaloAttn reshapes with -1 and fails on 0 images (timm 1.0.x)"}


@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.xfail(reason=EMPTY_BATCH_XFAIL[n], strict=True)) if n in EMPTY_BATCH_XFAIL else n
    for n in TEST_MODELS])
def test_empty_batch(name):
    """A batch of 0 images (the tail of a sharded dataset) gives 0 logits, in eval and through a backward."""
    model = _create(name)
    x = torch.randn(0, *model.pretrained_cfg['input_size'], requires_grad=True)
    model(x).sum().backward()
    assert x.grad.shape == x.shape
    with torch.no_grad():
        assert model.eval()(x).shape == (0, model.num_classes)


def test_unknown_model_name_suggests():
    with pytest.raises(RuntimeError, match='Did you mean'):
        vimzoo.create_model('convit_tinny')
    with pytest.raises(RuntimeError, match='Unknown model'):
        vimzoo.create_model('definitely_not_a_model_xyz')
    with pytest.raises(ValueError, match='Unknown family'):
        vimzoo.list_models('resnet')


@pytest.mark.parametrize('name,params', FULL_VARIANTS)
def test_full_variant_param_count_on_meta(name, params):
    with torch.device('meta'):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - params) / params <= 0.005, f'{name}: {count:,} params vs official {params:,}'


# ------------------------------------------------------------------------------------ timm's head / factory contract
@pytest.mark.parametrize('name', TEST_MODELS)
def test_unpooled_output_without_pool(name):
    """global_pool='' (at creation and via reset_classifier(0, '')) returns unpooled features: NCHW maps of
    pool_size for hierarchical nets, all tokens (= forward_features) for token models."""
    model = _create(name, num_classes=0, global_pool='').eval()
    cfg = model.pretrained_cfg
    x = _input(model, batch=1)
    with torch.no_grad():
        out, features = model(x), model.forward_features(x)
        reset = _create(name).eval()
        reset.load_state_dict(model.state_dict(), strict=False)
        reset.reset_classifier(0, '')
        out_reset = reset(x)
    if cfg['pool_size'] is None:
        assert out.ndim == 3 and out.shape[-1] == model.num_features
    else:
        assert out.shape == (1, model.num_features, *cfg['pool_size'])
    torch.testing.assert_close(out_reset, out, rtol=0, atol=0)
    if vimzoo.family_of(name) != 'davit':  # timm's DaViT head norms the map before pooling (NormMlpClassifierHead)
        torch.testing.assert_close(out, features, rtol=0, atol=0)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_factory_device_dtype_and_classifier_reset(name):
    """create_model(device=..., dtype=...) builds there; reset_classifier keeps the model's device, dtype, mode."""
    model = _create(name, device='meta', dtype=torch.float64).eval()
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == 'meta' for t in tensors)
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    model.reset_classifier(3)
    assert all(p.device.type == 'meta' and p.dtype == torch.float64 for p in model.get_classifier().parameters())
    assert not any(m.training for m in model.modules())


# ------------------------------------------------------------------------------------------------ FX, TorchScript
def _fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """torchvision's create_feature_extractor with timm's leaf modules / notrace functions (as timm's tests)."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return = [train_nodes[-1]]
    if train:  # the nodes feeding the graph output (timm's juggling for models with several train outputs)
        graph_nodes = list(reversed(NodePathTracer(**tracer_kwargs).trace(model).nodes))
        names = [n.name for n in graph_nodes]
        train_return = [train_nodes[-names.index(n.name)] for n in graph_nodes[0]._input_nodes.keys()]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


def _state(model: torch.nn.Module) -> dict:
    """Everything a trace must not change: tensors (by value and identity), plain attributes, train flags."""
    state = {}
    for mod_name, module in model.named_modules():
        for key, value in vars(module).items():
            if key.startswith('_') and key not in ('_parameters', '_buffers'):
                continue
            if key in ('_parameters', '_buffers'):
                for t_name, t in value.items():
                    state[f'{mod_name}.{t_name}'] = (id(t), None if t is None else t.detach().clone())
            elif value is None or isinstance(value, (bool, int, float, str, tuple)):
                state[f'{mod_name}.{key}'] = value
            else:
                state[f'{mod_name}.{key}'] = type(value)
    return state


def _assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys(), sorted(set(before) ^ set(after))
    for key, value in before.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], torch.Tensor):
            assert after[key][0] == value[0] and torch.equal(after[key][1], value[1]), f'{key} changed'
        else:
            assert after[key] == value, f'{key} changed: {value!r} -> {after[key]!r}'


@pytest.mark.parametrize('name', TEST_MODELS)
def test_fx_forward_is_bitwise_eager_and_writes_no_state(name):
    model = _create(name).eval()
    x = _input(model, batch=1)
    before = _state(model)
    with torch.no_grad():
        expected = model(x)
        fx = _fx_model(model)
        out = next(iter(fx(x).values()))
        again = model(x)
    _assert_same_state(before, _state(model))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_fx_backward_reaches_every_parameter(name):
    model = _create(name, num_classes=7).train()
    fx = _fx_model(model, train=True)
    out = torch.cat(tuple(fx(_input(model)).values()))
    assert out.shape[-1] == 7
    out.mean().backward()
    missing = [n for n, p in fx.named_parameters() if p.grad is None]
    assert not missing, f'parameters without gradient through the FX graph: {missing}'


@pytest.mark.parametrize('name', [n for n in TEST_MODELS if n not in EXCLUDE_JIT])
def test_torchscript_matches_eager(name):
    model = _create(name).eval()
    with timm.layers.set_layer_config(scriptable=True):
        scriptable = _create(name).eval()
    scriptable.load_state_dict(model.state_dict())
    scripted = torch.jit.script(scriptable)
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
    # the scripted model keeps the input checks
    with pytest.raises(Exception, match='input channels|channels'):
        scripted(torch.randn(1, x.shape[1] + 1, *x.shape[2:]))


# ---------------------------------------------------------------------------------------- torch.compile / export
@pytest.mark.parametrize('name', TEST_MODELS)
def test_compile_fullgraph_matches_eager(name):
    """One graph (no breaks) through dynamo + AOTAutograd (`aot_eager`: the kernels' fake impls and autograd
    formulas are exercised; inductor's codegen is not, it costs about a minute per model on 2 cores)."""
    torch._dynamo.reset()
    model = _create(name).eval()
    x = _input(model)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.parametrize('name', TEST_MODELS)
def test_export_matches_eager(name):
    model = _create(name).eval()
    x = _input(model)
    before = _state(model)
    exported = torch.export.export(model, (x,))
    _assert_same_state(before, _state(model))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- token models: timm ViT options
def _token_step(name: str) -> int:
    model = _create(name)
    return model.feature_info[0]['reduction']


@pytest.mark.parametrize('name', TOKEN_MODELS)
def test_dynamic_img_size_flag(name):
    """dynamic_img_size=True equals the default path at the training size and runs other sizes; without it the
    model is pinned to its img_size, like timm's ViT."""
    fixed = _create(name, dynamic_img_size=False).eval()
    dynamic = _create(name, dynamic_img_size=True).eval()
    dynamic.load_state_dict(fixed.state_dict())
    x = _input(fixed)
    other = torch.randn(2, 3, x.shape[2] + 2 * _token_step(name), x.shape[3] - _token_step(name))
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x), fixed(x), rtol=0, atol=0)
        assert torch.isfinite(dynamic(other)).all()
        with pytest.raises((ValueError, AssertionError)):
            fixed(other)


@pytest.mark.parametrize('name', TOKEN_MODELS)
def test_set_input_size_resamples_position_embedding(name):
    """set_input_size(img_size) resamples the position embedding once; the model then equals the dynamic model
    at that size, and the frozen state of the embedding survives."""
    model = _create(name, dynamic_img_size=True).eval()
    resized = _create(name, dynamic_img_size=False).eval()
    resized.load_state_dict(model.state_dict())
    resized.pos_embed.requires_grad_(False)
    step = _token_step(name)
    size = (model.pretrained_cfg['input_size'][1] + 2 * step, model.pretrained_cfg['input_size'][2] - step)
    resized.set_input_size(img_size=size)
    assert not resized.pos_embed.requires_grad
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(resized(x), model(x), rtol=1e-5, atol=1e-6)
    resized.set_input_size(img_size=model.pretrained_cfg['input_size'][1:])
    assert resized.pos_embed.shape == model.pos_embed.shape


@pytest.mark.parametrize('name', TOKEN_MODELS)
def test_intermediates_nlc_are_the_flattened_maps(name):
    model = _create(name).eval()
    x = _input(model)
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=2, intermediates_only=True)
        tokens = model.forward_intermediates(x, indices=2, output_fmt='NLC', intermediates_only=True)
    for m, t in zip(maps, tokens):
        torch.testing.assert_close(t, m.flatten(2).transpose(1, 2), rtol=0, atol=0)


@pytest.mark.parametrize('name', TEST_MODELS)
def test_features_only_too_small_input_says_what_the_model_says(name):
    """features_only nets reject a too-small (or wrong-channel) input with the model's own message."""
    creators = [vimzoo.create_model]
    if vimzoo.family_of(name) not in TIMM_BACKED or name == 'test_halonet':  # checks inside the zoo's own classes
        creators.append(_create)
    size = timm.models.get_pretrained_cfg(name).input_size
    for create in creators:
        model, features = create(name).eval(), create(name, features_only=True).eval()
        for bad in (torch.randn(1, 3, 2, 2), torch.randn(1, 4, *size[1:])):
            with pytest.raises(ValueError) as from_model:
                model(bad)
            with pytest.raises(ValueError) as from_features:
                features(bad)
            assert str(from_features.value) == str(from_model.value)
