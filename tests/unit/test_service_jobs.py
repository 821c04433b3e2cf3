"""The fine-tuning job request, the spec it becomes, and how a job's status reads from its run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuneloop.errors import UserError
from tuneloop.service import jobs as J
from tuneloop.service.requests import build_spec, parse_create
from tuneloop.specs import TINY_BASE


def req(**over):
    return parse_create({"model": TINY_BASE, "training_file": "file-" + "a" * 24, **over})


def test_defaults_come_from_the_demo_preset_for_the_tiny_base(tmp_path):
    spec, shown = build_spec(req(), TINY_BASE, "acme", "ftjob-" + "1" * 24, tmp_path / "t.jsonl", None)
    assert spec.training.learning_rate == 0.003 and spec.training.epochs == 10  # assets/demo-preset.yaml
    assert spec.tenant == "acme" and spec.job == "ftjob-" + "1" * 24 and spec.eval_data is None
    assert shown["n_epochs"] == 10 and shown["batch_size"] == 16 and shown["preset"] == "demo"


def test_hyperparameters_override_the_preset_and_the_multiplier_scales_its_rate(tmp_path):
    r = req(seed=5, method={"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}}})
    spec, shown = build_spec(r, TINY_BASE, "acme", "ftjob-" + "2" * 24, tmp_path / "t.jsonl", tmp_path / "v.jsonl")
    assert (spec.training.epochs, spec.training.batch_size, spec.training.gradient_accumulation) == (2, 8, 1)
    assert spec.training.learning_rate == pytest.approx(0.0015) and spec.training.seed == 5
    assert spec.dataset.seed == 5 and spec.eval_data == tmp_path / "v.jsonl"
    legacy = req(hyperparameters={"n_epochs": "auto", "batch_size": 4})
    assert legacy["hyperparameters"] == {"batch_size": 4}


def test_a_dpo_job_trains_with_dpo_and_its_beta(tmp_path):
    body = {"model": TINY_BASE, "training_file": "file-x",
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2}}}}
    spec, shown = build_spec(parse_create(body), TINY_BASE, "acme", "ftjob-" + "5" * 24, tmp_path / "t.jsonl", None)
    assert (spec.training.method, spec.training.beta, spec.training.epochs) == ("dpo", 0.25, 2)
    assert shown["beta"] == 0.25
    plain, _ = build_spec(parse_create({"model": TINY_BASE, "training_file": "file-x", "method": {"type": "dpo"}}),
                          TINY_BASE, "acme", "ftjob-" + "6" * 24, tmp_path / "t.jsonl", None)
    assert (plain.training.method, plain.training.beta) == ("dpo", 0.1)


def test_a_base_without_a_preset_trains_with_the_production_defaults(tmp_path):
    spec, shown = build_spec(req(model="org/some-model"), "org/some-model", "acme", "ftjob-" + "3" * 24,
                             tmp_path / "t.jsonl", None)
    assert spec.training.learning_rate == 2e-4 and shown["preset"] == "production"


@pytest.mark.parametrize("body, param", [
    ({"model": TINY_BASE}, "training_file"),
    ({"training_file": "file-x"}, "model"),
    ({"model": TINY_BASE, "training_file": "f", "suffix": "has space"}, "suffix"),
    ({"model": TINY_BASE, "training_file": "f", "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"model": TINY_BASE, "training_file": "f", "hyperparameters": {"epochs": 3}}, "hyperparameters.epochs"),
    ({"model": TINY_BASE, "training_file": "f", "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}},
     "method.dpo.hyperparameters.beta"),
    ({"model": TINY_BASE, "training_file": "f", "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"beta": 0.1}}}}, "method.supervised.hyperparameters.beta"),
    ({"model": TINY_BASE, "training_file": "f", "method": {"type": "reinforcement"}}, "method.type"),
    ({"model": TINY_BASE, "training_file": "f", "integrations": [{"type": "wandb"}]}, "integrations"),
    ({"model": TINY_BASE, "training_file": "f", "metadata": {"k": 1}}, "metadata"),
    ({"model": TINY_BASE, "training_file": "f", "colour": "red"}, "colour"),
])
def test_a_bad_request_names_its_field(body, param):
    with pytest.raises(UserError) as e:
        parse_create(body)
    assert e.value.param == param and "Fix:" in str(e.value)


def record(tmp_path: Path, **over) -> dict:
    return {"id": "ftjob-" + "4" * 24, "tenant": "acme", "created_at": 1.0, "model": TINY_BASE,
            "base_model": TINY_BASE, "training_file": "file-a", "validation_file": None, "suffix": None, "seed": 0,
            "metadata": {}, "method": "supervised", "hyperparameters": {"n_epochs": 1}, "runs": ["r1"],
            "status": None, "fine_tuned_model_name": "ft:x:acme::4444", **over}


@pytest.mark.parametrize("state, tasks, status", [
    ("SCHEDULED", [], "queued"), ("PENDING", [], "queued"), ("RUNNING", [], "validating_files"),
    ("RUNNING", ["prepare-base-model-0", "validate-dataset-1"], "validating_files"),
    ("RUNNING", ["validate-dataset-1", "train-adapter-2"], "running"),
    ("CRASHED", [], "running"), ("CANCELLING", [], "running"),
])
def test_a_live_run_reads_as_openais_status(tmp_path, state, tasks, status):
    assert J.observe(record(tmp_path), J.RunView(state, started_tasks=tasks), None, tmp_path) == (status, {})


def test_an_ended_run_writes_the_outcome(tmp_path):
    version = SimpleNamespace(id="v2", manifest={"training": {"train_tokens": 1234}, "incumbent": {"label": "base"}},
                              status={"status": "champion", "reason": "better", "decision": {"metric": "exact_match"}},
                              metrics={"exact_match": 0.8})
    status, out = J.observe(record(tmp_path), J.RunView("COMPLETED"), version, tmp_path)
    assert status == "succeeded" and out["fine_tuned_model"] == "ft:x:acme::4444" and out["trained_tokens"] == 1234
    assert out["gate"]["promoted"] is True and out["version"] == "v2"
    status, out = J.observe(record(tmp_path), J.RunView("CANCELLED", message="over budget"), None, tmp_path)
    assert status == "failed" and out["error"]["code"] == "stopped_by_guard" and "over budget" in out["error"]["message"]
    status, out = J.observe(record(tmp_path, cancel_requested=True), J.RunView("RUNNING"), None, tmp_path)
    assert (status, out) == ("cancelled", {})  # not final until the run has stopped
    status, out = J.observe(record(tmp_path, cancel_requested=True), J.RunView("CANCELLED"), None, tmp_path)
    assert status == "cancelled" and out["status"] == "cancelled"
    status, out = J.observe(record(tmp_path, pause_requested=True), J.RunView("CANCELLED"), None, tmp_path)
    assert (status, out["status"]) == ("paused", "paused")


def test_events_and_checkpoints_come_from_the_run_folder(tmp_path):
    rec = record(tmp_path)
    J.add_event(rec, "Fine-tuning job queued")
    run = tmp_path / rec["id"] / "run-abc"
    history = [{"step": 1, "loss": 2.0, "t": 10.0}, {"step": 2, "loss": 1.5, "val_loss": 1.7, "t": 11.0}]
    ck = run / "checkpoints" / "step-0000002"
    ck.mkdir(parents=True)
    (ck / "adapter").mkdir()
    (ck / "state.json").write_text(json.dumps({"global_step": 2, "last_loss": 1.5, "best_val": 1.7,
                                               "history": history}))
    (run / "progress.json").write_text(json.dumps({"step": 2, "total": 4, "elapsed_s": 2.0, "at": 12.0}))
    events = J.events(rec, tmp_path)
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["data"] for m in metrics] == [{"step": 2, "train_loss": 1.5, "valid_loss": 1.7, "total_steps": 4},
                                            {"step": 1, "train_loss": 2.0, "total_steps": 4}]
    assert len({e["id"] for e in events}) == len(events)
    first, more = J.page(events, None, 1)
    rest, _ = J.page(events, first[0]["id"], 10)
    assert more and [e["id"] for e in first + rest] == [e["id"] for e in events]
    [c] = J.checkpoints(rec, tmp_path)
    assert c["step_number"] == 2 and c["fine_tuned_model_checkpoint"] == "ft:x:acme::4444:ckpt-step-2"
    assert c["metrics"] == {"step": 2, "train_loss": 1.5, "valid_loss": 1.7, "full_valid_loss": 1.7}
    assert J.checkpoint_adapter(rec, tmp_path, 2) == ck / "adapter"
    assert J.estimated_finish(rec, tmp_path) == 14


@pytest.mark.parametrize("bad", ["ftjob-../../x", "file-abc", "ftjob-" + "a" * 24 + "/x", 7])
def test_job_ids_never_reach_a_path(tmp_path, bad):
    with pytest.raises(J.NotFound):
        J.JobStore(tmp_path).get("acme", bad)


def test_a_base_named_by_a_shipped_preset_trains_with_that_preset(tmp_path):
    base = "microsoft/Phi-3-mini-4k-instruct"
    spec, shown = build_spec(req(model=base), base, "acme", "ftjob-" + "5" * 24, tmp_path / "t.jsonl", None)
    assert shown["preset"] == "phi-3-mini" and spec.hardware == "t4-small"
    assert spec.training.quantization == "4bit" and spec.training.target_modules == ("qkv_proj", "o_proj")


def test_a_model_that_exists_wins_over_a_late_stop_and_a_crash_is_not_an_end(tmp_path):
    version = SimpleNamespace(id="v1", manifest={"training": {}}, status={"status": "candidate"}, metrics={})
    for flag in ("cancel_requested", "pause_requested"):
        status, out = J.observe(record(tmp_path, **{flag: True}), J.RunView("COMPLETED"), version, tmp_path)
        assert status == "succeeded" and out["version"] == "v1"
    status, out = J.observe(record(tmp_path, cancel_requested=True), J.RunView("CRASHED"), None, tmp_path)
    assert (status, out) == ("cancelled", {})  # the retry automation may yet start it: not final


def test_an_outcome_seen_on_an_older_run_is_not_written(tmp_path):
    from tuneloop.service.service import _finish

    rec = record(tmp_path, runs=["r1", "r2"], pause_requested=False)
    _finish(rec, {"status": "paused"}, "r1")  # a reader saw r1 cancelled by the pause; the job was resumed since
    assert rec["status"] is None
    _finish(rec, {"status": "failed", "finished_at": 5, "error": {"message": "x"}}, "r1")
    assert rec["status"] is None
    _finish(rec, {"status": "failed", "finished_at": 5, "error": {"message": "x"}}, "r2")
    assert rec["status"] == "failed" and rec["events"][-1]["level"] == "error"


def test_a_job_base_is_a_hub_id_the_tiny_base_or_a_folder_under_the_models_folder(tmp_path, monkeypatch):
    from tuneloop.service.home import Home
    from tuneloop.service.service import Service

    models = tmp_path / "models"
    (models / "mine").mkdir(parents=True)
    (models / "mine" / "config.json").write_text("{}")
    monkeypatch.setenv("TUNELOOP_MODELS_DIR", str(models))
    service = Service(Home.at(tmp_path / "home"))
    assert service._base_for("acme", TINY_BASE) == (TINY_BASE, None)
    assert service._base_for("acme", "org/some-model") == ("org/some-model", None)
    assert service._base_for("acme", "mine") == (str((models / "mine").resolve()), None)
    for bad in ("/etc", "../../etc", str(tmp_path), "~/x", "mine/../../..", "not a model", "champion"):
        with pytest.raises(UserError):
            service._base_for("acme", bad)
