"""Packaging shim: the model index (`models/`), kernel sources (`csrc/`) and recipes (`configs/`) live at the repo
root (design-card layout) but ship inside the wheel as `vimzoo/model_index`, `vimzoo/csrc` and `vimzoo/configs`, so
an installed vimzoo finds them (see vimzoo.zoo.resource_path)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        for src, dst in (('models', 'vimzoo/model_index'), ('csrc', 'vimzoo/csrc'), ('configs', 'vimzoo/configs')):
            target = Path(self.build_lib) / dst
            if (ROOT / src).is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns('__pycache__'))


setup(cmdclass={'build_py': BuildPyWithData})
