"""Drift detection over prompts: has the traffic moved away from a reference period?

Pure core: numpy and scikit-learn, plus sentence-transformers when it is
installed. No prefect, no network.

Public API
----------
detect_drift(reference, window, ...) -> DriftReport           (here)
embed(texts, backend="auto") -> (array, backend_used)        (drift.embeddings, with
    minilm_available() -> bool and clear_embedding_cache())
two_sample_test(x_reference, x_window, ...) -> dict          (drift.two_sample: the C2ST on vectors)
output_drift(reference_scores, window_scores, ...) -> dict   (drift.outputs)

Method
------
1. Each side is subsampled to at most ``max_samples`` prompts (seeded RNG), so
   the cost is bounded whatever the traffic.
2. Embedding (`drift.embeddings`).
3. Classifier two-sample test, calibrated by permutation (`drift.two_sample`).
4. Drift is declared when p < ``alpha`` (default 0.01) AND AUC >= ``min_auc``
   (default 0.6). The effect-size floor keeps large windows from firing on
   differences too small to matter; the p-value keeps small windows from
   firing on noise.

Output side (`drift.outputs`): feedback scores of both periods, when given.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from tuneloop.drift.embeddings import embed
from tuneloop.drift.outputs import output_drift
from tuneloop.drift.two_sample import two_sample_test
from tuneloop.errors import UserError

MIN_PROMPTS = 20
EXAMPLES = 5
TOP_TERMS = 10


@dataclass
class DriftReport:
    drifted: bool
    auc: float
    p_value: float
    alpha: float
    min_auc: float
    threshold: float  # AUC the window had to reach: max(min_auc, critical AUC of the null at alpha)
    calibration: str
    backend: str
    n_reference: int  # prompts tested (after subsampling)
    n_window: int
    seconds: float
    embed_seconds: float
    test_seconds: float
    output: dict | None = None
    examples: list[dict] = field(default_factory=list)  # window prompts most unlike the reference
    top_terms: list[dict] = field(default_factory=list)  # words far more common in the window

    @property
    def output_dropped(self) -> bool:
        return bool(self.output and self.output.get("dropped"))

    def summary(self) -> str:
        verdict = "DRIFT" if self.drifted else "no drift"
        line = (f"{verdict}: AUC {self.auc:.3f} (needs >= {self.threshold:.3f}), p={self.p_value:.2g}, "
                f"{self.n_reference} vs {self.n_window} prompts, {self.backend}, {self.seconds:.1f}s")
        if self.output:
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            line += (f"; feedback {fmt(self.output['reference_mean'])} -> {fmt(self.output['window_mean'])}"
                     + (" (DROPPED)" if self.output["dropped"] else ""))
        return line

    def to_json(self) -> dict:
        return asdict(self)


def _check_prompts(prompts: Any, side: str) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Iterable):
        raise UserError(f"{side}={type(prompts).__name__}", "must be a list of prompt strings",
                        f"pass {side} as a list of str")
    prompts = list(prompts)
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise UserError(f"{side}[{bad[0]}]={prompts[bad[0]]!r}", "is not a string",
                        f"pass {side} as a list of str ({len(bad)} item(s) are not)")
    if len(prompts) < MIN_PROMPTS:
        raise UserError(f"{side}: {len(prompts)} prompts",
                        f"drift detection needs at least {MIN_PROMPTS} prompts on each side",
                        f"widen the {side} period or wait for more traffic")
    return prompts


def _subsample(texts: list[str], k: int, rng: np.random.Generator) -> list[str]:
    if len(texts) <= k:
        return texts
    idx = np.sort(rng.choice(len(texts), size=k, replace=False))
    return [texts[i] for i in idx]


def _top_terms(reference: list[str], window: list[str], k: int = TOP_TERMS) -> list[dict]:
    from sklearn.feature_extraction.text import CountVectorizer

    try:
        vec = CountVectorizer(binary=True, min_df=2)
        x = vec.fit_transform(reference + window)
    except ValueError:
        return []
    n1 = len(reference)
    ref_share = np.asarray(x[:n1].mean(axis=0)).ravel()
    win_share = np.asarray(x[n1:].mean(axis=0)).ravel()
    rise = win_share - ref_share
    # Rise in share weighted by the smoothed log ratio: "solar" going from 0% to 15%
    # ranks above "the" going from 52% to 73%.
    weight = rise * np.log((win_share + 0.01) / (ref_share + 0.01))
    terms = vec.get_feature_names_out()
    order = [i for i in np.argsort(-weight, kind="stable")[:k] if rise[i] > 0]
    return [{"term": str(terms[i]), "reference_share": round(float(ref_share[i]), 4),
             "window_share": round(float(win_share[i]), 4)} for i in order]


def _examples(window: list[str], scores: np.ndarray, k: int = EXAMPLES) -> list[dict]:
    out, seen = [], set()
    for i in np.argsort(-scores, kind="stable"):
        if window[i] in seen:
            continue
        seen.add(window[i])
        out.append({"prompt": window[i], "score": round(float(scores[i]), 4)})
        if len(out) == k:
            break
    return out


def detect_drift(reference: Sequence[str], window: Sequence[str], *, backend: str = "auto",
                 alpha: float = 0.01, min_auc: float = 0.6, max_samples: int = 2000, seed: int = 0,
                 reference_scores: Iterable[Any] | None = None,
                 window_scores: Iterable[Any] | None = None, score_drop: float = 0.1,
                 calibration: str = "permutation", permutations: int | None = None) -> DriftReport:
    """Has ``window`` drifted from ``reference``? See the module docstring for the method.

    ``reference_scores``/``window_scores``: optional ``(timestamp, score)``
    feedback for the same two periods (``report.output``; None when neither is
    given, and no drop can be flagged when one period has no scores).
    """
    t0 = time.perf_counter()
    reference = _check_prompts(reference, "reference")
    window = _check_prompts(window, "window")
    if max_samples < MIN_PROMPTS:
        raise UserError(f"max_samples={max_samples}", f"must be at least {MIN_PROMPTS}",
                        "use the default 2000 or another value >= 20")
    output = (None if reference_scores is None and window_scores is None
              else output_drift(reference_scores, window_scores, score_drop=score_drop))

    rng = np.random.default_rng(seed)
    ref = _subsample(reference, max_samples, rng)
    win = _subsample(window, max_samples, rng)

    t1 = time.perf_counter()
    vectors, used = embed(ref + win, backend, seed=seed)
    t2 = time.perf_counter()
    test = two_sample_test(vectors[:len(ref)], vectors[len(ref):], alpha=alpha, min_auc=min_auc,
                           seed=seed, calibration=calibration, permutations=permutations)
    t3 = time.perf_counter()
    report = DriftReport(
        drifted=test["drifted"], auc=test["auc"], p_value=test["p_value"], alpha=float(alpha),
        min_auc=float(min_auc), threshold=test["threshold"], calibration=calibration, backend=used,
        n_reference=len(ref), n_window=len(win), seconds=0.0, embed_seconds=t2 - t1,
        test_seconds=t3 - t2, output=output, examples=_examples(win, test["window_scores"]),
        top_terms=_top_terms(ref, win),
    )
    report.seconds = time.perf_counter() - t0
    return report
