"""pytest plugin: run timm's own tests/test_models.py (unchanged) against the vimzoo models only.

timm's model lists are computed at import time through `timm.list_models(...)`; this plugin replaces that function
(before the test module is imported) with one that returns zoo models under the policy timm applies to its own
families: token models (ViT-like, sequence output) are what NON_STD_FILTERS selects / excludes, every family with
`forward_intermediates` is in FEAT_INTER_FILTERS (module=...). Tests not parametrised over a zoo model are deselected.
Usage: `bash tools/timm_tests.sh` (fetches timm's sdist tests once, then runs
`PYTHONPATH=tests/timm_suite pytest -p zoo_timm_policy <timm>/tests/test_models.py`).
"""
import fnmatch
import os

import timm
import timm.models
import vimzoo  # noqa: F401  registers the zoo

TEST_VARIANTS = ['test_vim', 'test_lbvim', 'test_biformer', 'test_davit', 'test_van', 'test_convit', 'test_halonet',
                 'test_dependencyvit', 'test_dependencyvit_lite', 'test_hydra']
REAL_SMALL = ['vim_tiny_patch16_224', 'lbvim_tiny_patch16_224', 'biformer_tiny', 'davit_tiny', 'van_b0', 'convit_tiny',
              'halonet_h0', 'dependencyvit_tiny_patch16_224', 'dependencyvit_lite_tiny_patch16_224',
              'hydra_tiny_patch16_224']
MODELS = TEST_VARIANTS + ([] if os.environ.get('ZOO_TEST_ONLY') else REAL_SMALL)
_MISSING = sorted(f for f in vimzoo.model_index() if not any(n in vimzoo.list_models(f) for n in REAL_SMALL))
assert not _MISSING, f'zoo families without a model in the timm suite run: {_MISSING}'  # a new family must join
TOKEN_MODELS = {n for n in MODELS if n.split('_')[0] in ('vim', 'lbvim', 'dependencyvit', 'convit', 'hydra')
                or n in ('test_vim', 'test_lbvim', 'test_convit', 'test_dependencyvit', 'test_dependencyvit_lite',
                         'test_hydra')}
# zoo additions to EXCLUDE_JIT_FILTERS, each with its reason (empty: every zoo model must script)
ZOO_EXCLUDE_JIT = [p for p in os.environ.get('ZOO_EXCLUDE_JIT', '').split(',') if p]


def _as_list(x):
    if not x:
        return []
    return [x] if isinstance(x, str) else list(x)


def zoo_list_models(filter='', module='', pretrained=False, exclude_filters='', name_matches_cfg=False,
                    include_tags=None):
    if pretrained:  # weight downloads are out of scope offline
        return []
    include, exclude = _as_list(filter), _as_list(exclude_filters)
    names = list(MODELS)
    # module=FEAT_INTER_FILTERS: every zoo family implements forward_intermediates, so no model is dropped
    if include:
        if 'vit_*' in include:  # NON_STD_FILTERS
            names = [n for n in names if n in TOKEN_MODELS]
        else:
            names = [n for n in names if any(fnmatch.fnmatch(n, f) for f in include)]
    if 'vit_*' in exclude:  # ... + NON_STD_FILTERS / EXCLUDE_FEAT_FILTERS
        names = [n for n in names if n not in TOKEN_MODELS]
    if 'hrnet*' in exclude:  # ... + EXCLUDE_JIT_FILTERS
        exclude = exclude + ZOO_EXCLUDE_JIT
    names = [n for n in names if not any(fnmatch.fnmatch(n, f) for f in exclude)]
    if include_tags:
        names = [timm.models.get_pretrained_cfg(n).tag and f'{n}.{timm.models.get_pretrained_cfg(n).tag}' or n
                 for n in names]
    return names


def zoo_list_pretrained(filter='', exclude_filters=''):
    return []


timm.list_models = timm.models.list_models = zoo_list_models
timm.list_pretrained = timm.models.list_pretrained = zoo_list_pretrained


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        name = str(params.get('model_name', '')).split('.')[0]
        (keep if name in MODELS else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)
