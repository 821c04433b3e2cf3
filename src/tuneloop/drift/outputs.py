"""Output drift: did the feedback scores drop between the reference period and the window?

Given ``(timestamp, score)`` feedback for both periods,
``output_drift`` reports both means, the window's least-squares slope in
score per day, and ``dropped`` when the window mean is more than
``score_drop`` (absolute, in score units) below the reference mean.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import numpy as np

from tuneloop.errors import UserError


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
