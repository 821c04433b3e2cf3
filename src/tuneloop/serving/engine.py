"""One loaded model that answers chat and completion requests.

A model is the base with a version's adapter merged in (peft's
`merge_and_unload`), so serving pays no adapter overhead per token. Calls are
serialized per model by a lock: a CPU forward already uses every core, and the
lock keeps a model's KV caches private to one request.

The generation path (`_generate`) is shared with the adapter pool
(`tuneloop.serving.adapters`): it runs whatever model `_activated` hands it,
under whatever lock that holds, so a pooled engine only overrides the hook
that loads and selects its adapter on the shared base.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneloop.errors import UserError


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


@dataclass
class Engine:
    """A tokenizer and a model ready to generate; `version` names what it serves (e.g. "v3" or "base")."""

    version: str
    model: object
    tok: object
    base_model: str = ""
    loaded_at: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, version: str, base_path: str, adapter_dir: str | Path | None, base_model: str = "") -> "Engine":
        from tuneloop.models.base import load_model, load_tokenizer

        tok = load_tokenizer(base_path)
        model = load_model(base_path)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        model.eval()
        return cls(version, model, tok, base_model or base_path)

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @contextmanager
    def _activated(self):
        """The model to run one generation on, held exclusively until the block ends: here the merged model
        under its lock. A pooled engine overrides this to select its adapter on a shared base."""
        with self._lock:
            yield self.model

    def _generate(self, ids: list[int], max_tokens: int, temperature: float, top_p: float,
                  stop: list[str], seed: int | None) -> Completion:
        if max_tokens < 1:
            raise UserError(max_tokens, "max_tokens must be at least 1", "ask for 1 or more tokens")
        if len(ids) + 1 > self.max_context:
            raise UserError(f"{len(ids)} prompt tokens",
                            f"the prompt must leave room for an answer within the model's context of "
                            f"{self.max_context} tokens", "shorten the prompt")
        max_tokens = min(max_tokens, self.max_context - len(ids))
        eos = self.tok.eos_token_id
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else eos
        kwargs = {"do_sample": False}
        if temperature > 0:
            kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p}
        with self._activated() as model, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                 dtype=torch.long), max_new_tokens=max_tokens, eos_token_id=eos,
                                 pad_token_id=pad, **kwargs)
        new = out[0, len(ids):].tolist()
        finish = "length"
        if eos is not None and eos in new:
            new, finish = new[: new.index(eos)], "stop"
        text = self.tok.decode(new, skip_special_tokens=True)
        for s in stop:
            k = text.find(s) if s else -1
            if k >= 0:
                text, finish = text[:k], "stop"
        return Completion(text, len(ids), len(new), finish)

    def chat(self, messages: list[dict], max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
             stop: list[str] | None = None, seed: int | None = None) -> Completion:
        from tuneloop.models.chat import encode_chat

        ids = encode_chat(self.tok, messages, add_generation_prompt=True)[0]
        out = self._generate(ids, max_tokens, temperature, top_p, stop or [], seed)
        out.text = out.text.strip()  # as the evaluation scores answers
        return out

    def complete(self, prompt: str, max_tokens: int = 16, temperature: float = 0.0, top_p: float = 1.0,
                 stop: list[str] | None = None, seed: int | None = None) -> Completion:
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        ids = bos + self.tok(prompt, add_special_tokens=False)["input_ids"]
        return self._generate(ids, max_tokens, temperature, top_p, stop or [], seed)
