"""Build a training dataset version from stored feedback, for one tenant and one window.

    positives                 → sft.jsonl (chat rows; also every negative that has a correction)
    negatives                 → negatives.jsonl, each with its reason
    negatives + correction    → preference.jsonl (prompt, chosen, rejected), ready for DPO
    A/B choices (`rejected`)  → preference.jsonl too: the picked response chosen, the other rejected (unless
                                the picked one is itself rated negative: then there is nothing to prefer)
    datasheet.json            → sources, license, window, redaction, counts, tenant, guard report
    lineage.json              → the feedback ids behind every file

PII is redacted before anything is written; floods and over-represented
users are dropped by the poisoning guard; exact and near duplicates are
removed. A version is the sha256 of its normalized rows, so building the
same feedback twice yields the same folder.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tuneloop.data.dataset import DATASHEET, LATEST
from tuneloop.errors import UserError
from tuneloop.feedback.dedup import dedupe
from tuneloop.feedback.poisoning import apply_poisoning_guard
from tuneloop.feedback.items import FeedbackItem, FeedbackPolicy
from tuneloop.feedback.pii import redact, redact_messages
from tuneloop.runtime.fsutil import atomic_write_text, publish_dir, staging_dir



@dataclass
class FeedbackDataset:
    version: str
    tenant: str
    path: Path
    datasheet: dict
    counts: dict = field(default_factory=dict)


def _redacted(item: FeedbackItem, counts: Counter) -> FeedbackItem:
    messages, c1 = redact_messages([dict(m) for m in item.messages])
    response, c2 = redact(item.response)
    correction, c3 = redact(item.correction) if item.correction else (None, Counter())
    rejected, c4 = redact(item.rejected) if item.rejected else (None, Counter())
    counts.update(c1 + c2 + c3 + c4)
    return FeedbackItem(**(item.to_json() | {"messages": tuple(messages), "response": response,
                                               "correction": correction, "rejected": rejected}))


def _line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"


def build_feedback_dataset(
    items: list[FeedbackItem],
    out_root: str | Path,
    *,
    tenant: str,
    window_days: float | None = 30,
    now: datetime | None = None,
    policy: FeedbackPolicy = FeedbackPolicy(),
    max_user_share: float = 0.10,
    near_duplicate_threshold: float = 0.85,
    license: str = "unspecified",
) -> FeedbackDataset:
    """Write (or find) the dataset version for `tenant` under out_root/<tenant>/<version>."""
    now = now or datetime.now(timezone.utc)
    start = now - timedelta(days=window_days) if window_days else None
    pool = [i for i in items if i.tenant == tenant
            and (start is None or datetime.fromisoformat(i.timestamp) >= start)
            and datetime.fromisoformat(i.timestamp) <= now]
    if not pool:
        raise UserError(f"tenant {tenant!r}", "has no feedback in the collection window",
                        "collect feedback first, widen window_days, or check the tenant name")
    redaction: Counter = Counter()
    pool = [_redacted(i, redaction) for i in pool]
    guard = apply_poisoning_guard(pool, max_user_share=max_user_share, flood_threshold=near_duplicate_threshold)

    sft, negatives, preference = [], [], []
    for it in sorted(guard.kept, key=lambda i: (i.timestamp, i.id)):
        label, reason = it.label(policy)
        prompt = [dict(m) for m in it.messages]
        if label == "positive":
            sft.append(({"messages": prompt + [{"role": "assistant", "content": it.response}], "tenant": tenant},
                        it.id))
        elif label == "negative":
            negatives.append(({"messages": prompt, "response": it.response, "reason": reason, "tenant": tenant},
                              it.id))
            if it.correction:
                preference.append(({"prompt": prompt, "chosen": it.correction, "rejected": it.response,
                                    "tenant": tenant}, it.id))
                sft.append(({"messages": prompt + [{"role": "assistant", "content": it.correction}],
                             "tenant": tenant}, it.id))
        if it.rejected and label != "negative":  # an A/B choice: the answer picked over the one beside it
            preference.append(({"prompt": prompt, "chosen": it.response, "rejected": it.rejected,
                                "tenant": tenant}, it.id))

    texts = [" ".join(m["content"] for m in row["messages"]) for row, _ in sft]
    kept, dropped = dedupe(texts, threshold=near_duplicate_threshold)
    sft = [sft[i] for i in kept]

    files = {"sft.jsonl": sft, "preference.jsonl": preference, "negatives.jsonl": negatives}
    h = hashlib.sha256()
    for name, rows in files.items():
        for line in sorted(_line(r) for r, _ in rows):
            h.update(f"{name}\t{line}".encode())
    version = h.hexdigest()
    counts = {"items_in_window": len(pool), "sft": len(sft), "preference": len(preference),
              "negatives": len(negatives), "near_duplicates_removed": len(dropped),
              "dropped_by_guard": len(guard.dropped)}
    times = sorted(i.timestamp for i in pool)
    datasheet = {
        "version": version, "tenant": tenant, "license": license,
        "sources": sorted({i.source for i in pool}),
        "collection_window": {"start": start.isoformat() if start else times[0], "end": now.isoformat(),
                              "first_item": times[0], "last_item": times[-1]},
        "redaction": {"applied": True, "counts": dict(sorted(redaction.items()))},
        "counts": counts, "guard": guard.report(), "policy": vars(policy),
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    tenant_dir = Path(out_root) / tenant
    final = tenant_dir / version[:16]
    if not final.exists():
        tmp = staging_dir(tenant_dir, version[:16])
        for name, rows in files.items():
            (tmp / name).write_text("".join(_line(r) for r, _ in rows), encoding="utf-8")
        lineage = {"dataset_version": version, "window": datasheet["collection_window"],
                   "feedback_ids": {name: [fid for _, fid in rows] for name, rows in files.items()},
                   "dropped": guard.dropped}
        atomic_write_text(tmp / "lineage.json", json.dumps(lineage, indent=2))
        atomic_write_text(tmp / DATASHEET, json.dumps(datasheet, indent=2))
        publish_dir(tmp, final)
    atomic_write_text(tenant_dir / LATEST, final.name + "\n")
    return FeedbackDataset(version, tenant, final, json.loads((final / DATASHEET).read_text()), counts)


def load_feedback_dataset(folder: str | Path) -> FeedbackDataset:
    """A dataset version written by build_feedback_dataset, read back from its folder."""
    folder = Path(folder)
    sheet = json.loads((folder / DATASHEET).read_text())
    return FeedbackDataset(sheet["version"], sheet["tenant"], folder, sheet, sheet["counts"])
