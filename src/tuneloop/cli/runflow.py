"""Running a flow from the command line: Prefect's settings, then the flow itself (shipped in the package)."""

from __future__ import annotations

import copy
import importlib
import logging
import os
import re
from importlib import resources
from pathlib import Path

from tuneloop.errors import UserError

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def prefect_env() -> None:
    """Point Prefect at tuneloop's profiles (shipped in the package) and keep its database under the
    state folder. Both folders are created here: Prefect makes only the last level of PREFECT_HOME and
    otherwise ends in "unable to open database file"."""
    from tuneloop.settings import get_settings

    state = get_settings().state_dir
    state.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_PROFILES_PATH", str(resources.files("tuneloop") / "assets" / "prefect-profiles.toml"))
    os.environ.setdefault("PREFECT_PROFILE", "local")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class FailureOnce(logging.Filter):
    """On the terminal, Prefect repeats a failed run's error three times (the task's end state, the flow's
    traceback, the flow's end state) before the CLI prints it: each of those lines keeps the error's first
    line, and a user error (bad input, not a bug) loses its traceback. Prefect's API and UI keep it all."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in RUN_LOGGERS or getattr(record, "tuneloop_short", False):
            return True
        message = record.getMessage()
        traceback = record.exc_info or record.exc_text  # the redaction filter turns exc_info into exc_text
        if not traceback and not message.startswith("Finished in state "):
            return True
        first, *rest = re.split(r"\n|\\n", message, maxsplit=1)
        # Prefect passes the exception as the message's argument ("Encountered exception ...: %r")
        raised = [record.exc_info[1]] if record.exc_info else record.args if isinstance(record.args, tuple) else ()
        user_error = traceback and any(isinstance(e, UserError) for e in raised)
        if not rest and not user_error:
            return True
        short = copy.copy(record)  # the record itself stays whole for the handlers after this one
        short.msg, short.args, short.tuneloop_short = first + (" ... (the full error follows)" if rest else ""), None, True
        if user_error:
            short.exc_info = short.exc_text = None
        self.handler.handle(short)
        return False


def quiet_repeated_failures() -> None:
    """Install `FailureOnce` on Prefect's console handler (once)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, FailureOnce) for f in handler.filters):
            handler.addFilter(FailureOnce(handler))


def import_flow(name: str):
    """The flow `name` from `tuneloop.flows`, with Prefect's environment set first."""
    prefect_env()
    module = importlib.import_module(f"tuneloop.flows.{name}")
    quiet_repeated_failures()
    return getattr(module, name.replace("-", "_"))
