"""Layer-wise learning-rate decay for any `VimZooBackbone` (BEiT / Vim-seg style), as an mmengine constructor.

mmseg's `LayerDecayOptimizerConstructor` hard-codes BEiT/ConvNeXt parameter names; the zoo models instead expose
timm's `group_matcher`, which orders every trunk parameter by depth (0 = stem, then blocks/stages). With L = the
number of trunk groups, a trunk parameter of group i gets lr * decay ** (L - i); everything outside the trunk (the
dense wrapper's pyramid / output norms, neck, heads) gets the full lr. For Vim (depth 24, decay 0.92) this is exactly
Vim-seg's schedule: patch embedding decay ** 25, block k decay ** (24 - k), decoder 1.
1-D parameters (norms, biases) and the model's `no_weight_decay()` names get weight_decay 0.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from .backbone import VimZooBackbone

__all__ = ['VimZooLayerDecayOptimWrapperConstructor']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class VimZooLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """paramwise_cfg=dict(layer_decay_rate=0.92) (1.0 = no decay; weight-decay rules still apply)."""

    def add_params(self, params: List[Dict[str, Any]], module: nn.Module, **kwargs: Any) -> None:
        decay = float(self.paramwise_cfg.get('layer_decay_rate', 1.0))
        base_lr, base_wd = self.base_lr, self.base_wd or 0.0
        trunks = [(name, m) for name, m in module.named_modules() if isinstance(m, VimZooBackbone)]
        layer_of: Dict[str, int] = {}
        no_wd: set = set()
        top = 0
        for prefix, bb in trunks:
            lm = bb.layer_map()
            top = max(top, max(lm.values()) + 1)
            base = f'{prefix}.model.' if prefix else 'model.'
            layer_of.update({base + n: lid for n, lid in lm.items()})
            nwd = bb.model.no_weight_decay() if hasattr(bb.model, 'no_weight_decay') else set()
            no_wd.update(base + n for n in nwd)
        groups: Dict[tuple, Dict[str, Any]] = {}
        for name, p in module.named_parameters():
            lid = layer_of.get(name, top)
            skip_wd = p.ndim <= 1 or name in no_wd or any(name.startswith(n + '.') for n in no_wd)
            key = (lid, skip_wd)
            if key not in groups:
                groups[key] = dict(params=[], lr=base_lr * decay ** (top - lid),
                                   weight_decay=0.0 if skip_wd else base_wd, layer_id=lid)
            groups[key]['params'].append(p)
        params.extend(groups[k] for k in sorted(groups))
        print_log(f'VimZooLayerDecay: {len(groups)} param groups, {top + 1} layers, decay {decay}', logger='current')
