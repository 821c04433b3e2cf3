"""API keys and tenants for the serving and management APIs.

A keys file (YAML or JSON; `tuneloop serve --keys FILE` or `$TUNELOOP_SERVE_KEYS`) maps each key, stored as
its sha256 and never as the key itself, to a tenant and a role::

    keys:
      - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        tenant: acme
        role: user          # user: the /v1 routes; admin: those, the /admin routes and /metrics
        name: acme-web      # optional label for the key (the key itself is never shown or logged)
    tenants:                # optional, per tenant
      acme: {served_name: acme-support, version: v7}

Make a key and its entry with `python -m tuneloop.serving.keys TENANT ROLE`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import UserError
from tuneloop.runtime.safety import is_safe_name

ROLES = ("user", "admin")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
KEYS_ENV = "TUNELOOP_SERVE_KEYS"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Key:
    digest: bytes  # sha256 of the key
    tenant: str
    role: str
    name: str

    def can(self, role: str) -> bool:
        """admin includes user."""
        return self.role == "admin" or role == "user"


@dataclass(frozen=True)
class TenantConfig:
    served_name: str | None = None
    version: str | None = None


class KeyRing:
    """The configured keys; `find` compares a presented key with every stored digest in constant time."""

    def __init__(self, keys: list[Key], tenants: dict[str, TenantConfig] | None = None):
        self.keys = keys
        self.config = tenants or {}

    @property
    def tenants(self) -> list[str]:
        return sorted({k.tenant for k in self.keys})

    def find(self, presented: str) -> Key | None:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = None
        for k in self.keys:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(digest, k.digest):
                found = k
        return found

    @classmethod
    def load(cls, path: str | Path) -> "KeyRing":
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(str(p), f"the keys file cannot be read ({type(e).__name__}: {e.strerror})",
                            "give the path of a readable YAML or JSON keys file") from None
        except yaml.YAMLError as e:
            raise UserError(str(p), f"the keys file is not valid YAML or JSON ({type(e).__name__})",
                            "fix its syntax (see docs/serving.md for the format)") from None
        return cls.parse(data, str(p))

    @classmethod
    def parse(cls, data: object, where: str = "keys file") -> "KeyRing":
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
            raise UserError(where, "a keys file is a mapping with a non-empty list under `keys:`",
                            "write `keys: [{sha256: ..., tenant: ..., role: user|admin}]`")
        unknown = sorted(set(data) - {"keys", "tenants"})
        if unknown:
            raise UserError(f"{where}: {', '.join(map(str, unknown))}", "a keys file holds only `keys` and "
                            "`tenants`", "remove the other entries")
        keys, seen = [], set()
        for i, e in enumerate(data["keys"]):
            at = f"{where}: keys[{i}]"
            if not isinstance(e, dict):
                raise UserError(at, "each key is a mapping of sha256, tenant, role (and name)", "fix the entry")
            if "key" in e:
                raise UserError(f"{at}.key", "the keys file stores a key's sha256, never the key itself",
                                "replace `key:` with `sha256:` and the output of "
                                "`printf %s KEY | sha256sum`, then remove the plain key")
            extra = sorted(set(map(str, e)) - {"sha256", "tenant", "role", "name"})
            if extra:
                raise UserError(f"{at}: {', '.join(extra)}", "a key entry has sha256, tenant, role and name",
                                "remove the other fields")
            digest = e.get("sha256")
            if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest.lower()):
                raise UserError(f"{at}.sha256", "must be 64 hexadecimal digits (the key's sha256)",
                                "write the output of `printf %s KEY | sha256sum`")
            tenant = e.get("tenant")
            if not is_safe_name(tenant):
                raise UserError(f"{at}.tenant={tenant!r}", "a tenant is 1-64 letters, digits, '_', '.' or '-', "
                                "starting with a letter or digit, with no '..'", "name the tenant, e.g. `tenant: acme`")
            role = e.get("role")
            if role not in ROLES:
                raise UserError(f"{at}.role={role!r}", f"a role is one of {', '.join(ROLES)}",
                                "give `role: user` for inference or `role: admin` for management too")
            if digest.lower() in seen:
                raise UserError(f"{at}.sha256", "the same key appears twice", "keep one entry per key")
            seen.add(digest.lower())
            name = e.get("name", f"keys[{i}]")
            keys.append(Key(bytes.fromhex(digest), tenant, role, str(name)))
        tenants: dict[str, TenantConfig] = {}
        raw = data.get("tenants") or {}
        if not isinstance(raw, dict):
            raise UserError(f"{where}: tenants", "is a mapping of tenant name to {served_name, version}",
                            "write `tenants: {acme: {served_name: acme-support}}`")
        known = {k.tenant for k in keys}
        for t, cfg in raw.items():
            if t not in known:
                raise UserError(f"{where}: tenants.{t}", "a configured tenant needs at least one key",
                                "add a key for it or remove its entry")
            cfg = cfg or {}
            if not isinstance(cfg, dict) or set(cfg) - {"served_name", "version"} or not all(
                    isinstance(v, str) and v for v in cfg.values()):
                raise UserError(f"{where}: tenants.{t}", "holds served_name and version, both strings",
                                "write e.g. `{served_name: acme-support, version: v7}`")
            tenants[t] = TenantConfig(cfg.get("served_name"), cfg.get("version"))
        return cls(keys, tenants)


def add_key(path: str | Path, tenant: str, role: str = "user", name: str | None = None,
            show: Callable[[str], None] | None = None) -> str:
    """Make a new random key for `tenant`, store only its sha256 in the keys file at `path` (created if
    absent; its other entries kept), and return the key: the one time it exists in the clear. `show(key)`,
    when given, hands the key out before it is stored: if it raises, nothing is stored (no key nobody saw)."""
    import yaml

    from tuneloop.runtime.fsutil import atomic_write_text, locked

    if not is_safe_name(tenant):
        raise UserError(f"--tenant {tenant!r}", "a tenant is 1-64 letters, digits, '_', '.' or '-', starting with a "
                        "letter or digit", "name the tenant, e.g. --tenant acme")
    if role not in ROLES:
        raise UserError(f"--role {role!r}", f"a role is one of {', '.join(ROLES)}", "give --role user or admin")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "tl-" + secrets.token_urlsafe(32)
    with locked(path.parent, f".{path.name}.lock"):
        data = {"keys": []}
        if path.exists():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {"keys": []}
            if data.get("keys"):
                KeyRing.parse(data, str(path))  # refuse to add to a file that is already broken
        entry = {"sha256": hash_key(key), "tenant": tenant, "role": role,
                 "name": name or f"{tenant}-{role}-{len(data.get('keys') or []) + 1}"}
        data["keys"] = list(data.get("keys") or []) + [entry]
        if show is not None:
            show(key)
        atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return key


def main(argv: list[str]) -> int:
    """Print a new random key and the keys-file entry that stores its sha256."""
    if len(argv) != 2 or argv[1] not in ROLES or not is_safe_name(argv[0]):
        print("usage: python -m tuneloop.serving.keys TENANT user|admin", file=sys.stderr)
        return 2
    key = "tl-" + secrets.token_urlsafe(32)
    print(f"key (give it to the client; it is not stored anywhere): {key}")
    print(f"keys-file entry:\n  - sha256: {hash_key(key)}\n    tenant: {argv[0]}\n    role: {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
