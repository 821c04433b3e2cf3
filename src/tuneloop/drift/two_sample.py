"""The classifier two-sample test (C2ST) on vectors, calibrated by permutation.

Reference prompts get label 0, window
prompts label 1; an L2 logistic regression (C = 1, on features
standardised over both sides) is cross-validated over 5 stratified folds
(a seeded, label-free row order dealt round-robin within each class) and
the out-of-fold probabilities give an AUC. With no drift nothing separates
the two sides and the AUC is about 0.5; a window that is half new topic
tops out near 0.75. The regression is solved by Newton's method for the
observed labels and all the permutations below at once (same objective
and optimum as scikit-learn's ``LogisticRegression(C=1)``, which the tests
check), so calibration costs matrix products, not solver runs.

Calibration of the null (how ``p_value`` and ``threshold`` are made).
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
"""

from __future__ import annotations

import math

import numpy as np

from tuneloop.drift.embeddings import one_blas_thread
from tuneloop.errors import UserError

CALIBRATIONS = ("permutation", "exact")
PERMUTATIONS = 20
TEST_DIMS = 64
FOLDS = 5
_LABELS_PER_BATCH = 42  # labellings solved together (bounds memory at large n)


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
    with one_blas_thread():
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
