"""The evaluation summary of one retrain: what the flow returns, the registry keeps as `evaluation.json`,
and every report renders.

One type, `RetrainSummary`, and one producer, `build_summary`. A summary read back (`from_json`: an
`evaluation.json` from any release) or rebuilt from a version's manifest (`from_manifest`, for versions
registered without one) is the same type. Every section but `version` may be missing from a stored
summary, so the optional ones are Optional fields and the renderers say what is missing.

`to_json()` gives back exactly the keys that were set (pydantic's `exclude_unset`): the JSON a summary
was read from, or that `build_summary` produced. Keys this release does not know are kept too, so
reading and writing a summary never loses anything.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.gate.decide import Decision, paired_bootstrap

if TYPE_CHECKING:
    from tuneloop.registry import Version

SAMPLE_ITEMS = 20

Metrics = dict[str, int | float | None]  # counts stay ints; None: a NaN or infinity a strict JSON writer nulled


class Section(BaseModel):
    """A part of a stored summary: unknown keys are kept, unset keys are not written back."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def to_json(self) -> dict:
        return self.model_dump(exclude_unset=True)


class Interval(Section):
    """The paired bootstrap interval of candidate - incumbent for one metric."""

    delta: float | None = None
    low: float | None = None
    high: float | None = None


class GateInterval(Section):
    low: float | None = None
    high: float | None = None
    confidence: float | None = None


class Check(Section):
    check: str = ""
    value: float | None = None
    need: str = ""
    ok: bool = False


class DecisionRecord(Section):
    """`Decision.to_json()`, or what status.json keeps of it (at least `promote` and `reason`)."""

    promote: bool | None = None
    reason: str = ""
    metric: str | None = None
    candidate: float | None = None
    incumbent: float | None = None
    delta: float | None = None
    items: int | None = None
    checks: list[Check] = Field(default_factory=list)
    interval: GateInterval | None = None


class BenchmarkRow(Section):
    """One guarded benchmark: both models' metrics and the gate's verdict on the headline metric.
    `metric` is missing in summaries written before it was recorded."""

    metric: str | None = None
    candidate: Metrics = Field(default_factory=dict)
    incumbent: Metrics = Field(default_factory=dict)
    delta: float | None = None
    low: float | None = None
    high: float | None = None
    tolerance: float | None = None
    ok: bool = False


class JudgeRow(Section):
    candidate: float | None = None
    incumbent: float | None = None
    n_failed: int = 0


class HistoryPoint(Section):
    step: int | None = None
    loss: float | None = None
    val_loss: float | None = None  # on the steps that were validated


class Training(Section):
    """`TrainResult.to_json()` (its other keys are kept as they are); `history` is empty when rebuilt
    from a manifest, which does not keep it."""

    steps: int | None = None
    final_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    tokens_per_s: float | None = None
    seconds: float | None = None
    history: list[HistoryPoint] = Field(default_factory=list)


class SampleItem(Section):
    id: str = ""
    prompt: str | None = None
    reference: str | None = None
    candidate: str | None = None
    incumbent: str | None = None


class RetrainSummary(Section):
    version: str = ""  # the candidate ("challenger")
    promoted: bool | None = None
    decision: DecisionRecord | None = None  # None: no promotion decision recorded
    created_at: str | None = None
    candidate_metrics: Metrics = Field(default_factory=dict)
    incumbent_metrics: Metrics = Field(default_factory=dict)
    incumbent_label: str | None = None  # "champion v1", or "base" when there was no champion
    intervals: dict[str, Interval] = Field(default_factory=dict)
    benchmarks: dict[str, BenchmarkRow] = Field(default_factory=dict)
    judge: dict[str, JudgeRow] = Field(default_factory=dict)
    dataset_version: str | None = None
    dataset_splits: dict[str, int] = Field(default_factory=dict)
    training: Training | None = None
    items: list[SampleItem] = Field(default_factory=list)
    run_dir: str | None = None  # the training run's folder (checkpoints, logs)
    reports: dict[str, str] | None = None  # {"json", "markdown", "html"}: set by `with_reports`
    status: dict[str, Any] | None = None  # status.json, only in summaries rebuilt from the registry

    @classmethod
    def from_json(cls, doc: dict) -> RetrainSummary:
        """A stored summary (`evaluation.json`, `report.json`), written by this release or an older one;
        a list or table written as null reads as empty."""
        empty_when_null = {name for name, f in cls.model_fields.items() if f.default_factory is not None}
        return cls.model_validate({k: v for k, v in doc.items() if v is not None or k not in empty_when_null})

    @classmethod
    def from_manifest(cls, version: Version) -> RetrainSummary:
        """A partial summary of a version registered without `evaluation.json`: metrics, training,
        dataset and incumbent from its manifest, the decision (when one was recorded) from its status."""
        m, decision = version.info, version.status.get("decision")
        incumbent = m.incumbent
        return cls(
            version=version.id,
            incumbent_label=(incumbent.label if incumbent and incumbent.label else
                             f"parent {m.parent_version}" if m.parent_version else "incumbent"),
            created_at=m.created_at, dataset_version=m.dataset_version,
            dataset_splits=m.dataset.get("splits", {}) if m.dataset else {},
            decision=decision, candidate_metrics=dict(m.metrics),
            incumbent_metrics=dict(incumbent.metrics) if incumbent else {},
            intervals={}, benchmarks={}, judge={},
            training=Training.model_validate({"history": [], **(m.training or {})}),
            items=[], status=dict(version.status))

    def with_reports(self, paths: dict[str, Path | str]) -> RetrainSummary:
        """The summary that names where its rendered reports were written."""
        return self.model_copy(update={"reports": {k: str(v) for k, v in paths.items()}})


def benchmark_rows(candidate: dict, incumbent: dict, decision: Decision, confidence: float = 0.95,
                   resamples: int = 2000) -> dict[str, BenchmarkRow]:
    """One report row per guarded benchmark: both models' metrics, the paired interval of the
    headline difference, and the gate's own tolerance and verdict for it."""
    from tuneloop.evals.suite import headline

    rows = {}
    for name, c in candidate.items():
        metric, verdict = headline(c), decision.guarded[name]
        delta, low, high = paired_bootstrap(c.per_item[metric], incumbent[name].per_item[metric],
                                            resamples or 2000, confidence)
        rows[name] = BenchmarkRow(metric=metric, candidate=c.metrics, incumbent=incumbent[name].metrics,
                                  delta=delta, low=low, high=high, tolerance=verdict["tolerance"], ok=verdict["ok"])
    return rows


def build_summary(version: str, decision: Decision, candidate, incumbent, training: dict, dataset,
                  run_dir: str | Path, benchmarks: dict[str, BenchmarkRow] | None = None,
                  judge: dict[str, JudgeRow] | None = None, confidence: float = 0.95,
                  resamples: int = 2000) -> RetrainSummary:
    """candidate / incumbent are `EvalResult`s on the same items; training is `TrainResult.to_json()`."""
    intervals = {}
    for metric, cand_items in candidate.per_item.items():
        inc_items = incumbent.per_item.get(metric)
        if inc_items and set(inc_items) == set(cand_items) and cand_items:
            delta, low, high = paired_bootstrap(cand_items, inc_items, resamples or 2000, confidence)
            intervals[metric] = Interval(delta=delta, low=low, high=high)
    by_id = {i["id"]: i for i in incumbent.items}
    items = [SampleItem(id=c["id"], prompt=c["prompt"], reference=c["reference"], candidate=c["prediction"],
                        incumbent=by_id.get(c["id"], {}).get("prediction")) for c in candidate.items[:SAMPLE_ITEMS]]
    return RetrainSummary(
        version=version, promoted=decision.promote, decision=decision.to_json(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        candidate_metrics=candidate.metrics, incumbent_metrics=incumbent.metrics,
        incumbent_label=incumbent.label, intervals=intervals,
        benchmarks=benchmarks or {}, judge=judge or {},
        dataset_version=dataset.version, dataset_splits=dataset.manifest()["splits"],
        training=training, items=items, run_dir=str(run_dir),
    )


def summary_from_registry(registry, ref: str) -> RetrainSummary:
    """The summary of a version: its `evaluation.json` when stored, else `RetrainSummary.from_manifest`.
    `registry` is a Registry, a folder or an s3:// URL."""
    if isinstance(registry, (str, Path)):
        from tuneloop.registry import open_registry

        registry = open_registry(registry)
    v = registry.get(ref)
    stored = registry.attachment(v.id, "evaluation.json")
    return RetrainSummary.from_json(stored) if stored is not None else RetrainSummary.from_manifest(v)
