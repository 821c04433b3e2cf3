"""The typed fields of a version's manifest.json.

`Version.manifest` stays the document as stored (what `registry show` prints and what the checksums
were written with); `Version.info` is this typed view of it, for code that reads a field. The fields
are those `Registry.create_version` writes, plus the retrain flow's extras (tenant, training,
incumbent, dataset, feedback window, the service job); any other extra key is kept and given back by `to_json()`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Incumbent(BaseModel):
    """What the version was compared against when it was registered."""

    model_config = ConfigDict(extra="allow", frozen=True)

    label: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    base_model: str
    files: list[dict[str, Any]]  # {"path": "adapter/...", "sha256", "bytes"}; checked by registry.integrity
    dataset_version: str
    parent_version: str | None
    spec: dict[str, Any]
    metrics: dict[str, float | None]
    created_at: str
    idempotency_key: str | None = None
    tenant: str | None = None
    job: str | None = None  # the service's fine-tuning job that trained it (None: a retrain run outside the service)
    training: dict[str, Any] | None = None  # TrainResult.to_json() without its history
    incumbent: Incumbent | None = None
    dataset: dict[str, Any] | None = None  # the dataset's manifest: version, source, stats, splits
    feedback_window: dict[str, Any] | None = None  # {"start", "end"} of the feedback it was trained on

    # Hand-edited or older manifests may hold null where a mapping belongs: read those as empty (or absent),
    # as the string-keyed readers did, so one odd version never blocks the registry's scans.
    @field_validator("spec", "metrics", mode="before")
    @classmethod
    def _null_is_empty(cls, v):
        return {} if v is None else v

    @field_validator("incumbent", mode="before")
    @classmethod
    def _mapping_or_absent(cls, v):
        return v if isinstance(v, dict) else None

    @classmethod
    def from_json(cls, doc: dict) -> Manifest:
        return cls.model_validate(doc)

    def to_json(self) -> dict:
        """The document it was read from, key for key."""
        return self.model_dump(exclude_unset=True)
