"""The installed package works outside a checkout: the wheel holds the flows, tasks and data files, and
`tuneloop retrain` from a fresh venv completes in a folder with no checkout in sight; `tuneloop up` finds the
deployment files it applies in the package, and their entrypoints load the flows from the venv.

The fresh venv gets the wheel alone (--no-deps); this venv lends it the dependencies through a `.pth`
line naming its site-packages. Python does not read the `.pth` files of a folder named that way, so the
editable install's pointer to the checkout's `src` stays out: the test checks where tuneloop comes from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources so the checkout gets no build/ or egg-info folder."""
    src = tmp_path_factory.mktemp("sdist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src],
                   check=True, timeout=300)
    (found,) = out.glob("tuneloop-*.whl")
    return found


def test_wheel_ships_every_file_of_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "src"
    in_src = {p.relative_to(package).as_posix() for p in (package / "tuneloop").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert in_src - names == set(), "add the missing files to [tool.setuptools.package-data]"
    for needed in ("tuneloop/flows/retrain.py", "tuneloop/tasks/data.py", "tuneloop/cli/runflow.py",
                   "tuneloop/assets/prefect-profiles.toml", "tuneloop/evals/metrics/exact_match/exact_match.py",
                   "tuneloop/evals/benchmarks_data/arc_easy.jsonl", "tuneloop/assets/prefect.yaml",
                   "tuneloop/assets/automations.yaml"):
        assert needed in names
    for packaged, checkout in (("prefect.yaml", "prefect.yaml"), ("automations.yaml", "deployments/automations.yaml")):
        assert zipfile.ZipFile(wheel).read(f"tuneloop/assets/{packaged}") == (ROOT / checkout).read_bytes()
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "tuneloop = tuneloop.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _venv_with(wheel: Path, where: Path, env: dict) -> Path:
    """A fresh venv holding the wheel alone; this venv's site-packages lends it the dependencies."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", where], check=True, timeout=120)
    python = where / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--force-reinstall",
                    "-q", wheel], env=env, check=True, timeout=300)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "_lent_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return where / "bin"


# What the fresh venv's commands must not inherit from this session: the checkout on the path, this session's
# Prefect home and profile, its API.
OUTSIDE = ("PYTHONPATH", "PREFECT_HOME", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE", "PREFECT_API_URL")


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """One fresh venv holding the wheel for this module's tests (they only read it)."""
    root = tmp_path_factory.mktemp("installed") / "venv"
    _venv_with(wheel, root, {k: v for k, v in os.environ.items() if k not in OUTSIDE})
    return root


PREPARE = """
import json, sys
from pathlib import Path
import yaml
from prefect.flows import load_flow_from_entrypoint
from tuneloop.cli.up import _deployment_files
from tuneloop.service.home import Home

home = Home.at(sys.argv[1])
home.root.mkdir()
deployments, automations = _deployment_files(home, Path.cwd())
config = yaml.safe_load(deployments.read_text())
flows = {d["name"]: load_flow_from_entrypoint(d["entrypoint"]) for d in config["deployments"]}
print(json.dumps({"pull": config["pull"], "automations": automations.read_text(),
                  "flows": {name: [f.name, sys.modules[f.fn.__module__].__file__] for name, f in flows.items()}}))
"""


def test_installed_up_prepares_its_deployments_outside_the_checkout(venv, tmp_path):
    """What `tuneloop up` applies, prepared in the fresh venv from a folder with no checkout: the packaged files,
    entrypoints that load every flow from the venv (as the worker's flow runs do), and Prefect's CLI as `up`
    runs it. Starting the whole service from the wheel is left to a person (minutes)."""
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE}
    bin_dir = venv / "bin"
    work = tmp_path / "elsewhere"
    work.mkdir()
    helped = subprocess.run([bin_dir / "tuneloop", "up", "--help"], cwd=work, env=env, capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "--home" in helped.stdout, helped.stderr[-3000:]
    version = subprocess.run([bin_dir / "python", "-m", "prefect", "--version"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("3.8."), version.stdout + version.stderr[-3000:]

    run = subprocess.run([bin_dir / "python", "-c", PREPARE, str(tmp_path / "home")], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(work)}}]
    assert out["automations"] == (ROOT / "deployments" / "automations.yaml").read_text()
    assert set(out["flows"]) == {"collect-feedback", "detect-drift", "retrain", "run-benchmarks", "promote",
                                 "retrain-gpu", "retrain-demo"}
    for name, (flow, source) in out["flows"].items():
        assert Path(source).is_relative_to(venv), (name, source)
    assert out["flows"]["retrain"][0] == "retrain" and out["flows"]["promote"][0] == "promote"


def test_installed_retrain_runs_outside_the_checkout(venv, tmp_path, tiny_base, demo_files):
    state = tmp_path / "state" / "not-yet"  # a state folder that does not exist yet
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PREFECT_HOME", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE")}
    env |= {"TUNELOOP_STATE_DIR": str(state), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    # TUNELOOP_MODELS_DIR stays the session's: the tiny base is built once (tiny_base)
    bin_dir = venv / "bin"
    work = tmp_path / "elsewhere"
    work.mkdir()

    probe = subprocess.run([bin_dir / "python", "-c", "import tuneloop.flows.retrain as r, tuneloop.cli.runflow as c;"
                            "print(r.__file__); print(c.__file__)"], cwd=work, env=env, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-3000:]
    where = probe.stdout.split()
    assert len(where) == 2 and all(Path(p).is_relative_to(venv) for p in where), where

    heldout = work / "heldout.jsonl"  # 20 held-out rows keep the two evaluations short
    heldout.write_text("".join(demo_files["heldout"].read_text().splitlines(keepends=True)[:20]))
    (work / "small.yaml").write_text(json.dumps({
        "data": "data.jsonl", "eval_data": "heldout.jsonl", "tenant": "demo",
        "training": {"epochs": 1, "max_steps": 2, "batch_size": 16},
        "evaluation": {"max_new_tokens": 4}}))
    run = subprocess.run([bin_dir / "tuneloop", "retrain", "--config", "small.yaml", "--data", str(demo_files["feedback"])],
                         cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    manifest = json.loads((state / "registry" / "tenants" / "demo" / "versions" / "v1" / "manifest.json").read_text())
    assert manifest["base_model"] == "tuneloop/tiny-llama"
    assert (state / "prefect").is_dir()  # Prefect's database went under the new state folder
    listed = subprocess.run([bin_dir / "tuneloop", "registry", "--tenant", "demo", "list"], cwd=work, env=env, capture_output=True,
                            text=True, check=True).stdout
    assert listed.startswith("v1 ")
