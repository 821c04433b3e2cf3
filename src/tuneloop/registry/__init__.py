"""Model registry: versions with manifests, checksums, lineage and aliases."""

from tuneloop.registry.local import LocalRegistry, Version, open_registry

__all__ = ["LocalRegistry", "Version", "open_registry"]
