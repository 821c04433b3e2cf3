"""Validated rows become a versioned dataset: deduplicated, split by content hash, leak-checked."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tuneloop.data.validate import Issue, Row, ValidationReport, validate_file
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
    if not report.ok:
        report_path = None
        if report_dir is not None:
            report_path = report.write(Path(report_dir) / f"validation-{Path(path).stem}.json")
        raise DataValidationError(str(path), report.errors, report_path)
    return report


def resolve_input(data: str | Path) -> tuple[Path, dict | None]:
    """A JSONL file as is; a dataset folder (built from feedback) must carry its datasheet."""
    path = Path(data)
    if not path.is_dir():
        return path, None
    folder = resolve_dataset_dir(path)
    sheet = folder / DATASHEET
    if not sheet.exists():
        raise UserError(str(folder), "has no datasheet.json, and training needs one (sources, license, window, "
                        "redaction, tenant)", "build the folder with the collect-feedback flow or "
                        "`tuneloop feedback build`, or pass a JSONL file")
    return folder / "sft.jsonl", json.loads(sheet.read_text())


def prepare_dataset(
    data: str | Path,
    spec: DataSpec,
    eval_data: str | Path | None = None,
    count_tokens: Callable[[list[dict]], int] | None = None,
    max_tokens: int | None = None,
    report_dir: Path | None = None,
    tenant: str | None = None,
) -> PreparedDataset:
    """Validate, deduplicate, split and leak-check. Raises before writing anything if data is bad.

    With `tenant`, every row must belong to it: tenants are never mixed in one dataset. A row that names
    no tenant belongs to `tenant` (else to "default").
    """
    data, sheet = resolve_input(data)
    if sheet is not None and tenant is not None and sheet.get("tenant") != tenant:
        raise UserError(str(data.parent), f"was built for tenant {sheet.get('tenant')!r}, not {tenant!r}",
                        "train each tenant on its own dataset folder")
    report = read_rows_strict(data, spec, count_tokens, max_tokens, report_dir, tenant=tenant or "default")
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
        ev = read_rows_strict(eval_data, spec, count_tokens, max_tokens, report_dir, min_examples=1,
                              tenant=tenant or "default")
        eval_rows = list({r.key: r for r in ev.rows}.values())
    else:
        eval_rows = splits["test"]

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
