"""Reading the registry the way an operator asks: metric conditions, tags, and the lineage graph."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from tuneloop.errors import UserError

STATUSES = ("candidate", "champion", "rejected", "retired")
OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
       "<": operator.lt, "=": operator.eq}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONDITION = re.compile(rf"\s*([A-Za-z_][\w.\-/]*)\s*(>=|<=|==|!=|>|<|=)\s*({_NUMBER})\s*")
_TAG_KEY = re.compile(r"[A-Za-z0-9_.\-/:]+")


@dataclass(frozen=True)
class MetricCondition:
    metric: str
    op: str
    value: float

    def holds(self, metrics: dict) -> bool:
        got = metrics.get(self.metric)
        return isinstance(got, (int, float)) and OPS[self.op](got, self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_metric_condition(text: str) -> MetricCondition:
    m = _CONDITION.fullmatch(text)
    if not m:
        raise UserError(repr(text), "a metric condition is METRIC OP NUMBER with OP one of >= <= > < == !=",
                        "write it like 'exact_match>=0.8' (quote it in the shell)")
    return MetricCondition(m.group(1), m.group(2), float(m.group(3)))


def check_tag_key(key: str) -> str:
    if not _TAG_KEY.fullmatch(key or ""):
        raise UserError(repr(key), "a tag key is letters, digits and _ . - / : (no spaces, no '=')",
                        "write a tag like team=search")
    return key


def parse_tag(text: str) -> tuple[str, str]:
    """'k=v' -> ("k", "v")."""
    key, sep, value = text.partition("=")
    if not sep or not value:
        raise UserError(repr(text), "a tag is KEY=VALUE with a non-empty key and value",
                        "write it like team=search")
    return check_tag_key(key.strip()), value.strip()


def matching(versions: list, tags: dict | list | None = None, metrics=(), base: str | None = None,
             status: str | None = None) -> list:
    """The versions that pass every filter; bad filters raise a UserError naming the value, rule and fix."""
    if isinstance(tags, (list, tuple)):
        tags = dict(parse_tag(t) for t in tags)
    conditions = [parse_metric_condition(m) if isinstance(m, str) else m for m in metrics]
    if status is not None and status not in STATUSES:
        raise UserError(repr(status), f"is not a status; statuses are {', '.join(STATUSES)}",
                        f"use one of them, e.g. --status {STATUSES[1]}")
    known = {m for v in versions for m in v.metrics}
    for c in conditions:
        if versions and c.metric not in known:
            raise UserError(repr(c.metric), "is not a metric of any version in this registry",
                            f"use one of: {', '.join(sorted(known)) or 'none recorded yet'}")
    return [v for v in versions
            if all(v.tags.get(k) == str(val) for k, val in (tags or {}).items())
            and all(c.holds(v.metrics) for c in conditions)
            and (base is None or v.info.base_model == base)
            and (status is None or v.status.get("status", "candidate") == status)]


def lineage_node(v, aliases: dict) -> dict:
    """One version in the lineage graph: parent, dataset version, feedback window, status, aliases."""
    m = v.info
    return {"id": v.id, "parent": m.parent_version, "dataset_version": m.dataset_version,
            "feedback_window": m.feedback_window, "tenant": m.tenant,
            "base_model": m.base_model, "status": v.status.get("status", "candidate"),
            "created_at": m.created_at, "aliases": sorted(a for a, vid in aliases.items() if vid == v.id),
            "metrics": v.metrics}


def deleted_node(vid: str) -> dict:
    return {"id": vid, "parent": None, "missing": True}


def _window(node: dict) -> str:
    w = node.get("feedback_window") or {}
    if not w:
        return "-"
    return f"{str(w.get('start', '?'))[:10]}..{str(w.get('end', '?'))[:10]}"


def _describe(node: dict) -> str:
    if node.get("missing"):
        return f"{node['id']}  (deleted)"
    tags = f" [{', '.join(node['aliases'])}]" if node.get("aliases") else ""
    data = (node.get("dataset_version") or "-")[:12]
    em = node.get("metrics", {}).get("exact_match")
    score = f"  exact_match={em:.3f}" if isinstance(em, (int, float)) else ""
    return (f"{node['id']}  {node.get('status', 'candidate')}{tags}  data={data}  feedback={_window(node)}"
            f"{score}  {node.get('created_at', '')}").rstrip()


def render_lineage(nodes: list[dict]) -> str:
    """A text tree, parents above children: one line per version (status, aliases, dataset, feedback window)."""
    by_id = {n["id"]: n for n in nodes}
    children: dict[str | None, list[dict]] = {}
    for n in nodes:
        parent = n.get("parent")
        children.setdefault(parent if parent in by_id else None, []).append(n)
    order = lambda n: int(n["id"][1:]) if n["id"][1:].isdigit() else 0  # noqa: E731
    lines: list[str] = []

    def walk(node: dict, prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└── " if last else "├── ")
        lines.append(prefix + branch + _describe(node))
        kids = sorted(children.get(node["id"], []), key=order)
        inner = prefix + ("" if root else ("    " if last else "│   "))
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for r in sorted(children.get(None, []), key=order):
        walk(r, "", True, True)
    return "\n".join(lines)
