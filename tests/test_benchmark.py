"""vimzoo.benchmark (tools/benchmark.py, vimzoo-benchmark): one end-to-end run (deit_tiny baseline + a tiny zoo model, a size that works and one that
cannot), the MAC count against timm's published number, and uncounted-op reporting with a negative control."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import vimzoo  # noqa: F401  (registers the zoo)

ROOT = Path(__file__).resolve().parent.parent


import vimzoo.benchmark as bench  # noqa: E402


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """One CLI run: deit_tiny (baseline, added automatically) + test_vim at 64 px (works; deit needs img_size=64)
    and at 8 px (smaller than a 16 px patch: impossible for both)."""
    out = tmp_path_factory.mktemp('bench') / 'run'
    cmd = [sys.executable, str(ROOT / 'tools' / 'benchmark.py'), '--models', 'test_vim', '--resolutions', '64', '8',
           '--warmup', '1', '--iters', '2', '--threads', '1', '--out', str(out), '--no-progress']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(f'{out}.csv', newline='') as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    return out, proc.stdout, header, {(r['model'], int(r['resolution'])): r for r in rows}


def test_csv_columns_and_rows(run):
    _, stdout, header, rows = run
    assert header == bench.COLUMNS
    for col in ('params_m', 'gmacs', 'throughput_img_s', 'latency_ms_median', 'latency_ms_iqr', 'peak_mem_mb',
                'throughput_ratio_vs_baseline', 'memory_ratio_vs_baseline', 'uncounted_ops', 'error'):
        assert col in header
    assert set(rows) == {(m, r) for m in ('deit_tiny_patch16_224', 'test_vim') for r in (64, 8)}
    assert 'protocol:' in stdout and 'warmup: 1' in stdout and 'iters: 2' in stdout


def test_baseline_row_and_ratios(run):
    _, _, _, rows = run
    base, zoo = rows[('deit_tiny_patch16_224', 64)], rows[('test_vim', 64)]
    assert base['status'] == 'ok', base['error']
    assert base['family'] == 'timm' and base['created_with'].startswith('img_size=64')  # fixed-size ViT rebuilt
    for key in ('throughput_ratio_vs_baseline', 'latency_ratio_vs_baseline', 'cpu_time_ratio_vs_baseline',
                'memory_ratio_vs_baseline', 'gmacs_ratio_vs_baseline'):
        assert float(base[key]) == 1.0, key
    assert zoo['status'] == 'ok', zoo['error']
    assert zoo['family'] == 'vim' and zoo['created_with'] == 'default'  # test_vim's cfg input size is 64
    assert float(zoo['params_m']) == pytest.approx(sum(p.numel() for p in timm.create_model('test_vim').parameters())
                                                   / 1e6, rel=1e-3)
    assert float(zoo['gmacs']) > 0 and zoo['uncounted_ops'] == ''  # the scan ops carry FLOP formulas
    assert float(zoo['throughput_img_s']) > 0 and float(zoo['peak_mem_mb']) >= 0
    assert 0 < float(zoo['cpu_time_ms_median']) and float(zoo['latency_ms_median']) > 0
    ratio = float(zoo['throughput_img_s']) / float(base['throughput_img_s'])
    assert float(zoo['throughput_ratio_vs_baseline']) == pytest.approx(ratio, rel=1e-2)  # CSV keeps 4 digits
    assert int(zoo['threads']) == 1 and int(zoo['warmup']) == 1 and int(zoo['iters']) == 2


def test_impossible_resolution_is_an_error_row(run):
    _, _, _, rows = run
    for model in ('deit_tiny_patch16_224', 'test_vim'):
        row = rows[(model, 8)]
        assert row['status'] == 'error' and row['error'], row
        assert row['throughput_img_s'] == '' and row['throughput_ratio_vs_baseline'] == ''
    assert 'at least 16x16' in rows[('test_vim', 8)]['error']  # the model's own message reaches the CSV


def test_plot_is_a_png_and_protocol_is_saved(run):
    out, _, _, _ = run
    png = Path(f'{out}.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000
    import matplotlib.image
    image = matplotlib.image.imread(f'{out}.png')
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    protocol = json.loads(Path(f'{out}.protocol.json').read_text())
    assert protocol['warmup'] == 1 and protocol['iters'] == 2 and protocol['threads'] == 1
    assert protocol['baseline'] == 'deit_tiny_patch16_224' and protocol['torch'] == torch.__version__


def test_deit_tiny_gmacs_match_timm():
    """timm's results table gives deit_tiny_patch16_224 1.26 GMACs at 224 (attention matmuls included; on CPU they
    run in an SDPA kernel torch has no FLOP formula for, so missing it would give 1.07)."""
    model = timm.create_model('deit_tiny_patch16_224').eval()
    gmacs, uncounted = bench.count_macs(model, torch.randn(1, 3, 224, 224))
    assert gmacs == pytest.approx(1.26, rel=0.05) and uncounted == []


def test_uncounted_custom_op_is_reported():
    """A custom op without a FLOP formula is listed, not silently counted as zero; registered ones are not."""
    @torch.library.custom_op('vimzoo_bench_test::mystery_mix', mutates_args=())
    def mystery_mix(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w

    @mystery_mix.register_fake
    def _(x, w):
        return x.new_empty(x.shape[:-1] + w.shape[-1:])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.w = nn.Parameter(torch.randn(8, 8))

        def forward(self, x):
            return mystery_mix(self.fc(x), self.w)

    gmacs, uncounted = bench.count_macs(Net().eval(), torch.randn(4, 8))
    assert uncounted == ['vimzoo_bench_test.mystery_mix']
    assert gmacs * 1e9 == pytest.approx(4 * 8 * 8)  # only the Linear is counted
    _, uncounted_vim = bench.count_macs(timm.create_model('test_vim').eval(), torch.randn(1, 3, 64, 64))
    assert uncounted_vim == []


def test_add_ratios_uses_same_resolution_baseline():
    rows = [dict(model='base', resolution=r, status='ok', throughput_img_s=t, latency_ms_median=1e3 / t, gmacs=g,
                 peak_mem_mb=m) for r, t, g, m in ((224, 10.0, 1.0, 4.0), (448, 2.0, 4.0, 16.0))]
    rows += [dict(model='m', resolution=448, status='ok', throughput_img_s=4.0, latency_ms_median=250.0, gmacs=2.0,
                  peak_mem_mb=8.0), dict(model='m', resolution=896, status='ok', throughput_img_s=1.0,
                                         latency_ms_median=1e3, gmacs=8.0, peak_mem_mb=32.0)]
    bench.add_ratios(rows, 'base')
    m448 = rows[2]
    assert (m448['throughput_ratio_vs_baseline'], m448['memory_ratio_vs_baseline'],
            m448['gmacs_ratio_vs_baseline']) == (2.0, 0.5, 0.5)
    assert 'throughput_ratio_vs_baseline' not in rows[3]  # no baseline at 896: no ratio rather than a wrong one


def test_dry_run_lists_baseline_first_and_rejects_unknown_models(capsys):
    assert bench.main(['--models', 'test_vim', 'deit_tiny_patch16_224', '--resolutions', '64', '96', '--dry-run']) == 0
    plan = [line for line in capsys.readouterr().out.splitlines() if line.startswith('would measure')]
    assert plan == [f'would measure {m} @ {r}px' for r in (64, 96) for m in ('deit_tiny_patch16_224', 'test_vim')]
    with pytest.raises(RuntimeError, match='Did you mean'):
        bench.main(['--models', 'van_b00', '--dry-run'])
    defaults = bench.default_models()
    assert len(defaults) == len({vimzoo.family_of(m) for m in defaults})  # one model per family present
    assert all(not m.startswith('test_') for m in defaults)


def test_merge_rounds_keeps_the_median_round():
    rounds = [dict(model='m', resolution=64, status='ok', latency_ms_median=t, cpu_time_ms_median=t / 2, peak_mem_mb=t)
              for t in (30.0, 10.0, 20.0)] + [dict(model='m', resolution=64, status='error', error='boom')]
    row = bench.merge_rounds(rounds)
    assert row['latency_ms_median'] == 20.0 and row['peak_mem_mb'] == 20.0  # lower median of 10, 20, 30
    assert row['rounds'] == 4 and row['latency_ms_rounds'] == '30 10 20' and '1 of 4 rounds failed' in row['error']
    failed = bench.merge_rounds([dict(model='m', resolution=8, status='error', error='too small')] * 2)
    assert failed['status'] == 'error' and failed['rounds'] == 2


def test_plot_over_resolutions_and_replot(tmp_path):
    """Several resolutions give log-log lines; --replot redraws the PNG from a CSV without measuring."""
    rows = [dict(model=m, resolution=r, status='ok', throughput_img_s=t / r, peak_mem_mb=r / 10,
                 throughput_ratio_vs_baseline=1.0) for m, t in (('base', 1e4), ('m', 2e4)) for r in (224, 448)]
    rows.append(dict(model='m', resolution=896, status='error', error='too big'))
    bench.plot(rows, tmp_path / 'lines.png', 'base', {'device': 'cpu'})
    assert (tmp_path / 'lines.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with open(tmp_path / 'r.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=bench.COLUMNS, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    assert bench.read_csv(tmp_path / 'r.csv')[0]['resolution'] == 224
    assert bench.main(['--replot', '--out', str(tmp_path / 'r'), '--baseline', 'base']) == 0
    assert (tmp_path / 'r.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
