"""Orchestration overhead: Prefect's share of a retrain run's wall time, and its cost per task run.

    .venv/bin/python bench/prefect_overhead.py [--runs 4] [--threads 1] [--quick] [--epochs N]

Starts a real `prefect server start` on a free port (its own PREFECT_HOME in a
temporary folder; stopped by PID, SIGKILL if it lingers) and runs the retrain
flow in this process against it, as `tuneloop demo` does: the demo preset on
the tiny Llama, alternately on clean feedback (promoted, or rejected when no
better than the champion) and on its corrupted copy (rejected), with new demo
data (another seed) every other run: `--runs` retrains (`--quick`: 2).
`--epochs N` trains N epochs instead of the preset's 10, without early
stopping: a longer retrain, to see how Prefect's nearly fixed cost per run
shares out over more work. The
base model is built (or taken from .tuneloop/models) before the clock starts. Torch runs one thread (as the
other benchmarks here: two threads on a busy 2-core machine made training
30x slower and would shrink Prefect's share unfairly); `--threads 0` keeps
torch's default.

What is Prefect's and what is work, measured inside the same run (no second
run to subtract, which on a shared machine is noisier than the overhead):

* each task's body (`task.fn`) is timed, and so is each task call as the flow
  makes it (`task(...)` from call to return): the difference is the engine's
  cost for that task run (creating it in the API, state transitions, result
  handling, retries' bookkeeping, logging set-up);
* Prefect API calls made inside task bodies (artifacts: the training
  progress bar and checkpoint tables, Markdown reports; events) are timed and
  counted as Prefect's too;
* the flow function's body is timed; the flow call's wall time minus the body
  is the flow run's own cost (creating it, Running/Completed states, the
  final result, and joining its heartbeat thread, timed on its own: Prefect
  3.8's sleeps in 1 s steps, so a run ends up to 1 s after its body).

Prefect's share = (flow-run cost + per-task engine cost + in-body API calls) /
wall time of the flow call. The task runs' start/end times as the server
recorded them are read back from the API and printed beside them. The server
answers a few requests before the clock starts (a long-running server is
warm); this process is not warmed: a worker starts a fresh one per flow run,
so the first run's one-time costs (lazy imports, the client's API version
check) are part of what a scheduled retrain pays. The last line is the
mean share over the runs, in percent, and the largest.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import types
import warnings
from collections import defaultdict
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from procs import free_port, start, stop, wait_healthy  # noqa: E402  (the e2e tests' server helpers)

IN_BODY_API = ("create_markdown_artifact", "create_table_artifact", "create_progress_artifact",
               "update_progress_artifact", "emit_event")


class Clock:
    """Accumulates seconds per label; one list per label, one entry per call."""

    def __init__(self):
        self.spans: dict[str, list[float]] = defaultdict(list)

    def wrap(self, label: str, fn):
        spans, now = self.spans[label], time.perf_counter

        def timed(*args, **kwargs):  # uses closure variables only: it may run with fn's globals
            t = now()
            try:
                return fn(*args, **kwargs)
            finally:
                spans.append(now() - t)
        if inspect.isfunction(fn):
            # fn's signature and globals: Prefect validates a flow's parameters from the annotations,
            # which `from __future__ import annotations` leaves as names to look up in fn's module
            timed = types.FunctionType(timed.__code__, fn.__globals__, fn.__name__, None, timed.__closure__)
            return functools.wraps(fn)(timed)
        timed.__wrapped__ = fn  # a Task object: its own attributes stay on it
        return timed

    def total(self, prefix: str) -> float:
        return sum(sum(v) for k, v in self.spans.items() if k.startswith(prefix))


@contextlib.contextmanager
def instrumented(module):
    """Time the flow's body, every task's body and call, the Prefect API calls inside task bodies, and the
    flow engine's wait for its heartbeat thread; everything is put back on exit."""
    from prefect import Task, flow_engine

    clock, undo = Clock(), []

    def swap(owner, name, new):
        old = getattr(owner, name)
        setattr(owner, name, new)
        undo.append((owner, name, old))

    swap(module.retrain, "fn", clock.wrap("flow-body", module.retrain.fn))
    for name, obj in list(vars(module).items()):
        if isinstance(obj, Task):
            swap(obj, "fn", clock.wrap(f"body:{obj.name}", obj.fn))
            swap(module, name, clock.wrap(f"call:{obj.name}", obj))
    for mod_name, mod in list(sys.modules.items()):
        if mod_name == "tuneloop.tasks" or mod_name.startswith("tuneloop.tasks."):
            for fn_name in IN_BODY_API:
                if callable(getattr(mod, fn_name, None)):
                    swap(mod, fn_name, clock.wrap(f"api:{fn_name}", getattr(mod, fn_name)))
    heartbeats = getattr(flow_engine, "_send_heartbeats", None)
    if heartbeats is not None:  # Prefect 3.8: a thread that sleeps in 1 s steps, joined when the run ends
        @contextlib.contextmanager
        def timed_heartbeats(*args, **kwargs):
            inner = heartbeats(*args, **kwargs)
            inner.__enter__()
            exc = (None, None, None)
            try:
                yield
            except BaseException:
                exc = sys.exc_info()
                raise
            finally:
                t = time.perf_counter()
                inner.__exit__(*exc)
                clock.spans["heartbeat-join"].append(time.perf_counter() - t)
        swap(flow_engine, "_send_heartbeats", timed_heartbeats)
    try:
        yield clock
    finally:
        for owner, name, old in reversed(undo):
            setattr(owner, name, old)


def api_task_runs(flow_run_id) -> tuple[float, list]:
    """(the flow run's duration as the server recorded it, its task runs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(flow_run_id)
        trs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return (fr.end_time - fr.start_time).total_seconds(), trs


def report(label: str, wall: float, clock: Clock, server_flow: float, task_runs: list) -> float:
    calls = {k[5:]: v for k, v in clock.spans.items() if k.startswith("call:") and v}  # tasks that ran
    bodies = {k[5:]: v for k, v in clock.spans.items() if k.startswith("body:")}
    body_flow = clock.total("flow-body")
    engine = {name: sum(calls[name]) - sum(bodies.get(name, [])) for name in calls}
    api = clock.total("api:")
    n_api = sum(len(v) for k, v in clock.spans.items() if k.startswith("api:"))
    flow_cost = wall - body_flow
    prefect = flow_cost + sum(engine.values()) + api
    n_runs = sum(len(v) for v in calls.values())
    work = wall - prefect
    server_tasks = {}
    for tr in task_runs:
        if tr.start_time and tr.end_time:
            server_tasks.setdefault(tr.name.rsplit("-", 1)[0], []).append(
                (tr.end_time - tr.start_time).total_seconds())
    print(f"\n{label}: wall {wall:.2f} s (server's flow run {server_flow:.2f} s), "
          f"{n_runs} task runs, work {work:.2f} s; load average {os.getloadavg()[0]:.1f}")
    print(f"  {'task':22} {'runs':>4} {'body s':>8} {'call s':>8} {'engine ms/run':>13} {'server s':>9}")
    for name in sorted(calls, key=lambda n: -sum(calls[n])):
        srv = server_tasks.get(name, [])
        print(f"  {name:22} {len(calls[name]):4} {sum(bodies.get(name, [])):8.3f} {sum(calls[name]):8.3f} "
              f"{1000 * engine[name] / len(calls[name]):13.1f} {sum(srv):9.3f}")
    print(f"  flow run's own cost (create, states, result): {1000 * flow_cost:.0f} ms, of which "
          f"{1000 * clock.total('heartbeat-join'):.0f} ms waiting for the heartbeat thread to wake and stop")
    print(f"  task engine cost: {1000 * sum(engine.values()):.0f} ms in all, "
          f"{1000 * sum(engine.values()) / max(n_runs, 1):.1f} ms per task run (mean)")
    print(f"  Prefect API calls inside task bodies: {n_api} ({', '.join(sorted({k[4:] for k in clock.spans if k.startswith('api:')}))}), "
          f"{1000 * api:.0f} ms")
    share = 100 * prefect / wall
    print(f"  Prefect's share: {prefect:.2f} s of {wall:.2f} s = {share:.2f}%")
    return share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4,
                    help="retrain runs, alternately on clean and corrupted feedback, new demo data every other run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="two runs (clean, then corrupted feedback)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="train this many epochs, without early stopping (default: the demo preset's)")
    args = ap.parse_args()
    if args.quick:
        args.runs = 2

    tmp = Path(tempfile.mkdtemp(prefix="tl-bench-prefect-"))
    cached = ROOT / ".tuneloop" / "models"
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_PROFILES_PATH": str(ROOT / "src" / "tuneloop" / "assets" / "prefect-profiles.toml"), "PREFECT_PROFILE": "local"}
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    t = time.perf_counter()
    server = start([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                    "--port", str(port)], tmp / "server.log", env, tmp)
    try:
        wait_healthy(api_url, server, tmp / "server.log")
        print(f"prefect server healthy after {time.perf_counter() - t:.1f} s on port {port}")
        import httpx

        for _ in range(3):  # a long-running server has served requests before: its first ones are slow
            httpx.get(f"{api_url}/admin/version", timeout=30)
            httpx.post(f"{api_url}/flow_runs/filter", json={"limit": 1}, timeout=30)
        os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})
        os.environ.update({"PREFECT_API_URL": api_url, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                           # the terminal shows warnings only; every log line still goes to the API
                           "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
                           "TUNELOOP_STATE_DIR": str(tmp / "state"),
                           "TUNELOOP_MODELS_DIR": str(cached if (cached / "tiny-llama" / "config.json").exists()
                                                      else tmp / "models")})
        t = time.perf_counter()
        import prefect

        import_s = time.perf_counter() - t
        warnings.filterwarnings("ignore", category=FutureWarning)
        import yaml

        import tuneloop.flows.retrain as R
        from tuneloop.models.base import resolve_base_model
        from tuneloop.demo.data import write_demo_data
        from tuneloop.settings import get_settings
        from tuneloop.specs import TINY_BASE, validate_spec

        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        resolve_base_model(TINY_BASE, get_settings().models_dir, log=lambda m: print(m, flush=True))
        preset = yaml.safe_load(resources.files("tuneloop").joinpath("assets/demo-preset.yaml").read_text())
        if args.epochs:
            preset["training"] |= {"epochs": args.epochs, "early_stopping_patience": None}
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
              f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; prefect {prefect.__version__} "
              f"(import {import_s:.1f} s, not counted)")

        shares = []
        for k in range(args.runs):
            data = ("feedback", "corrupted")[k % 2]
            if k % 2 == 0:  # new data every other run: the same data would only resume a finished training
                paths = write_demo_data(tmp / f"data{k // 2}", seed=k // 2)
            spec = validate_spec(preset | {"data": str(paths[data]), "eval_data": str(paths["heldout"])})
            with instrumented(R) as clock:
                t = time.perf_counter()
                state = R.retrain(spec, return_state=True)
                wall = time.perf_counter() - t
            summary = state.result()
            server_flow, task_runs = api_task_runs(state.state_details.flow_run_id)
            label = (f"run {k + 1} ({data} seed {k // 2}: {summary['version']} "
                     f"{'promoted' if summary['promoted'] else 'rejected'})")
            shares.append(report(label, wall, clock, server_flow, task_runs))
        from prefect.logging.handlers import APILogHandler

        for name in ("prefect.flow_runs", "prefect.task_runs"):  # the runs' last log lines reach the server
            for h in logging.getLogger(name).handlers:  # before it stops
                if isinstance(h, APILogHandler):
                    h.flush()
    finally:
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nPrefect's share per run: {', '.join(f'{x:.2f}%' for x in shares)}")
    print(f"ratio prefect/wall: {sum(shares) / len(shares):.2f}% (mean of {len(shares)} retrain runs, "
          f"largest {max(shares):.2f}%; target <= 5%)")


if __name__ == "__main__":
    main()
