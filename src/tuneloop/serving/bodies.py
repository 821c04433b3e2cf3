"""What a valid request body is: each field's type and range, checked before any model work.

Every rejection is a `BadField` naming the field (OpenAI's `param`), the value, the rule and the fix.
"""

from __future__ import annotations

import json

from tuneloop.errors import UserError

MAX_BODY_TOKENS = 4096  # max_tokens / max_completion_tokens ceiling (the model's context also caps it)
MAX_BODY_BYTES = 4 * 1024 * 1024  # a request body larger than this is refused (413) before it is parsed
MAX_STOPS = 4
GREEDY_BELOW = 1e-5  # temperatures below this decode greedily: sampling would pick the top token anyway,
# and dividing logits by ~0 overflows to inf/nan in the sampler


def short(value: object, limit: int = 80) -> str:
    """A value as shown in an error message: repr, cut to `limit` characters."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


class BadField(UserError):
    """A request field that breaks a rule; `param` names it (OpenAI's error `param`)."""

    def __init__(self, param: str, value: object, rule: str, fix: str):
        self.param = param
        super().__init__(f"{param}={short(value)}", rule, fix)


class BodyTooLarge(UserError):
    def __init__(self, size: int):
        super().__init__(f"request body of more than {size} bytes", f"a request body is at most {MAX_BODY_BYTES} "
                         "bytes", "send a shorter prompt")


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nested too deep
        raise UserError("request body", "must be a JSON object", "send Content-Type: application/json and a "
                        "JSON object") from None
    if not isinstance(body, dict):
        raise UserError("request body", f"must be a JSON object, not a JSON {type(body).__name__}",
                        "send a JSON object")
    return body


def text(param: str, value: str) -> str:
    """A string the tokenizer can take: valid Unicode (JSON allows lone surrogates such as \\ud800)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadField(param, value[max(0, e.start - 10): e.end + 10],
                       f"must be valid Unicode text (it holds a lone surrogate at character {e.start})",
                       "send UTF-8 text; pair surrogates or drop them") from None
    return value


def number(body: dict, key: str, default, lo, hi, kind=float):
    """body[key] as `kind` within [lo, hi]; null or absent gives `default` (None: the field is required)."""
    v = body.get(key)
    if v is None:
        if default is None:
            raise BadField(key, v, f"is required: a number between {lo} and {hi}", f"send {key}")
        return default
    integral = kind is int
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and (not integral or v.is_integer()))):
        raise BadField(key, v, f"must be {'an integer' if integral else 'a number'} between {lo} and {hi}",
                       f"send {key} as a JSON number")
    if not lo <= v <= hi:  # compares ints exactly (no float overflow); NaN and infinities fail here
        raise BadField(key, v, f"must be between {lo} and {hi}", f"send a {key} in that range")
    return kind(v)


def stops(body: dict) -> list[str]:
    s = body.get("stop")
    if s is None:
        return []
    if isinstance(s, str):
        return [text("stop", s)]
    if isinstance(s, list) and all(isinstance(x, str) for x in s) and len(s) <= MAX_STOPS:
        return [text("stop", x) for x in s]
    raise BadField("stop", s, f"must be a string or a list of at most {MAX_STOPS} strings", "fix the stop field")


def messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadField("messages", msgs, "must be a non-empty list of {role, content} objects",
                       'send e.g. [{"role": "user", "content": "hello"}]')
    out = []
    for i, m in enumerate(msgs):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadField(at, m, "each message is an object with role and content", "send {role, content}")
        role = m.get("role")
        if not isinstance(role, str) or role not in ("system", "user", "assistant", "developer"):
            raise BadField(f"{at}.role", role, "must be system, user, assistant or developer",
                           "fix the message's role")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text ones only
            parts = []
            for k, p in enumerate(content):
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise BadField(f"{at}.content[{k}]", p, 'content parts must be {"type": "text", "text": '
                                   'string}: this server takes text only', "send text parts or a string")
                parts.append(p["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise BadField(f"{at}.content", content, "must be a string or a list of text parts", "send text")
        out.append({"role": "system" if role == "developer" else role, "content": text(f"{at}.content", content)})
    return out


def prompt(body: dict) -> str:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str):
        raise BadField("prompt", p, "must be a string (or a list of one string)", "send one prompt per request")
    return text("prompt", p)


def generation(body: dict, kind: str) -> dict:
    """The engine's arguments from a chat or completion body (`streaming` reads the stream fields)."""
    streaming(body)
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, float)) or n != 1):
        raise BadField("n", n, "only n=1 (one choice per request) is supported", "send n=1 or leave it out")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = number(body, key, 64 if kind == "chat" else 16, 1, MAX_BODY_TOKENS, int)
    temperature = number(body, "temperature", 0.0, 0.0, 2.0)
    seed = body.get("seed")
    return dict(max_tokens=max_tokens, temperature=0.0 if temperature < GREEDY_BELOW else temperature,
                top_p=number(body, "top_p", 1.0, 0.0, 1.0), stop=stops(body),
                seed=None if seed is None else number(body, "seed", 0, -2**63, 2**63 - 1, int))


def streaming(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage) from `stream` and `stream_options` ({"include_usage": bool})."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadField("stream", stream, "must be true or false", "send stream=true or stream=false")
    opts = body.get("stream_options")
    if opts is None:
        return bool(stream), False
    if not stream:  # the error names stream if the body has it, else stream_options
        if "stream" in body:
            raise BadField("stream", stream, "stream_options is given, and it only goes with stream=true",
                           "send stream=true or drop stream_options")
        raise BadField("stream_options", opts, "only goes with stream=true", "send stream=true or drop "
                       "stream_options")
    if not isinstance(opts, dict):
        raise BadField("stream_options", opts, 'must be an object such as {"include_usage": true}',
                       'send {"include_usage": true} or leave it out')
    unknown = sorted(map(str, set(opts) - {"include_usage", "include_obfuscation"}))
    if unknown:
        raise BadField(f"stream_options.{unknown[0]}", opts[unknown[0]], "stream_options takes include_usage "
                       "(and include_obfuscation, which this server ignores)", "drop the other keys")
    usage = opts.get("include_usage", False)
    if not isinstance(usage, bool):
        raise BadField("stream_options.include_usage", usage, "must be true or false", "send true or false")
    return True, usage


def model(body: dict, served_name: str) -> str:
    m = body.get("model")
    if m is None or m == "":
        return served_name
    if not isinstance(m, str):
        raise BadField("model", m, "must be a string", f"send model={served_name!r}")
    return m
