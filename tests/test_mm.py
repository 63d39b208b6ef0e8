"""OpenMMLab adapters (vimzoo.mm): every zoo family inside mmdet Mask R-CNN and mmseg UperNet, configs, Runner.

Needs the OpenMMLab stack (`bash tools/install_mm.sh`); without it every `mm` test is skipped with the reason.
All models are the tiny `test_<family>` variants on 64-128 px inputs, so the file runs in a few minutes on CPU.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import torch

import vimzoo

ROOT = Path(__file__).resolve().parents[1]
DET_CFGS = sorted((ROOT / 'configs' / 'mmdet').glob('*.py'))
SEG_CFGS = sorted((ROOT / 'configs' / 'mmseg').glob('*.py'))
ISOMETRIC = ('vim', 'lbvim', 'convit', 'dependencyvit', 'hydra')  # families whose features all have one stride


def _mm_stack_problem() -> str:
    try:
        import mmcv  # noqa: F401
        import mmdet.models  # noqa: F401
        import mmengine  # noqa: F401
        import mmseg.models  # noqa: F401
        from mmcv.ops import RoIAlign, nms  # noqa: F401
        return ''
    except Exception as e:  # noqa: BLE001  (any import failure means: no usable stack)
        return f'{type(e).__name__}: {e}'


_PROBLEM = _mm_stack_problem()
needs_mm = pytest.mark.skipif(
    bool(_PROBLEM), reason=f'OpenMMLab stack (mmengine/mmcv ops/mmdet/mmseg) not importable ({_PROBLEM}); '
                           'install it with `bash tools/install_mm.sh` (see docs/mm.md)')
if _PROBLEM:
    print(f'\n!!! tests/test_mm.py: OpenMMLab stack missing, mm tests will be SKIPPED: {_PROBLEM}', file=sys.stderr)


def test_import_vimzoo_does_not_import_openmmlab():
    """`import vimzoo` (and model creation) must work without mmengine/mmcv/mmdet/mmseg."""
    code = ('import sys, timm, vimzoo; timm.create_model("test_vim"); '
            'bad = sorted(m for m in sys.modules if m.split(".")[0] in ("mmengine", "mmcv", "mmdet", "mmseg")); '
            'assert not bad, bad; print("ok")')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-2000:]




# ---------------------------------------------------------------------------------------------------- helpers
def _load_cfg(path: Path):
    from mmengine.config import Config
    return Config.fromfile(str(path))


def _family(cfg) -> str:
    return vimzoo.family_of(cfg.model.backbone.model_name)


def tiny_model_cfg(cfg, num_classes: int = 3):
    """The config's model with its backbone swapped for `test_<family>` and every width / size adapted to it."""
    from mmengine.registry import MODELS
    m = copy.deepcopy(cfg.model)
    bb = m.backbone
    bb.model_name = f'test_{_family(cfg)}'
    bb.pop('n_win', None)  # the tiny BiFormer's own n_win fits its 64 px default
    if bb.get('out_indices') is not None and _family(cfg) in ISOMETRIC:  # block ids of a 12/24-deep net
        bb.out_indices = [-1] if len(bb.out_indices) == 1 else None  # ViTDet style stays single-map
    if bb.get('pyramid_norm') == 'SyncBN':
        bb.pyramid_norm = 'BN'
    channels = MODELS.build(copy.deepcopy(bb)).out_channels
    if 'neck' in m:
        m.neck.in_channels = channels
    if 'roi_head' in m:
        m.roi_head.bbox_head.num_classes = num_classes
        m.roi_head.mask_head.num_classes = num_classes
        m.test_cfg.rcnn.score_thr = 0.  # random weights: keep boxes so the RoI / mask predict paths run
    if 'bbox_head' in m:
        m.bbox_head.num_classes = num_classes
        m.test_cfg.score_thr = 0.
    if 'decode_head' in m:
        m.decode_head.in_channels = channels
        m.decode_head.num_classes = num_classes
        m.auxiliary_head.in_channels = channels[m.auxiliary_head.in_index]
        m.auxiliary_head.num_classes = num_classes
        m.data_preprocessor.size = None
        m.data_preprocessor.size_divisor = 32
        m.test_cfg = dict(mode='whole')
    return m


def _build(model_cfg, scope: str):
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import DefaultScope
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(model_cfg)
    model.init_weights()
    return revert_sync_batchnorm(model)  # SyncBN (official seg configs) needs a process group; CPU test uses BN


def _det_batch(n: int = 2, hw: Tuple[int, int] = (96, 128), training: bool = True) -> Dict[str, Any]:
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    H, W = hw
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for i in range(n):
        ds = DetDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, pad_shape=hw, scale_factor=(1., 1.),
                                         img_id=i, img_path=f'fake{i}.jpg'))
        gt = InstanceData()
        gt.bboxes = torch.tensor([[8., 10., 60., 70.], [50., 30., 120., 90.]])
        gt.labels = torch.tensor([0, 2])
        masks = np.zeros((2, H, W), dtype=np.uint8)
        masks[0, 10:70, 8:60] = 1
        masks[1, 30:90, 50:120] = 1
        gt.masks = BitmapMasks(masks, H, W)
        ds.gt_instances = gt
        samples.append(ds)
        inputs.append(torch.randint(0, 255, (3, H, W), dtype=torch.uint8, generator=g))
    return dict(inputs=inputs, data_samples=samples)


def _seg_batch(n: int = 2, hw: Tuple[int, int] = (64, 96)) -> Dict[str, Any]:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for i in range(n):
        ds = SegDataSample(metainfo=dict(img_shape=hw, ori_shape=hw, pad_shape=hw, img_path=f'fake{i}.jpg'))
        ds.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, *hw), generator=g))
        samples.append(ds)
        inputs.append(torch.randint(0, 255, (3, *hw), dtype=torch.uint8, generator=g))
    return dict(inputs=inputs, data_samples=samples)


def _check_backbone_grads(model) -> None:
    missing = [n for n, p in model.backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f'backbone parameters without gradient: {missing[:10]}'
    bad = [n for n, p in model.backbone.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f'non-finite gradients: {bad[:10]}'


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def mm():
    if _PROBLEM:
        pytest.skip(f'OpenMMLab stack not importable: {_PROBLEM}')
    import vimzoo.mm
    return vimzoo.mm


@pytest.fixture(scope='module')
def det_cfgs(mm) -> Dict[str, Any]:
    return {p.name: _load_cfg(p) for p in DET_CFGS}


@pytest.fixture(scope='module')
def seg_cfgs(mm) -> Dict[str, Any]:
    return {p.name: _load_cfg(p) for p in SEG_CFGS}


def _maskrcnn_cfg_for(det_cfgs, family: str):
    cfgs = [c for n, c in det_cfgs.items() if n.startswith('mask-rcnn_') and not n.endswith('_toy.py')
            and _family(c) == family]  # the full-size recipe, not the CPU toy config
    assert cfgs, f'no Mask R-CNN config for {family} in configs/mmdet'
    return cfgs[0]


def _upernet_cfg_for(seg_cfgs, family: str):
    cfgs = [c for n, c in seg_cfgs.items() if n.startswith('upernet_') and not n.endswith('_toy.py')
            and _family(c) == family]
    assert cfgs, f'no UperNet config for {family} in configs/mmseg'
    return cfgs[0]


# ---------------------------------------------------------------------------------------------------- registry
@pytest.mark.mm
@needs_mm
def test_registered_once_in_root_and_found_by_mmdet_and_mmseg(mm):
    from mmdet.registry import MODELS as DET
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmseg.registry import MODELS as SEG
    assert ROOT_MODELS.get('VimZooBackbone') is mm.VimZooBackbone
    assert 'VimZooBackbone' not in DET.module_dict and 'VimZooBackbone' not in SEG.module_dict  # only in the root
    assert DET.parent is ROOT_MODELS and SEG.parent is ROOT_MODELS
    assert DET.get('VimZooBackbone') is mm.VimZooBackbone and SEG.get('VimZooBackbone') is mm.VimZooBackbone


@pytest.mark.mm
@needs_mm
@pytest.mark.parametrize('cfg_path', [DET_CFGS[0], SEG_CFGS[0]], ids=lambda p: p.parent.name)
def test_custom_imports_from_config_file_in_fresh_interpreter(mm, cfg_path):
    """`Config.fromfile` alone (custom_imports) registers the backbone; both libraries' registries then build it."""
    code = f'''
import sys
from mmengine.config import Config
cfg = Config.fromfile({str(cfg_path)!r})
assert 'vimzoo.mm' in sys.modules, 'custom_imports did not import vimzoo.mm'
from mmdet.registry import MODELS as DET
from mmseg.registry import MODELS as SEG
bb = dict(cfg.model.backbone, model_name='test_van')
bb.pop('n_win', None); bb.pop('out_indices', None)
for reg in (DET, SEG):
    m = reg.build(bb)
    assert type(m).__name__ == 'VimZooBackbone', type(m)
print('ok', cfg.default_scope)
'''
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0 and 'ok' in out.stdout, (out.stdout[-2000:], out.stderr[-4000:])


# ---------------------------------------------------------------------------------------------------- configs
@pytest.mark.mm
@needs_mm
def test_every_family_has_maskrcnn_and_upernet_configs(det_cfgs, seg_cfgs):
    det = {_family(c) for n, c in det_cfgs.items() if n.startswith('mask-rcnn_')}
    seg = {_family(c) for n, c in seg_cfgs.items() if n.startswith('upernet_')}
    assert det == set(vimzoo.FAMILIES), set(vimzoo.FAMILIES) - det
    assert seg == set(vimzoo.FAMILIES), set(vimzoo.FAMILIES) - seg
    assert any(n.startswith('retinanet_') and _family(c) == 'biformer' for n, c in det_cfgs.items())


@pytest.mark.mm
@needs_mm
@pytest.mark.parametrize('cfg_path', DET_CFGS + SEG_CFGS, ids=lambda p: f'{p.parent.name}/{p.stem}')
def test_config_loads_and_builds_with_tiny_backbone(mm, cfg_path):
    """Every config loads; its widths match the full-size backbone; the model builds with test_<family> swapped in."""
    from mmengine.registry import MODELS
    cfg = _load_cfg(cfg_path)
    assert cfg.model.backbone.type == 'VimZooBackbone'
    assert 'vimzoo.mm' in cfg.custom_imports['imports']
    # the config's neck / head widths must be the real backbone's (built on the meta device: no memory, no init)
    with torch.device('meta'):
        full = MODELS.build(copy.deepcopy(cfg.model.backbone))
    want = cfg.model.neck.in_channels if 'neck' in cfg.model else cfg.model.decode_head.in_channels
    assert list(want) == list(full.out_channels), (want, full.out_channels)
    if 'auxiliary_head' in cfg.model:
        assert cfg.model.auxiliary_head.in_channels == full.out_channels[cfg.model.auxiliary_head.in_index]
    scope = 'mmdet' if cfg_path.parent.name == 'mmdet' else 'mmseg'
    assert cfg.default_scope == scope
    model = _build(tiny_model_cfg(cfg), scope)
    assert type(model.backbone).__name__ == 'VimZooBackbone'
    assert model.backbone.model_name == f'test_{_family(cfg)}'
    # the optimiser wrapper of the config builds for the model (AdamW / layer decay / SGD)
    from mmengine.optim import build_optim_wrapper
    ow_cfg = copy.deepcopy(cfg.optim_wrapper)
    if ow_cfg.get('type') == 'AmpOptimWrapper':
        ow_cfg.type = 'OptimWrapper'  # AMP wrappers need CUDA; the parameter grouping is what is checked here
        ow_cfg.pop('loss_scale', None)
    ow = build_optim_wrapper(model, ow_cfg)
    n_opt = sum(p.numel() for g in ow.optimizer.param_groups for p in g['params'])
    assert n_opt == sum(p.numel() for p in model.parameters())  # every parameter is in exactly one group


@pytest.mark.mm
@needs_mm
def test_layer_decay_constructor_scales_backbone_layers(mm, seg_cfgs):
    import vimzoo.mm.optim  # noqa: F401
    from mmengine.optim import build_optim_wrapper
    cfg = _upernet_cfg_for(seg_cfgs, 'vim')
    model = _build(tiny_model_cfg(cfg), 'mmseg')
    ow = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    group_of = {id(p): g for g in ow.optimizer.param_groups for p in g['params']}
    groups = {n: group_of[id(p)] for n, p in model.named_parameters()}
    base, rate = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.paramwise_cfg.layer_decay_rate
    depth = len(model.backbone.model.layers)  # tiny Vim: 4 blocks -> ids 1..4, stem 0
    assert groups['backbone.model.patch_embed.proj.weight']['lr'] == pytest.approx(base * rate ** (depth + 1))
    assert groups['backbone.model.layers.0.mixer.in_proj.weight']['lr'] == pytest.approx(base * rate ** depth)
    assert groups[f'backbone.model.layers.{depth - 1}.mixer.in_proj.weight']['lr'] == pytest.approx(base * rate)
    head = [g for n, g in groups.items() if n.startswith('decode_head.')]
    assert head and all(g['lr'] == pytest.approx(base) for g in head)
    assert groups['backbone.model.pos_embed']['weight_decay'] == 0.
    wd = cfg.optim_wrapper.optimizer.weight_decay
    assert groups['backbone.model.layers.0.mixer.in_proj.weight']['weight_decay'] == wd


# ---------------------------------------------------------------------------------------------------- backbone
@pytest.mark.mm
@needs_mm
@pytest.mark.parametrize('family', vimzoo.FAMILIES)
def test_backbone_pyramid_shapes(mm, family):
    bb = mm.VimZooBackbone(f'test_{family}').eval()
    assert bb.strides == [4, 8, 16, 32] and len(bb.out_channels) == 4
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs = bb(x)
    assert len(outs) == 4
    for o, c, s in zip(outs, bb.out_channels, bb.strides):
        assert o.shape == (2, c, -(-64 // s), -(-96 // s)), (family, o.shape, c, s)
        assert torch.isfinite(o).all()
    if family == 'biformer':  # official BiFormer_mm: LayerNorm2d(eps=1e-6) on every level
        assert bb.out_norms is not None and len(bb.out_norms) == 4 and bb.out_norms[0].eps == 1e-6
    if family in ISOMETRIC:
        assert bb.pyramid is not None  # isometric -> simple pyramid
    else:
        assert bb.pyramid is None


@pytest.mark.mm
@needs_mm
def test_frozen_stages_and_norm_eval(mm):
    bb = mm.VimZooBackbone('test_halonet', frozen_stages=1, norm_eval=True)
    bb.train()
    frozen = {n for n, p in bb.model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in bb.model.named_parameters() if p.requires_grad}
    assert any(n.startswith('stem.') for n in frozen) and any(n.startswith('stages.0.') for n in frozen)
    assert not any(n.startswith('stages.1.') for n in frozen) and any(n.startswith('stages.1.') for n in trainable)
    bns = [m for m in bb.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)  # norm_eval survives train()
    out = bb(torch.randn(1, 3, 64, 64))
    sum(o.sum() for o in out).backward()
    assert all(p.grad is None for n, p in bb.model.named_parameters() if n in frozen)

    vim = mm.VimZooBackbone('test_vim', frozen_stages=0)
    frozen = {n for n, p in vim.model.named_parameters() if not p.requires_grad}
    assert {'patch_embed.proj.weight', 'pos_embed'} <= frozen
    assert not any(n.startswith('layers.') for n in frozen)


@pytest.mark.mm
@needs_mm
def test_pretrained_file_goes_through_family_filter_and_survives_init(mm, tmp_path):
    import timm
    src = timm.create_model('test_vim')
    ckpt = tmp_path / 'vim_official_layout.pth'
    # official Vim (DeiT trainer) layout: weights under 'model', plus rope buffers the filter must drop
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd['rope.freqs_cos'] = torch.zeros(4)
    torch.save({'model': sd, 'epoch': 3}, ckpt)
    for kwargs in (dict(pretrained=str(ckpt)), dict(init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))):
        bb = mm.VimZooBackbone('test_vim', **kwargs)
        bb.init_weights()  # what mmengine's Runner does: must not overwrite the loaded weights
        got = bb.model.state_dict()
        for k in ('patch_embed.proj.weight', 'pos_embed', 'layers.2.mixer.in_proj.weight'):
            assert torch.equal(got[k], sd[k]), k


class _NotATensor:  # a pickled object: weights_only loading must refuse it
    pass


@pytest.mark.mm
@needs_mm
def test_unsafe_checkpoint_is_refused(mm, tmp_path):
    import timm
    sd = dict(timm.create_model('test_van').state_dict())
    sd['evil'] = _NotATensor()
    path = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': sd}, path)
    with pytest.raises(Exception, match='(?i)weights.only|unpickl|global'):
        mm.VimZooBackbone('test_van', pretrained=str(path))


@pytest.mark.mm
@needs_mm
def test_runner_checkpoint_loader_is_weights_only(mm, tmp_path):
    """Runner checkpoints load through vimzoo's loader (weights_only=True + a narrow allow-list); code does not."""
    import pickle

    from mmengine.logging import HistoryBuffer, MessageHub
    from mmengine.runner.checkpoint import CheckpointLoader
    hub = MessageHub.get_instance('vimzoo_test_hub')
    hub.update_scalar('train/loss', 1.25)
    good = tmp_path / 'runner_like.pth'
    torch.save({'meta': {'iter': 2}, 'state_dict': {'w': torch.ones(2)}, 'message_hub': hub.state_dict()}, good)
    ck = CheckpointLoader.load_checkpoint(str(good))
    assert ck['message_hub']['log_scalars']['train/loss'].current() == 1.25

    class Sneaky:
        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')  # getattr outside the statistics methods
    bad = tmp_path / 'sneaky.pth'
    torch.save({'x': Sneaky()}, bad)
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(str(bad))


# ---------------------------------------------------------------------------------------------------- models
@pytest.mark.mm
@needs_mm
@pytest.mark.parametrize('family', vimzoo.FAMILIES)
def test_maskrcnn_loss_backward_predict(det_cfgs, family):
    torch.manual_seed(0)
    model = _build(tiny_model_cfg(_maskrcnn_cfg_for(det_cfgs, family)), 'mmdet')
    model.train()
    data = model.data_preprocessor(_det_batch(), True)
    losses = model(**data, mode='loss')
    assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    _check_backbone_grads(model)
    model.eval()
    with torch.no_grad():
        res = model(**model.data_preprocessor(_det_batch(1), False), mode='predict')
    pred = res[0].pred_instances
    assert len(pred) > 0 and pred.bboxes.shape[1] == 4 and pred.masks.shape[-2:] == (96, 128)


@pytest.mark.mm
@needs_mm
def test_retinanet_biformer_loss_predict(det_cfgs):
    cfg = det_cfgs['retinanet_biformer-s_fpn_1x_coco.py']
    model = _build(tiny_model_cfg(cfg), 'mmdet')
    model.train()
    losses = model(**model.data_preprocessor(_det_batch(), True), mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    _check_backbone_grads(model)
    model.eval()
    with torch.no_grad():
        res = model(**model.data_preprocessor(_det_batch(1), False), mode='predict')
    assert len(res[0].pred_instances) > 0


@pytest.mark.mm
@needs_mm
@pytest.mark.parametrize('family', vimzoo.FAMILIES)
def test_upernet_loss_backward_predict(seg_cfgs, family):
    torch.manual_seed(0)
    model = _build(tiny_model_cfg(_upernet_cfg_for(seg_cfgs, family)), 'mmseg')
    model.train()
    data = model.data_preprocessor(_seg_batch(), True)  # batch 2: UperNet's 1x1 PPM branch has BN
    losses = model(**data, mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    _check_backbone_grads(model)
    model.eval()
    with torch.no_grad():
        res = model(**model.data_preprocessor(_seg_batch(1), False), mode='predict')
    assert res[0].pred_sem_seg.data.shape == (1, 64, 96)


# ---------------------------------------------------------------------------------------------------- Runner
@pytest.mark.mm
@needs_mm
def test_runner_train_val_checkpoint_resume(det_cfgs, tmp_path):
    """2 iterations of mmengine Runner training + COCO validation on a generated dataset, then resume to iter 3."""
    import dataclasses

    from mmengine.runner import Runner

    from vimzoo.mm.toy_data import TOY_DATASETS
    spec = dataclasses.replace(TOY_DATASETS['shapes-coco'], num_train=4, num_val=4, image_size=(96, 128))
    spec.generate(tmp_path / 'coco')
    ann_file = tmp_path / 'coco' / 'annotations' / 'instances_train2017.json'  # trained on and evaluated on
    cfg = copy.deepcopy(_maskrcnn_cfg_for(det_cfgs, 'van'))
    cfg.model = tiny_model_cfg(cfg, num_classes=len(spec.classes))
    cfg.model.test_cfg.rcnn.max_per_img = 20  # random weights + score_thr 0: keep COCO segm evaluation small
    cfg.work_dir = str(tmp_path / 'work')
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=(128, 96), keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(128, 96), keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
    ]
    dataset = dict(type='CocoDataset', data_root=str(tmp_path / 'coco'), ann_file=str(ann_file),
                   data_prefix=dict(img='train2017/'), metainfo=dict(classes=spec.classes))
    cfg.train_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(type='DefaultSampler', shuffle=True),
        batch_sampler=dict(type='AspectRatioBatchSampler'),
        dataset=dict(dataset, filter_cfg=dict(filter_empty_gt=True, min_size=1), pipeline=train_pipeline))
    cfg.val_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False, drop_last=False,
        sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(dataset, test_mode=True, pipeline=test_pipeline))
    cfg.val_evaluator = dict(type='CocoMetric', ann_file=str(ann_file), metric=['bbox', 'segm'])
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    cfg.param_scheduler = []
    cfg.optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05))
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=2, by_epoch=False)
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=0)

    runner = Runner.from_cfg(copy.deepcopy(cfg))
    runner.train()
    assert runner.iter == 2
    ckpt = Path(cfg.work_dir) / 'iter_2.pth'
    assert ckpt.is_file()
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):  # the validation at iter 2 ran COCO evaluation
        assert 0. <= float(runner.message_hub.get_scalar(f'val/{key}').current()) <= 1.

    from vimzoo.mm import safe_load
    saved = safe_load(str(ckpt), map_location='cpu')
    assert saved['meta']['iter'] == 2 and 'message_hub' in saved and 'optimizer' in saved

    cfg2 = copy.deepcopy(cfg)
    cfg2.train_cfg.max_iters = 3
    cfg2.train_cfg.val_begin = 4  # no second validation
    cfg2.resume = True
    cfg2.load_from = str(ckpt)
    runner2 = Runner.from_cfg(cfg2)
    runner2.load_or_resume()
    assert runner2.iter == 2
    state = runner2.model.state_dict()
    for k, v in saved['state_dict'].items():
        assert torch.equal(state[k], v), k
    runner2.train()
    assert runner2.iter == 3 and (Path(cfg.work_dir) / 'iter_3.pth').is_file()
