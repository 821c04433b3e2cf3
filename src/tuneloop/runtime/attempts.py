"""Attempts of one flow run: when a rescheduled run must not run again, and when an attempt must stop.

The retry automations (deployments/automations.yaml) reschedule crashed and silent runs. Three rules keep
that safe, whatever view of a run the automations had:

- a run rescheduled more than MAX_CRASH_RETRIES times fails at its start instead of looping
  (`refuse_crash_loop`);
- an attempt that exists only because an automation rescheduled a run that had already ended ends again as
  it had ended (`stale_reschedule`);
- an attempt that a newer attempt of the same run has superseded stops its process (`watch_superseded`).

The Prefect side (reading the run's states and run count, returning a State) is `tuneloop.tasks.start_attempt`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from tuneloop.errors import TuneloopError

MAX_CRASH_RETRIES = 3  # deployments/automations.yaml reschedules crashed runs; past this a run fails instead
AUTOMATION_RESCHEDULE = "rescheduled by the retry-"  # how the messages of the shipped retry automations begin
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
SUPERSEDED_POLL_S = 10.0


def refuse_crash_loop(run_count: int, run_name: str) -> None:
    """Fail (not crash) a run the retry automations have rescheduled too often, so a run that dies the same
    way every time stops instead of looping."""
    if run_count > MAX_CRASH_RETRIES + 1:
        raise TuneloopError(f"flow run {run_name} has crashed {run_count - 1} times; not retrying it again. Read "
                            "its logs (`tuneloop jobs events ID`) for what kills it, fix that, and start a new run")


def stale_reschedule(states: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(type, message) of the final state this attempt must end in again, when it only exists because a retry
    automation rescheduled a run that had already finished; else None.

    `states`: the run's (type, message) oldest first, this attempt's Pending/Running included. After a
    Prefect server restart the automations see a run's state events up to 15 minutes late and may
    reschedule a run that meanwhile ended (Prefect refuses that only for Completed runs with a persisted
    result). A person's retry from the UI does not carry the automations' message and is honoured.
    """
    scheduled = [i for i, (kind, _) in enumerate(states) if kind == "SCHEDULED"]
    if not scheduled or scheduled[-1] == 0:
        return None
    i = scheduled[-1]
    if not (states[i][1] or "").startswith(AUTOMATION_RESCHEDULE):
        return None
    before = states[i - 1]
    return before if before[0] in FINAL else None


def stale_message(kind: str, message: str) -> str:
    """Why a stale reschedule ends at once (the message of the state it ends in)."""
    return (f"this run had already ended {kind} ({message or 'no message'}) before a retry automation "
            "rescheduled it on a late event; not running it again")


def watch_superseded(read_run_count: Callable[[], int], mine: int, stop: Callable[[str], None],
                     poll_s: float = SUPERSEDED_POLL_S) -> threading.Thread:
    """Start a daemon thread that calls `read_run_count()` every `poll_s` and, once a newer attempt of this run
    has started (a higher run count: an automation acted on a late or stale view and rescheduled a run whose
    process was in fact alive), calls `stop(why)` once and ends. A failing read (the API is unreachable) is
    skipped: the attempt keeps working and the next poll asks again. Stopping anywhere is safe: the crash
    matrix kills attempts at every stage."""
    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                count = read_run_count()
            except Exception:  # noqa: BLE001 - any failure to read is "don't know yet"
                continue
            if count > mine:
                stop(f"attempt {mine} of this run was superseded by attempt {count} (it was rescheduled while "
                     "this process was alive); stopping this process")
                return

    thread = threading.Thread(target=watch, name="tuneloop-superseded-watch", daemon=True)
    thread.start()
    return thread
