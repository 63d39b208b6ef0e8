#!/usr/bin/env python3
"""Run the main job (`python tools/train.py`, no options) and regenerate its documented numbers and picture.

    python tools/train_default_report.py                      # one run with OMP_NUM_THREADS unset, print the table
    python tools/train_default_report.py --omp-threads unset 1 --write-docs

Each run is a fresh subprocess of `tools/train.py` with nothing but `--output <runs-dir>/omp-<N>`; the environment
variable OMP_NUM_THREADS is unset or set to N. Wall time and child CPU time are measured here, the load average is
sampled during the run. With several settings the per-epoch numbers (train/val loss, top-1, top-5) are compared
exactly. `--write-docs` copies the first run's curves to docs/img/train_default.png and rewrites the generated block
of docs/training.md and the "main job" row of README.md from the first run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / 'docs' / 'training.md'
README = ROOT / 'README.md'
PICTURE = ROOT / 'docs' / 'img' / 'train_default.png'
BEGIN, END = '<!-- train-default-report:begin -->', '<!-- train-default-report:end -->'
COMPARED = ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5')


def run_job(out_dir: Path, omp: str) -> Dict[str, Any]:
    """One `python tools/train.py --output out_dir` with OMP_NUM_THREADS=`omp` ('unset' removes it)."""
    env = dict(os.environ)
    env.pop('OMP_NUM_THREADS', None)
    env.pop('MKL_NUM_THREADS', None)
    if omp != 'unset':
        env['OMP_NUM_THREADS'] = omp
    loads: List[float] = []
    done = threading.Event()

    def sample_load():
        while not done.wait(2.0):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    sampler.start()
    with open(out_dir.with_name(out_dir.name + '.log'), 'w') as log:
        proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'train.py'), '--output', str(out_dir)], env=env,
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    done.set()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f'tools/train.py failed ({proc.returncode}); see {out_dir}.log')
    rows = list(csv.DictReader((out_dir / 'summary.csv').open()))
    return dict(omp=omp, out_dir=out_dir, wall_s=wall, user_s=after.ru_utime - before.ru_utime,
                sys_s=after.ru_stime - before.ru_stime, load=(min(loads), max(loads)) if loads else None,
                rows=rows, results=json.loads((out_dir / 'results.json').read_text()),
                info=next(json.loads(x) for x in (out_dir / 'log.jsonl').read_text().splitlines()
                          if json.loads(x)['type'] == 'info'))


def _minutes(seconds: float) -> str:
    return f'{int(seconds // 60)} min {seconds % 60:.0f} s'


def _load_text(run: Dict[str, Any]) -> str:
    return f'load average {run["load"][0]:.1f}–{run["load"][1]:.1f}' if run['load'] else 'load not sampled'


def doc_block(runs: List[Dict[str, Any]], same: bool) -> str:
    first = runs[0]
    final, count = first['results']['final'], first['results']['final']['count']
    correct = round(final['top1'] * count / 100)
    curve = ', '.join(f'{float(r["eval_top1"]):.1f}' for r in first['rows'])
    settings = ', '.join(f'`OMP_NUM_THREADS={r["omp"]}`' if r['omp'] != 'unset' else 'it unset' for r in runs)
    lines = [
        BEGIN,
        '| | |',
        '|---|---|',
        '| command | `python tools/train.py` (no options; the script adds only `--output`) |',
        f'| val accuracy ({count} images, chance = 10 %) | **top-1 {final["top1"]:.2f} %** ({correct}/{count}), '
        f'top-5 {final["top5"]:.2f} %, val loss {final["loss"]:.3f} |',
        f'| val top-1 per epoch (%) | {curve} |',
        f'| wall time | **{_minutes(first["wall_s"])}**, CPU time {first["user_s"]:.0f} s user + '
        f'{first["sys_s"]:.0f} s sys |',
        f'| machine | {os.cpu_count()} cores ({platform.machine()}), {_load_text(first)} during the run; '
        f'{first["info"]["threads"]} intra-op thread{"s" if first["info"]["threads"] != 1 else ""} |',
    ]
    if len(runs) > 1:
        verdict = 'identical' if same else '**different**'
        lines.append(f'| thread check | {len(runs)} runs ({settings}): per-epoch train/val loss, top-1 and top-5 '
                     f'{verdict} in all {len(first["rows"])} epochs |')
    lines += ['', 'Regenerate with `python tools/train_default_report.py --omp-threads unset 1 --write-docs`.', END]
    return '\n'.join(lines)


def readme_row(run: Dict[str, Any], checked_threads: bool) -> str:
    final = run['results']['final']
    same = ', the same with any `OMP_NUM_THREADS`' if checked_threads else ''
    load = f', load average up to {run["load"][1]:.0f}' if run['load'] else ''
    return (f'| main job | `python tools/train.py` (no arguments): `test_dependencyvit` on the built-in shapes10 set, '
            f'**{final["top1"]:.1f} % top-1** (chance 10 %) in {run["wall_s"] / 60:.1f} min on {os.cpu_count()} '
            f'CPU cores{load}{same} | `docs/training.md` |')


def write_docs(runs: List[Dict[str, Any]], same: bool) -> None:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f'{DOC} has no {BEGIN} ... {END} block to replace.')
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + doc_block(runs, same) + text[stop:])
    shutil.copyfile(runs[0]['out_dir'] / 'curves.png', PICTURE)
    readme, n = re.subn(r'^\| main job \|.*$', readme_row(runs[0], same and len(runs) > 1),
                        README.read_text(), count=1, flags=re.M)
    if n:
        README.write_text(readme)
    print(f'updated {DOC.relative_to(ROOT)}, {PICTURE.relative_to(ROOT)}' + (', README.md' if n else ''))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--omp-threads', nargs='+', default=['unset'], metavar='N|unset',
                   help='OMP_NUM_THREADS for each run; the first run is the documented one')
    p.add_argument('--runs-dir', default=None, help='where the run folders go (default: a new temporary folder)')
    p.add_argument('--write-docs', action='store_true', help='rewrite docs/training.md, the picture and README')
    args = p.parse_args(argv)
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix='vimzoo-default-job-'))
    runs_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for omp in args.omp_threads:
        out = runs_dir / f'omp-{omp}'
        if out.exists():
            raise SystemExit(f'{out} exists; pass another --runs-dir.')
        print(f'running python tools/train.py with OMP_NUM_THREADS={omp} -> {out}', flush=True)
        runs.append(run_job(out, omp))
        print(f'  {_minutes(runs[-1]["wall_s"])}, final top1 {runs[-1]["results"]["final"]["top1"]:.2f}', flush=True)
    reference = [[r[k] for k in COMPARED] for r in runs[0]['rows']]
    same = all([[r[k] for k in COMPARED] for r in run['rows']] == reference for run in runs[1:])
    if len(runs) > 1:
        print('per-epoch numbers identical across thread settings' if same else
              'per-epoch numbers DIFFER across thread settings', flush=True)
    print(doc_block(runs, same))
    record = [{k: (str(v) if isinstance(v, Path) else v) for k, v in run.items()} for run in runs]
    (runs_dir / 'report.json').write_text(json.dumps(dict(same=same, runs=record), indent=2))
    if args.write_docs:
        write_docs(runs, same)
    return 0 if same else 1


if __name__ == '__main__':
    sys.exit(main())
