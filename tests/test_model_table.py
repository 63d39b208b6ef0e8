"""tools/gen_model_table.py: the README model table is generated from models/*.yml and --check catches drift."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import vimzoo

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location('vimzoo_gen_model_table', ROOT / 'tools' / 'gen_model_table.py')
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)

HEAD = '# Title\n\nsome text | with a pipe\n\n'
TAIL = '\n## After\n\nmore text\n'


def _readme(tmp_path: Path, body: str = 'stale\n') -> Path:
    path = tmp_path / 'README.md'
    path.write_text(f'{HEAD}{gen.START}\n{body}{gen.END}{TAIL}')
    return path


def test_generate_then_check(tmp_path):
    readme = _readme(tmp_path)
    assert gen.main(['--readme', str(readme), '--check']) == 1
    assert 'stale' in readme.read_text()  # --check never writes
    assert gen.main(['--readme', str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(HEAD + gen.START + '\n') and text.endswith(gen.END + TAIL)  # outside untouched
    assert 'stale' not in text
    assert gen.main(['--readme', str(readme), '--check']) == 0
    assert gen.main(['--readme', str(readme)]) == 0 and readme.read_text() == text  # idempotent

    table = text.split(gen.START)[1].split(gen.END)[0]
    rows = [line for line in table.splitlines() if line][2:]  # after the header and alignment lines
    index = vimzoo.model_index()
    variants = [(family, v) for family, meta in index.items() for v in meta['variants']]
    assert len(rows) == len(variants)
    for row, (family, v) in zip(rows, variants):
        cells = [c.strip() for c in row.strip('|').split(' | ')]
        assert cells[0].startswith(f'[{family}]') and cells[1] == f'`{v["name"]}`'
        assert float(cells[2]) == pytest.approx(v['params'] / 1e6, abs=0.005)
        assert cells[3] == ('-' if v.get('top1') is None else str(v['top1']))
        assert cells[4] == ('yes' if v.get('weights') else 'no')


def test_check_detects_drift(tmp_path):
    readme = _readme(tmp_path)
    gen.main(['--readme', str(readme)])
    good = readme.read_text()
    first_row = next(line for line in good.splitlines() if line.startswith('| ['))
    cells = first_row.split(' | ')
    cells[2] = '999.99'  # a hand edit of the params cell
    readme.write_text(good.replace(first_row, ' | '.join(cells)))
    assert gen.main(['--readme', str(readme), '--check']) == 1
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'gen_model_table.py'), '--readme', str(readme),
                           '--check'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and 'out of date' in proc.stderr  # the exit code CI relies on
    gen.main(['--readme', str(readme)])
    assert readme.read_text() == good


def test_render_table_formats_cells():
    index = {'fam': dict(paper='https://arxiv.org/abs/1', license='MIT | see notes', implementation='vimzoo',
                         variants=[dict(name='fam_a', params=5_717_416, top1=72.2, weights='https://w'),
                                   dict(name='fam_b', params=1_000_000, top1=None, weights=None,
                                        license='Apache-2.0')]),
             'nopaper': dict(variants=[dict(name='np_a', params=None)])}
    lines = gen.render_table(index).splitlines()
    assert lines[0] == '| ' + ' | '.join(gen.HEADER) + ' |'
    assert lines[2] == '| [fam](https://arxiv.org/abs/1) | `fam_a` | 5.72 | 72.2 | yes | MIT \\| see notes | vimzoo |'
    assert lines[3] == '| [fam](https://arxiv.org/abs/1) | `fam_b` | 1.00 | - | no | Apache-2.0 | vimzoo |'
    assert lines[4] == '| nopaper | `np_a` | - | - | no | - | - |'


def test_missing_or_broken_markers(tmp_path):
    readme = tmp_path / 'README.md'
    for text in ('# no markers\n', f'{gen.END}\n{gen.START}\n', f'{gen.START}\n{gen.START}\n{gen.END}\n'):
        readme.write_text(text)
        with pytest.raises(ValueError, match='markers'):
            gen.main(['--readme', str(readme)])
        assert readme.read_text() == text


def test_repo_readme_table_is_current():
    assert gen.main(['--check']) == 0, 'README model table is stale: run python tools/gen_model_table.py'
