"""Guards around retrain under a temporary Prefect API: approval pauses, timeouts reject, caps stop runs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from conftest import ROOT
from tuneloop.specs import GuardSpec, TrainingSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retrain(prefect_harness):
    import sys

    sys.path.insert(0, str(ROOT))
    from tuneloop.flows.retrain import retrain

    return retrain


def spec_for(demo_files, guards: GuardSpec, hardware: str = "cpu", max_steps: int = 12):
    from test_retrain_flow import demo_spec

    spec = demo_spec(demo_files["feedback"], demo_files["heldout"])
    training = TrainingSpec(**(spec.training.model_dump() | {"max_steps": max_steps, "save_every": 2}))
    return spec.model_copy(update={"guards": guards, "hardware": hardware, "training": training})


def paused_run_ids() -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    async def go():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            return [r.id for r in runs]

    return asyncio.run(go())


def test_duration_cap_stops_the_run_cancelled_and_its_checkpoint_resumes(retrain, tiny_base, demo_files, state_dir):
    # a fast hardware row keeps the estimate under the 36 ms cap; the CPU then takes longer
    tight = spec_for(demo_files, GuardSpec(max_hours=1e-5), hardware="a100-large")
    state = retrain(tight, return_state=True)
    assert state.is_cancelled()
    assert "stopped by the guard" in state.message and "checkpoint is kept" in state.message
    runs = list((state_dir / "runs").iterdir())
    assert len(runs) == 1 and list((runs[0] / "checkpoints").iterdir())
    from tuneloop.registry import open_registry

    assert open_registry(tenant="demo").ids() == []  # a cancelled run registers nothing

    out = retrain(spec_for(demo_files, GuardSpec(), hardware="a100-large"))
    assert out["training"]["resumed_from_step"] is not None and out["training"]["resumed_from_step"] >= 1
    assert out["training"]["steps"] == 12


def test_job_over_the_approval_threshold_pauses_and_approval_resumes_it(retrain, tiny_base, demo_files, state_dir):
    from prefect.flow_runs import resume_flow_run

    spec = spec_for(demo_files, GuardSpec(approval_usd=0.0, approval_timeout_s=120), hardware="a10g-large")
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=retrain(spec)))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not paused_run_ids():
        time.sleep(0.5)
    ids = paused_run_ids()
    assert len(ids) == 1, "the run did not pause for approval"
    resume_flow_run(ids[0], run_input={"approve": True, "reason": "budget ok"})
    thread.join(timeout=300)
    assert result["out"]["version"] == "v1"


def test_no_answer_before_the_timeout_rejects(retrain, tiny_base, demo_files, state_dir):
    spec = spec_for(demo_files, GuardSpec(approval_usd=0.0, approval_timeout_s=3), hardware="a10g-large")
    state = retrain(spec, return_state=True)
    # Prefect's server allows a timed-out pause only to end Failed ("... never resumed"): rejected
    assert not state.is_completed() and "never resumed" in state.message
    assert not (state_dir / "runs").exists()  # nothing trained


def test_over_the_cap_is_refused_before_start(retrain, tiny_base, demo_files, state_dir):
    state = retrain(spec_for(demo_files, GuardSpec(max_usd=0.0), hardware="a10g-large"), return_state=True)
    assert state.is_cancelled() and state.message.startswith("refused before start")
    assert not (state_dir / "runs").exists()
