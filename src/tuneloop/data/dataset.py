"""Validated rows become a versioned dataset: deduplicated, split by content hash, leak-checked."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tuneloop.data.validate import Issue, Row, ValidationReport, check_count, validate_file
from tuneloop.errors import DataValidationError, UserError
from tuneloop.runtime.fsutil import atomic_write_text, publish_dir, staging_dir
from tuneloop.specs import DataSpec

SPLITS = ("train", "validation", "test")
DATASHEET = "datasheet.json"
LATEST = "LATEST"


def resolve_dataset_dir(path: str | Path) -> Path:
    """A tenant folder resolves to its latest version; a version folder to itself."""
    path = Path(path)
    if (path / LATEST).exists():
        return path / (path / LATEST).read_text().strip()
    return path


@dataclass
class PreparedDataset:
    version: str
    source: str
    train: list[Row]
    validation: list[Row]
    test: list[Row]
    eval_rows: list[Row]  # what candidates and champions are compared on
    stats: dict = field(default_factory=dict)
    path: Path | None = None
    datasheet: dict = field(default_factory=dict)

    def manifest(self) -> dict:
        return {"version": self.version, "source": self.source, "stats": self.stats,
                "splits": {s: len(getattr(self, s)) for s in SPLITS},
                "eval_items": len(self.eval_rows)}

    def save(self, root: Path) -> Path:
        """Write once under root/<version>; an existing version is left as is (idempotent)."""
        final = Path(root) / self.version[:16]
        if not final.exists():
            tmp = staging_dir(root, self.version[:16])
            for split in (*SPLITS, "eval"):
                rows = self.eval_rows if split == "eval" else getattr(self, split)
                (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows))
            atomic_write_text(tmp / "manifest.json", json.dumps(
                self.manifest() | {"created_at": datetime.now(timezone.utc).isoformat()}, indent=2))
            atomic_write_text(tmp / "datasheet.json", json.dumps(self.datasheet, indent=2))
            publish_dir(tmp, final)
        self.path = final
        return final


def _bucket(prompt_key: str) -> float:
    return int(prompt_key[:12], 16) / float(16**12)


def dataset_version(rows: list[Row] | dict[str, list[Row]]) -> str:
    """sha256 of the normalized rows, order-independent.

    Given a mapping split name -> rows, each row is hashed with its split name, so the same
    rows split differently (other fractions, other eval rows) get a different version.
    """
    tagged = rows.items() if isinstance(rows, dict) else [("", rows)]
    h = hashlib.sha256()
    for c in sorted(f"{name}\t{r.canonical}" if name else r.canonical for name, rs in tagged for r in rs):
        h.update(c.encode())
        h.update(b"\n")
    return h.hexdigest()


def read_rows_strict(path: str | Path, spec: DataSpec, count_tokens=None, max_tokens=None,
                     report_dir: Path | None = None, min_examples: int | None = None,
                     tenant: str = "default") -> ValidationReport:
    """Validate a file and raise `DataValidationError` listing every problem, before anything is written."""
    report = validate_file(path, min_examples=spec.min_examples if min_examples is None else min_examples,
                           max_tokens=max_tokens, count_tokens=count_tokens, tenant=tenant)
    _raise_if_bad(report, str(path), Path(path).stem, report_dir)
    return report


def _raise_if_bad(report: ValidationReport, where: str, stem: str, report_dir: Path | None) -> None:
    """`DataValidationError` with every problem of `report` (written to report_dir as validation-<stem>.json)."""
    if not report.ok:
        report_path = None
        if report_dir is not None:
            report_path = report.write(Path(report_dir) / f"validation-{stem}.json")
        raise DataValidationError(where, report.errors, report_path)


METHODS = ("sft", "dpo", "kto", "sft_then_dpo")
PAIRED = ("dpo", "sft_then_dpo")  # the methods that train on preference pairs
# what each method trains on, in a feedback dataset folder (tuneloop.feedback.build writes these files)
FOLDER_FILES = {"sft": ("sft.jsonl",), "dpo": ("preference.jsonl",), "kto": ("sft.jsonl", "negatives.jsonl"),
                "sft_then_dpo": ("preference.jsonl",)}


def resolve_input(data: str | Path, method: str = "sft") -> tuple[list[Path], dict | None]:
    """The files to read: a JSONL file as is; from a dataset folder (built from feedback, so it must carry its
    datasheet) the files `method` trains on."""
    if method not in METHODS:
        raise UserError(f"training.method {method!r}", "is not a training method", f"use one of {', '.join(METHODS)}")
    path = Path(data)
    if not path.is_dir():
        return [path], None
    folder = resolve_dataset_dir(path)
    sheet = folder / DATASHEET
    if not sheet.exists():
        raise UserError(str(folder), "has no datasheet.json, and training needs one (sources, license, window, "
                        "redaction, tenant)", "build the folder with the collect-feedback flow or "
                        "`tuneloop feedback build`, or pass a JSONL file")
    return [folder / name for name in FOLDER_FILES[method]], json.loads(sheet.read_text())


def _read_one(path: Path, count_tokens, max_tokens, tenant: str) -> ValidationReport:
    """Every row of one file as Rows: chat rows, preference pairs (an OpenAI DPO file, a feedback dataset's
    preference.jsonl) or a feedback dataset's undesirable answers (negatives.jsonl)."""
    from tuneloop.data.preference import (read_feedback_negatives, read_feedback_pairs, sniff_format,
                                          validate_preference_file)

    if path.name == "preference.jsonl" and (path.parent / DATASHEET).exists():
        report = read_feedback_pairs(path, tenant)
    elif path.name == "negatives.jsonl" and (path.parent / DATASHEET).exists():
        report = read_feedback_negatives(path, tenant)
    elif sniff_format(path) == "dpo":
        report = validate_preference_file(path, min_examples=0, tenant=tenant)
        report.rows = [r.to_row() for r in report.rows]
    else:
        return validate_file(path, min_examples=0, max_tokens=max_tokens, count_tokens=count_tokens, tenant=tenant)
    if count_tokens is not None and max_tokens is not None:
        kept = []
        for r in report.rows:
            r.n_tokens = count_tokens(r.messages)
            if r.rejected is not None:
                r.n_tokens = max(r.n_tokens, count_tokens(r.prompt_messages + [{"role": "assistant",
                                                                                "content": r.rejected}]))
            if r.n_tokens > max_tokens:
                report.issues.append(Issue(r.line, "too_long", f"{r.n_tokens} tokens, over the limit of {max_tokens}"))
            else:
                kept.append(r)
        report.rows = kept
    return report


def read_training_rows(data: str | Path, spec: DataSpec, method: str = "sft", count_tokens=None, max_tokens=None,
                       report_dir: Path | None = None, tenant: str = "default") -> tuple[ValidationReport, dict | None]:
    """Validate what `method` trains on and raise `DataValidationError` listing every problem, before anything is
    written; also the dataset folder's datasheet (None for a file). Raises UserError when the data holds nothing
    `method` can learn from (DPO without pairs, KTO without an undesirable answer)."""
    paths, sheet = resolve_input(data, method)
    return _read_paths(paths, sheet, spec, method, count_tokens, max_tokens, report_dir, tenant), sheet


def _read_paths(paths: list[Path], sheet: dict | None, spec: DataSpec, method: str, count_tokens, max_tokens,
                report_dir: Path | None, tenant: str) -> ValidationReport:
    """read_training_rows on the files resolve_input gave."""
    report = ValidationReport(str(paths[0]))
    for path in paths:
        part = _read_one(path, count_tokens, max_tokens, tenant)
        for issue in part.issues:
            report.issues.append(issue if len(paths) == 1 else Issue(issue.line, issue.rule,
                                                                     f"{path.name}: {issue.message}", issue.severity))
        report.rows += part.rows
        report.lines_read += part.lines_read
        report.format = part.format if len(paths) == 1 else "mixed"
    check_count(report, spec.min_examples)
    _raise_if_bad(report, str(paths[0] if len(paths) == 1 else paths[0].parent), paths[0].stem, report_dir)
    where = str(paths[0] if sheet is None else paths[0].parent)
    pairs = sum(r.rejected is not None for r in report.rows)
    if method in PAIRED and not pairs:
        raise UserError(where, f"holds no preference pairs, and method {method} trains on pairs (a preferred and a "
                        "non-preferred answer to the same prompt)",
                        "give an OpenAI DPO file (input, preferred_output, non_preferred_output), or a feedback "
                        "dataset with corrections, or train with method sft")
    if method == "kto" and not pairs and not any(desirable(r) is False for r in report.rows):
        raise UserError(where, "holds no undesirable answer, and method kto learns from good and bad ones",
                        'mark bad answers with "label": false (or a low rating or score), give a feedback dataset '
                        "with negatives, or train with method sft")
    return report


def desirable(row: Row, min_score: float = 0.7, min_rating: float = 3) -> bool:
    """Whether a row's answer is a good one: its label; else its rating or score against the feedback store's
    thresholds (below is negative); else True (a chat row with no signal is an example to follow)."""
    if row.label is not None:
        return row.label
    if row.rating is not None:
        return row.rating >= min_rating
    if row.score is not None:
        return row.score >= min_score
    return True


def prepare_dataset(
    data: str | Path,
    spec: DataSpec,
    eval_data: str | Path | None = None,
    count_tokens: Callable[[list[dict]], int] | None = None,
    max_tokens: int | None = None,
    report_dir: Path | None = None,
    tenant: str | None = None,
    method: str = "sft",
) -> PreparedDataset:
    """Validate, deduplicate, split and leak-check. Raises before writing anything if data is bad.

    `method` picks what is read (tuneloop.training.objectives): chat rows for SFT, preference pairs for DPO,
    answers marked desirable or not for KTO; rows keep `rejected` and `label`, and the splits keep a prompt's
    rows together. Held-out rows are compared on their preferred (or desirable) answer.

    With `tenant`, every row must belong to it: tenants are never mixed in one dataset. A row that names
    no tenant belongs to `tenant` (else to "default").
    """
    paths, sheet = resolve_input(data, method)
    if sheet is not None and tenant is not None and sheet.get("tenant") != tenant:
        raise UserError(str(paths[0].parent), f"was built for tenant {sheet.get('tenant')!r}, not {tenant!r}",
                        "train each tenant on its own dataset folder")
    report = _read_paths(paths, sheet, spec, method, count_tokens, max_tokens, report_dir, tenant or "default")
    data = paths[0] if len(paths) == 1 else paths[0].parent
    if tenant is not None:
        foreign = [Issue(r.line, "tenant", f"row belongs to tenant {r.tenant!r}, this dataset is for {tenant!r}")
                   for r in report.rows if r.tenant != tenant]
        if foreign:
            raise DataValidationError(str(data), foreign)
    rows, seen, dups = [], set(), 0
    for r in report.rows:
        if r.key in seen:
            dups += 1
            continue
        seen.add(r.key)
        rows.append(r)

    val_cut, test_cut = spec.validation_split, spec.validation_split + spec.test_split
    splits: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for r in rows:
        b = _bucket(r.prompt_key)
        splits["validation" if b < val_cut else "test" if b < test_cut else "train"].append(r)

    if eval_data is not None:
        ev, _ = read_training_rows(eval_data, spec.model_copy(update={"min_examples": 1}), "sft", count_tokens,
                                   max_tokens, report_dir, tenant=tenant or "default")  # chat or preference rows
        eval_rows = list({r.key: r for r in ev.rows if r.label is not False}.values())
    else:  # the answers to follow, never the ones to avoid
        eval_rows = [r for r in splits["test"] if r.label is not False]

    # No evaluation prompt may be trained on: drop leaking rows from train and validation.
    eval_prompts = {r.prompt_key for r in eval_rows}
    leaks = 0
    for s in ("train", "validation"):
        kept = [r for r in splits[s] if r.prompt_key not in eval_prompts]
        leaks += len(splits[s]) - len(kept)
        splits[s] = kept
    if not splits["train"]:
        raise DataValidationError(str(data), [Issue(0, "too_few_examples",
                                                    "no training rows are left after the split and the leak check")])

    stats = {"rows_read": report.lines_read, "valid_rows": len(report.rows), "duplicates_removed": dups,
             "eval_leaks_removed": leaks, "eval_source": str(eval_data) if eval_data else "test split"}
    version = dataset_version({**splits, "eval": eval_rows})
    datasheet = sheet or {"sources": [str(data)], "license": "unspecified", "tenant": tenant,
                          "redaction": {"applied": False}, "note": "a JSONL file given directly"}
    datasheet = datasheet | {"prepared": {"version": version, "stats": stats,
                                          "splits": {s: len(splits[s]) for s in SPLITS}}}
    return PreparedDataset(version, str(data), splits["train"], splits["validation"], splits["test"],
                           eval_rows, stats, datasheet=datasheet)


def read_saved_rows(path: str | Path) -> list[Row]:
    """The rows of a split this module saved (PreparedDataset.save), with their preference fields."""
    rows = []
    for n, text in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if text.strip():
            d = json.loads(text)
            rows.append(Row(n, d["messages"], d.get("rating"), d.get("score"), d.get("tenant", "default"),
                            rejected=d.get("rejected"), label=d.get("label")))
    return rows


def _sample(rows: list[Row], share: float, seed: str) -> list[Row]:
    """round(share * len(rows)) rows (at least one when share > 0), the same ones for the same seed."""
    if share <= 0 or not rows:
        return []
    k = min(len(rows), max(1, round(share * len(rows))))
    ranked = sorted(rows, key=lambda r: hashlib.sha256(f"{seed}:{r.key}".encode()).hexdigest())
    return ranked[:k]


def add_replay(ds: PreparedDataset, replay, earlier: list[tuple[str, Path]], seed: int = 0,
               general_rows: list[Row] | None = None) -> PreparedDataset:
    """`ds` with rows of earlier dataset versions (`earlier`: (version, saved folder), oldest first) and of a
    general set added to its training split, per `replay` (a ReplaySpec). Rows whose prompt is held out, or
    already in this dataset, are not added. The version changes with the mix; `stats["replay"]` says where each
    added row came from."""
    if replay.versions:
        earlier = earlier[-replay.versions:]
    held = {r.prompt_key for r in ds.eval_rows} | {r.prompt_key for r in ds.validation}
    have = {r.key for r in ds.train}
    mix: dict[str, int] = {}
    added: list[Row] = []

    def take(rows: list[Row], share: float, name: str) -> None:
        fresh = [r for r in rows if r.prompt_key not in held and r.key not in have]
        picked = _sample(fresh, share, f"{seed}:{name}")
        have.update(r.key for r in picked)
        added.extend(picked)
        mix[name] = len(picked)

    for version, folder in earlier:
        share = next((f for v, f in replay.per_version.items() if version.startswith(v)), replay.fraction)
        if (folder / "train.jsonl").exists():
            take(read_saved_rows(folder / "train.jsonl"), share, version[:16])
    if general_rows:
        share = replay.general_fraction * len(ds.train) / max(len(general_rows), 1)
        take(general_rows, min(share, 1.0), "general")
    if not added:
        return ds
    train = ds.train + added
    version = dataset_version({"train": train, "validation": ds.validation, "test": ds.test, "eval": ds.eval_rows})
    stats = ds.stats | {"replay": mix, "replay_rows": len(added)}
    sheet = ds.datasheet | {"prepared": ds.datasheet.get("prepared", {}) | {"version": version, "replay": mix}}
    return PreparedDataset(version, ds.source, train, ds.validation, ds.test, ds.eval_rows, stats, datasheet=sheet)
