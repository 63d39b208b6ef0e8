"""Command line of `tools/train.py`: the parser, the recipe/preset layering and every check that can be made
before any data is read, so that a bad option is a one-line usage error (exit 2), never a traceback mid-run."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from timm.utils import ParseKwargs

from .config import explicit_options, load_recipe, merge_defaults
from .datasets import BUILTIN_DATASETS, default_cache_dir
from .fileio import check_writable_folder

__all__ = ['DEFAULT_MODEL', 'BUILTIN_PRESET', 'build_parser', 'parse_args', 'usage_error', 'default_output']

#: The model `python tools/train.py` trains when no --model is given (a tiny zoo variant, fast on CPU).
DEFAULT_MODEL = 'test_dependencyvit'

#: Defaults used when no --data-dir/--dataset is given: hyper-parameters for the built-in shapes dataset, tuned so
#: the no-argument run finishes in a few CPU minutes. ImageNet recipes live in configs/train/*.yaml.
BUILTIN_PRESET: Dict[str, Any] = dict(
    epochs=15, batch_size=32, lr_base=2e-3, lr_base_size=32, weight_decay=0.05, warmup_epochs=1, min_lr=1e-5,
    warmup_lr=1e-5, img_size=64, scale=[0.6, 1.0], ratio=[0.75, 1.3333], color_jitter=0.2, smoothing=0.1,
    hflip=0.5, interpolation='bilinear', crop_pct=1.0, workers=2, log_interval=5,
    # one intra-op thread, fixed: the numbers then do not depend on OMP_NUM_THREADS or the core count, and on a
    # small shared CPU it is several times faster than two spinning OpenMP threads beside the two loader workers
    threads=1,
)

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


def _smoothing(value: str) -> float:
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f'must be in [0, 1) (1 would remove every target), got {value}')
    return v


def _boolean(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ('true', 'yes', '1', 'on'):
        return True
    if text in ('false', 'no', '0', 'off'):
        return False
    raise argparse.ArgumentTypeError(f'must be true or false, got {value}')


class _ModelKwargs(ParseKwargs):
    """timm's KEY=VALUE parser (values as Python literals), with a usage error instead of a traceback for items
    without '=' and dashes in keys turned into underscores."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if v and '=' not in v]
        if bad:
            raise argparse.ArgumentError(self, f'expects KEY=VALUE items, got {bad[0]!r}')
        super().__call__(parser, namespace, values, option_string)
        setattr(namespace, self.dest, {k.replace('-', '_'): v for k, v in getattr(namespace, self.dest).items()})


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('recipe / model')
    g.add_argument('--config', '-c', default=None, metavar='FILE',
                   help='YAML recipe (e.g. configs/train/vim.yaml or just "vim"); command-line options override it')
    g.add_argument('--model', default=DEFAULT_MODEL, help='model name (vimzoo.list_models() / timm.list_models())')
    g.add_argument('--model-kwargs', nargs='*', default={}, metavar='K=V', action=_ModelKwargs,
                   help='extra model constructor kwargs, values parsed as Python literals (e.g. depths=[2,2,2,2])')
    g.add_argument('--pretrained', action='store_true', help='start from the model\'s pretrained weights')
    g.add_argument('--initial-checkpoint', default=None, metavar='PATH',
                   help='start from these weights (.pth/.safetensors), loaded strictly')
    g.add_argument('--initial-checkpoint-strict', type=_boolean, default=True, metavar='BOOL',
                   help='false: load only the keys that match and keep the rest (e.g. a new classifier) fresh')
    g.add_argument('--num-classes', type=_positive_int, default=None,
                   help='default: number of class folders (for ImageFolder data it must equal that number)')
    g.add_argument('--drop', type=_probability, default=None, help='dropout rate (model default if unset)')
    g.add_argument('--drop-path', type=_probability, default=None, help='stochastic depth rate (model default)')
    g.add_argument('--grad-checkpointing', action='store_true', help='activation checkpointing (less memory)')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--sync-bn', action='store_true', help='convert BatchNorm to SyncBatchNorm under DDP')


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default=None, metavar='DIR',
                   help='dataset root with train/ and val/ ImageFolder sub-folders (ImageNet layout). '
                        'Omit to use the built-in generated dataset')
    g.add_argument('--dataset', default='', help='timm dataset spec for non-folder data (hfds/..., wds/...)')
    g.add_argument('--train-split', default='train')
    g.add_argument('--val-split', default='validation', help='also tried: val, validation, eval')
    g.add_argument('--allow-class-mismatch', action='store_true',
                   help='train even if train/ and val/ have different class folders (val-only classes are skipped)')
    g.add_argument('--builtin-dataset', default='shapes10', choices=sorted(BUILTIN_DATASETS),
                   help='generated dataset used when --data-dir is not given')
    g.add_argument('--dataset-cache-dir', default=None, metavar='DIR',
                   help=f'where built-in datasets are generated (default {default_cache_dir()}, or $VIMZOO_CACHE)')
    g.add_argument('--img-size', type=_positive_int, default=None, help='input size (model default if unset)')
    g.add_argument('--input-size', type=_positive_int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                   help='C=1 trains on greyscale images (model in_chans=1), C=3 on RGB')
    g.add_argument('--crop-pct', type=_positive_float, default=None, help='eval crop fraction')
    g.add_argument('--mean', type=float, nargs='+', default=None)
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--interpolation', default='', help='eval resize interpolation (model default)')
    g.add_argument('--train-interpolation', default='random')
    g.add_argument('--workers', '-j', type=_non_negative_int, default=4, help='data loader processes per rank')
    g.add_argument('--pin-mem', action='store_true')
    g.add_argument('--limit-train-batches', type=_positive_int, default=None, help='debug: batches per epoch')
    g.add_argument('--limit-val-batches', type=_positive_int, default=None, help='debug: eval batches')


def _add_augmentation_options(p: argparse.ArgumentParser) -> None:
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
    g.add_argument('--smoothing', type=_smoothing, default=0.1, help='label smoothing, in [0, 1)')
    g.add_argument('--bce-loss', action='store_true', help='binary cross-entropy instead of softmax CE')


def _add_optimisation_options(p: argparse.ArgumentParser) -> None:
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


def _add_devices_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('precision / devices')
    g.add_argument('--device', default='auto', help='auto (cuda if available), cpu, cuda, cuda:1 ...')
    g.add_argument('--amp', action='store_true', help='mixed precision with torch.autocast')
    g.add_argument('--amp-dtype', default='bfloat16', choices=['bfloat16', 'float16'],
                   help='float16 also enables a GradScaler')
    g.add_argument('--dist-backend', default=None, help='default: nccl on CUDA, gloo on CPU')
    g.add_argument('--dist-timeout', type=_positive_float, default=600.0, metavar='SECONDS',
                   help='a collective that waits this long for another process (stopped, hung or dead) fails and '
                        'the run exits with an error')
    g.add_argument('--dist-bn', default='reduce', choices=['reduce', 'broadcast', ''],
                   help='under DDP, average (reduce) or copy from rank 0 (broadcast) the BatchNorm running stats '
                        'before each evaluation (timm distribute_bn); \'\' to leave them per rank')
    g.add_argument('--threads', type=_positive_int, default=None,
                   help='intra-op CPU threads (torch.set_num_threads). Fixing it makes CPU results independent of '
                        'OMP_NUM_THREADS; default: torch\'s own choice (the built-in dataset preset uses 1)')
    g.add_argument('--seed', type=int, default=42)


def _add_output_options(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='tools/train.py',
        description='Train a vimzoo (or any timm) model on ImageNet-style ImageFolder data. With no arguments it '
                    f'trains {DEFAULT_MODEL} on a built-in generated dataset (no download) on CPU in minutes.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_options(p)
    _add_data_options(p)
    _add_augmentation_options(p)
    _add_optimisation_options(p)
    _add_devices_options(p)
    _add_output_options(p)
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
    args.explicit_options = sorted(explicit)
    _check_args(args, parser)
    return args


def usage_error(message: str) -> int:
    """Print a one-line error the way argparse does and return its exit status (2)."""
    print(f'tools/train.py: error: {message}', file=sys.stderr, flush=True)
    return 2


def default_output(model: str) -> Path:
    from datetime import datetime
    return Path('output') / 'train' / f'{datetime.now().strftime("%Y%m%d-%H%M%S")}-{model}'


def _check_files(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.resume and args.resume != 'auto' and not Path(args.resume).expanduser().is_file():
        parser.error(f'--resume {args.resume}: checkpoint file not found.')
    if args.initial_checkpoint and not Path(args.initial_checkpoint).expanduser().is_file():
        parser.error(f'--initial-checkpoint {args.initial_checkpoint}: file not found.')
    if args.resume and args.initial_checkpoint:
        parser.error('--resume restores the weights itself; drop --initial-checkpoint.')
    if args.resume == 'auto' and not args.output:
        parser.error('--resume auto needs --output (the run folder holding last.pth).')
    if args.output:
        out = Path(args.output).expanduser()
    elif args.resume and args.resume != 'auto':
        out = Path(args.resume).expanduser().parent
    else:
        out = default_output(args.model)
    problem = check_writable_folder(out)
    if problem:
        parser.error(f'output folder {problem}.')
    args.output_dir = str(out)


def _check_input(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    chans = 3
    if args.input_size is not None:
        chans, height, width = args.input_size
        if chans not in (1, 3):
            parser.error(f'--input-size {chans} {height} {width}: images are read as RGB (3) or greyscale (1); '
                         f'{chans} channels are not supported.')
        if 'img_size' in args.explicit_options and args.img_size != height:
            parser.error('give --img-size or --input-size, not both.')
        args.img_size = None  # input_size wins (also over a preset/recipe img_size)
    for name in ('mean', 'std'):
        values = getattr(args, name)
        if values is not None and len(values) not in (1, chans):
            parser.error(f'--{name} needs 1 or {chans} values (one per input channel), got {len(values)}.')
    if args.std is not None and any(v <= 0 for v in args.std):
        parser.error(f'--std values must be > 0, got {args.std}.')
    args.in_chans = chans


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    _check_files(args, parser)
    _check_input(args, parser)
    if (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax) and args.batch_size % 2:
        parser.error(f'mixup/cutmix need an even --batch-size (got {args.batch_size}).')
    if args.scale is not None and not (0 < args.scale[0] <= args.scale[1]):
        parser.error(f'--scale must satisfy 0 < min <= max, got {args.scale}.')
    if args.ratio is not None and not (0 < args.ratio[0] <= args.ratio[1]):
        parser.error(f'--ratio must satisfy 0 < min <= max, got {args.ratio}.')
    if args.dataset and args.num_classes is None:
        parser.error(f'--dataset {args.dataset}: give --num-classes (only ImageFolder data is counted).')
    if not isinstance(args.model_kwargs, dict):
        parser.error(f'model_kwargs must be a mapping of constructor arguments, got {args.model_kwargs!r}.')
    import vimzoo  # registers the zoo with timm
    try:
        vimzoo.check_model_name(args.model)
    except RuntimeError as e:
        parser.error(str(e))
