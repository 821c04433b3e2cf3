"""Preference (DPO) rows in OpenAI's format: each defect reported by line, rule and fix; telling chat
files from preference files, and a file that mixes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.data.preference import (PreferenceRow, detect_format, validate_preference_file,
                                      validate_training_file)
from tuneloop.data.validate import FIXES


def pref(i: int, **over) -> dict:
    row = {"input": {"messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": f"question {i}?"}]},
           "preferred_output": [{"role": "assistant", "content": f"good answer {i}"}],
           "non_preferred_output": [{"role": "assistant", "content": f"bad answer {i}"}]}
    return row | over


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def with_defect(tmp_path: Path, bad, at: int = 4, n_good: int = 11) -> Path:
    rows: list = [pref(i) for i in range(n_good)]
    rows.insert(at - 1, bad)
    return write_lines(tmp_path / "pref.jsonl", rows)


def only_issue(report, rule: str, line: int):
    assert [(i.line, i.rule) for i in report.issues] == [(line, rule)], [str(i) for i in report.issues]
    issue = report.issues[0]
    assert not report.ok and issue.fix == FIXES[rule] and f"Fix: {issue.fix}" in str(issue)
    return issue


def test_clean_preference_file(tmp_path):
    rep = validate_preference_file(write_lines(tmp_path / "p.jsonl", [pref(i) for i in range(10)]))
    assert rep.ok and rep.format == "dpo" and len(rep.rows) == 10 and rep.to_dict()["format"] == "dpo"
    row = rep.rows[0]
    assert isinstance(row, PreferenceRow) and row.line == 1
    assert row.to_json() == {"prompt": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "question 0?"}],
                             "chosen": "good answer 0", "rejected": "bad answer 0", "tenant": "default"}


def test_row_shape_matches_the_feedback_builders_preference_file():
    # feedback.build writes {"prompt": [...], "chosen", "rejected", "tenant"} per line
    keys = set(PreferenceRow(1, [{"role": "user", "content": "q"}], "a", "b", "t").to_json())
    assert keys == {"prompt", "chosen", "rejected", "tenant"}


def test_tools_and_parallel_tool_calls_accepted(tmp_path):
    row = pref(0, input={"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function"}],
                         "parallel_tool_calls": False})
    assert validate_preference_file(write_lines(tmp_path / "p.jsonl", [row]), min_examples=1).ok


@pytest.mark.parametrize("bad_input, shown", [
    (None, "input must be an object holding messages (it is missing)"),
    ("hello", "got a str"),
    ({"tools": []}, "input.messages must be a non-empty list"),
    ({"messages": []}, "got a list of 0"),
])
def test_input_messages_missing_or_empty(tmp_path, bad_input, shown):
    row = pref(99, input=bad_input) if bad_input is not None else {k: v for k, v in pref(99).items() if k != "input"}
    issue = only_issue(validate_preference_file(with_defect(tmp_path, row, at=3)), "dpo_input", 3)
    assert shown in issue.message


def test_input_message_checks_are_the_chat_ones(tmp_path):
    row = pref(99, input={"messages": [{"role": "robot", "content": "q"}]})
    issue = only_issue(validate_preference_file(with_defect(tmp_path, row, at=6)), "role", 6)
    assert "input message 1 has role 'robot'" in issue.message


@pytest.mark.parametrize("key", ["preferred_output", "non_preferred_output"])
@pytest.mark.parametrize("value, rule, shown", [
    ({"role": "assistant", "content": "x"}, "dpo_output", "got a dict"),
    ([], "dpo_output", "got a list of 0"),
    ([{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}], "dpo_output", "got a list of 2"),
    ([{"role": "user", "content": "x"}], "dpo_output", "role 'user', not 'assistant'"),
    ([{"role": "assistant", "content": "   "}], "empty_content", "has empty content"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}], "empty_content", "no text content"),
    ([{"role": "assistant", "content": 5}], "type", "content is int"),
])
def test_outputs_are_one_assistant_message_with_text(tmp_path, key, value, rule, shown):
    issue = only_issue(validate_preference_file(with_defect(tmp_path, pref(99, **{key: value}), at=5)), rule, 5)
    assert key in issue.message and shown in issue.message


def test_missing_output(tmp_path):
    row = {k: v for k, v in pref(99).items() if k != "non_preferred_output"}
    issue = only_issue(validate_preference_file(with_defect(tmp_path, row, at=2)), "dpo_output", 2)
    assert "non_preferred_output" in issue.message and "it is missing" in issue.message


def test_same_preferred_and_non_preferred(tmp_path):
    row = pref(99, non_preferred_output=[{"role": "assistant", "content": " good  answer 99\n"}])
    only_issue(validate_preference_file(with_defect(tmp_path, row, at=7)), "same_output", 7)


def test_bad_json_and_bad_utf8_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [json.dumps(pref(i)).encode() for i in range(12)]
    lines[2] = b'{"input": {"messages": [}'
    lines[5] = json.dumps(pref(5)).encode().replace(b"good", b"g\xffod")
    path.write_bytes(b"\n".join(lines) + b"\n")
    rep = validate_preference_file(path)
    assert [(i.line, i.rule) for i in rep.issues] == [(3, "json"), (6, "encoding")]
    assert "byte 0xff" in str(rep.issues[1]) and len(rep.rows) == 10 and rep.ok is False


def test_too_few_and_missing_file(tmp_path):
    rep = validate_preference_file(write_lines(tmp_path / "p.jsonl", [pref(0)]))
    assert [(i.line, i.rule) for i in rep.issues] == [(0, "too_few_examples")]
    assert validate_preference_file(tmp_path / "p.jsonl", min_examples=1).ok
    assert [i.rule for i in validate_preference_file(tmp_path / "nope.jsonl").issues] == ["format"]


def test_rows_take_the_callers_tenant_unless_they_name_one(tmp_path):
    rep = validate_preference_file(write_lines(tmp_path / "p.jsonl", [pref(0), pref(1, tenant="b")]),
                                   min_examples=1, tenant="a")
    assert [r.tenant for r in rep.rows] == ["a", "b"]


# -- which kind of file ----------------------------------------------------------------------------
@pytest.mark.parametrize("obj, kind", [
    (pref(0), "dpo"), ({"preferred_output": []}, "dpo"), (chat(0), "chat"),
    ({"prompt": "p", "completion": "c"}, "chat"), ({"text": "x"}, None), ([1], None), ("s", None),
])
def test_detect_format(obj, kind):
    assert detect_format(obj) == kind


@pytest.mark.parametrize("rows, kind", [
    ([chat(i) for i in range(3)], "chat"),
    ([{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)], "chat"),
    ([pref(i) for i in range(3)], "dpo"),
])
def test_training_file_kind_by_its_rows(tmp_path, rows, kind):
    rep = validate_training_file(write_lines(tmp_path / "f.jsonl", rows), min_examples=3)
    assert rep.ok and rep.format == kind and len(rep.rows) == 3


def test_mixed_file_names_the_first_row_of_the_other_kind(tmp_path):
    rows = [{"text": "?"}, pref(0), pref(1), chat(0), pref(2), chat(1), '{"broken', pref(3)]
    rep = validate_training_file(write_lines(tmp_path / "f.jsonl", rows), min_examples=1)
    assert rep.format == "dpo" and len(rep.rows) == 4
    assert [(i.line, i.rule) for i in rep.issues] == [(1, "format"), (4, "mixed_format"), (7, "json")]
    mixed = rep.issues[1]
    assert "as line 2" in mixed.message and "2 row(s) of the other kind" in mixed.message
    assert mixed.fix == FIXES["mixed_format"]


def test_chat_file_with_a_preference_row(tmp_path):
    rep = validate_training_file(write_lines(tmp_path / "f.jsonl", [chat(0), chat(1), pref(0)]), min_examples=1)
    assert rep.format == "chat" and [(i.line, i.rule) for i in rep.issues] == [(3, "mixed_format")]


def test_chat_rows_in_a_training_file_keep_the_chat_rules(tmp_path):
    bad = {"messages": [{"role": "user", "content": "q"}]}
    rep = validate_training_file(write_lines(tmp_path / "f.jsonl", [chat(0), bad]), min_examples=1)
    assert [(i.line, i.rule) for i in rep.issues] == [(2, "no_assistant")]
