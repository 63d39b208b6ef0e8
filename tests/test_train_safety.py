"""tools/train.py never loses a result and refuses what it cannot do: finished-run resume, run-folder lock,
atomic files, data checks, strict initial weights, DDP timeout and BatchNorm sync, one-line usage errors,
checksummed checkpoints with fallback, thread-count independence of the default job, and code layout.

Runs are real subprocesses of the CLI on the tiny generated `shapes10-mini` set, most of them a few batches long.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vimzoo
from vimzoo.train import trainer
from vimzoo.train.checkpoint import export_safetensors, load_checkpoint, load_model_weights
from vimzoo.train.datasets import ensure_builtin_dataset

LOCK_NAME = '.vimzoo-train.lock'

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / 'tools' / 'train.py'
VALIDATE = ROOT / 'tools' / 'validate.py'
MODEL = 'test_dependencyvit'
# one intra-op thread like OMP_NUM_THREADS=1 below (the built-in preset would otherwise pin 2)
MINI = ['--builtin-dataset', 'shapes10-mini', '--model', MODEL, '--workers', '0', '--threads', '1', '--no-progress',
        '--no-plot']
SHORT = [*MINI, '--epochs', '1', '--batch-size', '16', '--limit-train-batches', '2', '--limit-val-batches', '1']


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('vimzoo_cache')
    ensure_builtin_dataset('shapes10-mini', path / 'datasets')
    return path


def _env(cache: Path, threads: str = '1', **extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, VIMZOO_CACHE=str(cache),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), **extra)
    for key in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        if key not in extra:
            env.pop(key, None)
    return env


def _run(args, cache: Path, timeout: float = 600, check: bool = True, threads: str = '1'):
    proc = subprocess.run([sys.executable, *map(str, args)], env=_env(cache, threads), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


def _usage_error(proc, *fragments: str) -> None:
    """Exit 2, one `tools/train.py: error:` line naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert 'error:' in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr[-2000:])


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _same_weights(a: Path, b: Path) -> bool:
    """Bit-identical tensors (the safetensors header's metadata order is not deterministic, so not the bytes)."""
    from safetensors.torch import load_file
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _image_folder(cache: Path, dest: Path) -> Path:
    shutil.copytree(ensure_builtin_dataset('shapes10-mini', cache / 'datasets'), dest,
                    ignore=shutil.ignore_patterns('VIMZOO_*'))
    return dest


# ----------------------------------------------------------------------------------------------------------------
# 1. results are never lost
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def two_epoch_run(cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('two_epochs')
    proc = _run([TRAIN, *MINI, '--epochs', '2', '--batch-size', '16', '--limit-train-batches', '3',
                 '--log-interval', '1', '--output', out], cache_dir)
    (out.parent / f'{out.name}.stdout').write_text(proc.stdout)
    return out


def test_epochs_are_counted_from_one_everywhere(two_epoch_run: Path):
    stdout = (two_epoch_run.parent / f'{two_epoch_run.name}.stdout').read_text()
    assert 'epoch 1/2:' in stdout and 'epoch 2/2:' in stdout
    rows = list(csv.DictReader((two_epoch_run / 'summary.csv').open()))
    assert [r['epoch'] for r in rows] == ['1', '2']
    results = json.loads((two_epoch_run / 'results.json').read_text())
    assert results['epochs'] == 2 and results['best']['epoch'] in (1, 2)
    steps = [json.loads(x) for x in (two_epoch_run / 'log.jsonl').read_text().splitlines()]
    assert {s['epoch'] for s in steps if s['type'] == 'step'} == {1, 2}
    assert {s['epoch'] for s in steps if s['type'] == 'epoch'} == {1, 2}


def test_resuming_a_finished_run_is_a_noop(two_epoch_run: Path, cache_dir):
    before = _snapshot(two_epoch_run)
    proc = _run([TRAIN, *MINI, '--epochs', '2', '--batch-size', '16', '--limit-train-batches', '3',
                 '--output', two_epoch_run, '--resume', 'auto'], cache_dir)
    assert 'Nothing to do' in proc.stdout and 'already finished' in proc.stdout
    assert _snapshot(two_epoch_run) == before  # same files, same bytes, not even rewritten
    proc = _run([TRAIN, *MINI, '--epochs', '2', '--batch-size', '16', '--limit-train-batches', '3',
                 '--resume', two_epoch_run / 'last.pth'], cache_dir)
    assert 'Nothing to do' in proc.stdout and _snapshot(two_epoch_run) == before


def test_finished_run_with_lost_final_files_gets_them_back(two_epoch_run: Path, cache_dir, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(two_epoch_run, run)
    (run / 'results.json').unlink()
    (run / 'final.safetensors').unlink()
    _run([TRAIN, *MINI, '--epochs', '2', '--batch-size', '16', '--limit-train-batches', '3', '--output', run,
          '--resume', 'auto'], cache_dir)
    restored = json.loads((run / 'results.json').read_text())
    original = json.loads((two_epoch_run / 'results.json').read_text())
    assert restored['final'] == original['final'] and restored['num_updates'] == original['num_updates']
    assert _same_weights(run / 'final.safetensors', two_epoch_run / 'final.safetensors')


def test_a_locked_folder_refuses_a_second_run_and_a_stale_lock_is_taken_over(cache_dir, tmp_path):
    out = tmp_path / 'run'
    args = [*MINI, '--epochs', '30', '--batch-size', '16', '--output', out]
    first = subprocess.Popen([sys.executable, str(TRAIN), *map(str, args)], env=_env(cache_dir),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.time() + 300
        while not (out / 'log.jsonl').exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)  # the first run is training (it locked the folder before anything else)
        assert first.poll() is None, 'first run ended early'
        second = _run([TRAIN, *args], cache_dir, check=False)
        _usage_error(second, 'in use by another training run', f'pid {first.pid}')
        assert 'Using built-in dataset' not in second.stdout  # refused before touching data
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / LOCK_NAME).exists()  # a killed run leaves its lock file behind ...
    third = _run([TRAIN, *MINI, '--epochs', '1', '--batch-size', '16', '--limit-train-batches', '1',
                  '--limit-val-batches', '1', '--output', out, '--resume', 'auto'], cache_dir)
    assert 'no longer alive' in third.stderr and f'pid {first.pid}' in third.stderr  # ... which is taken over
    assert not (out / LOCK_NAME).exists()  # and a finished run removes its own


def test_run_lock_unit(tmp_path):
    from vimzoo.train.fileio import RunFolderBusy, RunLock
    lock = RunLock(tmp_path)
    assert lock.acquire() is None
    other = RunLock(tmp_path)
    with pytest.raises(RunFolderBusy, match=f'pid {os.getpid()} on {socket.gethostname()}'):
        other.acquire()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())['pid'] == os.getpid()


def test_every_run_file_is_written_by_an_atomic_rename(cache_dir, tmp_path, monkeypatch):
    """In-process run: each file in the run folder must have been put there by os.replace (temp file + rename)."""
    replaced = set()
    real_replace = os.replace

    def spy(src, dst, *a, **k):
        replaced.add(Path(dst).name)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setenv('VIMZOO_CACHE', str(cache_dir))
    monkeypatch.setattr(os, 'replace', spy)
    threads = torch.get_num_threads()
    out = tmp_path / 'run'
    try:
        assert trainer.main([*SHORT[:-1], '1', '--threads', str(threads), '--model-ema', '--output', str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    files = {p.name for p in out.iterdir()}
    assert {'results.json', 'args.json', 'summary.csv', 'log.jsonl', 'last.pth', 'best.pth',
            'final.safetensors', 'final_ema.safetensors'} <= files
    assert files <= replaced, f'written in place: {sorted(files - replaced)}'


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import errno

    from vimzoo.train import checkpoint as ckpt_mod
    from vimzoo.train.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / 'last.pth', keep_previous=tmp_path / 'previous.pth', w=torch.ones(2), step=1)
    save_checkpoint(tmp_path / 'last.pth', keep_previous=tmp_path / 'previous.pth', w=torch.ones(2), step=2)

    def full(obj, f, *a, **k):
        f.write(b'x' * 100)
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(ckpt_mod.torch, 'save', full)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / 'last.pth', keep_previous=tmp_path / 'previous.pth', w=torch.ones(2), step=3)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / 'last.pth')['step'] == 2
    assert load_checkpoint(tmp_path / 'previous.pth')['step'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pth', 'previous.pth']


# ----------------------------------------------------------------------------------------------------------------
# 2. data checks before training
# ----------------------------------------------------------------------------------------------------------------

def test_empty_train_class_folder_is_an_error_naming_it(cache_dir, tmp_path):
    data = _image_folder(cache_dir, tmp_path / 'data')
    for f in (data / 'train' / 'ring').iterdir():
        f.unlink()
    proc = _run([TRAIN, *SHORT, '--data-dir', data, '--output', tmp_path / 'out'], cache_dir, check=False)
    _usage_error(proc, f'{data / "train" / "ring"} has no images')


def test_train_and_val_classes_must_match(cache_dir, tmp_path):
    data = _image_folder(cache_dir, tmp_path / 'data')
    shutil.move(str(data / 'train' / 'dots'), str(tmp_path / 'dots'))  # val has a class that train lacks
    proc = _run([TRAIN, *SHORT, '--data-dir', data, '--output', tmp_path / 'out'], cache_dir, check=False)
    _usage_error(proc, 'class folders differ', 'dots', '--allow-class-mismatch')
    proc = _run([TRAIN, *SHORT, '--data-dir', data, '--allow-class-mismatch', '--output', tmp_path / 'ok'],
                cache_dir)
    assert 'Data: train 144 images in 9 classes (16-16 per class); val 72 images in 9 classes' in proc.stdout
    assert 'val skips 8 images of classes not in train' in proc.stdout
    assert load_checkpoint(tmp_path / 'ok' / 'last.pth')['num_classes'] == 9


def test_num_classes_must_equal_the_class_folders(cache_dir, tmp_path):
    proc = _run([TRAIN, *SHORT, '--num-classes', '3', '--output', tmp_path / 'out' / 'run'], cache_dir, check=False)
    _usage_error(proc, '--num-classes 3 does not match the 10 class folders')
    assert not (tmp_path / 'out').exists()  # a run refused before writing anything leaves no empty folders


def test_data_counts_are_printed(two_epoch_run: Path):
    stdout = (two_epoch_run.parent / f'{two_epoch_run.name}.stdout').read_text()
    assert 'Data: train 160 images in 10 classes (16-16 per class); val 80 images in 10 classes' in stdout


# ----------------------------------------------------------------------------------------------------------------
# 3. strict initial weights, DDP timeout, one-line usage errors
# ----------------------------------------------------------------------------------------------------------------

def test_initial_checkpoint_is_strict_by_default(cache_dir, tmp_path):
    import timm
    other = tmp_path / 'van.pth'
    torch.save({'state_dict': timm.create_model('test_van', num_classes=10).state_dict()}, other)
    proc = _run([TRAIN, *SHORT, '--initial-checkpoint', other, '--output', tmp_path / 'a'], cache_dir, check=False)
    _usage_error(proc, 'does not match DependencyViT', 'missing keys (first: ', 'unexpected keys (first: ',
                 '--initial-checkpoint-strict false')
    # same model, another head size: strict refuses, strict=false keeps the fresh head and loads the rest
    donor = timm.create_model(MODEL, num_classes=5)
    export_safetensors(donor.state_dict(), tmp_path / 'donor.safetensors')
    proc = _run([TRAIN, *SHORT, '--initial-checkpoint', tmp_path / 'donor.safetensors', '--output', tmp_path / 'b'],
                cache_dir, check=False)
    _usage_error(proc, '2 keys with another shape (first: head.')
    _run([TRAIN, *SHORT, '--lr', '1e-12', '--warmup-lr', '1e-12', '--weight-decay', '0', '--initial-checkpoint',
          tmp_path / 'donor.safetensors', '--initial-checkpoint-strict', 'false', '--output', tmp_path / 'c'],
         cache_dir)
    trained = load_checkpoint(tmp_path / 'c' / 'last.pth')['model']
    torch.testing.assert_close(trained['patch_embed.proj.weight'], donor.state_dict()['patch_embed.proj.weight'])
    assert trained['head.weight'].shape == (10, donor.head.in_features)


@pytest.mark.parametrize('argv, message', [
    (['--smoothing', '1.0'], 'must be in [0, 1)'),
    (['--input-size', '2', '64', '64'], '2 channels are not supported'),
    (['--mean', '0.5', '0.5'], '--mean needs 1 or 3 values'),
    (['--dist-timeout', '0'], 'must be a finite number > 0'),
    (['--initial-checkpoint-strict', 'maybe'], 'must be true or false'),
])
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        trainer.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_blocked_output_folder_is_refused_before_any_data(tmp_path, capsys):
    (tmp_path / 'file').write_text('not a folder')
    with pytest.raises(SystemExit) as exc:
        trainer.parse_args(['--output', str(tmp_path / 'file' / 'run')])
    assert exc.value.code == 2 and f'{tmp_path / "file"} is a file' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trainer.parse_args(['--output', str(tmp_path / 'file')])
    assert 'is not a folder' in capsys.readouterr().err


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_output_folder_is_refused(tmp_path, capsys):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(SystemExit):
            trainer.parse_args(['--output', str(ro / 'run')])
        assert 'not writable' in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_unusable_resume_files_are_usage_errors(cache_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / 'empty.pth').write_bytes(b'')
    torch.save({'format': 'vimzoo-train-v1', 'model_name': MODEL, 'model': {}, 'epoch': 1, 'batch_idx': 0,
                'num_updates': 3}, tmp_path / 'no_optimizer.pth')
    torch.save({'weights': torch.zeros(2)}, tmp_path / 'foreign.pth')
    proc = _run([TRAIN, *SHORT, '--resume', tmp_path / 'empty.pth', '--output', tmp_path / 'cli'], cache_dir,
                check=False)
    _usage_error(proc, 'is empty')  # the real command line: one line, exit 2, no traceback
    monkeypatch.setenv('VIMZOO_CACHE', str(cache_dir))
    for option, name, message in (('--resume', 'no_optimizer.pth', 'lacks optimizer'),
                                  ('--resume', 'foreign.pth', 'not a vimzoo training checkpoint'),
                                  ('--initial-checkpoint', 'empty.pth', 'is empty')):
        code = trainer.main([*SHORT, option, str(tmp_path / name), '--output', str(tmp_path / name.split('.')[0])])
        out, err = capsys.readouterr()
        assert code == 2 and message in err and 'tools/train.py: error:' in err, (name, err)
        assert 'Using built-in dataset' not in out  # refused before any data


def test_input_size_channels_are_used(cache_dir, tmp_path):
    out = tmp_path / 'grey'
    _run([TRAIN, *SHORT, '--input-size', '1', '48', '48', '--output', out], cache_dir)
    ckpt = load_checkpoint(out / 'last.pth')
    assert ckpt['model']['patch_embed.proj.weight'].shape[1] == 1  # a greyscale model ...
    assert ckpt['data_config']['input_size'] == [1, 48, 48] and len(ckpt['data_config']['mean']) == 1  # ... and data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_a_stopped_rank_makes_the_other_exit_after_dist_timeout(cache_dir, tmp_path):
    port = str(_free_port())
    args = [sys.executable, str(TRAIN), *MINI, '--epochs', '50', '--batch-size', '8',
            '--dist-timeout', '30', '--output', str(tmp_path / 'run')]
    procs = [subprocess.Popen(args, env=_env(cache_dir, WORLD_SIZE='2', RANK=str(r), LOCAL_RANK=str(r),
                                             MASTER_ADDR='127.0.0.1', MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for r in (0, 1)]
    try:
        deadline = time.time() + 300
        while not (tmp_path / 'run' / 'log.jsonl').exists() and time.time() < deadline:
            assert all(p.poll() is None for p in procs), procs[0].communicate()
            time.sleep(0.1)  # training is under way on both ranks
        procs[1].send_signal(signal.SIGSTOP)
        t_stop = time.time()
        out, err = procs[0].communicate(timeout=240)
        waited = time.time() - t_stop
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 1, err[-3000:]
    assert 'rank 0: another process did not answer within --dist-timeout 30s' in err, err[-3000:]
    assert 'Traceback' not in err
    assert waited < 150


# ----------------------------------------------------------------------------------------------------------------
# 4. checksummed checkpoints, fallback to the previous one
# ----------------------------------------------------------------------------------------------------------------

def _flip_tensor_bytes(path: Path, tensor: torch.Tensor, count: int = 64) -> None:
    """Flip `count` bytes inside the stored data of `tensor` (found by its bytes, so it hits real payload)."""
    data = bytearray(path.read_bytes())
    needle = tensor.contiguous().view(torch.uint8).numpy().tobytes()[:256]
    at = data.find(needle)
    assert at > 0, 'tensor bytes not found in the file'
    for i in range(at, at + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused(two_epoch_run: Path, tmp_path):
    from vimzoo.train.checkpoint import CheckpointError
    bad = tmp_path / 'last.pth'
    shutil.copy(two_epoch_run / 'last.pth', bad)
    weights = load_checkpoint(bad)['model']
    _flip_tensor_bytes(bad, max(weights.values(), key=lambda t: t.numel()))
    with pytest.raises(CheckpointError, match='is damaged: its content does not match the checksum'):
        load_checkpoint(bad)
    st = tmp_path / 'final.safetensors'
    shutil.copy(two_epoch_run / 'final.safetensors', st)
    _flip_tensor_bytes(st, max(weights.values(), key=lambda t: t.numel()))
    with pytest.raises(CheckpointError, match='damaged'):
        load_model_weights(st)


def test_resume_auto_falls_back_to_the_previous_good_checkpoint(two_epoch_run: Path, cache_dir, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(two_epoch_run, run)
    weights = load_checkpoint(run / 'last.pth')['model']
    _flip_tensor_bytes(run / 'last.pth', max(weights.values(), key=lambda t: t.numel()))
    common = [*MINI, '--epochs', '2', '--batch-size', '16', '--limit-train-batches', '3', '--log-interval', '1']
    proc = _run([TRAIN, *common, '--resume', run / 'last.pth'], cache_dir, check=False)
    _usage_error(proc, 'is damaged', 'previous.pth')  # an explicit file is never swapped silently
    proc = _run([TRAIN, *common, '--output', run, '--resume', 'auto'], cache_dir)
    assert 'is damaged' in proc.stderr and 'resuming from' in proc.stderr and 'Resumed' in proc.stdout
    assert (run / 'last.pth.damaged').is_file()  # kept for inspection, never deleted
    # epoch 2 was re-trained from previous.pth (end of epoch 1): the same weights as the original run
    assert _same_weights(run / 'final.safetensors', two_epoch_run / 'final.safetensors')


# ----------------------------------------------------------------------------------------------------------------
# 5. the default job's numbers do not depend on OMP_NUM_THREADS
# ----------------------------------------------------------------------------------------------------------------

def test_default_preset_results_do_not_depend_on_omp_threads(cache_dir, tmp_path):
    # the built-in preset (as `python tools/train.py` uses it); a few steps are enough to split on thread count
    args = ['--builtin-dataset', 'shapes10-mini', '--epochs', '1', '--limit-train-batches', '4', '--workers', '0',
            '--limit-val-batches', '1', '--no-progress', '--no-plot']
    for threads in ('1', '2'):
        _run([TRAIN, *args, '--output', tmp_path / f't{threads}'], cache_dir, threads=threads)
    assert _same_weights(tmp_path / 't1' / 'final.safetensors', tmp_path / 't2' / 'final.safetensors')


# ----------------------------------------------------------------------------------------------------------------
# 6. DDP keeps BatchNorm statistics in sync (timm distribute_bn)
# ----------------------------------------------------------------------------------------------------------------

def test_ddp_batchnorm_stats_are_reduced_before_eval(cache_dir, tmp_path):
    if 'test_van' not in vimzoo.list_models(include_test=True):
        pytest.skip('needs the BatchNorm model test_van')
    out = tmp_path / 'bn'
    _run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', TRAIN,
          '--builtin-dataset', 'shapes10-mini', '--model', 'test_van', '--workers', '0', '--no-progress', '--no-plot',
          '--epochs', '1', '--batch-size', '8', '--limit-train-batches', '3', '--threads', '1', '--output', out],
         cache_dir, timeout=600)
    ddp_eval = json.loads((out / 'results.json').read_text())['final']
    val = _run([VALIDATE, '--checkpoint', out / 'final.safetensors', '--builtin-dataset', 'shapes10-mini',
                '--workers', '0'], cache_dir)
    single = json.loads(val.stdout.strip().splitlines()[-1])
    # every rank evaluated the same (stat-averaged) model that rank 0 saved
    assert single['count'] == ddp_eval['count'] == 80
    assert single['loss'] == pytest.approx(ddp_eval['loss'], rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# 6. layout: small functions, timm pieces, recipes without outside paths
# ----------------------------------------------------------------------------------------------------------------

def test_train_package_functions_are_short():
    long_ones = []
    for path in sorted((ROOT / 'vimzoo' / 'train').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long_ones.append(f'{path.name}:{node.name} ({length} lines)')
    assert not long_ones, long_ones


def test_trainer_uses_timm_pieces():
    import timm.utils
    from vimzoo.train import distributed, evaluate, options
    source = {m.__name__: Path(m.__file__).read_text() for m in (trainer, distributed, evaluate)}
    assert 'init_distributed_device' in source['vimzoo.train.distributed']
    assert 'distribute_bn' in source['vimzoo.train.trainer']
    assert trainer.evaluate is evaluate.evaluate  # one evaluation loop for training and tools/validate.py
    kwargs_action = next(a for a in options.build_parser()._actions if a.dest == 'model_kwargs')
    assert isinstance(kwargs_action, timm.utils.ParseKwargs)
    args = trainer.parse_args(['--model-kwargs', 'depth=2', 'mlp-ratio=2.5', "global_pool='avg'"])
    assert args.model_kwargs == {'depth': 2, 'mlp_ratio': 2.5, 'global_pool': 'avg'}


def test_recipes_point_only_inside_the_repository():
    for path in sorted((ROOT / 'configs' / 'train').glob('*.yaml')):
        text = path.read_text()
        assert '/work/' not in text and 'shared/research' not in text, path.name
