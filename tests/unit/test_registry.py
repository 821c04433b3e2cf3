"""The local registry: atomic versions, checksums, lineage, aliases and the CLI over it."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

import tuneloop.registry.local as local
from tuneloop.cli import main
from tuneloop.errors import NotFoundError, RegistryError, UserError
from tuneloop.registry import LocalRegistry, Version, open_registry

SPEC = {"training": {"rank": 4, "epochs": 1}, "gate": {"metric": "exact_match", "margin": 0.02}}
MANIFEST_FIELDS = {"id", "base_model", "files", "dataset_version", "parent_version", "spec", "metrics", "created_at"}


def make_adapter(folder: Path, payload: bytes = b"\x00\x01fake-lora-weights" * 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(payload)
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def new_version(reg: LocalRegistry, adapter: Path, *, em: float = 0.5, parent: str | None = None,
                data: str = "d" * 64) -> Version:
    return reg.create_version(adapter, base_model="tuneloop/tiny-llama", dataset_version=data,
                              parent_version=parent, spec=SPEC, metrics={"exact_match": em, "token_f1": em + 0.1})


def hidden_leftovers(reg: LocalRegistry) -> list[str]:
    if not reg.versions_dir.exists():
        return []
    return sorted(p.name for p in reg.versions_dir.iterdir() if p.name.startswith("."))


@pytest.fixture
def reg(tmp_path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


@pytest.fixture
def adapter(tmp_path) -> Path:
    return make_adapter(tmp_path / "adapter")


# -- creating versions ----------------------------------------------------------
def test_empty_registry(reg):
    assert reg.ids() == []
    assert reg.aliases() == {}
    assert reg.champion() is None
    assert reg.list() == []


def test_create_version_numbers_and_manifest(reg, adapter):
    v1 = new_version(reg, adapter, em=0.4)
    v2 = new_version(reg, adapter, em=0.6, parent="v1", data="e" * 64)
    assert (v1.id, v2.id) == ("v1", "v2")
    assert reg.ids() == ["v1", "v2"]

    m = v2.manifest
    assert MANIFEST_FIELDS <= set(m)
    assert m["id"] == "v2"
    assert m["base_model"] == "tuneloop/tiny-llama"
    assert m["dataset_version"] == "e" * 64
    assert m["parent_version"] == "v1"
    assert v1.manifest["parent_version"] is None
    assert m["spec"] == SPEC
    assert m["metrics"] == {"exact_match": 0.6, "token_f1": pytest.approx(0.7)}
    assert v2.metrics == m["metrics"]
    assert m["created_at"].endswith("+00:00")
    assert v2.status == {"status": "candidate"}

    paths = sorted(f["path"] for f in m["files"])
    assert paths == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    for f in m["files"]:
        stored = v2.path / f["path"]
        assert f["sha256"] == sha256(stored)
        assert f["sha256"] == sha256(adapter / Path(f["path"]).name)  # same bytes as the source
        assert f["bytes"] == stored.stat().st_size
    assert (v2.adapter_dir / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors").read_bytes()

    on_disk = json.loads((reg.versions_dir / "v2" / "manifest.json").read_text())
    assert on_disk == m
    assert hidden_leftovers(reg) == []


def test_extra_fields_land_in_manifest(reg, adapter):
    v = reg.create_version(adapter, base_model="b", dataset_version="d", parent_version=None, spec={},
                           metrics={}, extra={"run_id": "r-123"})
    assert v.manifest["run_id"] == "r-123"


def test_nested_adapter_files_are_checksummed(reg, adapter):
    (adapter / "sub").mkdir()
    (adapter / "sub" / "tokenizer.json").write_text("{}")
    v = new_version(reg, adapter)
    assert "adapter/sub/tokenizer.json" in {f["path"] for f in v.manifest["files"]}
    assert reg.verify("v1") == []


def test_folder_without_adapter_config_is_refused(reg, tmp_path):
    bad = tmp_path / "not-an-adapter"
    bad.mkdir()
    (bad / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(RegistryError, match="adapter_config.json"):
        new_version(reg, bad)
    assert reg.ids() == []
    assert hidden_leftovers(reg) == []


def test_version_ids_continue_after_gaps_and_ignore_junk(reg, adapter):
    new_version(reg, adapter)
    new_version(reg, adapter)
    (reg.versions_dir / "v7-notes").mkdir()  # no manifest: not a version
    (reg.versions_dir / ".new.abandoned").mkdir()  # a stale staging folder: not a version
    assert reg.ids() == ["v1", "v2"]
    assert new_version(reg, adapter).id == "v3"


def test_ids_sort_numerically(reg, adapter):
    for _ in range(11):
        new_version(reg, adapter)
    assert reg.ids()[-3:] == ["v9", "v10", "v11"]
    assert new_version(reg, adapter).id == "v12"


# -- integrity ------------------------------------------------------------------
def test_verify_intact_and_tampered(reg, adapter):
    new_version(reg, adapter)
    new_version(reg, adapter)
    assert reg.verify("v1") == []
    weights = reg.versions_dir / "v1" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"tampered")
    assert reg.verify("v1") == ["adapter/adapter_model.safetensors"]
    assert reg.verify("v2") == []  # other versions are untouched


def test_verify_reports_a_deleted_file(reg, adapter):
    new_version(reg, adapter)
    (reg.versions_dir / "v1" / "adapter" / "adapter_config.json").unlink()
    assert reg.verify("v1") == ["adapter/adapter_config.json"]


# -- aliases and lookups --------------------------------------------------------
def test_aliases_set_resolve_get(reg, adapter):
    new_version(reg, adapter)
    new_version(reg, adapter)
    reg.set_alias("champion", "v1")
    reg.set_alias("challenger", "v2")
    assert reg.aliases() == {"champion": "v1", "challenger": "v2"}
    assert json.loads((reg.root / "aliases.json").read_text()) == {"champion": "v1", "challenger": "v2"}
    assert reg.resolve("champion") == "v1"
    assert reg.resolve("v2") == "v2"
    assert reg.get("challenger").id == "v2"
    assert reg.champion().id == "v1"

    reg.set_alias("challenger", "champion")  # an alias may be set from another alias
    assert reg.aliases()["challenger"] == "v1"
    reg.set_alias("challenger", None)
    assert reg.aliases() == {"champion": "v1"}
    reg.set_alias("challenger", None)  # clearing an unset alias is fine
    assert reg.aliases() == {"champion": "v1"}


def test_unknown_alias_name_raises(reg, adapter):
    new_version(reg, adapter)
    with pytest.raises(RegistryError, match="unknown alias 'best'"):
        reg.set_alias("best", "v1")
    assert reg.aliases() == {}


def test_alias_to_unknown_version_raises(reg, adapter):
    new_version(reg, adapter)
    with pytest.raises(NotFoundError):
        reg.set_alias("champion", "v9")
    assert reg.aliases() == {}


def test_unknown_ref_lists_known_versions(reg, adapter):
    new_version(reg, adapter)
    new_version(reg, adapter)
    reg.set_alias("champion", "v2")
    with pytest.raises(NotFoundError) as err:
        reg.get("v42")
    msg = str(err.value)
    assert "'v42'" in msg
    assert "v1, v2, champion" in msg
    assert "tuneloop registry list" in msg
    assert isinstance(err.value, UserError) and isinstance(err.value, RegistryError)


def test_unknown_ref_in_empty_registry(reg):
    with pytest.raises(NotFoundError, match="none yet"):
        reg.get("champion")


# -- gate decisions -------------------------------------------------------------
def test_record_decision_promote_retires_previous_champion(reg, adapter):
    new_version(reg, adapter, em=0.4)
    reg.record_decision("v1", {"promote": True, "reason": "promoted: first model"})
    assert reg.champion().id == "v1"
    assert reg.get("v1").status["status"] == "champion"
    assert reg.get("v1").status["replaced"] is None

    new_version(reg, adapter, em=0.6, parent="v1")
    reg.set_alias("challenger", "v2")
    decision = {"promote": True, "reason": "promoted: exact_match 0.6 vs 0.4"}
    reg.record_decision("challenger", decision)

    assert reg.aliases() == {"champion": "v2"}  # challenger cleared once decided
    s2 = json.loads((reg.versions_dir / "v2" / "status.json").read_text())
    assert s2["status"] == "champion"
    assert s2["reason"] == decision["reason"]
    assert s2["decision"] == decision
    assert s2["replaced"] == "v1"
    s1 = json.loads((reg.versions_dir / "v1" / "status.json").read_text())
    assert s1["status"] == "retired"
    assert "v2" in s1["reason"]


def test_record_decision_reject_keeps_champion(reg, adapter):
    new_version(reg, adapter, em=0.6)
    reg.record_decision("v1", {"promote": True, "reason": "promoted"})
    new_version(reg, adapter, em=0.3, parent="v1")
    reg.set_alias("challenger", "v2")
    reason = "rejected: exact_match gain over champion is -0.3, needs >= 0.02"
    reg.record_decision("v2", {"promote": False, "reason": reason})

    assert reg.aliases() == {"champion": "v1"}
    assert "challenger" not in reg.aliases()
    v2 = reg.get("v2")
    assert v2.status["status"] == "rejected"
    assert v2.status["reason"] == reason
    assert v2.status["decision"]["promote"] is False
    assert reg.get("v1").status["status"] == "champion"
    assert reg.ids() == ["v1", "v2"]  # a loser is kept, not deleted


def test_record_decision_leaves_unrelated_challenger(reg, adapter):
    for _ in range(3):
        new_version(reg, adapter)
    reg.set_alias("challenger", "v3")
    reg.record_decision("v2", {"promote": False, "reason": "rejected: x"})
    assert reg.aliases() == {"challenger": "v3"}


def test_record_decision_unknown_ref(reg, adapter):
    new_version(reg, adapter)
    with pytest.raises(NotFoundError):
        reg.record_decision("v5", {"promote": True, "reason": "x"})
    assert reg.aliases() == {}


def test_compare_gives_deltas(reg, adapter):
    new_version(reg, adapter, em=0.4)
    reg.create_version(adapter, base_model="b", dataset_version="d", parent_version="v1", spec={},
                       metrics={"exact_match": 0.7, "bleu": 0.2})
    rows = {r["metric"]: r for r in reg.compare("v1", "v2")}
    assert set(rows) == {"exact_match", "token_f1", "bleu"}
    assert rows["exact_match"]["v1"] == 0.4 and rows["exact_match"]["v2"] == 0.7
    assert rows["exact_match"]["delta"] == pytest.approx(0.3)
    assert rows["token_f1"]["v2"] is None and rows["token_f1"]["delta"] is None
    assert rows["bleu"]["v1"] is None and rows["bleu"]["delta"] is None


# -- concurrency and crashes ----------------------------------------------------
def test_concurrent_create_version_gives_distinct_ids(reg, tmp_path):
    adapters = [make_adapter(tmp_path / f"a{i}", payload=f"weights-{i}".encode() * 100) for i in range(8)]
    results: list[Version] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results.append(new_version(LocalRegistry(reg.root), adapters[i], em=i / 10))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(v.id for v in results) == [f"v{i}" for i in range(1, 9)]
    assert reg.ids() == [f"v{i}" for i in range(1, 9)]
    assert hidden_leftovers(reg) == []
    for vid in reg.ids():
        v = reg.get(vid)
        assert v.manifest["id"] == vid
        assert reg.verify(vid) == []
    # Each version holds exactly the bytes of the adapter its caller passed in.
    payloads = sorted((reg.versions_dir / vid / "adapter" / "adapter_model.safetensors").read_bytes()
                      for vid in reg.ids())
    assert payloads == sorted((a / "adapter_model.safetensors").read_bytes() for a in adapters)


def test_crash_while_writing_manifest_leaves_nothing(reg, adapter, monkeypatch):
    new_version(reg, adapter)

    def boom(path, text):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(local, "atomic_write_text", boom)
    with pytest.raises(OSError, match="simulated"):
        new_version(reg, adapter)
    assert reg.ids() == ["v1"]
    assert not (reg.versions_dir / "v2").exists()
    assert hidden_leftovers(reg) == []

    monkeypatch.undo()
    assert new_version(reg, adapter).id == "v2"  # the lock was released and numbering is intact


def test_interrupt_while_copying_leaves_nothing(reg, adapter, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(local.shutil, "copytree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new_version(reg, adapter)
    monkeypatch.undo()
    assert reg.ids() == []
    assert hidden_leftovers(reg) == []


def test_publish_conflict_raises_registry_error(reg, adapter, monkeypatch):
    monkeypatch.setattr(local, "publish_dir", lambda staged, final: False)
    with pytest.raises(RegistryError, match="appeared while publishing"):
        new_version(reg, adapter)
    monkeypatch.undo()
    assert reg.ids() == []
    assert hidden_leftovers(reg) == []


# -- open_registry --------------------------------------------------------------
def test_open_registry_uses_state_dir(state_dir, monkeypatch, adapter):
    monkeypatch.delenv("TUNELOOP_REGISTRY_DIR", raising=False)
    r = open_registry()
    assert r.root == state_dir.resolve() / "registry"
    new_version(r, adapter)
    assert (state_dir / "registry" / "versions" / "v1" / "manifest.json").exists()


def test_open_registry_env_and_explicit_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_REGISTRY_DIR", str(tmp_path / "elsewhere"))
    assert open_registry().root == (tmp_path / "elsewhere").resolve()
    assert open_registry(tmp_path / "explicit").root == tmp_path / "explicit"


# -- CLI --------------------------------------------------------------------------
@pytest.fixture
def populated(reg, tmp_path) -> Path:
    new_version(reg, make_adapter(tmp_path / "a1"), em=0.4)
    new_version(reg, make_adapter(tmp_path / "a2", payload=b"other"), em=0.7, parent="v1")
    reg.record_decision("v1", {"promote": True, "reason": "promoted: first"})
    return reg.root


def test_cli_list(populated, capsys):
    assert main(["registry", "--registry", str(populated), "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0].startswith("v1") and "champion" in out[0] and "exact_match=0.400" in out[0]
    assert out[1].startswith("v2") and "candidate" in out[1] and "exact_match=0.700" in out[1]


def test_cli_list_empty(tmp_path, capsys):
    assert main(["registry", "--registry", str(tmp_path / "empty"), "list"]) == 0
    assert "no versions yet" in capsys.readouterr().out


def test_cli_show(populated, capsys):
    assert main(["registry", "--registry", str(populated), "show", "v1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["manifest"]["id"] == "v1"
    assert data["status"]["status"] == "champion"
    assert data["integrity"] == "ok"

    assert main(["registry", "--registry", str(populated), "show", "champion"]) == 0
    assert json.loads(capsys.readouterr().out)["manifest"]["id"] == "v1"


def test_cli_show_reports_tampering(populated, capsys):
    (populated / "versions" / "v2" / "adapter" / "adapter_model.safetensors").write_bytes(b"evil")
    assert main(["registry", "--registry", str(populated), "show", "v2"]) == 0
    assert json.loads(capsys.readouterr().out)["integrity"] == ["adapter/adapter_model.safetensors"]


def test_cli_compare(populated, capsys):
    assert main(["registry", "--registry", str(populated), "compare", "v1", "v2"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert "v1" in header and "v2" in header
    em = next(r for r in rows if r.startswith("exact_match"))
    assert "0.4000" in em and "0.7000" in em


def test_cli_show_unknown_ref(populated, capsys):
    assert main(["registry", "--registry", str(populated), "show", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: 'nope'")
    assert "v1, v2, champion" in captured.err
    assert "tuneloop registry list" in captured.err


def test_cli_compare_unknown_ref(populated, capsys):
    assert main(["registry", "--registry", str(populated), "compare", "v1", "v9"]) == 2
    assert "'v9'" in capsys.readouterr().err
