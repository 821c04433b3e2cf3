"""The registry in a local folder, and `open_registry`, which picks the backend from a path or URL.

    <root>/versions/v1/manifest.json     immutable: id, base model, files + sha256, lineage, spec, metrics
    <root>/versions/v1/adapter/...       the adapter files
    <root>/versions/v1/status.json       candidate / champion / rejected / retired, with the reason
    <root>/aliases.json                  {"champion": "v1", "challenger": "v2"}

The layout and the rules are the registry's own (`core.py`); a folder stores them with atomic renames
and a file lock, so a crash never leaves a half-written version.
"""

from __future__ import annotations

from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.registry.core import ALIASES, Registry, Version
from tuneloop.registry.store import LocalStore

__all__ = ["ALIASES", "DEFAULT_TENANT", "LocalRegistry", "Version", "open_registry", "registry_location"]

DEFAULT_TENANT = "default"


class LocalRegistry(Registry):
    """A registry in a folder: versions are plain folders under `<root>/versions/`."""

    def __init__(self, root: str | Path):
        super().__init__(LocalStore(root))
        self.root = Path(root)
        self.versions_dir = self.root / "versions"


def registry_location(tenant: str = DEFAULT_TENANT) -> str | Path:
    """Where `tenant`'s registry is: every tenant has its own versions and aliases, so one tenant's gate
    compares with its own champion and can never move another's. `TUNELOOP_TENANT_REGISTRY` (a folder or
    URL holding `{tenant}`) when set; else the configured registry (`TUNELOOP_REGISTRY`, then
    `TUNELOOP_REGISTRY_DIR`, then `<state folder>/registry`) for `default`, and its `tenants/<tenant>` for
    any other tenant."""
    from tuneloop.runtime.safety import safe_name
    from tuneloop.settings import get_settings

    settings = get_settings()
    safe_name(tenant, "tenant name")
    if settings.tenant_registry:
        if "{tenant}" not in settings.tenant_registry:
            raise UserError(f"TUNELOOP_TENANT_REGISTRY={settings.tenant_registry!r}",
                            "must hold {tenant}, where each tenant's name goes",
                            "e.g. TUNELOOP_TENANT_REGISTRY=s3://models/registry/{tenant}, or unset it")
        return settings.tenant_registry.replace("{tenant}", tenant)
    root = settings.registry or settings.registry_dir
    if tenant == DEFAULT_TENANT:
        return root
    if str(root).startswith("s3://"):
        return f"{str(root).rstrip('/')}/tenants/{tenant}"
    return Path(root) / "tenants" / tenant


def open_registry(location: str | Path | None = None, *, tenant: str | None = None) -> Registry:
    """The registry at `location` (a folder or s3://bucket/prefix), else `tenant`'s (`registry_location`),
    else the configured one: `TUNELOOP_REGISTRY` (folder or URL), then `TUNELOOP_REGISTRY_DIR`, then
    `<state folder>/registry`."""
    from tuneloop.settings import get_settings

    settings = get_settings()
    if location is None and tenant is not None:
        location = registry_location(tenant)
    location = location or settings.registry or settings.registry_dir
    text = str(location)
    if text.startswith("s3://"):
        from tuneloop.registry.s3 import S3Store

        return Registry(S3Store.from_url(text))
    if "://" in text:
        raise UserError(text, "a registry is a local folder or an s3://BUCKET/PREFIX URL",
                        "use a folder path, or s3:// with AWS_ENDPOINT_URL for other S3-compatible stores")
    return LocalRegistry(Path(location).expanduser() if isinstance(location, str) else location)
