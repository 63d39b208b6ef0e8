"""`tools/validate.py`: top-1/top-5 of a checkpoint with the model's own eval preprocessing.

Weights can be one of our training checkpoints (`last.pth`/`best.pth`), a `.safetensors` export, or an official
release file. Official files go through timm's pretrained loading (`pretrained_cfg_overlay=dict(file=...)`), which
applies the family's `checkpoint_filter_fn`, so the original key layout is converted exactly as for `pretrained=True`.
Preprocessing is `resolve_data_config` (the eval settings our checkpoints record, else the model's pretrained_cfg)
and timm's `create_loader`, and the loop is `evaluate()`, the same function training evaluates with every epoch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, apply_initial_weights, load_checkpoint, load_model_weights, to_plain
from .fileio import atomic_write_text
from .datasets import BUILTIN_DATASETS, DatasetError, check_image_folder, ensure_builtin_dataset

__all__ = ['build_parser', 'main', 'validate']


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='tools/validate.py',
        description='Evaluate a model checkpoint (ours, safetensors or an official release) on an ImageFolder '
                    'validation set with the model\'s eval preprocessing; prints and writes top-1/top-5.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--model', default=None, help='model name (default: read from our checkpoint / safetensors)')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--checkpoint', default=None, metavar='PATH',
                     help='our training checkpoint (.pth), a .safetensors file or a plain state_dict')
    src.add_argument('--official-weights', default=None, metavar='PATH',
                     help='an official release file, loaded through timm pretrained loading + the family filter')
    src.add_argument('--pretrained', action='store_true', help='the model\'s default pretrained weights')
    p.add_argument('--use-ema', action='store_true', help='evaluate the EMA weights of our checkpoint')
    p.add_argument('--data-dir', default=None, metavar='DIR',
                   help='dataset root holding val/ (or the val folder itself). Default: the built-in dataset')
    p.add_argument('--split', default='val', help='sub-folder to evaluate (val, validation, ...)')
    p.add_argument('--builtin-dataset', default='shapes10', choices=sorted(BUILTIN_DATASETS))
    p.add_argument('--dataset-cache-dir', default=None)
    p.add_argument('--num-classes', type=int, default=None, help='default: from the checkpoint, else the model')
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--crop-pct', type=float, default=None)
    p.add_argument('--interpolation', default='')
    p.add_argument('--mean', type=float, nargs='+', default=None)
    p.add_argument('--std', type=float, nargs='+', default=None)
    p.add_argument('--batch-size', '-b', type=int, default=64)
    p.add_argument('--workers', '-j', type=int, default=2)
    p.add_argument('--threads', type=int, default=None,
                   help='intra-op CPU threads (torch.set_num_threads); default: torch\'s own choice')
    p.add_argument('--limit-batches', type=int, default=None, help='debug: evaluate only this many batches')
    p.add_argument('--device', default='auto')
    p.add_argument('--amp', action='store_true')
    p.add_argument('--amp-dtype', default='bfloat16', choices=['bfloat16', 'float16'])
    p.add_argument('--results-file', default=None, metavar='JSON', help='write the metrics here as JSON')
    return p


def _checkpoint_info(path: Path, use_ema: bool) -> Dict[str, Any]:
    """Weights plus what our files record about them (model name, classes, eval preprocessing)."""
    info: Dict[str, Any] = {'model_name': None, 'num_classes': None, 'class_to_idx': None, 'data_config': None}
    if path.suffix == '.safetensors':
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework='pt') as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f'{path} is damaged or not a safetensors file ({e}).') from e
        info['model_name'] = meta.get('model')
        info['num_classes'] = int(meta['num_classes']) if meta.get('num_classes') else None
        info['class_to_idx'] = json.loads(meta['class_to_idx']) if meta.get('class_to_idx') else None
        info['data_config'] = json.loads(meta['data_config']) if meta.get('data_config') else None
    else:
        ckpt = load_checkpoint(path)  # checksum verified for our files
        if isinstance(ckpt, dict) and str(ckpt.get('format', '')).startswith('vimzoo-train'):
            info.update(model_name=ckpt.get('model_name'), num_classes=ckpt.get('num_classes'),
                        class_to_idx=ckpt.get('class_to_idx'), data_config=ckpt.get('data_config'))
        del ckpt
    info['state_dict'] = load_model_weights(path, use_ema=use_ema)
    return info


def _model_from_sources(args, parser) -> Dict[str, Any]:
    """Work out model name, num_classes, class map and weights from the checkpoint, then build the model."""
    import timm
    import vimzoo
    info: Dict[str, Any] = {'class_to_idx': None, 'state_dict': None, 'data_config': None}
    if args.checkpoint:
        path = Path(args.checkpoint).expanduser()
        if not path.is_file():
            parser.error(f'--checkpoint {path}: file not found.')
        try:
            info = _checkpoint_info(path, args.use_ema)
        except CheckpointError as e:
            parser.error(str(e))
        if info['num_classes'] is None:
            head = [v for k, v in info['state_dict'].items() if k.endswith('head.weight') or k.endswith('fc.weight')]
            info['num_classes'] = head[-1].shape[0] if head else None
    model_name = args.model or info.get('model_name')
    num_classes = args.num_classes or info.get('num_classes')
    if not model_name:
        parser.error('--model is required unless --checkpoint is one of our checkpoints/safetensors exports.')
    try:
        vimzoo.check_model_name(model_name)
    except RuntimeError as e:
        parser.error(str(e))
    kwargs = {}
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    if args.official_weights:
        path = Path(args.official_weights).expanduser()
        if not path.is_file():
            parser.error(f'--official-weights {path}: file not found.')
        overlay = dict(file=str(path))
        if num_classes is not None:
            overlay['num_classes'] = num_classes  # else timm drops a classifier that differs from the cfg's
        model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    else:
        model = timm.create_model(model_name, pretrained=args.pretrained, **kwargs)
    if info['state_dict'] is not None:
        try:
            apply_initial_weights(model, info['state_dict'], strict=True, source=f'--checkpoint {args.checkpoint}',
                                  hint='Pass --model / --num-classes, or --official-weights for release files.')
        except CheckpointError as e:
            parser.error(str(e))
    info.update(model=model, model_name=model_name, num_classes=model.num_classes)
    return info


def evaluate(model: nn.Module, loader, device: torch.device, autocast: Callable = nullcontext,
             limit: Optional[int] = None, channels_last: bool = False, to_device: bool = True,
             reduce_sum: Optional[Callable[[torch.Tensor], Any]] = None) -> Dict[str, float]:
    """Top-1/top-5/loss of `model` over `loader` (timm `accuracy`); the one loop behind training's per-epoch eval
    and tools/validate.py. `reduce_sum` all-reduces the float64 sums over DDP ranks."""
    from timm.utils import accuracy
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction='sum')
    sums = torch.zeros(4, dtype=torch.float64)
    k5 = None
    with torch.inference_mode():
        for i, (inp, target) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            if to_device:
                inp, target = inp.to(device), target.to(device)
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            with autocast():
                out = model(inp)
            out = out.float()
            n = target.shape[0]
            k5 = k5 or min(5, out.shape[-1])
            acc1, acc5 = accuracy(out, target, topk=(1, k5))
            # timm's accuracy() gives float32 percentages; turn them back into exact correct-prediction counts
            sums += torch.tensor([loss_fn(out, target).item(), round(acc1.item() * n / 100),
                                  round(acc5.item() * n / 100), n], dtype=torch.float64)
    if reduce_sum is not None:
        sums = sums.to(device)
        reduce_sum(sums)
        sums = sums.cpu()
    n = max(sums[3].item(), 1)
    return {'loss': sums[0].item() / n, 'top1': 100 * sums[1].item() / n, 'top5': 100 * sums[2].item() / n,
            'count': int(sums[3].item())}


def _val_folder(args, parser) -> Path:
    if not args.data_dir:
        return ensure_builtin_dataset(args.builtin_dataset, args.dataset_cache_dir) / 'val'
    root = Path(args.data_dir).expanduser()
    splits = [args.split, 'val', 'validation']
    if root.is_dir() and not any((root / s).is_dir() for s in splits) and any(p.is_dir() for p in root.iterdir()):
        check_image_folder(root.parent, [root.name], 'validation data')
        return root  # the split folder itself was given
    return next(iter(check_image_folder(root, list(dict.fromkeys(splits)), 'validation data').values()))


def validate(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> Dict[str, Any]:
    from timm.data import create_dataset, create_loader, resolve_data_config
    parser = parser or build_parser()
    if args.threads:
        torch.set_num_threads(args.threads)
    val_dir = _val_folder(args, parser)
    info = _model_from_sources(args, parser)
    model = info['model']
    if info['data_config']:
        info['data_config'] = {k: tuple(v) if isinstance(v, list) else v for k, v in info['data_config'].items()}
    # our checkpoints carry the eval preprocessing they were trained/evaluated with; otherwise the model's cfg
    data_config = resolve_data_config(vars(args), pretrained_cfg=info['data_config'], model=model)
    img_mode = 'L' if data_config['input_size'][0] == 1 else 'RGB'
    dataset = create_dataset('', root=str(val_dir), split='', search_split=False, class_map=info['class_to_idx'],
                             input_img_mode=img_mode)
    if len(dataset) == 0:
        raise DatasetError(f'no images of the model\'s classes in {val_dir}.')
    if info['class_to_idx'] is None and len(dataset.reader.class_to_idx) != info['num_classes']:
        print(f'warning: {val_dir} has {len(dataset.reader.class_to_idx)} class folders but the model has '
              f'{info["num_classes"]} outputs; labels are the sorted folder indices.', file=sys.stderr)

    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device)
    model.to(device)
    # the very loader (timm create_loader, eval transform) that training evaluates with, so the numbers agree
    loader = create_loader(dataset, input_size=data_config['input_size'], batch_size=args.batch_size,
                           is_training=False, interpolation=data_config['interpolation'], mean=data_config['mean'],
                           std=data_config['std'], crop_pct=data_config['crop_pct'],
                           crop_mode=data_config.get('crop_mode'), num_workers=args.workers,
                           pin_memory=device.type == 'cuda', device=device, use_prefetcher=False)
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp else nullcontext
    t0 = time.time()
    metrics = evaluate(model, loader, device, autocast, limit=args.limit_batches)
    elapsed = time.time() - t0
    return dict(model=info['model_name'], weights=args.checkpoint or args.official_weights or
                ('pretrained' if args.pretrained else 'random init'), ema=bool(args.use_ema),
                data=str(val_dir), count=metrics['count'], top1=metrics['top1'], top5=metrics['top5'],
                loss=round(metrics['loss'], 6), img_size=list(data_config['input_size']),
                crop_pct=data_config['crop_pct'], interpolation=data_config['interpolation'],
                mean=list(data_config['mean']), std=list(data_config['std']),
                img_per_s=round(metrics['count'] / max(elapsed, 1e-9), 1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.use_ema and not args.checkpoint:
        parser.error('--use-ema needs --checkpoint.')
    for name, low in (('batch_size', 1), ('workers', 0), ('threads', 1)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            parser.error(f'--{name.replace("_", "-")} must be >= {low}.')
    try:
        results = validate(args, parser)
    except DatasetError as e:
        parser.error(str(e))
    print(f'{results["model"]}: top-1 {results["top1"]:.2f}%  top-5 {results["top5"]:.2f}%  loss '
          f'{results["loss"]:.4f}  ({results["count"]} images, {results["img_per_s"]} img/s)', flush=True)
    if args.results_file:
        atomic_write_text(Path(args.results_file), json.dumps(to_plain(results), indent=2))
    print(json.dumps(to_plain(results)))
    return 0
