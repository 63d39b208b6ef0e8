"""Importing this package registers every zoo family with timm (one module per family)."""
from . import davit, convit, halonet  # noqa: F401  timm-backed families (adopted names + additions)
from . import vim, lbvim, biformer, van, dependencyvit, hydra  # noqa: F401  vimzoo implementations
