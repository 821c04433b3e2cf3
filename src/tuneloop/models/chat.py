"""Turn chat messages into token ids, with labels on assistant tokens only.

Each message is rendered through the tokenizer's chat template and tokenized
piece by piece, so training and generation see exactly the same prompt ids.
"""

from __future__ import annotations

from tuneloop.errors import SpecError

IGNORE = -100

# Used by the locally built base and by base models that ship no chat template.
DEFAULT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _render(tok, messages: list[dict], gen: bool) -> str:
    if not messages:
        return ""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _pieces(tok, messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    pieces: list[tuple[str, bool]] = []
    done = ""

    def add(text: str, label: bool, full: str) -> None:
        nonlocal done
        if not full.startswith(done):
            raise SpecError(getattr(tok, "name_or_path", "tokenizer"),
                            "its chat template does not render conversations as prefixes of each other",
                            "set a simpler chat_template on the tokenizer")
        pieces.append((full[len(done):] if text is None else text, label))
        done = full

    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            head = _render(tok, messages[:i], True) if i else ""
            add(None, False, head)
            add(None, True, _render(tok, messages[: i + 1], False))
        else:
            add(None, False, _render(tok, messages[: i + 1], False))
    if add_generation_prompt:
        add(None, False, _render(tok, messages, True))
    return [(t, lab) for t, lab in pieces if t]


def encode_chat(tok, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """ids and labels (IGNORE except on assistant text) for one conversation."""
    ids: list[int] = []
    labels: list[int] = []
    if tok.bos_token_id is not None:
        ids.append(tok.bos_token_id)
        labels.append(IGNORE)
    for text, is_label in _pieces(tok, messages, add_generation_prompt):
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        if is_label and tok.eos_token_id in piece:  # nothing after the end token is the model's to say
            cut = piece.index(tok.eos_token_id) + 1
            labels.extend(piece[:cut] + [IGNORE] * (len(piece) - cut))
        else:
            labels.extend(piece if is_label else [IGNORE] * len(piece))
    return ids, labels


def count_tokens(tok):
    """A `count_tokens(messages)` callable for data validation."""
    return lambda messages: len(encode_chat(tok, messages)[0])
