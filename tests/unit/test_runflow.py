"""What the CLI sets up before Prefect runs a flow: its folders, and a terminal that shows a failure once."""

from __future__ import annotations

import io
import logging
import os

import pytest

from tuneloop.cli import main as cli
from tuneloop.cli.runflow import FailureOnce, prefect_env
from tuneloop.errors import DataValidationError
from tuneloop.data.validate import Issue
from tuneloop.runtime.safety import RedactingFilter

REPORT = DataValidationError("bad.jsonl", [Issue(3, "no_assistant", "no assistant message"),
                                           Issue(6, "no_assistant", "no assistant message")])


@pytest.fixture
def fresh_env(monkeypatch):
    for name in ("PREFECT_HOME", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_state_dir_that_does_not_exist_yet_is_created(tmp_path, fresh_env):
    """Prefect makes only the last level of PREFECT_HOME; a deeper missing folder used to end in
    "unable to open database file"."""
    state = tmp_path / "not" / "there" / "yet"
    fresh_env.setenv("TUNELOOP_STATE_DIR", str(state))
    prefect_env()
    assert state.is_dir() and (state / "prefect").is_dir()
    assert os.environ["PREFECT_HOME"] == str(state / "prefect")


def test_a_prefect_home_of_ones_own_is_created_too(tmp_path, fresh_env):
    fresh_env.setenv("TUNELOOP_STATE_DIR", str(tmp_path / "state"))
    fresh_env.setenv("PREFECT_HOME", str(tmp_path / "a" / "b" / "prefect"))
    prefect_env()
    assert (tmp_path / "a" / "b" / "prefect").is_dir()


def test_jobs_set_up_prefect_first(monkeypatch):
    """`tuneloop jobs` reaches Prefect without a flow: it must set the same profile and folders first."""

    class SetUp(Exception):
        pass

    def called():
        raise SetUp

    monkeypatch.setattr("tuneloop.cli.manage.prefect_env", called)
    with pytest.raises(SetUp):
        cli.main(["jobs", "list"])


def _console() -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    handler.addFilter(FailureOnce(handler))
    return handler, out


def _log(handler, name, msg, *args, exc=None, redacted=False) -> None:
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    if redacted:  # as tuneloop's redaction filter on Prefect's loggers leaves it: the traceback as text
        RedactingFilter().filter(record)
    handler.handle(record)


@pytest.mark.parametrize("redacted", [False, True])
def test_prefect_failure_lines_keep_the_first_line_of_a_user_error(redacted):
    handler, out = _console()
    try:
        raise REPORT
    except DataValidationError as e:
        _log(handler, "prefect.flow_runs", "Encountered exception during execution: %r", e, exc=e,
             redacted=redacted)
    _log(handler, "prefect.task_runs", "Finished in state %s", f"Failed({str(REPORT)!r})")
    text = out.getvalue()
    assert "line 3" not in text and "Traceback" not in text
    assert text.count("bad.jsonl: 2 data problem(s): ... (the full error follows)") == 2


def test_tracebacks_of_bugs_and_other_lines_stay():
    handler, out = _console()
    try:
        raise KeyError("x")
    except KeyError as e:
        _log(handler, "prefect.flow_runs", "Encountered exception during execution: %r", e, exc=e)
    _log(handler, "prefect.task_runs", "a table\nwith two lines")
    _log(handler, "tuneloop", "Finished in state %s", f"Failed({str(REPORT)!r})")
    text = out.getvalue()
    assert "Traceback" in text and "KeyError: 'x'" in text
    assert "a table\nwith two lines" in text and "line 3" in text


def test_the_record_itself_stays_whole_for_prefects_api():
    handler, _ = _console()
    seen = []
    after = logging.Handler()
    after.emit = seen.append
    record = logging.LogRecord("prefect.flow_runs", logging.INFO, __file__, 1, "Finished in state %s",
                               (f"Failed({str(REPORT)!r})",), None)
    handler.handle(record)
    after.handle(record)
    assert "line 3" in seen[0].getMessage()
