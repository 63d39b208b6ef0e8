"""Atomic file writes and the run-folder lock: a run folder only ever holds complete files from one run.

Every file is written to a temporary name in the same folder, flushed, fsynced and `os.replace`d into place, so a
reader (or a run resumed after SIGKILL) sees either the previous or the new complete file. The lock keeps a second
run out of a folder that a live run is using; a lock left behind by a killed run is detected and taken over.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

__all__ = ['atomic_write', 'atomic_write_bytes', 'atomic_write_text', 'atomic_copy', 'fsync_dir',
           'check_writable_folder', 'RunFolderBusy', 'RunLock', 'LOCK_NAME']

LOCK_NAME = '.vimzoo-train.lock'


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a power cut (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_file(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    return tmp


def atomic_write(path: os.PathLike, writer: Callable[[Any], None], fsync: bool = True,
                 keep_previous: Optional[os.PathLike] = None) -> Path:
    """Write `path` through `writer(file)` into a temp file, then rename it into place.

    `keep_previous`: move the current `path` there first (both renames are atomic; between them `path` is briefly
    absent and the previous version is at `keep_previous`). `fsync=False` skips the data fsync for logs that are
    rewritten often: the rename is still atomic, only durability after a power cut is weaker.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_file(path)
    try:
        with open(tmp, 'wb') as f:
            writer(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: os.PathLike, data: bytes, fsync: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(data), fsync=fsync)


def atomic_write_text(path: os.PathLike, text: str, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode('utf-8'), fsync=fsync)


def atomic_copy(src: os.PathLike, dst: os.PathLike) -> Path:
    def _copy(f):
        with open(src, 'rb') as s:
            while chunk := s.read(1 << 24):
                f.write(chunk)
    return atomic_write(dst, _copy)


def check_writable_folder(folder: os.PathLike) -> Optional[str]:
    """None if `folder` exists as a writable folder or can be created; otherwise why not (for a usage error).

    Probes with a real temporary file rather than `os.access`, which is wrong for root, ACLs and read-only mounts.
    """
    folder = Path(folder).expanduser().absolute()
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            return f'{folder} cannot be created'
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        what = 'is not a folder' if probe_dir == folder else f'cannot be created: {probe_dir} is a file'
        return f'{folder} {what}'
    try:
        fd, probe = tempfile.mkstemp(prefix='.vimzoo-write-probe.', dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = 'is not writable' if probe_dir == folder else f'cannot be created ({probe_dir} is not writable)'
        return f'{folder} {where}: {e.strerror}'
    return None


class RunFolderBusy(RuntimeError):
    """Another live run holds the folder's lock."""


def _holder_text(info: Dict[str, Any]) -> str:
    if not info:
        return 'unknown process'
    started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info.get('started', 0)))
    return f'pid {info.get("pid")} on {info.get("host")}, started {started}: {info.get("command", "")[:200]}'


class RunLock:
    """An exclusive `fcntl.flock` on `<folder>/.vimzoo-train.lock`, holding the owner's pid/host/command.

    The kernel drops a flock when its process dies, so a lock file left by a killed run is free and simply taken
    over (`acquire` returns the dead holder's info so the caller can say so). After locking, the file must still
    be the one at the path (a releasing run unlinks it), otherwise we retry on the new file.
    """

    def __init__(self, folder: os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self._fd: Optional[int] = None
        self._created: List[Path] = []

    def read_holder(self) -> Dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or '{}')
        except (OSError, ValueError):
            return {}

    def acquire(self) -> Optional[Dict[str, Any]]:
        """Take the lock or raise RunFolderBusy naming the holder; returns a stale holder's info, else None."""
        import fcntl
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self._created = missing  # innermost first: removed again on release if still empty
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunFolderBusy(f'{self.path.parent} is in use by another training run '
                                    f'({_holder_text(self.read_holder())}); wait for it to finish or choose '
                                    f'another --output.') from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder unlinked the file between our open and flock: lock the new one
        stale = self.read_holder() or None
        info = dict(pid=os.getpid(), host=socket.gethostname(), started=time.time(), command=' '.join(sys.argv))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return stale

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still holding it, so no one can lock the file we remove
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        for folder in self._created:  # a run that failed before writing anything leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> 'RunLock':
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
