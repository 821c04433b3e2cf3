"""Preference (DPO) rows in OpenAI's format, and telling a chat file from a preference file.

One JSON object per line:
  {"input": {"messages": [...], "tools": [...], "parallel_tool_calls": true},
   "preferred_output": [{"role": "assistant", "content": "..."}],
   "non_preferred_output": [{"role": "assistant", "content": "..."}]}
with an optional "tenant". A valid row becomes a `PreferenceRow`, which writes itself the way
`feedback.build` writes preference.jsonl ({"prompt": [...], "chosen", "rejected", "tenant"}), so uploaded
and collected preference data train alike. Lines are read and messages checked by `validate` (same
encoding, JSON and message rules, same line-numbered issues).

An uploaded file holds one kind of row: a job trains one objective on it. Its first recognizable row
decides the kind; the first row of the other kind is an error of its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneloop.data.validate import (Issue, Row, ValidationReport, check_count, check_messages, check_row, missing,
                                    read_objects)

KINDS = {"chat": "chat (messages, or prompt and completion)",
         "dpo": "preference (input, preferred_output, non_preferred_output)"}
OUTPUTS = ("preferred_output", "non_preferred_output")


@dataclass
class PreferenceRow:
    """One comparison: the prompt conversation, the answer to prefer and the one to avoid."""

    line: int
    prompt_messages: list[dict]
    chosen: str
    rejected: str
    tenant: str = "default"

    def to_row(self) -> Row:
        """The pair as a training row: the prompt and the preferred answer as its conversation, the other
        answer as `rejected`."""
        return Row(self.line, [dict(m) for m in self.prompt_messages] + [{"role": "assistant", "content": self.chosen}],
                   tenant=self.tenant, rejected=self.rejected)

    def to_json(self) -> dict:
        return {"prompt": [{"role": m["role"], "content": m["content"]} for m in self.prompt_messages],
                "chosen": self.chosen, "rejected": self.rejected, "tenant": self.tenant}


def detect_format(obj) -> str | None:
    """"dpo" or "chat" by the row's keys; None for a row that is neither (it is reported, not guessed)."""
    if not isinstance(obj, dict):
        return None
    if obj.keys() & {"input", *OUTPUTS}:
        return "dpo"
    if obj.keys() & {"messages", "prompt", "completion"}:
        return "chat"
    return None


def _got(value) -> str:
    if value is None:
        return "it is missing"
    if isinstance(value, list):
        return f"got a list of {len(value)}"
    return f"got a {type(value).__name__}"


def _answer(obj: dict, key: str, line: int, issues: list[Issue]) -> str | None:
    """The text of `key`'s single assistant message, or None with the reason added to `issues`."""
    out = obj.get(key)
    if not isinstance(out, list) or len(out) != 1:
        issues.append(Issue(line, "dpo_output", f"{key} must be a list of exactly one assistant message "
                                                f"({_got(out)})"))
        return None
    norm, found = check_messages(out, line, f"{key} message")
    issues.extend(found)
    if found:
        return None
    role, content = norm[0]["role"], norm[0]["content"]
    if role != "assistant":
        issues.append(Issue(line, "dpo_output", f"{key} message has role {role!r}, not 'assistant'"))
        return None
    if not content.strip():  # tool calls without text: there is no answer text to prefer or avoid
        issues.append(Issue(line, "empty_content", f"{key} message has no text content"))
        return None
    return content


def check_preference_row(obj, line: int, tenant: str) -> tuple[PreferenceRow | None, list[Issue]]:
    """The row as a PreferenceRow, or None and every issue found in it."""
    issues: list[Issue] = []
    if not isinstance(obj, dict):
        return None, [Issue(line, "type", f"the row is a JSON {type(obj).__name__}, not an object")]
    inp = obj.get("input")
    prompt = None
    if not isinstance(inp, dict):
        issues.append(Issue(line, "dpo_input", f"input must be an object holding messages ({_got(inp)})"))
    elif not isinstance(inp.get("messages"), list) or not inp["messages"]:
        issues.append(Issue(line, "dpo_input", "input.messages must be a non-empty list of message objects "
                                               f"({_got(inp.get('messages'))})"))
    else:
        prompt, found = check_messages(inp["messages"], line, "input message")
        issues.extend(found)
        if inp.get("tools") is not None and not isinstance(inp["tools"], list):
            issues.append(Issue(line, "type", f"input.tools must be a list of tool definitions ({_got(inp['tools'])})"))
        if inp.get("parallel_tool_calls") is not None and not isinstance(inp["parallel_tool_calls"], bool):
            issues.append(Issue(line, "type", "input.parallel_tool_calls must be true or false "
                                              f"({_got(inp['parallel_tool_calls'])})"))
    chosen, rejected = (_answer(obj, key, line, issues) for key in OUTPUTS)
    if chosen is not None and rejected is not None and chosen.split() == rejected.split():
        issues.append(Issue(line, "same_output", "preferred_output and non_preferred_output hold the same text"))
    tenant = obj.get("tenant", tenant)
    if not isinstance(tenant, str) or not tenant:
        issues.append(Issue(line, "type", f"tenant {tenant!r} is not a non-empty string"))
    if issues:
        return None, issues
    return PreferenceRow(line, prompt, chosen, rejected, tenant), issues


def validate_preference_file(path: str | Path, min_examples: int = 10, tenant: str = "default") -> ValidationReport:
    """Check every line as a preference row; the report's rows are PreferenceRows."""
    report = ValidationReport(str(path), format="dpo")
    if missing(path, report):
        return report
    for line, obj in read_objects(path, report):
        row, issues = check_preference_row(obj, line, tenant)
        report.issues.extend(issues)
        if row is not None:
            report.rows.append(row)
    check_count(report, min_examples)
    return report


CHECKS = {"chat": check_row, "dpo": check_preference_row}


def validate_training_file(path: str | Path, min_examples: int = 10, tenant: str = "default") -> ValidationReport:
    """Check a file of either kind: its first recognizable row sets `report.format` (chat when none is),
    every row of that kind is checked by its rules, and the first row of the other kind is a `mixed_format`
    issue (counting the rest). A row that is neither kind is an issue of its line."""
    report = ValidationReport(str(path))
    if missing(path, report):
        return report
    decided_at, other_first, other_count = None, None, 0
    for line, obj in read_objects(path, report):
        kind = detect_format(obj)
        if kind is None:
            if isinstance(obj, dict):
                report.issues.append(Issue(line, "format", f"the row is neither {KINDS['chat']} nor {KINDS['dpo']} "
                                                           f"data (keys: {sorted(obj)[:10]})"))
            else:
                report.issues.append(Issue(line, "type", f"the row is a JSON {type(obj).__name__}, not an object"))
            continue
        if decided_at is None:
            decided_at, report.format = line, kind
        if kind != report.format:
            other_first, other_count = other_first or line, other_count + 1
            continue
        row, issues = CHECKS[kind](obj, line, tenant)
        report.issues.extend(issues)
        if row is not None:
            report.rows.append(row)
    if other_count:
        other = "dpo" if report.format == "chat" else "chat"
        report.issues.append(Issue(other_first, "mixed_format", (
            f"this row is {KINDS[other]} data, but the file is {KINDS[report.format]} data (as line {decided_at} "
            f"is); {other_count} row(s) of the other kind in all")))
        report.issues.sort(key=lambda i: i.line)
    check_count(report, min_examples)
    return report


def sniff_format(path: str | Path) -> str:
    """"dpo" or "chat": the kind of the file's first recognizable row (chat when none is, or no file)."""
    report = ValidationReport(str(path))
    if not Path(path).exists():
        return "chat"
    for _, obj in read_objects(path, report):
        if (kind := detect_format(obj)) is not None:
            return kind
    return "chat"


def read_feedback_pairs(path: str | Path, tenant: str) -> ValidationReport:
    """A feedback dataset's preference.jsonl ({"prompt": [...], "chosen", "rejected"}) as Rows with `rejected`,
    each line checked by the preference file's rules."""
    report = ValidationReport(str(path), format="dpo")
    if missing(path, report):
        return report
    for line, obj in read_objects(path, report):
        if isinstance(obj, dict):
            obj = {"input": {"messages": obj.get("prompt")},
                   "preferred_output": [{"role": "assistant", "content": obj.get("chosen")}],
                   "non_preferred_output": [{"role": "assistant", "content": obj.get("rejected")}],
                   "tenant": obj.get("tenant", tenant)}
        row, issues = check_preference_row(obj, line, tenant)
        report.issues.extend(issues)
        if row is not None:
            report.rows.append(row.to_row())
    return report


def read_feedback_negatives(path: str | Path, tenant: str) -> ValidationReport:
    """A feedback dataset's negatives.jsonl ({"messages": [...], "response"}) as undesirable Rows (label False)."""
    report = ValidationReport(str(path))
    if missing(path, report):
        return report
    for line, obj in read_objects(path, report):
        if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            obj = {"messages": [*obj["messages"], {"role": "assistant", "content": obj.get("response")}],
                   "label": False, "tenant": obj.get("tenant", tenant)}
        row, issues = check_row(obj, line, tenant)
        report.issues.extend(issues)
        if row is not None:
            report.rows.append(row)
    return report
