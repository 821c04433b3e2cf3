"""Retry attempts: a stale reschedule of a finished run ends at once; runs keep their folder across the packing
options; one training process per run folder."""

from __future__ import annotations

import subprocess
import sys

import pytest

AUTO = "rescheduled by the retry-zombie-runs automation (no heartbeat for 100 s)"


def test_a_run_rescheduled_by_an_automation_after_it_ended_ends_again_as_it_had():
    from tuneloop.runtime.attempts import stale_reschedule

    done = [("SCHEDULED", ""), ("PENDING", ""), ("RUNNING", ""), ("CANCELLED", "rejected by a person: no"),
            ("SCHEDULED", AUTO), ("PENDING", ""), ("RUNNING", "")]
    assert stale_reschedule(done) == ("CANCELLED", "rejected by a person: no")
    failed = done[:3] + [("FAILED", "boom"), ("SCHEDULED", "rescheduled by the retry-crashed-runs automation")]
    assert stale_reschedule(failed) == ("FAILED", "boom")


@pytest.mark.parametrize("history", [
    # the normal retry of a crash
    [("SCHEDULED", ""), ("PENDING", ""), ("RUNNING", ""), ("CRASHED", "killed"), ("SCHEDULED", AUTO),
     ("PENDING", ""), ("RUNNING", "")],
    # a person retried a failed run from the UI (not the automations' message)
    [("SCHEDULED", ""), ("RUNNING", ""), ("FAILED", "boom"), ("SCHEDULED", "Retry from the UI"), ("RUNNING", "")],
    # a first attempt
    [("SCHEDULED", ""), ("PENDING", ""), ("RUNNING", "")],
    # rescheduled while it looked alive (the older attempt stops itself when it sees a newer one)
    [("SCHEDULED", ""), ("RUNNING", ""), ("SCHEDULED", AUTO), ("PENDING", ""), ("RUNNING", "")],
    [],
], ids=["crash-retry", "manual-retry", "first", "superseded", "empty"])
def test_other_histories_go_on(history):
    from tuneloop.runtime.attempts import stale_reschedule

    assert stale_reschedule(history) is None


def test_packing_options_keep_a_runs_folder_unless_they_change_the_batches():
    from tuneloop.training.runs import run_id
    from tuneloop.specs import validate_spec

    def rid(**training):
        spec = validate_spec({"data": "feedback.jsonl", "training": training})
        return run_id(spec, "/models/tiny", "dataset-1")

    packed = rid()
    assert packed == rid(packing=False, group_by_length=False)  # the same batches, the same loss
    assert packed == rid(packing=True, group_by_length=False)
    assert packed != rid(packing=False, group_by_length=True)  # other batches: another run
    assert packed != rid(learning_rate=0.01)


@pytest.mark.server
def test_a_second_training_process_waits_for_the_run_folder(tmp_path):
    from tuneloop.training.runs import run_dir_lock

    class Log:
        def __init__(self):
            self.lines = []

        def warning(self, m):
            self.lines.append(m)

    probe = ("import fcntl, sys\nfh = open(sys.argv[1], 'w')\ntry:\n    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "    print('free')\nexcept BlockingIOError:\n    print('held')\n")
    lock = tmp_path / "run" / ".train.lock"
    with run_dir_lock(tmp_path / "run", Log()):
        held = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True).stdout
    free = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True).stdout
    assert (held.strip(), free.strip()) == ("held", "free")


def test_a_run_rescheduled_too_often_fails_at_its_start():
    from tuneloop.errors import TuneloopError
    from tuneloop.runtime.attempts import MAX_CRASH_RETRIES, refuse_crash_loop

    refuse_crash_loop(MAX_CRASH_RETRIES + 1, "calm-otter")  # the last allowed retry goes on
    with pytest.raises(TuneloopError, match=f"calm-otter has crashed {MAX_CRASH_RETRIES + 1} times"):
        refuse_crash_loop(MAX_CRASH_RETRIES + 2, "calm-otter")


def test_the_watch_stops_an_attempt_once_a_newer_one_started_and_rides_out_a_failing_api():
    import threading

    from tuneloop.runtime.attempts import watch_superseded

    answers = iter([1, ConnectionError("api down"), 1, 2, 3])
    stopped, done = [], threading.Event()

    def read():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    def stop(why):
        stopped.append(why)
        done.set()

    thread = watch_superseded(read, 1, stop, poll_s=0.01)
    assert done.wait(5)
    thread.join(5)
    assert not thread.is_alive() and thread.daemon
    assert stopped == ["attempt 1 of this run was superseded by attempt 2 (it was rescheduled while this process "
                       "was alive); stopping this process"]


@pytest.mark.server  # a fresh interpreter: what an import does on its own
def test_importing_the_task_layer_changes_no_logger():
    """Log redaction is turned on where a flow starts (`run_logger`), not as a side effect of an import."""
    code = ("import logging, tuneloop.tasks, tuneloop.flows.retrain, tuneloop.flows.promote\n"
            "from tuneloop.runtime.safety import _FILTER, _LOGGERS\n"
            "print(any(_FILTER in logging.getLogger(n).filters for n in _LOGGERS))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
