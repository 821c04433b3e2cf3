"""Model registry: versions with manifests, checksums, lineage and aliases, in a folder or on S3."""

from tuneloop.registry.core import ALIASES, STATUSES, Manifest, Registry, Version, idempotency_key
from tuneloop.registry.local import DEFAULT_TENANT, LocalRegistry, open_registry, registry_location

__all__ = ["ALIASES", "DEFAULT_TENANT", "STATUSES", "LocalRegistry", "Manifest", "Registry", "Version", "idempotency_key",
           "open_registry", "registry_location"]
