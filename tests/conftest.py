"""Shared fixtures. Everything runs offline, in temporary folders, on CPU.

Environment is set at import, before any test imports evaluate, transformers
or prefect, since they read their settings once.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="tuneloop-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
os.environ.update({
    "HF_HOME": str(_TMP / "hf"),
    "HF_MODULES_CACHE": str(_TMP / "hf" / "modules"),
    "HF_EVALUATE_CACHE": str(_TMP / "hf" / "evaluate"),
    "HF_HUB_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TUNELOOP_STATE_DIR": str(_TMP / "state"),
    "TUNELOOP_MODELS_DIR": str(_TMP / "models"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_HOME": str(_TMP / "prefect"),
    "PREFECT_PROFILES_PATH": str(Path(__file__).resolve().parents[1] / "profiles" / "profiles.toml"),
    "PREFECT_PROFILE": "local",
})

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    """A fresh tuneloop state folder (registry, runs, datasets) per test; the model cache is shared."""
    d = tmp_path / "state"
    monkeypatch.setenv("TUNELOOP_STATE_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def tiny_base() -> str:
    """The locally built tiny Llama, built once per test session."""
    from tuneloop.basemodel import resolve_base_model
    from tuneloop.specs import TINY_BASE

    return resolve_base_model(TINY_BASE, Path(os.environ["TUNELOOP_MODELS_DIR"]), log=lambda m: None)


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> dict[str, Path]:
    from tuneloop.demo_data import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo-data"), seed=0)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for all flow tests (starting one takes ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
