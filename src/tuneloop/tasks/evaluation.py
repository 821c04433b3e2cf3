"""Held-out evaluation and the promotion decision."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.data.validate import Row
from tuneloop.evals.judge import JudgeClient, JudgeReport, judge
from tuneloop.evals.run import EvalResult, evaluate_model
from tuneloop.runtime.faults import crash_point
from tuneloop.gate.decide import Decision, decide
from tuneloop.specs import GateSpec, JudgeSpec, RetrainSpec


@task(name="evaluate-model", **TASK_DEFAULTS)
def evaluate_adapter(spec: RetrainSpec, base_path: str, adapter_dir: Path | None, rows: list[Row],
                     label: str) -> EvalResult:
    if label != "candidate":
        crash_point("mid-evaluation")  # the candidate is scored, the incumbent not yet
    return evaluate_model(base_path, adapter_dir, rows, spec.evaluation, label, spec.training.quantization)


@task(name="judge-answers", **TASK_DEFAULTS)
def judge_answers(spec: JudgeSpec, result: EvalResult) -> JudgeReport:
    """Score held-out answers with the LLM judge; unscorable replies are counted, never fatal."""
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    client = JudgeClient(spec.base_url, spec.model, api_key=key, timeout=spec.timeout)
    items = [{"id": i["id"], "prompt": i["prompt"], "answer": i["prediction"], "reference": i["reference"]}
             for i in result.items[: spec.max_items]]
    return judge(client, items, list(spec.rubrics), concurrency=spec.concurrency)


@task(name="decide-promotion", **TASK_DEFAULTS)
def decide_promotion(candidate: EvalResult, incumbent: EvalResult, gate: GateSpec,
                     guarded: dict | None = None, extra_checks: list[dict] | None = None) -> Decision:
    return decide(candidate.metrics, candidate.per_item, incumbent.metrics, incumbent.per_item, gate,
                  incumbent_label=incumbent.label, guarded=guarded, extra_checks=extra_checks)
