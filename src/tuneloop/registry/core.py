"""The model registry over an object store (a local folder or S3; see `store.py`).

    versions/v1/manifest.json     immutable, the commit point: id, base model, files + sha256, lineage,
                                  spec, metrics. Written create-only, after every file it lists.
    versions/v1/adapter/...       the adapter files (safetensors + config)
    versions/v1/status.json       candidate / champion / rejected / retired, with the reason
    versions/v1/tags.json         free-form {"key": "value"}, changed by compare-and-swap
    versions/v1/<name>.json       attachments (evaluation.json, benchmarks-*.json) and report/
    claims/v1                     who took the id: written create-only before any file, kept after a
                                  delete, so two writers never share an id and ids are never reused
    aliases.json                  {"champion": "v1", ...}: every change is a compare-and-swap

A version is visible once its manifest exists, and its files were all written before that, so a
crash never shows a half-written version. Adapter files are checked against their sha256 on every
load (`adapter_for`); on S3 they are downloaded into a local cache under the state folder first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tuneloop.errors import (ChecksumError, ConflictError, NotFoundError, RefusedError, RegistryError,
                             TransientError, UnsafeFileError)
from tuneloop.runtime.fsutil import publish_dir, staging_dir
from tuneloop.registry import audit
from tuneloop.registry.integrity import check_folder, manifest_files, unsafe_files
from tuneloop.registry.manifest import Manifest
from tuneloop.registry.query import STATUSES, check_tag_key, deleted_node, lineage_node, matching

__all__ = ["ALIASES", "STATUSES", "Manifest", "Registry", "Version"]

ALIASES = ("champion", "challenger", "production")
RESERVED = ("manifest.json", "status.json", "tags.json")
ALIASES_KEY = "aliases.json"
_VID = re.compile(r"v[1-9]\d*")
_VERSION_KEY = re.compile(r"versions/(v[1-9]\d*)/(.+)")
_UNSET = object()  # "no expectation": distinct from None, which expects an alias to be unset
_CAS_ATTEMPTS = 50


def idempotency_key(adapter_dir: str | Path, dataset_version: str, spec: dict | None = None) -> str:
    """What makes two registrations the same version: the adapter's bytes, its dataset and its spec."""
    import hashlib

    from tuneloop.runtime.fsutil import sha256_file

    adapter_dir = Path(adapter_dir)
    files = sorted((p.relative_to(adapter_dir).as_posix(), sha256_file(p))
                   for p in adapter_dir.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps([files, dataset_version, spec], sort_keys=True, default=str).encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _dumps(data) -> bytes:
    return json.dumps(data, indent=2, default=str).encode()


def _num(vid: str) -> int:
    return int(vid[1:])


@dataclass
class Version:
    id: str
    path: Path  # a local folder: the version's own folder, or its download cache for a remote registry
    manifest: dict  # manifest.json as stored; read fields through `info`
    status: dict
    tags: dict = field(default_factory=dict)

    @property
    def info(self) -> Manifest:
        """The manifest's typed fields."""
        return Manifest.from_json(self.manifest)

    @property
    def adapter_dir(self) -> Path:
        """Where the adapter's files are (or, remotely, will be once fetched); load models from
        `Registry.adapter_for(ref)`, which checks every file first."""
        return self.path / "adapter"

    @property
    def metrics(self) -> dict:
        return self.info.metrics


class Registry:
    def __init__(self, store, cache_dir: str | Path | None = None):
        self.store = store
        self.location = store.url
        if cache_dir is None and store.local_path("versions") is None:
            from tuneloop.settings import get_settings

            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", store.url.split("://", 1)[-1]).strip("_")
            cache_dir = get_settings().state_dir / "cache" / "registry" / safe
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    # -- reading -------------------------------------------------------------
    def _version_path(self, vid: str) -> Path:
        local = self.store.local_path(f"versions/{vid}")
        return local if local is not None else self.cache_dir / vid

    def _doc(self, key: str) -> tuple[dict, str | None]:
        got = self.store.get(key)
        return (json.loads(got[0]), got[1]) if got else ({}, None)

    def _manifest(self, vid: str) -> dict | None:
        if not _VID.fullmatch(vid or ""):
            return None
        got = self.store.get(f"versions/{vid}/manifest.json")
        return json.loads(got[0]) if got else None

    def ids(self) -> list[str]:
        found = {m.group(1) for k in self.store.list("versions/")
                 if (m := _VERSION_KEY.fullmatch(k)) and m.group(2) == "manifest.json"}
        return sorted(found, key=_num)

    def aliases(self) -> dict[str, str]:
        return self._doc(ALIASES_KEY)[0]

    def _resolve(self, ref: str) -> tuple[str, dict]:
        aliases = self.aliases()
        vid = aliases.get(ref, ref)
        manifest = self._manifest(vid)
        if manifest is None:
            raise NotFoundError(ref, self.ids() + list(aliases))
        return vid, manifest

    def resolve(self, ref: str) -> str:
        return self._resolve(ref)[0]

    def _version(self, vid: str, manifest: dict) -> Version:
        status = self._doc(f"versions/{vid}/status.json")[0] or {"status": "candidate"}
        return Version(vid, self._version_path(vid), manifest, status, self._doc(f"versions/{vid}/tags.json")[0])

    def get(self, ref: str) -> Version:
        return self._version(*self._resolve(ref))

    def champion(self) -> Version | None:
        vid = self.aliases().get("champion")
        return self.get(vid) if vid else None

    def list(self) -> list[Version]:
        out = []
        for vid in self.ids():
            manifest = self._manifest(vid)
            if manifest is not None:  # deleted between listing and reading
                out.append(self._version(vid, manifest))
        return out

    # -- integrity -----------------------------------------------------------
    def verify(self, ref: str) -> list[str]:
        """Files that no longer match the manifest, and files added beside them (empty when intact)."""
        v = self.get(ref)
        listed = {f["path"]: f["sha256"] for f in v.info.files}
        bad = [p for p, digest in listed.items() if self.store.sha256(f"versions/{v.id}/{p}") != digest]
        stored = {k.split("/", 2)[2] for k in self.store.list(f"versions/{v.id}/adapter/")}
        return sorted(set(bad) | (stored - set(listed)))

    def adapter_for(self, ref: str) -> Path:
        """A local adapter folder whose every file matches the manifest's sha256: what models load.

        Raises ChecksumError (tampered, missing or added file) or UnsafeFileError (pickle weights)."""
        v = self.get(ref)
        if self.store.local_path("versions") is not None:
            check_folder(v, v.path)
            return v.adapter_dir
        if v.adapter_dir.is_dir():
            try:
                check_folder(v, v.path)
                return v.adapter_dir
            except ChecksumError:
                shutil.rmtree(v.adapter_dir, ignore_errors=True)  # a damaged cache: fetch it again below
        files = manifest_files(v)
        stage = staging_dir(v.path, "adapter")
        try:
            for f in files:
                digest = self.store.get_file(f"versions/{v.id}/{f['path']}", stage / f["path"].split("/", 1)[1])
                if digest != f["sha256"]:
                    raise ChecksumError(v.id, f["path"], f["sha256"], digest, self.location)
            if not publish_dir(stage, v.adapter_dir):  # another process fetched it first
                check_folder(v, v.path)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return v.adapter_dir

    # -- writing -------------------------------------------------------------
    def _claim_id(self) -> str:
        """The next free id, taken with a create-only write, so concurrent writers never share one."""
        for _ in range(_CAS_ATTEMPTS):
            seen = [m.group(1) for k in self.store.list("versions/") if (m := _VERSION_KEY.fullmatch(k))]
            seen += [k.split("/", 1)[1] for k in self.store.list("claims/")]
            vid = f"v{max((_num(v) for v in seen if _VID.fullmatch(v)), default=0) + 1}"
            try:
                self.store.put(f"claims/{vid}", _dumps({"by": f"{socket.gethostname()}:{os.getpid()}",
                                                        "at": _now()}), if_none_match=True)
                return vid
            except ConflictError:
                continue  # another writer took it: look again
        raise ConflictError(f"could not take a version id in {self.location} after {_CAS_ATTEMPTS} tries "
                            "(too many concurrent writers); retry")

    def create_version(self, adapter_dir: str | Path, *, base_model: str, dataset_version: str,
                       parent_version: str | None, spec: dict, metrics: dict, extra: dict | None = None,
                       idempotency_key: str | None = None) -> Version:
        """Upload the adapter's files, then publish the manifest (create-only): the version appears whole
        or not at all. Refuses folders without adapter_config.json or with pickle-based weights.

        With `idempotency_key`, a version whose manifest already carries the key is returned instead of
        adding a new one: a run retried after a crash past its registry write registers nothing twice
        (the manifest is the commit point, so the key is seen exactly when the version is complete)."""
        adapter_dir = Path(adapter_dir)
        if idempotency_key is not None:
            for vid in reversed(self.ids()):
                manifest = self._manifest(vid)
                if manifest is not None and Manifest.from_json(manifest).idempotency_key == idempotency_key:
                    return self._version(vid, manifest)
        if not (adapter_dir / "adapter_config.json").exists():
            raise RegistryError(f"{adapter_dir} holds no adapter (adapter_config.json is missing)")
        sources = sorted(p for p in adapter_dir.rglob("*") if p.is_file())
        unsafe = unsafe_files(p.relative_to(adapter_dir).as_posix() for p in sources)
        if unsafe:
            raise UnsafeFileError(unsafe, str(adapter_dir))
        vid = self._claim_id()
        key = f"versions/{vid}/manifest.json"
        written: list[str] = []
        body = None
        try:
            files = []
            for p in sources:
                rel = f"adapter/{p.relative_to(adapter_dir).as_posix()}"
                written.append(f"versions/{vid}/{rel}")
                size = p.stat().st_size
                files.append({"path": rel, "sha256": self.store.put_file(written[-1], p), "bytes": size})
            manifest = {"id": vid, "base_model": base_model, "files": files, "dataset_version": dataset_version,
                        "parent_version": parent_version, "spec": spec, "metrics": metrics, "created_at": _now(),
                        **(extra or {}), **({"idempotency_key": idempotency_key} if idempotency_key else {})}
            body = _dumps(manifest)
            self.store.put(key, body, if_none_match=True)
        except BaseException as err:
            # The commit write may have landed although it reported a failure (a lost answer, or a retried PUT
            # refused because the first attempt succeeded): look before cleaning up.
            try:
                landed = None if body is None else self.store.get(key)
            except Exception:  # noqa: BLE001 - cannot tell: leave everything as it is; the id stays taken
                raise err from None
            if landed is not None:
                if landed[0] == body and isinstance(err, Exception):
                    self._audit("register", vid, manifest, base_model=base_model, dataset_version=dataset_version,
                                parent_version=parent_version)
                    return self._version(vid, manifest)
                raise
            # A write that timed out or lost its answer (TransientError) may still be applied later. If it is the
            # commit, keep its files: a late manifest then shows a whole version. Either way keep the claim, so a
            # late write never lands inside another writer's version (the files, without a manifest, stay unseen).
            doubt = isinstance(err, TransientError)
            if doubt and body is not None:
                raise
            for k in [*written, *([] if doubt else [f"claims/{vid}"])]:  # not committed: remove what was written
                try:
                    self.store.delete(k)
                except Exception:  # noqa: BLE001 - best effort; leftovers without a manifest are invisible
                    pass
            raise
        self._audit("register", vid, manifest, base_model=base_model, dataset_version=dataset_version,
                    parent_version=parent_version)
        return self._version(vid, manifest)

    # -- audit -----------------------------------------------------------------
    def _audit(self, action: str, vid: str | None, manifest: dict | None = None, **details) -> None:
        """Write the audit entry of a change that has happened. The change is not undone if the entry
        cannot be written (the store's retries are spent): that is logged loudly instead, since raising
        here would make a caller retry a change that already took effect."""
        try:
            manifest = manifest or (self._manifest(vid) if vid else None)
            tenant = Manifest.from_json(manifest).tenant if manifest else None
            audit.record(self.store, action, vid, tenant, **details)
        except TransientError as e:
            logging.getLogger("tuneloop.registry").error(
                f"AUDIT ENTRY LOST: {action} {vid or ''} happened but its audit entry could not be written: {e}")

    def audit_log(self, version: str | None = None, action: str | None = None, limit: int | None = None) -> list[dict]:
        """Who registered, promoted, rejected, moved an alias, deleted, switched or rolled back what, and when."""
        return audit.read(self.store, version=version, action=action, limit=limit)

    def record_event(self, action: str, ref: str | None, **details) -> None:
        """Audit something done outside the registry to one of its versions (a serving switch or rollback)."""
        vid = self.resolve(ref) if ref else None
        self._audit(action, vid, **details)

    def set_status(self, ref: str, status: str, reason: str, **details) -> None:
        vid = self.resolve(ref)
        self.store.put(f"versions/{vid}/status.json",
                       _dumps({"status": status, "reason": reason, "at": _now(), **details}))

    def _swap(self, key: str, change: Callable[[dict], dict]) -> dict:
        """Compare-and-swap a JSON document: apply `change` to what is stored and write the result only if
        the document is unchanged since read; on a lost race read again. `change` raises ConflictError
        when what it depends on moved."""
        for _ in range(_CAS_ATTEMPTS):
            doc, etag = self._doc(key)
            new = change(dict(doc))
            if new == doc:
                return doc
            try:
                self.store.put(key, _dumps(new), if_match=etag, if_none_match=etag is None)
                return new
            except ConflictError:
                continue
        raise ConflictError(f"{self.location}/{key} kept changing during {_CAS_ATTEMPTS} attempts; retry")

    def set_alias(self, alias: str, ref: str | None, expected=_UNSET) -> None:
        """Point alias at ref (None clears it). With `expected` (a version id, or None for unset), only if
        the alias still points there; otherwise ConflictError and nothing changes."""
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; aliases are {ALIASES}")
        vid = None if ref is None else self.resolve(ref)

        def change(doc: dict) -> dict:
            if expected is not _UNSET and doc.get(alias) != expected:
                raise ConflictError(f"{alias} points to {doc.get(alias) or 'nothing'}, not {expected or 'nothing'} "
                                    f"as expected; nothing changed. Check `tuneloop registry list` and retry "
                                    f"with --expected {doc.get(alias) or 'none'}")
            if vid is None:
                doc.pop(alias, None)
            else:
                doc[alias] = vid
            return doc

        self._swap(ALIASES_KEY, change)
        self._audit("alias", vid, alias=alias, previous=expected if expected is not _UNSET else None)

    def record_decision(self, ref: str, decision: dict, expected_champion=_UNSET) -> None:
        """Apply a gate decision: the winner becomes champion, a loser is kept as rejected with its reason.

        The champion moves by compare-and-swap from `expected_champion` (the incumbent the gate compared
        against; default: the champion when this call starts). If it moved meanwhile, ConflictError and
        nothing is written: the decision was made against a champion that is no longer there."""
        vid = self.resolve(ref)
        previous = self.aliases().get("champion") if expected_champion is _UNSET else expected_champion
        if not decision["promote"]:
            self.set_status(vid, "rejected", decision["reason"], decision=decision)
            self._swap(ALIASES_KEY, lambda doc: {k: v for k, v in doc.items() if not (k == "challenger" and v == vid)})
            self._audit("reject", vid, reason=decision["reason"])
            return

        def change(doc: dict) -> dict:
            current = doc.get("champion")
            if current not in (previous, vid):
                raise ConflictError(
                    f"champion changed from {previous or 'none'} to {current or 'none'} while promoting {vid}; "
                    f"nothing was changed. Re-run the evaluation of {vid} against the current champion (re-run the "
                    "retrain flow) before promoting it")
            doc["champion"] = vid
            if doc.get("challenger") == vid:
                del doc["challenger"]
            return doc

        self._swap(ALIASES_KEY, change)  # the commit point: statuses follow the winner
        self.set_status(vid, "champion", decision["reason"], decision=decision,
                        replaced=previous if previous != vid else None)
        if previous and previous != vid:
            self.set_status(previous, "retired", f"replaced by {vid}")
        self._audit("promote", vid, reason=decision["reason"], replaced=previous if previous != vid else None)

    def tag(self, ref: str, tags: dict | None = None, remove=()) -> dict:
        """Add or change tags and remove others, by compare-and-swap on the version's tags.json; returns them."""
        vid = self.resolve(ref)
        tags = {check_tag_key(k): str(v) for k, v in (tags or {}).items()}
        remove = [check_tag_key(k) for k in remove]

        def change(doc: dict) -> dict:
            return {k: v for k, v in (doc | tags).items() if k not in remove}

        return self._swap(f"versions/{vid}/tags.json", change)

    def delete(self, ref: str) -> None:
        """Remove a version no alias points to. Its id stays taken (its claim is kept), so lineage that names
        it never points at a different model later."""
        vid, manifest = self._resolve(ref)
        holders = sorted(a for a, v in self.aliases().items() if v == vid)
        if holders:
            raise RefusedError(vid, f"is what {' and '.join(holders)} point{'s' if len(holders) == 1 else ''} "
                               "to, and a version an alias points to is never deleted",
                               f"move the alias first: tuneloop registry alias {holders[0]} OTHER_VERSION "
                               f"(or --clear), then delete {vid}")
        raw = self.store.get(f"versions/{vid}/manifest.json")
        self.store.delete(f"versions/{vid}/manifest.json")  # from here on the version is gone for readers
        holders = sorted(a for a, v in self.aliases().items() if v == vid)
        if holders:  # an alias moved to it meanwhile: put it back
            if raw is not None:
                self.store.put(f"versions/{vid}/manifest.json", raw[0], if_none_match=True)
            raise ConflictError(f"{' and '.join(holders)} moved to {vid} while deleting it; nothing was deleted")
        for key in self.store.list(f"versions/{vid}/"):
            self.store.delete(key)
        self._audit("delete", vid, manifest)
        if self.store.local_path("versions") is None and self.cache_dir is not None:
            shutil.rmtree(self.cache_dir / vid, ignore_errors=True)

    # -- attachments -----------------------------------------------------------
    def attach(self, ref: str, name: str, data: dict) -> Path | str:
        """Write a JSON document beside a version (evaluation.json, benchmark results), atomically; returns
        where it is (a path, or an s3:// URL).

        The manifest and its checksums stay untouched: attachments are reports about a version."""
        if "/" in name or name in RESERVED or not name.endswith(".json"):
            raise RegistryError(f"attachment name {name!r} must be a plain *.json file name other than "
                                f"{', '.join(RESERVED)}")
        vid = self.resolve(ref)
        key = f"versions/{vid}/{name}"
        self.store.put(key, _dumps(data))
        local = self.store.local_path(key)
        return local if local is not None else f"{self.location}/{key}"

    def attachment(self, ref: str, name: str) -> dict | None:
        doc, etag = self._doc(f"versions/{self.resolve(ref)}/{name}")
        return doc if etag is not None else None

    def attach_folder(self, ref: str, name: str, folder: str | Path) -> None:
        """Store a local folder's files under the version's `name/` (rendered reports). A no-op for a local
        registry when the folder already is the version's own."""
        vid = self.resolve(ref)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == "adapter":
            raise RegistryError(f"attachment folder {name!r} must be a plain folder name other than adapter")
        folder = Path(folder)
        if self.store.local_path(f"versions/{vid}/{name}") == folder:
            return
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                self.store.put_file(f"versions/{vid}/{name}/{p.relative_to(folder).as_posix()}", p)

    # -- questions -----------------------------------------------------------
    def compare(self, a: str, b: str) -> list[dict]:
        va, vb = self.get(a), self.get(b)
        names = sorted(set(va.metrics) | set(vb.metrics))
        return [{"metric": n, va.id: va.metrics.get(n), vb.id: vb.metrics.get(n),
                 "delta": (vb.metrics[n] - va.metrics[n]) if n in va.metrics and n in vb.metrics else None}
                for n in names]

    def search(self, tags: dict | list | None = None, metrics=(), base: str | None = None,
               status: str | None = None) -> list[Version]:
        """Versions matching every filter: tags (a dict or 'k=v' strings), metric conditions
        ('exact_match>=0.8'), the exact base model name, the status."""
        return matching(self.list(), tags, metrics, base, status)

    def lineage(self, ref: str | None = None) -> list[dict]:
        """Nodes of the lineage graph: with ref, it and its ancestors (newest first); else every version and
        every deleted parent. Each names its parent, dataset version and feedback window; a deleted version is
        {"id", "parent": None, "missing": True}."""
        aliases = self.aliases()
        if ref is None:
            nodes = [lineage_node(v, aliases) for v in self.list()]
            present = {n["id"] for n in nodes}
            gone = sorted({n["parent"] for n in nodes if n["parent"] and n["parent"] not in present}, key=str)
            return nodes + [deleted_node(vid) for vid in gone]
        chain, vid, seen = [], self.resolve(ref), set()
        while vid and vid not in seen:
            seen.add(vid)
            manifest = self._manifest(vid)
            if manifest is None:
                chain.append(deleted_node(vid))
                break
            chain.append(lineage_node(self._version(vid, manifest), aliases))
            vid = Manifest.from_json(manifest).parent_version
        return chain
