"""`tools/validate.py`: top-1/top-5 of a checkpoint with the model's own eval preprocessing.

Weights can be one of our training checkpoints (`last.pth`/`best.pth`), a `.safetensors` export, or an official
release file. Official files go through timm's pretrained loading (`pretrained_cfg_overlay=dict(file=...)`), which
applies the family's `checkpoint_filter_fn`, so the original key layout is converted exactly as for `pretrained=True`.
Preprocessing is `resolve_data_config(model=...)` + `create_transform`, i.e. the model's pretrained_cfg.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from .checkpoint import _atomic_write, load_model_weights, to_plain
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
    p.add_argument('--limit-batches', type=int, default=None, help='debug: evaluate only this many batches')
    p.add_argument('--device', default='auto')
    p.add_argument('--amp', action='store_true')
    p.add_argument('--amp-dtype', default='bfloat16', choices=['bfloat16', 'float16'])
    p.add_argument('--results-file', default=None, metavar='JSON', help='write the metrics here as JSON')
    return p


def _model_from_sources(args, parser) -> Dict[str, Any]:
    """Work out model name, num_classes, class map and weights from the checkpoint, then build the model."""
    import timm
    import vimzoo
    info: Dict[str, Any] = {'class_to_idx': None, 'state_dict': None, 'data_config': None}
    model_name, num_classes = args.model, args.num_classes
    if args.checkpoint:
        path = Path(args.checkpoint).expanduser()
        if not path.is_file():
            parser.error(f'--checkpoint {path}: file not found.')
        if path.suffix == '.safetensors':
            from safetensors import safe_open
            with safe_open(str(path), framework='pt') as f:
                meta = f.metadata() or {}
            model_name = model_name or meta.get('model')
            if num_classes is None and meta.get('num_classes'):
                num_classes = int(meta['num_classes'])
            if meta.get('class_to_idx'):
                info['class_to_idx'] = json.loads(meta['class_to_idx'])
            if meta.get('data_config'):
                info['data_config'] = json.loads(meta['data_config'])
        else:
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
            if isinstance(ckpt, dict) and ckpt.get('format') == 'vimzoo-train-v1':
                model_name = model_name or ckpt['model_name']
                num_classes = num_classes or ckpt['num_classes']
                info['class_to_idx'] = ckpt.get('class_to_idx')
                info['data_config'] = ckpt.get('data_config')
            del ckpt
        try:
            info['state_dict'] = load_model_weights(path, use_ema=args.use_ema)
        except (KeyError, ValueError) as e:
            parser.error(str(e))
        if num_classes is None:
            head = [v for k, v in info['state_dict'].items() if k.endswith('head.weight') or k.endswith('fc.weight')]
            num_classes = head[-1].shape[0] if head else None
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
        missing, unexpected = model.load_state_dict(info['state_dict'], strict=False)
        if missing or unexpected:
            parser.error(f'{args.checkpoint} does not match {model_name}: missing {missing[:5]}, unexpected '
                         f'{unexpected[:5]} (pass --model / --num-classes, or --official-weights for release files).')
    info.update(model=model, model_name=model_name, num_classes=model.num_classes)
    return info


def validate(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> Dict[str, Any]:
    from timm.data import create_dataset, create_transform, resolve_data_config
    from timm.utils import AverageMeter, accuracy
    parser = parser or build_parser()
    if args.data_dir:
        root = Path(args.data_dir).expanduser()
        splits = [args.split, 'val', 'validation']
        if root.is_dir() and not any((root / s).is_dir() for s in splits) and any(p.is_dir() for p in root.iterdir()):
            val_dir = root  # the split folder itself was given
            check_image_folder(root.parent, [root.name], 'validation data')
        else:
            val_dir = next(iter(check_image_folder(root, list(dict.fromkeys(splits)), 'validation data').values()))
    else:
        val_dir = ensure_builtin_dataset(args.builtin_dataset, args.dataset_cache_dir) / 'val'

    info = _model_from_sources(args, parser)
    model = info['model']
    if info['data_config']:
        info['data_config'] = {k: tuple(v) if isinstance(v, list) else v for k, v in info['data_config'].items()}
    # our checkpoints carry the eval preprocessing they were trained/evaluated with; otherwise the model's cfg
    data_config = resolve_data_config(vars(args), pretrained_cfg=info['data_config'], model=model)
    transform = create_transform(**data_config, is_training=False)
    dataset = create_dataset('', root=str(val_dir), split='', search_split=False, class_map=info['class_to_idx'],
                             transform=transform)
    if len(dataset) == 0:
        raise DatasetError(f'no images of the model\'s classes in {val_dir}.')
    if info['class_to_idx'] is None and len(dataset.reader.class_to_idx) != info['num_classes']:
        print(f'warning: {val_dir} has {len(dataset.reader.class_to_idx)} class folders but the model has '
              f'{info["num_classes"]} outputs; labels are the sorted folder indices.', file=sys.stderr)

    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device)
    model.to(device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                         num_workers=args.workers, pin_memory=device.type == 'cuda')
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp else nullcontext
    correct1 = correct5 = 0
    losses = AverageMeter()
    loss_fn = nn.CrossEntropyLoss()
    k5 = min(5, info['num_classes'])
    t0 = time.time()
    with torch.inference_mode():
        for i, (inp, target) in enumerate(loader):
            if args.limit_batches is not None and i >= args.limit_batches:
                break
            inp, target = inp.to(device), target.to(device)
            with autocast():
                out = model(inp)
            out = out.float()
            acc1, acc5 = accuracy(out, target, topk=(1, k5))
            n = inp.shape[0]
            correct1 += round(acc1.item() * n / 100)  # exact counts (timm returns float32 percentages)
            correct5 += round(acc5.item() * n / 100)
            losses.update(loss_fn(out, target).item(), n)
    elapsed = time.time() - t0
    results = dict(model=info['model_name'], weights=args.checkpoint or args.official_weights or
                   ('pretrained' if args.pretrained else 'random init'), ema=bool(args.use_ema),
                   data=str(val_dir), count=losses.count, top1=100 * correct1 / max(losses.count, 1),
                   top5=100 * correct5 / max(losses.count, 1),
                   loss=round(losses.avg, 6), img_size=list(data_config['input_size']),
                   crop_pct=data_config['crop_pct'], interpolation=data_config['interpolation'],
                   mean=list(data_config['mean']), std=list(data_config['std']),
                   img_per_s=round(losses.count / max(elapsed, 1e-9), 1))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.use_ema and not args.checkpoint:
        parser.error('--use-ema needs --checkpoint.')
    for name in ('batch_size', 'workers'):
        if getattr(args, name) < (1 if name == 'batch_size' else 0):
            parser.error(f'--{name.replace("_", "-")} must be positive.')
    try:
        results = validate(args, parser)
    except DatasetError as e:
        parser.error(str(e))
    print(f'{results["model"]}: top-1 {results["top1"]:.2f}%  top-5 {results["top5"]:.2f}%  loss '
          f'{results["loss"]:.4f}  ({results["count"]} images, {results["img_per_s"]} img/s)', flush=True)
    if args.results_file:
        text = json.dumps(to_plain(results), indent=2)
        _atomic_write(Path(args.results_file), lambda f: f.write(text.encode()))
    print(json.dumps(to_plain(results)))
    return 0
