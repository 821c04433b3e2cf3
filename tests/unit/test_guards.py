"""Cost guards and presets: the estimate formula, the run / approve / refuse table, abort projection."""

from __future__ import annotations

import pytest
import yaml

from tuneloop.errors import UserError
from tuneloop.cost.guards import Estimate, GuardSpec, RunGuard, check, estimate
from tuneloop.cost.hardware import HARDWARE
from tuneloop.models.presets import cost_table_markdown, load_user_presets, resolve_preset, spec_overrides
from tuneloop.specs import RetrainSpec, validate_spec

FLAT = {"name": "flat", "usd_per_hour": 10.0, "peak_tflops": 1.0, "mfu": 1.0}  # 3.6e15 FLOPs per hour


def test_estimate_formula_on_known_numbers():
    e = estimate(1_000_000, 3, 1_000_000_000, "t4-small")
    assert e.flops == pytest.approx(1e6 * 3 * 4 * 1e9)  # LoRA: 4N per token
    assert e.hours == pytest.approx(1.2e16 / (65e12 * 0.3 * 3600))
    assert e.usd == pytest.approx(e.hours * 0.75)
    assert e.hardware == "t4-small" and e.trainable_params is None
    full = estimate(1_000_000, 3, 1_000_000_000, "t4-small", full_finetune=True)
    assert full.flops == pytest.approx(1.5 * e.flops) and full.trainable_params == 1_000_000_000
    # inline hardware: 1 TFLOP/s at MFU 1 is 3.6e15 FLOPs an hour
    two_hours = estimate(1_800_000, 1, 1_000_000_000, FLAT)
    assert two_hours.hours == pytest.approx(2.0) and two_hours.usd == pytest.approx(20.0)


def _job(hours: float, usd_per_hour: float) -> Estimate:
    return Estimate(tokens=1000, epochs=1, params=10, trainable_params=None, flops=0.0, hours=hours,
                    usd=hours * usd_per_hour, hardware="x", usd_per_hour=usd_per_hour)


@pytest.mark.parametrize("hours,price,action,needle", [
    (2, 10, "needs_approval", "approval_usd"),   # $20
    (3, 20, "refuse", "max_usd"),                # $60
    (7, 1, "refuse", "max_hours"),               # 7 h, $7
    (0.5, 10, "run", "within"),                  # $5
    (1, 0, "run", "within"),                     # free CPU
])
def test_guard_table(hours, price, action, needle):
    d = check(_job(hours, price), GuardSpec())
    assert d.action == action and needle in d.reason
    if action == "refuse":
        assert "lower epochs/max_steps" in d.reason and "raise guards." in d.reason


def test_guard_spec_is_strict():
    with pytest.raises(Exception):
        GuardSpec(max_dollars=3)
    g = GuardSpec()
    assert (g.max_usd, g.max_hours, g.approval_usd, g.approval_timeout_s) == (50, 6, 15, 3600)


def test_run_guard_aborts_at_the_step_where_projection_crosses_the_cap():
    rg = RunGuard(GuardSpec(max_hours=1, max_usd=1000), _job(0.5, 1.0))
    elapsed = lambda k: 20 * k if k <= 10 else 200 + 100 * (k - 10)  # slows down after step 10  # noqa: E731
    reasons = {k: rg.check_progress(k, 100, elapsed(k)) for k in range(1, 20)}
    first = min(k for k, r in reasons.items() if r)
    assert first == 13  # 500 s / 13 steps x 100 = 3846 s > 3600 s; step 12 projects 3333 s
    assert "max_hours" in reasons[13] and "step 13/100" in reasons[13]


def test_run_guard_usd_and_elapsed_caps_and_resumed_projection():
    rg = RunGuard(GuardSpec(max_usd=5, max_hours=6), _job(0.1, 10.0))
    assert rg.check_progress(10, 100, 170) is None  # 1700 s -> $4.72
    assert "max_usd" in rg.check_progress(10, 100, 190)  # 1900 s -> $5.28
    tiny = RunGuard(GuardSpec(max_hours=0.001), _job(0.0, 0.0))
    assert "elapsed" in tiny.check_progress(1, 10_000, 4.0)
    # as a should_stop callback on a resumed run: the first step seen marks where this process began
    rg = RunGuard(GuardSpec(max_hours=1), _job(0.5, 0.0))
    assert rg(51, 100, 60.0) is None  # 60 s for 1 of the 50 remaining steps -> 3000 s
    assert rg(52, 100, 160.0) is not None  # 80 s a step -> 4000 s


def test_presets_resolve_modes_and_prices():
    demo, prod = resolve_preset("tiny", "demo"), resolve_preset("tiny")
    assert demo["training"]["epochs"] == 1 and demo["training"]["max_steps"] == 10
    assert prod["training"]["epochs"] == 3 and "max_steps" not in prod["training"]
    assert demo["hardware"]["name"] == "cpu" and demo["hardware"]["usd_per_hour"] == 0.0
    phi = resolve_preset("phi-3-mini")
    assert phi["hardware"]["usd_per_hour"] == 0.75 and phi["params"] == 3_800_000_000
    assert phi["training"]["quantization"] == "4bit" and phi["base_model"] == "microsoft/Phi-3-mini-4k-instruct"
    cl = resolve_preset("codellama-7b", "demo")
    assert cl["hardware"]["usd_per_hour"] == 2.20 and cl["hardware"]["gpu"] == "A10G"
    assert resolve_preset("codellama-13b")["params"] == 13_000_000_000
    spec = validate_spec({"data": "feedback.jsonl"} | spec_overrides(cl))
    assert isinstance(spec, RetrainSpec) and spec.training.max_steps == 10 and spec.training.quantization == "4bit"
    assert HARDWARE["t4-small"]["peak_tflops"] == 65 and HARDWARE["a10g-large"]["memory_gb"] == 24
    table = cost_table_markdown()
    assert "| phi-3-mini |" in table and "| codellama-13b |" in table and "2.20" in table


def test_user_presets_override_shipped_ones(tmp_path):
    f = tmp_path / "presets.yaml"
    f.write_text(yaml.safe_dump({"presets": {
        "codellama-7b": {"hardware": "t4-small", "training": {"learning_rate": 1e-4}},
        "my-model": {"base_model": "org/my-model", "params": 1_000_000_000,
                     "hardware": {"name": "rented", "usd_per_hour": 1.5, "peak_tflops": 100, "mfu": 0.5},
                     "modes": {"demo": {"max_steps": 3}}},
    }}))
    user = load_user_presets(f)
    cl = resolve_preset("codellama-7b", user_presets=user)
    assert cl["hardware"]["usd_per_hour"] == 0.75 and cl["training"]["learning_rate"] == 1e-4
    assert cl["training"]["quantization"] == "4bit"  # shipped keys survive the merge
    mine = resolve_preset("my-model", "demo", user_presets=user)
    assert mine["hardware"]["name"] == "rented" and mine["training"]["max_steps"] == 3
    assert "| my-model |" in cost_table_markdown(user_presets=user)

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"x": {"base_model": "a", "params": 1, "hardware": "cpu", "nope": 1}}))
    with pytest.raises(UserError, match="x.nope"):
        load_user_presets(bad)


def test_unknown_preset_lists_known_names():
    with pytest.raises(UserError) as e:
        resolve_preset("llama-99b")
    assert "llama-99b" in str(e.value) and "codellama-7b" in str(e.value) and "phi-3-mini" in str(e.value)
    with pytest.raises(UserError, match="demo"):
        resolve_preset("tiny", mode="fast")


def test_planned_tokens_follow_max_steps():
    from tuneloop.cost.sizing import planned_tokens

    # 100 rows, batch 4 x accumulation 5 -> 5 steps per epoch
    assert planned_tokens(1000, 100, 4, 5, epochs=3, max_steps=None) == 3000
    assert planned_tokens(1000, 100, 4, 5, epochs=3, max_steps=10) == 2000
    assert planned_tokens(1000, 100, 4, 5, epochs=1, max_steps=50) == 1000
    assert planned_tokens(1000, 3, 4, 5, epochs=2, max_steps=None) == 2000  # a partial step still counts
