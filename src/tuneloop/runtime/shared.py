"""State that outlives the machine it was written on.

A retrain handed to a GPU pool on another machine needs what the first machine wrote: the dataset version it
trains on, the feedback store's items and the datasets built from them, its own checkpoints when it resumes
after a kill, the smoke set the promote flow checks, the validation and drift reports. With
`TUNELOOP_STATE_STORE` set (an `s3://bucket/prefix` URL, or a folder every machine mounts) each of those is
copied there when it is written (`push`) and fetched from there when a machine does not have it (`pull`), so
two machines share nothing but the Prefect API and the bucket. Unset, every call here does nothing and the
state folder is the only copy, as before.

The copy mirrors the state folder: a file's key is its path under the runs folder (`runs/...`), the datasets
folder (`datasets/...`) or the state folder (`feedback/...`, `reports/...`, `drift/...`). Folders that are
published whole (a dataset version, a checkpoint) are uploaded with their marker file last and downloaded only
when the marker is there, then renamed into place: a reader sees a complete folder or none, as on one disk.
The S3 endpoint, retries and timeouts are the registry's (`AWS_ENDPOINT_URL`, `TUNELOOP_S3_*`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.runtime.fsutil import publish_dir, staging_dir

SKIP = {"tb"}  # TensorBoard event files: this machine's view of the run, rewritten on resume


def open_store(location: str):
    """A store (tuneloop.registry.store's contract) at a folder or s3://bucket/prefix."""
    text = str(location).strip()
    if text.startswith("s3://"):
        from tuneloop.registry.s3 import S3Store

        return S3Store.from_url(text)
    if "://" in text:
        raise UserError(f"TUNELOOP_STATE_STORE={text!r}", "the shared state is an s3://BUCKET/PREFIX URL or a "
                        "folder every machine mounts", "use s3:// (AWS_ENDPOINT_URL for other S3-compatible "
                        "servers) or a folder path")
    from tuneloop.registry.store import LocalStore

    return LocalStore(Path(text).expanduser().resolve())


class SharedState:
    def __init__(self, store, settings):
        self.store, self.url = store, store.url
        # longest folder first, so runs/ and datasets/ win over the state folder that usually holds them
        areas = [("runs", settings.runs_dir), ("datasets", settings.datasets_dir), ("", settings.state_dir)]
        self.areas = sorted(((n, Path(p).resolve()) for n, p in areas), key=lambda a: -len(a[1].parts))

    def key(self, path: str | Path) -> str:
        path = Path(path).resolve()
        for name, root in self.areas:
            if path == root or root in path.parents:
                rel = path.relative_to(root).as_posix()
                return "/".join(p for p in (name, "" if rel == "." else rel) if p)
        raise UserError(str(path), "only files under the state, runs or datasets folders are shared "
                        "(TUNELOOP_STATE_DIR, TUNELOOP_RUNS_DIR, TUNELOOP_DATASETS_DIR)",
                        "write it under one of those folders")

    # -- writing ---------------------------------------------------------------
    def push(self, path: str | Path, marker: str | None = None) -> int:
        """Copy a file, or a folder's files, to the store; a folder's `marker` (the file that says it is
        complete, relative to it) goes last. Returns how many files were copied."""
        path = Path(path)
        if path.is_file():
            self.store.put_file(self.key(path), path)
            return 1
        if marker and self.store.sha256(self.key(path / marker)) is not None:
            return 0  # already there, complete (folders published whole never change)
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and not self._skipped(p.relative_to(path))]
        files.sort(key=lambda p: p.relative_to(path).as_posix() == marker)  # stable: the marker last
        for p in files:
            self.store.put_file(self.key(p), p)
        return len(files)

    @staticmethod
    def _skipped(rel: Path) -> bool:
        return any(part.startswith(".") or part in SKIP for part in rel.parts)

    def delete(self, path: str | Path, marker: str | None = None) -> None:
        """Remove a folder's files from the store (a pruned checkpoint), its marker first: a reader that
        lists it meanwhile sees an incomplete folder, never a complete one with files missing."""
        prefix = self.key(path) + "/"
        for k in sorted(self.store.list(prefix), key=lambda k: k != prefix + marker):
            self.store.delete(k)

    # -- reading ---------------------------------------------------------------
    def pull(self, path: str | Path, marker: str | None = None) -> bool:
        """Make `path` (a file, or a folder when `marker` names its completion file) present here, from the
        store when this machine lacks it. True if it is present afterwards."""
        path = Path(path)
        if marker is None:
            if path.exists():
                return True
            return self.store.get_file(self.key(path), path) is not None
        if (path / marker).exists():
            return True
        prefix = self.key(path) + "/"
        keys = self.store.list(prefix)
        if prefix + marker not in keys:
            return False
        tmp = staging_dir(path.parent, path.name)
        try:
            for k in keys:
                self.store.get_file(k, tmp / k[len(prefix):])
            if path.exists():  # an incomplete copy from an earlier attempt (no marker): replaced
                shutil.rmtree(path)
            publish_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return (path / marker).exists()

    def folders(self, path: str | Path, marker: str, starting: str = "") -> list[str]:
        """Names (starting with `starting`) of the complete sub-folders of `path` in the store: those
        holding `marker` (a path relative to the sub-folder)."""
        prefix = self.key(path) + "/"
        out = set()
        for k in self.store.list(prefix + starting):
            name, _, rest = k[len(prefix):].partition("/")
            if rest == marker:
                out.add(name)
        return sorted(out)


def shared_state(settings=None) -> SharedState | None:
    """The shared copy of the state (`TUNELOOP_STATE_STORE`), or None when it is not configured."""
    from tuneloop.settings import get_settings

    settings = settings or get_settings()
    if not settings.state_store:
        return None
    return SharedState(open_store(settings.state_store), settings)


def push(path: str | Path, marker: str | None = None) -> None:
    """Copy `path` (a file, or a folder complete when `marker` is in it) to the shared state, if one is
    configured."""
    shared = shared_state()
    if shared is not None:
        shared.push(path, marker)


def pull(path: str | Path, marker: str | None = None) -> bool:
    """`path` present here, fetched from the shared state if needed; False when nowhere."""
    shared = shared_state()
    if shared is None:
        return Path(path, marker or "").exists()
    return shared.pull(path, marker)
