"""Read a JSONL feedback file and check every row against OpenAI's fine-tuning rules.

Accepted shapes, one JSON object per line:
  {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
  {"prompt": "...", "completion": "..."}
with optional "rating" (1-5), "score" (0-1), "tenant" (string) and "label" (true or false: whether the
answer is a good one, for KTO).
(Preference rows for DPO, and telling the two kinds of file apart: `tuneloop.data.preference`.)
Every problem is reported with its line, the rule and how to fix it; the
whole file is read so that one run lists all problems at once. Bytes that
are not UTF-8, text with lone surrogate escapes (\\ud800 without its pair,
which no UTF-8 file can hold), numbers past Python's 4300-digit limit and
nesting past the recursion limit are each a problem of their line, never
an exception.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "function_call", "tool_call_id"}
ROW_KEYS = {"messages", "prompt", "completion", "rating", "score", "tenant", "id", "metadata", "user", "timestamp",
            "label"}

FIXES = {
    "json": "write exactly one JSON object per line (no trailing commas, double quotes only)",
    "type": "give the field the type shown in the docs: messages is a list of objects, content a string, rating a number",
    "format": 'use {"messages": [...]} or {"prompt": "...", "completion": "..."}; preference (DPO) data: '
              '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}',
    "role": f"use one of the roles {', '.join(ROLES)}",
    "unknown_key": f"keep only the keys {', '.join(sorted(MESSAGE_KEYS))} in a message",
    "no_assistant": "add an assistant message with the answer the model should learn",
    "empty_content": "write the message text, or drop the row",
    "too_long": "shorten the conversation or raise dataset.max_tokens (up to the model's context length)",
    "range": "ratings are 1-5 and scores 0-1",
    "too_few_examples": "add rows: at least the minimum number of valid examples is needed",
    "tenant": "split the file per tenant and train each tenant separately",
    "dpo_input": 'give "input": {"messages": [...]} holding the conversation up to the answer',
    "dpo_output": 'give preferred_output and non_preferred_output each as a list of exactly one message, '
                  '[{"role": "assistant", "content": "..."}]',
    "same_output": "make the preferred and non-preferred answers differ (nothing to learn otherwise), or drop the row",
    "mixed_format": "split the file in two: chat rows (messages, or prompt and completion) in one, preference rows "
                    "(input, preferred_output, non_preferred_output) in the other",
    "encoding": "save the file as UTF-8, and escape characters beyond U+FFFF as a complete surrogate pair "
                "(\\ud83d\\ude00), never half of one",
}

_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as surrogateescape decodes them
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]", re.ASCII)


@dataclass(frozen=True)
class Issue:
    line: int  # 1-based; 0 means the file as a whole
    rule: str
    message: str
    severity: str = "error"

    @property
    def fix(self) -> str:
        return FIXES.get(self.rule, "")

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: {self.rule}: {self.message}. Fix: {self.fix}"


@dataclass
class Row:
    """One normalized example: chat messages plus optional feedback fields."""

    line: int
    messages: list[dict]
    rating: float | None = None
    score: float | None = None
    tenant: str = "default"
    n_tokens: int | None = None  # counted once during validation, reused by the cost estimate
    # preference data: `rejected` is the answer to avoid (the final assistant message is the one to prefer);
    # `label` says whether the final answer is desirable (True) or undesirable (False), for KTO
    rejected: str | None = None
    label: bool | None = None

    @property
    def canonical(self) -> str:
        out: list = [{"role": m["role"], "content": m["content"]} for m in self.messages]
        if self.rejected is not None:
            out.append({"rejected": self.rejected})
        if self.label is not None:
            out.append({"label": self.label})
        return json.dumps(out, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    @property
    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) the final assistant answer."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def answer(self) -> str:
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[last]["content"]

    @property
    def prompt_key(self) -> str:
        text = json.dumps([[m["role"], " ".join(m["content"].split()).casefold()] for m in self.prompt_messages],
                          ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> dict:
        out = {"messages": [{"role": m["role"], "content": m["content"]} for m in self.messages],
               "tenant": self.tenant}
        if self.rating is not None:
            out["rating"] = self.rating
        if self.score is not None:
            out["score"] = self.score
        if self.rejected is not None:
            out["rejected"] = self.rejected
        if self.label is not None:
            out["label"] = self.label
        return out


@dataclass
class ValidationReport:
    source: str
    rows: list[Row] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    lines_read: int = 0
    format: str = "chat"  # or "dpo": then rows are preference.PreferenceRow

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "source": self.source, "format": self.format, "ok": self.ok, "lines_read": self.lines_read,
            "valid_rows": len(self.rows), "errors": len(self.errors),
            "issues": [asdict(i) | {"fix": i.fix} for i in self.issues],
        }

    def write(self, path: Path) -> Path:
        from tuneloop.runtime.fsutil import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _lone_surrogate(obj) -> str | None:
    """The first string (key or value) in a parsed JSON value that holds a lone surrogate, else None."""
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def parse_line(text: str, line: int) -> tuple[object, Issue | None]:
    """One JSONL line (decoded with errors="surrogateescape") as a JSON value, or the issue that stops it."""
    bad = _UNDECODABLE.search(text)
    if bad:
        return None, Issue(line, "encoding", f"byte 0x{ord(bad.group()) - 0xDC00:02x} at column {bad.start() + 1} "
                                             "is not UTF-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, Issue(line, "json", f"not valid JSON ({e.msg} at column {e.colno})")
    except RecursionError:
        return None, Issue(line, "json", "not valid JSON here (nested too deeply to read: keep nesting to a few "
                                         "levels)")
    except ValueError as e:  # an integer past Python's 4300-digit limit
        return None, Issue(line, "json", f"not valid JSON here ({str(e).split(':')[0]})")
    if _ESCAPED_SURROGATE.search(text):
        found = _lone_surrogate(obj)
        if found is not None:
            at = _SURROGATE.search(found)
            after = f", after {found[:at.start()][-20:]!r}" if at.start() else ""
            return None, Issue(line, "encoding", f"a string holds a lone surrogate escape (\\u{ord(at.group()):04x}"
                                                 f"{after}), which UTF-8 cannot store")
    return obj, None


def check_messages(messages: list, line: int, where: str = "message") -> tuple[list[dict], list[Issue]]:
    """Each message's role, keys and content: the messages as {role, content}, and the issues found.
    `where` names them in the issues ("message 2", "input message 2", ...)."""
    issues: list[Issue] = []
    norm = []
    for n, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            issues.append(Issue(line, "type", f"{where} {n} is a {type(m).__name__}, not an object"))
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            issues.append(Issue(line, "role", f"{where} {n} has role {role!r}"))
        extra = sorted(set(m) - MESSAGE_KEYS)
        if extra:
            issues.append(Issue(line, "unknown_key", f"{where} {n} has unrecognized key(s) {extra}"))
        if content is None and m.get("tool_calls"):
            content = ""
        elif not isinstance(content, str):
            issues.append(Issue(line, "type", f"{where} {n} content is {type(content).__name__}, not a string"))
            continue
        elif not content.strip():
            issues.append(Issue(line, "empty_content", f"{where} {n} ({role}) has empty content"))
        norm.append({"role": role, "content": content})
    return norm, issues


def check_row(obj, line: int, tenant: str) -> tuple[Row | None, list[Issue]]:
    issues: list[Issue] = []
    bad = lambda rule, msg: issues.append(Issue(line, rule, msg))  # noqa: E731
    if not isinstance(obj, dict):
        bad("type", f"the row is a JSON {type(obj).__name__}, not an object")
        return None, issues
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            bad("type", "messages must be a non-empty list of message objects")
            return None, issues
    elif "prompt" in obj or "completion" in obj:
        p, c = obj.get("prompt"), obj.get("completion")
        if not isinstance(p, str) or not isinstance(c, str):
            bad("type", f"prompt and completion must both be strings (got {type(p).__name__}, {type(c).__name__})")
            return None, issues
        messages = [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
    else:
        bad("format", f"the row has neither messages nor prompt/completion (keys: {sorted(obj)})")
        return None, issues

    norm, problems = check_messages(messages, line)
    issues.extend(problems)
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        bad("no_assistant", "no assistant message: nothing to learn from this row")

    rating, score, tenant = obj.get("rating"), obj.get("score"), obj.get("tenant", tenant)
    label = obj.get("label")
    if label is not None and not isinstance(label, bool):
        bad("type", f"label {label!r} is not true or false (whether the answer is a good one, for KTO)")
    if rating is not None and not _is_number(rating):
        bad("type", f"rating {rating!r} is not a number")
    elif rating is not None and not 1 <= rating <= 5:
        bad("range", f"rating {rating} is outside 1-5")
    if score is not None and not _is_number(score):
        bad("type", f"score {score!r} is not a number")
    elif score is not None and not 0 <= score <= 1:
        bad("range", f"score {score} is outside 0-1")
    if not isinstance(tenant, str) or not tenant:
        bad("type", f"tenant {tenant!r} is not a non-empty string")
    if issues:
        return None, issues
    return Row(line, norm, rating, score, tenant, label=label), issues


def validate_file(
    path: str | Path,
    min_examples: int = 10,
    max_tokens: int | None = None,
    count_tokens: Callable[[list[dict]], int] | None = None,
    tenant: str = "default",
) -> ValidationReport:
    """Check every line; return the valid rows and every issue found.

    A row without a "tenant" field belongs to `tenant` (the spec's): a file for one tenant need not repeat it.
    """
    report = ValidationReport(str(path))
    if missing(path, report):
        return report
    for line_no, obj in read_objects(path, report):
        row, issues = check_row(obj, line_no, tenant)
        report.issues.extend(issues)
        if row is None:
            continue
        if count_tokens is not None and max_tokens is not None:
            row.n_tokens = count_tokens(row.messages)
            if row.n_tokens > max_tokens:
                report.issues.append(Issue(line_no, "too_long",
                                           f"{row.n_tokens} tokens, over the limit of {max_tokens}"))
                continue
        report.rows.append(row)
    check_count(report, min_examples)
    return report


def read_objects(path: str | Path, report: ValidationReport) -> Iterator[tuple[int, object]]:
    """(line number, JSON value) for each non-blank line that parses; the lines that do not become issues
    in `report`. `report.lines_read` counts as it goes."""
    # utf-8-sig: a byte order mark (spreadsheet programs write one) is not part of line 1;
    # surrogateescape: a byte that is not UTF-8 is its line's problem, not an exception
    with Path(path).open(encoding="utf-8-sig", errors="surrogateescape") as fh:
        for line_no, text in enumerate(fh, 1):
            report.lines_read = line_no
            if not text.strip():
                continue
            obj, problem = parse_line(text, line_no)
            if problem is not None:
                report.issues.append(problem)
                continue
            yield line_no, obj


def missing(path: str | Path, report: ValidationReport) -> bool:
    """A missing file is the report's only issue (no count check on top)."""
    if Path(path).exists():
        return False
    report.issues.append(Issue(0, "format", f"{path} does not exist"))
    return True


def check_count(report: ValidationReport, min_examples: int) -> None:
    if len(report.rows) < min_examples:
        report.issues.append(Issue(0, "too_few_examples",
                                   f"{len(report.rows)} valid example(s), at least {min_examples} required"))
