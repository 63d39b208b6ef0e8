"""Export support: ONNX translations of the vimzoo custom ops, registered only when an export needs them.

`torch.onnx.export(model, args, dynamo=True)` looks operators up in onnxscript's torch library registry, which it
imports at the start of each export. `import vimzoo` calls `install_onnx_translations()`, which costs nothing
until then: it registers the translations (`vimzoo/ops/_onnx.py`) right after onnxscript is imported, or at once if
onnxscript already is. vimzoo itself never imports onnx or onnxscript.

    model = timm.create_model('vim_tiny_patch16_224', pretrained=True).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), 'vim_tiny.onnx', dynamo=True)

`onnx_translation_table()` gives the same translations for an explicit `custom_translation_table=`.
See docs/export.md for what each family supports.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Sequence

__all__ = ['install_onnx_translations', 'register_onnx_translations', 'onnx_translation_table']

_TRIGGER = 'onnxscript'


def register_onnx_translations() -> None:
    """Register the vimzoo op translations with onnxscript's torch library registry now (imports onnxscript)."""
    from .ops import _onnx  # noqa: F401  (registers on import; a second import is a no-op)


def onnx_translation_table() -> Dict[Any, Callable]:
    """{torch.ops.vimzoo.<op>.default: onnxscript function}, for `torch.onnx.export(custom_translation_table=...)`."""
    from .ops import _onnx
    return _onnx.translation_table()


def _register_quietly() -> None:
    try:
        register_onnx_translations()
    except Exception as e:  # never break someone's `import onnxscript`; export then reports the missing ops
        warnings.warn(f'vimzoo: could not register its ONNX translations ({type(e).__name__}: {e}); '
                      f'torch.onnx.export of Vim / LBVim will not find them.', RuntimeWarning, stacklevel=2)


class _CallbackLoader(importlib.abc.Loader):
    """Runs the real loader, then a callback (the module is complete by then)."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[], None]):
        self._loader, self._callback = loader, callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._callback()

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ... of the real loader
        return getattr(self._loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Meta-path finder that only wraps the loader of one module; every other import is left alone."""

    def __init__(self, fullname: str, callback: Callable[[], None]):
        self.fullname, self.callback = fullname, callback

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != self.fullname:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot: find the real spec with the other finders
        for finder in sys.meta_path:
            find = getattr(finder, 'find_spec', None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _CallbackLoader(spec.loader, self.callback)
                return spec
        return None


def install_onnx_translations() -> None:
    """Make the translations available to `torch.onnx.export` without importing onnxscript now (idempotent)."""
    if _TRIGGER in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _AfterImport) and f.fullname == _TRIGGER for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_TRIGGER, _register_quietly))
