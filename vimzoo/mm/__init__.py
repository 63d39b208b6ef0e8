"""OpenMMLab adapters: zoo models as mmdet 3.x / mmseg 1.x backbones.

`import vimzoo.mm` (or `custom_imports=dict(imports=['vimzoo.mm'])` in a config) registers `VimZooBackbone` once in
mmengine's root `MODELS` registry; mmdet's and mmseg's registries are its children and find it from either scope.
Also: `backbone_channels(name)` (a neck's `in_channels` before anything is built) and a build-time check that
necks / heads match the backbone (`widths.py`); built-in toy detection / segmentation sets (`toy_data.py`); the
Runner launcher behind tools/mm_train.py and tools/mm_test.py (`launch.py`).
Needs the OpenMMLab stack (`bash tools/install_mm.sh`); plain `import vimzoo` never imports this package.
"""
try:
    import mmengine  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('vimzoo.mm needs the OpenMMLab stack: pip install -e .[mm] && bash tools/install_mm.sh '
                      f'(mmengine is missing: {e})') from e

from .backbone import DEFAULT_OUT_NORM, SimplePyramid, VimZooBackbone
from .compat import register_safe_checkpoint_loader, safe_load
from . import optim  # noqa: F401,E402  (registers VimZooLayerDecayOptimWrapperConstructor)
from .toy_data import TOY_DATASETS, ensure_toy_dataset
from .widths import backbone_channels, backbone_strides, channel_table, check_backbone_widths, install_width_check

register_safe_checkpoint_loader()
install_width_check()

__all__ = ['VimZooBackbone', 'SimplePyramid', 'DEFAULT_OUT_NORM', 'register_safe_checkpoint_loader',
           'safe_load', 'backbone_channels', 'backbone_strides', 'channel_table', 'check_backbone_widths',
           'install_width_check', 'TOY_DATASETS', 'ensure_toy_dataset']
