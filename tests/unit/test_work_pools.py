"""Work pools: GPU base job templates request GPUs; presets route to the pool their hardware needs."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import ROOT
from tuneloop.cost.hardware import work_pool_for
from tuneloop.models.presets import PRESETS

TEMPLATES = sorted((ROOT / "deployments" / "work-pools").glob("*.json"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_base_job_templates_are_prefect_shaped_and_request_gpus(path):
    template = json.loads(path.read_text())
    assert set(template) == {"job_configuration", "variables"}
    props = template["variables"]["properties"]
    # every {{ placeholder }} in the job configuration is a declared variable
    import re

    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
    assert used <= set(props), used - set(props)
    assert "gpus" in props and "gpu" in props["image"]["default"]
    text = json.dumps(template["job_configuration"])
    assert "nvidia.com/gpu" in text or '"Driver": "nvidia"' in text


def test_presets_route_to_the_pool_their_hardware_needs():
    assert work_pool_for("cpu") == "cpu-pool"
    assert work_pool_for("t4-small") == "gpu-pool" and work_pool_for("a10g-large") == "gpu-pool"
    for name, preset in PRESETS.items():
        assert work_pool_for(preset["hardware"]) == ("cpu-pool" if name == "tiny" else "gpu-pool")


def test_gpu_deployment_is_on_gpu_pool_with_4bit():
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    gpu = deployments["retrain-gpu"]
    assert gpu["work_pool"]["name"] == "gpu-pool"
    assert work_pool_for(gpu["parameters"]["spec"]["hardware"]) == "gpu-pool"
    assert gpu["parameters"]["spec"]["training"]["quantization"] == "4bit"
