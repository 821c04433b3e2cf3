"""Every shipped config and every deployment in prefect.yaml validates against its flow's spec."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from conftest import ROOT
from tuneloop.errors import SpecError
from tuneloop.specs import (CollectSpec, DriftSpec, PromoteSpec, RetrainSpec, RunBenchmarksSpec, TrainingSpec,
                            load_yaml_spec, validate_spec)

DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_prefect_yaml_deployment_parameters_validate(deployment, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    params = flow.validate_parameters(deployment["parameters"])  # Prefect's own check
    assert isinstance(params["spec"], (RetrainSpec, CollectSpec, DriftSpec, RunBenchmarksSpec, PromoteSpec))
    assert deployment["work_pool"]["name"] in {"cpu-pool", "gpu-pool"}


def test_schedules_and_triggers_are_declared():
    by_name = {d["name"]: d for d in DEPLOYMENTS}
    assert by_name["collect-feedback"]["schedules"] == [{"interval": 3600}]
    assert by_name["detect-drift"]["schedules"][0]["cron"] == "0 4 * * *"
    retrain = by_name["retrain"]
    assert retrain["schedules"] == [{"interval": 168 * 3600}]
    triggers = {t["expect"][0]: t for t in retrain["triggers"]}
    assert triggers["tuneloop.feedback.negative"]["threshold"] == 100
    assert triggers["tuneloop.feedback.negative"]["within"] == 168 * 3600
    assert triggers["tuneloop.drift.detected"]["threshold"] == 1
    promote = by_name["promote"]
    assert promote["triggers"][0]["expect"] == ["tuneloop.champion.changed"]  # emitted by tuneloop.tasks.registry
    assert promote["concurrency_limit"] == 1


def test_triggers_are_valid_prefect_triggers():
    from prefect.events import DeploymentEventTrigger

    for d in DEPLOYMENTS:
        for t in d.get("triggers", []):
            DeploymentEventTrigger(**t)


def test_deployment_with_a_bad_parameter_is_refused(monkeypatch):
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.syspath_prepend(str(ROOT))
    flow = load_flow_from_entrypoint(str(ROOT / "src/tuneloop/flows/retrain.py") + ":retrain")
    with pytest.raises(ParameterTypeError):
        flow.validate_parameters({"spec": {"data": "x.jsonl", "training": {"rank": 0}}})


SPEC_BY_PREFIX = {"retrain": RetrainSpec, "collect": CollectSpec, "detect-drift": DriftSpec}


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "deployments").glob("*.yaml")
                                         if p.name != "automations.yaml"),  # Prefect automations, not a spec
                         ids=lambda p: p.name)
def test_shipped_configs_load(path):
    model = next(m for prefix, m in SPEC_BY_PREFIX.items() if path.name.startswith(prefix))
    assert isinstance(load_yaml_spec(path, model), model)


def test_demo_preset_loads_and_differs_from_defaults_only_where_documented():
    raw = yaml.safe_load(resources.files("tuneloop").joinpath("assets/demo-preset.yaml").read_text())
    spec = validate_spec(raw)
    assert spec.training.learning_rate != TrainingSpec().learning_rate
    assert spec.training.rank == 16 and spec.training.alpha == 32  # the LoRA shape itself is the default


def test_defaults_are_the_documented_production_ones():
    t = TrainingSpec()
    assert (t.rank, t.alpha, t.dropout) == (16, 32, 0.1)
    assert t.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert (t.learning_rate, t.batch_size, t.gradient_accumulation, t.epochs) == (2e-4, 4, 4, 3)
    assert (t.warmup_steps, t.weight_decay) == (100, 0.01)


@pytest.mark.parametrize("raw, field", [
    ({"data": "f.jsonl", "training": {"rank": 0}}, "training.rank"),
    ({"data": "f.jsonl", "training": {"quantization": "8bit"}}, "training.quantization"),
    ({"data": "f.jsonl", "gate": {"min_metrics": {"acc": 0.5}}}, "gate.min_metrics"),
    ({"data": "f.jsonl", "trainig": {}}, "trainig"),
    ({"feedback": {"min_score": 2}}, "feedback.min_score"),
])
def test_bad_spec_names_the_field_and_the_fix(raw, field):
    with pytest.raises(SpecError) as e:
        validate_spec(raw)
    assert field in str(e.value) and "Fix:" in str(e.value)


def test_yaml_errors_are_user_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_yaml_spec(bad)
    with pytest.raises(SpecError, match="does not exist"):
        load_yaml_spec(tmp_path / "missing.yaml")
