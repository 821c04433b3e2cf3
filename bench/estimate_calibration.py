"""The cpu hardware row's time estimate against a measured tiny training run.

    .venv/bin/python bench/estimate_calibration.py

Trains the tiny Llama on the demo feedback (the demo preset's LoRA, 30 steps)
and prints estimated seconds (guards.estimate from tokens and parameters),
measured seconds, and their ratio: the figure to check when adjusting the
`cpu` row of tuneloop.cost.hardware.HARDWARE. Timings belong here, not in tests.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tuneloop.models.base import resolve_base_model  # noqa: E402
from tuneloop.data import prepare_dataset  # noqa: E402
from tuneloop.demo.data import write_demo_data  # noqa: E402
from tuneloop.cost.guards import estimate  # noqa: E402
from tuneloop.models.presets import TINY_PARAMS  # noqa: E402
from tuneloop.specs import TINY_BASE, DataSpec, TrainingSpec  # noqa: E402
from tuneloop.training import train_lora  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        cached = ROOT / ".tuneloop" / "models"
        models = cached if (cached / "tiny-llama" / "config.json").exists() else d / "models"
        base = resolve_base_model(TINY_BASE, models, log=lambda m: None)
        ds = prepare_dataset(write_demo_data(d / "data")["feedback"], DataSpec())
        spec = TrainingSpec(batch_size=8, epochs=1, max_steps=30, save_every=1000, eval_every=1000,
                            early_stopping_patience=None)
        res = train_lora(spec, base, ds.train, ds.validation[:8], d / "run", resume=False, log=lambda m: None)
        est = estimate(res.train_tokens, 1, TINY_PARAMS, "cpu")
        print(f"tokens {res.train_tokens}, params {TINY_PARAMS:,}: estimated {est.hours * 3600:.3f} s "
              f"({est.flops:.3e} FLOPs), measured {res.seconds:.3f} s, "
              f"measured/estimated {res.seconds / (est.hours * 3600):.2f}")


if __name__ == "__main__":
    main()
