"""tools/train.py and tools/validate.py: end-to-end runs on the built-in dataset, DDP equivalence, crash-resume.

Training runs are real subprocesses (the CLI a user runs) on the tiny `shapes10-mini` built-in dataset with one
thread each, so the whole file stays within a few CPU minutes.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vimzoo
from vimzoo.train import checkpoint as ckpt_mod
from vimzoo.train.checkpoint import (CheckpointError, atomic_save, capture_rng_state, load_checkpoint,
                                     restore_rng_state, save_checkpoint)
from vimzoo.train.config import recipe_dir
from vimzoo.train.datasets import BUILTIN_DATASETS, DatasetError, check_image_folder, ensure_builtin_dataset
from vimzoo.train import trainer

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / 'tools' / 'train.py'
VALIDATE = ROOT / 'tools' / 'validate.py'

# A LayerNorm-only zoo model (no BatchNorm: per-rank batch statistics would make DDP differ from one process).
_PREFERRED = ('test_dependencyvit', 'test_lbvim', 'test_vim')
MODEL = next((m for m in _PREFERRED if m in vimzoo.list_models(include_test=True)), 'test_vit')
# one intra-op thread like OMP_NUM_THREADS=1 below (the built-in preset would otherwise pin 2)
MINI = ['--builtin-dataset', 'shapes10-mini', '--model', MODEL, '--workers', '0', '--threads', '1', '--no-progress']


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('vimzoo_cache')
    ensure_builtin_dataset('shapes10-mini', path / 'datasets')
    return path


def _env(cache: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', VIMZOO_CACHE=str(cache),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    for key in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(key, None)
    return env


def _run(args, cache: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *map(str, args)], env=_env(cache), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


def _steps(run_dir: Path):
    recs = [json.loads(line) for line in (run_dir / 'log.jsonl').read_text().splitlines()]
    return [r for r in recs if r['type'] == 'step']


def _load_safetensors(path: Path):
    from safetensors.torch import load_file
    return load_file(str(path))


# ----------------------------------------------------------------------------------------------------------------
# end-to-end tiny run + validate
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_run(cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('tiny_run')
    proc = _run([TRAIN, *MINI[:-1], '--epochs', '1', '--batch-size', '16', '--model-ema', '--model-ema-decay', '0.9',
                 '--log-interval', '2', '--output', out], cache_dir)
    (out / 'stdout.txt').write_text(proc.stdout)
    (out / 'stderr.txt').write_text(proc.stderr)
    return out


def test_tiny_run_writes_everything(tiny_run: Path):
    for name in ('last.pth', 'best.pth', 'final.safetensors', 'final_ema.safetensors', 'summary.csv', 'log.jsonl',
                 'curves.png', 'results.json', 'args.json'):
        assert (tiny_run / name).is_file(), name
    assert not [p for p in tiny_run.iterdir() if p.name.endswith('.tmp')], 'temporary checkpoint files left behind'
    assert (tiny_run / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    rows = list(csv.DictReader((tiny_run / 'summary.csv').open()))
    assert len(rows) == 1 and float(rows[0]['train_loss']) > 0 and rows[0]['ema_eval_top1'] != ''
    ckpt = load_checkpoint(tiny_run / 'last.pth')  # weights_only=True inside
    assert ckpt['model_name'] == MODEL and ckpt['epoch'] == 1 and ckpt['batch_idx'] == 0
    assert ckpt['num_updates'] == 10 and ckpt['num_classes'] == 10 and len(ckpt['class_to_idx']) == 10
    assert set(ckpt['rng'][0]) >= {'torch', 'numpy', 'python'}
    assert ckpt['optimizer']['state'], 'optimizer state missing'
    final = _load_safetensors(tiny_run / 'final.safetensors')
    assert all(torch.equal(final[k], v) for k, v in ckpt['model'].items())
    # tqdm progress bar with throughput and ETA, on stderr
    err = (tiny_run / 'stderr.txt').read_text()
    assert 'img_s=' in err and '<' in err and 'epoch 1/1' in err


def test_validate_reproduces_training_eval(tiny_run: Path, cache_dir):
    rows = list(csv.DictReader((tiny_run / 'summary.csv').open()))
    out_json = tiny_run / 'val.json'
    _run([VALIDATE, '--checkpoint', tiny_run / 'best.pth', '--builtin-dataset', 'shapes10-mini', '--workers', '0',
          '--results-file', out_json], cache_dir)
    res = json.loads(out_json.read_text())
    assert res['model'] == MODEL and res['count'] == 80
    assert res['top1'] == pytest.approx(float(rows[0]['eval_top1']), abs=1e-6)
    assert res['top5'] == pytest.approx(float(rows[0]['eval_top5']), abs=1e-6)
    # the safetensors EMA export evaluates to the EMA numbers logged during training
    proc = _run([VALIDATE, '--checkpoint', tiny_run / 'final_ema.safetensors', '--builtin-dataset', 'shapes10-mini',
                 '--workers', '0'], cache_dir)
    res_ema = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res_ema['top1'] == pytest.approx(float(rows[0]['ema_eval_top1']), abs=1e-6)


def test_validate_official_weights_file(tiny_run: Path, cache_dir):
    """A release-style file ({'model': state_dict}) goes through timm pretrained loading (file overlay)."""
    rows = list(csv.DictReader((tiny_run / 'summary.csv').open()))
    official = tiny_run / 'official_release.pth'
    torch.save({'model': load_checkpoint(tiny_run / 'last.pth')['model']}, official)
    proc = _run([VALIDATE, '--model', MODEL, '--official-weights', official, '--num-classes', '10',
                 '--crop-pct', '1.0', '--interpolation', 'bilinear', '--builtin-dataset', 'shapes10-mini',
                 '--workers', '0'], cache_dir)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res['weights'] == str(official) and res['crop_pct'] == 1.0
    assert res['top1'] == pytest.approx(float(rows[0]['eval_top1']), abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# DDP (2 CPU processes, gloo) == 1 process with the same global batch == 1 process with grad accumulation
# ----------------------------------------------------------------------------------------------------------------

def test_ddp_two_processes_match_one_process(cache_dir, tmp_path):
    common = [*MINI, '--epochs', '1', '--no-aug', '--drop-path', '0', '--smoothing', '0', '--log-interval', '1',
              '--lr', '2e-3', '--warmup-epochs', '0', '--no-plot']
    one, two, accum = tmp_path / 'one', tmp_path / 'two', tmp_path / 'accum'
    _run([TRAIN, *common, '--batch-size', '16', '--output', one], cache_dir)
    _run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', TRAIN, *common, '--batch-size', '8',
          '--output', two], cache_dir, timeout=600)
    _run([TRAIN, *common, '--batch-size', '8', '--grad-accum-steps', '2', '--output', accum], cache_dir)
    losses = {name: [s['loss'] for s in _steps(d)] for name, d in (('one', one), ('two', two), ('accum', accum))}
    assert len(losses['one']) == 10
    assert losses['two'] == pytest.approx(losses['one'], rel=1e-4, abs=1e-5)
    assert losses['accum'] == pytest.approx(losses['one'], rel=1e-4, abs=1e-5)
    assert losses['one'][-1] < losses['one'][0]  # it trains
    w_one, w_two = _load_safetensors(one / 'final.safetensors'), _load_safetensors(two / 'final.safetensors')
    for k in w_one:
        torch.testing.assert_close(w_two[k], w_one[k], rtol=1e-4, atol=1e-5)
    r_one = json.loads((one / 'results.json').read_text())
    r_two = json.loads((two / 'results.json').read_text())
    assert r_two['world_size'] == 2 and r_two['final']['count'] == r_one['final']['count'] == 80
    assert r_two['final']['top1'] == pytest.approx(r_one['final']['top1'], abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# SIGKILL mid-epoch, then --resume: identical to the uninterrupted run
# ----------------------------------------------------------------------------------------------------------------

def test_sigkill_then_resume_matches_uninterrupted_run(cache_dir, tmp_path):
    # augmentation, mixup/cutmix and drop path all on: their RNG streams must be restored exactly
    common = [*MINI, '--epochs', '3', '--batch-size', '8', '--mixup', '0.8', '--cutmix', '1.0', '--drop-path', '0.1',
              '--checkpoint-every-steps', '3', '--log-interval', '1', '--no-plot']
    ref, run = tmp_path / 'ref', tmp_path / 'run'
    _run([TRAIN, *common, '--output', ref], cache_dir)

    proc = subprocess.Popen([sys.executable, str(TRAIN), *common, '--output', str(run)], env=_env(cache_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 600
    killed_at = None
    try:
        while time.time() < deadline and proc.poll() is None:
            log = run / 'log.jsonl'
            if log.is_file():
                steps = [json.loads(x) for x in log.read_text().splitlines() if x.strip().endswith('}')]
                if steps and steps[-1].get('update', 0) >= 26:  # epoch 2 of 3, past a step checkpoint
                    proc.send_signal(signal.SIGKILL)
                    killed_at = steps[-1]['update']
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None, 'training finished before it could be killed; make the run longer'
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(run / 'last.pth')
    assert 0 < state['num_updates'] < 60  # a checkpoint from inside the run (usually mid-epoch: every 3 steps)
    assert not (run / 'final.safetensors').exists()

    resumed = _run([TRAIN, *common, '--output', run, '--resume', 'auto'], cache_dir)
    assert 'Resumed' in resumed.stdout
    w_ref, w_run = _load_safetensors(ref / 'final.safetensors'), _load_safetensors(run / 'final.safetensors')
    for k in w_ref:
        assert torch.equal(w_ref[k], w_run[k]), f'{k} differs after resume'
    rows_ref = list(csv.DictReader((ref / 'summary.csv').open()))
    rows_run = list(csv.DictReader((run / 'summary.csv').open()))
    keys = ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'updates')
    assert [[r[k] for k in keys] for r in rows_run] == [[r[k] for k in keys] for r in rows_ref]
    assert [s['loss'] for s in _steps(run)] == [s['loss'] for s in _steps(ref)]
    end = load_checkpoint(run / 'last.pth')
    assert end['epoch'] == 3 and end['num_updates'] == 60


# ----------------------------------------------------------------------------------------------------------------
# checkpoint I/O units
# ----------------------------------------------------------------------------------------------------------------

def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth'
    atomic_save({'step': 1, 'w': torch.ones(3)}, path)

    def crash(obj, f, *a, **k):
        f.write(b'partial garbage')
        raise RuntimeError('killed while writing')

    monkeypatch.setattr(ckpt_mod.torch, 'save', crash)
    with pytest.raises(RuntimeError, match='killed while writing'):
        atomic_save({'step': 2, 'w': torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)['step'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pth']


def test_rng_state_round_trip_under_weights_only(tmp_path):
    import random

    import numpy as np
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    np.random.randn()  # leave a cached gaussian in numpy's state
    save_checkpoint(tmp_path / 'c.pth', rng=capture_rng_state(), args={'path': tmp_path, 'size': (1, 2)})
    expected = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
    state = torch.load(tmp_path / 'c.pth', weights_only=True)
    assert state['args'] == {'path': str(tmp_path), 'size': [1, 2]}
    restore_rng_state(state['rng'])
    got = (torch.rand(4), np.random.rand(4), np.random.randn(), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2] and expected[3] == got[3]


def test_load_model_weights_layouts(tmp_path):
    from vimzoo.train.checkpoint import export_safetensors, load_model_weights
    w = {'head.weight': torch.randn(3, 2), 'head.bias': torch.zeros(3)}
    torch.save({'state_dict': {f'module.{k}': v for k, v in w.items()}, 'epoch': 3}, tmp_path / 'ddp.pth')
    got = load_model_weights(tmp_path / 'ddp.pth')
    assert got.keys() == w.keys() and all(torch.equal(got[k], w[k]) for k in w)
    with pytest.raises(CheckpointError, match='no EMA weights'):
        load_model_weights(tmp_path / 'ddp.pth', use_ema=True)
    torch.save({'model': w, 'model_ema': {k: v + 1 for k, v in w.items()}}, tmp_path / 'ours.pth')
    assert torch.equal(load_model_weights(tmp_path / 'ours.pth', use_ema=True)['head.bias'], torch.ones(3))
    export_safetensors(w, tmp_path / 'w.safetensors', metadata={'model': 'x'})
    assert torch.equal(load_model_weights(tmp_path / 'w.safetensors')['head.weight'], w['head.weight'])
    with pytest.raises(ValueError, match='does not contain a model state_dict'):
        torch.save({'epoch': 1}, tmp_path / 'bad.pth')
        load_model_weights(tmp_path / 'bad.pth')


def test_builtin_dataset_is_deterministic_imagefolder(tmp_path):
    a = ensure_builtin_dataset('shapes10-mini', tmp_path / 'a')
    b = ensure_builtin_dataset('shapes10-mini', tmp_path / 'b')
    spec = BUILTIN_DATASETS['shapes10-mini']
    files = sorted(p.relative_to(a) for p in a.rglob('*.png'))
    assert len(files) == spec.num_classes * (spec.train_per_class + spec.val_per_class)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files[::17])
    assert sorted(p.name for p in (a / 'train').iterdir()) == sorted(spec.classes)


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------

def test_cli_missing_dataset_folder_is_a_clear_error(tmp_path, cache_dir):
    proc = _run([TRAIN, '--data-dir', tmp_path / 'nope', '--model', MODEL], cache_dir, check=False)
    assert proc.returncode == 2
    assert f'{tmp_path / "nope"} does not exist' in proc.stderr and 'ImageFolder layout' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_empty_dataset_folders_are_clear_errors(tmp_path):
    (tmp_path / 'train').mkdir()
    with pytest.raises(DatasetError, match='no class sub-folders'):
        check_image_folder(tmp_path, ['train'])
    (tmp_path / 'train' / 'cat').mkdir()
    with pytest.raises(DatasetError, match='contains no images'):
        check_image_folder(tmp_path, ['train'])
    with pytest.raises(DatasetError, match="no 'val' or 'validation' sub-folder"):
        check_image_folder(tmp_path, ['val', 'validation'])
    (tmp_path / 'train' / 'cat' / 'x.png').write_bytes(b'')
    assert check_image_folder(tmp_path, ['train']) == {'train': tmp_path / 'train'}


@pytest.mark.parametrize('argv, message', [
    (['--epochs', '0'], 'must be a positive integer'),
    (['--batch-size', '7', '--mixup', '0.8'], 'even --batch-size'),
    (['--model', 'test_dependencyvitt'], 'Did you mean'),
    (['--config', 'no_such_recipe'], 'file not found'),
    (['--resume', '/no/such/last.pth'], 'checkpoint file not found'),
    (['--model-kwargs', 'depth'], 'KEY=VALUE'),
    (['--hflip', '1.5'], 'probability'),
])
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        trainer.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_recipe_key_is_an_error(tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('lr_bsae: 1.0e-3\n')
    with pytest.raises(SystemExit):
        trainer.parse_args(['--config', str(bad)])
    assert "unknown option 'lr_bsae'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# recipes
# ----------------------------------------------------------------------------------------------------------------

RECIPES = sorted(p.stem for p in recipe_dir().glob('*.yaml'))


def test_every_family_has_a_recipe():
    assert set(vimzoo.FAMILIES) <= set(RECIPES)


@pytest.mark.parametrize('family', RECIPES)
def test_recipe_loads_and_names_exist(family, tmp_path):
    import timm
    from vimzoo.train.config import load_recipe
    recipe = load_recipe(recipe_dir() / f'{family}.yaml', trainer.build_parser())
    base = recipe['base']
    assert base['epochs'] > 0 and base['opt'] == 'adamw' and base['lr_base'] > 0 and 'weight_decay' in base
    names = [base['model'], *recipe['variants']]
    registered = vimzoo.list_models(family) if family in vimzoo.FAMILIES else []
    if registered or family in ('davit', 'convit', 'halonet'):
        missing = [n for n in names if n not in timm.list_models()]
        assert not missing, f'{family}.yaml names unknown models {missing}'
    else:
        pytest.skip(f'family {family} not registered in this checkout; names unchecked')
    # precedence: recipe < variant < command line; lr follows the recipe's scaling rule
    variant = next(iter(recipe['variants']), base['model'])
    args = trainer.parse_args(['--config', family, '--data-dir', str(tmp_path), '--model', variant,
                               '--epochs', '7'])
    assert args.epochs == 7 and args.uses_builtin is False
    expected = {**base, **recipe['variants'].get(variant, {})}
    assert args.lr_base == expected['lr_base'] and args.drop_path == expected.get('drop_path')
    lr = trainer._resolve_lr(args, world_size=8)
    assert lr == pytest.approx(expected['lr_base'] * args.batch_size * 8 / expected['lr_base_size'])


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_amp_grad_checkpointing_layer_decay_accum_run(dtype, cache_dir, tmp_path):
    """autocast (+ GradScaler for fp16) + activation checkpointing + layer-wise lr decay + accumulation, on CPU."""
    out = tmp_path / 'amp'
    _run([TRAIN, *MINI, '--epochs', '1', '--batch-size', '8', '--grad-accum-steps', '2', '--limit-train-batches', '4',
          '--limit-val-batches', '1', '--amp', '--amp-dtype', dtype, '--grad-checkpointing', '--layer-decay',
          '0.5', '--lr', '1e-3', '--clip-grad', '1.0', '--no-plot', '--output', out], cache_dir)
    state = load_checkpoint(out / 'last.pth')
    assert state['num_updates'] == 2
    if dtype == 'float16':
        assert state['scaler']['scale'] > 0  # GradScaler state is checkpointed
    else:
        assert state['scaler'] is None
    scales = sorted({g['lr_scale'] for g in state['optimizer']['param_groups']})
    assert len(scales) > 2 and scales[-1] == 1.0 and scales[0] < 0.5  # deeper groups get geometrically smaller lr
    assert state['args']['amp'] is True and state['args']['grad_checkpointing'] is True


def test_imagenet_recipe_on_an_imagefolder_dir(cache_dir, tmp_path):
    """--config + --data-dir: the ImageNet path with a full recipe (RandAugment, mixup/cutmix, random erasing, EMA)."""
    data = ensure_builtin_dataset('shapes10-mini', cache_dir / 'datasets')
    model = 'test_vim' if 'test_vim' in vimzoo.list_models(include_test=True) else MODEL
    out = tmp_path / 'recipe'
    proc = _run([TRAIN, '--config', 'vim', '--model', model, '--data-dir', data, '--epochs', '1', '--batch-size', '8',
                 '--limit-train-batches', '2', '--limit-val-batches', '1', '--workers', '0', '--no-progress',
                 '--no-plot', '--output', out], cache_dir)
    assert 'built-in dataset' not in proc.stdout
    args = json.loads((out / 'args.json').read_text())
    assert args['aa'] == 'rand-m9-mstd0.5-inc1' and args['mixup'] == 0.8 and args['model_ema'] is True
    assert args['recipe'].endswith('configs/train/vim.yaml') and args['uses_builtin'] is False
    info = [json.loads(x) for x in (out / 'log.jsonl').read_text().splitlines()][0]
    assert info['lr'] == pytest.approx(5e-4 * 8 / 512)  # DeiT scaling rule from the recipe
    assert (out / 'final_ema.safetensors').is_file()
