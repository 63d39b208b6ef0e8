"""vimzoo as a user gets it from a wheel: built from this checkout, installed (not editable) into a fresh venv that
sees this environment's torch / timm through a path entry (no second multi-GB install), and used from outside the
checkout: import, the model index, a Vim forward on the CPU kernel built from the packaged sources, the console
scripts and the packaged configs."""
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='venv layout checked on Linux')


@pytest.fixture(scope='module')
def wheel_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('wheel')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w',
                    str(tmp / 'dist'), str(ROOT)], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp / 'dist').glob('vimzoo-*.whl')
    venv = tmp / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
    py = venv / 'bin' / 'python'
    site = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          check=True, capture_output=True, text=True).stdout.strip()
    # this environment's packages (torch, timm, ...) as a plain path entry: its own .pth files (the editable
    # vimzoo of this checkout) are not processed, so the only vimzoo is the wheel's
    (Path(site) / 'outer_env.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    subprocess.run([str(py), '-m', 'pip', 'install', '-q', '--no-deps', str(wheel)], check=True,
                   capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return dict(py=py, bin=venv / 'bin', env=env, cwd=tmp, site=site)


def _has_mm_stack() -> bool:
    try:
        import mmcv.ops, mmdet, mmseg  # noqa: F401,E401
    except Exception:  # noqa: BLE001  (any import failure means: no usable stack)
        return False
    return True


def _run(wheel_env, args, timeout=900):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=wheel_env['env'],
                          cwd=wheel_env['cwd'])


def test_wheel_imports_builds_its_kernel_and_runs_a_model(wheel_env):
    code = textwrap.dedent('''
        import json, timm, torch, vimzoo, vimzoo.ops as ops
        from vimzoo.ops import _loader
        model = timm.create_model('test_vim').eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 64, 64))
        print(json.dumps(dict(file=vimzoo.__file__, csrc=str(_loader.csrc_dir()), kernel=ops.kernel_status()['cpu'],
                              models=len(vimzoo.list_models()), families=sorted(vimzoo.model_index()),
                              out=list(out.shape), finite=bool(torch.isfinite(out).all()))))
    ''')
    proc = _run(wheel_env, [str(wheel_env['py']), '-c', code])
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info['file'].startswith(wheel_env['site']), info      # the wheel's vimzoo, not the checkout
    assert info['csrc'].startswith(wheel_env['site']), info      # kernel sources shipped in the package
    assert info['kernel'] and info['finite'] and info['out'] == [1, 1000]
    assert info['models'] > 30 and {'vim', 'van', 'biformer'} <= set(info['families'])


@pytest.mark.parametrize('script', ['vimzoo-train', 'vimzoo-validate', 'vimzoo-benchmark', 'vimzoo-install-mm',
                                    'vimzoo-mm-train', 'vimzoo-mm-test'])
def test_console_scripts(wheel_env, script):
    proc = _run(wheel_env, [str(wheel_env['bin'] / script), '--help'], timeout=300)
    assert proc.returncode == 0 and 'usage' in proc.stdout.lower(), proc.stdout + proc.stderr


@pytest.mark.parametrize('module', ['vimzoo.train', 'vimzoo.validate', 'vimzoo.benchmark'])
def test_python_dash_m_entry_points(wheel_env, module):
    proc = _run(wheel_env, [str(wheel_env['py']), '-m', module, '--help'], timeout=300)
    assert proc.returncode == 0 and 'usage' in proc.stdout.lower(), proc.stdout + proc.stderr


def test_prebuild_command_from_the_wheel(wheel_env):
    proc = _run(wheel_env, [str(wheel_env['py']), '-m', 'vimzoo.ops', 'build'])
    assert proc.returncode == 0 and 'CPU scan kernel ready' in proc.stdout, proc.stderr[-2000:]


def test_configs_ship_in_the_package(wheel_env):
    code = ('import vimzoo.mm as mm; p = mm.config_path("mask-rcnn_vim-t_fpn_1x_coco"); '
            'print(p); print(len(mm.list_configs()))')
    proc = _run(wheel_env, [str(wheel_env['py']), '-c', code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    path, count = proc.stdout.split()[-2:]
    assert path.startswith(wheel_env['site']) and path.endswith('mmdet/mask-rcnn_vim-t_fpn_1x_coco.py'), path
    assert int(count) > 15


@pytest.mark.skipif(not _has_mm_stack(), reason='the OpenMMLab stack is not installed in the outer environment')
def test_install_mm_runs_from_the_wheel(wheel_env):
    """The packaged installer reads the [mm] pins from the wheel's metadata (there is no setup.cfg) and, the stack
    being importable already, stops after its check."""
    proc = _run(wheel_env, [str(wheel_env['bin'] / 'vimzoo-install-mm'), '--python', str(wheel_env['py'])])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] in ('VIMZOO_MM_STACK=full', 'VIMZOO_MM_STACK=lite'), proc.stdout
    assert 'already installed' in proc.stderr
