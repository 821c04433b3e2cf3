"""Prefect tasks: thin `verb_noun` wrappers, each calling tuneloop core once.

Only transient errors (network, 5xx, timeouts) are retried; a user error or a
bug fails at once with its message.
"""

from prefect.cache_policies import NO_CACHE

from tuneloop.errors import TransientError
from tuneloop.runtime.safety import install_log_redaction

install_log_redaction()  # every flow imports tasks: secrets never reach a log line, the UI or the API


def retry_transient(task, task_run, state) -> bool:
    """retry_condition_fn: retry only `TransientError`s."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


MAX_CRASH_RETRIES = 3  # deployments/automations.yaml reschedules crashed runs; past this a run fails instead
AUTOMATION_RESCHEDULE = "rescheduled by the retry-"  # how the messages of the shipped retry automations begin
FINAL = ("COMPLETED", "FAILED", "CANCELLED")
SUPERSEDED_POLL_S = 10.0


def refuse_crash_loop() -> None:
    """Fail (not crash) a run the retry automations have rescheduled too often, so a run that dies the same
    way every time stops instead of looping."""
    from prefect.runtime import flow_run

    runs = flow_run.run_count or 1
    if runs > MAX_CRASH_RETRIES + 1:
        raise RuntimeError(f"flow run {flow_run.name} has crashed {runs - 1} times; not retrying it again. Read "
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


def _flush_api_logs(timeout: float) -> None:
    """Send the queued log lines to the Prefect API before the process ends (bounded: the API may be down)."""
    import logging
    import threading

    from prefect.logging.handlers import APILogHandler

    handlers = {h for name in ("prefect.flow_runs", "prefect.task_runs", "prefect")
                for h in logging.getLogger(name).handlers if isinstance(h, APILogHandler)}
    t = threading.Thread(target=lambda: [h.flush() for h in handlers], daemon=True)
    t.start()
    t.join(timeout)


def start_attempt(logger):
    """At the start of a retrain or promote attempt: refuse a crash loop, end a stale reschedule at once, and
    watch for this attempt being superseded.

    Returns None to go on, or a Prefect State the flow must return as it is (a stale reschedule: the run
    ends again as it had ended). The watch is a daemon thread that asks the API every SUPERSEDED_POLL_S
    whether a newer attempt of this run has started (a higher run_count: an automation acted on a late or
    stale view and rescheduled a run whose process was in fact alive); if so this process exits (code 0,
    so its worker reports no crash), leaving the run to the newer attempt. Stopping anywhere is safe: the
    crash matrix kills attempts at every stage.
    """
    import os
    import sys
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment, flow_run
    from prefect.states import Cancelled, Completed, Failed

    refuse_crash_loop()
    run_id, mine = flow_run.id, flow_run.run_count or 1
    if not run_id or not deployment.id:
        return None  # an in-process run: no worker reruns it, nothing can supersede it
    try:
        with get_client(sync_client=True) as client:
            history = client.read_flow_run_states(run_id)
    except Exception as exc:  # the API is down: go on; the automations need it too
        logger.warning(f"could not read this run's states ({type(exc).__name__}); not checking for a stale retry")
        history = []
    ordered = [(s.type.value, s.message or "") for s in sorted(history, key=lambda s: s.timestamp)]
    stale = stale_reschedule(ordered)
    if stale is not None:
        kind, message = stale
        why = (f"this run had already ended {kind} ({message or 'no message'}) before a retry automation "
               "rescheduled it on a late event; not running it again")
        logger.warning(why)
        return {"COMPLETED": Completed, "FAILED": Failed, "CANCELLED": Cancelled}[kind](message=why)

    def watch() -> None:
        while True:
            time.sleep(SUPERSEDED_POLL_S)
            try:
                with get_client(sync_client=True) as client:
                    count = client.read_flow_run(run_id).run_count
            except Exception:
                continue  # the API is unreachable: keep working; the next poll asks again
            if count > mine:
                why = (f"attempt {mine} of this run was superseded by attempt {count} (it was rescheduled while "
                       "this process was alive); stopping this process")
                print(why, file=sys.stderr, flush=True)  # the worker's log keeps it whatever happens below
                logger.warning(why)
                _flush_api_logs(timeout=5.0)
                os._exit(0)

    threading.Thread(target=watch, name="tuneloop-superseded-watch", daemon=True).start()
    return None


TASK_DEFAULTS = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
