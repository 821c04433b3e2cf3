"""The shared state (TUNELOOP_STATE_STORE): what one machine writes, another finds; folders complete or absent.

Two "machines" here are two state folders sharing one store folder (the S3 variant is
tests/registry/test_shared_state_s3.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.errors import UserError
from tuneloop.feedback.items import FeedbackItem
from tuneloop.feedback.store import FeedbackStore
from tuneloop.runtime.shared import SharedState, open_store, shared_state
from tuneloop.settings import Settings
from tuneloop.training.checkpoint import fetch_checkpoint, share_checkpoints


def machine(tmp_path: Path, name: str, store: Path) -> SharedState:
    settings = Settings(state_dir=tmp_path / name, state_store=str(store))
    return shared_state(settings)


def item(i: int, tenant: str = "acme", ts: str | None = None) -> FeedbackItem:
    return FeedbackItem(id=f"api:{i}", source="api", messages=({"role": "user", "content": f"q{i}"},),
                        response=f"a{i}", timestamp=ts or f"2026-12-01T00:00:{i:02d}Z", score=0.1, tenant=tenant)


def test_keys_mirror_the_state_folders_and_a_path_elsewhere_is_refused(tmp_path):
    s = machine(tmp_path, "a", tmp_path / "store")
    state = tmp_path / "a"
    assert s.key(state / "runs" / "job" / "run-1" / "checkpoints") == "runs/job/run-1/checkpoints"
    assert s.key(state / "datasets" / "abc" / "eval.jsonl") == "datasets/abc/eval.jsonl"
    assert s.key(state / "feedback" / "datasets" / "acme") == "feedback/datasets/acme"
    with pytest.raises(UserError) as e:
        s.key(tmp_path / "elsewhere" / "f.txt")
    assert "elsewhere" in str(e.value) and "TUNELOOP_STATE_DIR" in str(e.value)


def test_runs_and_datasets_folders_outside_the_state_folder_keep_their_keys(tmp_path):
    settings = Settings(state_dir=tmp_path / "a", runs_dir=tmp_path / "scratch" / "runs",
                        datasets_dir=tmp_path / "data", state_store=str(tmp_path / "store"))
    s = shared_state(settings)
    assert s.key(tmp_path / "scratch" / "runs" / "r" / "f") == "runs/r/f"
    assert s.key(tmp_path / "data" / "v" / "eval.jsonl") == "datasets/v/eval.jsonl"


def test_unset_means_no_shared_state_and_a_bad_url_is_named(tmp_path):
    assert shared_state(Settings(state_dir=tmp_path / "a")) is None
    with pytest.raises(UserError) as e:
        open_store("ftp://host/state")
    assert "ftp://host/state" in str(e.value) and "s3://" in str(e.value)


def test_a_folder_pushed_on_one_machine_is_pulled_whole_on_another(tmp_path):
    a, b = machine(tmp_path, "a", tmp_path / "store"), machine(tmp_path, "b", tmp_path / "store")
    folder = tmp_path / "a" / "datasets" / "v1"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("x\n")
    (folder / "tb").mkdir()
    (folder / "tb" / "events").write_text("local only")
    (folder / "datasheet.json").write_text("{}")
    assert a.push(folder, "datasheet.json") == 2  # TensorBoard files are this machine's view
    assert a.push(folder, "datasheet.json") == 0  # complete there already
    there = tmp_path / "b" / "datasets" / "v1"
    assert b.pull(there, "datasheet.json")
    assert (there / "train.jsonl").read_text() == "x\n" and not (there / "tb").exists()
    assert not b.pull(tmp_path / "b" / "datasets" / "v2", "datasheet.json")
    assert not (tmp_path / "b" / "datasets" / "v2").exists()


def test_a_folder_whose_marker_never_arrived_is_not_pulled(tmp_path):
    a, b = machine(tmp_path, "a", tmp_path / "store"), machine(tmp_path, "b", tmp_path / "store")
    a.store.put("datasets/v1/train.jsonl", b"x\n")  # an upload cut before its marker
    target = tmp_path / "b" / "datasets" / "v1"
    assert not b.pull(target, "datasheet.json") and not target.exists()
    a.store.put("datasets/v1/datasheet.json", b"{}")
    assert b.pull(target, "datasheet.json") and (target / "train.jsonl").exists()


def test_a_single_file_round_trips_and_a_local_copy_wins(tmp_path):
    a, b = machine(tmp_path, "a", tmp_path / "store"), machine(tmp_path, "b", tmp_path / "store")
    pin = tmp_path / "a" / "feedback" / "datasets" / "acme" / "runs" / "r1.txt"
    pin.parent.mkdir(parents=True)
    pin.write_text("v1\n")
    a.push(pin)
    mine = tmp_path / "b" / "feedback" / "datasets" / "acme" / "runs" / "r1.txt"
    assert b.pull(mine) and mine.read_text() == "v1\n"
    assert not b.pull(mine.with_name("r2.txt"))


def fake_checkpoint(run: Path, step: int, best_step: int) -> None:
    c = run / "checkpoints" / f"step-{step:07d}"
    (c / "adapter").mkdir(parents=True)
    (c / "adapter" / "adapter_model.safetensors").write_bytes(b"w%d" % step)
    (c / "optimizer.pt").write_bytes(b"o%d" % step)
    (c / "state.json").write_text(json.dumps({"global_step": step, "best_step": best_step}))
    best = run / f"best-{best_step:07d}" / "adapter"
    best.mkdir(parents=True, exist_ok=True)
    (best / "adapter_model.safetensors").write_bytes(b"b%d" % best_step)
    (best / "adapter_config.json").write_text("{}")


def test_checkpoints_follow_the_run_to_another_machine_and_pruned_ones_leave_the_store(tmp_path):
    import shutil

    a, b = machine(tmp_path, "a", tmp_path / "store"), machine(tmp_path, "b", tmp_path / "store")
    run_a = tmp_path / "a" / "runs" / "job-1" / "run-x"
    pushed: set[str] = set()
    fake_checkpoint(run_a, 2, 2)
    share_checkpoints(a, run_a, pushed)
    fake_checkpoint(run_a, 4, 2)
    shutil.rmtree(run_a / "checkpoints" / "step-0000002")  # keep_checkpoints pruned it
    share_checkpoints(a, run_a, pushed)
    keys = a.store.list("runs/job-1/run-x/")
    assert not any("step-0000002" in k for k in keys) and any("step-0000004/state.json" in k for k in keys)

    run_b = tmp_path / "b" / "runs" / "job-1" / "run-x"
    assert fetch_checkpoint(b, run_b) == "step-0000004"
    assert (run_b / "checkpoints" / "step-0000004" / "optimizer.pt").read_bytes() == b"o4"
    assert (run_b / "best-0000002" / "adapter" / "adapter_model.safetensors").read_bytes() == b"b2"
    assert fetch_checkpoint(b, run_b) is None  # it has one now: nothing fetched over it
    assert fetch_checkpoint(b, tmp_path / "b" / "runs" / "job-1" / "run-y") is None


def test_feedback_added_on_one_machine_is_read_on_another_in_one_order(tmp_path):
    a, b = machine(tmp_path, "a", tmp_path / "store"), machine(tmp_path, "b", tmp_path / "store")
    sa, sb = FeedbackStore(tmp_path / "a" / "feedback", a), FeedbackStore(tmp_path / "b" / "feedback", b)
    assert [i.id for i in sa.add([item(3), item(1)])] == ["api:3", "api:1"]
    assert [i.id for i in sb.add([item(1), item(2)])] == ["api:2"]  # api:1 is already stored (by a)
    ids_a, ids_b = [i.id for i in sa.items()], [i.id for i in sb.items()]
    assert ids_a == ids_b == ["api:1", "api:2", "api:3"]  # by timestamp, the same on both machines
    alone = FeedbackStore(tmp_path / "c" / "feedback")  # no shared state: its own ledger only
    alone.add([item(9)])
    assert [i.id for i in alone.items()] == ["api:9"]
    assert "api:9" not in {i.id for i in sa.items()}


def test_feedback_is_stored_nowhere_when_the_shared_write_fails(tmp_path):
    a = machine(tmp_path, "a", tmp_path / "store")

    class Down:
        url = "s3://down"

        def put(self, *args, **kwargs):
            raise OSError("store unreachable")

        def list(self, prefix=""):
            return []

    a.store = Down()
    store = FeedbackStore(tmp_path / "a" / "feedback", a)
    with pytest.raises(OSError):
        store.add([item(1)])
    assert store.items() == []  # the retry will add it, and share it


def test_a_tenants_fixed_eval_set_is_found_here_or_in_the_shared_state(tmp_path, monkeypatch):
    from tuneloop.tasks.data import tenant_eval_set

    store = tmp_path / "store"
    monkeypatch.setenv("TUNELOOP_STATE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("TUNELOOP_STATE_STORE", str(store))
    assert tenant_eval_set("acme") is None
    golden = tmp_path / "a" / "eval" / "acme.jsonl"
    golden.parent.mkdir(parents=True)
    golden.write_text("{}\n")
    assert tenant_eval_set("acme") == golden and tenant_eval_set("other") is None
    machine(tmp_path, "a", store).push(golden)
    monkeypatch.setenv("TUNELOOP_STATE_DIR", str(tmp_path / "b"))  # another machine: fetched from the store
    assert tenant_eval_set("acme") == tmp_path / "b" / "eval" / "acme.jsonl"
    assert (tmp_path / "b" / "eval" / "acme.jsonl").read_text() == "{}\n"
    monkeypatch.setenv("TUNELOOP_TENANT_EVAL", str(tmp_path / "golden" / "{tenant}.jsonl"))
    assert tenant_eval_set("acme") is None  # outside the shared folders: only a local copy counts
    monkeypatch.setenv("TUNELOOP_TENANT_EVAL", str(tmp_path / "golden.jsonl"))
    with pytest.raises(UserError, match=r"TUNELOOP_TENANT_EVAL=.*\{tenant\}"):
        tenant_eval_set("acme")
