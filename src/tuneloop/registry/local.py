"""A registry in a local folder.

    <root>/versions/v1/manifest.json     immutable: id, base model, files + sha256, lineage, spec, metrics
    <root>/versions/v1/adapter/...       the adapter files
    <root>/versions/v1/status.json       candidate / champion / rejected / retired, with the reason
    <root>/aliases.json                  {"champion": "v1", "challenger": "v2"}

A version is staged in a hidden folder and renamed into place, and small
files are replaced atomically, so a crash never leaves a half-written version.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tuneloop.errors import NotFoundError, RegistryError
from tuneloop.fsutil import atomic_write_text, locked, publish_dir, sha256_file, staging_dir

ALIASES = ("champion", "challenger")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Version:
    id: str
    path: Path
    manifest: dict
    status: dict

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})


class LocalRegistry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # -- reading -------------------------------------------------------------
    def ids(self) -> list[str]:
        if not self.versions_dir.exists():
            return []
        found = [p.name for p in self.versions_dir.iterdir()
                 if p.name.startswith("v") and (p / "manifest.json").exists()]
        return sorted(found, key=lambda v: int(v[1:]))

    def aliases(self) -> dict[str, str]:
        path = self.root / "aliases.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def resolve(self, ref: str) -> str:
        ref = self.aliases().get(ref, ref)
        if ref not in self.ids():
            raise NotFoundError(ref, self.ids() + list(self.aliases()))
        return ref

    def get(self, ref: str) -> Version:
        vid = self.resolve(ref)
        path = self.versions_dir / vid
        status_path = path / "status.json"
        status = json.loads(status_path.read_text()) if status_path.exists() else {"status": "candidate"}
        return Version(vid, path, json.loads((path / "manifest.json").read_text()), status)

    def champion(self) -> Version | None:
        vid = self.aliases().get("champion")
        return self.get(vid) if vid else None

    def list(self) -> list[Version]:
        return [self.get(v) for v in self.ids()]

    def verify(self, ref: str) -> list[str]:
        """Files whose sha256 no longer matches the manifest (empty when intact)."""
        v = self.get(ref)
        bad = []
        for f in v.manifest["files"]:
            p = v.path / f["path"]
            if not p.exists() or sha256_file(p) != f["sha256"]:
                bad.append(f["path"])
        return bad

    # -- writing -------------------------------------------------------------
    def _lock(self):
        return locked(self.root)

    def create_version(self, adapter_dir: str | Path, *, base_model: str, dataset_version: str,
                       parent_version: str | None, spec: dict, metrics: dict, extra: dict | None = None) -> Version:
        """Copy the adapter in and publish a new version atomically; returns it."""
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").exists():
            raise RegistryError(f"{adapter_dir} holds no adapter (adapter_config.json is missing)")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = staging_dir(self.versions_dir, "new")
        try:
            shutil.copytree(adapter_dir, tmp / "adapter")
            files = [{"path": str(p.relative_to(tmp)), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                     for p in sorted((tmp / "adapter").rglob("*")) if p.is_file()]
            with self._lock():
                ids = self.ids()
                vid = f"v{int(ids[-1][1:]) + 1 if ids else 1}"
                manifest = {"id": vid, "base_model": base_model, "files": files,
                            "dataset_version": dataset_version, "parent_version": parent_version,
                            "spec": spec, "metrics": metrics, "created_at": _now(), **(extra or {})}
                atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2, default=str))
                if not publish_dir(tmp, self.versions_dir / vid):
                    raise RegistryError(f"version {vid} appeared while publishing; retry")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(vid)

    def set_status(self, ref: str, status: str, reason: str, **details) -> None:
        v = self.get(ref)
        atomic_write_text(v.path / "status.json", json.dumps(
            {"status": status, "reason": reason, "at": _now(), **details}, indent=2, default=str))

    def set_alias(self, alias: str, ref: str | None) -> None:
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; aliases are {ALIASES}")
        with self._lock():
            aliases = self.aliases()
            if ref is None:
                aliases.pop(alias, None)
            else:
                aliases[alias] = self.resolve(ref)
            atomic_write_text(self.root / "aliases.json", json.dumps(aliases, indent=2))

    def attach(self, ref: str, name: str, data: dict) -> Path:
        """Write a JSON document beside a version (evaluation.json, benchmark results), atomically.

        The manifest and its checksums stay untouched: attachments are reports about a version."""
        if "/" in name or name in ("manifest.json", "status.json") or not name.endswith(".json"):
            raise RegistryError(f"attachment name {name!r} must be a plain *.json file name other than the "
                                "manifest or status")
        return atomic_write_text(self.get(ref).path / name, json.dumps(data, indent=2, default=str))

    def attachment(self, ref: str, name: str) -> dict | None:
        path = self.get(ref).path / name
        return json.loads(path.read_text()) if path.exists() else None

    def record_decision(self, ref: str, decision: dict) -> None:
        """Apply a gate decision: the winner becomes champion, a loser is kept as rejected with its reason."""
        vid = self.resolve(ref)
        previous = self.aliases().get("champion")
        if decision["promote"]:
            self.set_status(vid, "champion", decision["reason"], decision=decision, replaced=previous)
            self.set_alias("champion", vid)
            if previous and previous != vid:
                self.set_status(previous, "retired", f"replaced by {vid}")
        else:
            self.set_status(vid, "rejected", decision["reason"], decision=decision)
        if self.aliases().get("challenger") == vid:
            self.set_alias("challenger", None)

    def compare(self, a: str, b: str) -> list[dict]:
        va, vb = self.get(a), self.get(b)
        names = sorted(set(va.metrics) | set(vb.metrics))
        return [{"metric": n, va.id: va.metrics.get(n), vb.id: vb.metrics.get(n),
                 "delta": (vb.metrics[n] - va.metrics[n]) if n in va.metrics and n in vb.metrics else None}
                for n in names]


def open_registry(root: str | Path | None = None) -> LocalRegistry:
    """The registry at root, or at the configured `TUNELOOP_REGISTRY_DIR` / state folder."""
    from tuneloop.settings import get_settings

    return LocalRegistry(root or get_settings().registry_dir)
