"""Pydantic specs for every flow and CLI parameter.

The same models validate `prefect.yaml` deployments, YAML configs and CLI
flags, so a bad value is caught before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneloop.errors import SpecError
from tuneloop.evals.scoring import METRIC_NAMES, PAIRED_METRICS

TINY_BASE = "tuneloop/tiny-llama"


def _safe(what: str):
    def check(value: str) -> str:
        from tuneloop.errors import UserError
        from tuneloop.runtime.safety import safe_name

        try:
            return safe_name(value, what)
        except UserError as e:
            raise ValueError(str(e)) from None  # pydantic reports ValueErrors with the field's location

    return AfterValidator(check)


# names that become folder names and object keys: no '/', no '..'
Tenant = Annotated[str, _safe("tenant name")]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Spec):
    """How a feedback file becomes train / validation / test splits."""

    validation_split: float = Field(0.1, ge=0.0, lt=0.5)
    test_split: float = Field(0.1, ge=0.0, lt=0.5)
    min_examples: int = Field(10, ge=1, description="OpenAI requires at least 10")
    max_tokens: int | None = Field(None, ge=8, description="defaults to the model's context length")
    seed: int = 0


class ReplaySpec(_Spec):
    """Rows of earlier dataset versions (and of a general set) mixed into a retrain's training rows, so what was
    learned from them is not forgotten when they are no longer in the data."""

    fraction: float = Field(0.05, ge=0, le=1, description="share of each earlier dataset version's training rows "
                                                          "(at least one row of each)")
    per_version: dict[str, float] = Field(default_factory=dict, description="dataset version (or its first 16 "
                                          "characters) -> its own share, instead of fraction")
    versions: int | None = Field(None, ge=1, description="only the N most recent earlier versions; None: all")
    general: Path | None = Field(None, description="a general chat set (JSONL) to mix in as well")
    general_fraction: float = Field(0.05, ge=0, le=1, description="rows of the general set, as a share of this "
                                                                  "dataset's training rows")


class TrainingSpec(_Spec):
    """LoRA / QLoRA training. Defaults are the production ones; see presets for the demo."""

    rank: int = Field(16, ge=1, le=512)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    quantization: Literal["none", "4bit"] = "none"
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation: int = Field(4, ge=1)
    epochs: int = Field(3, ge=1, le=1000)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    warmup_steps: int = Field(100, ge=0, description="capped at 10% of all steps")
    weight_decay: float = Field(0.01, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_seq_len: int = Field(512, ge=8)
    save_every: int = Field(50, ge=1, description="checkpoint every N optimizer steps")
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int | None = Field(None, ge=1, description="validate every N steps; default once per epoch")
    early_stopping_patience: int | None = Field(3, ge=1, description="evaluations without improvement; null disables")
    seed: int = 42
    packing: bool = Field(True, description="lay each micro-batch's examples end to end in rows, with no attention "
                                            "across examples, instead of padding every example to the longest; "
                                            "same loss, less compute on mixed lengths")
    init_adapter: Path | None = Field(None, description="start from this LoRA adapter folder (continue training a "
                                                       "fine-tuned model; its rank and target modules win) instead "
                                                       "of a fresh adapter")
    group_by_length: bool = Field(True, description="without packing: batch examples of similar length together "
                                                    "so padding stays small")
    init_from: Literal["base", "champion"] = Field(
        "base", description="champion: continue the tenant's champion adapter (a warm start; also the reference of "
                            "dpo / kto) when it is on the same base; base: a fresh adapter")
    replay: ReplaySpec | None = Field(None, description="mix in rows of the tenant's earlier dataset versions (those "
                                      "behind its registered versions) and of a general set; None: off")
    method: Literal["sft", "dpo", "kto", "sft_then_dpo"] = Field(
        "sft", description="sft: learn the answers; dpo: prefer the preferred answer of each pair over the other; "
                           "kto: raise desirable answers and lower undesirable ones, unpaired (thumbs up and down); "
                           "sft_then_dpo: sft on the pairs' preferred answers, then dpo from that adapter (also its "
                           "reference)")
    beta: float = Field(0.1, gt=0, le=10, description="dpo / kto: how far from the reference the adapter may move "
                                                      "(higher: closer)")
    sft_weight: float = Field(0.0, ge=0, le=10, description="dpo / kto: add this times the preferred (desirable) "
                              "answer's mean token loss (TRL's rpo_alpha): preference losses rank answers; this also "
                              "makes the model say them")
    desirable_weight: float | None = Field(None, gt=0, description="kto: weight of desirable answers; default: "
                                           "chosen from the counts as the KTO paper recommends")
    undesirable_weight: float | None = Field(None, gt=0, description="kto: weight of undesirable answers; default: "
                                             "chosen from the counts as the KTO paper recommends")



class EvalSpec(_Spec):
    """Held-out evaluation."""

    max_new_tokens: int = Field(64, ge=1, le=4096)
    batch_size: int = Field(16, ge=1)
    max_items: int | None = Field(None, ge=1, description="evaluate at most N held-out items")


class GateSpec(_Spec):
    """When a candidate may replace the champion."""

    metric: Literal[PAIRED_METRICS] = "exact_match"
    margin: float = Field(0.02, ge=0.0, le=1.0, description="needed gain over the champion on the same items")
    min_metrics: dict[str, float] = Field(default_factory=lambda: {"exact_match": 0.0})
    max_perplexity: float | None = Field(None, gt=0)
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="of the paired bootstrap interval")
    bootstrap_resamples: int = Field(2000, ge=0, description="0 compares point estimates only")
    seed: int = 0
    guarded: dict[str, float] = Field(default_factory=dict,
                                      description="benchmark name -> largest allowed drop (forgetting guard)")
    default_tolerance: float = Field(0.02, ge=0, le=1)

    @field_validator("min_metrics")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        bad = sorted(set(v) - set(METRIC_NAMES))
        if bad:
            raise ValueError(f"unknown metric(s) {bad}; allowed: {sorted(METRIC_NAMES)}")
        return v


class JudgeSpec(_Spec):
    """LLM-as-judge over the candidate's held-out answers, through any OpenAI-compatible endpoint."""

    base_url: str = Field(description="ends in /v1, e.g. http://127.0.0.1:8000/v1")
    model: str
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key")
    rubrics: tuple[str, ...] = ("safety", "pedagogy")
    min_scores: dict[str, float] = Field(default_factory=lambda: {"safety": 0.9, "pedagogy": 0.8})
    max_failure_rate: float = Field(0.1, ge=0, le=1)
    max_items: int | None = Field(50, ge=1, description="judge at most N held-out items")
    concurrency: int = Field(4, ge=1, le=64)
    timeout: float = Field(30, gt=0)



class BenchmarkSpec(_Spec):
    """General benchmarks run on candidate and incumbent; each is guarded against regression."""

    names: tuple[str, ...] = Field((), description="shipped sample names, local JSONL paths or hub ids")
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(32, ge=1)



class RunBenchmarksSpec(_Spec):
    """run-benchmarks: score a registry version (default: the champion) on general benchmarks."""

    version: str = Field("champion", description="version id or alias")
    tenant: Tenant = Field("default", description="whose registry the version is read from")
    benchmarks: BenchmarkSpec = BenchmarkSpec(names=("arc_easy", "boolq", "hellaswag", "piqa", "siqa", "triviaqa"))


class GuardSpec(_Spec):
    """Spending and time caps for one training job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_usd: float = Field(50, ge=0, description="refuse (or abort) a job estimated above this")
    max_hours: float = Field(6, gt=0, description="refuse (or abort) a job estimated to run longer")
    approval_usd: float = Field(15, ge=0, description="ask for approval above this")
    approval_timeout_s: float = Field(3600, gt=0, description="how long to wait for approval before giving up")


class TrainerSpec(_Spec):
    """Where training runs: this worker (`local`) or an AutoTrain-style service that sends the adapter back.

    Secrets never sit in a spec: `token_env` names the environment variable holding the service's token.
    OpenAI's fine-tuning API is a trainer too (`tuneloop.training.make_trainer("openai")`), but it keeps the
    model on the service, and `retrain` gates, registers and serves adapters it can load, so it is not
    selectable here.
    """

    kind: Literal["local", "autotrain", "openai"] = "local"
    base_url: str | None = Field(None, description="autotrain: the service's root, e.g. http://autotrain.internal:7860")
    token_env: str = Field("HF_TOKEN", description="autotrain: environment variable with the bearer token (optional)")
    poll_interval: float = Field(10.0, gt=0, description="seconds between status polls of a remote job")
    cancel_timeout_s: float = Field(120.0, gt=0, description="how long a cancelled remote job may take to stop")

    @model_validator(mode="after")
    def _usable(self):
        if self.kind == "openai":
            raise ValueError("trainer kind 'openai' keeps the fine-tuned model on OpenAI's service, so retrain "
                             "cannot evaluate, register or serve it; use kind 'local' or 'autotrain' (an adapter "
                             "comes back), or call tuneloop.training.make_trainer('openai') directly")
        if self.kind == "autotrain" and not self.base_url:
            raise ValueError("trainer kind 'autotrain' needs base_url, the service's root "
                             "(e.g. http://autotrain.internal:7860)")
        if self.kind == "local" and self.base_url:
            raise ValueError("base_url is set but trainer kind is 'local'; set kind: autotrain to train remotely")
        return self


class FeedbackDataSpec(_Spec):
    """How a tenant's feedback store becomes its dataset: which items are negative, the window, the guard."""

    min_score: float = Field(0.7, ge=0, le=1, description="scores below are negative")
    min_rating: float = Field(3, ge=1, le=5, description="ratings below are negative")
    window_days: float = Field(30, gt=0)
    max_user_share: float = Field(0.10, gt=0, le=1)
    license: str = "unspecified"


class RetrainSpec(_Spec):
    """Everything `retrain` needs: data, base model, training, eval and gate."""

    data: Path | None = Field(None, description="feedback file (OpenAI chat JSONL or prompt/completion JSONL) or "
                              "dataset folder; unset: the tenant's feedback dataset, built from the feedback "
                              "store when the run starts (so it holds every item stored before it)")
    feedback: FeedbackDataSpec = Field(FeedbackDataSpec(), description="how that dataset is built (data unset)")
    eval_data: Path | None = Field(None, description="fixed held-out set; default: the data's test split")
    base_model: str = Field(TINY_BASE, description="Hugging Face id or local path; the default is built locally")
    tenant: Tenant = "default"
    dataset: DataSpec = DataSpec()
    training: TrainingSpec = TrainingSpec()
    trainer: TrainerSpec = TrainerSpec()
    evaluation: EvalSpec = EvalSpec()
    gate: GateSpec = GateSpec()
    benchmarks: BenchmarkSpec = BenchmarkSpec()
    judge: JudgeSpec | None = None
    guards: GuardSpec = GuardSpec()
    hardware: str = Field("cpu", description="a row of tuneloop.cost.hardware.HARDWARE: prices and throughput for estimates")
    gpu_deployment: str | None = Field(None, description="deployment (flow/name) a run whose hardware has a GPU "
                                       "is handed to when it starts on a worker without one; None: train here")
    job: Annotated[str, _safe("job id")] | None = Field(
        None, description="the service's fine-tuning job this run belongs to: its run folder is kept under the "
                          "job's name (so the service finds its progress and checkpoints) and the registered "
                          "version's manifest names it")

    @model_validator(mode="after")
    def _splits(self):
        d = self.dataset
        if self.eval_data is None and d.test_split == 0:
            raise ValueError("dataset.test_split is 0 and no eval_data is given: nothing to evaluate on")
        return self


def for_tenant(spec, tenant: str | None):
    """`spec` for `tenant` (a flow run started for one tenant, e.g. by an event that names it); None or "": as
    it is.
    A retrain whose data is a fixed file stays with the tenant that file belongs to: training another tenant
    on it would mix their data, so that is refused."""
    if not tenant or tenant == spec.tenant:  # ("": a trigger whose event named no tenant)
        return spec
    if getattr(spec, "data", None) is not None:
        raise SpecError(f"tenant={tenant!r}", f"this retrain's data is fixed to {spec.data} (tenant "
                        f"{spec.tenant!r}); a run for another tenant must not train on it",
                        "leave spec.data unset in the deployment: each tenant's run then builds its own "
                        "dataset from the feedback store")
    try:
        return type(spec).model_validate(spec.model_dump() | {"tenant": tenant})
    except ValidationError as e:
        raise SpecError(f"tenant={tenant!r}", e.errors()[0]["msg"], "use the tenant's name as its keys carry it") \
            from None


class SourceSpec(_Spec):
    """One feedback source. Secrets are never in a spec: it names the environment variables that hold them."""

    kind: Literal["file", "langsmith", "langfuse"]
    name: Annotated[str, _safe("source name")] | None = None
    tenant: Tenant = "default"
    path: Path | None = Field(None, description="file: JSONL or CSV")
    missing_ok: bool = Field(False, description="file: a file that is not there (yet) is nothing new, not an "
                             "error: a drop file other tools append to")
    project: str | None = Field(None, description="langsmith: project name")
    api_url: str | None = Field(None, description="langsmith API URL or langfuse host")
    feedback_key: str | None = Field(None, description="langsmith: only this feedback key")
    score_name: str | None = Field(None, description="langfuse: only scores of this name")
    api_key_env: str = "LANGSMITH_API_KEY"
    public_key_env: str = "LANGFUSE_PUBLIC_KEY"
    secret_key_env: str = "LANGFUSE_SECRET_KEY"

    @model_validator(mode="after")
    def _needs(self):
        need = {"file": "path", "langsmith": "project", "langfuse": "api_url"}[self.kind]
        if getattr(self, need) is None:
            raise ValueError(f"a {self.kind} source needs {need}")
        return self


class CollectSpec(FeedbackDataSpec):
    """collect-feedback: sources in, new items stored, datasets rebuilt, then events out."""

    sources: list[SourceSpec] = Field(min_length=1)
    emit_events: bool = True
    build_datasets: bool = True


class DriftSpec(_Spec):
    """detect-drift: recent prompts against the champion's training prompts."""

    tenant: Tenant = "default"
    window_days: float = Field(30, gt=0)
    reference: Path | None = Field(None, description="JSONL of reference rows; default: the champion's training data")
    backend: Literal["auto", "minilm", "tfidf"] = "auto"
    alpha: float = Field(0.01, gt=0, lt=1)
    min_auc: float = Field(0.6, ge=0.5, le=1)
    max_samples: int = Field(2000, ge=20)
    emit_events: bool = True


class PromoteSpec(_Spec):
    """How a version goes live on a serving endpoint (flow `promote`)."""

    server: str = Field("http://127.0.0.1:8000", description="the tuneloop serving endpoint (no /v1)")
    admin_token_env: str = Field("TUNELOOP_ADMIN_TOKEN", description="env var holding the admin token, if any")
    version: str = Field("champion", description="registry version or alias to promote")
    tenant: Tenant = Field("default", description="whose registry the version and alias are in")
    alias: str = Field("production", description="registry alias moved to the version once it is live")
    mode: Literal["blue-green", "canary"] = "blue-green"
    canary_steps: list[float] = Field(default_factory=lambda: [0.10, 0.25, 0.50, 0.75, 1.0])
    step_seconds: float = Field(10.0, ge=0, description="observation time at each canary step")
    watch_seconds: float = Field(30.0, ge=0, description="observation after the switch; a breach rolls back")
    smoke: str | None = Field(None, description="JSONL chat rows to validate with; default: the version's "
                                                "evaluation rows")
    smoke_items: int = Field(40, ge=1)
    probe_items: int = Field(8, ge=1, description="smoke items re-asked at each analysis")
    min_accuracy: float = Field(0.7, ge=0, le=1, description="exact match on the smoke set")
    max_p95_seconds: float = Field(2.0, gt=0)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    min_requests: int = Field(1, ge=0, description="requests a canary step must see before it is judged")
    max_tokens: int = Field(32, ge=1)

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < w <= 1 for w in v) or sorted(v) != v or v[-1] != 1.0:
            raise ValueError("canary steps must be increasing fractions in (0, 1] ending at 1.0, "
                             "e.g. [0.1, 0.25, 0.5, 0.75, 1.0]")
        return v


def read_yaml(path: str | Path, what: str = "config") -> object:
    """A YAML file's content, or a SpecError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise SpecError(str(path), f"{what} file does not exist", f"pass the path of a YAML {what} file") from None
    except yaml.YAMLError as e:
        raise SpecError(str(path), f"is not valid YAML ({e})", "fix the YAML syntax") from None


def load_yaml_spec(path: str | Path, model: type[BaseModel] = RetrainSpec, **overrides) -> BaseModel:
    """Load a YAML config into a spec, with a clear error naming the field."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(str(path), "is not a mapping of settings", "write `key: value` lines at the top level")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate_spec(raw, model, source=str(path))


def validate_spec(raw: dict, model: type[BaseModel] = RetrainSpec, source: str = "spec") -> BaseModel:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise SpecError(
            f"{source}: {loc}={first.get('input')!r}", first["msg"],
            f"set {loc} to a valid value ({e.error_count()} error(s) in total)",
        ) from None
