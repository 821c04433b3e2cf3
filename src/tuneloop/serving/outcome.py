"""What a promotion ended in, built once from its steps' results (the `promote` flow's persisted result)."""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.serving.rollout import Check


@dataclass(frozen=True)
class Outcome:
    version: str
    mode: str
    alias: str
    alias_before: str | None
    checks: list[Check]
    outcome: str  # already-live | rejected | rolled-back | promoted
    reason: str
    slot: str | None  # the slot the candidate was loaded into; None when it was live already
    alias_after: str | None

    def to_json(self) -> dict:
        out = {"version": self.version, "mode": self.mode, "alias": self.alias, "alias_before": self.alias_before,
               "checks": [c.to_json() for c in self.checks]}
        if self.slot is not None:
            out["slot"] = self.slot
        return out | {"outcome": self.outcome, "reason": self.reason, "alias_after": self.alias_after}


def promotion_outcome(spec, version: str, status: dict, alias_before: str | None, alias_after: str | None,
                      slot: str | None, checks: list[Check], breach: str | None) -> Outcome:
    """`spec` a PromoteSpec; `status` the server's before the promotion; `slot` None when the version was
    live already; `checks` the validation's first, then the stages'; `breach` why a stage failed."""
    move = f"{spec.alias}: {alias_before} -> {version}"
    if slot is None:
        outcome, reason = "already-live", f"{version} is already live in {status['live']}" + \
            (f"; {move}" if alias_before != version else "")
    elif not checks[0].ok:
        outcome, reason = "rejected", "validation failed: " + "; ".join(checks[0].reasons)
    elif breach is not None:
        outcome, reason = "rolled-back", breach
    else:
        outcome, reason = "promoted", f"{version} is live in {slot}; {move}"
    return Outcome(version, spec.mode, spec.alias, alias_before, checks, outcome, reason, slot, alias_after)
