"""Shared fixtures. Everything runs offline, in temporary folders, on CPU.

Environment is set at import, before any test imports evaluate, transformers
or prefect, since they read their settings once.
"""

from __future__ import annotations

import atexit
import functools
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
    "PREFECT_PROFILES_PATH": str(Path(__file__).resolve().parents[1] / "src" / "tuneloop" / "assets" / "prefect-profiles.toml"),
    "PREFECT_PROFILE": "local",
})
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # Parallel workers already fill the cores: one math thread per process (and per server, worker and flow
    # run it starts, which inherit this). Two processes that each spread work over every core busy-wait on
    # each other's threads; a training step measured 3.6 s with one thread against 5.5 s with two under load.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import subprocess  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from importlib import resources  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from fakes.base import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# -- test tiers: `pytest -m "not slow"` (make test-fast) is the inner loop. A test that trains or runs a model,
# starts Prefect, or starts a server or a process is `slow`, and one of the finer marks below says which. A
# test using one of these fixtures gets its mark (and `slow`) by rule; a test marked `model`, `prefect` or
# `server` by hand gets `slow` too; the guard installed by `pytest_configure` fails a fast test that does
# any of it anyway.
TIER_FIXTURES = {
    "model": ("tiny_base",),  # good_adapter, broken_adapter, registry and make_server build on it
    "prefect": ("prefect_harness",),
    "server": ("s3_endpoint", "make_server", "langsmith_fake"),
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark, fixtures in TIER_FIXTURES.items():
            if not item.get_closest_marker(mark) and any(f in item.fixturenames for f in fixtures):
                item.add_marker(mark)
        if not item.get_closest_marker("slow") and any(item.get_closest_marker(m) for m in TIER_FIXTURES):
            item.add_marker("slow")


class TierError(AssertionError):
    """A test outside the slow tier did something slow."""


_FAST_TEST: list[str | None] = [None]  # the node id of the fast test being set up, run or torn down


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Covers the test's fixtures of every scope, not only the test body."""
    _FAST_TEST[0] = None if item.get_closest_marker("slow") else item.nodeid
    try:
        yield
    finally:
        _FAST_TEST[0] = None


def _refuse(what: str, mark: str) -> None:
    if _FAST_TEST[0] is not None:
        raise TierError(f"{_FAST_TEST[0]} {what}, but is not marked slow: add @pytest.mark.{mark} "
                        "(or use a fixture from TIER_FIXTURES in tests/conftest.py)")


def _guarded(module, name: str, what: str, mark: str) -> None:
    original = getattr(module, name)

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        _refuse(what, mark)
        return original(*args, **kwargs)

    setattr(module, name, guarded)


def pytest_configure(config):
    """The tier guard: in a fast test, training, building the tiny base, loading MiniLM, starting a process
    (Prefect's API server, moto, the CLI) or listening on a socket fails at once, naming the mark to add."""
    import tuneloop.drift.embeddings
    import tuneloop.models.base
    import tuneloop.training.loop

    _guarded(tuneloop.training.loop, "build_lora_model", "trains a LoRA adapter", "model")
    _guarded(tuneloop.models.base, "build_tiny_base", "builds the tiny base model", "model")
    _guarded(tuneloop.drift.embeddings, "_load_minilm", "loads the MiniLM embedding model", "model")
    _guarded(socket.socket, "listen", "starts a server (listens on a socket)", "server")
    popen_init = subprocess.Popen.__init__

    @functools.wraps(popen_init)
    def popen(self, args, *rest, **kwargs):
        if _FAST_TEST[0] is not None:
            cmd = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
            cmd = " ".join(cmd.split())  # `python -c` code on one line
            _refuse(f"starts a process ({cmd[:120]})", "prefect" if "prefect" in cmd else "server")
        popen_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = popen


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    """A fresh tuneloop state folder (registry, runs, datasets) per test; the model cache is shared."""
    d = tmp_path / "state"
    monkeypatch.setenv("TUNELOOP_STATE_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def tiny_base() -> str:
    """The locally built tiny Llama, built once per test session."""
    from tuneloop.models.base import resolve_base_model
    from tuneloop.specs import TINY_BASE

    return resolve_base_model(TINY_BASE, Path(os.environ["TUNELOOP_MODELS_DIR"]), log=lambda m: None)


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> dict[str, Path]:
    from tuneloop.demo.data import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo-data"), seed=0)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for all flow tests (starting one takes ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server for the whole session, with fake credentials and AWS_ENDPOINT_URL pointing at it."""
    from fakes.s3_server import moto_s3_server

    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
             "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3")
    saved = {k: os.environ.pop(k, None) for k in names}
    with moto_s3_server() as endpoint:
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
        try:
            yield endpoint
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the session's moto server."""
    import uuid

    import boto3

    name = f"tuneloop-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


# -- serving: a trained adapter, a registry holding it, real HTTP servers (uvicorn on loopback) --

@pytest.fixture(scope="session")
def good_adapter(tiny_base, demo_files, tmp_path_factory) -> Path:
    """The demo preset's LoRA trained on the demo feedback (~20 s): answers the intent task well."""
    from tuneloop.data import prepare_dataset
    from tuneloop.specs import DataSpec, TrainingSpec
    from tuneloop.training import train_lora

    preset = yaml.safe_load(resources.files("tuneloop").joinpath("assets/demo-preset.yaml").read_text())
    spec = TrainingSpec(**preset["training"])
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    res = train_lora(spec, tiny_base, ds.train, ds.validation, tmp_path_factory.mktemp("train") / "run",
                     log=lambda m: None)
    return Path(res.adapter_dir)


@pytest.fixture(scope="session")
def broken_adapter(good_adapter, tmp_path_factory) -> Path:
    """The good adapter with its LoRA B matrices scrambled: loads and answers, but wrongly."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("broken") / "adapter"
    shutil.copytree(good_adapter, out)
    weights = load_file(out / "adapter_model.safetensors")
    g = torch.Generator().manual_seed(0)
    weights = {k: (torch.randn(v.shape, generator=g) * 0.5 if "lora_B" in k else v) for k, v in weights.items()}
    save_file(weights, out / "adapter_model.safetensors")
    return out


@pytest.fixture
def registry(state_dir, good_adapter, broken_adapter):
    """A local registry: v1 and v2 the same good adapter (v2 child of v1), v3 the broken one."""
    from tuneloop.registry import open_registry

    reg = open_registry()
    for adapter, parent in ((good_adapter, None), (good_adapter, "v1"), (broken_adapter, "v2")):
        reg.create_version(adapter, base_model="tuneloop/tiny-llama", dataset_version="demo",
                           parent_version=parent, spec={}, metrics={})
    return reg


class Server:
    def __init__(self, app, port: int):
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # log_config=None: uvicorn must not bind log handlers to a capture stream pytest closes after the test
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def make_server(registry, tiny_base):
    """Start a server whose blue slot serves `first` (a registry ref or "base")."""
    from tuneloop.serving.app import Loader, create_app
    from tuneloop.serving.slots import Router

    started = []

    def make(first: str = "v1", admin_token: str | None = None, allow_faults: bool = True) -> Server:
        loader = Loader(registry, "tuneloop/tiny-llama")
        router = Router()
        router.load("blue", lambda: loader(first))
        srv = Server(create_app(router, loader, "tuneloop", admin_token, registry, allow_faults), free_port())
        started.append(srv.__enter__())
        return srv

    yield make
    for s in started:
        s.__exit__(None, None, None)


# -- the fuzz report (tests/fuzz): each surface records `surface: N inputs, K accepted, M rejected`; the
# lines are printed at the end of the session (a passing test's output is not shown otherwise) and written
# to .tuneloop/fuzz-report.txt. Here, not in tests/fuzz/conftest.py: a second conftest module would shadow
# this one for the tests that `from conftest import ROOT`.
FUZZ_REPORT = ROOT / ".tuneloop" / "fuzz-report.txt"
_FUZZ_LINES: list[str] = []


@pytest.fixture
def fuzz_report():
    """Call with a `Tally` once the surface has run; it goes into the session's fuzz report."""

    def record(tally) -> None:
        _FUZZ_LINES.append(tally.line())
        if tally.reasons:
            top = sorted(tally.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:6]
            _FUZZ_LINES.append("    rejected for: " + "; ".join(f"{reason} ({n})" for reason, n in top))

    return record


def pytest_sessionfinish(session, exitstatus):
    """Under pytest-xdist, a worker hands its fuzz lines to the controller, which prints the report."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fuzz_lines"] = list(_FUZZ_LINES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # the controller, as each xdist worker ends
    _FUZZ_LINES.extend(getattr(node, "workeroutput", {}).get("fuzz_lines", []))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _FUZZ_LINES or hasattr(config, "workeroutput"):
        return
    terminalreporter.section("fuzz report: inputs tried")
    for line in _FUZZ_LINES:
        terminalreporter.write_line(line)
    FUZZ_REPORT.parent.mkdir(parents=True, exist_ok=True)
    FUZZ_REPORT.write_text("\n".join(_FUZZ_LINES) + "\n", encoding="utf-8")
    terminalreporter.write_line(f"(also written to {FUZZ_REPORT.relative_to(ROOT)})")
