"""vimzoo.mm without the OpenMMLab stack: config lookup and the installer work, the rest says how to install."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess:
    prelude = 'import sys; sys.modules["mmengine"] = None\n'   # any `import mmengine` now raises ImportError
    return subprocess.run([sys.executable, '-c', prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_config_lookup_without_mmengine():
    proc = _run('''
        import vimzoo.mm as mm
        print(mm.config_path('upernet_van-b0_toy')); print(mm.config_path('mmdet/mask-rcnn_van-b0_toy.py'))
        print(len(mm.list_configs()))
    ''')
    assert proc.returncode == 0, proc.stderr
    seg, det, count = proc.stdout.split()
    assert seg == str(ROOT / 'configs' / 'mmseg' / 'upernet_van-b0_toy.py')
    assert det == str(ROOT / 'configs' / 'mmdet' / 'mask-rcnn_van-b0_toy.py')
    assert int(count) == len(list((ROOT / 'configs').glob('mm*/*.py')))


def test_unknown_config_names_what_ships():
    proc = _run('import vimzoo.mm as mm; mm.config_path("mask-rcnn_nope")')
    assert proc.returncode != 0 and 'FileNotFoundError' in proc.stderr and 'mask-rcnn_van-b0_toy' in proc.stderr


def test_backbone_without_mmengine_says_how_to_install():
    proc = _run('import vimzoo.mm as mm; mm.VimZooBackbone')
    assert proc.returncode != 0
    assert 'ImportError' in proc.stderr and 'vimzoo-install-mm' in proc.stderr, proc.stderr


def test_installer_help_without_mmengine():
    proc = _run('import sys; from vimzoo.mm.install import main; sys.argv = ["x", "--help"]; main()')
    assert proc.returncode == 0 and '--mode' in proc.stdout, proc.stderr
