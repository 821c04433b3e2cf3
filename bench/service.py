"""The service's figures, through the `openai` SDK against a real `tuneloop up`, in one run:

    .venv/bin/python bench/service.py [--quick] [--epochs 10]

1. time from `fine_tuning.jobs.create` to `running` (training started) and to `succeeded`;
2. the same retrain with `tuneloop retrain` (the CLI, in-process Prefect) on the same file and spec: its wall
   time, and the job's over it (the price of the service: queue, worker, process start);
3. time to first token (a one-token answer) for a model whose adapter is not loaded yet, then loaded;
4. memory the API process adds per extra loaded adapter: the job's checkpoints are models too, each loaded
   by one request; RSS of the `tuneloop up` process and the pool's measured adapter bytes after each.

The demo task (402 rows, no tenant field), the demo preset, the tiny base. Prints one table; exits 1 if the
job does not succeed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BASE = "tuneloop/tiny-llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 epochs instead of the preset's 10")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    epochs = 3 if args.quick else args.epochs

    import openai
    import yaml

    from tuneloop.demo.data import write_demo_data

    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-service-"))
    data = write_demo_data(work / "demo")
    train = work / "train.jsonl"
    train.write_text("".join(json.dumps({k: v for k, v in json.loads(x).items() if k != "tenant"}) + "\n"
                             for x in data["feedback"].read_text().splitlines()))
    home, port = work / "home", free_port()
    env = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TUNELOOP_MODELS_DIR": str(work / "models")}
    log = work / "up.log"
    t0 = time.perf_counter()
    up = subprocess.Popen([str(BIN / "tuneloop"), "up", "--home", str(home), "--port", str(port)],
                          stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    try:
        while "tuneloop is up" not in log.read_text():
            if up.poll() is not None or time.perf_counter() - t0 > 300:
                print(log.read_text()[-3000:])
                return 1
            time.sleep(0.2)
        boot = time.perf_counter() - t0
        key = subprocess.run([str(BIN / "tuneloop"), "keys", "create", "--tenant", "bench", "--home", str(home)],
                             capture_output=True, text=True, check=True, env=env).stdout.splitlines()[0]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        f = client.files.create(file=open(train, "rb"), purpose="fine-tune")
        t0 = time.perf_counter()
        job = client.fine_tuning.jobs.create(model=BASE, training_file=f.id, hyperparameters={"n_epochs": epochs})
        seen = {}
        while True:
            job = client.fine_tuning.jobs.retrieve(job.id)
            seen.setdefault(job.status, time.perf_counter() - t0)
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.25)
        wall = time.perf_counter() - t0
        if job.status != "succeeded":
            print(f"job {job.status}: {job.error}")
            return 1

        spec = json.loads((home / "jobs" / "bench" / f"{job.id}.json").read_text())["spec"]
        spec.pop("job")
        cli_home = work / "cli"
        (work / "spec.yaml").write_text(yaml.safe_dump(spec))
        t1 = time.perf_counter()
        subprocess.run([str(BIN / "tuneloop"), "retrain", "--config", str(work / "spec.yaml")], check=True,
                       capture_output=True, cwd=work, env=env | {"TUNELOOP_STATE_DIR": str(cli_home),
                                                                   "PREFECT_HOME": str(cli_home / "prefect")})
        cli_wall = time.perf_counter() - t1

        ask = [{"role": "user", "content": "I was charged twice for my order"}]
        models = [job.fine_tuned_model] + [c.fine_tuned_model_checkpoint
                                           for c in client.fine_tuning.jobs.checkpoints.list(job.id).data]
        client.chat.completions.create(model=BASE, messages=ask, max_tokens=1)  # the shared base, loaded once
        base_rss = rss_mib(up.pid)
        cold, warm, rows = [], [], []
        for i, m in enumerate(models):
            t = time.perf_counter()
            client.chat.completions.create(model=m, messages=ask, max_tokens=1)
            cold.append(time.perf_counter() - t)
            for _ in range(3):
                t = time.perf_counter()
                client.chat.completions.create(model=m, messages=ask, max_tokens=1)
                warm.append(time.perf_counter() - t)
            rows.append((i + 1, rss_mib(up.pid) - base_rss))
    finally:
        os.kill(up.pid, signal.SIGTERM)
        up.wait(timeout=60)
    per_adapter = (rows[-1][1] - rows[0][1]) / max(len(rows) - 1, 1)
    print(f"machine: {os.cpu_count()} CPUs; tiny base; demo preset, {epochs} epochs, {job.trained_tokens} tokens")
    print(f"tuneloop up ready in {boot:.1f} s")
    print(f"job: create -> validating/queued/running at "
          + ", ".join(f"{k} {v:.1f} s" for k, v in seen.items()) + f"; create -> succeeded {wall:.1f} s")
    print(f"tuneloop retrain (CLI, same file and spec): {cli_wall:.1f} s; job / CLI = {wall / cli_wall:.2f}")
    print(f"time to first token, adapter not loaded: median {statistics.median(cold) * 1000:.0f} ms "
          f"(n={len(cold)}); loaded: median {statistics.median(warm) * 1000:.0f} ms (n={len(warm)})")
    print("RSS of tuneloop up over the loaded base, per adapters loaded: "
          + ", ".join(f"{n}: +{d:.1f} MiB" for n, d in rows) + f"; per extra adapter {per_adapter:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
