"""Where the registry keeps its bytes: a local folder or an S3 bucket, behind one small contract.

Keys are relative, '/'-separated paths ("versions/v1/manifest.json"). Every store offers:

    get(key)               -> (bytes, etag), or None when absent
    put(key, data, if_none_match=True)   create only if absent
    put(key, data, if_match=etag)        replace only if unchanged since read
                                         (a failed precondition raises ConflictError; nothing is written)
    put_file(key, path)    -> sha256 of the stored bytes (large files, unconditional)
    get_file(key, path)    -> sha256 of the downloaded bytes, or None when absent
    sha256(key)            -> digest of the stored bytes, or None when absent
    list(prefix)           -> every key under prefix, sorted
    delete(key)            (absent is fine)

An etag is opaque to callers: sha256 of the content here, the S3 ETag there.
`S3Store` lives in `tuneloop.registry.s3` (boto3 is imported only when used).
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

from tuneloop.errors import ConflictError, RegistryError
from tuneloop.runtime.fsutil import atomic_write, locked

CHUNK = 1 << 20
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a full quota, a file size limit


def check_key(key: str) -> str:
    """Refuse keys that could escape the store's root (a crafted manifest must not write outside it)."""
    if not key or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise RegistryError(f"refusing the object key {key!r}: keys are relative paths without '..' or '\\'")
    return key


class LocalStore:
    """A folder. Writes go to a hidden temp file that is renamed into place (readers see old or new,
    never half); conditional writes hold the folder's `.lock` (fsutil.locked) between check and rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = str(self.root)

    def local_path(self, key: str) -> Path:
        path = self.root / check_key(key)
        if path.is_symlink() or any(p.is_symlink() for p in path.parents if self.root in p.parents):
            # a symlink inside the store could lead a read or a write anywhere on the machine
            raise RegistryError(f"refusing {key!r} in {self.root}: it passes through a symlink; the registry "
                                "holds plain files and folders only. Fix: replace the link with the files")
        return path

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.local_path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        path = self.local_path(key)
        with locked(self.root):
            if if_none_match or if_match is not None:
                current = self.get(key)
                if if_none_match and current is not None:
                    raise ConflictError(f"{path} already exists (create-only write refused)")
                if if_match is not None and (current is None or current[1] != if_match):
                    raise ConflictError(f"{path} changed since it was read (compare-and-swap refused)")
            self._replace(path, lambda fh: fh.write(data))
        return hashlib.sha256(data).hexdigest()

    def put_file(self, key: str, src: str | Path) -> str:
        return self._copy(Path(src), self.local_path(key))

    def get_file(self, key: str, dest: str | Path) -> str | None:
        src = self.local_path(key)
        return self._copy(src, Path(dest)) if src.is_file() else None

    def sha256(self, key: str) -> str | None:
        path = self.local_path(key)
        if not path.is_file():
            return None
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()

    def list(self, prefix: str = "") -> list[str]:
        """Keys under prefix; hidden files (temp files, the lock) are not objects."""
        base = self.root / check_key(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for p in base.rglob("*"):
            rel = p.relative_to(self.root)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                key = rel.as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self.local_path(key)
        path.unlink(missing_ok=True)
        for parent in path.parents:  # prune folders left empty, so a deleted version leaves no trace
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    @classmethod
    def _copy(cls, src: Path, dest: Path) -> str:
        """Copy src to dest atomically; the digest is of the bytes copied, not of src read again later."""
        h = hashlib.sha256()

        def copy(fh) -> None:
            with open(src, "rb") as inp:
                for chunk in iter(lambda: inp.read(CHUNK), b""):
                    h.update(chunk)
                    fh.write(chunk)

        cls._replace(dest, copy)
        return h.hexdigest()

    @staticmethod
    def _replace(path: Path, write) -> None:
        """atomic_write, with a full disk (or a file size limit) as a clear RegistryError: the temp file is
        gone, `path` is untouched."""
        try:
            atomic_write(path, write)
        except OSError as e:
            if e.errno not in _NO_ROOM:
                raise
            raise RegistryError(
                f"cannot write {path}: {e.strerror} ({errno.errorcode[e.errno]}). Nothing was left half-written "
                f"({path.name} is unchanged, its temp file removed). Fix: free space on the disk holding "
                f"{path.parent} (`df -h {path.parent}`; for EFBIG also check the file size limit, `ulimit -f`), "
                "then retry") from e
