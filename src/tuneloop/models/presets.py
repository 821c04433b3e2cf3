"""Model presets, hardware prices and the demo / production modes.

A preset names a base model, its parameter count, the hardware it is sized
for and the training overrides it needs. `resolve_preset` turns a preset and a
mode into a partial `RetrainSpec` dict (`base_model`, `training`) plus the
hardware row used by the cost guards (`tuneloop.cost.guards`).

Hardware rows, prices and their calibration are in `tuneloop.cost.hardware`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.cost.guards import estimate
from tuneloop.cost.hardware import HardwareSpec, hardware_row
from tuneloop.models.base import TINY_CONFIG
from tuneloop.errors import SpecError, UserError
from tuneloop.specs import TINY_BASE, TrainingSpec, read_yaml


def llama_params(cfg: dict) -> int:
    """Parameter count of a Llama-style decoder (untied head) from its config."""
    h, i, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) // cfg["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h  # q,o + k,v + gate/up/down + 2 norms
    return 2 * v * h + n * per_layer + h  # embeddings + head + layers + final norm


TINY_PARAMS = llama_params(TINY_CONFIG)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"base_model": TINY_BASE, "params": TINY_PARAMS, "hardware": "cpu",
             "training": {"quantization": "none"}},
    "phi-3-mini": {"base_model": "microsoft/Phi-3-mini-4k-instruct", "params": 3_800_000_000,
                   "hardware": "t4-small",
                   "training": {"quantization": "4bit",
                                "target_modules": ["qkv_proj", "o_proj"]}},  # Phi-3 fuses q/k/v
    "codellama-7b": {"base_model": "codellama/CodeLlama-7b-hf", "params": 6_700_000_000,
                     "hardware": "a10g-large", "training": {"quantization": "4bit"}},
    "codellama-13b": {"base_model": "codellama/CodeLlama-13b-hf", "params": 13_000_000_000,
                      "hardware": "a10g-large", "training": {"quantization": "4bit"}},
}

MODES: dict[str, dict[str, Any]] = {
    "demo": {"epochs": 1, "max_steps": 10},
    "production": {"epochs": 3},
}


class PresetSpec(BaseModel):
    """One preset entry; every field is optional in a user file that overrides a shipped preset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: str | None = None
    params: int | None = Field(None, ge=1)
    hardware: str | HardwareSpec | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    modes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-mode training overrides")


def load_user_presets(path: str | Path) -> dict[str, dict]:
    """Read a YAML file of presets (`{name: entry}`, optionally under a top-level `presets:` key).

    Entries have the shipped schema: base_model, params, hardware (a shipped hardware name or an
    inline mapping with usd_per_hour, peak_tflops, mfu), training, and optional per-mode `modes`.
    """
    path = Path(path)
    raw = read_yaml(path, "presets")
    if isinstance(raw, dict) and set(raw) == {"presets"}:
        raw = raw["presets"] or {}
    if not isinstance(raw, dict):
        raise SpecError(str(path), "must be a mapping of preset name to entry", "write `name: {base_model: ...}`")
    out = {}
    for name, entry in raw.items():
        try:
            out[str(name)] = PresetSpec.model_validate(entry or {}).model_dump(exclude_none=True, exclude_defaults=True)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(entry)"
            raise SpecError(f"{path}: {name}.{loc}={first.get('input')!r}", first["msg"],
                            f"set {name}.{loc} to a valid value") from None
    return out


def known_presets(user_presets: dict | None = None) -> list[str]:
    return sorted(set(PRESETS) | set(user_presets or {}))


def _merged(name: str, user_presets: dict | None) -> dict:
    shipped = copy.deepcopy(PRESETS.get(name, {}))
    user = copy.deepcopy((user_presets or {}).get(name, {}))
    if not shipped and not user:
        raise UserError(repr(name), "is not a known preset",
                        f"use one of: {', '.join(known_presets(user_presets))} or add it to a user presets file")
    entry = shipped | {k: v for k, v in user.items() if k not in ("training", "modes")}
    entry["training"] = shipped.get("training", {}) | user.get("training", {})
    modes = copy.deepcopy(shipped.get("modes", {}))
    for m, over in user.get("modes", {}).items():
        modes[m] = modes.get(m, {}) | over
    entry["modes"] = modes
    for need in ("base_model", "params", "hardware"):
        if entry.get(need) is None:
            raise UserError(f"preset {name!r}", f"has no {need}", f"set {name}.{need} in the presets file")
    return entry


def resolve_preset(name: str, mode: str = "production", user_presets: dict | None = None) -> dict:
    """Preset + mode -> {"base_model", "training", "hardware", "params", "preset", "mode"}.

    `base_model` and `training` are a partial RetrainSpec (see `spec_overrides`); user entries are
    merged over shipped ones of the same name (training keys one by one); mode overrides come last.
    """
    if mode not in MODES:
        raise UserError(repr(mode), "is not a known mode", f"use one of: {', '.join(MODES)}")
    entry = _merged(name, user_presets)
    training = entry["training"] | MODES[mode] | entry["modes"].get(mode, {})
    try:
        TrainingSpec.model_validate(training)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise SpecError(f"preset {name!r} training.{loc}={first.get('input')!r}", first["msg"],
                        f"fix training.{loc} in the preset") from None
    return {"preset": name, "mode": mode, "base_model": entry["base_model"], "training": training,
            "params": int(entry["params"]), "hardware": hardware_row(entry["hardware"])}


def spec_overrides(resolved: dict) -> dict:
    """Only the RetrainSpec fields of a resolved preset."""
    return {"base_model": resolved["base_model"], "training": dict(resolved["training"])}


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def cost_table_markdown(tokens_per_epoch: int = 1_000_000, user_presets: dict | None = None) -> str:
    """A Markdown table of every preset's hardware and its estimated LoRA cost per mode."""
    lines = [f"Estimated LoRA cost for {tokens_per_epoch:,} training tokens per epoch "
             "(FLOPs = tokens x epochs x 4 x params; hours = FLOPs / (peak x MFU)).", "",
             "| preset | base model | params | hardware | $/h | production (3 ep) | demo (≤10 steps, 1 ep) |",
             "|---|---|---:|---|---:|---:|---:|"]
    for name in known_presets(user_presets):
        r = resolve_preset(name, "production", user_presets)
        hw = r["hardware"]
        prod = estimate(tokens_per_epoch, r["training"]["epochs"], r["params"], hw)
        demo = estimate(tokens_per_epoch, 1, r["params"], hw)
        lines.append(f"| {name} | `{r['base_model']}` | {_fmt_params(r['params'])} | {hw['name']}"
                     f"{' (' + hw['gpu'] + ')' if hw.get('gpu') else ''} | {hw['usd_per_hour']:.2f} | "
                     f"{prod.hours:.2f} h, ${prod.usd:.2f} | ≤ {demo.hours:.2f} h, ≤ ${demo.usd:.2f} |")
    return "\n".join(lines) + "\n"
