"""The GPU work pools' base job templates carry what a retrain on another machine needs: the shared-state
settings and the bucket's credentials by secret name, no host path; the GPU deployment's code comes from its
image."""

from __future__ import annotations

import json
import re

import yaml
from prefect.utilities.templating import apply_values

from conftest import ROOT

POOLS = ROOT / "deployments" / "work-pools"
SHARED = ("TUNELOOP_REGISTRY", "TUNELOOP_TENANT_REGISTRY", "TUNELOOP_STATE_STORE")


def render(name: str, **values) -> dict:
    template = json.loads((POOLS / name).read_text())
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    return apply_values(template["job_configuration"], defaults | values)


def declared_and_used(name: str) -> tuple[set[str], set[str]]:
    template = json.loads((POOLS / name).read_text())
    used = set(re.findall(r"{{ *([a-z_]+) *}}", json.dumps(template["job_configuration"])))
    return set(template["variables"]["properties"]), used


def test_every_placeholder_of_each_template_is_a_declared_variable():
    for name in ("docker-gpu.json", "kubernetes-gpu.json"):
        declared, used = declared_and_used(name)
        assert used <= declared, (name, used - declared)


def test_kubernetes_takes_settings_and_credentials_from_a_config_map_and_a_secret_by_name():
    job = render("kubernetes-gpu.json", env={"EXTRA": "1"}, command="prefect flow-run execute")
    container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": "tuneloop-settings"}},
                                    {"secretRef": {"name": "tuneloop-s3"}}]
    other = render("kubernetes-gpu.json", settings_config_map="team-a", credentials_secret="team-a-s3")
    assert other["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": "team-a"}}, {"secretRef": {"name": "team-a-s3"}}]
    description = json.loads((POOLS / "kubernetes-gpu.json").read_text())["variables"]["properties"]
    assert all(k in description["settings_config_map"]["description"] for k in SHARED)
    assert "hostPath" not in (POOLS / "kubernetes-gpu.json").read_text()


def test_docker_reads_the_settings_from_prefect_variables_and_the_keys_from_secret_blocks():
    job = render("docker-gpu.json", env={"TUNELOOP_STATE_STORE": "s3://mine/state", "EXTRA": "1"})
    env = json.loads((POOLS / "docker-gpu.json").read_text())["job_configuration"]["env"]
    assert set(SHARED) <= set(env)
    assert env["TUNELOOP_STATE_STORE"] == "{{ prefect.variables.tuneloop_state_store }}"
    assert env["AWS_SECRET_ACCESS_KEY"] == "{{ prefect.blocks.secret.tuneloop-aws-secret-access-key }}"
    assert isinstance(job["env"], dict)
    template = json.loads((POOLS / "docker-gpu.json").read_text())
    assert "default" not in template["variables"]["properties"]["volumes"]  # no host folder mounted


def test_the_gpu_deployment_takes_its_code_from_the_image_folder():
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    pull = deployments["retrain-gpu"]["pull"]
    folder = pull[0]["prefect.deployments.steps.set_working_directory"]["directory"]
    dockerfile = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert f"WORKDIR {folder}\n" in dockerfile and "COPY src ./src" in dockerfile
