"""The /v1/files core: uploads validated as chat or DPO files, refused with every problem by line and
nothing kept; per-tenant ids that never leak across tenants or become paths; list, get, delete, content."""

from __future__ import annotations

import json
import re
from itertools import count

import pytest

from tuneloop.errors import UserError
from tuneloop.service.errors import FileRejected, NotFound, TooLarge
from tuneloop.service.files import MAX_FILENAME, FileStore, display_name


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode("utf-8")


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def pref(i: int) -> dict:
    return {"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
            "preferred_output": [{"role": "assistant", "content": f"good {i}"}],
            "non_preferred_output": [{"role": "assistant", "content": f"bad {i}"}]}


@pytest.fixture
def store(tmp_path):
    tick = count(1_700_000_000)
    return FileStore(tmp_path / "files", clock=lambda: next(tick))  # one second apart: a definite order


def stored(store, tenant: str) -> list[str]:
    """Every entry under the store's root for `tenant`, and any temp file left in root."""
    folder = store.root / tenant
    left = sorted(p.name for p in store.root.iterdir() if p.is_file()) if store.root.exists() else []
    return left + (sorted(p.name for p in folder.iterdir()) if folder.exists() else [])


def test_chat_file_becomes_an_openai_file_object(store):
    data = jsonl([chat(i) for i in range(3)])
    f = store.create("acme", "train.jsonl", data, "fine-tune")
    assert re.fullmatch(r"file-[0-9a-f]{24}", f["id"])
    assert f == {"id": f["id"], "object": "file", "bytes": len(data), "created_at": 1_700_000_000,
                 "filename": "train.jsonl", "purpose": "fine-tune", "status": "processed",
                 "status_details": None, "format": "chat", "rows": 3}
    assert store.get("acme", f["id"]) == f
    assert sorted(stored(store, "acme")) == sorted([f"{f['id']}.json", f"{f['id']}.jsonl"])


def test_prompt_completion_file(store):
    f = store.create("acme", "pc.jsonl", jsonl([{"prompt": "p", "completion": "c"}] * 2), "fine-tune")
    assert f["format"] == "chat" and f["rows"] == 2


def test_dpo_file(store):
    f = store.create("acme", "pref.jsonl", jsonl([pref(i) for i in range(4)]), "fine-tune")
    assert f["format"] == "dpo" and f["rows"] == 4


def test_mixed_file_is_rejected_at_the_first_row_of_the_other_kind(store):
    with pytest.raises(FileRejected) as e:
        store.create("acme", "mixed.jsonl", jsonl([chat(0), chat(1), pref(0), chat(2)]), "fine-tune")
    assert [(i.line, i.rule) for i in e.value.issues] == [(3, "mixed_format")]
    assert "line 3: mixed_format" in str(e.value) and stored(store, "acme") == []


def test_bad_file_names_each_line_and_keeps_nothing(store):
    rows = [chat(0), '{"messages": [}', {"messages": [{"role": "user", "content": "q"}]}, chat(3),
            {"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    with pytest.raises(FileRejected) as e:
        store.create("acme", "bad.jsonl", jsonl(rows), "fine-tune")
    assert isinstance(e.value, UserError)
    assert [(i.line, i.rule) for i in e.value.issues] == [(2, "json"), (3, "no_assistant"), (5, "role")]
    msg = str(e.value)
    assert "'bad.jsonl'" in msg and "3 data problem(s)" in msg
    assert "line 2: json:" in msg and "line 3: no_assistant:" in msg and "line 5: role:" in msg
    assert stored(store, "acme") == [] and not (store.root / "acme").exists()
    assert store.list("acme") == []


def test_long_report_shows_twenty_then_a_count(store):
    with pytest.raises(FileRejected) as e:
        store.create("acme", "bad.jsonl", jsonl(["[1]"] * 30), "fine-tune")
    msg = str(e.value)
    assert "line 20: type" in msg and "line 21:" not in msg and "... and 11 more" in msg  # 30 rows + too few


def test_empty_file_is_rejected(store):
    with pytest.raises(FileRejected) as e:
        store.create("acme", "empty.jsonl", b"", "fine-tune")
    assert [i.rule for i in e.value.issues] == ["too_few_examples"] and stored(store, "acme") == []


def test_upload_minimum_is_configurable(store):
    with pytest.raises(FileRejected, match="at least 10 required"):
        store.create("acme", "t.jsonl", jsonl([chat(0)]), "fine-tune", min_examples=10)


def test_rows_naming_another_tenant_are_refused(store):
    with pytest.raises(FileRejected) as e:
        store.create("acme", "t.jsonl", jsonl([chat(0), chat(1) | {"tenant": "other"}]), "fine-tune")
    assert [(i.line, i.rule) for i in e.value.issues] == [(2, "tenant")]
    assert store.create("acme", "t.jsonl", jsonl([chat(0) | {"tenant": "acme"}]), "fine-tune")["rows"] == 1


def test_bom_and_content_roundtrip(store):
    data = b"\xef\xbb\xbf" + jsonl([chat(0), chat(1)])
    f = store.create("acme", "bom.jsonl", data, "fine-tune")
    assert f["rows"] == 2 and f["bytes"] == len(data)
    assert store.content("acme", f["id"]) == data  # the bytes as uploaded
    assert store.path("acme", f["id"]).read_bytes() == data


def test_non_utf8_line_is_named(store):
    data = jsonl([chat(0)]) + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n' + jsonl([chat(2)])
    with pytest.raises(FileRejected) as e:
        store.create("acme", "latin1.jsonl", data, "fine-tune")
    assert [(i.line, i.rule) for i in e.value.issues] == [(2, "encoding")] and "byte 0xe9" in str(e.value)
    assert stored(store, "acme") == []


def test_purpose_must_be_fine_tune(store):
    with pytest.raises(UserError) as e:
        store.create("acme", "t.jsonl", jsonl([chat(0)]), "assistants")
    assert "'assistants'" in str(e.value) and "'fine-tune'" in str(e.value) and stored(store, "acme") == []


def test_size_limit(tmp_path):
    store = FileStore(tmp_path / "files", max_bytes=100)
    data = jsonl([chat(i) for i in range(5)])
    with pytest.raises(TooLarge) as e:
        store.create("acme", "big.jsonl", data, "fine-tune")
    assert isinstance(e.value, UserError) and f"{len(data)} bytes" in str(e.value) and "100 bytes" in str(e.value)
    assert not store.root.exists() or stored(store, "acme") == []


@pytest.mark.parametrize("given, shown", [
    ("../../etc/passwd", "passwd"), ("C:\\Users\\me\\train.jsonl", "train.jsonl"), ("a\nb\x00.jsonl", "ab.jsonl"),
    ("", "upload.jsonl"), ("/", "upload.jsonl"), ("x" * 1000, "x" * MAX_FILENAME),
])
def test_filename_is_sanitized_for_display(store, given, shown):
    assert display_name(given) == shown
    f = store.create("acme", given, jsonl([chat(0)]), "fine-tune")
    assert f["filename"] == shown and stored(store, "acme") == sorted([f"{f['id']}.json", f"{f['id']}.jsonl"])


def test_another_tenants_id_reads_like_an_unknown_one(store):
    f = store.create("acme", "t.jsonl", jsonl([chat(0)]), "fine-tune")
    unknown = "file-" + "0" * 24
    errors = []
    for call in (store.get, store.content, store.path, store.delete):
        for file_id in (f["id"], unknown):
            with pytest.raises(NotFound) as e:
                call("globex", file_id)
            errors.append(str(e.value).replace(file_id, "ID"))
            assert "no such file for this key's tenant" in str(e.value) and repr(file_id) in str(e.value)
    assert len(set(errors)) == 1  # same words whether the id exists elsewhere or nowhere
    assert store.list("globex") == [] and store.get("acme", f["id"]) == f  # the other tenant's delete did nothing


@pytest.mark.parametrize("file_id", [
    "../acme/file-" + "0" * 24, "file-" + "0" * 23, "file-" + "A" * 24, "file-" + "0" * 24 + "/", "/etc/passwd",
    "file-" + "0" * 24 + ".json", "..", "", "file-../../x",
])
def test_ids_not_of_the_form_are_not_found_and_never_paths(store, tmp_path, file_id):
    (tmp_path / "files" / "acme").mkdir(parents=True)
    for call in (store.get, store.content, store.path, store.delete):
        with pytest.raises(NotFound):
            call("acme", file_id)


def test_traversal_id_cannot_reach_another_tenant(store):
    f = store.create("acme", "t.jsonl", jsonl([chat(0)]), "fine-tune")
    with pytest.raises(NotFound):
        store.content("globex", f"../acme/{f['id']}")


def test_unsafe_tenant_is_refused(store):
    with pytest.raises(UserError, match="not a valid tenant"):
        store.list("../acme")


def test_delete(store):
    a = store.create("acme", "a.jsonl", jsonl([chat(0)]), "fine-tune")
    b = store.create("acme", "b.jsonl", jsonl([chat(1)]), "fine-tune")
    assert store.delete("acme", a["id"]) == {"id": a["id"], "object": "file", "deleted": True}
    assert [f["id"] for f in store.list("acme")] == [b["id"]]
    assert stored(store, "acme") == sorted([f"{b['id']}.json", f"{b['id']}.jsonl"])
    for call in (store.get, store.content, store.delete):
        with pytest.raises(NotFound):
            call("acme", a["id"])


def test_data_without_metadata_is_not_listed(store):
    f = store.create("acme", "a.jsonl", jsonl([chat(0)]), "fine-tune")
    (store.root / "acme" / f"{f['id']}.json").unlink()  # as if the upload stopped before its metadata
    assert store.list("acme") == []
    with pytest.raises(NotFound):
        store.content("acme", f["id"])


def test_list_order_after_limit(store):
    ids = [store.create("acme", f"{i}.jsonl", jsonl([chat(i)]), "fine-tune")["id"] for i in range(5)]
    store.create("globex", "g.jsonl", jsonl([chat(9)]), "fine-tune")
    assert [f["id"] for f in store.list("acme")] == ids[::-1]  # newest first
    assert [f["id"] for f in store.list("acme", order="asc")] == ids
    assert [f["id"] for f in store.list("acme", limit=2)] == [ids[4], ids[3]]
    assert [f["id"] for f in store.list("acme", after=ids[3], limit=2)] == [ids[2], ids[1]]
    assert [f["id"] for f in store.list("acme", after=ids[1], order="asc")] == ids[2:]
    assert store.list("acme", after=ids[0]) == []
    assert [f["id"] for f in store.list("acme", purpose="fine-tune")] == ids[::-1]
    assert store.list("acme", purpose="assistants") == []
    assert store.list("nobody") == []


@pytest.mark.parametrize("kwargs", [{"order": "newest"}, {"limit": 0}, {"limit": 10001}])
def test_list_refuses_bad_arguments(store, kwargs):
    with pytest.raises(UserError):
        store.list("acme", **kwargs)


def test_list_after_another_tenants_id_is_not_found(store):
    f = store.create("acme", "a.jsonl", jsonl([chat(0)]), "fine-tune")
    store.create("globex", "g.jsonl", jsonl([chat(0)]), "fine-tune")
    with pytest.raises(NotFound):
        store.list("globex", after=f["id"])
