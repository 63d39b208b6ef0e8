"""Package-level promises: registration on import, no shadowing of timm, a consistent model index."""
import subprocess
import sys

import timm

import vimzoo
from vimzoo.zoo import FAMILIES


def test_import_registers_zoo_in_timm():
    code = 'import timm, vimzoo; names = vimzoo.list_models(); print(len(names)); ' \
           'assert all(n in timm.list_models() for n in names)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) > 0


def test_list_models_by_family():
    assert vimzoo.list_families() == list(FAMILIES)
    everything = vimzoo.list_models()
    assert sum(len(vimzoo.list_models(f)) for f in FAMILIES) == len(everything)
    assert not any(n.startswith('test_') for n in everything)
    assert all(n.startswith('test_') is False for n in vimzoo.list_models('davit'))


def test_timm_names_are_not_shadowed():
    for name in ('davit_tiny', 'convit_tiny', 'halonet_h1'):
        entry = timm.models.model_entrypoint(name)
        assert entry.__module__.startswith('timm.'), f'{name} is shadowed by {entry.__module__}'


def test_import_without_mm_stack():
    code = ('import sys; sys.modules.update({m: None for m in ("mmengine", "mmdet", "mmseg", "mmcv")}); '
            'import vimzoo, timm; [timm.create_model("test_" + f) for f in vimzoo.FAMILIES]')
    subprocess.run([sys.executable, '-c', code], check=True)
