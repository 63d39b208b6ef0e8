"""Datasets and loaders for `tools/train.py`: the class-folder checks, timm `create_dataset` / `create_loader`, and
the sampler hooks that make an epoch's order a function of (seed, epoch) so a run can resume at any batch."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .datasets import ClassFolders, DatasetError, check_image_folder, count_class_images, ensure_builtin_dataset, \
    match_class_folders

__all__ = ['VAL_SPLITS', 'DataSource', 'resolve_data_source', 'create_datasets', 'create_loaders',
           'ResumableSampler', 'install_resumable_sampler', 'set_epoch']

VAL_SPLITS = ['val', 'validation', 'eval', 'test']


@dataclass
class DataSource:
    """Where the data is and, for ImageFolder data, its checked class layout."""
    root: Optional[Path]
    train_dir: Optional[Path] = None
    val_dir: Optional[Path] = None
    folders: Optional[ClassFolders] = None

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.folders.class_to_idx) if self.folders else None


def resolve_data_source(args: argparse.Namespace, announce: bool) -> DataSource:
    """Find (or generate) the data and run the class-folder checks: all before any image is read."""
    if args.uses_builtin:
        root = ensure_builtin_dataset(args.builtin_dataset, args.dataset_cache_dir)
        if announce:
            print(f'Using built-in dataset {args.builtin_dataset!r} at {root} (generated on first use; '
                  f'pass --data-dir for ImageNet).', flush=True)
    else:
        root = Path(args.data_dir).expanduser() if args.data_dir else None
    if args.dataset:  # a timm dataset spec (hfds/, wds/, ...): its classes are its own business
        return DataSource(root=root)
    if root is None:
        raise DatasetError('give --data-dir (ImageFolder root) or --dataset.')
    train_dir = next(iter(check_image_folder(root, [args.train_split], 'training data').values()))
    val_dir = next(iter(check_image_folder(root, list(dict.fromkeys([args.val_split] + VAL_SPLITS)),
                                           'validation data').values()))
    folders = match_class_folders(count_class_images(train_dir, 'training data'),
                                  count_class_images(val_dir, 'validation data'), args.allow_class_mismatch,
                                  args.num_classes, train_dir, val_dir)
    return DataSource(root=root, train_dir=train_dir, val_dir=val_dir, folders=folders)


def create_datasets(args: argparse.Namespace, source: DataSource, in_chans: int) -> Tuple[Any, Any]:
    from timm.data import create_dataset
    img_mode = 'L' if in_chans == 1 else 'RGB'
    if source.folders is None:
        root = str(source.root) if source.root else None
        ds_train = create_dataset(args.dataset, root=root, split=args.train_split, is_training=True,
                                  batch_size=args.batch_size, seed=args.seed, input_img_mode=img_mode)
        ds_val = create_dataset(args.dataset, root=root, split=args.val_split, batch_size=args.batch_size,
                                input_img_mode=img_mode)
        if len(ds_train) == 0:
            raise DatasetError('the training dataset is empty.')
        return ds_train, ds_val
    class_map = source.folders.class_to_idx
    ds_train = create_dataset('', root=str(source.train_dir), split=args.train_split, is_training=True,
                              search_split=False, seed=args.seed, class_map=class_map, input_img_mode=img_mode)
    ds_val = create_dataset('', root=str(source.val_dir), split=args.val_split, search_split=False,
                            class_map=class_map, input_img_mode=img_mode)
    for ds, counts, folder in ((ds_train, source.folders.train_counts, source.train_dir),
                               (ds_val, source.folders.val_counts, source.val_dir)):
        if len(ds) != sum(counts.values()):  # e.g. images in nested sub-folders, which timm labels by leaf name
            raise DatasetError(f'{folder}: timm found {len(ds)} images but the class folders hold '
                               f'{sum(counts.values())}; keep images directly in <split>/<class>/.')
    return ds_train, ds_val


def create_loaders(args: argparse.Namespace, data_config: Dict[str, Any], ds_train, ds_val, device: torch.device,
                   distributed: bool, use_prefetcher: bool):
    from timm.data import create_loader
    common = dict(mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
                  distributed=distributed, pin_memory=args.pin_mem, device=device,
                  use_prefetcher=use_prefetcher, persistent_workers=False)
    loader_train = create_loader(
        ds_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, num_aug_repeats=args.aug_repeats if distributed else 0,
        interpolation=args.train_interpolation or data_config['interpolation'], **common)
    loader_val = create_loader(
        ds_val, input_size=data_config['input_size'], batch_size=args.val_batch_size or 2 * args.batch_size,
        is_training=False, interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
        crop_mode=data_config.get('crop_mode'), **common)
    if len(loader_train) == 0:
        raise DatasetError(f'{len(ds_train)} training images give no full batch of {args.batch_size} per '
                           f'process; lower --batch-size.')
    return loader_train, loader_val


class ResumableSampler(torch.utils.data.Sampler):
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


def install_resumable_sampler(loader) -> Optional[ResumableSampler]:
    base = _base_loader(loader)
    batch_sampler = getattr(base, 'batch_sampler', None)
    if batch_sampler is None or not hasattr(batch_sampler, 'sampler'):
        return None
    wrapper = ResumableSampler(batch_sampler.sampler)
    batch_sampler.sampler = wrapper
    return wrapper


def set_epoch(loader, epoch: int, seed: int, rank: int, skip_samples: int,
              resumable: Optional[ResumableSampler]) -> None:
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
