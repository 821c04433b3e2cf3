"""OpenAI's /v1/files, as a store of validated training files per tenant.

    root/<tenant>/<file-id>.jsonl   the bytes as uploaded (content() gives them back unchanged)
    root/<tenant>/<file-id>.json    the file object (OpenAI's fields, plus "format" and "rows")

A file is validated when it is uploaded, not when a job first reads it: a bad file is refused with every
problem by line, and nothing of it stays on disk (it is written to a hidden temp file in root, checked
there, and only then renamed into the tenant's folder). The data file is moved in first and the metadata
written last, atomically, and a file exists for readers only once its metadata does; delete removes the
metadata first. Files never change after upload, so no lock is needed.

Ids are "file-" and 24 lowercase hex digits. Any other id, and another tenant's id, is NotFound: an id
never becomes a path unless it has that form, and tenants are folders, so no id reaches another's files.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tuneloop.data.preference import validate_training_file
from tuneloop.data.validate import Issue
from tuneloop.errors import UserError
from tuneloop.runtime.fsutil import atomic_write_text
from tuneloop.runtime.safety import safe_name
from tuneloop.service.errors import FileRejected, NotFound, TooLarge

PURPOSES = ("fine-tune",)
MAX_BYTES = 512 * 2**20
MAX_FILENAME = 255
MAX_LIMIT = 10000
_ID = re.compile(r"file-[0-9a-f]{24}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display_name(filename: str) -> str:
    """The uploaded name as shown back: its last path part (either slash), no control characters,
    at most MAX_FILENAME characters. Only ever displayed; the store names files by id."""
    name = _CONTROL.sub("", PurePosixPath(str(filename).replace("\\", "/")).name)
    return name[:MAX_FILENAME] or "upload.jsonl"


class FileStore:
    """Per-tenant training files. `tenant` is the API key's tenant; every method sees only its files."""

    def __init__(self, root: str | Path, max_bytes: int = MAX_BYTES, clock: Callable[[], float] = time.time):
        self.root, self.max_bytes, self.clock = Path(root), max_bytes, clock

    def _folder(self, tenant: str) -> Path:
        return self.root / safe_name(tenant, "tenant")

    def _paths(self, tenant: str, file_id: str) -> tuple[Path, Path]:
        """(data, metadata) paths of an id of the right form; any other id is NotFound, never a path."""
        if not _ID.fullmatch(file_id):
            raise NotFound(file_id, "file", "GET /v1/files")
        folder = self._folder(tenant)
        return folder / f"{file_id}.jsonl", folder / f"{file_id}.json"

    def create(self, tenant: str, filename: str, data: bytes, purpose: str, min_examples: int = 1) -> dict:
        """Validate and keep an upload; its file object. OpenAI's 10-example minimum belongs to job
        creation, so an upload needs only `min_examples` valid rows. Raises FileRejected (every problem by
        line), TooLarge or UserError (purpose) with nothing written."""
        if purpose not in PURPOSES:
            raise UserError(repr(purpose), "is not a purpose this service accepts for uploads",
                            f"upload with purpose {' or '.join(map(repr, PURPOSES))}")
        name = display_name(filename)
        if len(data) > self.max_bytes:
            raise TooLarge(f"{name!r} ({len(data)} bytes)", f"is over the upload limit of {self.max_bytes} bytes",
                           "split the data into smaller files, or ask the operator to raise the limit")
        folder = self._folder(tenant)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            report = validate_training_file(tmp, min_examples=min_examples, tenant=tenant)
            foreign = [Issue(r.line, "tenant", f"row belongs to tenant {r.tenant!r}, this key's tenant is {tenant!r}")
                       for r in report.rows if r.tenant != tenant]
            problems = sorted(report.errors + foreign, key=lambda i: (i.line == 0, i.line))
            if problems:
                raise FileRejected(name, problems)
            file_id = f"file-{secrets.token_hex(12)}"
            data_path, meta_path = self._paths(tenant, file_id)
            obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(self.clock()),
                   "filename": name, "purpose": purpose, "status": "processed", "status_details": None,
                   "format": report.format, "rows": len(report.rows)}
            folder.mkdir(exist_ok=True)
            os.replace(tmp, data_path)
            try:
                atomic_write_text(meta_path, json.dumps(obj))
            except BaseException:
                data_path.unlink(missing_ok=True)
                raise
            return obj
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get(self, tenant: str, file_id: str) -> dict:
        _, meta = self._paths(tenant, file_id)
        try:
            return json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(file_id, "file", "GET /v1/files") from None

    def list(self, tenant: str, purpose: str | None = None, limit: int = MAX_LIMIT, after: str | None = None,
             order: str = "desc") -> list[dict]:
        """File objects by created_at (ties by id), newest first unless order="asc"; those after the id
        `after` in that order; at most `limit` (ask for one more to learn whether there are more)."""
        if order not in ("asc", "desc"):
            raise UserError(repr(order), "is not an order", "use order 'asc' or 'desc'")
        if not 1 <= limit <= MAX_LIMIT:
            raise UserError(repr(limit), f"is not a limit from 1 to {MAX_LIMIT}", f"use a limit from 1 to {MAX_LIMIT}")
        folder = self._folder(tenant)
        files = []
        for meta in folder.glob("file-*.json") if folder.is_dir() else ():
            try:
                files.append(json.loads(meta.read_text(encoding="utf-8")))
            except FileNotFoundError:  # deleted while listing
                continue
        files.sort(key=lambda f: (f["created_at"], f["id"]), reverse=order == "desc")
        if after is not None:
            ids = [f["id"] for f in files]
            if after not in ids:
                raise NotFound(after, "file", "GET /v1/files")
            files = files[ids.index(after) + 1:]
        return [f for f in files if purpose is None or f["purpose"] == purpose][:limit]

    def delete(self, tenant: str, file_id: str) -> dict:
        data, meta = self._paths(tenant, file_id)
        try:
            meta.unlink()  # first: from here on no reader sees the file
        except FileNotFoundError:
            raise NotFound(file_id, "file", "GET /v1/files") from None
        data.unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    def path(self, tenant: str, file_id: str) -> Path:
        """The data file, for training (its format is get(...)["format"])."""
        self.get(tenant, file_id)
        return self._paths(tenant, file_id)[0]

    def content(self, tenant: str, file_id: str) -> bytes:
        try:
            return self.path(tenant, file_id).read_bytes()
        except FileNotFoundError:  # deleted between the check and the read
            raise NotFound(file_id, "file", "GET /v1/files") from None
