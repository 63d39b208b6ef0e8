"""Train / evaluate any mmdet or mmseg config on mmengine's `Runner`: the code behind tools/mm_train.py and
tools/mm_test.py, also runnable as `python -m vimzoo.mm.launch {train,test} ...` (wheel installs have no tools/).
No dependency on mmdet's / mmseg's own tools folders or on openmim.

On top of what mmdet's `tools/train.py` does, a run can
- name a config that ships with vimzoo by file name alone (works from a wheel install: `mask-rcnn_van-b0_toy`);
- point every dataloader and evaluator at another folder with `--data-root` (the COCO / ADE20K layouts);
- use the built-in toy sets: a `data_root` of `vimzoo-toy:<name>/` is generated on first use (vimzoo.mm.toy_data);
- run on CPU with `--cpu` (or automatically without CUDA): AMP wrappers become plain ones, SyncBN becomes BN,
  DDP uses gloo without device ids;
- run DDP under `torchrun --nproc_per_node=N` (detected from the environment);
- print and save (`<work_dir>/metrics.json`, `test_metrics.json`) the final metrics.
"""
from __future__ import annotations

import argparse
import json
import numbers
import os
import os.path as osp
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ._paths import config_path as find_config  # the launcher's name for it

__all__ = ['find_config', 'set_data_root', 'resolve_toy_data', 'use_cpu', 'prepare_config', 'train_main',
           'test_main', 'main', 'LOADERS', 'EVALUATORS']

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
EVALUATORS = {'val_evaluator': 'val_dataloader', 'test_evaluator': 'test_dataloader'}
_SYNC_BN = ('SyncBN', 'MMSyncBN', 'TorchSyncBN', 'NaiveSyncBN')


def _log(msg: str) -> None:
    if int(os.environ.get('RANK', '0')) == 0:
        print(f'[vimzoo.mm] {msg}', flush=True)


# ---------------------------------------------------------------------------------------------------- configs
def _datasets(node: Any) -> Iterator[Dict[str, Any]]:
    """A dataloader's dataset dict and the ones wrapped inside it (RepeatDataset, ConcatDataset, ...)."""
    if isinstance(node, dict):
        yield node
        yield from _datasets(node.get('dataset'))
        for d in node.get('datasets') or []:
            yield from _datasets(d)


def _loader_dataset(cfg: Any, loader: str) -> Optional[Dict[str, Any]]:
    dl = cfg.get(loader)
    return dl.get('dataset') if isinstance(dl, dict) else None


def _evaluators(cfg: Any, key: str) -> List[Dict[str, Any]]:
    ev = cfg.get(key)
    return [ev] if isinstance(ev, dict) else [e for e in ev if isinstance(e, dict)] if isinstance(ev, list) else []


def set_data_root(cfg: Any, root: str) -> List[str]:
    """Point every dataloader dataset (`data_root`) and evaluator (`ann_file`) at `root`; returns what changed.

    Dataset paths (`ann_file`, `data_prefix`) are relative to `data_root` in mmengine, so one key per dataset moves
    it. Evaluators name their annotation file in full (COCO's `data/coco/annotations/instances_val2017.json`): the
    old data root at its start is replaced, else a file that ends with the dataset's own `ann_file` is re-joined.
    """
    changes = []
    old_roots: Dict[str, List[str]] = {}
    for loader in LOADERS:
        for ds in _datasets(_loader_dataset(cfg, loader)):
            if 'data_root' in ds:
                old_roots.setdefault(loader, []).append(str(ds['data_root']))
                if ds['data_root'] != root:
                    changes.append(f'{loader} {ds.get("type", "dataset")}.data_root: {ds["data_root"]} -> {root}')
                ds['data_root'] = root
    for key, loader in EVALUATORS.items():
        ds = _loader_dataset(cfg, loader) or {}
        for ev in _evaluators(cfg, key):
            ann = ev.get('ann_file')
            if not isinstance(ann, str) or not ann:
                continue
            new = None
            for old in old_roots.get(loader, []):
                old = old.rstrip('/')
                if old and (ann == old or ann.startswith(old + '/')):
                    new = osp.join(root, ann[len(old):].lstrip('/'))
                    break
            rel = ds.get('ann_file')
            if new is None and isinstance(rel, str) and rel and not osp.isabs(rel) and ann.endswith(rel):
                new = osp.join(root, rel)
            if new is None:
                _log(f'WARNING: {key}.ann_file {ann} is not under the dataset root; left unchanged')
            elif new != ann:
                changes.append(f'{key} {ev.get("type", "")}.ann_file: {ann} -> {new}')
                ev['ann_file'] = new
    if not old_roots:
        raise ValueError('--data-root: no dataloader in this config has a dataset with a data_root to replace')
    return changes


def _replace_strings(node: Any, fn) -> Any:
    if isinstance(node, dict):
        for k in list(node):
            node[k] = _replace_strings(node[k], fn)
    elif isinstance(node, list):
        node[:] = [_replace_strings(v, fn) for v in node]
    elif isinstance(node, str):
        return fn(node)
    return node


def resolve_toy_data(cfg: Any, cache_dir: Optional[str] = None) -> List[str]:
    """Generate (first use) the toy sets named by `vimzoo-toy:<name>/...` paths and write their real paths in."""
    from .toy_data import TOY_PREFIX, toy_dataset_root
    found: List[str] = []

    def fn(value: str) -> str:
        if not value.startswith(TOY_PREFIX):
            return value
        name = value[len(TOY_PREFIX):].split('/')[0]
        if name not in found:
            found.append(name)
            _log(f'toy dataset {name!r}: {toy_dataset_root(TOY_PREFIX + name, cache_dir)}')
        return toy_dataset_root(value, cache_dir)

    for key in (*LOADERS, *EVALUATORS):
        if cfg.get(key) is not None:
            cfg[key] = _replace_strings(cfg[key], fn)
    return found


def use_cpu(cfg: Any) -> List[str]:
    """Make a GPU config CPU-capable: AMP -> OptimWrapper, SyncBN -> BN, DDP on gloo without device ids."""
    changes = []
    ow = cfg.get('optim_wrapper')
    if isinstance(ow, dict) and ow.get('type') == 'AmpOptimWrapper':
        ow['type'] = 'OptimWrapper'
        for k in ('loss_scale', 'dtype', 'use_fsdp'):
            ow.pop(k, None)
        changes.append('optim_wrapper: AmpOptimWrapper -> OptimWrapper')

    def to_bn(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get('type') in _SYNC_BN:
                changes.append(f'{path}: {node["type"]} -> BN')
                node['type'] = 'BN'
            if node.get('pyramid_norm') in _SYNC_BN:
                changes.append(f'{path}.pyramid_norm: {node["pyramid_norm"]} -> BN')
                node['pyramid_norm'] = 'BN'
            for k, v in node.items():
                to_bn(v, f'{path}.{k}')
        elif isinstance(node, list):
            for i, v in enumerate(node):
                to_bn(v, f'{path}[{i}]')

    to_bn(cfg.get('model'), 'model')
    if cfg.get('sync_bn'):
        cfg.pop('sync_bn')
        changes.append('sync_bn: removed')
    env = cfg.setdefault('env_cfg', {})
    dist = env.setdefault('dist_cfg', {})
    if dist.get('backend', 'nccl') != 'gloo':
        changes.append(f'env_cfg.dist_cfg.backend: {dist.get("backend", "nccl")} -> gloo')
        dist['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None  # CPU modules take no device ids in DDP
    cfg['model_wrapper_cfg'] = wrapper
    return changes


def _launcher(requested: Optional[str]) -> str:
    if requested:
        return requested
    return 'pytorch' if 'LOCAL_RANK' in os.environ and int(os.environ.get('WORLD_SIZE', '1')) > 1 else 'none'


def prepare_config(args: argparse.Namespace, mode: str) -> Any:
    """Load `args.config` and apply the command line (cfg-options, data root, toy data, CPU, AMP, resume)."""
    path = find_config(args.config)
    cfg = Config.fromfile(str(path))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        root = str(Path(args.data_root).expanduser().resolve())
        if not Path(root).is_dir():
            raise FileNotFoundError(f'--data-root {args.data_root}: no such folder')
        for line in set_data_root(cfg, root):
            _log(line)
    resolve_toy_data(cfg)
    if args.cpu:
        for line in use_cpu(cfg):
            _log(f'--cpu: {line}')
    cfg.launcher = _launcher(args.launcher)
    if mode == 'train':
        if args.amp and args.cpu:
            _log('--amp ignored: mixed precision needs a GPU here (AmpOptimWrapper)')
        elif args.amp:
            ow = cfg.optim_wrapper
            if ow.get('type') != 'AmpOptimWrapper':
                ow['type'] = 'AmpOptimWrapper'
                ow.setdefault('loss_scale', 'dynamic')
        if args.resume == 'auto':
            cfg.resume, cfg.load_from = True, None
        elif args.resume:
            cfg.resume, cfg.load_from = True, args.resume
    else:
        cfg.load_from = args.checkpoint
    return cfg


# ---------------------------------------------------------------------------------------------------- running
def _parser(mode: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=('Train' if mode == 'train' else 'Evaluate') + ' an mmdet / mmseg config on mmengine\'s Runner.')
    p.add_argument('config', help='config file, or the name of a vimzoo config (e.g. mask-rcnn_van-b0_toy)')
    if mode == 'test':
        p.add_argument('checkpoint', help='checkpoint file (.pth written by mmengine, e.g. by tools/mm_train.py)')
    p.add_argument('--data-root', help='dataset folder in the COCO / ADE20K layout; replaces the data_root of every '
                                       'dataloader and the annotation file of every evaluator')
    p.add_argument('--work-dir', help='where logs and checkpoints go (default: ' + (
        'output/mm/<config name>/<date_time>)' if mode == 'train' else 'the checkpoint\'s folder)'))
    p.add_argument('--cpu', action='store_true', help='run on CPU even with a GPU (AMP -> fp32, SyncBN -> BN, gloo)')
    if mode == 'train':
        p.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
                       help='resume training: from CHECKPOINT, or (no value) from the last checkpoint in the work dir')
        p.add_argument('--amp', action='store_true', help='mixed precision (AmpOptimWrapper; GPU only)')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default=None,
                   help='default: pytorch under torchrun with more than one process, else none')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                   help='override config keys, e.g. train_cfg.max_iters=100 model.backbone.pretrained=/path.pth')
    return p


def _select_device(args: argparse.Namespace) -> None:
    """CPU mode when asked for or when there is no CUDA device (then CUDA stays hidden from mmengine)."""
    import torch
    if args.cpu or not torch.cuda.is_available():
        if not args.cpu:
            _log('no CUDA device: running on CPU (as with --cpu)')
        args.cpu = True
        os.environ['CUDA_VISIBLE_DEVICES'] = ''  # mmengine picks the device with torch.cuda.is_available()


def _init_distributed(cfg: Any, cpu: bool) -> None:
    """Under torchrun, create the process group before the Runner does (mmengine would call torch.cuda.set_device,
    which fails on CPU), so that the ranks can also agree on a default work dir."""
    import datetime

    import torch
    import torch.distributed as dist
    if cfg.launcher != 'pytorch' or dist.is_initialized():
        return
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    backend = 'gloo' if cpu else dist_cfg.pop('backend', 'nccl')
    dist_cfg.pop('backend', None)
    if 'timeout' in dist_cfg:
        dist_cfg['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
    if not cpu:
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    dist.init_process_group(backend=backend, **dist_cfg)


def _leave_process_group(finished: bool) -> None:
    """Tear the process group down before the interpreter exits. Left to interpreter shutdown, gloo's threads can be
    destroyed while still running (std::terminate: exit status -6 after a finished run). A finished run first waits
    for every rank, so none tears down while another still talks to it; a failed one only leaves."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def _has_checkpoints(folder: Path) -> bool:
    return (folder / 'last_checkpoint').is_file() or any(folder.glob('*.pth'))


def _work_dir(args: argparse.Namespace, cfg: Any, mode: str) -> str:
    """--work-dir, else the config's, else output/mm/<config>/<time> (test: the checkpoint's folder).

    A new training run never writes into a folder that already holds checkpoints (they would be overwritten):
    `--resume` continues there, and `--resume` without a work dir picks the newest run of the config.
    """
    import torch.distributed as dist
    explicit = args.work_dir or cfg.get('work_dir')
    if mode == 'test':
        return explicit or str(Path(args.checkpoint).expanduser().resolve().parent)
    if explicit:
        folder = Path(explicit).expanduser()
        if not args.resume and folder.is_dir() and _has_checkpoints(folder):
            raise FileExistsError(f'work dir {folder} already holds checkpoints of an earlier run; pass --resume to '
                                  'continue it, or another --work-dir for a new run')
        if args.resume == 'auto' and not (folder / 'last_checkpoint').is_file():
            raise FileNotFoundError(f'--resume: {folder} has no last_checkpoint to resume from')
        return str(folder)
    base = Path('output') / 'mm' / find_config(args.config).stem
    if args.resume == 'auto':
        runs = sorted(p for p in base.glob('*') if (p / 'last_checkpoint').is_file())
        if not runs:
            raise FileNotFoundError(f'--resume: no run of {args.config} with a checkpoint under {base}; pass '
                                    '--work-dir DIR or --resume CHECKPOINT')
        return str(runs[-1])
    folder = [str(base / time.strftime('%Y%m%d_%H%M%S'))]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(folder, src=0)  # every rank writes to rank 0's folder
    return folder[0]


def _prebuild_kernels(cfg: Any) -> None:
    """Vim / LBVim compile their CPU scan kernel on first use (about a minute): say so instead of stalling."""
    bb = cfg.get('model', {}).get('backbone', {})
    name = bb.get('model_name') if isinstance(bb, dict) else None
    try:
        import vimzoo
        family = vimzoo.family_of(name) if name else None
    except KeyError:
        family = None
    if family in ('vim', 'lbvim'):
        import vimzoo.ops
        _log('preparing the selective-scan kernels (compiled once per machine, about a minute the first time)')
        _log(f'kernels: {vimzoo.ops.kernel_status()}')


class _MetricsRecorder(Hook):
    """Keeps the metrics of the last validation / test epoch."""
    priority = 'LOWEST'

    def __init__(self) -> None:
        self.val: Dict[str, Any] = {}
        self.test: Dict[str, Any] = {}
        self.val_iter = 0

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, Any]] = None) -> None:
        self.val, self.val_iter = dict(metrics or {}), runner.iter

    def after_test_epoch(self, runner, metrics: Optional[Dict[str, Any]] = None) -> None:
        self.test = dict(metrics or {})


def _format(metrics: Dict[str, Any]) -> str:
    """COCO mAPs are fractions (3 decimals, as mmdet prints them); mmseg's IoUs are percentages (2 decimals)."""
    def fmt(v: Any) -> str:
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            return f'{float(v):.3f}' if abs(float(v)) <= 1 else f'{float(v):.2f}'
        return str(v)
    return '  '.join(f'{k}={fmt(v)}' for k, v in metrics.items())


def _write_json(path: str, data: Dict[str, Any]) -> None:
    if int(os.environ.get('RANK', '0')) != 0:
        return
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2, default=float)  # numpy scalars -> float
    os.replace(tmp, path)


def _build_runner(cfg: Any):
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    recorder = _MetricsRecorder()
    runner.register_hook(recorder)
    return runner, recorder


def _setup(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], mode: str) -> Tuple[Any, Any]:
    """Parse, pick the device, load and adapt the config, join the process group, choose the work dir."""
    args = parser.parse_args(argv)
    try:
        if mode == 'test' and not Path(args.checkpoint).expanduser().is_file():
            raise FileNotFoundError(f'checkpoint {args.checkpoint} not found')
        _select_device(args)
        cfg = prepare_config(args, mode)
        _init_distributed(cfg, args.cpu)
        cfg.work_dir = _work_dir(args, cfg, mode)
    except (FileNotFoundError, FileExistsError) as e:  # usage errors: a message, not a traceback
        parser.error(str(e))
    return args, cfg


def _run(mode: str, argv: Optional[Sequence[str]], body: Callable[[argparse.Namespace, Any], None]) -> int:
    """Set up, run `body(args, cfg)`, and leave the process group however it ends."""
    args, cfg = _setup(_parser(mode), argv, mode)
    finished = False
    try:
        body(args, cfg)
        finished = True
    finally:
        _leave_process_group(finished)
    return 0


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    return _run('train', argv, _train)


def _train(args: argparse.Namespace, cfg: Any) -> None:
    _prebuild_kernels(cfg)
    runner, recorder = _build_runner(cfg)
    runner.train()
    marker = osp.join(cfg.work_dir, 'last_checkpoint')  # written by mmengine's CheckpointHook
    last = Path(marker).read_text().strip() if osp.isfile(marker) else None
    _write_json(osp.join(cfg.work_dir, 'metrics.json'),
                dict(config=args.config, iter=runner.iter, epoch=runner.epoch, checkpoint=last,
                     val_iter=recorder.val_iter, val=recorder.val))
    if recorder.val:
        _log(f'final validation (iteration {recorder.val_iter}): {_format(recorder.val)}')
    _log(f'work dir: {cfg.work_dir}' + (f'; last checkpoint: {last}' if last else ''))


def test_main(argv: Optional[Sequence[str]] = None) -> int:
    return _run('test', argv, _test)


def _test(args: argparse.Namespace, cfg: Any) -> None:
    _prebuild_kernels(cfg)
    runner, recorder = _build_runner(cfg)
    metrics = runner.test()
    metrics = dict(metrics or recorder.test)
    _write_json(osp.join(cfg.work_dir, 'test_metrics.json'),
                dict(config=args.config, checkpoint=args.checkpoint, test=metrics))
    _log(f'test metrics: {_format(metrics)}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m vimzoo.mm.launch {train,test} ...`: the same as tools/mm_{train,test}.py, for wheel installs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ('train', 'test'):
        print('usage: python -m vimzoo.mm.launch {train,test} CONFIG [options]  (--help after train/test for more)',
              file=sys.stderr)
        return 2
    return (train_main if argv[0] == 'train' else test_main)(argv[1:])


if __name__ == '__main__':
    sys.exit(main())
