"""The CUDA scan extension compiles with nvcc for sm_90 WITHOUT a GPU (explicit TORCH_CUDA_ARCH_LIST).

This is a compile check only: the kernels are not run here (no GPU). tools/gpu_check.sh runs them on a GPU.
Skipped only when nvcc is missing. Takes ~1-3 min on 2 cores.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
from build_cuda_ops import find_nvcc  # noqa: E402


@pytest.mark.cuda
@pytest.mark.skipif(not find_nvcc(), reason='nvcc not found')
def test_cuda_extension_compiles_for_sm90(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'build_cuda_ops.py'), '--arch', '9.0',
                           '--build-dir', str(tmp_path / 'build')], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, \
        f'nvcc build failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'
    assert "device code: ['sm_90']" in proc.stdout, proc.stdout


@pytest.mark.cuda
@pytest.mark.skipif(not find_nvcc(), reason='nvcc not found')
def test_cuda_build_fails_loudly_on_bad_source(tmp_path, monkeypatch):
    """A broken kernel source must make the tool exit non-zero with the compiler error, not fall back silently."""
    csrc = tmp_path / 'csrc'
    shutil.copytree(ROOT / 'csrc', csrc)   # the sources and the headers they include
    kernel = csrc / 'cuda' / 'scan_cuda_kernel.cu'
    kernel.write_text(kernel.read_text() + '\n__global__ void broken() { this_is_not_cuda; }\n')
    code = ('import sys, vimzoo.ops._loader as ld; from pathlib import Path; '
            f'ld.csrc_dir = lambda: Path({str(csrc)!r}); '
            f'sys.argv = ["build_cuda_ops.py", "--arch", "9.0", "--build-dir", {str(tmp_path / "b")!r}]; '
            f'sys.path.insert(0, {str(ROOT / "tools")!r}); import build_cuda_ops; sys.exit(build_cuda_ops.main())')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'BUILD FAILED' in proc.stderr and 'this_is_not_cuda' in proc.stderr
