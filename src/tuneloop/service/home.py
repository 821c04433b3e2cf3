"""Where the service keeps its state: one folder (`tuneloop up --home DIR`, default `.tuneloop`).

    keys.yaml                 API keys (sha256 only), tenants and roles: `tuneloop keys create`
    files/<tenant>/           uploaded training files (file-<hex>.jsonl + .json metadata)
    jobs/<tenant>/            fine-tuning job records (ftjob-<hex>.json)
    completions/<tenant>/     what each chat completion answered (PII-redacted), so feedback needs only its id
    registries/<tenant>/      each tenant's model registry: its versions, its own champion
    runs/<job>/run-*/         a job's training run: progress, checkpoints, adapter
    models/                   base models (the tiny local base is built here), unless $TUNELOOP_MODELS_DIR
    feedback/                 the feedback store, as the collect-feedback flow keeps it
    prefect/                  PREFECT_HOME: the local Prefect server's SQLite database
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneloop.runtime.safety import safe_name


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def at(cls, path: str | Path) -> "Home":
        return cls(Path(path).expanduser().resolve())

    @property
    def keys_file(self) -> Path:
        return self.root / "keys.yaml"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def completions(self) -> Path:
        return self.root / "completions"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def incoming(self) -> Path:
        """The drop file: feedback rows (JSONL, each naming its `tenant`) that other tools append to, read by
        the collect-feedback schedule that TUNELOOP_COLLECT_EVERY turns on."""
        return self.root / "incoming" / "feedback.jsonl"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def prefect(self) -> Path:
        return self.root / "prefect"

    def registry(self, tenant: str) -> Path:
        return Path(self.tenant_registry.replace("{tenant}", safe_name(tenant, "tenant name")))

    @property
    def tenant_registry(self) -> str:
        """Every tenant's registry, as TUNELOOP_TENANT_REGISTRY: the flow runs find a tenant's by its name."""
        return str(self.root / "registries" / "{tenant}")

    def env(self) -> dict[str, str]:
        """The environment every process of the service runs with (the worker and its flow runs too):
        tuneloop's state and Prefect's under this home. Base models go to $TUNELOOP_MODELS_DIR when it is set
        (one cache of big downloads for every home), else under the home."""
        return {"TUNELOOP_STATE_DIR": str(self.root), "TUNELOOP_RUNS_DIR": str(self.runs),
                "TUNELOOP_TENANT_REGISTRY": self.tenant_registry,
                "PREFECT_HOME": str(self.prefect)}
