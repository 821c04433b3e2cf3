"""The stages of a rollout and how each is watched: pure rules the `promote` flow walks through.

blue-green: switch, then watch for `watch_seconds`. canary: each step but the last (100% is the switch)
watched for `step_seconds`, then the switch. The first failing analysis is a breach: the flow rolls back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from tuneloop.serving.rollout import Check


@dataclass(frozen=True)
class Stage:
    label: str  # "canary 10%", "after switch": how its checks and a breach are named
    weight: float | None  # the canary's share of traffic; None: switch the live slot
    seconds: float


def stages(spec) -> list[Stage]:
    """A PromoteSpec's stages, in order."""
    steps = spec.canary_steps[:-1] if spec.mode == "canary" else []
    return [Stage(f"canary {w:.0%}", w, spec.step_seconds) for w in steps] + \
        [Stage("after switch", None, spec.watch_seconds)]


def already_live(status: dict, version: str) -> bool:
    """The version serves all traffic already (a retry of a run that crashed after its switch)."""
    return status["slots"][status["live"]]["version"] == version and status["canary"] is None


def watch(probe: Callable[[str], Check], since: float, seconds: float, label: str,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time) -> list[Check]:
    """`probe(at)` every few seconds until `since + seconds`; the checks made, ending at the first failing one."""
    end, checks = since + seconds, []
    while True:
        sleep(max(0.0, min(5.0, end - clock())))
        checks.append(probe(f"{label} check {len(checks) + 1}"))
        if not checks[-1].ok or clock() >= end:
            return checks


def breach_of(stage: Stage, checks: list[Check]) -> str | None:
    """Why the stage failed (its last analysis), or None."""
    return None if checks[-1].ok else f"{stage.label}: " + "; ".join(checks[-1].reasons)
