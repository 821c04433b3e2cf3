"""Atomic file and folder writes: readers see the old state or the new, never half."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write) -> Path:
    """Replace `path` with what `write(binary_file)` writes, atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; others may read reports and manifests
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def staging_dir(parent: str | Path, name: str) -> Path:
    """A fresh hidden folder beside the final one; publish it with `publish_dir`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    staged.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; the published folder should be readable like any other
    return staged


def publish_dir(staged: Path, final: Path) -> bool:
    """Rename a staged folder into place. False (and staging removed) if `final` already exists."""
    try:
        os.rename(staged, final)
        return True
    except OSError:
        if final.exists():
            shutil.rmtree(staged, ignore_errors=True)
            return False
        raise


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def locked(folder: str | Path, name: str = ".lock", on_wait: Callable[[], None] | None = None):
    """An exclusive lock on `folder/name`, for read-modify-write of files in that folder across processes.
    `on_wait` is called once if another process holds it, before waiting. The lock dies with its process."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
