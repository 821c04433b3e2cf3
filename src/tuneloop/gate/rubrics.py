"""The LLM judge's part in the gate: rubric floors as checks the decision counts, and the summary's rows."""

from __future__ import annotations

from tuneloop.evals.judge import JudgeReport, RubricGate, check_rubrics
from tuneloop.specs import JudgeSpec


def judge_evidence(report: JudgeReport | None, spec: JudgeSpec | None) -> tuple[list[dict], dict]:
    """(checks for `decide(extra_checks=...)`, per-rubric summary rows); ([], {}) when no judge ran."""
    if report is None or spec is None:
        return [], {}
    checks = check_rubrics(report, RubricGate(min_scores=spec.min_scores, max_failure_rate=spec.max_failure_rate))
    rows = {name: {"candidate": r.mean, "incumbent": None, "n_failed": r.n_failed}
            for name, r in report.rubrics.items()}
    return checks, rows
