"""Data validation (every problem by line, rule and fix) and dataset preparation
(dedupe, deterministic split, leak check, content-hash version, idempotent save)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tuneloop.cli import main as cli
from tuneloop.data import prepare_dataset, validate_file
from tuneloop.data.dataset import dataset_version
from tuneloop.data.validate import FIXES
from tuneloop.errors import DataValidationError, UserError
from tuneloop.specs import DataSpec

ROOT = Path(__file__).resolve().parents[2]


# -- helpers -----------------------------------------------------------------------
def good(i: int, answer: str | None = None) -> dict:
    return {"messages": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": f"question number {i}?"},
                         {"role": "assistant", "content": answer or f"answer {i}"}],
            "rating": 4}


def write_lines(path: Path, lines: list) -> Path:
    """Each item is a dict (dumped as JSON) or a raw string written as-is."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def only_issue(report, rule: str):
    """The report holds exactly one issue, of `rule`; return it after checking its fix."""
    assert [i.rule for i in report.issues] == [rule], [str(i) for i in report.issues]
    issue = report.issues[0]
    assert issue.severity == "error" and not report.ok
    assert issue.fix and issue.fix == FIXES[rule]
    assert f"Fix: {issue.fix}" in str(issue)
    return issue


def with_defect(tmp_path: Path, bad, n_good: int = 12, at: int = 5) -> Path:
    """n_good good rows with `bad` inserted so that it lands on line `at`."""
    rows: list = [good(i) for i in range(n_good)]
    rows.insert(at - 1, bad)
    return write_lines(tmp_path / "data.jsonl", rows)


def msgs(*pairs) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


# -- 1. each defect alone -------------------------------------------------------------
def test_clean_file_has_no_issues(tmp_path):
    rep = validate_file(write_lines(tmp_path / "ok.jsonl", [good(i) for i in range(12)]))
    assert rep.ok and rep.issues == [] and len(rep.rows) == 12 and rep.lines_read == 12
    assert [r.line for r in rep.rows] == list(range(1, 13))
    assert rep.rows[0].rating == 4 and rep.rows[0].tenant == "default"


def test_malformed_json(tmp_path):
    rep = validate_file(with_defect(tmp_path, '{"messages": [{"role": "user", "content": "hi"},]}', at=4))
    issue = only_issue(rep, "json")
    assert issue.line == 4
    assert "not valid JSON" in issue.message and "column" in issue.message
    assert len(rep.rows) == 12  # the other rows are still read


@pytest.mark.parametrize("message, shown", [
    ({"content": "hi"}, "role None"),                    # role missing
    ({"role": "customer", "content": "hi"}, "'customer'"),  # role invalid
])
def test_bad_role(tmp_path, message, shown):
    bad = {"messages": [message, {"role": "assistant", "content": "ok"}]}
    issue = only_issue(validate_file(with_defect(tmp_path, bad, at=7)), "role")
    assert issue.line == 7
    assert "message 1" in issue.message and shown in issue.message
    assert "system, user, assistant, tool" in issue.fix


def test_empty_assistant_turn(tmp_path):
    bad = msgs(("user", "hello"), ("assistant", "   "))
    issue = only_issue(validate_file(with_defect(tmp_path, bad, at=3)), "empty_content")
    assert issue.line == 3
    assert "message 2" in issue.message and "assistant" in issue.message


def test_no_assistant_message(tmp_path):
    bad = msgs(("system", "be nice"), ("user", "hello"))
    issue = only_issue(validate_file(with_defect(tmp_path, bad, at=2)), "no_assistant")
    assert issue.line == 2
    assert "no assistant message" in issue.message


@pytest.mark.parametrize("bad, shown", [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 42}]}, "content is int"),
    (good(99) | {"rating": "5"}, "rating '5'"),
    ({"messages": "user: hi / assistant: ok"}, "messages must be a non-empty list"),
    ({"messages": []}, "messages must be a non-empty list"),
    ({"prompt": "hi", "completion": 3}, "got str, int"),
    (["not", "an", "object"], "JSON list"),
    (good(98) | {"tenant": ""}, "tenant ''"),
])
def test_wrong_types(tmp_path, bad, shown):
    issue = only_issue(validate_file(with_defect(tmp_path, bad, at=6)), "type")
    assert issue.line == 6
    assert shown in issue.message


def test_neither_messages_nor_prompt(tmp_path):
    issue = only_issue(validate_file(with_defect(tmp_path, {"text": "hi", "label": "x"}, at=1)), "format")
    assert issue.line == 1 and "['label', 'text']" in issue.message


def test_prompt_completion_is_normalized(tmp_path):
    rows: list = [{"prompt": f"p{i}", "completion": f"c{i}", "rating": 3, "tenant": "acme"} for i in range(10)]
    rep = validate_file(write_lines(tmp_path / "pc.jsonl", rows))
    assert rep.ok and len(rep.rows) == 10
    r = rep.rows[4]
    assert r.messages == [{"role": "user", "content": "p4"}, {"role": "assistant", "content": "c4"}]
    assert r.answer == "c4" and r.prompt_messages == [{"role": "user", "content": "p4"}]
    assert r.rating == 3 and r.tenant == "acme"
    assert r.to_json() == {"messages": r.messages, "tenant": "acme", "rating": 3}


def test_too_long_rows(tmp_path, tiny_base):
    from tuneloop.models.base import load_tokenizer
    from tuneloop.models.chat import count_tokens

    count = count_tokens(load_tokenizer(tiny_base))
    short = msgs(("user", "hi"), ("assistant", "ok"))
    long_ = msgs(("user", "word " * 200), ("assistant", "ok"))
    n_short, n_long = count(short["messages"]), count(long_["messages"])
    limit = 40
    assert n_short <= limit < n_long
    path = write_lines(tmp_path / "long.jsonl", [short, long_, short])
    rep = validate_file(path, min_examples=1, max_tokens=limit, count_tokens=count)
    issue = only_issue(rep, "too_long")
    assert issue.line == 2
    assert f"{n_long} tokens" in issue.message and f"limit of {limit}" in issue.message
    assert [r.line for r in rep.rows] == [1, 3]
    # without a limit (or without a counter) nothing is too long
    assert validate_file(path, min_examples=1, count_tokens=count).ok
    assert validate_file(path, min_examples=1, max_tokens=limit).ok


def test_too_few_examples(tmp_path):
    path = write_lines(tmp_path / "few.jsonl", [good(i) for i in range(9)])
    issue = only_issue(validate_file(path), "too_few_examples")
    assert issue.line == 0 and str(issue).startswith("file: too_few_examples")
    assert "9 valid example(s), at least 10 required" in issue.message
    assert validate_file(path, min_examples=9).ok
    # invalid rows do not count towards the minimum
    rows: list = [good(i) for i in range(10)] + [msgs(("user", "x"))]
    rows[0] = msgs(("user", "x"))
    rep = validate_file(write_lines(tmp_path / "few2.jsonl", rows))
    assert sorted(i.rule for i in rep.issues) == ["no_assistant", "no_assistant", "too_few_examples"]


@pytest.mark.parametrize("field, value, shown", [
    ("rating", 7, "rating 7 is outside 1-5"),
    ("rating", 0, "rating 0 is outside 1-5"),
    ("score", 1.5, "score 1.5 is outside 0-1"),
])
def test_rating_out_of_range(tmp_path, field, value, shown):
    issue = only_issue(validate_file(with_defect(tmp_path, good(99) | {field: value}, at=9)), "range")
    assert issue.line == 9 and shown in issue.message


def test_boundary_ratings_accepted(tmp_path):
    rows = [good(i) | {"rating": r, "score": s} for i, (r, s) in enumerate([(1, 0), (5, 1), (2.5, 0.5)] * 4)]
    assert validate_file(write_lines(tmp_path / "b.jsonl", rows)).ok


def test_unknown_message_key(tmp_path):
    bad = {"messages": [{"role": "user", "content": "hi", "mood": "angry"},
                        {"role": "assistant", "content": "ok"}]}
    issue = only_issue(validate_file(with_defect(tmp_path, bad, at=8)), "unknown_key")
    assert issue.line == 8 and "message 1" in issue.message and "'mood'" in issue.message
    # known optional keys are fine
    ok = {"messages": [{"role": "user", "content": "hi", "name": "bob"},
                       {"role": "assistant", "content": "ok", "weight": 1}]}
    assert validate_file(with_defect(tmp_path, ok, at=8)).ok


def test_blank_lines_are_skipped(tmp_path):
    lines: list = []
    for i in range(10):
        lines += [good(i), "", "   "]
    rep = validate_file(write_lines(tmp_path / "blank.jsonl", lines))
    assert rep.ok and len(rep.rows) == 10
    assert [r.line for r in rep.rows] == [1 + 3 * i for i in range(10)]  # line numbers count blank lines


def test_missing_file(tmp_path):
    rep = validate_file(tmp_path / "nope.jsonl")
    assert not rep.ok and [(i.line, i.rule) for i in rep.issues] == [(0, "format")]
    assert "does not exist" in rep.issues[0].message


# -- 2. many defects at once, and the CLI -------------------------------------------
FIVE = {  # line -> (row, rule)
    2: ('{"messages": [}', "json"),
    5: (msgs(("user", "hi"), ("bot", "meh"), ("assistant", "ok")), "role"),
    9: (msgs(("user", "hi"), ("assistant", "")), "empty_content"),
    13: (msgs(("user", "hi")), "no_assistant"),
    17: (good(77) | {"rating": 11}, "range"),
}


@pytest.fixture
def five_bad(tmp_path) -> Path:
    rows: list = [good(i) for i in range(15)]
    for line in sorted(FIVE):
        rows.insert(line - 1, FIVE[line][0])
    assert len(rows) == 20
    return write_lines(tmp_path / "five.jsonl", rows)


@pytest.fixture
def clean(tmp_path) -> Path:
    return write_lines(tmp_path / "clean.jsonl", [good(i) for i in range(15)])


def test_five_defects_all_reported(five_bad):
    rep = validate_file(five_bad)
    assert [(i.line, i.rule) for i in rep.issues] == [(line, FIVE[line][1]) for line in sorted(FIVE)]
    assert len(rep.rows) == 15 and rep.lines_read == 20
    assert all(i.fix for i in rep.issues)
    d = rep.to_dict()
    assert d["ok"] is False and d["errors"] == 5 and d["valid_rows"] == 15
    assert [(x["line"], x["rule"], x["fix"]) for x in d["issues"]] == \
        [(line, FIVE[line][1], FIXES[FIVE[line][1]]) for line in sorted(FIVE)]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneloop.cli.main", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.mark.server
def test_cli_subprocess(five_bad, clean):
    bad = _cli("data", "validate", str(five_bad))
    assert bad.returncode == 1, bad.stderr
    for line in FIVE:
        assert f"line {line}: {FIVE[line][1]}:" in bad.stdout
    assert "FAILED: 5 problem(s)" in bad.stdout and "20 line(s), 15 valid row(s)" in bad.stdout

    ok = _cli("data", "validate", str(clean))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith("15 line(s), 15 valid row(s): OK")
    assert "line " not in ok.stdout


def test_cli_in_process(five_bad, clean, tmp_path, capsys):
    report = tmp_path / "out" / "report.json"
    assert cli.main(["data", "validate", str(five_bad), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    printed = [ln for ln in out.splitlines() if ln.startswith("line ")]
    assert len(printed) == 5
    for line in FIVE:
        assert any(p.startswith(f"line {line}: {FIVE[line][1]}: ") and "Fix: " in p for p in printed)
    saved = json.loads(report.read_text())
    assert [i["line"] for i in saved["issues"]] == sorted(FIVE)

    assert cli.main(["data", "validate", str(clean)]) == 0
    assert "OK" in capsys.readouterr().out
    # --min-examples is honoured
    assert cli.main(["data", "validate", str(clean), "--min-examples", "16"]) == 1
    assert "file: too_few_examples" in capsys.readouterr().out


# -- 3. prepare_dataset refuses bad data before writing anything ---------------------
def test_prepare_raises_and_writes_nothing(five_bad, state_dir):
    datasets = state_dir / "datasets"
    with pytest.raises(DataValidationError) as ei:
        prepare_dataset(five_bad, DataSpec())
    err = ei.value
    assert isinstance(err, UserError)
    assert [(i.line, i.rule) for i in err.issues] == [(line, FIVE[line][1]) for line in sorted(FIVE)]
    assert "5 data problem(s)" in str(err) and "tuneloop data validate" in err.fix
    for line in FIVE:
        assert f"line {line}: " in str(err)
    assert err.report_path is None
    assert not datasets.exists() or not any(datasets.iterdir())
    assert not state_dir.exists() or not any(state_dir.rglob("*"))


def test_prepare_writes_only_the_report(five_bad, state_dir, tmp_path):
    reports = tmp_path / "reports"
    with pytest.raises(DataValidationError) as ei:
        prepare_dataset(five_bad, DataSpec(), report_dir=reports)
    assert sorted(p.name for p in reports.iterdir()) == ["validation-five.json"]
    assert Path(ei.value.report_path) == reports / "validation-five.json"
    assert str(ei.value.report_path) in str(ei.value)
    saved = json.loads((reports / "validation-five.json").read_text())
    assert saved["ok"] is False and saved["errors"] == 5
    assert [(i["line"], i["rule"]) for i in saved["issues"]] == [(line, FIVE[line][1]) for line in sorted(FIVE)]
    assert all(i["fix"] == FIXES[i["rule"]] for i in saved["issues"])
    assert not (state_dir / "datasets").exists() or not any((state_dir / "datasets").iterdir())


def test_prepare_bad_eval_file_raises(clean, tmp_path):
    ev = write_lines(tmp_path / "eval.jsonl", [good(500), msgs(("user", "x"))])
    with pytest.raises(DataValidationError) as ei:
        prepare_dataset(clean, DataSpec(min_examples=1), eval_data=ev)
    assert [(i.line, i.rule) for i in ei.value.issues] == [(2, "no_assistant")]


# -- 4. dataset behaviour --------------------------------------------------------------
def _keys(rows) -> set[str]:
    return {r.key for r in rows}


def test_exact_duplicates_removed(tmp_path):
    rows: list = [good(i) for i in range(20)]
    rows += [good(3), good(3), good(7)]
    # same prompt, different answer is not an exact duplicate
    rows.append(good(3, answer="another answer"))
    ds = prepare_dataset(write_lines(tmp_path / "dup.jsonl", rows), DataSpec())
    assert ds.stats["duplicates_removed"] == 3
    assert ds.stats["valid_rows"] == 24 and ds.stats["rows_read"] == 24
    kept = ds.train + ds.validation + ds.test
    assert len(kept) == 21 and len(_keys(kept)) == 21


def test_split_is_deterministic_and_order_independent(demo_files, tmp_path):
    lines = [ln for ln in demo_files["feedback"].read_text().splitlines() if ln.strip()]
    shuffled = lines[:]
    random.Random(1).shuffle(shuffled)
    assert shuffled != lines
    other = write_lines(tmp_path / "shuffled.jsonl", shuffled)
    a = prepare_dataset(demo_files["feedback"], DataSpec())
    b = prepare_dataset(other, DataSpec())
    assert a.version == b.version
    for split in ("train", "validation", "test"):
        assert _keys(getattr(a, split)) == _keys(getattr(b, split)), split
    assert _keys(a.eval_rows) == _keys(b.eval_rows)


@pytest.mark.parametrize("val, test", [(0.1, 0.1), (0.2, 0.3), (0.0, 0.25)])
def test_split_fractions(demo_files, val, test):
    ds = prepare_dataset(demo_files["feedback"], DataSpec(validation_split=val, test_split=test))
    n = len(ds.train) + len(ds.validation) + len(ds.test)
    assert n >= 390
    assert abs(len(ds.validation) / n - val) < 0.06
    assert abs(len(ds.test) / n - test) < 0.06
    if val == 0:
        assert ds.validation == []
    # the same prompt never lands in two splits
    prompts = [{r.prompt_key for r in getattr(ds, s)} for s in ("train", "validation", "test")]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert ds.eval_rows == ds.test and ds.stats["eval_source"] == "test split"


def test_eval_data_never_trained_on_and_planted_leak_removed(demo_files, tmp_path):
    clean_ds = prepare_dataset(demo_files["feedback"], DataSpec(), eval_data=demo_files["heldout"])
    eval_prompts = {r.prompt_key for r in clean_ds.eval_rows}
    assert len(clean_ds.eval_rows) == 120 and clean_ds.stats["eval_source"] == str(demo_files["heldout"])
    assert not eval_prompts & {r.prompt_key for r in clean_ds.train + clean_ds.validation}
    assert clean_ds.stats["eval_leaks_removed"] == 0

    # plant a leak: an eval prompt (with changed spacing and case) and a different answer
    ev = json.loads(demo_files["heldout"].read_text().splitlines()[0])
    leak = json.loads(json.dumps(ev))
    leak["messages"][1]["content"] = "  " + leak["messages"][1]["content"].upper().replace(" ", "   ") + " "
    leak["messages"][-1]["content"] = "definitely-not-" + ev["messages"][-1]["content"]
    lines = demo_files["feedback"].read_text().splitlines() + [json.dumps(leak)]
    leaky = write_lines(tmp_path / "leaky.jsonl", lines)
    # no test split, so the leaked row can only land in train or validation
    spec = DataSpec(test_split=0.0)
    ds = prepare_dataset(leaky, spec, eval_data=demo_files["heldout"])
    assert ds.stats["eval_leaks_removed"] == 1
    assert ds.stats["valid_rows"] == 403
    trained = ds.train + ds.validation
    assert not {r.prompt_key for r in ds.eval_rows} & {r.prompt_key for r in trained}
    assert all("definitely-not-" not in r.answer for r in trained)
    # removing the leak gives the same data as never having it
    base = prepare_dataset(demo_files["feedback"], spec, eval_data=demo_files["heldout"])
    assert ds.version == base.version and _keys(ds.train) == _keys(base.train)


def test_version_is_content_hash(tmp_path):
    rows = [good(i) for i in range(15)]
    a = prepare_dataset(write_lines(tmp_path / "a.jsonl", rows), DataSpec())
    b = prepare_dataset(write_lines(tmp_path / "b.jsonl", rows[::-1]), DataSpec())
    assert a.version == b.version and len(a.version) == 64 and int(a.version, 16) >= 0
    changed = [*rows[:6], good(6, answer="a different answer"), *rows[7:]]
    c = prepare_dataset(write_lines(tmp_path / "c.jsonl", changed), DataSpec())
    assert c.version != a.version
    # rating / tenant are not part of the normalized conversation
    d = prepare_dataset(write_lines(tmp_path / "d.jsonl", [r | {"rating": 1, "tenant": "x"} for r in rows]),
                        DataSpec())
    assert d.version == a.version
    # function level: order-independent, content-sensitive
    assert dataset_version(a.train) == dataset_version(a.train[::-1])
    assert dataset_version(a.train) != dataset_version(a.train[1:])


def test_rows_without_a_tenant_belong_to_the_specs(tmp_path):
    """A file for one tenant need not repeat it on every row; a row naming another tenant is still refused."""
    rows = [good(i) for i in range(12)]
    ds = prepare_dataset(write_lines(tmp_path / "acme.jsonl", rows), DataSpec(), tenant="acme")
    assert {r.tenant for r in ds.train + ds.validation + ds.test} == {"acme"}
    mixed = [*rows[:11], good(11) | {"tenant": "globex"}]
    with pytest.raises(DataValidationError) as e:
        prepare_dataset(write_lines(tmp_path / "mixed.jsonl", mixed), DataSpec(), tenant="acme")
    assert [(i.line, i.rule) for i in e.value.issues] == [(12, "tenant")]
    assert "row belongs to tenant 'globex', this dataset is for 'acme'" in str(e.value)
    # without a spec tenant, such rows stay the default tenant's
    assert validate_file(write_lines(tmp_path / "plain.jsonl", rows)).rows[0].tenant == "default"


def test_version_changes_with_split_membership(demo_files):
    """Same rows split differently are a different dataset: the version (and thus the saved
    folder and the training run id) must differ, or a later save would silently keep stale splits."""
    a = prepare_dataset(demo_files["feedback"], DataSpec())
    b = prepare_dataset(demo_files["feedback"], DataSpec(validation_split=0.2, test_split=0.3))
    c = prepare_dataset(demo_files["feedback"], DataSpec(), eval_data=demo_files["heldout"])
    assert len({a.version, b.version, c.version}) == 3


def test_save_is_idempotent(demo_files, state_dir):
    root = state_dir / "datasets"
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    first = ds.save(root)
    assert first == root / ds.version[:16] and ds.path == first
    assert sorted(p.name for p in first.iterdir()) == \
        ["datasheet.json", "eval.jsonl", "manifest.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    content = {p.name: p.read_bytes() for p in first.iterdir()}
    train = [json.loads(x) for x in (first / "train.jsonl").read_text().splitlines()]
    assert train == [r.to_json() for r in ds.train]
    manifest = json.loads(content["manifest.json"])
    assert manifest["version"] == ds.version and manifest["splits"] == {
        "train": len(ds.train), "validation": len(ds.validation), "test": len(ds.test)}

    again = prepare_dataset(demo_files["feedback"], DataSpec())
    assert again.save(root) == first and again.path == first
    assert ds.save(root) == first
    assert [p.name for p in root.iterdir()] == [first.name]  # one folder, no staging leftovers
    assert {p.name: p.read_bytes() for p in first.iterdir()} == content
