"""Prefect tasks: thin `verb_noun` wrappers, each calling tuneloop core once.

Only transient errors (network, 5xx, timeouts) are retried; a user error or a
bug fails at once with its message.
"""

from prefect.cache_policies import NO_CACHE

from tuneloop.errors import TransientError


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
