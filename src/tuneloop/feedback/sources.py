"""Turn a `SourceSpec` into a source object; secrets come from the environment variables it names."""

from __future__ import annotations

import os

from tuneloop.errors import UserError
from tuneloop.feedback.files import FileSource
from tuneloop.feedback.items import FeedbackSource
from tuneloop.specs import SourceSpec


# Hosted services make feedback readable some seconds after it is written: re-read
# two minutes behind the watermark (ids already seen are dropped).
LOOKBACK_S = 120.0


def _secret(env: str, kind: str) -> str:
    value = os.environ.get(env)
    if not value:
        raise UserError(f"${env}", f"is not set, and the {kind} source needs it",
                        f"export {env}=... in the worker's environment (never in prefect.yaml)")
    return value


def make_source(spec: SourceSpec) -> FeedbackSource:
    if spec.kind == "file":
        return FileSource(spec.path, tenant=spec.tenant, name=spec.name, missing_ok=spec.missing_ok)
    if spec.kind == "langsmith":
        from tuneloop.feedback.langsmith import LangSmithSource

        return LangSmithSource(spec.project, api_url=spec.api_url, api_key=_secret(spec.api_key_env, "langsmith"),
                               feedback_key=spec.feedback_key, tenant=spec.tenant, name=spec.name,
                               lookback_s=LOOKBACK_S)
    from tuneloop.feedback.langfuse import LangfuseSource

    return LangfuseSource(spec.api_url, _secret(spec.public_key_env, "langfuse"),
                          _secret(spec.secret_key_env, "langfuse"), score_name=spec.score_name,
                          tenant=spec.tenant, name=spec.name, lookback_s=LOOKBACK_S)
