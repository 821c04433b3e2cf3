"""What a candidate is compared against: the champion (its own base model and verified adapter), or the
base model alone while there is no champion. Read once, before training: the gate's compare-and-swap
moves the champion only if it is still this one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Incumbent:
    version: str | None  # the champion's id; None: the base model alone
    base_path: str
    adapter_dir: Path | None

    @property
    def label(self) -> str:
        return "base" if self.version is None else f"champion {self.version}"


def resolve_incumbent(registry, base_path: str, resolve_base: Callable[[str], str]) -> Incumbent:
    """`base_path`: the candidate's base, the incumbent without a champion; `resolve_base(name)` prepares a
    champion's own base model. The adapter comes with every file checked against the manifest's sha256."""
    champion = registry.champion()
    if champion is None:
        return Incumbent(None, base_path, None)
    return Incumbent(champion.id, resolve_base(champion.manifest["base_model"]), registry.adapter_for(champion.id))
