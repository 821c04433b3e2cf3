"""Cost and duration guards around training: estimate, approve, watch."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.data import PreparedDataset
from tuneloop.cost.guards import Estimate, GuardDecision
from tuneloop.cost.sizing import estimate_run
from tuneloop.specs import RetrainSpec


class Approval(RunInput):
    """What a person answers in the Prefect UI when a job waits for approval."""

    approve: bool
    reason: str = ""


@task(name="estimate-job", **TASK_DEFAULTS)
def estimate_job(spec: RetrainSpec, base_path: str, dataset: PreparedDataset) -> Estimate:
    """tokens × epochs × ~4N FLOPs (LoRA) ÷ the hardware's throughput → hours → dollars, before anything runs."""
    t = spec.training
    est, tokens, planned = estimate_run(spec, base_path, dataset.train)
    create_markdown_artifact(
        f"# Estimate\n\n| | |\n|---|---:|\n| tokens per epoch | {tokens:,} |\n| epochs | {t.epochs} |\n"
        f"| max steps | {t.max_steps or '-'} |\n| tokens planned | {planned:,} |\n"
        f"| parameters | {est.params:,} |\n| FLOPs | {est.flops:.3g} |\n| hardware | {est.hardware} |\n"
        f"| hours | {est.hours:.4g} |\n| dollars | {est.usd:.2f} |\n"
        f"\nCaps: ${spec.guards.max_usd:g} and {spec.guards.max_hours:g} h per job; approval above "
        f"${spec.guards.approval_usd:g}.\n", key="retrain-estimate", description=f"${est.usd:.2f}, {est.hours:.3g} h")
    get_run_logger().info(f"estimate: {est.hours:.3g} h, ${est.usd:.2f} on {est.hardware}")
    return est


def await_approval(verdict: GuardDecision, timeout_s: float, logger) -> str | None:
    """None to go on (the guard says "run", or a person approved), else why the run stops: refused by the
    guard, rejected by a person, or no answer within `timeout_s`.

    A plain function, not a task: it pauses the flow run itself. (Prefect 3.8's pause_flow_run finds the
    flow run from inside a task too, but that task run would show Running through a wait of hours, and
    nothing here is worth a retry.)"""
    if verdict.action == "refuse":
        logger.warning(verdict.reason)
        return f"refused before start: {verdict.reason}"
    if verdict.action != "needs_approval":
        return None
    logger.warning(f"{verdict.reason}; waiting for approval (Resume with approve=true/false in the UI)")
    timeout = int(timeout_s)
    try:
        answer = pause_flow_run(wait_for_input=Approval, timeout=timeout, poll_interval=min(10, max(1, timeout // 10)))
    except FlowPauseTimeout:
        # Prefect ends a timed-out pause as Failed ("... never resumed"); the reason is logged here
        logger.warning(f"no approval within {timeout} s: rejected ({verdict.reason})")
        return f"no approval within {timeout} s: rejected ({verdict.reason})"
    if not answer.approve:
        return f"rejected by a person: {answer.reason or 'no reason given'}"
    logger.info(f"approved: {answer.reason or 'no reason given'}")
    return None


@task(name="hand-off-to-gpu", **TASK_DEFAULTS)
def hand_off_to_gpu(spec: RetrainSpec) -> dict | None:
    """Start the same retrain on the GPU deployment (its work pool has GPU workers); returns where it went,
    or None (and a warning) when the spec names no GPU deployment: the run trains here on CPU.
    The spec goes along with `gpu_deployment` cleared, so a run that lands on a GPU-less worker again
    trains there instead of bouncing."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    if spec.gpu_deployment is None:
        logger.warning(f"hardware {spec.hardware!r} has a GPU but this worker has none; training here on "
                       "CPU (set gpu_deployment to hand such runs to gpu-pool)")
        return None
    run = run_deployment(spec.gpu_deployment, parameters={"spec": spec.model_copy(update={"gpu_deployment": None})
                                                          .model_dump(mode="json")}, timeout=0,
                         tags=["tuneloop", "handed-off"])
    logger.info(f"hardware {spec.hardware!r} needs a GPU and this worker has none: handed off to "
                f"{spec.gpu_deployment} as flow run {run.id}")
    return {"handed_off_to": str(run.id), "deployment": spec.gpu_deployment,
            "reason": f"hardware {spec.hardware!r} needs a GPU and this worker has none"}
