"""Crash points: a named place where a test (or an operator rehearsing a failure) can have this process
SIGKILLed, to prove that a run killed there leaves consistent state and completes when retried.

Inert unless `TUNELOOP_CRASH_AT` names the point. With `TUNELOOP_CRASH_MARK` set to a file path, the
point fires once: it creates the file, then kills; a retry that finds the file goes on (so the same
environment can carry the crash and its retry, as a Prefect retry of the same flow run does).

Points (see docs/reliability.md): validate, mid-training, mid-evaluation, registry-written,
promote-switched.
"""

from __future__ import annotations

import os
import signal
import sys

POINTS = ("validate", "mid-training", "mid-evaluation", "registry-written", "promote-switched")


def crash_point(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; known: {', '.join(POINTS)}")
    if os.environ.get("TUNELOOP_CRASH_AT") != name:
        return
    mark = os.environ.get("TUNELOOP_CRASH_MARK")
    if mark:
        try:
            fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fires once, even across processes
        except FileExistsError:
            return
        os.write(fd, name.encode())
        os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
