"""The `tools/train.py` run loop, assembled from timm's library pieces.

timm ships data (`create_dataset`, `create_loader`, `Mixup`), optimizers (`create_optimizer_v2`, layer decay through
`group_matcher`), schedulers (`create_scheduler_v2`), EMA (`ModelEmaV3`), losses and metrics, but its `train.py` is
not part of the wheel. This module adds the loop around them plus what the zoo needs: a download-free default
dataset, recipes, exact (step-granular) resume after a crash, atomic checkpoints and readable logs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from .checkpoint import (atomic_copy, capture_rng_state, export_safetensors, load_checkpoint, load_model_weights,
                         restore_rng_state, save_checkpoint, to_plain)
from .config import explicit_options, load_recipe, merge_defaults
from .datasets import BUILTIN_DATASETS, DatasetError, check_image_folder, default_cache_dir, ensure_builtin_dataset
from .runlog import RunLog

__all__ = ['DEFAULT_MODEL', 'BUILTIN_PRESET', 'build_parser', 'parse_args', 'main']

#: The model `python tools/train.py` trains when no --model is given (a tiny zoo variant, fast on CPU).
DEFAULT_MODEL = 'test_dependencyvit'

#: Defaults used when no --data-dir/--dataset is given: hyper-parameters for the built-in shapes dataset, tuned so
#: the no-argument run finishes in a few CPU minutes. ImageNet recipes live in configs/train/*.yaml.
BUILTIN_PRESET: Dict[str, Any] = dict(
    epochs=15, batch_size=32, lr_base=2e-3, lr_base_size=32, weight_decay=0.05, warmup_epochs=1, min_lr=1e-5,
    warmup_lr=1e-5, img_size=64, scale=[0.6, 1.0], ratio=[0.75, 1.3333], color_jitter=0.2, smoothing=0.1,
    hflip=0.5, interpolation='bilinear', crop_pct=1.0, workers=2, log_interval=5,
)

TRAIN_SPLITS = ['train']
VAL_SPLITS = ['val', 'validation', 'eval', 'test']


# ----------------------------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------------------------

def _positive_int(value: str) -> int:
    v = int(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value}')
    return v


def _non_negative_int(value: str) -> int:
    v = int(value)
    if v < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {value}')
    return v


def _non_negative_float(value: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f'must be a finite number >= 0, got {value}')
    return v


def _positive_float(value: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f'must be a finite number > 0, got {value}')
    return v


def _probability(value: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f'must be a probability in [0, 1], got {value}')
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='tools/train.py',
        description='Train a vimzoo (or any timm) model on ImageNet-style ImageFolder data. With no arguments it '
                    f'trains {DEFAULT_MODEL} on a built-in generated dataset (no download) on CPU in minutes.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('recipe / model')
    g.add_argument('--config', '-c', default=None, metavar='FILE',
                   help='YAML recipe (e.g. configs/train/vim.yaml or just "vim"); command-line options override it')
    g.add_argument('--model', default=DEFAULT_MODEL, help='model name (vimzoo.list_models() / timm.list_models())')
    g.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V',
                   help='extra model constructor kwargs, values parsed as YAML (e.g. depths=[2,2,2,2])')
    g.add_argument('--pretrained', action='store_true', help='start from the model\'s pretrained weights')
    g.add_argument('--initial-checkpoint', default=None, metavar='PATH',
                   help='start from these weights (.pth/.safetensors); a mismatched classifier is re-initialised')
    g.add_argument('--num-classes', type=_positive_int, default=None, help='default: number of class folders')
    g.add_argument('--drop', type=_probability, default=None, help='dropout rate (model default if unset)')
    g.add_argument('--drop-path', type=_probability, default=None, help='stochastic depth rate (model default)')
    g.add_argument('--grad-checkpointing', action='store_true', help='activation checkpointing (less memory)')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--sync-bn', action='store_true', help='convert BatchNorm to SyncBatchNorm under DDP')

    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default=None, metavar='DIR',
                   help='dataset root with train/ and val/ ImageFolder sub-folders (ImageNet layout). '
                        'Omit to use the built-in generated dataset')
    g.add_argument('--dataset', default='', help='timm dataset spec for non-folder data (hfds/..., wds/...)')
    g.add_argument('--train-split', default='train')
    g.add_argument('--val-split', default='validation', help='also tried: val, validation, eval')
    g.add_argument('--builtin-dataset', default='shapes10', choices=sorted(BUILTIN_DATASETS),
                   help='generated dataset used when --data-dir is not given')
    g.add_argument('--dataset-cache-dir', default=None, metavar='DIR',
                   help=f'where built-in datasets are generated (default {default_cache_dir()}, or $VIMZOO_CACHE)')
    g.add_argument('--img-size', type=_positive_int, default=None, help='input size (model default if unset)')
    g.add_argument('--input-size', type=_positive_int, nargs=3, default=None, metavar=('C', 'H', 'W'))
    g.add_argument('--crop-pct', type=_positive_float, default=None, help='eval crop fraction')
    g.add_argument('--mean', type=float, nargs='+', default=None)
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--interpolation', default='', help='eval resize interpolation (model default)')
    g.add_argument('--train-interpolation', default='random')
    g.add_argument('--workers', '-j', type=_non_negative_int, default=4, help='data loader processes per rank')
    g.add_argument('--pin-mem', action='store_true')
    g.add_argument('--limit-train-batches', type=_positive_int, default=None, help='debug: batches per epoch')
    g.add_argument('--limit-val-batches', type=_positive_int, default=None, help='debug: eval batches')

    g = p.add_argument_group('augmentation / regularisation')
    g.add_argument('--no-aug', action='store_true', help='plain resize+crop, no random augmentation')
    g.add_argument('--scale', type=float, nargs=2, default=None, help='RandomResizedCrop area range')
    g.add_argument('--ratio', type=float, nargs=2, default=None, help='RandomResizedCrop aspect range')
    g.add_argument('--hflip', type=_probability, default=0.5)
    g.add_argument('--vflip', type=_probability, default=0.0)
    g.add_argument('--color-jitter', type=_non_negative_float, default=0.4)
    g.add_argument('--aa', default=None, help='auto-augment policy, e.g. rand-m9-mstd0.5-inc1')
    g.add_argument('--aug-repeats', type=_non_negative_int, default=0, help='repeated augmentation (DDP only)')
    g.add_argument('--reprob', type=_probability, default=0.0, help='random erasing probability')
    g.add_argument('--remode', default='pixel')
    g.add_argument('--recount', type=_positive_int, default=1)
    g.add_argument('--mixup', type=_non_negative_float, default=0.0, help='mixup alpha (0 = off)')
    g.add_argument('--cutmix', type=_non_negative_float, default=0.0, help='cutmix alpha (0 = off)')
    g.add_argument('--cutmix-minmax', type=float, nargs=2, default=None)
    g.add_argument('--mixup-prob', type=_probability, default=1.0)
    g.add_argument('--mixup-switch-prob', type=_probability, default=0.5)
    g.add_argument('--mixup-mode', default='batch', choices=['batch', 'pair', 'elem'])
    g.add_argument('--mixup-off-epoch', type=_non_negative_int, default=0, help='turn mixup off at this epoch')
    g.add_argument('--smoothing', type=_probability, default=0.1, help='label smoothing')
    g.add_argument('--bce-loss', action='store_true', help='binary cross-entropy instead of softmax CE')

    g = p.add_argument_group('optimisation')
    g.add_argument('--epochs', type=_positive_int, default=300)
    g.add_argument('--batch-size', '-b', type=_positive_int, default=128, help='per-process batch size')
    g.add_argument('--val-batch-size', type=_positive_int, default=None, help='default: 2 x batch size')
    g.add_argument('--grad-accum-steps', type=_positive_int, default=1)
    g.add_argument('--opt', default='adamw', help='timm optimizer name (adamw, sgd, lamb, ...)')
    g.add_argument('--opt-eps', type=_positive_float, default=None)
    g.add_argument('--opt-betas', type=float, nargs='+', default=None)
    g.add_argument('--momentum', type=_non_negative_float, default=0.9)
    g.add_argument('--weight-decay', type=_non_negative_float, default=0.05)
    g.add_argument('--layer-decay', type=_positive_float, default=None,
                   help='layer-wise lr decay (uses the model\'s group_matcher)')
    g.add_argument('--clip-grad', type=_positive_float, default=None)
    g.add_argument('--clip-mode', default='norm', choices=['norm', 'value', 'agc'])
    g.add_argument('--lr', type=_positive_float, default=None,
                   help='absolute learning rate; default lr_base * (global batch / lr_base_size)')
    g.add_argument('--lr-base', type=_positive_float, default=5e-4)
    g.add_argument('--lr-base-size', type=_positive_int, default=512,
                   help='global batch size at which lr_base applies (scaling rule)')
    g.add_argument('--lr-base-scale', default='linear', choices=['linear', 'sqrt'])
    g.add_argument('--sched', default='cosine', choices=['cosine', 'tanh', 'step', 'multistep', 'poly', 'none'])
    g.add_argument('--sched-on-epochs', action='store_true', help='update the lr per epoch, not per step')
    g.add_argument('--warmup-epochs', type=_non_negative_int, default=5)
    g.add_argument('--warmup-lr', type=_non_negative_float, default=1e-6)
    g.add_argument('--min-lr', type=_non_negative_float, default=1e-5)
    g.add_argument('--cooldown-epochs', type=_non_negative_int, default=0)
    g.add_argument('--decay-epochs', type=_positive_float, default=90)
    g.add_argument('--decay-milestones', type=int, nargs='+', default=[90, 180, 270])
    g.add_argument('--decay-rate', type=_positive_float, default=0.1)
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (timm ModelEmaV3)')
    g.add_argument('--model-ema-decay', type=_probability, default=0.9998)
    g.add_argument('--model-ema-warmup', action='store_true')
    g.add_argument('--model-ema-force-cpu', action='store_true')

    g = p.add_argument_group('precision / devices')
    g.add_argument('--device', default='auto', help='auto (cuda if available), cpu, cuda, cuda:1 ...')
    g.add_argument('--amp', action='store_true', help='mixed precision with torch.autocast')
    g.add_argument('--amp-dtype', default='bfloat16', choices=['bfloat16', 'float16'],
                   help='float16 also enables a GradScaler')
    g.add_argument('--dist-backend', default=None, help='default: nccl on CUDA, gloo on CPU')
    g.add_argument('--seed', type=int, default=42)

    g = p.add_argument_group('output / checkpoints')
    g.add_argument('--output', default=None, metavar='DIR',
                   help='run folder (default output/train/<time>-<model>; the checkpoint\'s folder on --resume)')
    g.add_argument('--resume', default=None, metavar='PATH',
                   help='continue from a checkpoint (or "auto": <output>/last.pth if it exists)')
    g.add_argument('--checkpoint-every-steps', type=_non_negative_int, default=0,
                   help='also write last.pth every N optimizer steps (0 = only at epoch ends)')
    g.add_argument('--eval-metric', default='top1', choices=['top1', 'top5', 'loss'])
    g.add_argument('--log-interval', type=_positive_int, default=50, help='optimizer steps between log records')
    g.add_argument('--no-progress', action='store_true', help='no tqdm progress bar')
    g.add_argument('--no-plot', action='store_true')
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if any(a in ('-h', '--help') for a in argv):
        parser.parse_args(['--help'])  # before defaults are suppressed for explicit_options
    explicit = explicit_options(parser, argv)
    uses_builtin = not explicit.get('data_dir') and not explicit.get('dataset')
    recipe = load_recipe(explicit['config'], parser) if explicit.get('config') else {'base': {}, 'variants': {}}
    if uses_builtin and (recipe['base'].get('data_dir') or recipe['base'].get('dataset')):
        uses_builtin = False
    model = explicit.get('model') or recipe['base'].get('model') or DEFAULT_MODEL
    merge_defaults(parser, [BUILTIN_PRESET if uses_builtin else None, recipe['base'],
                            recipe['variants'].get(model)])
    args = parser.parse_args(argv)
    args.recipe = recipe.get('path')
    args.uses_builtin = uses_builtin
    _check_args(args, parser)
    return args


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.resume and args.resume != 'auto' and not Path(args.resume).expanduser().is_file():
        parser.error(f'--resume {args.resume}: checkpoint file not found.')
    if args.initial_checkpoint and not Path(args.initial_checkpoint).expanduser().is_file():
        parser.error(f'--initial-checkpoint {args.initial_checkpoint}: file not found.')
    if args.resume == 'auto' and not args.output:
        parser.error('--resume auto needs --output (the run folder holding last.pth).')
    if (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax) and args.batch_size % 2:
        parser.error(f'mixup/cutmix need an even --batch-size (got {args.batch_size}).')
    if args.scale is not None and not (0 < args.scale[0] <= args.scale[1]):
        parser.error(f'--scale must satisfy 0 < min <= max, got {args.scale}.')
    if args.amp and args.amp_dtype == 'float16' and args.bce_loss:
        pass
    try:
        args.model_kwargs_dict = _parse_kwargs(args.model_kwargs)
    except ValueError as e:
        parser.error(str(e))
    import vimzoo  # registers the zoo with timm
    try:
        vimzoo.check_model_name(args.model)
    except RuntimeError as e:
        parser.error(str(e))


def _parse_kwargs(items: Sequence[str]) -> Dict[str, Any]:
    import yaml
    out = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'--model-kwargs expects KEY=VALUE items, got {item!r}.')
        k, v = item.split('=', 1)
        out[k.replace('-', '_')] = yaml.safe_load(v)
    return out


# ----------------------------------------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------------------------------------

class _Dist:
    def __init__(self, args: argparse.Namespace):
        self.world_size = int(os.environ.get('WORLD_SIZE', '1'))
        self.rank = int(os.environ.get('RANK', '0'))
        self.local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        self.distributed = self.world_size > 1
        dev = args.device
        if dev == 'auto':
            dev = 'cuda' if torch.cuda.is_available() else 'cpu'
        device = torch.device(dev)
        if device.type == 'cuda':
            if not torch.cuda.is_available():
                raise SystemExit('error: --device cuda requested but no CUDA device is available.')
            if self.distributed:
                device = torch.device('cuda', self.local_rank)
            elif device.index is None:
                device = torch.device('cuda', torch.cuda.current_device())
            torch.cuda.set_device(device)
        self.device = device
        if self.distributed:
            backend = args.dist_backend or ('nccl' if device.type == 'cuda' else 'gloo')
            dist.init_process_group(backend=backend)
        self.is_main = self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather_objects(self, obj: Any) -> List[Any]:
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------

class _ResumableSampler(torch.utils.data.Sampler):
    """Wraps the loader's sampler so a resumed epoch can start at batch k of the same permutation."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.skip = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return islice(iter(self.sampler), skip, None)

    def __len__(self) -> int:
        return len(self.sampler)


def _base_loader(loader):
    return getattr(loader, 'loader', loader)  # unwrap timm PrefetchLoader


def _install_resumable_sampler(loader) -> Optional[_ResumableSampler]:
    base = _base_loader(loader)
    batch_sampler = getattr(base, 'batch_sampler', None)
    if batch_sampler is None or not hasattr(batch_sampler, 'sampler'):
        return None
    wrapper = _ResumableSampler(batch_sampler.sampler)
    batch_sampler.sampler = wrapper
    return wrapper


def _set_epoch(loader, epoch: int, seed: int, rank: int, skip_samples: int,
               resumable: Optional[_ResumableSampler]) -> None:
    """Deterministic per-epoch order: DistributedSampler(seed, epoch), or the same permutation for one process."""
    base = _base_loader(loader)
    sampler = base.sampler
    if hasattr(sampler, 'set_epoch'):
        if hasattr(sampler, 'seed'):
            sampler.seed = seed
        sampler.set_epoch(epoch)
    elif isinstance(sampler, torch.utils.data.RandomSampler):
        sampler.generator = torch.Generator().manual_seed(seed + epoch)  # == DistributedSampler with 1 replica
    # worker seeds come from loader.generator, so creating the iterator does not consume the global torch RNG
    base.generator = torch.Generator().manual_seed((seed * 1000 + epoch) * 1000 + rank)
    if resumable is not None:
        resumable.skip = skip_samples


def _build_data(args, dist_ctx: _Dist):
    from timm.data import create_dataset
    if args.uses_builtin:
        root = ensure_builtin_dataset(args.builtin_dataset, args.dataset_cache_dir)
        if dist_ctx.is_main:
            print(f'Using built-in dataset {args.builtin_dataset!r} at {root} (generated on first use; '
                  f'pass --data-dir for ImageNet).', flush=True)
    else:
        root = Path(args.data_dir).expanduser() if args.data_dir else None
    class_map = None
    if not args.dataset:
        if root is None:
            raise DatasetError('give --data-dir (ImageFolder root) or --dataset.')
        train_dir = check_image_folder(root, [args.train_split], 'training data')
        val_dir = check_image_folder(root, list(dict.fromkeys([args.val_split] + VAL_SPLITS)), 'validation data')
        ds_train = create_dataset('', root=str(next(iter(train_dir.values()))), split=args.train_split,
                                  is_training=True, search_split=False, seed=args.seed)
        class_map = dict(ds_train.reader.class_to_idx)
        ds_val = create_dataset('', root=str(next(iter(val_dir.values()))), split=args.val_split,
                                search_split=False, class_map=class_map)
        if len(ds_val) == 0:
            raise DatasetError(f'validation data {next(iter(val_dir.values()))} has no images for the '
                               f'{len(class_map)} training classes.')
    else:
        ds_train = create_dataset(args.dataset, root=str(root) if root else None, split=args.train_split,
                                  is_training=True, batch_size=args.batch_size, seed=args.seed)
        ds_val = create_dataset(args.dataset, root=str(root) if root else None, split=args.val_split,
                                batch_size=args.batch_size)
    if len(ds_train) == 0:
        raise DatasetError('the training dataset is empty.')
    return ds_train, ds_val, class_map


def _make_loaders(args, data_config, ds_train, ds_val, dist_ctx: _Dist, use_prefetcher: bool):
    from timm.data import create_loader
    train_interp = args.train_interpolation or data_config['interpolation']
    common = dict(mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
                  distributed=dist_ctx.distributed, pin_memory=args.pin_mem, device=dist_ctx.device,
                  use_prefetcher=use_prefetcher, persistent_workers=False)
    loader_train = create_loader(
        ds_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, num_aug_repeats=args.aug_repeats if dist_ctx.distributed else 0,
        interpolation=train_interp, **common)
    loader_val = create_loader(
        ds_val, input_size=data_config['input_size'], batch_size=args.val_batch_size or 2 * args.batch_size,
        is_training=False, interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
        crop_mode=data_config.get('crop_mode'), **common)
    if len(loader_train) == 0:
        raise DatasetError(f'{len(ds_train)} training images give no full batch of {args.batch_size} per '
                           f'process; lower --batch-size.')
    return loader_train, loader_val


# ----------------------------------------------------------------------------------------------------------------
# model / optimisation
# ----------------------------------------------------------------------------------------------------------------

def _create_model(args, num_classes: int) -> nn.Module:
    import timm
    kwargs = dict(args.model_kwargs_dict)
    if args.drop is not None:
        kwargs['drop_rate'] = args.drop
    if args.drop_path is not None:
        kwargs['drop_path_rate'] = args.drop_path
    model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=num_classes, **kwargs)
    if args.initial_checkpoint:
        state = load_model_weights(args.initial_checkpoint)
        own = model.state_dict()
        dropped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        for k in dropped:
            del state[k]
        missing, unexpected = model.load_state_dict(state, strict=False)
        print(f'Loaded {args.initial_checkpoint}: re-initialised {dropped or "nothing"}; missing {missing}; '
              f'unexpected {unexpected}', flush=True)
    if args.grad_checkpointing:
        if not hasattr(model, 'set_grad_checkpointing'):
            raise SystemExit(f'error: {args.model} does not support --grad-checkpointing.')
        model.set_grad_checkpointing(True)
    return model


def _resolve_lr(args, world_size: int) -> float:
    if args.lr is not None:
        return args.lr
    global_batch = args.batch_size * world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    if args.lr_base_scale == 'sqrt':
        ratio = ratio ** 0.5
    return args.lr_base * ratio


def _loss_fns(args, mixup_active: bool):
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if args.bce_loss:
        train = BinaryCrossEntropy(smoothing=0.0 if mixup_active else args.smoothing)
    elif mixup_active:
        train = SoftTargetCrossEntropy()  # smoothing is applied inside Mixup
    elif args.smoothing:
        train = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train = nn.CrossEntropyLoss()
    return train, nn.CrossEntropyLoss()


# ----------------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------------

def evaluate(model: nn.Module, loader, dist_ctx: _Dist, autocast, prefetcher: bool, num_classes: int,
             limit: Optional[int] = None, channels_last: bool = False) -> Dict[str, float]:
    """Top-1/top-5/loss over the loader (summed over ranks); uses timm.utils.accuracy."""
    from timm.utils import accuracy
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction='sum')
    sums = torch.zeros(4, dtype=torch.float64)
    k5 = min(5, num_classes)
    with torch.inference_mode():
        for i, (inp, target) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            if not prefetcher:
                inp, target = inp.to(dist_ctx.device), target.to(dist_ctx.device)
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            with autocast():
                out = model(inp)
            out = out.float()
            n = target.shape[0]
            acc1, acc5 = accuracy(out, target, topk=(1, k5))
            # timm's accuracy() gives float32 percentages; turn them back into exact correct-prediction counts
            sums += torch.tensor([loss_fn(out, target).item(), round(acc1.item() * n / 100),
                                  round(acc5.item() * n / 100), n], dtype=torch.float64)
    if dist_ctx.distributed:
        sums = sums.to(dist_ctx.device)
        dist_ctx.all_reduce_sum(sums)
        sums = sums.cpu()
    n = max(sums[3].item(), 1)
    return {'loss': sums[0].item() / n, 'top1': 100 * sums[1].item() / n, 'top5': 100 * sums[2].item() / n,
            'count': int(sums[3].item())}


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------

def _default_output(args) -> Path:
    stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
    return Path('output') / 'train' / f'{stamp}-{args.model}'


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    dist_ctx = _Dist(args)
    try:
        return _run(args, dist_ctx)
    except DatasetError as e:
        print(f'tools/train.py: error: {e}', file=sys.stderr, flush=True)
        return 2
    finally:
        dist_ctx.close()


def _run(args: argparse.Namespace, dist_ctx: _Dist) -> int:  # noqa: C901 (one linear training script)
    import timm  # noqa: F401
    from timm.data import Mixup, resolve_data_config
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, dispatch_clip_grad, random_seed
    from tqdm import tqdm

    t_start = time.time()
    device = dist_ctx.device
    main_proc = dist_ctx.is_main
    random_seed(args.seed, dist_ctx.rank)

    # ---- run folder / resume target
    resume_path = None
    if args.resume == 'auto':
        candidate = Path(args.output) / 'last.pth'
        resume_path = candidate if candidate.is_file() else None
    elif args.resume:
        resume_path = Path(args.resume).expanduser()
    out_dir = Path(args.output) if args.output else (resume_path.parent if resume_path else _default_output(args))

    # ---- data + model
    ds_train, ds_val, class_map = _build_data(args, dist_ctx)
    if main_proc:
        out_dir.mkdir(parents=True, exist_ok=True)
    num_classes = args.num_classes or (len(class_map) if class_map else None)
    if num_classes is None:
        raise SystemExit('error: cannot infer the number of classes for this dataset; pass --num-classes.')
    model = _create_model(args, num_classes)
    data_config = resolve_data_config(vars(args), model=model, verbose=main_proc)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if dist_ctx.distributed and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    use_prefetcher = device.type == 'cuda'
    loader_train, loader_val = _make_loaders(args, data_config, ds_train, ds_val, dist_ctx, use_prefetcher)
    resumable = _install_resumable_sampler(loader_train)

    lr = _resolve_lr(args, dist_ctx.world_size)
    opt_kwargs = {}
    if args.opt_eps is not None:
        opt_kwargs['eps'] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs['betas'] = tuple(args.opt_betas)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, layer_decay=args.layer_decay, **opt_kwargs)

    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp else nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16)

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)

    train_model = model
    if dist_ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)

    limit = args.limit_train_batches
    batches_per_epoch = min(len(loader_train), limit) if limit else len(loader_train)
    accum = args.grad_accum_steps
    updates_per_epoch = (batches_per_epoch + accum - 1) // accum
    if args.sched == 'none':
        lr_scheduler, num_epochs = None, args.epochs
    else:
        lr_scheduler, num_epochs = create_scheduler_v2(
            optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
            decay_milestones=args.decay_milestones, cooldown_epochs=args.cooldown_epochs,
            decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
            warmup_epochs=args.warmup_epochs, step_on_epochs=args.sched_on_epochs,
            updates_per_epoch=updates_per_epoch)

    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    mixup_fn = None
    if mixup_active:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=num_classes)
    train_loss_fn, _ = _loss_fns(args, mixup_active)
    train_loss_fn = train_loss_fn.to(device)

    # ---- resume
    start_epoch, start_batch, num_updates = 0, 0, 0
    best: Dict[str, Any] = {'metric': None, 'epoch': None}
    partial_sums = [0.0, 0]
    rng_states = None
    log = RunLog(out_dir, enabled=main_proc)
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path)
        if ckpt.get('model_name') != args.model:
            raise SystemExit(f'error: {resume_path} was trained with --model {ckpt.get("model_name")}, '
                             f'not {args.model}.')
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        if lr_scheduler is not None and ckpt.get('scheduler'):
            if to_plain(lr_scheduler.state_dict()) == ckpt['scheduler']:
                lr_scheduler.load_state_dict(ckpt['scheduler'])
            elif main_proc:  # e.g. --epochs raised to extend a finished run: keep the new schedule
                print('warning: the lr schedule differs from the checkpoint\'s (changed --epochs/--lr/...); '
                      'continuing on the new schedule.', file=sys.stderr, flush=True)
        if model_ema is not None:
            if ckpt.get('model_ema') is None:
                raise SystemExit(f'error: {resume_path} has no EMA state but --model-ema is set.')
            model_ema.module.load_state_dict(ckpt['model_ema'])
        if ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
        start_epoch, start_batch = int(ckpt['epoch']), int(ckpt['batch_idx'])
        num_updates = int(ckpt['num_updates'])
        if lr_scheduler is not None:  # timm schedulers are functions of (epoch, step): put the lr where it was
            if args.sched_on_epochs:
                lr_scheduler.step(start_epoch)
            else:
                lr_scheduler.step_update(num_updates=num_updates)
        best = dict(ckpt.get('best') or best)
        partial_sums = list(ckpt.get('partial_epoch') or partial_sums)
        rng_states = ckpt.get('rng')
        if start_batch and int(ckpt.get('world_size', 1)) != dist_ctx.world_size:
            if main_proc:
                print(f'warning: {resume_path} was written mid-epoch by {ckpt.get("world_size")} processes; with '
                      f'{dist_ctx.world_size} the data order differs, so epoch {start_epoch} restarts from its first '
                      f'batch.', file=sys.stderr, flush=True)
            start_batch, partial_sums = 0, [0.0, 0]
        log.load(start_epoch, num_updates)
        if main_proc:
            where = f'epoch {start_epoch}, batch {start_batch}' if start_batch else f'start of epoch {start_epoch}'
            print(f'Resumed {resume_path} at {where} ({num_updates} optimizer steps done).', flush=True)
        del ckpt

    if main_proc:
        n_params = sum(p.numel() for p in model.parameters())
        print(f'Model {args.model}: {n_params / 1e6:.3f} M params, {num_classes} classes, input '
              f'{data_config["input_size"]}; {len(ds_train)} train / {len(ds_val)} val images; world size '
              f'{dist_ctx.world_size}; global batch {args.batch_size * dist_ctx.world_size * accum}; lr {lr:.3g}; '
              f'{num_epochs} epochs; device {device}; output {out_dir}', flush=True)
        log.add('info', model=args.model, params=n_params, num_classes=num_classes, lr=lr,
                world_size=dist_ctx.world_size, global_batch=args.batch_size * dist_ctx.world_size * accum,
                resumed_from=str(resume_path) if resume_path else None, start_epoch=start_epoch,
                start_batch=start_batch)
        (out_dir / 'args.json').write_text(json.dumps(to_plain(vars(args)), indent=2))

    def checkpoint_state(epoch: int, batch_idx: int, sums) -> Dict[str, Any]:
        rngs = dist_ctx.gather_objects(capture_rng_state())
        return dict(
            format='vimzoo-train-v1', model_name=args.model, num_classes=num_classes, class_to_idx=class_map,
            data_config=to_plain(data_config), epoch=epoch, batch_idx=batch_idx, num_updates=num_updates,
            model=model.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=to_plain(lr_scheduler.state_dict()) if lr_scheduler is not None else None,
            model_ema=model_ema.module.state_dict() if model_ema is not None else None,
            scaler=scaler.state_dict() if scaler.is_enabled() else None, rng=rngs, best=best,
            partial_epoch=list(sums), args=vars(args), world_size=dist_ctx.world_size)

    def save_last(epoch: int, batch_idx: int, sums) -> None:
        state = checkpoint_state(epoch, batch_idx, sums)  # every rank takes part (RNG gather)
        if main_proc:
            save_checkpoint(out_dir / 'last.pth', **state)

    # ---- restore RNG as the very last thing before the loop, so the resumed run draws what the original drew
    if rng_states is not None:
        own = rng_states[dist_ctx.rank] if dist_ctx.rank < len(rng_states) else rng_states[0]
        restore_rng_state(own)

    eval_metrics: Dict[str, Any] = {}
    epoch = start_epoch
    for epoch in range(start_epoch, num_epochs):
        skip_batches = start_batch if epoch == start_epoch else 0
        _set_epoch(loader_train, epoch, args.seed, dist_ctx.rank, skip_batches * args.batch_size, resumable)
        if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        train_model.train()
        loss_sum, loss_count = (partial_sums if skip_batches else [0.0, 0])
        loss_sum_t = torch.tensor(loss_sum, device=device, dtype=torch.float64)  # same summation order on resume
        last_idx = batches_per_epoch - 1
        last_accum = batches_per_epoch % accum or accum
        t_epoch = time.time()
        imgs_this_run = 0
        pbar = tqdm(total=batches_per_epoch, initial=skip_batches, desc=f'epoch {epoch + 1}/{num_epochs}',
                    unit='batch', dynamic_ncols=True, disable=not main_proc or args.no_progress, file=sys.stderr,
                    mininterval=0.5)
        window_t, window_imgs = time.time(), 0
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for batch_idx, (inp, target) in enumerate(loader_train, start=skip_batches):
            if batch_idx > last_idx:
                break
            need_update = batch_idx == last_idx or (batch_idx + 1) % accum == 0
            accum_steps = last_accum if batch_idx >= batches_per_epoch - last_accum else accum
            if not use_prefetcher:
                inp, target = inp.to(device), target.to(device)
            if mixup_fn is not None:
                inp, target = mixup_fn(inp, target)
            if args.channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            sync_ctx = train_model.no_sync() if dist_ctx.distributed and not need_update else nullcontext()
            with sync_ctx:
                with autocast():
                    output = train_model(inp)
                    loss = train_loss_fn(output, target)
                if not torch.isfinite(loss):
                    raise SystemExit(f'error: loss is {loss.item()} at epoch {epoch} batch {batch_idx}; lower the '
                                     f'lr, or try --amp-dtype bfloat16 / no --amp.')
                scaler.scale(loss / accum_steps).backward()
            step_loss += loss.detach() / accum_steps
            imgs_this_run += inp.shape[0]
            window_imgs += inp.shape[0] * dist_ctx.world_size
            pbar.update(1)
            if not need_update:
                continue
            if args.clip_grad is not None:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), args.clip_grad, mode=args.clip_mode)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if model_ema is not None:
                model_ema.update(model, step=num_updates)
            loss_sum_t += step_loss.double()
            loss_count += 1
            this_loss = step_loss
            step_loss = torch.zeros((), device=device)
            if lr_scheduler is not None:
                lr_scheduler.step_update(num_updates=num_updates)
            if num_updates % args.log_interval == 0 or batch_idx == last_idx:
                global_loss = this_loss.detach().clone().float()
                dist_ctx.all_reduce_sum(global_loss)
                global_loss = global_loss.item() / dist_ctx.world_size
                cur_lr = optimizer.param_groups[0]['lr']
                dt = max(time.time() - window_t, 1e-9)
                ips = window_imgs / dt
                window_t, window_imgs = time.time(), 0
                if main_proc:
                    pbar.set_postfix(loss=f'{global_loss:.4f}', lr=f'{cur_lr:.2e}', img_s=f'{ips:.0f}')
                    log.add('step', epoch=epoch, update=num_updates, batch=batch_idx + 1, loss=global_loss,
                            lr=cur_lr, img_per_s=ips)
            if (args.checkpoint_every_steps and num_updates % args.checkpoint_every_steps == 0
                    and batch_idx != last_idx):
                sums = [loss_sum_t.item(), loss_count]
                save_last(epoch, batch_idx + 1, sums)
        pbar.close()
        epoch_time = time.time() - t_epoch
        # epoch train loss = mean over this epoch's optimizer steps, averaged over ranks
        total = torch.tensor([loss_sum_t.item(), float(loss_count)], dtype=torch.float64)
        if dist_ctx.distributed:
            total = total.to(device)
            dist_ctx.all_reduce_sum(total)
            total = total.cpu()
        train_loss = (total[0] / max(total[1].item(), 1)).item()
        if lr_scheduler is not None:
            lr_scheduler.step(epoch + 1)

        eval_metrics = evaluate(model, loader_val, dist_ctx, autocast, use_prefetcher, num_classes,
                                args.limit_val_batches, args.channels_last)
        ema_metrics = None
        if model_ema is not None:
            ema_metrics = evaluate(model_ema.module, loader_val, dist_ctx, autocast, use_prefetcher, num_classes,
                                   args.limit_val_batches, args.channels_last) if not args.model_ema_force_cpu \
                else None
        ref = ema_metrics or eval_metrics
        value = ref['loss'] if args.eval_metric == 'loss' else ref[args.eval_metric]
        improved = best['metric'] is None or (value < best['metric'] if args.eval_metric == 'loss'
                                              else value > best['metric'])
        if improved:
            best = {'metric': value, 'epoch': epoch, 'name': args.eval_metric, 'ema': ema_metrics is not None}
        rec = dict(epoch=epoch, train_loss=train_loss, eval_loss=eval_metrics['loss'],
                   eval_top1=eval_metrics['top1'], eval_top5=eval_metrics['top5'],
                   lr=optimizer.param_groups[0]['lr'], updates=num_updates, epoch_time_s=epoch_time,
                   train_img_per_s=imgs_this_run * dist_ctx.world_size / max(epoch_time, 1e-9))
        if ema_metrics is not None:
            rec.update(ema_eval_loss=ema_metrics['loss'], ema_eval_top1=ema_metrics['top1'],
                       ema_eval_top5=ema_metrics['top5'])
        if main_proc:
            log.add('epoch', **rec)
            log.flush()
            if not args.no_plot:
                log.plot(title=f'{args.model} on {args.builtin_dataset if args.uses_builtin else "data"}')
            print(f'epoch {epoch + 1}/{num_epochs}: train_loss {train_loss:.4f}  val_loss {eval_metrics["loss"]:.4f}'
                  f'  top1 {eval_metrics["top1"]:.2f}  top5 {eval_metrics["top5"]:.2f}'
                  + (f'  ema_top1 {ema_metrics["top1"]:.2f}' if ema_metrics else '')
                  + f'  ({epoch_time:.1f}s)', flush=True)
        save_last(epoch + 1, 0, [0.0, 0])
        if main_proc and improved:
            atomic_copy(out_dir / 'last.pth', out_dir / 'best.pth')
        start_batch = 0

    # ---- export
    if main_proc:
        meta = {'model': args.model, 'num_classes': num_classes, 'format': 'vimzoo-train-v1',
                'class_to_idx': json.dumps(class_map) if class_map else '',
                'data_config': json.dumps(to_plain(data_config))}
        export_safetensors(model.state_dict(), out_dir / 'final.safetensors', metadata=meta)
        if model_ema is not None:
            export_safetensors(model_ema.module.state_dict(), out_dir / 'final_ema.safetensors', metadata=meta)
        results = dict(model=args.model, epochs=num_epochs, num_updates=num_updates,
                       final=eval_metrics, best=best, runtime_s=time.time() - t_start,
                       world_size=dist_ctx.world_size, output=str(out_dir),
                       files=sorted(p.name for p in out_dir.iterdir() if not p.name.startswith('.')))
        (out_dir / 'results.json').write_text(json.dumps(to_plain(results), indent=2))
        best_txt = f'{best["metric"]:.4g}' if best.get('metric') is not None else 'n/a'
        print(f'Done in {time.time() - t_start:.1f}s: final top1 {eval_metrics.get("top1", float("nan")):.2f}, '
              f'best {best.get("name")} {best_txt} (epoch {best.get("epoch")}). Files in {out_dir}.', flush=True)
    dist_ctx.barrier()
    return 0
