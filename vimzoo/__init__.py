"""vimzoo: Vim, LBVim, BiFormer, DaViT, VAN, ConViT, HaloNet and DependencyViT as timm models.

`import vimzoo` registers every zoo model with timm, so `timm.create_model('vim_tiny_patch16_224')` works.
"""
from .version import __version__
from .zoo import FAMILIES, check_model_name, family_of, list_families, list_models, model_index
from . import flops  # noqa: F401  (CPU SDPA FLOP formula for FlopCounterMode)
from . import models  # noqa: F401  (registers the zoo with timm)
from .factory import create_model
from .export import install_onnx_translations

install_onnx_translations()  # torch.onnx.export finds the vimzoo op translations (onnxscript imported only then)

__all__ = [
    '__version__', 'FAMILIES', 'create_model', 'list_models', 'list_families', 'family_of', 'model_index',
    'check_model_name',
]
