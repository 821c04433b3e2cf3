import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tuneloop.demo import data as dd


def _load(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _user(row: dict) -> str:
    return row["messages"][1]["content"]


def _label(row: dict) -> str:
    return row["messages"][2]["content"]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = dd.write_demo_data(out, seed=0)
    return {k: _load(p) for k, p in paths.items()}, paths, out


def test_constants():
    assert dd.INTENTS == ("billing", "shipping", "refund", "account", "technical", "cancel")
    assert dd.SYSTEM_PROMPT == (
        "Route the customer message to one intent: billing, shipping, refund, account, "
        "technical, cancel. Answer with the intent only."
    )
    assert set(dd.CORRUPTION_MAP) == set(dd.INTENTS)
    assert all(dd.CORRUPTION_MAP[i] != i for i in dd.INTENTS)
    assert sorted(dd.CORRUPTION_MAP.values()) == sorted(dd.INTENTS)  # a permutation


def test_paths_and_files(splits):
    rows, paths, out = splits
    assert set(paths) == {"feedback", "heldout", "corrupted"}
    for p in paths.values():
        assert p.parent == out and p.exists() and p.suffix == ".jsonl"
    # atomic write leaves no temp files behind
    assert sorted(x.name for x in out.iterdir()) == sorted(p.name for p in paths.values())


def test_sizes(splits):
    rows, _, _ = splits
    assert 360 <= len(rows["feedback"]) <= 440
    assert 100 <= len(rows["heldout"]) <= 140
    assert len(rows["corrupted"]) == len(rows["feedback"])


def _check_row(row: dict) -> None:
    msgs = row["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    for m in msgs:
        assert isinstance(m["content"], str) and m["content"].strip()
    assert msgs[0]["content"] == dd.SYSTEM_PROMPT
    assert msgs[2]["content"] in dd.INTENTS
    assert row["rating"] == 5
    assert row["tenant"] == "demo"
    assert len(msgs[1]["content"].split()) <= 30


def test_row_schema(splits):
    rows, _, _ = splits
    for name in ("feedback", "heldout", "corrupted"):
        for row in rows[name]:
            _check_row(row)


def test_label_balance(splits):
    rows, _, _ = splits
    fb = rows["feedback"]
    counts = Counter(_label(r) for r in fb)
    assert set(counts) == set(dd.INTENTS)
    for intent in dd.INTENTS:
        share = counts[intent] / len(fb)
        assert 0.12 <= share <= 0.22, (intent, share)
    held = Counter(_label(r) for r in rows["heldout"])
    assert set(held) == set(dd.INTENTS)


def test_no_duplicates_and_no_leak(splits):
    rows, _, _ = splits
    fb_texts = [_user(r) for r in rows["feedback"]]
    ho_texts = [_user(r) for r in rows["heldout"]]
    assert len(set(fb_texts)) == len(fb_texts)
    assert len(set(ho_texts)) == len(ho_texts)
    assert not set(fb_texts) & set(ho_texts)


def test_no_leak_across_seeds(tmp_path):
    # hash partition is seed-independent: heldout of one seed never hits feedback of another
    a = dd.write_demo_data(tmp_path / "a", seed=1)
    b = dd.write_demo_data(tmp_path / "b", seed=2)
    fb = {_user(r) for r in _load(a["feedback"])} | {_user(r) for r in _load(b["feedback"])}
    ho = {_user(r) for r in _load(a["heldout"])} | {_user(r) for r in _load(b["heldout"])}
    assert not fb & ho


def test_corrupted_labels(splits):
    rows, _, _ = splits
    fb, bad = rows["feedback"], rows["corrupted"]
    clean = {_user(r): _label(r) for r in fb}
    assert [_user(r) for r in bad] == [_user(r) for r in fb]
    for r in bad:
        lab = _label(r)
        assert lab in dd.INTENTS
        assert lab != clean[_user(r)]
        assert lab == dd.CORRUPTION_MAP[clean[_user(r)]]


def test_write_deterministic(tmp_path):
    a = dd.write_demo_data(tmp_path / "a", seed=7)
    b = dd.write_demo_data(tmp_path / "b", seed=7)
    c = dd.write_demo_data(tmp_path / "c", seed=8)
    for k in a:
        assert a[k].read_bytes() == b[k].read_bytes()
    assert a["feedback"].read_bytes() != c["feedback"].read_bytes()


def test_write_overwrites(tmp_path):
    dd.write_demo_data(tmp_path, seed=3)
    paths = dd.write_demo_data(tmp_path, seed=4)
    fresh = dd.write_demo_data(tmp_path / "x", seed=4)
    assert paths["feedback"].read_bytes() == fresh["feedback"].read_bytes()


def test_generate_examples_deterministic_and_balanced():
    a = dd.generate_examples(60, seed=5)
    b = dd.generate_examples(60, seed=5)
    c = dd.generate_examples(60, seed=6)
    assert a == b
    assert a != c
    assert len(a) == 60
    counts = Counter(_label(r) for r in a)
    assert all(counts[i] == 10 for i in dd.INTENTS)
    for r in a:
        _check_row(r)
    assert len({_user(r) for r in a}) == 60
    assert dd.generate_examples(0, seed=0) == []


def test_variety():
    rows = dd.generate_examples(1800, seed=11)
    by_intent: dict[str, set[str]] = {}
    for r in rows:
        by_intent.setdefault(_label(r), set()).add(_user(r))
    for intent in dd.INTENTS:
        assert len(by_intent[intent]) >= 250, intent
    # some casual lowercase variants are mixed in
    assert any(_user(r) == _user(r).lower() for r in rows)


@pytest.mark.server
def test_module_is_stdlib_only():
    code = (
        "import sys; import tuneloop.demo.data; "
        "bad = [m for m in ('prefect', 'torch') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    src = str(Path(dd.__file__).resolve().parents[1])
    res = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": src}, capture_output=True)
    assert res.returncode == 0, res.stderr
