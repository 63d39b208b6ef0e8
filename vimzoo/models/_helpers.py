"""Checkpoint loading shared by the vimzoo families.

Released checkpoints are training snapshots: Vim and BiFormer keep the weights under 'model' (and, when trained with
EMA, 'model_ema'); VAN's timm-trainer files under 'state_dict' (and 'state_dict_ema'). The official evaluation code
loads the main weights, while timm's `load_state_dict` prefers EMA, so the zoo does its own unwrapping:

* `unwrap_checkpoint` picks the main weights (or the EMA weights when asked), strips DDP / torch.compile prefixes and
  drops non-tensor entries; every family's `checkpoint_filter_fn` starts with it;
* `match_head` keeps the checkpoint's classifier where it fits the model and the model's own one where it does not;
* `load_checkpoint` reads a file safely (`torch.load(weights_only=True)` or safetensors) and loads it strictly
  through a family filter; the families' `load_pretrained` methods call it;
* `released_weights` makes the pretrained-cfg fields of a released file: the download is cached under the file's
  own name (`url=(url, file_name)` + `custom_load`, which routes timm to `model.load_pretrained`) and the Hugging
  Face Hub location where the weights are hosted there;
* `build_zoo_model` is timm's `build_model_with_cfg` that sends user-supplied files through the same path.
"""
from __future__ import annotations

import argparse
import os
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import adapt_input_conv, build_model_with_cfg, clean_state_dict

__all__ = [
    'MAIN_KEYS', 'EMA_KEYS', 'unwrap_checkpoint', 'match_head', 'read_checkpoint', 'load_checkpoint',
    'released_weights', 'build_zoo_model',
]

MAIN_KEYS = ('model', 'state_dict')
EMA_KEYS = ('model_ema', 'state_dict_ema')

FilterFn = Callable[..., Dict[str, torch.Tensor]]


def unwrap_checkpoint(checkpoint: Mapping[str, Any], use_ema: bool = False,
                      main_keys: Sequence[str] = MAIN_KEYS) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint: a training snapshot ({'model': ..., 'model_ema': ..., 'args': ...}) or a
    bare state dict.

    `main_keys` is the order in which the family's official code looks for the main weights; `use_ema=True` takes
    'model_ema' / 'state_dict_ema' instead and fails if the file has none. 'module.' / '_orig_mod.' prefixes and
    non-tensor entries are removed.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    entries = {k: v for k, v in checkpoint.items() if isinstance(v, Mapping) and v}
    if use_ema:
        key = next((k for k in EMA_KEYS if k in entries), None)
        if key is None:
            raise KeyError(f'use_ema=True but the checkpoint has no EMA weights (looked for {list(EMA_KEYS)}; '
                           f'it has {sorted(checkpoint)[:12]}).')
    else:
        key = next((k for k in main_keys if k in entries), None)
        if key is None and any(k in entries for k in EMA_KEYS):
            raise KeyError(f'the checkpoint holds only EMA weights ({sorted(k for k in EMA_KEYS if k in entries)}); '
                           f'load them with use_ema=True.')
    state_dict = entries[key] if key is not None else checkpoint
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f'the checkpoint holds no weights (keys: {sorted(checkpoint)[:12]}).')
    return clean_state_dict(tensors)


def _classifier_names(model: nn.Module) -> Tuple[str, ...]:
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or 'head'
    return (names,) if isinstance(names, str) else tuple(names)


def match_head(state_dict: Dict[str, torch.Tensor], model: nn.Module, drop: bool = False,
               family: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """Keep the checkpoint's classifier where its shape fits the model, else the model's own (untrained) one.

    A model without a classifier (`num_classes=0`) drops the checkpoint's; `drop=True` never loads it. A mismatch is
    reported unless the model was built with another `num_classes` than its cfg (then it is expected).
    """
    model_sd = model.state_dict()
    cfg_classes = (getattr(model, 'pretrained_cfg', None) or {}).get('num_classes', getattr(model, 'num_classes', 0))
    expected = getattr(model, 'num_classes', None) == cfg_classes
    out = dict(state_dict)
    for name in _classifier_names(model):
        keys = [k for k in (f'{name}.weight', f'{name}.bias') if k in model_sd or k in out]
        if not any(k in model_sd for k in keys):  # no classifier (num_classes=0): drop the checkpoint's
            for k in keys:
                out.pop(k, None)
            continue
        fits = all(k in out and k in model_sd and out[k].shape == model_sd[k].shape for k in keys)
        if drop or not fits:
            ckpt_w = out.get(f'{name}.weight')
            if ckpt_w is not None and not drop and expected:
                warnings.warn(f'{family} checkpoint classifier {name} {tuple(ckpt_w.shape)} does not fit the model '
                              f'{tuple(model_sd[name + ".weight"].shape)}; the classifier stays randomly initialised.')
            for k in keys:
                if k in model_sd:
                    out[k] = model_sd[k]
                else:
                    out.pop(k, None)
    return out


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Load a `.safetensors` file or a torch checkpoint without unpickling code (`weights_only=True`; the
    `argparse.Namespace` of a training snapshot's 'args' is allowed, it holds plain attributes)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist.')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device='cpu')
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def _adapt_input_channels(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> None:
    """Sum / repeat the first conv's input channels when the model has another `in_chans` (timm's rule)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    convs = cfg.get('first_conv') or ()
    model_sd = model.state_dict()
    for name in ((convs,) if isinstance(convs, str) else convs):
        key = f'{name}.weight'
        if key in state_dict and key in model_sd and state_dict[key].dim() == 4 \
                and state_dict[key].shape[1] != model_sd[key].shape[1]:
            state_dict[key] = adapt_input_conv(model_sd[key].shape[1], state_dict[key])


def load_checkpoint(model: nn.Module, path: Union[str, os.PathLike], filter_fn: Optional[FilterFn] = None,
                    use_ema: bool = False, strict: bool = True, drop_head: bool = False) -> Any:
    """Load a checkpoint file into `model` through the family's `filter_fn` (main weights unless `use_ema`).

    Returns `model.load_state_dict`'s result (missing / unexpected keys; with `strict` any of them raise).
    """
    checkpoint = read_checkpoint(path)
    if filter_fn is not None:
        state_dict = filter_fn(checkpoint, model, use_ema=use_ema)
    else:
        state_dict = match_head(unwrap_checkpoint(checkpoint, use_ema=use_ema), model)
    if drop_head:
        state_dict = match_head(state_dict, model, drop=True)
    _adapt_input_channels(state_dict, model)
    return model.load_state_dict(state_dict, strict=strict)


def released_weights(url: str, file_name: str, hf_hub_id: Optional[str] = None,
                     hf_hub_filename: Optional[str] = None) -> Dict[str, Any]:
    """Pretrained-cfg fields for a released checkpoint.

    timm caches a plain `url` under the URL's last path element, which is `content` for every OneDrive share and
    empty for a folder link; `(url, file_name)` + `custom_load` makes timm download it as `file_name` and hand the
    file to the model's `load_pretrained` (main weights, strict). With `hf_hub_id` timm prefers the Hub copy (its
    own cache) and runs the family's `checkpoint_filter_fn` on it.
    """
    if not file_name or '/' in file_name:
        raise ValueError(f'file_name must be a plain, non-empty file name, got {file_name!r}')
    cfg: Dict[str, Any] = dict(url=(url, file_name), custom_load=True)
    if hf_hub_id:
        cfg.update(hf_hub_id=hf_hub_id, hf_hub_filename=hf_hub_filename or file_name)
    return cfg


def build_zoo_model(model_cls: Callable[..., nn.Module], variant: str, pretrained: bool, *,
                    filter_fn: FilterFn, **kwargs: Any) -> nn.Module:
    """`build_model_with_cfg` for the zoo's own families (models with `load_pretrained`).

    A file or URL given through `pretrained_cfg_overlay` is loaded like the released weights, through the model's
    `load_pretrained` (main weights, not timm's EMA preference), unless the overlay sets `custom_load` itself
    (timm resets it to False whenever an overlay names a weight source).
    """
    overlay = kwargs.get('pretrained_cfg_overlay')
    if overlay and 'custom_load' not in overlay:
        kwargs['pretrained_cfg_overlay'] = dict(overlay, custom_load=True)
    return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=filter_fn, **kwargs)
