"""A new user's first `tuneloop retrain` with bad data, as typed: a state folder that does not exist yet,
and a validation report they should read once, not four times."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_bad_data_is_reported_once_under_a_new_state_folder(tmp_path, tiny_base):
    rows = [{"messages": [{"role": "user", "content": f"question {i}?"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(20)]
    for i in (2, 5, 8, 11, 14):  # five rows with nothing to learn from
        rows[i]["messages"] = rows[i]["messages"][:1]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    state = tmp_path / "does" / "not" / "exist"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_PROFILES_PATH")}
    env |= {"TUNELOOP_STATE_DIR": str(state), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}

    run = subprocess.run([sys.executable, "-m", "tuneloop.cli.main", "retrain", "--config",
                          str(ROOT / "deployments" / "retrain-default.yaml"), "--data", "bad.jsonl"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out[-3000:]
    assert "unable to open database file" not in out and "Traceback" not in out, out[-3000:]
    for line in (3, 6, 9, 12, 15):
        assert out.count(f"line {line}: no_assistant") == 1, out
    assert out.count("5 data problem(s)") == 4  # Prefect's three failure lines name it; the CLI prints it
    assert (state / "reports" / "validation-bad.json").exists()
