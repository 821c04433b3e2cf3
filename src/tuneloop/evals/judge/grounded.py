"""A judge-free lexical check of an answer against its source passages."""

from __future__ import annotations

import re

from tuneloop.evals.judge.parse import num_str


_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing done down during each either else etc even ever every
few for from further had has have having he her here hers herself him himself his how however i if in
into is it its itself just let me might more most much must my myself neither no nor not now of off on
once only or other our ours ourselves out over own per quite rather same shall she should since so some
such than that the their theirs them themselves then there these they this those though through thus to
too under until up upon us very via was we were what when where whether which while who whom whose why
will with within without would yes yet you your yours yourself yourselves ok okay sure thanks thank
hello hi please well really simply basically actually
""".split())
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "ms.", "dr.", "prof.", "approx.", "fig.")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*%?|[a-z]+(?:'[a-z]+)?")


def _stem(w: str) -> str:
    if w.endswith("'s"):
        w = w[:-2]
    for suffix, keep in (("ies", 4), ("ing", 5), ("ed", 4), ("es", 4), ("s", 3)):
        if w.endswith(suffix) and len(w) > keep:
            if suffix == "ies":
                return w[:-3] + "y"
            if suffix == "es" and not re.search(r"(?:s|x|z|ch|sh)es$", w):
                continue  # "notes" -> "note" via the plain-s rule below
            if suffix == "s" and w.endswith(("ss", "us", "is")):
                return w
            w = w[: -len(suffix)]
            if suffix in ("ing", "ed") and len(w) > 2 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]  # stopped -> stop, running -> run
            return w
    return w


def _number(tok: str) -> str:
    tok = tok.rstrip("%").replace(",", "")
    try:
        x = float(tok)
    except ValueError:
        return tok
    return num_str(x)


def _terms(text: str) -> tuple[set[str], set[str]]:
    """(content-word stems, normalized numbers) of a text."""
    words, numbers = set(), set()
    for tok in _TOKEN.findall(text.lower()):
        if tok[0].isdigit():
            numbers.add(_number(tok))
        elif tok not in _STOPWORDS and len(tok) > 1:
            words.add(_stem(tok))
    return words, numbers


def _sentences(answer: str) -> list[str]:
    out: list[str] = []
    for chunk in _SENTENCE_END.split(answer):
        chunk = _BULLET.sub("", chunk).strip()
        if not chunk:
            continue
        if out and out[-1].lower().endswith(_ABBREVIATIONS):
            out[-1] = f"{out[-1]} {chunk}"
        else:
            out.append(chunk)
    return out


def claims(answer: str) -> list[str]:
    """Sentences (and list items) with at least one content word or number; the rest is filler."""
    return [s for s in _sentences(answer or "") if any(_terms(s))]


def groundedness(answer: str, passages: list[str], min_coverage: float = 0.6) -> tuple[float, list[str]]:
    """Share of the answer's claims supported by the passages, and the unsupported claims.

    A claim (a sentence or list item with at least one content word or number) is supported
    when, in a single passage, at least `min_coverage` of its content words appear (lowercased,
    stopwords removed, light stemming: plural -s/-es/-ies, -ing, -ed) and every number in it
    appears too ("1,000" == "1000", "3.50" == "3.5", "40%" == "40").

    No claims at all (empty answer, or only filler like "Sure!") scores 1.0: nothing was
    asserted, so nothing is ungrounded. Claims with no passages score 0.0. Lexical only: it
    catches invented facts and numbers, not paraphrases or negations ("is not" vs "is").
    """
    found = claims(answer)
    if not found:
        return 1.0, []
    indexed = [_terms(p) for p in passages or []]
    unsupported = []
    for claim in found:
        words, numbers = _terms(claim)
        ok = any(numbers <= p_numbers and (not words or len(words & p_words) / len(words) >= min_coverage)
                 for p_words, p_numbers in indexed)
        if not ok:
            unsupported.append(claim)
    return (len(found) - len(unsupported)) / len(found), unsupported


def hallucination_rate(answer: str, passages: list[str], min_coverage: float = 0.6) -> float:
    """1 - groundedness: the share of claims the passages do not support."""
    return 1.0 - groundedness(answer, passages, min_coverage)[0]
