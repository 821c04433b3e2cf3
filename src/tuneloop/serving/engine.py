"""One loaded model that answers chat and completion requests.

A model is the base with a version's adapter merged in (peft's
`merge_and_unload`), so serving pays no adapter overhead per token. Requests
are decoded together by the model's `DecodeLoop` (serving.decode): one
forward per step for every active sequence, new ones joining between steps,
at most `max_batch` at once (1: one at a time).

The adapter pool (`tuneloop.serving.adapters`) reuses this class: a pooled
engine only overrides `_decoder`, handing its requests to its shared base's
loop with its adapter named.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuneloop.errors import UserError
from tuneloop.serving.decode import Completion, DecodeLoop, Generation

__all__ = ["Completion", "Engine", "DEFAULT_MAX_BATCH"]

DEFAULT_MAX_BATCH = 32
_MADE = threading.Lock()  # making an engine's loop (not the model's lock: a step holds that)


class Answers:
    """`chat` and `complete` for anything whose `start(kind, payload, ...)` returns a Generation."""

    def chat(self, messages: list[dict], max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
             stop: list[str] | None = None, seed: int | None = None) -> Completion:
        return self.start("chat", messages, max_tokens, temperature, top_p, stop, seed).result()

    def complete(self, prompt: str, max_tokens: int = 16, temperature: float = 0.0, top_p: float = 1.0,
                 stop: list[str] | None = None, seed: int | None = None) -> Completion:
        return self.start("completion", prompt, max_tokens, temperature, top_p, stop, seed).result()


@dataclass
class Engine(Answers):
    """A tokenizer and a model ready to generate; `version` names what it serves (e.g. "v3" or "base")."""

    version: str
    model: object
    tok: object
    base_model: str = ""
    loaded_at: float = field(default_factory=time.time)
    max_batch: int = DEFAULT_MAX_BATCH
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _loop: DecodeLoop | None = field(default=None, repr=False)

    @classmethod
    def load(cls, version: str, base_path: str, adapter_dir: str | Path | None, base_model: str = "",
             max_batch: int = DEFAULT_MAX_BATCH) -> "Engine":
        from tuneloop.models.base import load_model, load_tokenizer

        tok = load_tokenizer(base_path)
        model = load_model(base_path)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        model.eval()
        return cls(version, model, tok, base_model or base_path, max_batch=max_batch)

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def _decoder(self) -> DecodeLoop:
        """The loop this engine's requests are decoded in (made on first use)."""
        with _MADE:
            if self._loop is None:
                model = self.model
                self._loop = DecodeLoop(self.tok, self._lock, lambda keys: (model, {}), max_batch=self.max_batch,
                                        name=self.version)
            return self._loop

    def _adapter(self):
        """What the loop's join hook gets for this engine's requests (a pooled engine's adapter)."""
        return None

    def _start(self, ids: list[int], max_tokens: int, temperature: float, top_p: float, stop: list[str],
               seed: int | None, strip: bool, on_delta, on_done) -> Generation:
        if max_tokens < 1:
            raise UserError(max_tokens, "max_tokens must be at least 1", "ask for 1 or more tokens")
        if len(ids) + 1 > self.max_context:
            raise UserError(f"{len(ids)} prompt tokens",
                            f"the prompt must leave room for an answer within the model's context of "
                            f"{self.max_context} tokens", "shorten the prompt")
        g = Generation(ids, min(max_tokens, self.max_context - len(ids)), temperature, top_p, stop, seed, strip,
                       self._adapter(), on_delta, on_done)
        return self._decoder().submit(g)

    def start(self, kind: str, payload, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
              stop: list[str] | None = None, seed: int | None = None,
              on_delta: Callable[[str], None] | None = None,
              on_done: Callable[[], None] | None = None) -> Generation:
        """Begin answering a chat (`payload` = messages) or a completion (`payload` = prompt text); returns the
        running Generation (`result()` waits for the answer, `cancel()` stops it). `on_delta(text)` is called
        from the loop's thread with each new piece of the answer, `on_done()` once it has ended."""
        if kind == "chat":
            from tuneloop.models.chat import encode_chat

            ids = encode_chat(self.tok, payload, add_generation_prompt=True)[0]
        else:
            bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
            ids = bos + self.tok(payload, add_special_tokens=False)["input_ids"]
        # a chat answer is stripped, as the evaluation scores answers
        return self._start(ids, max_tokens, temperature, top_p, stop or [], seed, kind == "chat", on_delta,
                           on_done)
