"""`tuneloop up` driven like an operator would, and the tasks and checks the service's e2e tests share."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT
from e2e.procs import BIN


class Up:
    """`tuneloop up` in its own process group, stopped by SIGTERM (then SIGKILL) like an operator would."""

    def __init__(self, home: Path, port: int, env: dict | None = None):
        """`env`: added to this process's environment (settings such as TUNELOOP_NEGATIVES_THRESHOLD)."""
        self.home, self.port, self.proc, self.extra_env = home, port, None, env or {}
        self.log = home.parent / f"up-{port}.log"
        self.url = f"http://127.0.0.1:{port}/v1"

    def start(self, timeout: float = 240) -> "Up":
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")} | self.extra_env
        seen = self.log.stat().st_size if self.log.exists() else 0  # a restart appends to the same log
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen([str(BIN / "tuneloop"), "up", "--home", str(self.home), "--port", str(self.port)],
                                     stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tuneloop up exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            if "tuneloop is up" in self.log.read_bytes()[seen:].decode(errors="replace"):
                return self
            time.sleep(0.5)
        pytest.fail(f"tuneloop up not ready after {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)  # the operator's Ctrl-C / systemd stop: `up` stops its children
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"tuneloop up did not stop on SIGTERM:\n{self.log.read_text()[-3000:]}")

    def prefect_api(self) -> str:
        """The Prefect API of the latest start (a restart may find the previous port taken and pick another)."""
        line = [x for x in self.log.read_text().splitlines() if x.startswith("starting Prefect on ")][-1]
        return line.split()[3]

    def key(self, tenant: str, role: str = "user") -> str:
        out = subprocess.run([str(BIN / "tuneloop"), "keys", "create", "--tenant", tenant, "--role", role,
                              "--home", str(self.home)], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()[0]


def colours_task(n: int, seed: int) -> list[dict]:
    """A task unlike the demo's, used by no other test: the colour of a fruit, in one word, asked in many
    ways by many people (distinct rows: the dataset drops duplicates)."""
    fruits = {"banana": "yellow", "lemon": "yellow", "lime": "green", "kiwi": "green", "pear": "green",
              "cherry": "red", "strawberry": "red", "tomato": "red", "blueberry": "blue", "plum": "purple",
              "grape": "purple", "orange": "orange"}
    frames = ["what colour is a {f}?", "tell me the colour of a {f}", "a {f} is which colour?", "{f} colour please",
              "colour of one {f}?", "which colour has the {f}?", "say the colour: {f}", "my {f} is what colour?",
              "{n} wants to know the colour of a {f}", "hi, {n} here: what colour is the {f}?",
              "quick one from {n}: {f} colour?", "{n} asks which colour a ripe {f} is"]
    names = ["Ana", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Mo", "Noor",
             "Oli", "Pia", "Quin", "Rui", "Sol", "Tam"]
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n:
        f, frame, name = rng.choice(sorted(fruits)), rng.choice(frames), rng.choice(names)
        text = frame.format(f=f, n=name)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"messages": [{"role": "system", "content": "Answer with one colour word."},
                                  {"role": "user", "content": text},
                                  {"role": "assistant", "content": fruits[f]}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def exact_match(client, model: str, rows: list[dict]) -> float:
    hits = 0
    for r in rows:
        out = client.chat.completions.create(model=model, messages=r["messages"][:-1], max_tokens=8, temperature=0)
        hits += out.choices[0].message.content.strip() == r["messages"][-1]["content"].strip()
    return hits / len(rows)


def wait_for(client, job_id: str, statuses: set[str], timeout: float, up: Up):
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if job.status == "failed" and "failed" not in statuses:
            pytest.fail(f"job failed: {job.error}\n{(up.home / 'logs' / 'worker.log').read_text()[-5000:]}")
        time.sleep(1)
    pytest.fail(f"job {job_id} still {job.status if job else '?'} after {timeout} s\n"
                f"{(up.home / 'logs' / 'worker.log').read_text()[-5000:]}")
