"""Feedback over HTTP: a rating, score or thumb on a completion the service answered, by its id.

Each chat completion is kept (PII-redacted, per tenant) so that feedback needs only the completion's id.
Feedback lands in the same store the collect-feedback flow fills, once: its id is the idempotency key when
one is given, else the completion id, so a client that retries (or a user who clicks twice) adds it once.
A negative new item is handed to `emit`, which sends the same `tuneloop.feedback.negative` event as the
other sources; a correction makes an SFT row and a preference pair when the tenant's dataset is built.
An A/B choice names the completion the user did not pick (`preferred_over`, two answers to the same
conversation): it makes a preference pair, and needs no rating.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tuneloop.feedback.items import FeedbackItem
from tuneloop.feedback.pii import redact, redact_messages
from tuneloop.feedback.store import FeedbackStore
from tuneloop.runtime.fsutil import atomic_write_text
from tuneloop.service.errors import NotFound
from tuneloop.serving.bodies import BadField, number

COMPLETION_ID = re.compile(r"(chatcmpl|cmpl)-[0-9a-f]{24}")
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
FIELDS = {"completion_id", "rating", "score", "thumbs", "correction", "comment", "user", "idempotency_key",
          "preferred_over"}
SOURCE = "api"


class Completions:
    """What each completion was asked and answered, redacted, one small file per completion."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def keep(self, tenant: str, completion_id: str, model: str, messages: list[dict], answer: str) -> None:
        msgs, _ = redact_messages(messages)
        text, _ = redact(answer)
        atomic_write_text(self.root / tenant / f"{completion_id}.json", json.dumps(
            {"id": completion_id, "model": model, "messages": list(msgs), "answer": text,
             "created": datetime.now(timezone.utc).isoformat()}))

    def get(self, tenant: str, completion_id: object) -> dict:
        if not isinstance(completion_id, str) or not COMPLETION_ID.fullmatch(completion_id):
            raise NotFound(completion_id, "completion", "the chat completion that answered", "completion_id")
        try:
            return json.loads((self.root / tenant / f"{completion_id}.json").read_text())
        except FileNotFoundError:
            raise NotFound(completion_id, "completion", "the chat completion that answered", "completion_id") from None


def _text(body: dict, key: str, limit: int) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise BadField(key, v, f"must be a string of at most {limit} characters", f"send {key} as text")
    return v


def parse(body: dict) -> dict:
    unknown = sorted(set(map(str, body)) - FIELDS)
    if unknown:
        raise BadField(unknown[0], body[unknown[0]], f"feedback takes {', '.join(sorted(FIELDS))}", "drop the others")
    given = [k for k in ("rating", "score", "thumbs") if body.get(k) is not None]
    if len(given) > 1 or (not given and body.get("preferred_over") is None):
        raise BadField("rating" if not given else given[1], given or None, "exactly one of rating (1-5), score (0-1) "
                       "or thumbs (up/down) is required (or preferred_over alone, for an A/B choice)",
                       "send one of them")
    out = {"rating": None, "score": None}
    kind = given[0] if given else None  # None: an A/B choice alone
    if kind == "rating":
        out["rating"] = number(body, "rating", None, 1, 5)
    elif kind == "score":
        out["score"] = number(body, "score", None, 0.0, 1.0)
    elif kind == "thumbs":
        if body["thumbs"] not in ("up", "down"):
            raise BadField("thumbs", body["thumbs"], "must be 'up' or 'down'", "send thumbs='up' or 'down'")
        out["score"] = 1.0 if body["thumbs"] == "up" else 0.0
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not IDEMPOTENCY_KEY.fullmatch(key)):
        raise BadField("idempotency_key", key, "must be 1-128 letters, digits, '_', '.', ':' or '-'",
                       "send e.g. a UUID")
    return out | {"correction": _text(body, "correction", 20000), "comment": _text(body, "comment", 5000),
                  "user": _text(body, "user", 256), "idempotency_key": key, "completion_id": body.get("completion_id"),
                  "preferred_over": body.get("preferred_over")}


def record_feedback(store: FeedbackStore, completions: Completions, tenant: str, body: dict,
                    emit: Callable[[FeedbackItem, str], None] | None = None) -> dict:
    """Store the feedback (once) and emit the negative event for a new negative item."""
    fb = parse(body)
    done = completions.get(tenant, fb["completion_id"])
    other = None
    if fb["preferred_over"] is not None:
        other = completions.get(tenant, fb["preferred_over"])
        if other["id"] == done["id"] or other["messages"] != done["messages"]:
            raise BadField("preferred_over", fb["preferred_over"], "must be another completion of the same "
                           f"conversation as {done['id']} (an A/B choice compares two answers to one prompt)",
                           "send the id of the answer shown beside it")
        if other["answer"] == done["answer"]:
            other = None  # the same text twice: nothing to prefer
    ident = f"{SOURCE}:{tenant}:{fb['idempotency_key'] or done['id']}"
    item = FeedbackItem(id=ident, source=f"{SOURCE}:{done['model']}", messages=tuple(done["messages"]),
                        response=done["answer"], timestamp=datetime.now(timezone.utc).isoformat(),
                        score=fb["score"], rating=fb["rating"],
                        correction=redact(fb["correction"])[0] if fb["correction"] else None,
                        rejected=other["answer"] if other else None,
                        comment=redact(fb["comment"])[0] if fb["comment"] else None, user=fb["user"], tenant=tenant,
                        metadata={"completion_id": done["id"], "model": done["model"]}
                        | ({"preferred_over": other["id"]} if other else {}))
    new = store.add([item])
    label, reason = item.label()
    if new and label == "negative" and emit is not None:
        emit(new[0], reason)
    return {"id": ident, "object": "feedback", "completion_id": done["id"], "model": done["model"],
            "label": label, "reason": reason, "duplicate": not new,
            "yields": ({"sft_row": True, "preference_pair": True} if label == "negative" and item.correction
                       else {"sft_row": label == "positive",
                             "preference_pair": item.rejected is not None and label != "negative"})}
