"""Scoring items x rubrics on a thread pool: a failed item is recorded with its reason, never raised."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

from tuneloop.errors import UserError
from tuneloop.evals.judge.client import JudgeCallError, JudgeClient
from tuneloop.evals.judge.parse import parse_judgement
from tuneloop.evals.judge.rubrics import DEFAULT_RUBRICS, Rubric, build_messages, normalize_score


@dataclass
class RubricResult:
    """One rubric over all items. `mean` is over scored items only (None when none were)."""

    rubric: str
    scale_max: int
    mean: float | None
    n_scored: int
    n_failed: int
    n_skipped: int
    per_item: dict[str, float | None]
    reasons: dict[str, str]
    failures: list[dict]

    @property
    def failure_rate(self) -> float | None:
        judged = self.n_scored + self.n_failed
        return self.n_failed / judged if judged else None

    def to_json(self) -> dict:
        return {**asdict(self), "failure_rate": self.failure_rate}


@dataclass
class JudgeReport:
    model: str
    rubrics: dict[str, RubricResult] = field(default_factory=dict)

    def __getitem__(self, name: str) -> RubricResult:
        return self.rubrics[name]

    @property
    def failures(self) -> list[dict]:
        return [f for r in self.rubrics.values() for f in r.failures]

    def means(self) -> dict[str, float | None]:
        return {name: r.mean for name, r in self.rubrics.items()}

    def to_json(self) -> dict:
        return {"model": self.model, "rubrics": {n: r.to_json() for n, r in self.rubrics.items()}}


def _resolve(rubrics: list[Rubric | str]) -> list[Rubric]:
    if not rubrics:
        raise UserError("rubrics=[]", "no rubric to judge with", f"pass one or more of: {', '.join(DEFAULT_RUBRICS)}")
    out = []
    for r in rubrics:
        if isinstance(r, str):
            if r not in DEFAULT_RUBRICS:
                raise UserError(repr(r), "is not a shipped rubric",
                                f"use one of {', '.join(DEFAULT_RUBRICS)} or pass a Rubric(...)")
            r = DEFAULT_RUBRICS[r]
        out.append(r)
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise UserError(names, "rubric names repeat", "pass each rubric once")
    return out


def _validate_items(items: list[dict]) -> None:
    seen: set[str] = set()
    for n, item in enumerate(items):
        where = f"item #{n}"
        if not isinstance(item, dict):
            raise UserError(where, "is not a dict", 'pass items like {"id": ..., "prompt": ..., "answer": ...}')
        for key in ("id", "prompt", "answer"):
            if not isinstance(item.get(key), str):
                raise UserError(f"{where} (id={item.get('id')!r})", f"{key!r} is missing or not a string",
                                f"give every item a string {key!r}")
        if item["id"] in seen:
            raise UserError(repr(item["id"]), "item id repeats", "give every item a unique id")
        seen.add(item["id"])
        if item.get("reference") is not None and not isinstance(item["reference"], str):
            raise UserError(f"{where} (id={item['id']!r})", "'reference' is not a string", "pass a string or leave it out")
        passages = item.get("passages")
        if passages is not None and (not isinstance(passages, list) or not all(isinstance(p, str) for p in passages)):
            raise UserError(f"{where} (id={item['id']!r})", "'passages' is not a list of strings",
                            "pass a list of strings or leave it out")


def judge_one(client: JudgeClient, item: dict, rubric: Rubric) -> tuple[float | None, str]:
    """Normalized 0..1 score and reason, or (None, why it failed). Raises only `UserError`."""
    try:
        reply = client.complete(build_messages(item, rubric))
    except JudgeCallError as e:
        return None, str(e)
    score, reason = parse_judgement(reply, rubric.scale_max)
    if score is None:
        return None, f"malformed judge reply: {reason}"
    return normalize_score(score, rubric.scale_max), reason


def judge(client: JudgeClient, items: list[dict], rubrics: list[Rubric | str], concurrency: int = 4) -> JudgeReport:
    """Score every item on every rubric; failures are recorded per item, never raised.

    Raises `UserError` for bad items/rubrics before any call, and when the endpoint refuses
    the key (401/403) or does not exist (404): those would fail every item.
    """
    rubric_list = _resolve(rubrics)
    _validate_items(items)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise UserError(f"concurrency={concurrency!r}", "must be an integer >= 1", "use e.g. concurrency=4")
    jobs = [(item, r) for r in rubric_list for item in items if item.get("passages") or not r.needs_passages]
    results: dict[tuple[str, str], tuple[float | None, str]] = {}
    stop = threading.Event()

    def run(item: dict, rubric: Rubric) -> tuple[str, str, float | None, str]:
        if stop.is_set():
            return item["id"], rubric.name, None, "cancelled"
        return (item["id"], rubric.name, *judge_one(client, item, rubric))

    pool = ThreadPoolExecutor(max_workers=min(concurrency, max(1, len(jobs))), thread_name_prefix="judge")
    try:
        futures = [pool.submit(run, item, r) for item, r in jobs]
        for f in as_completed(futures):
            item_id, name, score, reason = f.result()
            results[(item_id, name)] = (score, reason)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    report = JudgeReport(model=client.model)
    for r in rubric_list:
        per_item: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        failures: list[dict] = []
        skipped = 0
        for item in items:
            key = (item["id"], r.name)
            if key not in results:
                skipped += 1
                continue
            score, reason = results[key]
            per_item[item["id"]] = score
            reasons[item["id"]] = reason
            if score is None:
                failures.append({"id": item["id"], "rubric": r.name, "reason": reason})
        scored = [s for s in per_item.values() if s is not None]
        report.rubrics[r.name] = RubricResult(
            rubric=r.name, scale_max=r.scale_max, mean=sum(scored) / len(scored) if scored else None,
            n_scored=len(scored), n_failed=len(failures), n_skipped=skipped,
            per_item=per_item, reasons=reasons, failures=failures)
    return report
