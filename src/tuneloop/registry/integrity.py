"""What every load of a version's files checks: the manifest's paths, no pickle weights, each sha256."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from tuneloop.errors import ChecksumError, RegistryError, UnsafeFileError
from tuneloop.runtime.fsutil import sha256_file
from tuneloop.runtime.safety import PICKLE_SUFFIXES  # torch.load / pickle: loading them can run code


def unsafe_files(paths) -> list[str]:
    """The pickle-based weight files among paths."""
    return sorted(str(p) for p in paths if PurePosixPath(str(p)).suffix.lower() in PICKLE_SUFFIXES)


def manifest_files(v) -> list[dict]:
    """A version's listed files, refused if any could escape its adapter/ folder or is pickle-based."""
    files = v.manifest.get("files", [])
    for f in files:
        if not f["path"].startswith("adapter/") or ".." in PurePosixPath(f["path"]).parts or "\\" in f["path"]:
            raise RegistryError(f"the manifest of {v.id} lists {f['path']!r}, outside its adapter/ folder; "
                                "refusing to load it. Fix: the manifest was edited by hand; restore it")
    unsafe = unsafe_files(f["path"] for f in files)
    if unsafe:
        raise UnsafeFileError(unsafe, f"version {v.id}")
    return files


def check_folder(v, folder: Path) -> None:
    """Every listed file present under folder with its sha256, and nothing else in folder/adapter."""
    files = manifest_files(v)
    for f in files:
        p = folder / f["path"]
        actual = sha256_file(p) if p.is_file() else None
        if actual != f["sha256"]:
            raise ChecksumError(v.id, f["path"], f["sha256"], actual, str(folder))
    adapter = folder / "adapter"
    extra = sorted({p.relative_to(folder).as_posix() for p in adapter.rglob("*") if p.is_file()}
                   - {f["path"] for f in files}) if adapter.is_dir() else []
    if unsafe_files(extra):
        raise UnsafeFileError(unsafe_files(extra), str(adapter))
    if extra:
        raise ChecksumError(v.id, extra[0], None, sha256_file(folder / extra[0]), str(folder))
