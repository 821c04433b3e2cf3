"""Running a flow from the command line: Prefect's settings, then the flow itself (shipped in the package)."""

from __future__ import annotations

import importlib
import os
from importlib import resources


def prefect_env() -> None:
    """Point Prefect at tuneloop's profiles (shipped in the package) and keep its database under the
    state folder, which is created here so Prefect never fails on a missing folder."""
    from tuneloop.settings import get_settings

    state = get_settings().state_dir
    state.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    os.environ.setdefault("PREFECT_PROFILES_PATH", str(resources.files("tuneloop") / "assets" / "prefect-profiles.toml"))
    os.environ.setdefault("PREFECT_PROFILE", "local")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def import_flow(name: str):
    """The flow `name` from `tuneloop.flows`, with Prefect's environment set first."""
    prefect_env()
    module = importlib.import_module(f"tuneloop.flows.{name}")
    return getattr(module, name.replace("-", "_"))
