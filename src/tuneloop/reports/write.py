"""A summary's three report files: strict JSON, Markdown and HTML, each written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tuneloop.reports.html import render_html
from tuneloop.reports.markdown import render_markdown
from tuneloop.reports.summary import RetrainSummary
from tuneloop.runtime.fsutil import atomic_write_text


def _strict(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_strict(v) for v in items]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_json"):
        return _strict(obj.to_json())
    return str(obj)


def strict_json(obj: Any) -> str:
    """Strict, stable JSON: sorted keys, NaN and infinities as null, paths as text, tuples as lists."""
    return json.dumps(_strict(obj), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def render_json(summary: RetrainSummary) -> str:
    """`report.json`: the summary's JSON, strict (any JSON reader takes it) and stable."""
    return strict_json(summary.to_json())


def write_reports(summary: RetrainSummary, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html atomically; returns {"json", "markdown", "html"} paths."""
    out = Path(out_dir)
    return {
        "json": atomic_write_text(out / "report.json", render_json(summary)),
        "markdown": atomic_write_text(out / "report.md", render_markdown(summary)),
        "html": atomic_write_text(out / "report.html", render_html(summary)),
    }
