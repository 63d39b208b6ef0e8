"""Small layers shared by the zoo's own families."""
from timm.layers import SelectAdaptivePool2d

__all__ = ['create_pool2d', 'check_pooled_head']


def create_pool2d(pool_type: str) -> SelectAdaptivePool2d:
    """Global pooling of an NCHW map to (B, C) as timm's classifier heads do; pool_type '' keeps the unpooled map."""
    return SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))


def check_pooled_head(pool_type: str, has_classifier: bool) -> None:
    """A Linear classifier needs pooled (B, C) features: refuse global_pool='' with num_classes > 0."""
    if not pool_type and has_classifier:
        raise ValueError("global_pool='' (no pooling) only works with num_classes=0; the classifier takes pooled "
                         "features (reset_classifier(num_classes, 'avg') restores pooling).")
