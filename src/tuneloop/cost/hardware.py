"""Hardware rows: what a machine costs per hour and how fast it trains, for estimates and work-pool placement.

Hardware rows
-------------
`usd_per_hour` is the on-demand price of the machine; `peak_tflops` the dense
peak of the accelerator at the training precision (fp16/bf16 tensor cores for
GPUs); `mfu` the fraction of that peak a LoRA run really sustains. The GPU MFU
figures are conservative for QLoRA on small batches (dequantization and
Python overhead keep it well under the 40-50 % large pretraining runs get).

Calibrating a row
-----------------
Run a short training (e.g. `tuneloop train ... ` with `max_steps: 20`), read
`train_tokens` and `seconds` from its `result.json`, and compute the
sustained rate::

    effective_tflops = 4 * params * train_tokens / seconds / 1e12   # LoRA; 6 * params for full fine-tuning

Then either set `peak_tflops` to that value with `mfu: 1.0` (what the `cpu`
row does), or keep the datasheet peak and set `mfu = effective / peak`.
Put the corrected row in a user presets file (see `load_user_presets`) as an
inline `hardware:` mapping rather than editing this module.

The shipped `cpu` row was measured on the 2-core CI machine with the tiny
base (`tests/training/test_guard_stop.py` prints the comparison); real
models on a laptop CPU are typically 0.1-1 TFLOP/s effective in fp32.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.errors import UserError

HARDWARE: dict[str, dict[str, Any]] = {
    # Measured: the tiny base (LoRA, fp32, batch 4, short rows) sustains ~0.034-0.036 TFLOP/s on the
    # 2 shared CPU cores of the CI machine (tests/training/test_guard_stop.py prints it); calibrate yours.
    "cpu": {"gpu": None, "usd_per_hour": 0.0, "peak_tflops": 0.035, "mfu": 1.0, "memory_gb": 8},
    "t4-small": {"gpu": "T4", "usd_per_hour": 0.75, "peak_tflops": 65.0, "mfu": 0.3, "memory_gb": 16},
    "a10g-small": {"gpu": "A10G", "usd_per_hour": 1.05, "peak_tflops": 125.0, "mfu": 0.35, "memory_gb": 24},
    "a10g-large": {"gpu": "A10G", "usd_per_hour": 2.20, "peak_tflops": 125.0, "mfu": 0.35, "memory_gb": 24},
    "a100-large": {"gpu": "A100", "usd_per_hour": 4.00, "peak_tflops": 312.0, "mfu": 0.4, "memory_gb": 80},
}

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HardwareSpec(_Strict):
    name: str = "custom"
    gpu: str | None = None
    usd_per_hour: float = Field(ge=0)
    peak_tflops: float = Field(gt=0)
    mfu: float = Field(gt=0, le=1)
    memory_gb: float | None = Field(None, gt=0)


def hardware_row(hw: str | dict) -> dict[str, Any]:
    """A hardware name or inline mapping -> a full row with its `name`."""
    if isinstance(hw, dict):
        return HardwareSpec.model_validate(hw).model_dump()
    if hw not in HARDWARE:
        raise UserError(repr(hw), "is not a known hardware name", f"use one of: {', '.join(sorted(HARDWARE))} "
                        "or an inline mapping with usd_per_hour, peak_tflops and mfu")
    return {"name": hw} | HARDWARE[hw]


def work_pool_for(hardware: str | dict) -> str:
    """`gpu-pool` for hardware with a GPU, else `cpu-pool`: where a job of that preset belongs."""
    return "gpu-pool" if hardware_row(hardware).get("gpu") else "cpu-pool"


def placement(hardware: str | dict, gpu_here: bool) -> str:
    """Where a job for `hardware` runs, seen from a worker with or without a GPU:
    "here", or "gpu-pool" when the hardware needs a GPU this worker lacks."""
    return "gpu-pool" if work_pool_for(hardware) == "gpu-pool" and not gpu_here else "here"
