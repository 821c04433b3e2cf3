"""LLM-as-judge scoring against rubrics, an offline groundedness check, and rubric gates.

- `rubrics`: what the judge grades (`Rubric`, the shipped ones) and the messages that ask it.
- `client`: `JudgeClient` talks to any OpenAI-compatible endpoint (`POST {base_url}/chat/completions`,
  `base_url` usually ending in ``/v1``), retrying as every tuneloop client does. JSON mode is not
  assumed: the judge is asked for a JSON object and its reply is parsed tolerantly (`parse`).
- `run`: `judge()` scores items x rubrics on a thread pool and returns a `JudgeReport`; a failed item
  is recorded with its reason. Scores are normalized to 0..1 as ``(score - 1) / (scale_max - 1)``.
- `grounded`: `groundedness()`, a judge-free lexical check of an answer against source passages.
- `gate`: `RubricGate` / `check_rubrics()` turn a report into promotion-style checks.

Kept free of prefect so it can be used (and tested) outside a flow.
"""

from tuneloop.evals.judge.client import JudgeCallError, JudgeClient
from tuneloop.evals.judge.gate import RubricGate, check_rubrics
from tuneloop.evals.judge.grounded import claims, groundedness, hallucination_rate
from tuneloop.evals.judge.parse import parse_judgement
from tuneloop.evals.judge.rubrics import (DEFAULT_RUBRICS, GROUNDEDNESS, HELPFULNESS, PEDAGOGY, SAFETY, Rubric,
                                          build_messages, normalize_score)
from tuneloop.evals.judge.run import JudgeReport, RubricResult, judge, judge_one

__all__ = [
    "DEFAULT_RUBRICS", "GROUNDEDNESS", "HELPFULNESS", "PEDAGOGY", "SAFETY",
    "JudgeCallError", "JudgeClient", "JudgeReport", "Rubric", "RubricGate", "RubricResult",
    "build_messages", "check_rubrics", "claims", "groundedness", "hallucination_rate", "judge",
    "judge_one", "normalize_score", "parse_judgement",
]
