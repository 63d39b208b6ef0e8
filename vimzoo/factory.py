"""`vimzoo.create_model`: timm.create_model with a friendlier unknown-name error and input validation."""
from __future__ import annotations

from typing import Any

import timm
import torch

from .models._input import check_image_input, min_input_size_of
from .zoo import check_model_name

__all__ = ['create_model']


def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Create a zoo (or any timm) model; inputs are validated before they reach the network.

    Zoo families validate inside their own forward; the pre-hook covers the timm-backed families and
    `features_only` wrappers too, naming the model.
    """
    check_model_name(model_name)
    model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    in_chans = kwargs.get('in_chans', 3)
    min_size = min_input_size_of(model)  # features_only nets too: they fail with the model's message

    def _validate(module: torch.nn.Module, args: tuple) -> None:
        check_image_input(args[0], in_chans, min_size, model_name)

    model.register_forward_pre_hook(_validate)
    return model
