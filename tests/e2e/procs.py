"""Start and stop a real `prefect server start` and `prefect worker start`, by PID.

A worker may ignore SIGTERM once its server is gone, so every process is
started in its own session and its whole group is escalated to SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    fh = open(log, "ab")
    return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def wait_healthy(api_url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


RETRYABLE = {429, 502, 503}


# Prefect's SQLite connections wait up to 60 s for the database lock (PRAGMA busy_timeout = 60000) before they
# answer 503, so a request may take that long on a loaded machine: a client that gives up sooner (CI once saw two
# 30 s read timeouts in a row on create_flow_run) fails a test the server would have passed.
REQUEST_TIMEOUT = httpx.Timeout(10.0, read=90.0)


def prefect_call(method: str, url: str, timeout: float = 240.0, **kwargs) -> httpx.Response:
    """One call to a Prefect server's REST API, retried the way Prefect's own client retries: a SQLite server
    under load answers 503 ("database is locked", rolled back) or nothing within the read timeout, and a
    restarting one refuses connections. Other answers come back as they are, for the test to judge. A retried
    POST that creates something must carry an idempotency key."""
    deadline = time.monotonic() + timeout
    delay = 0.25
    while True:
        try:
            r = httpx.request(method, url, timeout=REQUEST_TIMEOUT, **kwargs)
            if r.status_code not in RETRYABLE:
                return r
            failure = f"{r.status_code} {r.text[:200]}"
        except httpx.TransportError as exc:
            failure = repr(exc)
        if time.monotonic() + delay > deadline:
            raise TimeoutError(f"{method} {url} still failing after {timeout:.0f} s: {failure}")
        time.sleep(delay)
        delay = min(delay * 2, 4.0)


def run_cli(args: list[str], env: dict, cwd: Path, timeout: float = 180) -> str:
    proc = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout
