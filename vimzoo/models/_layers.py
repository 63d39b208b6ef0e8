"""Small layers shared by the zoo's own families."""
from typing import Any

from timm.layers import SelectAdaptivePool2d

__all__ = ['create_pool2d', 'check_pooled_head', 'check_positive_ints']


def create_pool2d(pool_type: str) -> SelectAdaptivePool2d:
    """Global pooling of an NCHW map to (B, C) as timm's classifier heads do; pool_type '' keeps the unpooled map."""
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


def check_pooled_head(pool_type: str, has_classifier: bool) -> None:
    """A Linear classifier needs pooled (B, C) features: refuse global_pool='' with num_classes > 0."""
    if not pool_type and has_classifier:
        raise ValueError("global_pool='' (no pooling) only works with num_classes=0; the classifier takes pooled "
                         "features (reset_classifier(num_classes, 'avg') restores pooling).")


def check_positive_ints(owner: str, **values: Any) -> None:
    """Sizes that must be ints >= 1 (a tuple: each entry) fail at construction with the argument's name, not later
    as a division by zero or inside a kernel."""
    for name, value in values.items():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f'{owner}: {name} must be an int >= 1, got {value!r}.')
