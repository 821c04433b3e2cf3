"""Remote trainers against loopback fakes of OpenAI fine-tuning and an AutoTrain-style service,
the local trainer behind the same interface, and the job life cycle they all report in."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from fakes.autotrain_server import archive_folder, fake_autotrain
from fakes.job_service import Fail, Slow
from fakes.openai_finetune_server import fake_openai_finetune
from tuneloop.data.validate import Row
from tuneloop.errors import TransientError, UnsafeFileError, UserError
from tuneloop.specs import TrainingSpec
from tuneloop.training import (
    IllegalTransition, Job, JobFailed, JobResult, Trainer, check_transition, make_trainer, note_from_prefect,
    status_from_prefect,
)
from tuneloop.training.remote.autotrain import UnsafeArchiveError, unpack_adapter
from tuneloop.training.jobs import STATUSES

KEY = "sk-test-key"
MODEL = "gpt-4o-mini-2024-07-18"
SPEC = TrainingSpec(epochs=2, batch_size=4, gradient_accumulation=2, seed=7, rank=4, alpha=8)
FAST = dict(poll_interval=0.005, backoff=0.01, timeout=5)


def rows(n: int, start: int = 0) -> list[Row]:
    return [Row(line=i + 1, messages=[{"role": "system", "content": "You answer in one word."},
                                      {"role": "user", "content": f"What is item {i}? ünïcode ✓"},
                                      {"role": "assistant", "content": f"answer-{i}"}])
            for i in range(start, start + n)]


TRAIN, VAL = rows(12), rows(3, start=100)


def statuses(events) -> list[str]:
    return [e.data["status"] for e in events if e.type == "status"]


# -- OpenAI fine-tuning ---------------------------------------------------------------------------

@pytest.mark.server
def test_openai_happy_path_uploads_chat_jsonl_reports_events_in_order_and_returns_the_model(tmp_path):
    with fake_openai_finetune(api_key=KEY, total_steps=6, checkpoint_every=2) as ft:
        trainer = make_trainer("openai", base_url=ft.url, api_key=KEY, suffix="intents", events_page=3, **FAST)
        seen, lines = [], []
        result = trainer.train(SPEC, MODEL, TRAIN, VAL, tmp_path / "run", log=lines.append, progress=seen.append)
        job = ft.jobs[result.job_id]

    # the uploads are exactly the rows, in OpenAI chat format, as fine-tune files
    (create,) = ft.calls("POST /v1/fine_tuning/jobs")
    body = create["body"]
    assert ft.file_rows(body["training_file"]) == [{"messages": r.messages} for r in TRAIN]
    assert ft.file_rows(body["validation_file"]) == [{"messages": r.messages} for r in VAL]
    assert {f["purpose"] for f in ft.files.values()} == {"fine-tune"}
    assert all(f["filename"].endswith(".jsonl") for f in ft.files.values())
    assert body["model"] == MODEL and body["suffix"] == "intents" and body["seed"] == 7
    assert body["hyperparameters"] == {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": "auto"}
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in ft.requests)

    # every service event reached `progress` once, oldest first; paging used `after`
    assert [e.message for e in seen if e.type != "status"] == [e["message"] for e in job.events]
    assert any("after" in r["query"] for r in ft.calls("GET /v1/fine_tuning/jobs/*/events"))
    assert statuses(seen) == ["validating_files", "queued", "running", "succeeded"]
    assert [e.data["step"] for e in seen if e.type == "metrics"] == [1, 2, 3, 4, 5, 6]

    assert isinstance(result, JobResult) and result.trainer == "openai" and result.status == "succeeded"
    assert result.remote_model == job.fine_tuned_model and result.remote_model.startswith(f"ft:{MODEL}:")
    assert result.adapter_dir is None and result.stopped_reason is None
    assert (result.steps, result.total_steps) == (6, 6)
    assert result.final_loss == pytest.approx(2.0 / 6, abs=1e-4)
    assert result.best_val_loss == pytest.approx(2.2 / 4) and result.best_step == 4  # step 6 got worse
    assert result.train_tokens == job.trained_tokens > 0
    assert [c["step"] for c in result.checkpoints] == [2, 4, 6]
    assert result.checkpoints[-1]["model"].endswith("ckpt-step-6")
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["remote_model"] == result.remote_model and saved["adapter_dir"] is None
    assert json.loads((tmp_path / "run" / "job.json").read_text())["job"]["status"] == "succeeded"
    assert any(result.job_id in line and "created job" in line for line in lines)


@pytest.mark.server
def test_openai_should_stop_cancels_the_job_and_says_why(tmp_path):
    calls = []

    def guard(step, total, elapsed):
        calls.append((step, total, elapsed))
        return "guard: projected $12.00 is above guards.max_usd=$10.00" if step >= 3 else None

    with fake_openai_finetune(api_key=KEY, total_steps=10) as ft:
        trainer = make_trainer("openai", base_url=ft.url, api_key=KEY, **FAST)
        seen = []
        result = trainer.train(SPEC, MODEL, TRAIN, [], tmp_path / "run", log=lambda m: None, should_stop=guard,
                               progress=seen.append)
        job = ft.jobs[result.job_id]
    assert len(ft.calls("POST /v1/fine_tuning/jobs/*/cancel")) == 1
    assert job.status == "cancelled" and job.step == 3
    assert result.status == "cancelled" and result.stopped_reason.startswith("guard: projected $12.00")
    assert result.remote_model is None and (result.steps, result.total_steps) == (3, 10)
    assert statuses(seen)[-2:] == ["running", "cancelled"]
    assert calls[0] == (0, 0, 0.0)  # before it runs: no step, no billed time
    assert (3, 10) in [(s, t) for s, t, _ in calls] and all(e >= 0 for _, _, e in calls)
    assert "validation_file" not in ft.calls("POST /v1/fine_tuning/jobs")[0]["body"]


@pytest.mark.server
def test_openai_run_guard_counts_only_running_time(tmp_path):
    from tuneloop.cost.guards import GuardSpec, RunGuard, estimate

    guard = RunGuard(GuardSpec(max_hours=1e-7), estimate(1000, 1, 10**6, "a100-large"))  # 0.36 ms of running
    with fake_openai_finetune(api_key=KEY, total_steps=50, slow=2) as ft:  # 4 polls in validating/queued
        trainer = make_trainer("openai", base_url=ft.url, api_key=KEY, **FAST)
        seen = []
        result = trainer.train(SPEC, MODEL, TRAIN, [], tmp_path / "run", log=lambda m: None, should_stop=guard,
                               progress=seen.append)
    assert result.status == "cancelled" and "guards.max_hours" in result.stopped_reason
    assert statuses(seen) == ["validating_files", "queued", "running", "cancelled"]  # queue time was not billed
    assert ft.jobs[result.job_id].step < 50


@pytest.mark.parametrize("fail_at", ["validating_files", 2])
@pytest.mark.server
def test_openai_failed_job_raises_with_the_services_message(tmp_path, fail_at):
    with fake_openai_finetune(api_key=KEY, fail_at=fail_at) as ft:
        trainer = make_trainer("openai", base_url=ft.url, api_key=KEY, **FAST)
        seen = []
        with pytest.raises(JobFailed, match=r"invalid_training_file.*Example 3, message 2: content is missing") as e:
            trainer.train(SPEC, MODEL, TRAIN, VAL, tmp_path / "run", log=lambda m: None, progress=seen.append)
    assert e.value.job.status == "failed" and e.value.job.error.code == "invalid_training_file"
    assert statuses(seen)[-1] == "failed"
    assert [x.level for x in seen if x.type == "message"][-1] == "error"
    assert json.loads((tmp_path / "run" / "job.json").read_text())["job"]["status"] == "failed"


@pytest.mark.server
def test_openai_429_and_5xx_are_retried_with_one_idempotency_key(tmp_path):
    with fake_openai_finetune(api_key=KEY) as ft:
        ft.fail_next("POST /v1/fine_tuning/jobs", Fail(429, "Rate limit reached for requests", retry_after="0"))
        ft.fail_next("GET /v1/fine_tuning/jobs/*", Fail(503, "The server is overloaded"), Fail(502))
        trainer = make_trainer("openai", base_url=ft.url, api_key=KEY, **FAST)
        result = trainer.train(SPEC, MODEL, TRAIN, VAL, tmp_path / "run", log=lambda m: None)
    creates = ft.calls("POST /v1/fine_tuning/jobs")
    assert len(creates) == 2 and len(ft.jobs) == 1 and result.status == "succeeded"
    assert creates[0]["headers"]["idempotency-key"] == creates[1]["headers"]["idempotency-key"]
    assert ft.calls("POST /v1/files")[0]["headers"]["idempotency-key"] != creates[0]["headers"]["idempotency-key"]


@pytest.mark.server
def test_openai_transient_failures_give_up_after_the_bounded_retries(tmp_path):
    with fake_openai_finetune(api_key=KEY) as ft:
        ft.fail_next("POST /v1/files", Fail(500), Fail(500), Fail(500))
        trainer = make_trainer("openai", base_url=ft.url, api_key=KEY, max_retries=2, **FAST)
        with pytest.raises(TransientError, match="HTTP 500.*gave up after 3 attempts"):
            trainer.train(SPEC, MODEL, TRAIN, VAL, tmp_path / "run", log=lambda m: None)
        assert len(ft.calls("POST /v1/files")) == 3 and not ft.files

        ft.fail_next("POST /v1/files", Slow(2.0), Slow(2.0))
        trainer = make_trainer("openai", base_url=ft.url, api_key=KEY, max_retries=1,
                               **(FAST | {"timeout": 0.2}))
        with pytest.raises(TransientError, match="timed out.*gave up after 2 attempts"):
            trainer.train(SPEC, MODEL, TRAIN, VAL, tmp_path / "run", log=lambda m: None)


@pytest.mark.server
def test_a_retried_run_follows_the_job_its_first_attempt_started(tmp_path):
    with fake_openai_finetune(api_key=KEY, total_steps=4) as ft:
        ft.fail_next("GET /v1/fine_tuning/jobs/*", Fail(500), Fail(500))
        flaky = make_trainer("openai", base_url=ft.url, api_key=KEY, max_retries=1, **FAST)
        with pytest.raises(TransientError):  # the job exists; only following it failed
            flaky.train(SPEC, MODEL, TRAIN, VAL, tmp_path / "run", log=lambda m: None)
        (first,) = ft.jobs
        trainer = make_trainer("openai", base_url=ft.url, api_key=KEY, **FAST)
        lines = []
        result = trainer.train(SPEC, MODEL, TRAIN, VAL, tmp_path / "run", log=lines.append)
        assert result.job_id == first and result.status == "succeeded" and len(ft.files) == 2  # no second upload
        assert any("earlier attempt" in line for line in lines)
        changed = trainer.train(SPEC, MODEL, TRAIN[:-1], VAL, tmp_path / "run", log=lambda m: None)
        assert changed.job_id != first and len(ft.jobs) == 2  # other rows: a new job


@pytest.mark.server
def test_openai_401_is_a_user_error_naming_the_api_key_and_writes_nothing(tmp_path):
    with fake_openai_finetune(api_key="sk-the-right-one") as ft:
        trainer = make_trainer("openai", base_url=ft.url, api_key="sk-wrong", **FAST)
        with pytest.raises(UserError, match="refused the API key .*HTTP 401.*Fix: .*OPENAI_API_KEY"):
            trainer.train(SPEC, MODEL, TRAIN, VAL, tmp_path / "run", log=lambda m: None)
    assert len(ft.requests) == 1 and not ft.files and not ft.jobs  # not retried, nothing uploaded
    assert not (tmp_path / "run").exists()
    assert "sk-wrong" not in repr(trainer)


@pytest.mark.server
def test_openai_400_names_the_field_and_its_fix_and_quota_is_not_retried(tmp_path):
    with fake_openai_finetune(api_key=KEY, models={MODEL}) as ft:
        trainer = make_trainer("openai", base_url=ft.url, api_key=KEY, **FAST)
        with pytest.raises(UserError, match=r"model='gpt-nope': .*HTTP 400.*not available.*Fix: pass a base model"):
            trainer.train(SPEC, "gpt-nope", TRAIN, VAL, tmp_path / "a", log=lambda m: None)
        with pytest.raises(UserError, match=r"hyperparameters.n_epochs=99: .*Fix: set training.epochs"):
            trainer.train(SPEC.model_copy(update={"epochs": 99}), MODEL, TRAIN, VAL, tmp_path / "b",
                          log=lambda m: None)
        ft.fail_next("POST /v1/files", Fail(429, "You exceeded your current quota", err_code="insufficient_quota"))
        with pytest.raises(UserError, match="no quota left"):
            trainer.train(SPEC, MODEL, TRAIN, VAL, tmp_path / "c", log=lambda m: None)
    assert len(ft.calls("POST /v1/files")) == 4 + 1  # two runs x two files, then one refused upload


def test_make_trainer_reads_the_key_from_the_environment_and_names_a_missing_one(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY.*is not set"):
        make_trainer("openai")
    monkeypatch.setenv("MY_KEY", "sk-env")
    t = make_trainer("openai", api_key_env="MY_KEY", base_url="http://127.0.0.1:9/v1")
    assert t.http.http.headers["authorization"] == "Bearer sk-env"
    with pytest.raises(UserError, match="is not a trainer kind"):
        make_trainer("sagemaker")


# -- AutoTrain-style service ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_random_base(tmp_path_factory) -> str:
    """The tiny Llama's architecture and tokenizer, randomly initialized: no pretraining, built in seconds."""
    import tuneloop.models.base as basemodel

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(basemodel, "pretrain", lambda *a, **k: {"pretrain_epochs": 0})
        return str(basemodel.build_tiny_base(tmp_path_factory.mktemp("base") / "tiny", log=lambda m: None))


@pytest.fixture(scope="module")
def lora_adapter(tiny_random_base, tmp_path_factory) -> Path:
    """A real LoRA adapter (peft, safetensors) on the tiny base, with non-zero B so it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_random_base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


@pytest.mark.server
def test_autotrain_happy_path_downloads_a_loadable_adapter(tmp_path, tiny_random_base, lora_adapter):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    with fake_autotrain(token="hf_test", adapter=archive_folder(lora_adapter, "tar.gz"), total_steps=4) as at:
        trainer = make_trainer("autotrain", base_url=at.url, token="hf_test", **FAST)
        seen = []
        result = trainer.train(SPEC, tiny_random_base, TRAIN, VAL, tmp_path / "run", log=lambda m: None,
                               progress=seen.append)
    (create,) = at.calls("POST /train")
    body = create["body"]
    assert body["data"] == {"format": "chat", "train": [{"messages": r.messages} for r in TRAIN],
                            "valid": [{"messages": r.messages} for r in VAL]}
    assert body["params"]["lora_r"] == 4 and body["params"]["gradient_accumulation"] == 2
    assert body["params"]["target_modules"] == "q_proj,k_proj,v_proj,o_proj" and body["task"] == "llm-sft"
    assert at.calls("GET /health") and all(r["headers"]["authorization"] == "Bearer hf_test" for r in at.requests)

    assert statuses(seen) == ["validating_files", "queued", "running", "succeeded"]
    assert [e.data["step"] for e in seen if e.type == "metrics"] == [1, 2, 3, 4]
    assert result.trainer == "autotrain" and result.status == "succeeded" and result.remote_model is None
    assert (result.steps, result.total_steps, result.final_loss) == (4, 4, 0.75)
    assert result.best_val_loss == pytest.approx(3.3 / 4) and result.best_step == 4

    assert result.adapter_dir == tmp_path / "run" / "adapter"
    got = sorted(p.name for p in result.adapter_dir.iterdir())
    assert got == sorted(p.name for p in lora_adapter.iterdir())
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []  # no staging left
    src, dst = (load_file(str(d / "adapter_model.safetensors")) for d in (lora_adapter, result.adapter_dir))
    assert src.keys() == dst.keys() and all(torch.equal(src[k], dst[k]) for k in src)
    base = AutoModelForCausalLM.from_pretrained(tiny_random_base)
    ids = torch.tensor([[1, 5, 9, 13]])
    before = base(input_ids=ids).logits
    tuned = PeftModel.from_pretrained(base, str(result.adapter_dir))
    assert not torch.allclose(tuned(input_ids=ids).logits, before)  # the adapter loads and changes the model


@pytest.mark.server
def test_autotrain_zip_archive_and_a_service_that_keeps_the_model(tmp_path, lora_adapter):
    with fake_autotrain(adapter=archive_folder(lora_adapter, "zip", prefix=""), content_type="application/zip",
                        total_steps=2) as at:
        trainer = make_trainer("autotrain", base_url=at.url, **FAST)
        result = trainer.train(SPEC, "some/base", TRAIN, [], tmp_path / "zip", log=lambda m: None)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert "authorization" not in at.requests[0]["headers"]  # no token configured, none sent

    with fake_autotrain(keep_model="me/tuned-intents", total_steps=2) as at:
        trainer = make_trainer("autotrain", base_url=at.url, **FAST)
        result = trainer.train(SPEC, "some/base", TRAIN, [], tmp_path / "kept", log=lambda m: None)
    assert result.adapter_dir is None and result.remote_model == "me/tuned-intents"
    assert not (tmp_path / "kept" / "adapter").exists()


@pytest.mark.server
def test_autotrain_cancel_failure_and_bad_token(tmp_path, lora_adapter):
    archive = archive_folder(lora_adapter)
    with fake_autotrain(adapter=archive, total_steps=8) as at:
        trainer = make_trainer("autotrain", base_url=at.url, **FAST)
        result = trainer.train(SPEC, "b", TRAIN, [], tmp_path / "c", log=lambda m: None,
                               should_stop=lambda s, t, e: "operator asked to stop" if s >= 2 else None)
        assert result.status == "cancelled" and result.stopped_reason == "operator asked to stop"
        assert at.jobs[result.job_id].status == "cancelled" and result.adapter_dir is None
        assert len(at.calls("POST /train/*/cancel")) == 1 and not at.calls("GET /train/*/adapter")

    with fake_autotrain(adapter=archive, fail_at=2) as at:
        trainer = make_trainer("autotrain", base_url=at.url, **FAST)
        with pytest.raises(JobFailed, match=r"failed \(training_error\): CUDA out of memory"):
            trainer.train(SPEC, "b", TRAIN, [], tmp_path / "f", log=lambda m: None)

    with fake_autotrain(token="hf_right", adapter=archive) as at:
        trainer = make_trainer("autotrain", base_url=at.url, token="hf_wrong", **FAST)
        with pytest.raises(UserError, match="refused the token .*HTTP 401.*HF_TOKEN"):
            trainer.train(SPEC, "b", TRAIN, [], tmp_path / "t", log=lambda m: None)
        assert [r["path"] for r in at.requests] == ["/health"] and not at.jobs


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


@pytest.mark.parametrize("bad, error, match", [
    ([_file("../../evil.safetensors", b"x")], UnsafeArchiveError, "outside the adapter folder"),
    ([_file("/etc/adapter_config.json", b"{}")], UnsafeArchiveError, "outside the adapter folder"),
    ([_link("adapter_config.json", "/etc/passwd")], UnsafeArchiveError, "is a link"),
    ([_file("adapter_config.json", b"{}"), _file("adapter_model.bin", b"pickle")], UnsafeFileError,
     "adapter_model.bin"),
    ([_file("adapter_config.json", b"{}"), _file("run.sh", b"rm -rf /")], UnsafeArchiveError, "unexpected file"),
    ([_file("adapter_config.json", b"{}")], UnsafeArchiveError, "lacks.*adapter_model.safetensors"),
    ([_file("adapter_config.json", b"{}"), _file("adapter_model.safetensors", b"not really")],
     UnsafeArchiveError, "not a valid safetensors"),
])
def test_unpack_adapter_refuses_unsafe_archives(tmp_path, bad, error, match):
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar(bad))
    with pytest.raises(error, match=match):
        unpack_adapter(archive, tmp_path / "out")
    assert not (tmp_path / "evil.safetensors").exists() and not list((tmp_path / "out").glob("**/*.bin"))


@pytest.mark.model
def test_unpack_adapter_zip_traversal_and_size_cap(tmp_path, lora_adapter):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("adapter/../../escape.json", "{}")
    with pytest.raises(UnsafeArchiveError, match="outside"):
        unpack_adapter(evil, tmp_path / "out")
    good = tmp_path / "good.tar"
    good.write_bytes(archive_folder(lora_adapter, "tar"))
    with pytest.raises(UnsafeArchiveError, match="more than 1,000 bytes"):
        unpack_adapter(good, tmp_path / "capped", max_bytes=1000)


@pytest.mark.server
def test_autotrain_unsafe_download_leaves_no_adapter(tmp_path):
    evil = _tar([_file("adapter_config.json", b"{}"), _file("adapter_model.safetensors", b"x"),
                 _file("../outside.safetensors", b"x")])
    with fake_autotrain(adapter=evil, total_steps=1) as at:
        trainer = make_trainer("autotrain", base_url=at.url, **FAST)
        with pytest.raises(UnsafeArchiveError):
            trainer.train(SPEC, "b", TRAIN, [], tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "outside.safetensors").exists()
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["job.json"]


# -- the local trainer behind the same interface -----------------------------------------------------

@pytest.mark.model
def test_local_trainer_shares_the_interface(tmp_path, tiny_random_base):
    spec = TrainingSpec(batch_size=4, gradient_accumulation=1, epochs=1, max_steps=2, save_every=50,
                        learning_rate=1e-3, warmup_steps=0, early_stopping_patience=None, rank=4, alpha=8)
    seen = []
    result = make_trainer("local").train(spec, tiny_random_base, TRAIN, VAL, tmp_path / "run",
                                         log=lambda m: None, progress=seen.append)
    assert isinstance(make_trainer("local"), Trainer)
    assert isinstance(result, JobResult) and result.trainer == "local" and result.status == "succeeded"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file() and result.remote_model is None
    assert statuses(seen) == ["running", "succeeded"]
    assert [e.data["step"] for e in seen if e.type == "metrics"] == [1, 2]
    assert result.to_json()["adapter_dir"] == str(tmp_path / "run" / "adapter")


# -- job life cycle and Prefect states --------------------------------------------------------------

def test_job_lifecycle_allows_its_paths_and_refuses_the_rest():
    job = Job(id="ftjob-1", status="validating_files", model="m")
    for s in ("queued", "running", "queued", "running", "succeeded"):  # running -> queued: paused, then resumed
        assert job.advance(s)
    assert job.terminal and job.finished_at is not None
    assert not Job(id="j", status="queued", model="m").advance("queued")  # polling the same status is no change
    check_transition("validating_files", "succeeded")  # a poller may miss the states in between
    for old, new in [("succeeded", "running"), ("failed", "succeeded"), ("cancelled", "queued"),
                     ("running", "validating_files"), ("queued", "validating_files")]:
        with pytest.raises(IllegalTransition, match=f"cannot go from {old} to {new}"):
            check_transition(old, new)
    with pytest.raises(IllegalTransition, match="job status 'done'; known: validating_files"):
        Job(id="j", status="running", model="m").advance("done")

    paused = Job(id="j", status="running", model="m")
    paused.advance("paused")  # OpenAI's newer pause state reads as queued, with a note
    assert paused.status == "queued" and "paused" in paused.note

    parsed = Job.from_openai({"id": "ftjob-2", "status": "failed", "model": MODEL, "created_at": 1,
                              "error": {"code": "invalid_training_file", "message": "bad", "param": "training_file"},
                              "hyperparameters": {"n_epochs": 3}, "fine_tuned_model": None, "finished_at": 2})
    assert parsed.terminal and parsed.error.param == "training_file" and parsed.hyperparameters == {"n_epochs": 3}
    assert Job.from_openai({"id": "j", "status": "running", "error": {"code": None, "message": None}}).error is None


@pytest.mark.parametrize("state_type, name, status, note", [
    ("SCHEDULED", "Scheduled", "queued", None),
    ("SCHEDULED", "Late", "queued", "late"),
    ("SCHEDULED", "AwaitingRetry", "queued", "retry"),
    ("PENDING", "Pending", "queued", None),
    ("RUNNING", "Running", "running", None),
    ("RUNNING", "Retrying", "running", "again"),
    ("COMPLETED", "Completed", "succeeded", None),
    ("COMPLETED", "Cached", "succeeded", "cache"),
    ("FAILED", "Failed", "failed", None),
    ("FAILED", "TimedOut", "failed", "timeout"),
    ("CRASHED", "Crashed", "failed", "infrastructure"),
    ("CANCELLED", "Cancelled", "cancelled", None),
    ("CANCELLING", "Cancelling", "cancelled", "not stopped yet"),
    ("PAUSED", "Paused", "queued", "paused"),
    ("PAUSED", "Suspended", "queued", "suspended"),
    ("StateType.RUNNING", None, "running", None),
    ("running", "Running", "running", None),
])
def test_prefect_states_map_to_job_statuses(state_type, name, status, note):
    assert status_from_prefect(state_type, name) == status
    got = note_from_prefect(state_type, name)
    assert (got is None) if note is None else (note in got)


def test_every_real_prefect_state_maps():
    from prefect.client.schemas.objects import StateType
    from prefect.states import AwaitingRetry, Crashed, Late, Paused, Suspended

    assert {status_from_prefect(t.value) for t in StateType} == set(STATUSES) - {"validating_files"}
    for state, status in [(Late(), "queued"), (AwaitingRetry(), "queued"), (Crashed(), "failed"),
                          (Paused(), "queued"), (Suspended(), "queued")]:
        assert status_from_prefect(state.type, state.name) == status
        assert note_from_prefect(state.type, state.name)
    with pytest.raises(ValueError, match="unknown Prefect state type"):
        status_from_prefect("EXPLODED", "Exploded")


def test_a_running_retrain_reads_validating_files_until_training_starts():
    from tuneloop.training.jobs import phase_from_tasks

    assert phase_from_tasks("running", ["prepare-base-model-a1b", "validate-dataset-c2d"])[0] == "validating_files"
    assert phase_from_tasks("running", ["validate-dataset-c2d", "estimate-job-x"])[1].startswith("checking the data")
    assert phase_from_tasks("running", ["validate-dataset-c2d", "train-adapter-e3f"]) == ("running", None)
    assert phase_from_tasks("running", []) == ("running", None)  # a flow that has started no task yet
    assert phase_from_tasks("queued", ["validate-dataset-c2d"]) == ("queued", None)  # paused for approval
    assert phase_from_tasks("running", ["validate-datasets-x"]) == ("running", None)  # names match exactly
