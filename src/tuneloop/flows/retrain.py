"""retrain: validate → train → evaluate candidate and incumbent on the same items → decide → move aliases."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.states import Cancelled
from prefect.utilities.annotations import opaque

from tuneloop.tasks import start_attempt
from tuneloop.tasks.benchmarks import run_benchmark_suite
from tuneloop.tasks.data import prepare_base_model, validate_dataset
from tuneloop.tasks.evaluation import decide_promotion, evaluate_adapter, judge_answers
from tuneloop.tasks.guards import Approval, estimate_job, hand_off_to_gpu
from tuneloop.tasks.registry import apply_decision, fetch_adapter, publish_report, register_candidate
from tuneloop.tasks.training import train_adapter
from tuneloop.evals.suite import guarded_pairs
from tuneloop.evals.judge import RubricGate, check_rubrics
from tuneloop.models.base import device
from tuneloop.cost.guards import RunGuard, check
from tuneloop.cost.hardware import placement
from tuneloop.registry import open_registry
from tuneloop.specs import RetrainSpec
from tuneloop.reports.summary import benchmark_rows, build_summary


# A persisted result makes Prefect refuse to move a Completed run back to Scheduled, so a late retry
# automation (deployments/automations.yaml) can never re-run a run that has finished.
@flow(name="retrain", persist_result=True, result_serializer="json")
def retrain(spec: RetrainSpec) -> dict:
    logger = get_run_logger()
    if (stale := start_attempt(logger)) is not None:
        return stale
    if placement(spec.hardware, device() == "cuda") == "gpu-pool":
        if spec.gpu_deployment is None:
            logger.warning(f"hardware {spec.hardware!r} has a GPU but this worker has none; training here on "
                           "CPU (set gpu_deployment to hand such runs to gpu-pool)")
        else:
            run_id = hand_off_to_gpu(spec)
            return {"handed_off_to": run_id, "deployment": spec.gpu_deployment,
                    "reason": f"hardware {spec.hardware!r} needs a GPU and this worker has none"}
    base = prepare_base_model(spec.base_model)
    dataset = validate_dataset(spec, base)  # raises before anything is written if the data is bad

    # opaque(): large arguments reach their task as they are, without Prefect walking every row and item to
    # look for futures inside (its documented fix; that walk was most of Prefect's cost per retrain)
    est = estimate_job(spec, base, opaque(dataset))
    verdict = check(est, spec.guards)
    if verdict.action == "refuse":
        logger.warning(verdict.reason)
        return Cancelled(message=f"refused before start: {verdict.reason}")
    if verdict.action == "needs_approval":
        logger.warning(f"{verdict.reason}; waiting for approval (Resume with approve=true/false in the UI)")
        timeout = int(spec.guards.approval_timeout_s)
        try:
            answer = pause_flow_run(wait_for_input=Approval, timeout=timeout, poll_interval=min(10, max(1, timeout // 10)))
        except FlowPauseTimeout:
            # Prefect ends a timed-out pause as Failed ("... never resumed"); the reason is logged here
            logger.warning(f"no approval within {timeout} s: rejected ({verdict.reason})")
            return Cancelled(message=f"no approval within {timeout} s: rejected ({verdict.reason})")
        if not answer.approve:
            return Cancelled(message=f"rejected by a person: {answer.reason or 'no reason given'}")
        logger.info(f"approved: {answer.reason or 'no reason given'}")

    champion = open_registry().champion()
    trained = train_adapter(spec, base, opaque(dataset), RunGuard(spec.guards, est))
    if trained.stopped_reason:
        return Cancelled(message=f"stopped by the guard at step {trained.steps}/{trained.total_steps}: "
                                 f"{trained.stopped_reason}; the checkpoint is kept, rerun to resume")
    candidate = evaluate_adapter(spec, base, trained.adapter_dir, opaque(dataset.eval_rows), "candidate")
    if champion is None:
        incumbent = evaluate_adapter(spec, base, None, opaque(dataset.eval_rows), "base")
    else:
        champion_base = prepare_base_model(champion.manifest["base_model"])
        champion_adapter = fetch_adapter(champion.id)  # every file checked against the manifest's sha256
        incumbent = evaluate_adapter(spec, champion_base, champion_adapter, opaque(dataset.eval_rows),
                                     f"champion {champion.id}")
    guarded, cand_bench, inc_bench = None, {}, {}
    if spec.benchmarks.names:
        quant = spec.training.quantization
        cand_bench = run_benchmark_suite(spec.benchmarks, base, trained.adapter_dir, quant)
        inc_bench = (run_benchmark_suite(spec.benchmarks, base, None, quant) if champion is None else
                     run_benchmark_suite(spec.benchmarks, champion_base, champion_adapter, quant))
        guarded = guarded_pairs(cand_bench, inc_bench)

    judge_summary, rubric_checks = {}, []
    if spec.judge is not None:
        report = judge_answers(spec.judge, opaque(candidate))
        rubric_checks = check_rubrics(report, RubricGate(min_scores=spec.judge.min_scores,
                                                         max_failure_rate=spec.judge.max_failure_rate))
        judge_summary = {name: {"candidate": r.mean, "incumbent": None, "n_failed": r.n_failed}
                         for name, r in report.rubrics.items()}
    decision = decide_promotion(opaque(candidate), opaque(incumbent), spec.gate, guarded=opaque(guarded),
                                extra_checks=rubric_checks)

    version = register_candidate(
        trained.adapter_dir, base_model=spec.base_model, dataset_version=dataset.version,
        parent_version=champion.id if champion else None, spec=spec.model_dump(mode="json"),
        metrics=candidate.metrics,
        extra={"tenant": spec.tenant, "training": {k: v for k, v in trained.to_json().items() if k != "history"},
               "incumbent": {"label": incumbent.label, "metrics": incumbent.metrics},
               "dataset": dataset.manifest(), "feedback_window": dataset.datasheet.get("collection_window")},
    )
    # the champion moves only if it is still the one the gate compared against (compare-and-swap)
    apply_decision(version.id, decision, spec.tenant, expected_champion=champion.id if champion else None)
    summary = publish_report(opaque(build_summary(
        version.id, decision, candidate, incumbent, trained.to_json(), dataset, trained.run_dir,
        benchmarks=benchmark_rows(cand_bench, inc_bench, decision, spec.gate.confidence,
                                  spec.gate.bootstrap_resamples),
        judge=judge_summary, confidence=spec.gate.confidence, resamples=spec.gate.bootstrap_resamples)))
    logger.info(decision.reason)
    return summary.to_json()


if __name__ == "__main__":
    import sys

    from tuneloop.specs import load_yaml_spec

    print(retrain(load_yaml_spec(sys.argv[1])))
