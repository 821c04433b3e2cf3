"""Reading a 1..scale_max score and a reason out of a judge's free-form reply, never raising."""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any, Iterator


_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\n?(.*?)```", re.S)
_SCORE_KEYS = ("score", "rating", "grade")
_REASON_KEYS = ("reason", "reasoning", "explanation", "rationale", "justification")
_NUM = r"([-+]?\d+(?:\.\d+)?)"
_LABELED_FRACTION = re.compile(
    r"\b(?:score|rating|grade)\b[^\d\n{}+-]{0,20}?" + _NUM + r"\s*(?:/|out\s+of|of)\s*(\d+)", re.I)
_FRACTION = re.compile(_NUM + r"\s*(?:/|out\s+of)\s*(\d+)\b", re.I)
_LABELED = re.compile(r"\b(?:score|rating|grade)\b\s*(?:is|of|=|:|-)?\s*[*_\"']*\s*" + _NUM + r"(?!\d|\.\d)", re.I)
_MAX_JSON = 20_000
_MAX_SCAN = 200_000


def excerpt(text: str, n: int = 80) -> str:
    """The start of a reply, quoted, for error messages."""
    text = text if isinstance(text, str) else repr(text)
    return repr(text[:n] + ("..." if len(text) > n else ""))


def _top_level_objects(text: str) -> Iterator[str]:
    """Balanced {...} spans at depth 0, quote-aware inside objects (linear)."""
    depth, start, quote, escape = 0, 0, "", False
    for i, ch in enumerate(text[:_MAX_SCAN]):
        if quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'" and depth:
            quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                yield text[start:i + 1]


def _loads_lenient(s: str) -> Any:
    s = s.strip()
    if not s.startswith("{") or len(s) > _MAX_JSON:
        return None
    try:
        return json.loads(s)
    except ValueError:
        pass
    s2 = re.sub(r",\s*([}\]])", r"\1", s)  # trailing commas
    try:
        return json.loads(s2)
    except ValueError:
        pass
    s3 = re.sub(r"([{,]\s*)([A-Za-z_]\w*)\s*:", r'\1"\2":', s2)  # bare keys
    for cand in (s3, s2):
        py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", cand)))
        try:
            return ast.literal_eval(py)  # single quotes, Python literals
        except Exception:  # SyntaxError, ValueError, RecursionError, MemoryError...
            continue
    return None


def _json_objects(text: str) -> Iterator[dict]:
    seen: set[str] = set()

    def candidates() -> Iterator[str]:
        for m in _FENCE.finditer(text[:_MAX_SCAN]):
            yield m.group(1)
        yield from _top_level_objects(text)
        decoder = json.JSONDecoder()
        for k, m in enumerate(re.finditer(r"\{", text[:_MAX_SCAN])):
            if k >= 20:
                break
            try:
                obj, end = decoder.raw_decode(text, m.start())
            except ValueError:
                continue
            yield text[m.start():end]

    for c in candidates():
        c = c.strip()
        if c in seen:
            continue
        seen.add(c)
        obj = _loads_lenient(c)
        if isinstance(obj, dict):
            yield obj


def _find_key(obj: Any, keys: tuple[str, ...], depth: int = 0) -> tuple[bool, Any]:
    if not isinstance(obj, dict) or depth > 3:
        return False, None
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for k in keys:
        if k in lowered:
            return True, lowered[k]
    for v in obj.values():
        found, value = _find_key(v, keys, depth + 1)
        if found:
            return found, value
    return False, None


def _check(value: float, denominator: int | None, scale_max: int, shown: str) -> tuple[float | None, str]:
    """'' when the score is usable, else the reason it is not."""
    if denominator is not None and denominator != scale_max:
        return None, f"score {shown} is on a 1-{denominator} scale, expected 1-{scale_max}"
    if math.isnan(value) or math.isinf(value) or not 1 <= value <= scale_max:
        return None, f"score {shown} is outside 1-{scale_max}"
    return value, ""


def num_str(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _score_value(raw: Any, scale_max: int) -> tuple[float | None, str]:
    if isinstance(raw, bool) or raw is None:
        return None, f"score {raw!r} is not a number"
    if isinstance(raw, (int, float)):
        return _check(float(raw), None, scale_max, num_str(raw))
    if isinstance(raw, str):
        m = re.fullmatch(r"\s*" + _NUM + r"\s*(?:(?:/|out\s+of)\s*(\d+))?\s*", raw, re.I)
        if m:
            return _check(float(m.group(1)), int(m.group(2)) if m.group(2) else None, scale_max, raw.strip())
    return None, f"score {raw!r} is not a number"


def _reason_of(obj: dict) -> str:
    found, reason = _find_key(obj, _REASON_KEYS)
    return str(reason).strip()[:500] if found and reason is not None else ""


def parse_judgement(text: Any, scale_max: int = 5) -> tuple[float | None, str]:
    """Read a 1..scale_max score and the judge's reason from a free-form reply.

    Tries, in order: a JSON object anywhere in the reply (```json fences, trailing commas,
    single quotes, bare keys and nested ``{"result": {"score": ..}}`` tolerated), then prose
    such as ``Score: 4/5``, ``4 out of 5``, ``Rating: 4``. Returns ``(score, reason)`` with the
    raw (not normalized) score, or ``(None, what was wrong)``. Never raises.
    """
    try:
        return _parse(text, scale_max)
    except Exception as e:  # belt and braces: a reply must never crash a run
        return None, f"could not parse reply ({type(e).__name__}: {e}): {excerpt(str(text))}"


def _parse(text: Any, scale_max: int) -> tuple[float | None, str]:
    if text is None:
        return None, "reply is empty (None)"
    if not isinstance(text, str):
        text = str(text)
    if not text.strip():
        return None, "reply is empty"
    no_score_keys: list[str] = []
    for obj in _json_objects(text):
        found, raw = _find_key(obj, _SCORE_KEYS)
        if found:
            score, problem = _score_value(raw, scale_max)
            return (score, _reason_of(obj)) if score is not None else (None, problem)
        no_score_keys = no_score_keys or [str(k) for k in obj][:8]
    prose = text[:_MAX_SCAN]
    fraction = list(_LABELED_FRACTION.finditer(prose))
    if fraction:
        m = fraction[-1]
        score, problem = _check(float(m.group(1)), int(m.group(2)), scale_max, f"{m.group(1)}/{m.group(2)}")
        return (score, text.strip()[:500]) if score is not None else (None, problem)
    labeled = list(_LABELED.finditer(prose))
    if labeled:
        m = labeled[-1]
        score, problem = _check(float(m.group(1)), None, scale_max, m.group(1))
        return (score, text.strip()[:500]) if score is not None else (None, problem)
    plain = [m for m in _FRACTION.finditer(prose) if int(m.group(2)) == scale_max]
    if plain:
        m = plain[-1]
        score, problem = _check(float(m.group(1)), None, scale_max, f"{m.group(1)}/{m.group(2)}")
        return (score, text.strip()[:500]) if score is not None else (None, problem)
    if no_score_keys:
        return None, f"JSON object has no 'score' field (keys: {', '.join(no_score_keys)}): {excerpt(text)}"
    return None, f"no score found in reply: {excerpt(text)}"
