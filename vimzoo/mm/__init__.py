"""OpenMMLab adapters: zoo models as mmdet 3.x / mmseg 1.x backbones.

`import vimzoo.mm` (or `custom_imports=dict(imports=['vimzoo.mm'])` in a config) registers `VimZooBackbone` once in
mmengine's root `MODELS` registry; mmdet's and mmseg's registries are its children and find it from either scope.
Also: `backbone_channels(name)` (a neck's `in_channels` before anything is built) and a build-time check that
necks / heads match the backbone (`widths.py`); built-in toy detection / segmentation sets (`toy_data.py`); the
Runner launcher behind tools/mm_train.py and tools/mm_test.py (`launch.py`).

Without the OpenMMLab stack only `config_path` / `list_configs` and the installer (`python -m vimzoo.mm.install`,
`vimzoo-install-mm`) work; everything else raises an ImportError that says how to install it.
Plain `import vimzoo` never imports this package.
"""
from ._paths import config_path, list_configs

INSTALL_HINT = 'vimzoo-install-mm (or python -m vimzoo.mm.install; in a checkout: bash tools/install_mm.sh)'

try:
    import mmengine  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    _MISSING = e
else:
    _MISSING = None

if _MISSING is None:
    from .backbone import DEFAULT_OUT_NORM, SimplePyramid, VimZooBackbone
    from .compat import register_safe_checkpoint_loader, safe_load
    from . import optim  # noqa: F401,E402  (registers VimZooLayerDecayOptimWrapperConstructor)
    from .toy_data import TOY_DATASETS, ensure_toy_dataset
    from .widths import (backbone_channels, backbone_strides, channel_table, check_backbone_widths,
                         install_width_check)

    register_safe_checkpoint_loader()
    install_width_check()

__all__ = ['VimZooBackbone', 'SimplePyramid', 'DEFAULT_OUT_NORM', 'register_safe_checkpoint_loader',
           'safe_load', 'backbone_channels', 'backbone_strides', 'channel_table', 'check_backbone_widths',
           'install_width_check', 'TOY_DATASETS', 'ensure_toy_dataset', 'config_path', 'list_configs']


def __getattr__(name: str):
    """Only reached for names that need the OpenMMLab stack while it is missing."""
    if _MISSING is not None and name in __all__:
        raise ImportError(f'vimzoo.mm.{name} needs the OpenMMLab stack (mmengine, mmcv, mmdet, mmseg); install it with '
                          f'{INSTALL_HINT}. mmengine is missing: {_MISSING}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
