"""tools/benchmark.py end to end on a tiny zoo model, plus the README model-table generator."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

import vimzoo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import gen_model_table  # noqa: E402


def test_benchmark_csv_plot_and_baseline_ratio(tmp_path):
    out = tmp_path / 'bench'
    cmd = [sys.executable, str(ROOT / 'tools/benchmark.py'), '--models', 'test_van', '--resolutions', '224', '4',
           '--warmup', '1', '--iters', '2', '--threads', '1', '--out', str(out), '--no-progress']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out.with_suffix('.csv'))))
    by_key = {(r['model'], int(r['resolution'])): r for r in rows}
    base = by_key[('deit_tiny_patch16_224', 224)]
    assert base['status'] == 'ok' and float(base['throughput_ratio_vs_baseline']) == 1.0
    assert abs(float(base['gmacs']) - 1.26) / 1.26 < 0.05  # timm reports 1.26 GMACs (attention matmuls included)
    assert abs(float(base['params_m']) - 5.72) < 0.01
    zoo = by_key[('test_van', 224)]
    assert zoo['status'] == 'ok' and float(zoo['throughput_img_s']) > 0 and float(zoo['peak_mem_mb']) >= 0
    assert float(zoo['throughput_ratio_vs_baseline']) > 0
    assert by_key[('test_van', 4)]['status'] == 'error' and 'at least' in by_key[('test_van', 4)]['error']
    png = out.with_suffix('.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'warmup' in out.with_suffix('.protocol.json').read_text()


def test_benchmark_counts_scan_op_flops():
    """The scan custom ops are counted (no `uncounted_ops`), so Vim's MACs include the selective scan."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    import timm

    model = timm.create_model('test_vim').eval()
    x = torch.randn(1, *model.pretrained_cfg['input_size'])
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    counts = {str(k): v for k, v in counter.get_flop_counts()['Global'].items()}
    assert any('selective_scan' in k and v > 0 for k, v in counts.items()), counts


def test_benchmark_rejects_unknown_model():
    proc = subprocess.run([sys.executable, str(ROOT / 'tools/benchmark.py'), '--models', 'van_b00', '--dry-run'],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and 'Did you mean' in proc.stderr


def test_model_table_generation_and_check(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text(f'# x\n\n{gen_model_table.START}\nstale\n{gen_model_table.END}\n\ntail\n')
    assert gen_model_table.main(['--readme', str(readme), '--check']) == 1
    assert gen_model_table.main(['--readme', str(readme)]) == 0
    text = readme.read_text()
    assert gen_model_table.main(['--readme', str(readme), '--check']) == 0
    assert text.endswith('tail\n') and 'stale' not in text
    for family, meta in vimzoo.model_index().items():
        for v in meta['variants']:
            assert f"`{v['name']}`" in text


def test_model_table_needs_markers(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text('# no markers\n')
    with pytest.raises(ValueError, match='markers'):
        gen_model_table.main(['--readme', str(readme)])


def test_repo_readme_table_is_current():
    assert gen_model_table.main(['--check']) == 0, 'run python tools/gen_model_table.py'
