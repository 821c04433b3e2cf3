"""A guard stop checkpoints the step it stopped at; a later run resumes from it exactly.
(The cpu hardware row's estimate against a measured run is in bench/estimate_calibration.py, not a timed test.)
"""

from __future__ import annotations

import json

import pytest

from tuneloop.data import prepare_dataset
from tuneloop.specs import DataSpec, TrainingSpec
from tuneloop.training import train_lora
from tuneloop.training.checkpoint import list_checkpoints

# 16 rows at batch 4: 4 steps an epoch, 3 epochs capped at 10 steps; no periodic checkpoint before step 10
SPEC = TrainingSpec(batch_size=4, gradient_accumulation=1, epochs=3, max_steps=10, save_every=50,
                    eval_every=5, learning_rate=3e-3, warmup_steps=2, seed=3, early_stopping_patience=None)
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def rows(demo_files):
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    return ds.train[:16], ds.validation[:8]


def test_should_stop_checkpoints_and_resume_finishes(tiny_base, rows, tmp_path):
    train, val = rows
    calls = []

    def stop_at_3(step, total, elapsed):
        calls.append((step, total))
        assert elapsed >= 0
        return "guard: projected cost too high" if step == 3 else None

    run = tmp_path / "run"
    first = train_lora(SPEC, tiny_base, train, val, run, should_stop=stop_at_3, **QUIET)
    assert calls == [(1, 10), (2, 10), (3, 10)]
    assert first.stopped_reason == "guard: projected cost too high" and first.steps == 3 and first.total_steps == 10
    assert [p.name for p in list_checkpoints(run)] == ["step-0000003"]
    assert (first.adapter_dir / "adapter_model.safetensors").exists()
    assert json.loads((run / "result.json").read_text())["stopped_reason"] == first.stopped_reason

    second = train_lora(SPEC, tiny_base, train, val, run, **QUIET)
    assert second.resumed_from_step == 3 and second.steps == 10 and second.stopped_reason is None

    straight = train_lora(SPEC, tiny_base, train, val, tmp_path / "straight", resume=False, **QUIET)
    assert abs(second.final_loss - straight.final_loss) <= 1e-6
    assert second.train_tokens == straight.train_tokens
