"""Checkpoints that resume exactly: adapter, optimizer, scheduler, RNG and data position.

A checkpoint folder is written under a hidden name and renamed into place, so
a run killed at any moment leaves either a complete checkpoint or none.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from tuneloop.runtime.fsutil import atomic_write_text, publish_dir, staging_dir


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    ckpts = Path(root) / "checkpoints"
    final = ckpts / f"step-{step:07d}"
    tmp = staging_dir(ckpts, final.name)
    model.save_pretrained(tmp / "adapter")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    name, keys, pos, has_gauss, cached = np.random.get_state()
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
    atomic_write_text(tmp / "state.json", json.dumps(state))
    if not publish_dir(tmp, final):  # the same step was already saved by an earlier attempt
        pass
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    ckpts = Path(root) / "checkpoints"
    if not ckpts.exists():
        return []
    return sorted(p for p in ckpts.iterdir() if p.name.startswith("step-") and (p / "state.json").exists())


def _load(path: Path):
    """torch.load with weights_only=True: tensors and plain containers, never arbitrary pickled objects."""
    import pickle

    from tuneloop.errors import UserError

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(str(path), f"holds objects other than tensors and plain values ({e}); tuneloop loads "
                        "checkpoints with weights_only=True", "delete this checkpoint folder (it was not written by "
                        "this version of tuneloop) and train again") from None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    optimizer.load_state_dict(_load(path / "optimizer.pt"))
    scheduler.load_state_dict(_load(path / "scheduler.pt"))
    rng = _load(path / "rng.pt")
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())


def checkpoint_rows(root: Path) -> list[dict]:
    """The run's resumable checkpoints as job checkpoints (oldest first), for `tuneloop jobs get`:
    step, train loss and best validation loss at that step, and the folder."""
    rows = []
    for path in list_checkpoints(root):
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError):
            continue  # pruned between listing and reading
        rows.append({"step": int(state.get("global_step", 0)), "train_loss": state.get("last_loss"),
                     "best_val_loss": state.get("best_val"), "path": str(path)})
    return rows


# -- checkpoints another machine can resume (tuneloop.runtime.shared) -----------------------------------------
MARKER, BEST_MARKER = "state.json", "adapter/adapter_config.json"  # each folder's last-written file


def share_checkpoints(shared, run_dir: Path, pushed: set[str]) -> None:
    """Upload the run's complete checkpoints not in `pushed` (names, updated here) to the shared state, each
    after the best adapter so far (a run resumed from it ends on the same adapter), and drop from the store
    what was pruned here."""
    run_dir = Path(run_dir)
    local = list_checkpoints(run_dir)
    if all(c.name in pushed for c in local):
        return
    bests = [b for b in sorted(run_dir.glob("best-*")) if (b / BEST_MARKER).exists()]
    for folder, marker in [(b, BEST_MARKER) for b in bests] + [(c, MARKER) for c in local]:
        if folder.name not in pushed:
            shared.push(folder, marker)
            pushed.add(folder.name)
    keep = {c.name for c in local}
    for name in shared.folders(run_dir / "checkpoints", MARKER, "step-"):
        if name not in keep:
            shared.delete(run_dir / "checkpoints" / name, MARKER)
    keep = {b.name for b in bests}
    for name in shared.folders(run_dir, BEST_MARKER, "best-"):
        if name not in keep:
            shared.delete(run_dir / name, BEST_MARKER)


def fetch_checkpoint(shared, run_dir: Path) -> str | None:
    """When this machine has no checkpoint of the run, fetch the latest complete one from the shared state (and
    the best adapter it names). Returns the checkpoint's name, or None."""
    run_dir = Path(run_dir)
    if list_checkpoints(run_dir):
        return None
    names = shared.folders(run_dir / "checkpoints", MARKER, "step-")
    if not names:
        return None
    state = json.loads(shared.store.get(shared.key(run_dir / "checkpoints" / names[-1] / MARKER))[0])
    if state.get("best_step"):  # first the best adapter: a checkpoint without it would end on another one
        shared.pull(run_dir / f"best-{int(state['best_step']):07d}", BEST_MARKER)
    shared.pull(run_dir / "checkpoints" / names[-1], MARKER)
    return names[-1]
