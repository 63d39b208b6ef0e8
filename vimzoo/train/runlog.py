"""Run logs: one CSV row per epoch, JSON lines for steps and epochs, and a PNG of the curves.

All files live in the run folder and are rewritten atomically from the in-memory history (at every checkpoint,
every epoch and at most every `FLUSH_INTERVAL_S` seconds in between), so a reader never sees a torn file and a
resumed run, which drops records written after the checkpoint it resumed from, ends with files identical to those of
an uninterrupted run. Epochs are numbered from 1, as on the console.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .fileio import atomic_write_bytes, atomic_write_text

__all__ = ['RunLog', 'write_json', 'FLUSH_INTERVAL_S']

FLUSH_INTERVAL_S = 10.0

EPOCH_FIELDS = ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'ema_eval_loss', 'ema_eval_top1',
                'ema_eval_top5', 'lr', 'updates', 'epoch_time_s', 'train_img_per_s']


class RunLog:
    """Keeps step and epoch records; `flush()` writes `log.jsonl`, `summary.csv`; `plot()` writes `curves.png`."""

    def __init__(self, folder: os.PathLike, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        self.records: List[Dict[str, Any]] = []
        self._flushed_at = 0.0

    # ------------------------------------------------------------------ resume
    def load(self, epochs_done: int, updates: int) -> None:
        """Re-read `log.jsonl`, keeping only records up to the resumed checkpoint (epochs and updates done)."""
        path = self.folder / 'log.jsonl'
        self.records = []
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get('type') == 'step' and rec.get('update', 0) <= updates:
                self.records.append(rec)
            elif rec.get('type') == 'epoch' and rec.get('epoch', 0) <= epochs_done:
                self.records.append(rec)
            elif rec.get('type') == 'info':
                self.records.append(rec)

    # ------------------------------------------------------------------ records
    def add(self, kind: str, **values: Any) -> Dict[str, Any]:
        rec = {'type': kind, **{k: _clean(v) for k, v in values.items()}}
        self.records.append(rec)
        return rec

    @property
    def epochs(self) -> List[Dict[str, Any]]:
        return [r for r in self.records if r['type'] == 'epoch']

    @property
    def steps(self) -> List[Dict[str, Any]]:
        return [r for r in self.records if r['type'] == 'step']

    # ------------------------------------------------------------------ files
    def flush(self, min_interval_s: float = 0.0) -> None:
        """Rewrite `log.jsonl` and `summary.csv` (skipped if the last write is younger than `min_interval_s`)."""
        if not self.enabled or time.monotonic() - self._flushed_at < min_interval_s:
            return
        text = ''.join(json.dumps(r) + '\n' for r in self.records)
        atomic_write_text(self.folder / 'log.jsonl', text, fsync=False)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EPOCH_FIELDS, extrasaction='ignore')
        writer.writeheader()
        for rec in self.epochs:
            writer.writerow({k: rec.get(k, '') for k in EPOCH_FIELDS})
        atomic_write_text(self.folder / 'summary.csv', buf.getvalue(), fsync=False)
        self._flushed_at = time.monotonic()

    def plot(self, title: str = '') -> Optional[Path]:
        """Loss (train per step + per epoch, eval per epoch) and top-1/top-5 accuracy curves, matplotlib Agg."""
        if not self.enabled or not self.epochs:
            return None
        import matplotlib
        matplotlib.use('Agg', force=True)
        import matplotlib.pyplot as plt

        epochs = self.epochs
        xs = [r['epoch'] for r in epochs]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=80)
        steps = self.steps
        if steps and epochs[-1].get('updates'):
            per_epoch = max(1, epochs[-1]['updates'] / max(1, xs[-1]))
            ax_loss.plot([s['update'] / per_epoch for s in steps], [s['loss'] for s in steps], color='tab:blue',
                         alpha=0.25, lw=0.8, label='train (step)')
        ax_loss.plot(xs, [r.get('train_loss') for r in epochs], 'o-', color='tab:blue', label='train')
        if any(r.get('eval_loss') is not None for r in epochs):
            ax_loss.plot(xs, [r.get('eval_loss') for r in epochs], 's-', color='tab:orange', label='val')
        ax_loss.set_xlabel('epoch')
        ax_loss.set_ylabel('loss')
        ax_loss.legend()
        ax_loss.grid(alpha=0.3)
        for key, style, label in (('eval_top1', 'o-', 'val top-1'), ('eval_top5', 's--', 'val top-5'),
                                  ('ema_eval_top1', '^-', 'EMA val top-1')):
            vals = [r.get(key) for r in epochs]
            if any(v is not None for v in vals):
                ax_acc.plot(xs, vals, style, label=label)
        ax_acc.set_xlabel('epoch')
        ax_acc.set_ylabel('accuracy (%)')
        ax_acc.set_ylim(0, 100)
        ax_acc.legend()
        ax_acc.grid(alpha=0.3)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format='png')
        plt.close(fig)
        return atomic_write_bytes(self.folder / 'curves.png', buf.getvalue(), fsync=False)


def _clean(value: Any) -> Any:
    if hasattr(value, 'item'):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json(path: os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON (non-finite floats as strings, like the logs)."""
    return atomic_write_text(path, json.dumps(_plain_json(obj), indent=2) + '\n')


def _plain_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_json(v) for v in obj]
    return _clean(obj) if isinstance(obj, float) or hasattr(obj, 'item') else obj
