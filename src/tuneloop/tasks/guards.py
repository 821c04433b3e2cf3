"""Cost and duration guards around training: estimate, approve, watch."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.data import PreparedDataset
from tuneloop.cost.guards import Estimate
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


@task(name="hand-off-to-gpu", **TASK_DEFAULTS)
def hand_off_to_gpu(spec: RetrainSpec) -> str:
    """Start the same retrain on the GPU deployment (its work pool has GPU workers); returns the new run's id.
    The spec goes along with `gpu_deployment` cleared, so a run that lands on a GPU-less worker again fails
    with the reason instead of bouncing."""
    from prefect.deployments import run_deployment

    run = run_deployment(spec.gpu_deployment, parameters={"spec": spec.model_copy(update={"gpu_deployment": None})
                                                          .model_dump(mode="json")}, timeout=0,
                         tags=["tuneloop", "handed-off"])
    get_run_logger().info(f"hardware {spec.hardware!r} needs a GPU and this worker has none: handed off to "
                          f"{spec.gpu_deployment} as flow run {run.id}")
    return str(run.id)
