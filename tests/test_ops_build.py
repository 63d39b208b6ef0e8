"""The JIT kernel build: a private folder per source/flag/torch combination, one visible line per build, no hang
after an interrupted build, no double builds, and `python -m vimzoo.ops build`."""
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vimzoo.ops import _loader

HAS_CXX = shutil.which('c++') is not None or shutil.which('g++') is not None
needs_cxx = pytest.mark.skipif(not HAS_CXX or not sys.platform.startswith('linux'), reason='needs a C++ compiler')
ROOT = Path(__file__).resolve().parent.parent

TINY = textwrap.dedent('''
    #include <torch/extension.h>
    int answer() { return 42; }
    PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
''')
BUILD = textwrap.dedent('''
    import sys
    from pathlib import Path
    from vimzoo.ops._loader import load_extension
    mod = load_extension('test kernel', 'vimzoo_build_test', [Path(sys.argv[1])], ['-O0'])
    print('answer', mod.answer(), flush=True)
''')


def test_build_folder_is_named_by_sources_flags_and_torch(tmp_path, monkeypatch):
    csrc = tmp_path / 'csrc'
    shutil.copytree(ROOT / 'csrc', csrc)
    monkeypatch.setattr(_loader, 'csrc_dir', lambda: csrc)
    sources = sorted((csrc / 'cpu').glob('*.cpp'))
    base = _loader._fingerprint(sources, ['-O3'])
    assert base == _loader._fingerprint(sources, ['-O3'])                  # stable
    assert base != _loader._fingerprint(sources, ['-O2'])                  # flags
    header = csrc / 'cpu' / 'recurrence.h'
    header.write_text(header.read_text() + '\n// changed\n')
    assert base != _loader._fingerprint(sources, ['-O3'])                  # any header the sources include
    monkeypatch.setattr(_loader.torch, '__version__', '0.0.0')
    assert _loader._fingerprint(sources, ['-O3']) not in (base, _loader._fingerprint([], ['-O3']))


def _start(src: Path, ext_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(ext_dir))
    return subprocess.Popen([sys.executable, '-c', BUILD, str(src)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT)


@needs_cxx
def test_a_killed_build_leaves_no_hang_and_the_next_build_says_so(tmp_path):
    src = tmp_path / 'tiny.cpp'
    src.write_text(TINY)
    ext_dir = tmp_path / 'ext'
    first = _start(src, ext_dir)
    deadline = time.time() + 300
    while not list(ext_dir.glob('*/lock')):           # torch's own build lock: the compiler is running
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)               # the whole build (python, ninja, compiler) dies mid-way
    first.wait()
    assert list(ext_dir.glob('*/lock')), 'the killed build should have left its lock behind'
    # Two processes start at once: one rebuilds (clearing the stale lock), the other waits for it; neither hangs.
    procs = [_start(src, ext_dir), _start(src, ext_dir)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all('answer 42' in out for out, _ in outs)
    err = ''.join(e for _, e in outs)
    assert err.count('vimzoo: compiling the test kernel (once, ~1 min)...') == 1, err
    assert err.count('removed a stale build lock') == 1, err
    assert re.search(r'vimzoo: test kernel compiled in \d+ s', err), err
    # Built once: a later process imports it without compiling or printing anything.
    out, err = _start(src, ext_dir).communicate(timeout=120)
    assert 'answer 42' in out and 'compiling' not in err, err


@needs_cxx
def test_prebuild_command():
    proc = subprocess.run([sys.executable, '-m', 'vimzoo.ops', 'build'], capture_output=True, text=True, timeout=900,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert 'vimzoo: CPU scan kernel ready:' in proc.stdout
    info = subprocess.run([sys.executable, '-m', 'vimzoo.ops', 'info'], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert info.returncode == 0 and 'cpu: available' in info.stdout, info.stdout + info.stderr

