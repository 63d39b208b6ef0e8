"""Importing this package registers every zoo family with timm (one module per family)."""
import importlib
import importlib.util

# TODO(foundation): becomes plain imports once every family module has landed.
_FAMILY_MODULES = ('davit', 'convit', 'halonet', 'vim', 'lbvim', 'biformer', 'van', 'dependencyvit')

for _name in _FAMILY_MODULES:
    if importlib.util.find_spec(f'{__name__}.{_name}') is not None:
        importlib.import_module(f'{__name__}.{_name}')
