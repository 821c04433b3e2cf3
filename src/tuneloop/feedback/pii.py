"""Redact personal data and secrets from feedback text before it is stored or trained on.

`redact(text)` replaces each match with a typed placeholder and counts the
kinds it replaced:

    [API_KEY]  provider keys and tokens (OpenAI, Anthropic, GitHub, Slack, AWS,
               Google, Hugging Face, GitLab, LangSmith, Langfuse), JWTs, the
               token of a `Bearer ...` header, and the value of generic
               `api_key=...` / `token: ...` / `secret=...` / `password=...`
               assignments (the name is kept, the value replaced)
    [EMAIL]    e-mail addresses, plus-addressing and subdomains included
    [IBAN]     IBANs, grouped by spaces or not, validated with the ISO 13616
               mod-97 check (and the country's length where it is known)
    [CARD]     13-19 digit card numbers, optionally grouped by spaces or
               dashes, validated with the Luhn checksum
    [IP]       IPv4 (octets 0-255, not version strings) and IPv6 (full and
               compressed, validated by `ipaddress`)
    [PHONE]    international numbers (+44 20 7946 0958, +1-202-555-0143,
               +49 (0)30 1234567) and common national layouts ((202) 555-0143,
               202.555.0143, 020 7946 0958, 06 12 34 56 78). Bare digit runs,
               dates, times, prices, order numbers and versions are left alone.

Detectors run in that order and each claims its spans: a later detector never
matches inside text an earlier one claimed, so a span is redacted once (a key
that contains digits is not also a phone; an IBAN is not also a card).

Stdlib only.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

KINDS = ("API_KEY", "EMAIL", "IBAN", "CARD", "IP", "PHONE")

Span = tuple[int, int]  # [start, end) in the original text

# --------------------------------------------------------------------------- keys and tokens

# Characters that continue a token: a key is only matched when it is not glued to more of them.
_TOK = r"A-Za-z0-9_\-"
_KEY_PATTERNS = [
    r"sk-ant-[A-Za-z0-9_\-]{16,}",  # Anthropic
    r"sk-proj-[A-Za-z0-9_\-]{16,}",  # OpenAI project keys
    r"(?:sk|pk)-lf-[A-Za-z0-9\-]{8,}",  # Langfuse
    r"sk-[A-Za-z0-9_\-]{16,}",  # OpenAI and other sk- keys
    r"gh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_)
    r"github_pat_[A-Za-z0-9_]{20,}",  # GitHub fine-grained tokens
    r"xox[abposr]-[A-Za-z0-9\-]{10,}",  # Slack
    r"(?:AKIA|ASIA)[0-9A-Z]{16}",  # AWS access key ids
    r"AIza[0-9A-Za-z_\-]{30,}",  # Google API keys
    r"hf_[A-Za-z0-9]{20,}",  # Hugging Face
    r"glpat-[A-Za-z0-9_\-]{20,}",  # GitLab
    r"lsv2_(?:pk|sk)_[A-Za-z0-9_]{16,}",  # LangSmith
    r"eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]+",  # JWT
]
_KEY_RE = re.compile(rf"(?<![{_TOK}])(?:{'|'.join(_KEY_PATTERNS)})(?![{_TOK}])")

# `Bearer <token>`: the token has a digit, so prose like "Bearer authentication" is left alone.
_BEARER_RE = re.compile(r"\bBearer\s+(?=[A-Za-z0-9._~+/=\-]*\d)([A-Za-z0-9._~+/\-]{8,}=*)", re.IGNORECASE)

# Generic assignments. With `=` the value is redacted whatever it is; with `:` (which also
# appears in prose: "token: please log in") only a quoted value or one that has a digit or
# a symbol, or is 20+ characters long.
_SECRET_NAMES = (
    r"(?:api[_\-]?key|apikey|access[_\-]?key(?:[_\-]?id)?|secret[_\-]?access[_\-]?key|access[_\-]?token"
    r"|auth[_\-]?token|refresh[_\-]?token|id[_\-]?token|client[_\-]?secret|secret[_\-]?key|private[_\-]?key"
    r"|api[_\-]?secret|token|secret|password|passwd)"
)
_ASSIGN_RE = re.compile(
    rf"(?<![A-Za-z0-9])[\"']?{_SECRET_NAMES}[\"']?\s*(?P<op>[:=])\s*"
    r"(?:(?P<q>[\"'])(?P<quoted>[^\"'\s]{4,})(?P=q)|(?P<bare>[^\s\"',;)\]}]{4,}))",
    re.IGNORECASE,
)


def _keys(text: str) -> Iterator[Span]:
    for m in _KEY_RE.finditer(text):
        yield m.span()
    for m in _BEARER_RE.finditer(text):
        yield m.span(1)


def _assignments(text: str) -> Iterator[Span]:
    for m in _ASSIGN_RE.finditer(text):
        if m.group("quoted") is not None:
            yield m.span("quoted")
            continue
        value = m.group("bare").rstrip(".")
        if len(value) < 4:
            continue
        if m.group("op") == ":" and not (re.search(r"[\d_\-+/=!@#$%^&*~]", value) or len(value) >= 20):
            continue
        start = m.start("bare")
        yield start, start + len(value)


# --------------------------------------------------------------------------- e-mail

_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])"
)


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL_RE.finditer(text):
        yield m.span()


# --------------------------------------------------------------------------- IBAN

# ISO 13616 lengths by country (SWIFT IBAN registry).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
_IBAN_START_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?=[ ]?[A-Za-z0-9])")


def iban_valid(iban: str) -> bool:
    """ISO 13616 mod-97 check on an IBAN without spaces (and its country's length, where known)."""
    iban = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    length = IBAN_LENGTHS.get(iban[:2])
    if length is not None and len(iban) != length:
        return False
    digits = "".join(str(int(c, 36)) for c in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN_START_RE.finditer(text):
        start = m.start()
        # Walk forward over alphanumerics, allowing single spaces between them; remember where each
        # prefix of length n ends so we can try the country's length (or, unknown, every length).
        ends: dict[int, int] = {}
        n, i = 0, start
        while i < len(text) and n < 34:
            c = text[i]
            if c.isascii() and c.isalnum():
                n += 1
                i += 1
                ends[n] = i
            elif c == " " and n >= 4 and i + 1 < len(text) and text[i + 1].isascii() and text[i + 1].isalnum():
                i += 1
            else:
                break
        # Unknown country: only the whole run is tried (trying every length would let the 1-in-97
        # chance of a random string passing the check add up).
        length = IBAN_LENGTHS.get(text[start:start + 2])
        tries = [length if length is not None else n]
        for size in tries:
            end = ends.get(size)
            if end is None:
                continue
            # It must end at a token boundary: the IBAN is not part of a longer word.
            if end < len(text) and text[end].isascii() and text[end].isalnum():
                continue
            if iban_valid(text[start:end]):
                yield start, end
                break


# --------------------------------------------------------------------------- card numbers

_CARD_RE = re.compile(r"(?<![\w+\-.#$€£])\d(?:[ \-]?\d){12,18}(?![\w])")


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _cards(text: str) -> Iterator[Span]:
    for m in _CARD_RE.finditer(text):
        # A candidate can run into a following number ("4111 1111 1111 1111 2024"): try the whole run,
        # then shorter prefixes ending at a group boundary, longest first.
        s = m.group()
        cuts = [len(s)] + [k for k in range(len(s) - 1, 0, -1) if s[k] in " -"]
        for cut in cuts:
            if luhn_valid(s[:cut]):
                yield m.start(), m.start() + cut
                break


# --------------------------------------------------------------------------- IP addresses

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"(?<![\w.\-])(?:{_OCTET}\.){{3}}{_OCTET}(?!\.?\d|[A-Za-z_\-])")
_VERSION_BEFORE_RE = re.compile(r"(?:\bversion|\bver\.?|\brelease|\bv)\s*$", re.IGNORECASE)
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:])"
)


def _ips(text: str) -> Iterator[Span]:
    for m in _IPV4_RE.finditer(text):
        if _VERSION_BEFORE_RE.search(text, max(0, m.start() - 12), m.start()):
            continue
        yield m.span()
    for m in _IPV6_RE.finditer(text):
        s = m.group()
        if not any(c.isdigit() for c in s):
            continue  # "a::b" in code, "::" alone
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            continue  # times (12:30:45), MAC addresses, ratios
        yield m.span()


# --------------------------------------------------------------------------- phone numbers

# Not after a word character or a symbol that makes a digit run something else (#48213, $89.99, v2.3).
_PB = r"(?<![\w+#$€£%/\-.:])"
_PA = r"(?![\w\-/%]|[.:,]\d)"
_PHONE_RES = [
    # International: +CC, an optional "(0)" trunk or "(202)" area group, then groups; 8-15 digits in all.
    (re.compile(_PB + r"\+(?:\d{7,15}|\d{1,3}(?:[ .\-]?\(\d{1,4}\))?[ .\-]?\d{1,8}(?:[ .\-]\d{1,8}){0,5})" + _PA), 8, 15),
    # North American: (202) 555-0143, 202-555-0143, 202.555.0143, 202 555 0143, 1-800-555-0199.
    (re.compile(_PB + r"(?:1[ .\-])?\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}" + _PA), 10, 11),
    (re.compile(_PB + r"(?:1[ .\-])?\d{3}([ .\-])\d{3}\1\d{4}" + _PA), 10, 11),
    # National with a trunk 0: 020 7946 0958, 07700 900123, 06 12 34 56 78, 030-1234567, 06.12.34.56.78.
    (re.compile(_PB + r"0\d{1,4}([ .\-])\d{2,8}(?:\1\d{2,8}){0,3}" + _PA), 9, 12),
]


def _phone_digits(s: str) -> int:
    return sum(c.isdigit() for c in s.replace("(0)", ""))


def _phones(text: str) -> Iterator[Span]:
    for rx, low, high in _PHONE_RES:
        for m in rx.finditer(text):
            s = m.group()
            # A number can run into a following one ("+44 20 7946 0958 2024"): drop trailing groups.
            while _phone_digits(s) > high and re.search(r"[ .\-]\d+$", s):
                s = re.sub(r"[ .\-]\d+$", "", s)
            if low <= _phone_digits(s) <= high:
                yield m.start(), m.start() + len(s)


# --------------------------------------------------------------------------- redaction

_DETECTORS: list[tuple[str, Callable[[str], Iterator[Span]]]] = [
    ("API_KEY", _keys),
    ("EMAIL", _emails),
    ("API_KEY", _assignments),
    ("IBAN", _ibans),
    ("CARD", _cards),
    ("IP", _ips),
    ("PHONE", _phones),
]


def find_pii(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each span to redact, in text order, none overlapping."""
    claimed: list[tuple[int, int, str]] = []
    for kind, detect in _DETECTORS:
        for start, end in detect(text):
            if end <= start or any(start < e and s < end for s, e, _ in claimed):
                continue
            claimed.append((start, end, kind))
    return sorted(claimed)


def redact(text: str) -> tuple[str, Counter]:
    """`text` with PII and secrets replaced by `[KIND]` placeholders, and a Counter of kinds replaced."""
    counts: Counter = Counter()
    if not text:
        return text, counts
    out, pos = [], 0
    for start, end, kind in find_pii(text):
        out.append(text[pos:start])
        out.append(f"[{kind}]")
        counts[kind] += 1
        pos = end
    out.append(text[pos:])
    return "".join(out), counts


def redact_messages(messages: Sequence[dict]) -> tuple[list[dict] | tuple, Counter]:
    """Chat messages with each message's content redacted (copies; the input is not changed).

    Content may be a string or a list of parts (`{"type": "text", "text": ...}`, or strings).
    A tuple in gives a tuple out, anything else a list.
    """
    counts: Counter = Counter()
    out = []
    for message in messages:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            message["content"], c = redact(content)
            counts += c
        elif isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, str):
                    part, c = redact(part)
                    counts += c
                elif isinstance(part, dict) and isinstance(part.get("text"), str):
                    part = dict(part)
                    part["text"], c = redact(part["text"])
                    counts += c
                parts.append(part)
            message["content"] = parts
        out.append(message)
    return (tuple(out) if isinstance(messages, tuple) else out), counts


def redact_item(item):
    """A FeedbackItem with its messages, response, correction, rejected answer and comment redacted, and the
    counts."""
    from dataclasses import replace

    messages, counts = redact_messages(item.messages)
    fields = {"messages": tuple(messages)}
    for name in ("response", "correction", "rejected", "comment"):
        value = getattr(item, name)
        if isinstance(value, str):
            fields[name], c = redact(value)
            counts += c
    return replace(item, **fields), counts
