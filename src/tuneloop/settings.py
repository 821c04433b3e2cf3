"""Process-wide settings from the environment (`TUNELOOP_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where tuneloop keeps its state; everything defaults under one folder."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", extra="ignore")

    state_dir: Path = Path(".tuneloop")
    # The registry: a folder or s3://bucket/prefix (TUNELOOP_REGISTRY); it wins over the older
    # folder-only TUNELOOP_REGISTRY_DIR, which still works. S3 endpoint: the standard AWS_ENDPOINT_URL.
    registry: str | None = None
    registry_dir: Path | None = None
    # Each tenant's registry (its own versions and aliases: champion, production): a folder or s3 URL with
    # `{tenant}` in it (TUNELOOP_TENANT_REGISTRY), for every tenant. Unset: the tenant `default` uses the
    # registry above and any other tenant `<registry>/tenants/<tenant>`.
    tenant_registry: str | None = None
    # The state other machines need (datasets, feedback, checkpoints, smoke sets, reports), shared through an
    # s3://bucket/prefix URL or a folder every machine mounts (TUNELOOP_STATE_STORE); see runtime/shared.py.
    state_store: str | None = None
    # Each tenant's fixed held-out set, a JSONL path with `{tenant}` in it (TUNELOOP_TENANT_EVAL; default
    # <state folder>/eval/{tenant}.jsonl): when it exists, a retrain of that tenant without `eval_data`
    # gates on it, so feedback can never move the yardstick it is measured with.
    tenant_eval: str | None = None
    models_dir: Path | None = None
    runs_dir: Path | None = None
    datasets_dir: Path | None = None
    # Hugging Face `trust_remote_code`: off unless turned on (TUNELOOP_TRUST_REMOTE_CODE=1), since it runs
    # Python shipped with a model repository on this machine.
    trust_remote_code: bool = False

    def model_post_init(self, __context) -> None:
        self.state_dir = self.state_dir.expanduser().resolve()
        for name in ("registry", "models", "runs", "datasets"):
            attr = f"{name}_dir"
            value = getattr(self, attr)
            setattr(self, attr, (value.expanduser().resolve() if value else self.state_dir / name))


def get_settings() -> Settings:
    """Read settings now (not at import), so tests and the CLI can set env first."""
    return Settings()
