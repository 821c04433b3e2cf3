"""Prefect tasks: thin `verb_noun` wrappers, each calling tuneloop core once.

Only transient errors (network, 5xx, timeouts) are retried; a user error or a
bug fails at once with its message.
"""

from prefect.cache_policies import NO_CACHE

from tuneloop.errors import TransientError
from tuneloop.safety import install_log_redaction

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


def refuse_crash_loop() -> None:
    """At a flow's start: fail (not crash) a run the retry-crashed-runs automation has rescheduled too often,
    so a run that dies the same way every time stops instead of looping."""
    from prefect.runtime import flow_run

    runs = flow_run.run_count or 1
    if runs > MAX_CRASH_RETRIES + 1:
        raise RuntimeError(f"flow run {flow_run.name} has crashed {runs - 1} times; not retrying it again. Read "
                           "its logs (`tuneloop jobs events ID`) for what kills it, fix that, and start a new run")


TASK_DEFAULTS = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
