"""Prefect tasks: thin `verb_noun` wrappers, each calling tuneloop core once.

Only transient errors (network, 5xx, timeouts) are retried; a user error or a
bug fails at once with its message. Importing this package changes nothing: a
flow's first line, `run_logger()`, turns on log redaction.
"""

from prefect.cache_policies import NO_CACHE

from tuneloop.errors import TransientError
from tuneloop.runtime import attempts
from tuneloop.runtime.safety import install_log_redaction


def retry_transient(task, task_run, state) -> bool:
    """retry_condition_fn: retry only `TransientError`s."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


TASK_DEFAULTS = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)


def run_logger():
    """The flow run's logger, with secrets redacted from every log record from here on (idempotent); every
    flow starts with it, so nothing it logs, nor Prefect for it, reaches the UI or the API unscrubbed."""
    from prefect import get_run_logger

    install_log_redaction()
    return get_run_logger()


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


def run_id() -> str | None:
    """This flow run's id (None outside a flow run)."""
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def start_attempt(logger):
    """At the start of a retrain or promote attempt: refuse a crash loop, end a stale reschedule at once, and
    watch for this attempt being superseded (the rules: `tuneloop.runtime.attempts`).

    Returns None to go on, or a Prefect State the flow must return as it is (a stale reschedule: the run
    ends again as it had ended). A superseded attempt exits its process with code 0, so its worker reports
    no crash, leaving the run to the newer attempt.
    """
    import os
    import sys

    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment, flow_run
    from prefect.states import Cancelled, Completed, Failed

    run_id, mine = flow_run.id, flow_run.run_count or 1
    attempts.refuse_crash_loop(mine, flow_run.name)
    if not run_id or not deployment.id:
        return None  # an in-process run: no worker reruns it, nothing can supersede it
    try:
        with get_client(sync_client=True) as client:
            history = client.read_flow_run_states(run_id)
    except Exception as exc:  # the API is down: go on; the automations need it too
        logger.warning(f"could not read this run's states ({type(exc).__name__}); not checking for a stale retry")
        history = []
    stale = attempts.stale_reschedule([(s.type.value, s.message or "")
                                       for s in sorted(history, key=lambda s: s.timestamp)])
    if stale is not None:
        why = attempts.stale_message(*stale)
        logger.warning(why)
        return {"COMPLETED": Completed, "FAILED": Failed, "CANCELLED": Cancelled}[stale[0]](message=why)

    def read_run_count() -> int:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(run_id).run_count

    def stop(why: str) -> None:
        print(why, file=sys.stderr, flush=True)  # the worker's log keeps it whatever happens below
        logger.warning(why)
        _flush_api_logs(timeout=5.0)
        os._exit(0)

    attempts.watch_superseded(read_run_count, mine, stop)
    return None
