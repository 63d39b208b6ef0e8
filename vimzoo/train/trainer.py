"""The `tools/train.py` run loop, assembled from timm's library pieces.

timm ships data (`create_dataset`, `create_loader`, `Mixup`), optimizers (`create_optimizer_v2`, layer decay through
`group_matcher`), schedulers (`create_scheduler_v2`), EMA (`ModelEmaV3`), losses, metrics and the distributed
helpers (`init_distributed_device`, `distribute_bn`), but its `train.py` is not part of the wheel. This module is
the loop around them — `main()` wires `setup()`, `restore()`, `train_one_epoch()`, `end_of_epoch()` and `finish()` —
plus what the zoo needs: a download-free default dataset, recipes, exact (step-granular) resume after a crash,
checksummed atomic checkpoints, a locked run folder and readable logs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .checkpoint import (CheckpointError, apply_initial_weights, capture_rng_state, export_safetensors,
                         load_checkpoint, load_model_weights, restore_rng_state, save_checkpoint, to_plain)
from .data import DataSource, create_datasets, create_loaders, install_resumable_sampler, resolve_data_source, \
    set_epoch
from .datasets import DatasetError
from .distributed import DistContext, init_distributed, is_timeout_error
from .evaluate import evaluate
from .fileio import RunFolderBusy, RunLock, atomic_copy
from .options import BUILTIN_PRESET, DEFAULT_MODEL, build_parser, parse_args, usage_error
from .runlog import FLUSH_INTERVAL_S, RunLog, write_json

__all__ = ['DEFAULT_MODEL', 'BUILTIN_PRESET', 'build_parser', 'parse_args', 'main', 'train_one_epoch', 'evaluate',
           'TrainState', 'Run']

LAST, PREVIOUS, BEST = 'last.pth', 'previous.pth', 'best.pth'


class RunError(RuntimeError):
    """A failure the CLI reports as one line (no traceback) with exit status `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class TrainState:
    """Where training stands; everything here goes into the checkpoint."""
    epoch: int = 0  # epochs completed
    batch_idx: int = 0  # batches of the next epoch already trained (mid-epoch checkpoints)
    num_updates: int = 0
    best: Dict[str, Any] = field(default_factory=lambda: {'metric': None, 'epoch': None})
    partial_loss: List[float] = field(default_factory=lambda: [0.0, 0])  # loss sum / steps of the unfinished epoch
    last_eval: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """The assembled pieces of one training run."""
    args: argparse.Namespace
    dist: DistContext
    out_dir: Path
    model: nn.Module
    train_model: nn.Module  # the DDP wrapper, or `model`
    model_ema: Optional[nn.Module]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    scaler: torch.amp.GradScaler
    autocast: Callable
    loss_fn: nn.Module
    mixup_fn: Optional[Callable]
    loader_train: Any
    loader_val: Any
    resumable: Any
    num_classes: int
    class_map: Optional[Dict[str, int]]
    data_config: Dict[str, Any]
    num_epochs: int
    batches_per_epoch: int
    use_prefetcher: bool
    lr: float
    log: RunLog


# ----------------------------------------------------------------------------------------------------------------
# set-up
# ----------------------------------------------------------------------------------------------------------------

def _create_model(args: argparse.Namespace, num_classes: int, initial: Optional[Dict[str, torch.Tensor]],
                  announce: bool) -> nn.Module:
    import timm
    kwargs = dict(args.model_kwargs)
    if args.drop is not None:
        kwargs['drop_rate'] = args.drop
    if args.drop_path is not None:
        kwargs['drop_path_rate'] = args.drop_path
    if args.in_chans != 3:
        kwargs['in_chans'] = args.in_chans
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise RunError(f'cannot build {args.model} with {kwargs}: {e}', code=2) from e
    if initial is not None:
        report = apply_initial_weights(model, initial, args.initial_checkpoint_strict,
                                       f'--initial-checkpoint {args.initial_checkpoint}')
        if announce:
            kept = {k: v for k, v in report.items() if v}
            print(f'Loaded {args.initial_checkpoint}' + (f'; freshly initialised / ignored: {kept}' if kept else
                                                         ' (all keys matched)'), flush=True)
    if args.grad_checkpointing:
        if not hasattr(model, 'set_grad_checkpointing'):
            raise RunError(f'{args.model} does not support --grad-checkpointing.', code=2)
        model.set_grad_checkpointing(True)
    return model


def _resolve_lr(args: argparse.Namespace, world_size: int) -> float:
    if args.lr is not None:
        return args.lr
    global_batch = args.batch_size * world_size * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    if args.lr_base_scale == 'sqrt':
        ratio = ratio ** 0.5
    return args.lr_base * ratio


def _create_scheduler(args: argparse.Namespace, optimizer, updates_per_epoch: int) -> Tuple[Any, int]:
    """timm's scheduler and the number of epochs it spans (warm-up and cool-down included)."""
    from timm.scheduler import create_scheduler_v2
    if args.sched == 'none':
        return None, args.epochs
    return create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_milestones=args.decay_milestones, cooldown_epochs=args.cooldown_epochs, decay_rate=args.decay_rate,
        min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
        step_on_epochs=args.sched_on_epochs, updates_per_epoch=updates_per_epoch)


def planned_epochs(args: argparse.Namespace) -> int:
    """The run's total epochs, known before any model or data exists (a throw-away scheduler answers)."""
    dummy = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    return _create_scheduler(args, dummy, updates_per_epoch=1)[1]


def _create_optimizer(args: argparse.Namespace, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2
    opt_kwargs = {}
    if args.opt_eps is not None:
        opt_kwargs['eps'] = args.opt_eps
    if args.opt_betas is not None:
        opt_kwargs['betas'] = tuple(args.opt_betas)
    return create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum,
                               layer_decay=args.layer_decay, **opt_kwargs)


def _loss_fn(args: argparse.Namespace, mixup_active: bool) -> nn.Module:
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if args.bce_loss:
        return BinaryCrossEntropy(smoothing=0.0 if mixup_active else args.smoothing)
    if mixup_active:
        return SoftTargetCrossEntropy()  # smoothing is applied inside Mixup
    if args.smoothing:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def _create_mixup(args: argparse.Namespace, num_classes: int) -> Optional[Callable]:
    from timm.data import Mixup
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                 prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                 label_smoothing=args.smoothing, num_classes=num_classes)


def setup(args: argparse.Namespace, dist_ctx: DistContext, out_dir: Path, source: DataSource,
          initial: Optional[Dict[str, torch.Tensor]]) -> Run:
    """Model, data, optimizer, scheduler, AMP, EMA and DDP for a run (nothing is trained or written yet)."""
    from timm.data import resolve_data_config
    from timm.utils import ModelEmaV3
    device = dist_ctx.device
    num_classes = source.num_classes or args.num_classes
    model = _create_model(args, num_classes, initial, dist_ctx.is_main)
    data_config = resolve_data_config(vars(args), model=model, verbose=dist_ctx.is_main)
    if data_config['input_size'][0] == 1:  # greyscale: one mean/std from the model's RGB ones (timm keeps 3)
        for key in ('mean', 'std'):
            data_config[key] = (sum(data_config[key]) / len(data_config[key]),)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if dist_ctx.distributed and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    use_prefetcher = device.type == 'cuda'
    ds_train, ds_val = create_datasets(args, source, data_config['input_size'][0])
    loader_train, loader_val = create_loaders(args, data_config, ds_train, ds_val, device, dist_ctx.distributed,
                                              use_prefetcher)
    batches = min(len(loader_train), args.limit_train_batches or len(loader_train))
    lr = _resolve_lr(args, dist_ctx.world_size)
    optimizer = _create_optimizer(args, model, lr)
    lr_scheduler, num_epochs = _create_scheduler(args, optimizer, -(-batches // args.grad_accum_steps))
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device=torch.device('cpu') if args.model_ema_force_cpu else None)
    train_model = model
    if dist_ctx.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
    mixup_fn = _create_mixup(args, num_classes)
    return Run(
        args=args, dist=dist_ctx, out_dir=out_dir, model=model, train_model=train_model, model_ema=model_ema,
        optimizer=optimizer, lr_scheduler=lr_scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=args.amp and amp_dtype == torch.float16),
        autocast=partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp else nullcontext,
        loss_fn=_loss_fn(args, mixup_fn is not None).to(device), mixup_fn=mixup_fn, loader_train=loader_train,
        loader_val=loader_val, resumable=install_resumable_sampler(loader_train), num_classes=num_classes,
        class_map=source.folders.class_to_idx if source.folders else None, data_config=data_config,
        num_epochs=num_epochs, batches_per_epoch=batches, use_prefetcher=use_prefetcher, lr=lr,
        log=RunLog(out_dir, enabled=dist_ctx.is_main))


# ----------------------------------------------------------------------------------------------------------------
# checkpoints and resume
# ----------------------------------------------------------------------------------------------------------------

def _set_aside(path: Path) -> Path:
    """Keep a damaged file for inspection under a name nothing reads (never delete a user's file)."""
    target = path.with_name(path.name + '.damaged')
    n = 1
    while target.exists():
        target, n = path.with_name(f'{path.name}.damaged{n}'), n + 1
    path.rename(target)
    return target


def _choose_resume_file(args: argparse.Namespace, out_dir: Path) -> Tuple[Optional[Path], Optional[dict]]:
    """--resume PATH: that file, verified. --resume auto: last.pth, else previous.pth when last.pth is damaged or
    missing (the damaged file is renamed *.damaged); nothing there: start fresh."""
    if args.resume != 'auto':
        path = Path(args.resume).expanduser()
        try:
            return path, load_checkpoint(path, training=True)
        except CheckpointError as e:
            sibling = path.with_name(PREVIOUS)
            raise CheckpointError(str(e) + (f' The checkpoint before it is {sibling}.' if path.name == LAST
                                            and sibling.is_file() else '')) from e
    problems = []
    for name in (LAST, PREVIOUS):
        path = out_dir / name
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path, training=True)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        for problem in problems:
            print(f'warning: {problem} Kept as {_set_aside(out_dir / LAST).name}; resuming from {path}.',
                  file=sys.stderr, flush=True)
        return path, ckpt
    if problems:
        raise CheckpointError(f'--resume auto: no usable checkpoint in {out_dir}: {" ".join(problems)}')
    return None, None


def find_resume(args: argparse.Namespace, out_dir: Path, dist_ctx: DistContext) -> Tuple[Optional[Path],
                                                                                       Optional[dict]]:
    """Rank 0 picks (and verifies) the checkpoint to resume; every rank then loads that same file."""
    if not args.resume:
        return None, None
    choice, ckpt = (None, None), None
    if dist_ctx.is_main:
        try:
            path, ckpt = _choose_resume_file(args, out_dir)
            choice = (str(path) if path else None, None)
        except CheckpointError as e:
            choice = (None, str(e))
    path_text, problem = dist_ctx.broadcast_object(choice)
    if problem:
        raise CheckpointError(problem)
    if path_text is None:
        return None, None
    path = Path(path_text)
    if ckpt is None:
        ckpt = load_checkpoint(path, training=True)
    if ckpt['model_name'] != args.model:
        raise CheckpointError(f'{path} was trained with --model {ckpt["model_name"]}, not {args.model}.')
    return path, ckpt


def checkpoint_state(run: Run, state: TrainState) -> Dict[str, Any]:
    """Everything to continue exactly here; every rank must call it (RNG states are gathered)."""
    rngs = run.dist.gather_objects(capture_rng_state())
    return dict(
        model_name=run.args.model, num_classes=run.num_classes, class_to_idx=run.class_map,
        data_config=to_plain(run.data_config), epoch=state.epoch, batch_idx=state.batch_idx,
        num_updates=state.num_updates, num_epochs=run.num_epochs, model=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(),
        scheduler=to_plain(run.lr_scheduler.state_dict()) if run.lr_scheduler is not None else None,
        model_ema=run.model_ema.module.state_dict() if run.model_ema is not None else None,
        scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None, rng=rngs, best=dict(state.best),
        partial_epoch=list(state.partial_loss), last_eval=dict(state.last_eval), args=vars(run.args),
        world_size=run.dist.world_size)


def save_last(run: Run, state: TrainState) -> None:
    """Write last.pth (the one before it becomes previous.pth) and the logs; a failed write keeps both."""
    entries = checkpoint_state(run, state)
    if not run.dist.is_main:
        return
    path = run.out_dir / LAST
    try:
        save_checkpoint(path, keep_previous=run.out_dir / PREVIOUS, **entries)
        run.log.flush()
    except OSError as e:
        good = path if path.is_file() else run.out_dir / PREVIOUS
        raise RunError(f'could not write {path} ({e.strerror or e}); the last complete checkpoint is {good} '
                       f'(continue with --output {run.out_dir} --resume auto once the problem is fixed).') from e


def restore(run: Run, path: Path, ckpt: Dict[str, Any]) -> Tuple[TrainState, Optional[list]]:
    """Load a verified checkpoint into the run; returns the state and the RNG states to restore last."""
    args, main_proc = run.args, run.dist.is_main
    if ckpt.get('num_classes') != run.num_classes or (ckpt.get('class_to_idx') and run.class_map
                                                      and ckpt['class_to_idx'] != run.class_map):
        raise CheckpointError(f'{path} was trained on {ckpt.get("num_classes")} other classes than this data '
                              f'({run.num_classes} classes); resume on the same data, or start from its weights '
                              f'with --initial-checkpoint {path} --initial-checkpoint-strict false.')
    run.model.load_state_dict(ckpt['model'])
    run.optimizer.load_state_dict(ckpt['optimizer'])
    if run.lr_scheduler is not None and ckpt.get('scheduler'):
        if to_plain(run.lr_scheduler.state_dict()) == ckpt['scheduler']:
            run.lr_scheduler.load_state_dict(ckpt['scheduler'])
        elif main_proc:  # e.g. --epochs raised to extend a finished run: keep the new schedule
            print('warning: the lr schedule differs from the checkpoint\'s (changed --epochs/--lr/...); '
                  'continuing on the new schedule.', file=sys.stderr, flush=True)
    if run.model_ema is not None:
        if ckpt.get('model_ema') is None:
            raise CheckpointError(f'{path} has no EMA state but --model-ema is set.')
        run.model_ema.module.load_state_dict(ckpt['model_ema'])
    if ckpt.get('scaler'):
        run.scaler.load_state_dict(ckpt['scaler'])
    state = TrainState(epoch=int(ckpt['epoch']), batch_idx=int(ckpt['batch_idx']),
                       num_updates=int(ckpt['num_updates']), best=dict(ckpt.get('best') or TrainState().best),
                       partial_loss=list(ckpt.get('partial_epoch') or [0.0, 0]),
                       last_eval=dict(ckpt.get('last_eval') or {}))
    if run.lr_scheduler is not None:  # timm schedulers are functions of (epoch, step): put the lr where it was
        if args.sched_on_epochs:
            run.lr_scheduler.step(state.epoch)
        else:
            run.lr_scheduler.step_update(num_updates=state.num_updates)
    if state.batch_idx and int(ckpt.get('world_size', 1)) != run.dist.world_size:
        if main_proc:
            print(f'warning: {path} was written mid-epoch by {ckpt.get("world_size")} processes; with '
                  f'{run.dist.world_size} the data order differs, so epoch {state.epoch + 1} restarts from its '
                  f'first batch.', file=sys.stderr, flush=True)
        state.batch_idx, state.partial_loss = 0, [0.0, 0]
    run.log.load(state.epoch, state.num_updates)
    if main_proc:
        where = f', epoch {state.epoch + 1} continues after batch {state.batch_idx}' if state.batch_idx else ''
        print(f'Resumed {path}: {state.epoch} of {run.num_epochs} epochs done{where} ({state.num_updates} optimizer '
              f'steps).', flush=True)
    return state, ckpt.get('rng')


# ----------------------------------------------------------------------------------------------------------------
# one epoch
# ----------------------------------------------------------------------------------------------------------------

def _optimizer_step(run: Run, state: TrainState) -> None:
    from timm.utils import dispatch_clip_grad
    if run.args.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        dispatch_clip_grad(run.model.parameters(), run.args.clip_grad, mode=run.args.clip_mode)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    state.num_updates += 1
    if run.model_ema is not None:
        run.model_ema.update(run.model, step=state.num_updates)
    if run.lr_scheduler is not None:
        run.lr_scheduler.step_update(num_updates=state.num_updates)


def _log_step(run: Run, state: TrainState, epoch: int, batch_idx: int, step_loss: torch.Tensor, window) -> None:
    """A `step` record with the rank-averaged loss, lr and global img/s since the last record."""
    loss = run.dist.all_reduce_sum(step_loss.detach().clone().float()).item() / run.dist.world_size
    lr = run.optimizer.param_groups[0]['lr']
    ips = window['imgs'] / max(time.time() - window['t'], 1e-9)
    window.update(t=time.time(), imgs=0)
    if run.dist.is_main:
        window['pbar'].set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.2e}', img_s=f'{ips:.0f}')
        run.log.add('step', epoch=epoch + 1, update=state.num_updates, batch=batch_idx + 1, loss=loss, lr=lr,
                    img_per_s=ips)
        run.log.flush(min_interval_s=FLUSH_INTERVAL_S)


def train_one_epoch(run: Run, state: TrainState, epoch: int) -> Tuple[float, int]:
    """Train epoch `epoch` (0-based), starting after `state.batch_idx` batches when resuming mid-epoch; returns the
    epoch's mean train loss (over optimizer steps and ranks) and the images this process trained on."""
    from tqdm import tqdm
    args, dist_ctx, device = run.args, run.dist, run.dist.device
    skip = state.batch_idx
    set_epoch(run.loader_train, epoch, args.seed, dist_ctx.rank, skip * args.batch_size, run.resumable)
    if run.mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        run.mixup_fn.mixup_enabled = False
    run.train_model.train()
    loss_sum = torch.tensor(state.partial_loss[0], device=device, dtype=torch.float64)  # same summation on resume
    loss_count = int(state.partial_loss[1])
    last_idx, accum = run.batches_per_epoch - 1, args.grad_accum_steps
    last_accum = run.batches_per_epoch % accum or accum
    pbar = tqdm(total=run.batches_per_epoch, initial=skip, desc=f'epoch {epoch + 1}/{run.num_epochs}', unit='batch',
                dynamic_ncols=True, disable=not dist_ctx.is_main or args.no_progress, file=sys.stderr,
                mininterval=0.5)
    window = dict(t=time.time(), imgs=0, pbar=pbar)
    images = 0
    run.optimizer.zero_grad(set_to_none=True)
    step_loss = torch.zeros((), device=device)
    for batch_idx, (inp, target) in enumerate(run.loader_train, start=skip):
        if batch_idx > last_idx:
            break
        need_update = batch_idx == last_idx or (batch_idx + 1) % accum == 0
        accum_steps = last_accum if batch_idx >= run.batches_per_epoch - last_accum else accum
        if not run.use_prefetcher:
            inp, target = inp.to(device), target.to(device)
        if run.mixup_fn is not None:
            inp, target = run.mixup_fn(inp, target)
        if args.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with run.train_model.no_sync() if dist_ctx.distributed and not need_update else nullcontext():
            with run.autocast():
                loss = run.loss_fn(run.train_model(inp), target)
            if not torch.isfinite(loss):
                raise RunError(f'loss is {loss.item()} at epoch {epoch + 1} batch {batch_idx + 1}; lower the lr, '
                               f'or try --amp-dtype bfloat16 / no --amp.')
            run.scaler.scale(loss / accum_steps).backward()
        step_loss += loss.detach() / accum_steps
        images += inp.shape[0]
        window['imgs'] += inp.shape[0] * dist_ctx.world_size
        pbar.update(1)
        if not need_update:
            continue
        _optimizer_step(run, state)
        loss_sum += step_loss.double()
        loss_count += 1
        if state.num_updates % args.log_interval == 0 or batch_idx == last_idx:
            _log_step(run, state, epoch, batch_idx, step_loss, window)
        step_loss = torch.zeros((), device=device)
        if args.checkpoint_every_steps and state.num_updates % args.checkpoint_every_steps == 0 \
                and batch_idx != last_idx:
            state.batch_idx, state.partial_loss = batch_idx + 1, [loss_sum.item(), loss_count]
            save_last(run, state)
    pbar.close()
    total = torch.tensor([loss_sum.item(), float(loss_count)], dtype=torch.float64, device=device)
    total = run.dist.all_reduce_sum(total).cpu()
    return (total[0] / max(total[1].item(), 1)).item(), images


# ----------------------------------------------------------------------------------------------------------------
# evaluation, logging, best
# ----------------------------------------------------------------------------------------------------------------

def _evaluate_run(run: Run) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    from timm.utils import distribute_bn
    args, dist_ctx = run.args, run.dist
    if dist_ctx.distributed and args.dist_bn and not args.sync_bn:
        # each rank's BatchNorm saw only its shard: average (or copy) the running stats so every rank evaluates,
        # and rank 0 saves, one model
        distribute_bn(run.model, dist_ctx.world_size, args.dist_bn == 'reduce')
        if run.model_ema is not None:
            distribute_bn(run.model_ema, dist_ctx.world_size, args.dist_bn == 'reduce')
    common = dict(device=dist_ctx.device, autocast=run.autocast, limit=args.limit_val_batches,
                  channels_last=args.channels_last, to_device=not run.use_prefetcher,
                  reduce_sum=dist_ctx.all_reduce_sum if dist_ctx.distributed else None)
    metrics = evaluate(run.model, run.loader_val, **common)
    ema_metrics = None
    if run.model_ema is not None and not args.model_ema_force_cpu:
        ema_metrics = evaluate(run.model_ema.module, run.loader_val, **common)
    return metrics, ema_metrics


def end_of_epoch(run: Run, state: TrainState, epoch: int, train_loss: float, epoch_time: float, images: int) -> None:
    """Evaluate, log, plot, checkpoint (last.pth, and best.pth when the metric improved)."""
    args = run.args
    metrics, ema_metrics = _evaluate_run(run)
    ref = ema_metrics or metrics
    value = ref[args.eval_metric]
    best = state.best['metric']
    improved = best is None or (value < best if args.eval_metric == 'loss' else value > best)
    if improved:
        state.best = {'metric': value, 'epoch': epoch + 1, 'name': args.eval_metric, 'ema': ema_metrics is not None}
    rec = dict(epoch=epoch + 1, train_loss=train_loss, eval_loss=metrics['loss'], eval_top1=metrics['top1'],
               eval_top5=metrics['top5'], lr=run.optimizer.param_groups[0]['lr'], updates=state.num_updates,
               epoch_time_s=epoch_time, train_img_per_s=images * run.dist.world_size / max(epoch_time, 1e-9))
    if ema_metrics is not None:
        rec.update(ema_eval_loss=ema_metrics['loss'], ema_eval_top1=ema_metrics['top1'],
                   ema_eval_top5=ema_metrics['top5'])
    if run.dist.is_main:
        run.log.add('epoch', **rec)
        if not args.no_plot:
            run.log.plot(title=f'{args.model} on {args.builtin_dataset if args.uses_builtin else "data"}')
        print(f'epoch {epoch + 1}/{run.num_epochs}: train_loss {train_loss:.4f}  val_loss {metrics["loss"]:.4f}'
              f'  top1 {metrics["top1"]:.2f}  top5 {metrics["top5"]:.2f}'
              + (f'  ema_top1 {ema_metrics["top1"]:.2f}' if ema_metrics else '') + f'  ({epoch_time:.1f}s)',
              flush=True)
    state.epoch, state.batch_idx, state.partial_loss, state.last_eval = epoch + 1, 0, [0.0, 0], metrics
    save_last(run, state)
    if run.dist.is_main and improved:
        atomic_copy(run.out_dir / LAST, run.out_dir / BEST)


# ----------------------------------------------------------------------------------------------------------------
# final files
# ----------------------------------------------------------------------------------------------------------------

def write_final_files(out_dir: Path, ckpt_like: Dict[str, Any], runtime_s: float) -> Dict[str, Any]:
    """final.safetensors (+ final_ema), results.json; from a checkpoint dict or `checkpoint_state()`."""
    meta = {'model': ckpt_like['model_name'], 'num_classes': ckpt_like['num_classes'], 'format': 'vimzoo-train-v2',
            'class_to_idx': json.dumps(ckpt_like['class_to_idx']) if ckpt_like.get('class_to_idx') else '',
            'data_config': json.dumps(to_plain(ckpt_like.get('data_config') or {}))}
    export_safetensors(ckpt_like['model'], out_dir / 'final.safetensors', metadata=meta)
    if ckpt_like.get('model_ema') is not None:
        export_safetensors(ckpt_like['model_ema'], out_dir / 'final_ema.safetensors', metadata=meta)
    results = dict(model=ckpt_like['model_name'], epochs=ckpt_like['epoch'], num_updates=ckpt_like['num_updates'],
                   final=ckpt_like.get('last_eval') or {}, best=ckpt_like.get('best') or {},
                   runtime_s=runtime_s, world_size=ckpt_like.get('world_size', 1), output=str(out_dir))
    results['files'] = sorted({p.name for p in out_dir.iterdir() if not p.name.startswith('.')} | {'results.json'})
    write_json(out_dir / 'results.json', to_plain(results))
    return results


def finish(run: Run, state: TrainState, t_start: float) -> None:
    entries = checkpoint_state(run, state)  # collective (RNG gather): every rank
    if run.dist.is_main:
        results = write_final_files(run.out_dir, entries, time.time() - t_start)
        best = results['best']
        best_txt = f'{best["metric"]:.4g} (epoch {best.get("epoch")})' if best.get('metric') is not None else 'n/a'
        print(f'Done in {time.time() - t_start:.1f}s: final top1 {results["final"].get("top1", float("nan")):.2f}, '
              f'best {best.get("name")} {best_txt}. Files in {run.out_dir}.', flush=True)
    run.dist.barrier()


def _results_complete(out_dir: Path, ckpt: Dict[str, Any]) -> bool:
    try:
        results = json.loads((out_dir / 'results.json').read_text())
    except (OSError, ValueError):
        return False
    return (results.get('num_updates') == ckpt['num_updates'] and bool(results.get('final'))
            and (out_dir / 'final.safetensors').is_file())


def finished_run(args: argparse.Namespace, out_dir: Path, ckpt: Dict[str, Any], dist_ctx: DistContext) -> bool:
    """A checkpoint that already has every planned epoch: say so and leave the folder as it is (exit 0). If the
    run was stopped between its last checkpoint and its final files, write just those."""
    target = planned_epochs(args)
    if ckpt['epoch'] < target or ckpt['batch_idx']:
        return False
    if _results_complete(out_dir, ckpt):
        if dist_ctx.is_main:
            final = ckpt.get('last_eval') or {}
            top1 = f', final top1 {final["top1"]:.2f}' if 'top1' in final else ''
            print(f'Nothing to do: the run in {out_dir} already finished all {ckpt["epoch"]} epochs{top1}; its files '
                  f'are left untouched. To train longer, pass a larger --epochs.', flush=True)
        return True
    if dist_ctx.is_main:
        print(f'The run in {out_dir} finished all {ckpt["epoch"]} epochs but its final files are missing; '
              f'writing them from the checkpoint.', flush=True)
        write_final_files(out_dir, ckpt, 0.0)
    dist_ctx.barrier()
    return True


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------

def _lock_run_folder(out_dir: Path, dist_ctx: DistContext) -> Optional[RunLock]:
    """Rank 0 locks the folder; every rank learns the outcome (RunFolderBusy everywhere if it failed)."""
    lock, problem = None, None
    if dist_ctx.is_main:
        lock = RunLock(out_dir)
        try:
            stale = lock.acquire()
        except RunFolderBusy as e:
            lock, problem, stale = None, str(e), None
        if stale:
            print(f'note: {out_dir} was locked by a run that is no longer alive (pid {stale.get("pid")} on '
                  f'{stale.get("host")}); taking over its lock.', file=sys.stderr, flush=True)
    problem = dist_ctx.broadcast_object(problem)
    if problem:
        raise RunFolderBusy(problem)
    return lock


def _announce(run: Run, source: DataSource, state: TrainState, resumed_from: Optional[Path]) -> None:
    args, dist_ctx = run.args, run.dist
    n_params = sum(p.numel() for p in run.model.parameters())
    global_batch = args.batch_size * dist_ctx.world_size * args.grad_accum_steps
    data = source.folders.describe() if source.folders else f'{args.dataset} ({run.num_classes} classes)'
    print(f'Data: {data}', flush=True)
    print(f'Model {args.model}: {n_params / 1e6:.3f} M params, {run.num_classes} classes, input '
          f'{run.data_config["input_size"]}; world size {dist_ctx.world_size}; global batch {global_batch}; lr '
          f'{run.lr:.3g}; {run.num_epochs} epochs; device {dist_ctx.device}'
          + (f' ({torch.get_num_threads()} threads)' if dist_ctx.device.type == 'cpu' else '')
          + f'; output {run.out_dir}', flush=True)
    run.log.add('info', model=args.model, params=n_params, num_classes=run.num_classes, lr=run.lr,
                world_size=dist_ctx.world_size, global_batch=global_batch, threads=torch.get_num_threads(), data=data,
                resumed_from=str(resumed_from) if resumed_from else None, start_epoch=state.epoch + 1,
                start_batch=state.batch_idx)
    write_json(run.out_dir / 'args.json', to_plain(vars(args)))


def train(args: argparse.Namespace, dist_ctx: DistContext, out_dir: Path) -> int:
    """One training run in a locked folder: resume (or no-op when finished), set up, epochs, final files."""
    from timm.utils import random_seed
    t_start = time.time()
    resume_path, ckpt = find_resume(args, out_dir, dist_ctx)
    if ckpt is not None and finished_run(args, out_dir, ckpt, dist_ctx):
        return 0
    initial = load_model_weights(args.initial_checkpoint) if args.initial_checkpoint else None
    if args.threads:
        torch.set_num_threads(args.threads)
    random_seed(args.seed, dist_ctx.rank)
    source = resolve_data_source(args, announce=dist_ctx.is_main)
    run = setup(args, dist_ctx, out_dir, source, initial)
    del initial
    state, rng_states = (restore(run, resume_path, ckpt) if ckpt is not None else (TrainState(), None))
    del ckpt
    if dist_ctx.is_main:
        _announce(run, source, state, resume_path)
    if rng_states is not None:  # the very last thing before the loop: the resumed run draws what the original drew
        restore_rng_state(rng_states[dist_ctx.rank] if dist_ctx.rank < len(rng_states) else rng_states[0])
    for epoch in range(state.epoch, run.num_epochs):
        t_epoch = time.time()
        train_loss, images = train_one_epoch(run, state, epoch)
        end_of_epoch(run, state, epoch, train_loss, time.time() - t_epoch, images)
    finish(run, state, t_start)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`tools/train.py`: exit 0 on success (or nothing to do), 2 for usage/data/checkpoint errors, 1 otherwise."""
    args = parse_args(argv)
    dist_ctx = init_distributed(args)
    lock, healthy = None, True
    try:
        out_dir = Path(dist_ctx.broadcast_object(args.output_dir))
        lock = _lock_run_folder(out_dir, dist_ctx)
        return train(args, dist_ctx, out_dir)
    except (CheckpointError, DatasetError, RunFolderBusy) as e:
        return usage_error(str(e)) if dist_ctx.is_main or not dist_ctx.distributed else 2
    except RunError as e:
        print(f'tools/train.py: error: {e}', file=sys.stderr, flush=True)
        return e.code
    except Exception as e:  # noqa: BLE001 (only collective failures are turned into a message)
        if not (dist_ctx.distributed and is_timeout_error(e)):
            raise
        healthy = False
        print(f'tools/train.py: error: rank {dist_ctx.rank}: another process did not answer within --dist-timeout '
              f'{dist_ctx.timeout_s:g}s (it stopped, hung or died); giving up. ({str(e).splitlines()[0][:300]})',
              file=sys.stderr, flush=True)
        return 1
    finally:
        if lock is not None:
            lock.release()
        if healthy:
            dist_ctx.close()
