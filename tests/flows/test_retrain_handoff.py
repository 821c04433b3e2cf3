"""A retrain whose hardware needs a GPU, started on a worker without one, hands itself to the GPU deployment."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tuneloop.cost.hardware import placement
from tuneloop.specs import RetrainSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def retrain(prefect_harness):
    sys.path.insert(0, str(ROOT))
    from tuneloop.flows.retrain import retrain

    return retrain


def test_placement_rule():
    assert placement("t4-small", gpu_here=False) == "gpu-pool"
    assert placement("t4-small", gpu_here=True) == "here"
    assert placement("cpu", gpu_here=False) == "here"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this worker has a GPU: nothing to hand off")
def test_gpu_hardware_on_a_cpu_worker_hands_off(retrain, demo_files, state_dir):
    from prefect.client.orchestration import get_client

    retrain.to_deployment(name="retrain-gpu-test").apply()
    spec = RetrainSpec(data=demo_files["feedback"], hardware="t4-small", gpu_deployment="retrain/retrain-gpu-test")
    out = retrain(spec)
    assert out["deployment"] == "retrain/retrain-gpu-test" and "needs a GPU" in out["reason"]
    assert not (state_dir / "registry").exists()  # nothing trained or registered here
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(out["handed_off_to"])
        dep = client.read_deployment_by_name("retrain/retrain-gpu-test")
    assert run.deployment_id == dep.id and run.state.is_scheduled()
    sent = run.parameters["spec"]
    assert sent["hardware"] == "t4-small" and sent["gpu_deployment"] is None  # it won't bounce again
