"""Base model and dataset preparation."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tuneloop.tasks import TASK_DEFAULTS
from tuneloop.models.base import load_tokenizer, resolve_base_model
from tuneloop.models.chat import count_tokens
from tuneloop.data import PreparedDataset, prepare_dataset
from tuneloop.errors import DataValidationError, UserError
from tuneloop.runtime import shared
from tuneloop.runtime.safety import safe_name
from tuneloop.runtime.faults import crash_point
from tuneloop.settings import get_settings
from tuneloop.specs import RetrainSpec


@task(name="prepare-base-model", **TASK_DEFAULTS)
def prepare_base_model(name: str) -> str:
    """Resolve a hub id or path; build and cache the tiny base on first use."""
    logger = get_run_logger()
    return resolve_base_model(name, get_settings().models_dir, log=logger.info)


def tenant_eval_set(tenant: str) -> Path | None:
    """The tenant's fixed held-out set (TUNELOOP_TENANT_EVAL, else <state folder>/eval/<tenant>.jsonl), here
    or in the shared state; None when the tenant has none."""
    settings = get_settings()
    pattern = settings.tenant_eval or str(settings.state_dir / "eval" / "{tenant}.jsonl")
    if "{tenant}" not in pattern:
        raise UserError(f"TUNELOOP_TENANT_EVAL={pattern!r}", "names every tenant's file, so it holds {tenant}",
                        "e.g. TUNELOOP_TENANT_EVAL=/data/eval/{tenant}.jsonl")
    path = Path(pattern.replace("{tenant}", safe_name(tenant, "tenant name"))).expanduser()
    try:
        return path if shared.pull(path) else None
    except UserError:  # outside the shared folders: only this machine's copy
        return path if path.exists() else None


@task(name="validate-dataset", **TASK_DEFAULTS)
def validate_dataset(spec: RetrainSpec, base_path: str) -> PreparedDataset:
    """Validate every row, dedupe, split, leak-check and store the dataset version."""
    settings = get_settings()
    tok = load_tokenizer(base_path)
    limit = spec.dataset.max_tokens or min(spec.training.max_seq_len, getattr(tok, "model_max_length", 10**9))
    try:
        ds = prepare_dataset(spec.data, spec.dataset, eval_data=spec.eval_data, count_tokens=count_tokens(tok),
                             max_tokens=limit, report_dir=settings.state_dir / "reports", tenant=spec.tenant,
                             method=spec.training.method)
    except DataValidationError as e:
        if e.report_path:
            shared.push(e.report_path)  # the report is read where the run is watched, not on this machine
        raise
    if spec.training.replay is not None:
        ds = mix_in_replay(spec, ds, count_tokens(tok), limit)
    ds.save(settings.datasets_dir)
    shared.push(ds.path, "datasheet.json")  # the drift reference and the promote's smoke set
    crash_point("validate")
    get_run_logger().info(f"dataset {ds.version[:16]}: {ds.manifest()['splits']}, {ds.stats}")
    return ds


def earlier_datasets(tenant: str, current: str) -> list[tuple[str, Path]]:
    """(version, saved folder) of the datasets behind `tenant`'s registered versions, oldest first, each once,
    without `current`; folders fetched from the shared state when this machine lacks them, missing ones left out."""
    from tuneloop.registry import open_registry

    settings = get_settings()
    found: list[tuple[str, Path]] = []
    seen = {current}
    versions = sorted(open_registry(tenant=tenant).list(), key=lambda v: v.manifest.get("created_at", ""))
    for v in versions:
        dv = v.manifest.get("dataset_version")
        if not dv or dv in seen:
            continue
        seen.add(dv)
        folder = settings.datasets_dir / dv[:16]
        if shared.pull(folder, "datasheet.json") or (folder / "train.jsonl").exists():
            found.append((dv, folder))
    return found


def mix_in_replay(spec: RetrainSpec, ds: PreparedDataset, count, limit) -> PreparedDataset:
    """`ds` with the replay mix of `spec.training.replay` (tuneloop.data.dataset.add_replay)."""
    from tuneloop.data import read_rows_strict
    from tuneloop.data.dataset import add_replay

    replay = spec.training.replay
    general = None
    if replay.general is not None:
        general = read_rows_strict(replay.general, spec.dataset, count, limit, min_examples=1, tenant=spec.tenant).rows
    earlier = earlier_datasets(spec.tenant, ds.version)
    mixed = add_replay(ds, replay, earlier, seed=spec.dataset.seed, general_rows=general)
    get_run_logger().info(f"replay: {mixed.stats.get('replay_rows', 0)} rows from {len(earlier)} earlier dataset "
                          f"version(s){' and the general set' if general else ''}: {mixed.stats.get('replay', {})}")
    return mixed
