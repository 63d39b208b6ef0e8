"""Run logs: one CSV row per epoch, JSON lines for steps and epochs, and a PNG of the curves.

All files live in the run folder and are rewritten from the in-memory history, so a resumed run drops records
written after the checkpoint it resumed from and the files end up identical to those of an uninterrupted run.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from .checkpoint import _atomic_write

__all__ = ['RunLog']

EPOCH_FIELDS = ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'ema_eval_loss', 'ema_eval_top1',
                'ema_eval_top5', 'lr', 'updates', 'epoch_time_s', 'train_img_per_s']


class RunLog:
    """Keeps step and epoch records; `flush()` writes `log.jsonl`, `summary.csv`; `plot()` writes `curves.png`."""

    def __init__(self, folder: os.PathLike, enabled: bool = True):
        self.folder = Path(folder)
        self.enabled = enabled
        self.records: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------ resume
    def load(self, epoch: int, updates: int) -> None:
        """Re-read `log.jsonl`, keeping only records up to the resumed checkpoint (`epoch` done, `updates` done)."""
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
            elif rec.get('type') == 'epoch' and rec.get('epoch', 0) < epoch:
                self.records.append(rec)
            elif rec.get('type') == 'info':
                self.records.append(rec)

    # ------------------------------------------------------------------ records
    def add(self, kind: str, **values: Any) -> Dict[str, Any]:
        rec = {'type': kind, **{k: _clean(v) for k, v in values.items()}}
        self.records.append(rec)
        if self.enabled and kind == 'step':
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / 'log.jsonl', 'a') as f:  # steps are appended; flush() rewrites everything
                f.write(json.dumps(rec) + '\n')
        return rec

    @property
    def epochs(self) -> List[Dict[str, Any]]:
        return [r for r in self.records if r['type'] == 'epoch']

    @property
    def steps(self) -> List[Dict[str, Any]]:
        return [r for r in self.records if r['type'] == 'step']

    # ------------------------------------------------------------------ files
    def flush(self) -> None:
        if not self.enabled:
            return
        text = ''.join(json.dumps(r) + '\n' for r in self.records)
        _atomic_write(self.folder / 'log.jsonl', lambda f: f.write(text.encode()))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EPOCH_FIELDS, extrasaction='ignore')
        writer.writeheader()
        for rec in self.epochs:
            writer.writerow({k: rec.get(k, '') for k in EPOCH_FIELDS})
        _atomic_write(self.folder / 'summary.csv', lambda f: f.write(buf.getvalue().encode()))

    def plot(self, title: str = '') -> Optional[Path]:
        """Loss (train per step + per epoch, eval per epoch) and top-1/top-5 accuracy curves, matplotlib Agg."""
        if not self.enabled or not self.epochs:
            return None
        import matplotlib
        matplotlib.use('Agg', force=True)
        import matplotlib.pyplot as plt

        epochs = self.epochs
        xs = [r['epoch'] + 1 for r in epochs]
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
        return _atomic_write(self.folder / 'curves.png', lambda f: f.write(buf.getvalue()))


def _clean(value: Any) -> Any:
    if hasattr(value, 'item'):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
