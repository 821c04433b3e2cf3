"""A `fine_tuning.jobs.create` body, checked field by field, and the retrain spec it becomes.

Unset hyperparameters come from the base model's preset: the tiny local base uses the demo preset (the
one `make demo` trains with), a base named by a shipped preset uses that preset, any other base the
production defaults. `learning_rate_multiplier` multiplies the preset's rate; `batch_size` is the batch
per optimizer step, as OpenAI's is; `n_epochs` the passes over the training file. A `dpo` job trains on a
preference file with DPO (`beta`, default 0.1), its reference the base with the adapter switched off.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import yaml

from tuneloop.serving.bodies import BadField, number
from tuneloop.specs import TINY_BASE, RetrainSpec, validate_spec

FIELDS = {"model", "training_file", "validation_file", "suffix", "seed", "metadata", "method", "hyperparameters",
          "integrations"}
HYPER = {"n_epochs", "batch_size", "learning_rate_multiplier"}
SUFFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _hyper(raw: object, where: str, extra: frozenset[str] = frozenset()) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadField(where, raw, "must be an object of n_epochs, batch_size, learning_rate_multiplier",
                       'send e.g. {"n_epochs": 3}')
    unknown = sorted(set(map(str, raw)) - HYPER - extra)
    if unknown:
        raise BadField(f"{where}.{unknown[0]}", raw[unknown[0]], f"hyperparameters are {', '.join(sorted(HYPER | extra))}",
                       "drop the others")
    out = {}
    for key, lo, hi, kind in (("n_epochs", 1, 50, int), ("batch_size", 1, 256, int),
                              ("learning_rate_multiplier", 1e-3, 100.0, float), ("beta", 1e-3, 10.0, float)):
        value = raw.get(key)
        if value is None or value == "auto":
            continue
        try:
            out[key] = number(raw, key, None, lo, hi, kind)
        except BadField as e:
            e.param = f"{where}.{key}"
            raise
    return out


def parse_create(body: dict) -> dict:
    """The job request, normalized: {model, training_file, validation_file, suffix, seed, metadata,
    method: "supervised"|"dpo", hyperparameters}. Raises BadField naming the field."""
    unknown = sorted(set(map(str, body)) - FIELDS)
    if unknown:
        raise BadField(unknown[0], body[unknown[0]], f"a fine-tuning job takes {', '.join(sorted(FIELDS))}",
                       "drop the other fields (see docs/openai-migration.md)")
    for key in ("model", "training_file"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise BadField(key, body.get(key), "is required: a string", f"send {key}")
    validation = body.get("validation_file")
    if validation is not None and not isinstance(validation, str):
        raise BadField("validation_file", validation, "must be a file id (string)", "send the id files.create gave")
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX.fullmatch(suffix)):
        raise BadField("suffix", suffix, "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter "
                       "or digit", "send e.g. suffix='support-v2'")
    seed = None if body.get("seed") is None else number(body, "seed", None, 0, 2**31 - 1, int)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()):
        raise BadField("metadata", metadata, "must be at most 16 string keys (64 characters) with string values "
                       "(512 characters)", "send a small mapping of strings")
    if body.get("integrations"):
        raise BadField("integrations", body["integrations"], "integrations (Weights & Biases) are not supported: "
                       "training metrics are in the job's events and in TensorBoard logs", "drop integrations")
    method = body.get("method") or {"type": "supervised"}
    if not isinstance(method, dict) or method.get("type") not in ("supervised", "dpo", "reinforcement"):
        raise BadField("method.type", method.get("type") if isinstance(method, dict) else method,
                       "must be supervised, dpo or reinforcement", "send method={'type': 'supervised'}")
    kind = method["type"]
    if kind == "reinforcement":
        raise BadField("method.type", kind, "reinforcement fine-tuning is not supported",
                       "use method type supervised")
    section = method.get(kind) or {}
    if not isinstance(section, dict):
        raise BadField(f"method.{kind}", section, "must be an object with hyperparameters", "fix the method")
    hyper = _hyper(body.get("hyperparameters"), "hyperparameters") | _hyper(
        section.get("hyperparameters"), f"method.{kind}.hyperparameters",
        frozenset({"beta"}) if kind == "dpo" else frozenset())
    return {"model": body["model"], "training_file": body["training_file"], "validation_file": validation,
            "suffix": suffix, "seed": seed, "metadata": metadata, "method": kind, "hyperparameters": hyper}


def preset_for(base: str) -> tuple[str, dict]:
    """(preset name, partial spec) for a base model: demo for the tiny base, a shipped preset naming this
    base, else the production defaults."""
    if base == TINY_BASE:
        demo = yaml.safe_load(resources.files("tuneloop").joinpath("assets/demo-preset.yaml").read_text())
        return "demo", {k: v for k, v in demo.items() if k not in ("data", "eval_data", "tenant")}
    from tuneloop.models.presets import PRESETS, resolve_preset, spec_overrides

    for name, entry in PRESETS.items():
        if entry["base_model"] == base:
            resolved = resolve_preset(name, "production")
            return name, {"training": spec_overrides(resolved)["training"], "hardware": resolved["hardware"]["name"]}
    return "production", {}


def build_spec(req: dict, base: str, tenant: str, job_id: str, training: Path, validation: Path | None,
               init_adapter: Path | None = None) -> tuple[RetrainSpec, dict]:
    """The retrain spec a job runs, and the hyperparameters it resolved to (shown on the job)."""
    preset, raw = preset_for(base)
    default = RetrainSpec(data=training)
    training_spec = default.training.model_dump(mode="json") | raw.get("training", {})
    hyper = req["hyperparameters"]
    lr = float(training_spec["learning_rate"]) * hyper.get("learning_rate_multiplier", 1.0)
    if "n_epochs" in hyper:
        training_spec["epochs"] = hyper["n_epochs"]
    if "batch_size" in hyper:
        training_spec |= {"batch_size": hyper["batch_size"], "gradient_accumulation": 1}
    if req["seed"] is not None:
        training_spec["seed"] = req["seed"]
    training_spec["learning_rate"] = lr
    if req["method"] == "dpo":  # the reference is the base with the adapter off (or the model this job continues)
        training_spec |= {"method": "dpo", "beta": hyper.get("beta", 0.1)}
    training_spec["keep_checkpoints"] = 3  # as OpenAI keeps the last three, each usable as a model
    if init_adapter is not None:
        training_spec["init_adapter"] = str(init_adapter)
    doc = raw | {"data": str(training), "base_model": base, "tenant": tenant, "job": job_id,
                 "training": training_spec}
    if validation is not None:
        doc["eval_data"] = str(validation)
    if req["seed"] is not None:
        doc["dataset"] = dict(doc.get("dataset") or {}) | {"seed": req["seed"]}
    spec = validate_spec(doc, RetrainSpec, source=f"job {job_id}")
    shown = {"n_epochs": spec.training.epochs,
             "batch_size": spec.training.batch_size * spec.training.gradient_accumulation,
             "learning_rate_multiplier": hyper.get("learning_rate_multiplier", 1.0),
             "learning_rate": spec.training.learning_rate, "preset": preset}
    if spec.training.method == "dpo":
        shown["beta"] = spec.training.beta
    return spec, shown
