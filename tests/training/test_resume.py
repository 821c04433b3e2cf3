"""A training run killed with SIGKILL resumes from its last checkpoint and ends exactly where an
uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

CONFIG = {
    "tenant": "demo",
    "training": {"batch_size": 4, "gradient_accumulation": 2, "epochs": 3, "max_steps": 60, "save_every": 5,
                 "eval_every": 10, "dropout": 0.1, "learning_rate": 0.003, "warmup_steps": 10, "seed": 7,
                 "early_stopping_patience": None},
    "dataset": {"validation_split": 0.1, "test_split": 0.1},
}


def train_cmd(config: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tuneloop.cli.main", "train", "--config", str(config), "--data", str(data),
            "--out", str(out), *extra]


def run_to_end(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_base, demo_files, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(CONFIG | {"data": str(demo_files["feedback"])}))
    data = demo_files["feedback"]

    straight = run_to_end(train_cmd(config, data, tmp_path / "straight", "--no-resume"))
    assert straight["steps"] == 60 and straight["resumed_from_step"] is None

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(config, data, killed_dir, "--no-resume"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = killed_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.name >= "step-0000015" for p in ckpts.iterdir() if p.name.startswith("step-")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / "result.json").exists()

    resumed = run_to_end(train_cmd(config, data, killed_dir))
    assert resumed["resumed_from_step"] is not None and 15 <= resumed["resumed_from_step"] < 60
    assert resumed["steps"] == 60
    assert abs(resumed["final_loss"] - straight["final_loss"]) <= 1e-6
    assert resumed["best_val_loss"] is not None
    assert abs(resumed["best_val_loss"] - straight["best_val_loss"]) <= 1e-6
    assert resumed["train_tokens"] == straight["train_tokens"]
