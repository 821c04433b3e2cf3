"""Cost and time guards: estimate a job before it starts, watch it while it runs.

Estimate
--------
Training FLOPs follow the usual dense-transformer rule of thumb, per token::

    full fine-tune:  6 N   (forward 2N + backward: grads w.r.t. activations 2N and weights 2N)
    LoRA / QLoRA:    4 N   (forward 2N + backward w.r.t. activations 2N; the frozen base
                            needs no weight gradients, and the adapter's own 6 x N_lora is
                            negligible next to N)

    FLOPs = tokens_per_epoch x epochs x (6 or 4) x N
    hours = FLOPs / (peak_tflops x 1e12 x mfu x 3600)
    usd   = hours x usd_per_hour

`N` is the base model's parameter count; attention's sequence-length term is
ignored (short fine-tuning sequences). Tokens are every token fed through the
model (prompt and answer), not only the learned ones. Hardware rows live in
`tuneloop.cost.hardware.HARDWARE`; see its docstring to calibrate them.

Everything here is a pure function of its inputs; `RunGuard` takes elapsed
time as an argument so it is deterministic under test.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Literal



from tuneloop.cost.hardware import hardware_row
from tuneloop.specs import GuardSpec  # noqa: F401  (re-exported: guards are configured there)

LORA_FLOPS_PER_PARAM_TOKEN = 4
FULL_FLOPS_PER_PARAM_TOKEN = 6


@dataclass(frozen=True)
class Estimate:
    tokens: int  # tokens per epoch
    epochs: int
    params: int
    trainable_params: int | None
    flops: float
    hours: float
    usd: float
    hardware: str
    usd_per_hour: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def estimate(tokens_per_epoch: int, epochs: int, params: int, hardware: str | dict,
             full_finetune: bool = False, trainable_params: int | None = None) -> Estimate:
    """FLOPs, wall hours and dollars of a training job (formula in the module docstring)."""
    hw = hardware_row(hardware)
    per = FULL_FLOPS_PER_PARAM_TOKEN if full_finetune else LORA_FLOPS_PER_PARAM_TOKEN
    flops = float(tokens_per_epoch) * epochs * per * params
    hours = flops / (hw["peak_tflops"] * 1e12 * hw["mfu"] * 3600)
    if trainable_params is None and full_finetune:
        trainable_params = params
    return Estimate(tokens=int(tokens_per_epoch), epochs=int(epochs), params=int(params),
                    trainable_params=trainable_params, flops=flops, hours=hours,
                    usd=hours * hw["usd_per_hour"], hardware=hw["name"], usd_per_hour=hw["usd_per_hour"])


@dataclass(frozen=True)
class GuardDecision:
    action: Literal["run", "needs_approval", "refuse"]
    reason: str


def check(est: Estimate, guard: GuardSpec) -> GuardDecision:
    """Refuse above max_usd / max_hours, ask above approval_usd, else run."""
    what = f"{est.tokens:,} tokens x {est.epochs} epoch(s) on {est.hardware}"
    if est.usd > guard.max_usd:
        return GuardDecision("refuse", f"estimated ${est.usd:.2f} ({what}) is above guards.max_usd=${guard.max_usd:.2f}; "
                                       "lower epochs/max_steps or the data size, or raise guards.max_usd")
    if est.hours > guard.max_hours:
        return GuardDecision("refuse", f"estimated {est.hours:.2f} h ({what}) is above guards.max_hours="
                                       f"{guard.max_hours:g} h; lower epochs/max_steps, pick faster hardware "
                                       "or raise guards.max_hours")
    if est.usd > guard.approval_usd:
        return GuardDecision("needs_approval", f"estimated ${est.usd:.2f} ({what}, {est.hours:.2f} h) is above "
                                               f"guards.approval_usd=${guard.approval_usd:.2f}; waiting up to "
                                               f"{guard.approval_timeout_s:g} s for approval")
    return GuardDecision("run", f"estimated ${est.usd:.2f}, {est.hours:.2f} h ({what}) is within the guards")


@dataclass
class RunGuard:
    """Watches a running job and says when to abort it.

    Use `check_progress` with explicit elapsed seconds, or pass the instance itself as
    `train_lora(should_stop=...)`: it is called with (step, total_steps, elapsed_s of this
    process); on a resumed run the first step it sees marks where this process started.
    """

    guard: GuardSpec
    estimate: Estimate
    started_at: float = field(default_factory=time.monotonic)
    hardware_usd_per_hour: float | None = None
    _first_step: int | None = field(default=None, init=False, repr=False)

    @property
    def usd_per_hour(self) -> float:
        return self.estimate.usd_per_hour if self.hardware_usd_per_hour is None else self.hardware_usd_per_hour

    def check_progress(self, step: int, total_steps: int, elapsed_s: float, start_step: int = 0) -> str | None:
        """Abort reason, or None. `start_step`: steps already done before `elapsed_s` began."""
        g = self.guard
        hours = elapsed_s / 3600
        if hours > g.max_hours:
            return (f"aborted at step {step}/{total_steps}: {hours:.4f} h elapsed is above guards.max_hours="
                    f"{g.max_hours:g} h; the checkpoint at step {step} can be resumed with a higher cap")
        done = step - start_step
        if done <= 0:
            return None
        proj_h = elapsed_s / done * (total_steps - start_step) / 3600
        proj_usd = proj_h * self.usd_per_hour
        if proj_h > g.max_hours:
            return (f"aborted at step {step}/{total_steps}: projected {proj_h:.4f} h is above guards.max_hours="
                    f"{g.max_hours:g} h (estimate was {self.estimate.hours:.4f} h); resume from the step-{step} "
                    "checkpoint with a higher cap or fewer steps")
        if proj_usd > g.max_usd:
            return (f"aborted at step {step}/{total_steps}: projected ${proj_usd:.2f} is above guards.max_usd="
                    f"${g.max_usd:.2f} (estimate was ${self.estimate.usd:.2f}); resume from the step-{step} "
                    "checkpoint with a higher cap or fewer steps")
        return None

    def check_now(self, step: int, total_steps: int) -> str | None:
        return self.check_progress(step, total_steps, time.monotonic() - self.started_at)

    def __call__(self, step: int, total_steps: int, elapsed_s: float) -> str | None:
        if self._first_step is None:
            self._first_step = step
        return self.check_progress(step, total_steps, elapsed_s, start_step=self._first_step - 1)
