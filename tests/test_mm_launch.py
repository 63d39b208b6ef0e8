"""The mm launcher (tools/mm_train.py, tools/mm_test.py), the built-in toy sets, the width helpers and check.

The end-to-end tests run the real command lines on the toy configs for a few iterations (CPU): the loss falls, a
checkpoint is written, `--resume` continues from it, and `tools/mm_test.py` evaluates it. Needs the OpenMMLab
stack (`bash tools/install_mm.sh`); without it every test here is skipped with the reason.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN, TEST = str(ROOT / 'tools' / 'mm_train.py'), str(ROOT / 'tools' / 'mm_test.py')
DET_TOY, SEG_TOY = 'mask-rcnn_van-b0_toy', 'upernet_van-b0_toy'


def _mm_stack_problem() -> str:
    try:
        import mmdet.models  # noqa: F401
        import mmseg.models  # noqa: F401
        from mmcv.ops import RoIAlign, nms  # noqa: F401
        return ''
    except Exception as e:  # noqa: BLE001  (any import failure means: no usable stack)
        return f'{type(e).__name__}: {e}'


_PROBLEM = _mm_stack_problem()
pytestmark = [pytest.mark.mm, pytest.mark.skipif(
    bool(_PROBLEM), reason=f'OpenMMLab stack not importable ({_PROBLEM}); install it with `bash tools/install_mm.sh`')]


@pytest.fixture(scope='module')
def mm():
    import vimzoo.mm
    return vimzoo.mm


def _cfg(name: str):
    from mmengine.config import Config

    from vimzoo.mm.launch import find_config
    return Config.fromfile(str(find_config(name)))


def _strings(node: Any) -> List[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, (list, tuple)):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _types(node: Any) -> List[str]:
    if isinstance(node, dict):
        return [node.get('type'), node.get('pyramid_norm')] + [t for v in node.values() for t in _types(v)]
    if isinstance(node, (list, tuple)):
        return [t for v in node for t in _types(v)]
    return []


# ---------------------------------------------------------------------------------------------------- configs
def test_find_config_by_name_and_clear_error(mm):
    from vimzoo.mm.launch import find_config
    assert find_config(DET_TOY) == ROOT / 'configs' / 'mmdet' / f'{DET_TOY}.py'
    assert find_config(f'mmseg/{SEG_TOY}.py') == ROOT / 'configs' / 'mmseg' / f'{SEG_TOY}.py'
    with pytest.raises(FileNotFoundError, match=DET_TOY):  # the message lists the shipped configs
        find_config('mask-rcnn_nonexistent')


@pytest.mark.parametrize('name, old', [('mask-rcnn_van-b2_fpn_1x_coco', 'data/coco'),
                                       ('upernet_van-b2_8xb2-160k_ade20k-512x512', 'data/ade'),
                                       (DET_TOY, 'vimzoo-toy:')])
def test_data_root_rewrites_every_loader_and_evaluator_path(mm, tmp_path, name, old):
    from vimzoo.mm.launch import EVALUATORS, LOADERS, set_data_root
    cfg = _cfg(name)
    before = [s for k in (*LOADERS, *EVALUATORS) for s in _strings(cfg.get(k))]
    assert any(old in s for s in before)
    changes = set_data_root(cfg, str(tmp_path))
    assert changes
    after = [s for k in (*LOADERS, *EVALUATORS) for s in _strings(cfg.get(k))]
    assert not [s for s in after if old in s]
    for loader in LOADERS:
        assert cfg[loader].dataset.data_root == str(tmp_path)
    if 'coco' in name:  # COCO evaluators name the annotation file in full
        assert cfg.val_evaluator.ann_file == str(tmp_path / cfg.val_dataloader.dataset.ann_file)


@pytest.mark.parametrize('name', ['mask-rcnn_biformer-s_fpn_1x_coco', 'upernet_vim-t_8xb2-60k_ade20k-512x512'])
def test_cpu_swaps_amp_and_syncbn(mm, name):
    from vimzoo.mm.launch import use_cpu
    cfg = _cfg(name)
    before = _types(cfg.model) + [cfg.optim_wrapper.get('type')]
    assert {'AmpOptimWrapper', 'SyncBN'} & set(before)  # the configs have something to swap
    use_cpu(cfg)
    after = _types(cfg.model) + [cfg.optim_wrapper.get('type')]
    assert not {'AmpOptimWrapper', 'SyncBN'} & set(after)
    assert 'loss_scale' not in cfg.optim_wrapper
    assert cfg.env_cfg.dist_cfg.backend == 'gloo' and cfg.model_wrapper_cfg.device_ids is None


# ---------------------------------------------------------------------------------------------------- widths
def test_backbone_channels_before_build(mm):
    assert mm.backbone_channels('van_b0') == [32, 64, 160, 256]
    assert mm.backbone_channels('vim_tiny_patch16_224') == [192] * 4
    assert mm.backbone_channels('biformer_tiny') == [64, 128, 256, 512]
    assert mm.backbone_strides('van_b0') == [4, 8, 16, 32]
    assert mm.backbone_channels('vim_tiny_patch16_224', pyramid=False, out_indices=[5, 11, 17, 23]) == [192] * 4
    assert mm.backbone_strides('vim_tiny_patch16_224', pyramid=False, out_indices=[5, 11, 17, 23]) == [16] * 4


@pytest.mark.slow  # builds every zoo model on the meta device (~20 s)
def test_docs_channel_table_is_current(mm):
    text = (ROOT / 'docs' / 'mm.md').read_text()
    found = re.search(r'<!-- channel-table:start -->\n(.*?)\n<!-- channel-table:end -->', text, re.S)
    assert found, 'docs/mm.md lost its channel-table markers'
    assert found.group(1).strip() == mm.channel_table().strip(), \
        'docs/mm.md channel table is stale: paste vimzoo.mm.channel_table() between the markers'


def _tiny(cfg, backbone: str = 'test_van'):
    m = copy.deepcopy(cfg.model)
    m.backbone.model_name = backbone
    return m


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_width_mismatch_fails_at_build_with_the_right_values(mm, scope):
    from mmengine.registry import DefaultScope
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        cfg, key = _cfg(DET_TOY), 'neck'
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
        cfg, key = _cfg(SEG_TOY), 'decode_head'
    register_all_modules(init_default_scope=False)
    right = mm.backbone_channels('test_van')  # [16, 24, 32, 48]
    good = _tiny(cfg)
    good[key].in_channels = right
    if 'auxiliary_head' in good:
        good.auxiliary_head.in_channels = right[good.auxiliary_head.in_index]
    with DefaultScope.overwrite_default_scope(scope):
        MODELS.build(copy.deepcopy(good))  # right widths build
        bad = copy.deepcopy(good)
        bad[key].in_channels = [32, 64, 160, 256]  # van_b0's widths with the test_van backbone
        with pytest.raises(ValueError, match=re.escape(f'model.{key}.in_channels={right}')):
            MODELS.build(bad)
        if 'auxiliary_head' in good:
            bad = copy.deepcopy(good)
            bad.auxiliary_head.in_channels = 160
            with pytest.raises(ValueError, match=r'model\.auxiliary_head\.in_channels=32\b'):
                MODELS.build(bad)


# ---------------------------------------------------------------------------------------------------- toy data
def _small(name: str, **kw):
    from vimzoo.mm.toy_data import TOY_DATASETS
    return dataclasses.replace(TOY_DATASETS[name], **{'num_train': 6, 'num_val': 3, **kw})


def test_toy_coco_is_valid_and_deterministic(mm, tmp_path):
    from pycocotools.coco import COCO
    spec = _small('shapes-coco')
    spec.generate(tmp_path / 'a')
    spec.generate(tmp_path / 'b')
    ann = tmp_path / 'a' / 'annotations' / 'instances_train2017.json'
    assert ann.read_bytes() == (tmp_path / 'b' / 'annotations' / 'instances_train2017.json').read_bytes()
    coco = COCO(str(ann))
    assert len(coco.getImgIds()) == 6 and [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(spec.classes)
    h, w = spec.image_size
    for a in coco.loadAnns(coco.getAnnIds()):
        x, y, bw, bh = a['bbox']
        pts = np.array(a['segmentation'][0]).reshape(-1, 2)
        assert np.allclose([x, y, x + bw, y + bh], [*pts.min(0), *pts.max(0)], atol=0.01)  # tight box
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
        mask = coco.annToMask(a)
        assert abs(mask.sum() - a['area']) < 0.25 * a['area'] + 20  # the polygon area is the drawn area
    for split in ('train2017', 'val2017'):
        assert len(list((tmp_path / 'a' / split).glob('*.jpg'))) == (6 if split == 'train2017' else 3)


def test_toy_ade_layout_and_labels(mm, tmp_path):
    from PIL import Image
    spec = _small('shapes-ade')
    spec.generate(tmp_path)
    for split, n in (('training', 6), ('validation', 3)):
        imgs = sorted((tmp_path / 'images' / split).glob('*.jpg'))
        segs = sorted((tmp_path / 'annotations' / split).glob('*.png'))
        assert len(imgs) == len(segs) == n and [p.stem for p in imgs] == [p.stem for p in segs]
    labels = np.concatenate([np.asarray(Image.open(p)).ravel()
                             for p in (tmp_path / 'annotations' / 'training').glob('*.png')])
    assert set(np.unique(labels)) <= set(range(1, len(spec.class_names) + 1))  # 0 = unlabelled is never used
    assert len(np.unique(labels)) > 2  # background and shapes


def test_ensure_toy_dataset_caches(mm, tmp_path, monkeypatch):
    from vimzoo.mm import toy_data
    monkeypatch.setitem(toy_data.TOY_DATASETS, 'shapes-coco', _small('shapes-coco'))
    root = toy_data.ensure_toy_dataset('shapes-coco', tmp_path)
    assert (root / 'annotations' / 'instances_val2017.json').is_file()
    stamp = (root / 'annotations' / 'instances_val2017.json').stat().st_mtime_ns
    assert toy_data.ensure_toy_dataset('shapes-coco', tmp_path) == root
    assert (root / 'annotations' / 'instances_val2017.json').stat().st_mtime_ns == stamp  # not regenerated
    assert toy_data.toy_dataset_root('vimzoo-toy:shapes-coco/annotations/x.json', tmp_path) == \
        f'{root}/annotations/x.json'
    with pytest.raises(ValueError, match='shapes-ade'):
        toy_data.ensure_toy_dataset('shapes-nope', tmp_path)


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def env(tmp_path_factory) -> Dict[str, str]:
    cache = tmp_path_factory.mktemp('vimzoo_cache')
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', VIMZOO_CACHE=str(cache))


def _run(args: List[str], env: Dict[str, str], timeout: int = 600, cwd: Path = ROOT) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=str(cwd))
    assert proc.returncode == 0, f'{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'
    return proc.stdout + proc.stderr


def _losses(work_dir: Path) -> Dict[int, float]:
    """iteration -> loss from mmengine's scalars.json files (one per run / resume)."""
    out = {}
    for f in sorted(work_dir.glob('*/vis_data/scalars.json')):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if 'loss' in rec and 'step' in rec:
                out[int(rec['step'])] = float(rec['loss'])
    return out


_FAST = ['train_dataloader.batch_size=2', 'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
         'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False', 'val_dataloader.dataset.indices=6',
         'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
         'test_dataloader.dataset.indices=6', 'param_scheduler.0.end=1', 'default_hooks.logger.interval=1']


@pytest.mark.slow
@pytest.mark.parametrize('config, metric', [(DET_TOY, 'coco/bbox_mAP'), (SEG_TOY, 'mIoU')])
def test_train_resume_and_test_through_the_cli(mm, env, tmp_path, config, metric):
    work = tmp_path / 'work'
    common = [config, '--work-dir', str(work), '--cpu', '--cfg-options', *_FAST]
    out = _run([TRAIN, *common, 'train_cfg.max_iters=6', 'train_cfg.val_interval=6',
                'default_hooks.checkpoint.interval=6'], env)
    assert 'final validation (iteration 6)' in out
    first = json.loads((work / 'metrics.json').read_text())
    assert first['iter'] == 6 and metric in first['val'] and Path(first['checkpoint']).name == 'iter_6.pth'
    losses = _losses(work)
    assert sorted(losses) == list(range(1, 7))
    assert np.mean([losses[i] for i in (5, 6)]) < np.mean([losses[i] for i in (1, 2)]), losses

    out = _run([TRAIN, *common, 'train_cfg.max_iters=8', 'train_cfg.val_interval=8',
                'default_hooks.checkpoint.interval=8', '--resume'], env)
    assert 'resumed' in out.lower()
    second = json.loads((work / 'metrics.json').read_text())
    assert second['iter'] == 8 and Path(second['checkpoint']).name == 'iter_8.pth'
    resumed = _losses(work)
    assert set(resumed) - set(losses) == {7, 8}  # the second run started after iteration 6

    out = _run([TEST, config, second['checkpoint'], '--work-dir', str(tmp_path / 'test'), '--cpu', '--cfg-options',
                *_FAST], env)
    test = json.loads((tmp_path / 'test' / 'test_metrics.json').read_text())
    assert metric in test['test'] and 'test metrics:' in out


def test_new_run_never_overwrites_checkpoints(mm, tmp_path, monkeypatch):
    import argparse

    from mmengine.config import Config

    from vimzoo.mm.launch import _work_dir
    monkeypatch.chdir(tmp_path)
    cfg = Config(dict())
    args = argparse.Namespace(config=DET_TOY, work_dir=str(tmp_path / 'run'), resume=None)
    assert _work_dir(args, cfg, 'train') == str(tmp_path / 'run')
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'iter_8.pth').write_bytes(b'')
    with pytest.raises(FileExistsError, match='--resume'):
        _work_dir(args, cfg, 'train')
    with pytest.raises(FileNotFoundError, match='last_checkpoint'):
        _work_dir(argparse.Namespace(config=DET_TOY, work_dir=str(tmp_path / 'run'), resume='auto'), cfg, 'train')
    (tmp_path / 'run' / 'last_checkpoint').write_text(str(tmp_path / 'run' / 'iter_8.pth'))
    assert _work_dir(argparse.Namespace(config=DET_TOY, work_dir=str(tmp_path / 'run'), resume='auto'), cfg,
                     'train') == str(tmp_path / 'run')
    # default folders: a fresh timestamped one per run; --resume alone picks the newest run that has a checkpoint
    fresh = Path(_work_dir(argparse.Namespace(config=DET_TOY, work_dir=None, resume=None), cfg, 'train'))
    assert fresh.parent == Path('output') / 'mm' / DET_TOY and not fresh.exists()
    for stamp in ('20260101_000000', '20260102_000000'):
        (fresh.parent / stamp).mkdir(parents=True)
        (fresh.parent / stamp / 'last_checkpoint').write_text('x')
    (fresh.parent / '20260103_000000').mkdir()  # newest, but no checkpoint
    assert Path(_work_dir(argparse.Namespace(config=DET_TOY, work_dir=None, resume='auto'), cfg, 'train')) == \
        fresh.parent / '20260102_000000'


@pytest.mark.slow
def test_torchrun_two_processes_share_one_default_work_dir(mm, env, tmp_path):
    """DDP on CPU: the launcher creates the gloo group (mmengine's init_dist needs CUDA), both ranks train, and the
    default timestamped work dir is rank 0's for both."""
    out = _run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', TRAIN, SEG_TOY, '--cpu',
                '--cfg-options', *_FAST, 'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
                'default_hooks.checkpoint.interval=2'], env, cwd=tmp_path)
    assert 'Distributed training: True' in out and 'Distributed launcher: pytorch' in out
    runs = list((tmp_path / 'output' / 'mm' / SEG_TOY).iterdir())
    assert len(runs) == 1 and (runs[0] / 'iter_2.pth').is_file(), runs
    assert json.loads((runs[0] / 'metrics.json').read_text())['iter'] == 2
