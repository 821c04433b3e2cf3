"""The training loop: LoRA on a frozen base, loss on assistant tokens only.

Written by hand rather than through `transformers.Trainer` so that resume is
exact: the data order of each epoch is a pure function of (seed, epoch), and
every other piece of state lives in the checkpoint.

Where the time goes (see bench/mfu.py, bench/packing.py, bench/train_vs_trl.py):
examples are packed into rows without attention across them (`packing.py`)
instead of padded; the LM head runs only on the positions that have a target
(the assistant tokens), not on every prompt token; the forward builds no KV
cache; LoRA dropout draws its mask from 15-bit random integers (`FastDropout`)
rather than `bernoulli_`, which cost as much as the projection it feeds.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tuneloop.models.base import device, load_model, load_tokenizer
from tuneloop.data.validate import Row
from tuneloop.runtime.fsutil import atomic_write_text, publish_dir, staging_dir
from tuneloop.specs import TrainingSpec
from tuneloop.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from tuneloop.training.objectives import batch_loss, make_objective
from tuneloop.training.packing import collate as collate_batch
from tuneloop.training.packing import enable_varlen_attention, epoch_batches, packing_is_exact


@dataclass
class TrainResult:
    adapter_dir: Path
    run_dir: Path
    steps: int
    total_steps: int
    final_loss: float
    best_val_loss: float | None
    best_step: int
    train_tokens: int
    tokens_per_s: float
    seconds: float
    stopped_early: bool
    resumed_from_step: int | None
    trainable_params: int
    history: list[dict] = field(default_factory=list)
    stopped_reason: str | None = None  # set when `should_stop` ended the run; resume continues it
    stages: list[dict] | None = None  # a staged method's stage results, in order

    def to_json(self) -> dict:
        d = asdict(self)
        d["adapter_dir"], d["run_dir"] = str(self.adapter_dir), str(self.run_dir)
        return d


def build_lora_model(base_path: str, spec: TrainingSpec):
    """Base frozen, LoRA adapters on the target modules trainable."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = load_model(base_path, spec.quantization)
    if spec.quantization == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if spec.init_adapter is not None:  # continue training a fine-tuned model: its adapter, its rank and targets
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(spec.init_adapter), is_trainable=True)
    cfg = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                     target_modules=list(spec.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


@torch.no_grad()
def mean_loss(model, encoded, batch_size: int, pad_id: int, packed: bool = False, varlen: bool = False) -> float:
    """Mean token loss of encoded chat examples (eval mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(encoded), batch_size):
        batch = collate_batch(encoded[i: i + batch_size], pad_id, device(), packed, one_row=varlen)
        loss, n = batch_loss(model, batch, varlen)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def objective_loss(model, objective, batch_size: int, pad_id: int, packed: bool = False, varlen: bool = False) -> float:
    """The objective's loss over all its units, normalized as in training (eval mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(objective), batch_size):
        idx = list(range(i, min(i + batch_size, len(objective))))
        loss, _ = objective.loss(model, idx, pad_id, device(), packed, varlen)
        total, count = total + float(loss), count + sum(objective.counts[j] for j in idx)
    model.train(was_training)
    return total / max(count, 1)


class FastDropout(torch.nn.Module):
    """`nn.Dropout` for LoRA inputs with a cheaper mask: 15-bit random integers, four per 64-bit draw.

    Drop probability is round(p * 32768) / 32768 (within 1.6e-5 of p); kept values are scaled by
    1 / (1 - p) as nn.Dropout does. It draws from torch's global generator, which checkpoints save
    and restore, so resume stays exact. In eval mode it is the identity.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.threshold = round(self.p * 32768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        keep = (bits.view(torch.int16)[:n].view(x.shape) & 0x7FFF) >= self.threshold
        # a Python-float scale keeps fp32 precision on bf16 inputs, as nn.Dropout's kernels do
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), x.new_zeros(()))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model) -> int:
    """Swap the LoRA layers' nn.Dropout for FastDropout; returns how many were swapped."""
    swapped = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, d in list(drops.items()):
                if isinstance(d, torch.nn.Dropout) and d.p > 0:
                    drops[name] = FastDropout(d.p)
                    swapped += 1
    return swapped


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


STAGES = {"sft_then_dpo": ("sft", "dpo")}  # a method that is several methods in turn, each from the last's adapter


def train_lora(
    spec: TrainingSpec,
    base_path: str,
    train_rows: list[Row],
    val_rows: list[Row],
    run_dir: Path,
    resume: bool = True,
    log: Callable[[str], None] = print,
    should_stop: Callable[[int, int, float], str | None] | None = None,
) -> TrainResult:
    """Train (or resume) a LoRA adapter in run_dir; the best adapter ends in run_dir/adapter.

    `should_stop(step, total_steps, elapsed_s)` is asked after each optimizer step (elapsed_s counts
    this process only); a reason stops the run after checkpointing that step, so it resumes exactly.
    A staged method (`sft_then_dpo`) trains each stage in run_dir/<stage> (see `_train_stages`).
    """
    if spec.method in STAGES:
        return _train_stages(spec, base_path, train_rows, val_rows, Path(run_dir), resume, log, should_stop)
    return _train_one(spec, base_path, train_rows, val_rows, run_dir, resume, log, should_stop)


def _publish_adapter(run_dir: Path, write: Callable[[Path], object]) -> Path:
    """run_dir/adapter replaced whole by what `write` puts in a staging folder; returns its path."""
    adapter_dir = run_dir / "adapter"
    tmp = staging_dir(run_dir, "adapter")
    write(tmp)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    publish_dir(tmp, adapter_dir)
    return adapter_dir


def _train_stages(spec, base_path, train_rows, val_rows, run_dir: Path, resume, log, should_stop) -> TrainResult:
    """Each stage of a staged method in turn, on the same rows and settings, in run_dir/<stage>: the first from
    the spec's starting point (a fresh adapter, or `init_adapter`), each later one from the adapter the stage
    before it ended with, which is then also DPO's reference (the SFT model, as in the usual SFT-then-DPO
    recipe). A finished stage is not trained again on resume (it resumes from its last checkpoint and stops at
    once). Steps, seconds and tokens add up; the guards see the stages as one run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    results: list[TrainResult] = []
    init = spec.init_adapter
    names = STAGES[spec.method]
    for k, name in enumerate(names):
        steps0, seconds0 = sum(r.total_steps for r in results), sum(r.seconds for r in results)

        def stop(step, total, elapsed, steps0=steps0, seconds0=seconds0, left=len(names) - k):
            # the stages train the same rows with the same settings: each later one is counted as long as this one
            return should_stop(steps0 + step, steps0 + total * left, seconds0 + elapsed) if should_stop else None

        stage = spec.model_copy(update={"method": name, "init_adapter": init})
        log(f"stage {k + 1}/{len(names)} of {spec.method}: {name}"
            + (f", from the {results[-1].run_dir.name} adapter" if results else ""))
        result = _train_one(stage, base_path, train_rows, val_rows, run_dir / name, resume,
                            lambda m, name=name: log(f"[{name}] {m}"), stop)
        results.append(result)
        if result.stopped_reason:  # a guard stopped it: resume runs this stage on, then the next ones
            break
        init = result.adapter_dir
    last = results[-1]  # after a guard's stop: the adapter so far, as a one-stage run leaves it
    _publish_adapter(run_dir, lambda tmp: shutil.copytree(last.adapter_dir, tmp, dirs_exist_ok=True))
    seconds = sum(r.seconds for r in results)
    run_tokens = sum(r.tokens_per_s * r.seconds for r in results)
    result = TrainResult(
        adapter_dir=run_dir / "adapter", run_dir=run_dir, steps=sum(r.steps for r in results),
        total_steps=sum(r.total_steps for r in results) + last.total_steps * (len(names) - len(results)),
        final_loss=last.final_loss, best_val_loss=last.best_val_loss, best_step=last.best_step,
        train_tokens=sum(r.train_tokens for r in results), tokens_per_s=run_tokens / max(seconds, 1e-9),
        seconds=seconds, stopped_early=last.stopped_early,
        resumed_from_step=results[0].resumed_from_step, trainable_params=last.trainable_params,
        history=[{**h, "stage": r.run_dir.name} for r in results for h in r.history],
        stopped_reason=last.stopped_reason, stages=[r.to_json() for r in results])
    atomic_write_text(run_dir / "result.json", json.dumps(result.to_json(), indent=2))
    return result


def _train_one(spec, base_path, train_rows, val_rows, run_dir, resume, log, should_stop) -> TrainResult:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _seed_all(spec.seed)
    tok = load_tokenizer(base_path)
    model = build_lora_model(base_path, spec)
    use_fast_dropout(model)
    packed = spec.packing and packing_is_exact(model)
    if spec.packing and not packed:
        log(f"packing off for {type(model.get_base_model()).__name__}: its attention does not separate examples by "
            "position ids; training on padded batches (the same batches, in the same order)")
    varlen = packed and enable_varlen_attention(model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    train_obj = make_objective(spec.method, tok, train_rows, spec.max_seq_len, spec)
    val_obj = make_objective(spec.method, tok, val_rows, spec.max_seq_len, spec)
    if not len(train_obj):
        raise ValueError(f"no training {'row' if spec.method == 'sft' else 'example'} for method {spec.method} has "
                         "an answer token within max_seq_len")
    lengths, targets = train_obj.lengths, train_obj.counts

    micro_per_epoch = math.ceil(len(train_obj) / spec.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / spec.gradient_accumulation)
    total = spec.epochs * steps_per_epoch
    if spec.max_steps:
        total = min(total, spec.max_steps)
    warmup = min(spec.warmup_steps, int(0.1 * total))
    eval_every = spec.eval_every or steps_per_epoch

    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)

    state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "tokens": 0, "best_val": None, "best_step": 0,
             "bad_evals": 0, "stopped_early": False, "last_loss": None, "history": []}
    resumed_from = None
    ckpts = list_checkpoints(run_dir) if resume else []
    if ckpts:
        state = load_checkpoint(ckpts[-1], model, optimizer, scheduler)
        resumed_from = state["global_step"]
        train_obj.load_state(state.get("objective", {}).get("train", {}))
        val_obj.load_state(state.get("objective", {}).get("validation", {}))
        log(f"resuming from {ckpts[-1].name} (step {resumed_from}/{total})")
    elif not resume and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")

    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(run_dir / "tb"), purge_step=state["global_step"] or None)
    pad_id, dev = tok.pad_token_id, device()
    for obj in (train_obj, val_obj):  # the reference's log-probabilities, before the first step changes the adapter
        obj.prepare(model, spec.batch_size * 2, pad_id, dev, packed, varlen, spec.init_adapter is not None, log)
    state["objective"] = {"train": train_obj.state(), "validation": val_obj.state()}
    t0, tokens_at_start = time.perf_counter(), state["tokens"]
    layout = (("packed, per-example attention" if varlen else "packed, block mask") if packed
              else "padded, length-grouped" if spec.group_by_length else "padded")
    log(f"training {n_trainable:,} LoRA parameters ({spec.method}) on {train_obj.describe()} ({layout}): {total} steps "
        f"({steps_per_epoch}/epoch), warmup {warmup}, lr {spec.learning_rate}")

    def publish_best(step: int) -> None:
        tmp = staging_dir(run_dir, "best")
        model.save_pretrained(tmp / "adapter")
        final = run_dir / f"best-{step:07d}"
        publish_dir(tmp, final)
        for old in run_dir.glob("best-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    stopped_reason = None
    while state["global_step"] < total and not state["stopped_early"] and stopped_reason is None:
        micro = epoch_batches(lengths, spec.batch_size, spec.seed, state["epoch"],
                              group_by_length=spec.group_by_length and not spec.packing)
        while state["step_in_epoch"] < steps_per_epoch and state["global_step"] < total:
            s = state["step_in_epoch"]
            step_micro = micro[s * spec.gradient_accumulation: (s + 1) * spec.gradient_accumulation]
            n_tokens = sum(targets[j] for mb in step_micro for j in mb)
            summed = torch.zeros((), dtype=torch.float64, device=dev)
            seen: dict[str, float] = {}
            for mb in step_micro:
                loss, stats = train_obj.loss(model, mb, pad_id, dev, packed, varlen)
                (loss / n_tokens).backward()
                summed += loss.detach()
                state["tokens"] += sum(lengths[j] for j in mb)
                for k, v in stats.items():
                    seen[k] = seen.get(k, 0.0) + v
            step_loss = float(summed) / n_tokens
            torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            state["last_loss"] = step_loss
            step = state["global_step"]
            tb.add_scalar("train/loss", step_loss, step)
            tb.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            entry = {"step": step, "loss": step_loss, "t": round(time.time(), 3)}
            for k, v in seen.items():  # preference objectives: share of units ranked right, margin, KL estimate
                entry[k] = v / n_tokens
                tb.add_scalar(f"train/{k}", entry[k], step)

            if len(val_obj) and (step % eval_every == 0 or step == total):
                val = objective_loss(model, val_obj, spec.batch_size * 2, pad_id, packed, varlen)
                tb.add_scalar("val/loss", val, step)
                entry["val_loss"] = val
                if state["best_val"] is None or val < state["best_val"]:
                    state.update(best_val=val, best_step=step, bad_evals=0)
                    publish_best(step)
                else:
                    state["bad_evals"] += 1
                    if spec.early_stopping_patience and state["bad_evals"] >= spec.early_stopping_patience:
                        state["stopped_early"] = True
                        log(f"early stop at step {step}: validation loss has not improved for "
                            f"{state['bad_evals']} evaluations (best {state['best_val']:.4f} at step {state['best_step']})")
            state["history"].append(entry)
            if step % max(1, total // 10) == 0 or step == total:
                rate = (state["tokens"] - tokens_at_start) / max(time.perf_counter() - t0, 1e-9)
                extra = f" val {entry['val_loss']:.4f}" if "val_loss" in entry else ""
                extra += f" accuracy {entry['accuracy']:.2f}" if "accuracy" in entry else ""
                log(f"step {step}/{total} loss {step_loss:.4f}{extra} lr {scheduler.get_last_lr()[0]:.2e} {rate:,.0f} tok/s")
            if state["step_in_epoch"] >= steps_per_epoch:
                state["epoch"] += 1
                state["step_in_epoch"] = 0
            saved = step % spec.save_every == 0 or step == total or state["stopped_early"]
            if saved:
                save_checkpoint(run_dir, step, model, optimizer, scheduler, state, spec.keep_checkpoints)
            if state["stopped_early"]:
                break
            if should_stop is not None and step < total:
                stopped_reason = should_stop(step, total, time.perf_counter() - t0) or None
                if stopped_reason:
                    if not saved:
                        save_checkpoint(run_dir, step, model, optimizer, scheduler, state, spec.keep_checkpoints)
                    log(f"stopped at step {step}/{total}: {stopped_reason}")
                    break
            if state["step_in_epoch"] == 0:  # the epoch ended: the next one takes its own order (as a resume does)
                break
    tb.close()
    seconds = time.perf_counter() - t0

    best = sorted(run_dir.glob("best-*"))
    adapter_dir = _publish_adapter(run_dir, lambda tmp: shutil.copytree(best[-1] / "adapter", tmp, dirs_exist_ok=True)
                                   if best else model.save_pretrained(tmp))

    result = TrainResult(
        adapter_dir=adapter_dir, run_dir=run_dir, steps=state["global_step"], total_steps=total,
        final_loss=state["last_loss"], best_val_loss=state["best_val"], best_step=state["best_step"],
        train_tokens=state["tokens"], tokens_per_s=(state["tokens"] - tokens_at_start) / max(seconds, 1e-9),
        seconds=seconds, stopped_early=state["stopped_early"], resumed_from_step=resumed_from,
        trainable_params=n_trainable, history=state["history"], stopped_reason=stopped_reason,
    )
    atomic_write_text(run_dir / "result.json", json.dumps(result.to_json(), indent=2))
    return result
