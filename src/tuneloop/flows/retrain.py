"""retrain: validate → train → evaluate candidate and incumbent on the same items → decide → move aliases."""

from __future__ import annotations

from prefect import flow
from prefect.states import Cancelled
from prefect.utilities.annotations import opaque

from tuneloop.cost.guards import RunGuard, check
from tuneloop.cost.hardware import placement
from tuneloop.evals.suite import guarded_pairs
from tuneloop.gate.rubrics import judge_evidence
from tuneloop.models.base import device
from tuneloop.reports.summary import benchmark_rows, build_summary
from tuneloop.specs import RetrainSpec, for_tenant
from tuneloop.tasks import run_id, run_logger, start_attempt
from tuneloop.tasks.benchmarks import run_benchmark_suite
from tuneloop.tasks.data import prepare_base_model, tenant_eval_set, validate_dataset
from tuneloop.tasks.feedback import dataset_for_run
from tuneloop.tasks.evaluation import decide_promotion, evaluate_adapter, judge_answers
from tuneloop.tasks.guards import await_approval, estimate_job, hand_off_to_gpu
from tuneloop.tasks.registry import apply_decision, publish_report, register_candidate, resolve_incumbent
from tuneloop.tasks.training import train_adapter


def warm_start(spec: RetrainSpec, champion, base: str, logger) -> tuple[RetrainSpec, str | None]:
    """With `training.init_from: champion`, the spec training continues the champion's adapter (and, for dpo and
    kto, takes it as the reference); the version it starts from, or None for a fresh adapter."""
    if spec.training.init_from != "champion" or spec.training.init_adapter is not None:
        return spec, None
    if champion.adapter_dir is None:
        logger.info(f"tenant {spec.tenant} has no champion yet: training starts from a fresh adapter")
        return spec, None
    if champion.base_path != base:
        logger.warning(f"champion {champion.version} is on another base ({champion.base_path}); this run trains "
                       f"on {base}: it starts from a fresh adapter")
        return spec, None
    logger.info(f"warm start: continuing champion {champion.version}'s adapter")
    training = spec.training.model_copy(update={"init_adapter": champion.adapter_dir})
    return spec.model_copy(update={"training": training}), champion.version


# A persisted result makes Prefect refuse to move a Completed run back to Scheduled, so a late retry
# automation (deployments/automations.yaml) can never re-run a run that has finished.
@flow(name="retrain", persist_result=True, result_serializer="json")
def retrain(spec: RetrainSpec, tenant: str | None = None) -> dict:
    """`tenant`: retrain for this tenant instead of the spec's (the deployment's triggers pass the tenant
    their event names; its data must then be unset: the tenant's own feedback dataset)."""
    logger = run_logger()
    spec = for_tenant(spec, tenant)
    if (stale := start_attempt(logger)) is not None:
        return stale
    if placement(spec.hardware, device() == "cuda") == "gpu-pool" and (handed := hand_off_to_gpu(spec)):
        return handed  # None: the spec names no GPU deployment, so it trains here on CPU
    if spec.data is None:  # the tenant's feedback, as stored when this run started
        spec = spec.model_copy(update={"data": dataset_for_run(spec.tenant, spec.feedback, run_id()).path})
    if spec.eval_data is None and (fixed := tenant_eval_set(spec.tenant)) is not None:
        spec = spec.model_copy(update={"eval_data": fixed})  # the tenant's yardstick, not its feedback
        logger.info(f"tenant {spec.tenant}: gating on its fixed held-out set {fixed}")
    base = prepare_base_model(spec.base_model)
    dataset = validate_dataset(spec, base)  # raises before anything is written if the data is bad

    # opaque(): large arguments reach their task as they are, without Prefect walking every row and item to
    # look for futures inside (its documented fix; that walk was most of Prefect's cost per retrain)
    est = estimate_job(spec, base, opaque(dataset))
    if (stop := await_approval(check(est, spec.guards), spec.guards.approval_timeout_s, logger)) is not None:
        return Cancelled(message=stop)

    champion = resolve_incumbent(base, spec.tenant)  # read before training: the gate's compare-and-swap expects it
    spec, warm_from = warm_start(spec, champion, base, logger)
    trained = train_adapter(spec, base, opaque(dataset), RunGuard(spec.guards, est))
    if trained.stopped_reason:
        return Cancelled(message=f"stopped by the guard at step {trained.steps}/{trained.total_steps}: "
                                 f"{trained.stopped_reason}; the checkpoint is kept, rerun to resume")
    candidate = evaluate_adapter(spec, base, trained.adapter_dir, opaque(dataset.eval_rows), "candidate")
    incumbent = evaluate_adapter(spec, champion.base_path, champion.adapter_dir, opaque(dataset.eval_rows),
                                 champion.label)
    cand_bench, inc_bench = {}, {}
    if spec.benchmarks.names:
        quant = spec.training.quantization
        cand_bench = run_benchmark_suite(spec.benchmarks, base, trained.adapter_dir, quant)
        inc_bench = run_benchmark_suite(spec.benchmarks, champion.base_path, champion.adapter_dir, quant)
    judged = judge_answers(spec.judge, opaque(candidate)) if spec.judge is not None else None
    rubric_checks, judge_summary = judge_evidence(judged, spec.judge)
    decision = decide_promotion(opaque(candidate), opaque(incumbent), spec.gate,
                                guarded=opaque(guarded_pairs(cand_bench, inc_bench)), extra_checks=rubric_checks)

    version = register_candidate(
        trained.adapter_dir, spec.tenant, base_model=spec.base_model, dataset_version=dataset.version,
        parent_version=champion.version, spec=spec.model_dump(mode="json"), metrics=candidate.metrics,
        extra={"tenant": spec.tenant, "job": spec.job,
               "lineage": {"method": spec.training.method, "init_from": warm_from,
                           "replay": dataset.stats.get("replay")}, "training": {k: v for k, v in trained.to_json().items() if k != "history"},
               "incumbent": {"label": incumbent.label, "metrics": incumbent.metrics},
               "dataset": dataset.manifest(), "feedback_window": dataset.datasheet.get("collection_window")},
    )
    # the champion moves only if it is still the one the gate compared against (compare-and-swap)
    apply_decision(version.id, decision, spec.tenant, expected_champion=champion.version)
    summary = publish_report(opaque(build_summary(
        version.id, decision, candidate, incumbent, trained.to_json(), dataset, trained.run_dir,
        benchmarks=benchmark_rows(cand_bench, inc_bench, decision, spec.gate.confidence,
                                  spec.gate.bootstrap_resamples),
        judge=judge_summary, confidence=spec.gate.confidence, resamples=spec.gate.bootstrap_resamples)), spec.tenant)
    logger.info(decision.reason)
    return summary.to_json()


if __name__ == "__main__":
    import sys

    from tuneloop.specs import load_yaml_spec

    print(retrain(load_yaml_spec(sys.argv[1])))
