"""The registry on both backends (a folder and S3 on a moto server): versions, manifests, aliases,
decisions, tags, search, delete, lineage and attachments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regtools import BACKENDS, SPEC, make_adapter, new_version, open_backend, raw_keys, raw_put, sha256
from tuneloop.errors import ConflictError, NotFoundError, RefusedError, RegistryError, UserError
from tuneloop.registry import ALIASES, LocalRegistry, Registry, open_registry
from tuneloop.registry.query import render_lineage

MANIFEST_FIELDS = {"id", "base_model", "files", "dataset_version", "parent_version", "spec", "metrics", "created_at"}


@pytest.fixture(params=BACKENDS)
def reg(request, tmp_path) -> Registry:
    return open_backend(request.param, request, tmp_path)


@pytest.fixture
def adapter(tmp_path) -> Path:
    return make_adapter(tmp_path / "adapter")


def stored(reg: Registry, key: str) -> bytes:
    return reg.store.get(key)[0]


# -- creating versions ----------------------------------------------------------
def test_empty_registry(reg):
    assert reg.ids() == []
    assert reg.aliases() == {}
    assert reg.champion() is None
    assert reg.list() == []
    assert reg.lineage() == []


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
    assert v2.status == {"status": "candidate"} and v2.tags == {}

    assert sorted(f["path"] for f in m["files"]) == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    for f in m["files"]:
        data = stored(reg, f"versions/v2/{f['path']}")
        assert f["sha256"] == sha256(data) == sha256((adapter / Path(f["path"]).name).read_bytes())
        assert f["bytes"] == len(data)
    assert json.loads(stored(reg, "versions/v2/manifest.json")) == m == reg.get("v2").manifest
    # nothing but the two versions, their claims, the audit log's entries and no staging leftovers
    assert [k for k in raw_keys(reg) if not k.startswith(("versions/", "audit/"))] == ["claims/v1", "claims/v2"]
    assert [e["action"] for e in reg.audit_log()] == ["register", "register"]


def test_local_layout_is_plain_folders(tmp_path, adapter):
    """A folder registry keeps today's layout: what `Version.path` points at holds the files."""
    reg = LocalRegistry(tmp_path / "registry")
    v = new_version(reg, adapter)
    assert v.path == reg.versions_dir / "v1" and v.adapter_dir == v.path / "adapter"
    for f in v.manifest["files"]:
        assert sha256((v.path / f["path"]).read_bytes()) == f["sha256"]
    assert json.loads((v.path / "manifest.json").read_text()) == v.manifest
    assert sorted(p.name for p in reg.versions_dir.iterdir()) == ["v1"]  # no hidden staging leftovers
    assert reg.adapter_for("v1") == v.adapter_dir


def test_extra_fields_land_in_manifest(reg, adapter):
    v = reg.create_version(adapter, base_model="b", dataset_version="d", parent_version=None, spec={},
                           metrics={}, extra={"run_id": "r-123"})
    assert v.manifest["run_id"] == "r-123"


def test_manifest_typed_view_reads_the_stored_document(reg, adapter):
    extra = {"tenant": "acme", "run_id": "r-1", "incumbent": {"label": "base", "metrics": {"exact_match": 0.1}},
             "training": {"steps": 3}, "feedback_window": {"start": "2025-01-01", "end": "2025-01-08"}}
    v = reg.create_version(adapter, base_model="b", dataset_version="d", parent_version=None, spec=SPEC,
                           metrics={"exact_match": 0.5}, extra=extra, idempotency_key="k1")
    m = v.info
    assert (m.id, m.base_model, m.dataset_version, m.parent_version, m.tenant) == ("v1", "b", "d", None, "acme")
    assert m.incumbent.label == "base" and m.incumbent.metrics == {"exact_match": 0.1}
    assert m.idempotency_key == "k1" and m.files == v.manifest["files"]
    assert m.to_json() == v.manifest == json.loads(stored(reg, "versions/v1/manifest.json"))  # nothing lost
    plain = new_version(reg, adapter, em=0.4)  # a manifest without the retrain flow's extras
    assert plain.info.tenant is None and plain.info.incumbent is None and plain.info.to_json() == plain.manifest


def test_nested_adapter_files_are_checksummed(reg, adapter):
    (adapter / "sub").mkdir()
    (adapter / "sub" / "tokenizer.json").write_text("{}")
    v = new_version(reg, adapter)
    assert "adapter/sub/tokenizer.json" in {f["path"] for f in v.manifest["files"]}
    assert reg.verify("v1") == []
    assert (reg.adapter_for("v1") / "sub" / "tokenizer.json").read_text() == "{}"


def test_folder_without_adapter_config_is_refused(reg, tmp_path):
    bad = tmp_path / "not-an-adapter"
    bad.mkdir()
    (bad / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(RegistryError, match="adapter_config.json"):
        new_version(reg, bad)
    assert reg.ids() == [] and raw_keys(reg) == []


def test_ids_skip_junk_and_never_reuse_a_taken_id(reg, adapter):
    new_version(reg, adapter)
    new_version(reg, adapter)
    raw_put(reg, "versions/v7-notes/readme.txt", b"not a version")  # not a version id
    raw_put(reg, "versions/v5/adapter/adapter_model.safetensors", b"half")  # files without a manifest
    assert reg.ids() == ["v1", "v2"]
    with pytest.raises(NotFoundError):
        reg.get("v5")
    assert new_version(reg, adapter).id == "v6"  # v5's folder is not written into


def test_local_junk_folders_are_ignored(tmp_path, adapter):
    reg = LocalRegistry(tmp_path / "registry")
    new_version(reg, adapter)
    (reg.versions_dir / "v7-notes").mkdir()  # no manifest: not a version
    (reg.versions_dir / ".new.abandoned").mkdir()  # an old-style staging folder: not a version
    assert reg.ids() == ["v1"]
    assert new_version(reg, adapter).id == "v2"


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
    raw_put(reg, "versions/v1/adapter/adapter_model.safetensors", b"tampered")
    assert reg.verify("v1") == ["adapter/adapter_model.safetensors"]
    assert reg.verify("v2") == []  # other versions are untouched


def test_verify_reports_deleted_and_added_files(reg, adapter):
    from regtools import raw_delete

    new_version(reg, adapter)
    raw_delete(reg, "versions/v1/adapter/adapter_config.json")
    raw_put(reg, "versions/v1/adapter/extra.safetensors", b"smuggled")
    assert reg.verify("v1") == ["adapter/adapter_config.json", "adapter/extra.safetensors"]


# -- aliases and lookups --------------------------------------------------------
def test_aliases_set_resolve_get(reg, adapter):
    new_version(reg, adapter)
    new_version(reg, adapter)
    reg.set_alias("champion", "v1")
    reg.set_alias("challenger", "v2")
    assert reg.aliases() == {"champion": "v1", "challenger": "v2"}
    assert json.loads(stored(reg, "aliases.json")) == {"champion": "v1", "challenger": "v2"}
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
    assert "production" in ALIASES
    reg.set_alias("production", "v2")
    assert reg.get("production").id == "v2"


def test_set_alias_compare_and_swap(reg, adapter):
    for _ in range(3):
        new_version(reg, adapter)
    reg.set_alias("production", "v1", expected=None)  # expected unset: it is
    reg.set_alias("production", "v2", expected="v1")
    with pytest.raises(ConflictError, match="production points to v2, not v1") as err:
        reg.set_alias("production", "v3", expected="v1")
    assert "--expected v2" in str(err.value)
    with pytest.raises(ConflictError, match="not nothing"):
        reg.set_alias("production", "v3", expected=None)
    assert reg.aliases() == {"production": "v2"}
    reg.set_alias("production", None, expected="v2")
    assert reg.aliases() == {}


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


@pytest.mark.parametrize("ref", ["v42", "../v1", "v01", "", "champion/../x"])
def test_unknown_ref_lists_known_versions(reg, adapter, ref):
    new_version(reg, adapter)
    new_version(reg, adapter)
    reg.set_alias("champion", "v2")
    with pytest.raises(NotFoundError) as err:
        reg.get(ref)
    msg = str(err.value)
    assert repr(ref) in msg
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
    s2 = json.loads(stored(reg, "versions/v2/status.json"))
    assert s2["status"] == "champion"
    assert s2["reason"] == decision["reason"]
    assert s2["decision"] == decision
    assert s2["replaced"] == "v1"
    s1 = json.loads(stored(reg, "versions/v1/status.json"))
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


def test_record_decision_refuses_a_stale_decision(reg, adapter):
    """The gate compared v3 with v1, but v2 became champion meanwhile: promoting v3 is refused."""
    for _ in range(3):
        new_version(reg, adapter)
    reg.record_decision("v1", {"promote": True, "reason": "first"})
    reg.record_decision("v2", {"promote": True, "reason": "better"}, expected_champion="v1")
    with pytest.raises(ConflictError) as err:
        reg.record_decision("v3", {"promote": True, "reason": "better than v1"}, expected_champion="v1")
    assert "champion changed from v1 to v2 while promoting v3" in str(err.value)
    assert "re-run" in str(err.value).lower()
    assert reg.aliases() == {"champion": "v2"}
    assert [reg.get(v).status["status"] for v in ("v1", "v2", "v3")] == ["retired", "champion", "candidate"]
    # a first promotion expects no champion at all
    with pytest.raises(ConflictError, match="from none to v2"):
        reg.record_decision("v3", {"promote": True, "reason": "x"}, expected_champion=None)


def test_record_decision_repeats_safely(reg, adapter):
    """A run that died after moving the alias repeats the call: same outcome, statuses written."""
    new_version(reg, adapter)
    new_version(reg, adapter)
    reg.record_decision("v1", {"promote": True, "reason": "first"})
    for _ in range(2):
        reg.record_decision("v2", {"promote": True, "reason": "better"}, expected_champion="v1")
    assert reg.aliases() == {"champion": "v2"}
    assert reg.get("v2").status["replaced"] == "v1" and reg.get("v1").status["status"] == "retired"


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


# -- tags, search, delete, lineage ----------------------------------------------
def test_tags_add_change_remove(reg, adapter):
    new_version(reg, adapter)
    assert reg.tag("v1", {"team": "search", "ticket": "T-1"}) == {"team": "search", "ticket": "T-1"}
    assert reg.tag("v1", {"team": "ads"}, remove=["ticket", "absent"]) == {"team": "ads"}
    assert reg.get("v1").tags == {"team": "ads"}
    assert reg.verify("v1") == []  # tags never touch the manifest
    with pytest.raises(UserError, match="a tag key"):
        reg.tag("v1", {"bad key": "x"})
    with pytest.raises(NotFoundError):
        reg.tag("v9", {"a": "b"})


def test_search_filters_combine(reg, adapter):
    new_version(reg, adapter, em=0.9)
    new_version(reg, adapter, em=0.5)
    reg.create_version(adapter, base_model="other/base", dataset_version="d", parent_version=None, spec={},
                       metrics={"exact_match": 0.95})
    reg.record_decision("v1", {"promote": True, "reason": "x"})
    reg.tag("v1", {"team": "search"})
    reg.tag("v2", {"team": "search"})

    ids = lambda **kw: [v.id for v in reg.search(**kw)]  # noqa: E731
    assert ids() == ["v1", "v2", "v3"]
    assert ids(metrics=["exact_match>=0.8"]) == ["v1", "v3"]
    assert ids(metrics=["exact_match >= 0.8", "token_f1<=1"]) == ["v1"]  # v3 has no token_f1
    assert ids(metrics=["exact_match<0.6"]) == ["v2"]
    assert ids(metrics=["exact_match==0.5"]) == ["v2"]
    assert ids(tags=["team=search"]) == ["v1", "v2"]
    assert ids(tags={"team": "search"}, metrics=["exact_match>=0.8"]) == ["v1"]
    assert ids(base="other/base") == ["v3"]
    assert ids(status="champion") == ["v1"]
    assert ids(status="candidate") == ["v2", "v3"]
    assert ids(tags=["team=ads"]) == []


@pytest.mark.parametrize("expr", ["exact_match>>0.8", "exact_match>=high", ">=0.8", "exact_match", "em >= 1 2"])
def test_search_bad_metric_expression(reg, adapter, expr):
    new_version(reg, adapter)
    with pytest.raises(UserError) as err:
        reg.search(metrics=[expr])
    msg = str(err.value)
    assert repr(expr) in msg and "METRIC OP NUMBER" in msg and "exact_match>=0.8" in msg


def test_search_unknown_metric_and_status(reg, adapter):
    new_version(reg, adapter)
    with pytest.raises(UserError, match="'exact_mach': is not a metric of any version.*exact_match, token_f1"):
        reg.search(metrics=["exact_mach>=0.1"])
    with pytest.raises(UserError, match="'winner': is not a status.*candidate, champion, rejected, retired"):
        reg.search(status="winner")
    with pytest.raises(UserError, match="KEY=VALUE"):
        reg.search(tags=["team"])


def test_delete_removes_a_version_and_keeps_its_id(reg, adapter):
    new_version(reg, adapter)
    new_version(reg, adapter, parent="v1")
    new_version(reg, adapter, parent="v2")
    reg.attach("v2", "evaluation.json", {"x": 1})
    reg.tag("v2", {"a": "b"})
    reg.delete("v2")
    assert reg.ids() == ["v1", "v3"]
    assert not [k for k in raw_keys(reg) if k.startswith("versions/v2/")]
    with pytest.raises(NotFoundError):
        reg.get("v2")
    assert new_version(reg, adapter).id == "v4"  # v2 is never handed out again
    chain = reg.lineage("v3")
    assert [n["id"] for n in chain] == ["v3", "v2"] and chain[1]["missing"] is True
    assert "v2  (deleted)" in render_lineage(chain)
    tree = [line.split("  ")[0] for line in render_lineage(reg.lineage()).splitlines()]
    assert tree == ["v1", "v2", "└── v3", "v4"]  # v3 hangs under its deleted parent


def test_delete_refused_for_an_aliased_version(reg, adapter):
    new_version(reg, adapter)
    new_version(reg, adapter)
    reg.record_decision("v1", {"promote": True, "reason": "x"})
    reg.set_alias("production", "v1")
    for ref in ("v1", "champion"):
        with pytest.raises(RefusedError) as err:
            reg.delete(ref)
        msg = str(err.value)
        assert msg.startswith("v1: is what champion and production point to")
        assert "tuneloop registry alias champion" in msg
    assert reg.ids() == ["v1", "v2"] and reg.verify("v1") == []
    with pytest.raises(NotFoundError):
        reg.delete("v7")


def test_lineage_chain_and_tree(reg, adapter):
    window = {"start": "2026-10-01T00:00:00+00:00", "end": "2026-10-31T00:00:00+00:00"}
    new_version(reg, adapter, data="a" * 64)
    new_version(reg, adapter, parent="v1", data="b" * 64, extra={"feedback_window": window, "tenant": "acme"})
    new_version(reg, adapter, parent="v1", data="c" * 64)
    new_version(reg, adapter, parent="v2", data="d" * 64)
    reg.record_decision("v2", {"promote": True, "reason": "x"})

    chain = reg.lineage("v4")
    assert [n["id"] for n in chain] == ["v4", "v2", "v1"]
    assert [n["parent"] for n in chain] == ["v2", "v1", None]
    assert chain[1]["dataset_version"] == "b" * 64 and chain[1]["feedback_window"] == window
    assert chain[1]["aliases"] == ["champion"] and chain[1]["status"] == "champion"
    assert [n["id"] for n in reg.lineage("champion")] == ["v2", "v1"]

    text = render_lineage(reg.lineage()).splitlines()
    assert text[0].startswith("v1  candidate  data=aaaaaaaaaaaa  feedback=-")
    assert text[1].startswith("├── v2  champion [champion]  data=bbbbbbbbbbbb  feedback=2026-10-01..2026-10-31")
    assert text[2].startswith("│   └── v4  candidate")
    assert text[3].startswith("└── v3  candidate  data=cccccccccccc")


# -- attachments ----------------------------------------------------------------
def test_attachments(reg, adapter, tmp_path):
    new_version(reg, adapter)
    where = reg.attach("v1", "evaluation.json", {"score": 1})
    assert reg.attachment("v1", "evaluation.json") == {"score": 1}
    assert reg.attachment("v1", "missing.json") is None
    assert str(where).endswith("versions/v1/evaluation.json")
    for bad in ("manifest.json", "tags.json", "status.json", "a/b.json", "notes.txt"):
        with pytest.raises(RegistryError, match="attachment name"):
            reg.attach("v1", bad, {})
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.html").write_text("<html>")
    reg.attach_folder("v1", "report", report)
    assert stored(reg, "versions/v1/report/report.html") == b"<html>"
    assert reg.verify("v1") == []


# -- open_registry --------------------------------------------------------------
def test_open_registry_uses_state_dir(state_dir, monkeypatch, adapter):
    monkeypatch.delenv("TUNELOOP_REGISTRY_DIR", raising=False)
    monkeypatch.delenv("TUNELOOP_REGISTRY", raising=False)
    r = open_registry()
    assert r.root == state_dir.resolve() / "registry"
    new_version(r, adapter)
    assert (state_dir / "registry" / "versions" / "v1" / "manifest.json").exists()


def test_open_registry_env_and_explicit_root(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELOOP_REGISTRY", raising=False)
    monkeypatch.setenv("TUNELOOP_REGISTRY_DIR", str(tmp_path / "elsewhere"))
    assert open_registry().root == (tmp_path / "elsewhere").resolve()
    assert open_registry(tmp_path / "explicit").root == tmp_path / "explicit"
    assert open_registry(str(tmp_path / "explicit")).root == tmp_path / "explicit"
    monkeypatch.setenv("TUNELOOP_REGISTRY", str(tmp_path / "wins"))  # the newer setting wins
    assert open_registry().root == tmp_path / "wins"


def test_open_registry_s3_url(s3_bucket, state_dir, monkeypatch, adapter):
    monkeypatch.setenv("TUNELOOP_REGISTRY", f"s3://{s3_bucket}/team/models")
    reg = open_registry()
    assert reg.location == f"s3://{s3_bucket}/team/models" and not isinstance(reg, LocalRegistry)
    v = new_version(reg, adapter)
    assert v.path.is_relative_to(state_dir.resolve())  # the download cache lives under the state folder
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert "team/models/versions/v1/manifest.json" in keys and "team/models/claims/v1" in keys
    assert open_registry(f"s3://{s3_bucket}").location == f"s3://{s3_bucket}"


@pytest.mark.parametrize("bad", ["gs://bucket/x", "s3://", "s3:///prefix"])
def test_open_registry_bad_url(bad):
    with pytest.raises(UserError) as err:
        open_registry(bad)
    assert bad in str(err.value) and "Fix:" in str(err.value)
