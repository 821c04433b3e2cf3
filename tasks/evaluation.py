"""Held-out evaluation and the promotion decision."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks import TASK_DEFAULTS
from tuneloop.data.validate import Row
from tuneloop.evals.run import EvalResult, evaluate_model
from tuneloop.promotion import Decision, decide
from tuneloop.specs import GateSpec, RetrainSpec


@task(name="evaluate-model", **TASK_DEFAULTS)
def evaluate_adapter(spec: RetrainSpec, base_path: str, adapter_dir: Path | None, rows: list[Row],
                     label: str) -> EvalResult:
    return evaluate_model(base_path, adapter_dir, rows, spec.evaluation, label, spec.training.quantization)


@task(name="decide-promotion", **TASK_DEFAULTS)
def decide_promotion(candidate: EvalResult, incumbent: EvalResult, gate: GateSpec) -> Decision:
    return decide(candidate.metrics, candidate.per_item, incumbent.metrics, incumbent.per_item, gate,
                  incumbent_label=incumbent.label)
