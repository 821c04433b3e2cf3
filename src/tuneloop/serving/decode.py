"""Batching across requests: one decode loop per model, one forward per step for every active sequence.

A request becomes a `Generation`. The loop's thread takes new generations
between steps: each is prefilled alone (its own forward over its prompt, as a
one-at-a-time server would), then joins the running batch. Every step feeds
each active sequence's last token through the model once, all sequences in
one forward, with a shared KV cache that is left-padded to the longest
sequence and an attention mask and position ids per row, so a row's answer
does not depend on its neighbours: greedy answers equal one-at-a-time ones
(tests/serving/test_decode.py checks against `model.generate`). A sequence
leaves the batch when it ends (end-of-sequence token, a stop string,
`max_tokens`) or is cancelled (its client went away), and its rows of the
cache go with it.

Different adapters of one base share a batch: the loop passes peft's
`adapter_names` (one per row, "__base__" for the bare base), so each row goes
through its own LoRA weights. `join`/`leave` hooks let an adapter pool load
and pin an adapter for as long as a sequence uses it.

The loop holds the model's lock for each step (prefills included) and
releases it between steps, so adapter loads, evictions and unloads that take
the same lock happen between steps, never inside one.

Text comes out as it is made: `on_delta(text)` for each new piece, held back
while it could still be the start of a stop string, an incomplete character,
or (for chat, whose answer is stripped) trailing whitespace; the pieces
always join up to the final answer.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from tuneloop.errors import UserError

BASE_ROW = "__base__"  # peft's adapter name for "no adapter" in a mixed batch


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    load_s: float | None = None  # seconds spent loading the adapter for this request, if it was not loaded


class Cancelled(Exception):
    """The generation was cancelled before it finished (its client went away)."""


class Generation:
    """One request's generation: made by `DecodeLoop.submit`, fed by the loop's thread."""

    def __init__(self, ids: list[int], max_tokens: int, temperature: float, top_p: float, stop: list[str],
                 seed: int | None, strip: bool, adapter=None, on_delta: Callable[[str], None] | None = None,
                 on_done: Callable[[], None] | None = None):
        self.ids, self.max_tokens, self.temperature, self.top_p = ids, max_tokens, temperature, top_p
        self.stop = [s for s in stop if s]
        self.strip, self.adapter, self.on_delta, self.on_done = strip, adapter, on_delta, on_done
        self.generator = None
        if temperature > 0:
            self.generator = torch.Generator()
            self.generator.manual_seed(seed if seed is not None else torch.seed())
        self.tokens: list[int] = []
        self.text = ""  # the answer so far, stop strings cut
        self.sent = ""  # what on_delta has been given
        self.finish: str | None = None
        self.error: BaseException | None = None
        self.submitted = time.perf_counter()
        self.first_token_s: float | None = None  # seconds from submit to the first token
        self.key = None  # what the loop's join hook returned for this generation's adapter
        self.joined = False
        self.load_s: float | None = None  # set by a join hook that had to load this generation's adapter
        self._done = threading.Event()
        self._cancelled = False

    # -- the caller's side ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating (the loop drops the sequence before its next step)."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def result(self, timeout: float | None = None) -> Completion:
        if not self._done.wait(timeout):
            raise TimeoutError(f"no answer within {timeout} s")
        if self.error is not None:
            raise self.error
        return Completion(self.text.strip() if self.strip else self.text, len(self.ids), len(self.tokens),
                          self.finish or "length", self.load_s)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # -- the loop's side ------------------------------------------------------------------------------------
    def push(self, token: int, tok, eos: set[int]) -> bool:
        """Take the next token; True when the generation has ended."""
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.submitted
        if token in eos:
            self.finish = "stop"
        else:
            self.tokens.append(token)
            text = tok.decode(self.tokens, skip_special_tokens=True)
            cut = min((k for k in (text.find(s) for s in self.stop) if k >= 0), default=-1)
            if cut >= 0:
                text, self.finish = text[:cut], "stop"
            elif len(self.tokens) >= self.max_tokens:
                self.finish = "length"
            self.text = text
        self._emit()
        return self.finish is not None

    def _emit(self) -> None:
        if self.on_delta is None:
            return
        shown = self.text.lstrip() if self.strip else self.text
        if self.finish is None:  # hold back what the next tokens may still change
            if self.strip:
                shown = shown.rstrip()
            shown = shown.rstrip("\ufffd")  # an incomplete UTF-8 character
            held = max((n for s in self.stop for n in range(1, len(s)) if shown.endswith(s[:n])), default=0)
            shown = shown[: len(shown) - held]
        elif self.strip:
            shown = shown.rstrip()
        if len(shown) > len(self.sent) and shown.startswith(self.sent):
            delta, self.sent = shown[len(self.sent):], shown
            self.on_delta(delta)

    def end(self, error: BaseException | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self._done.set()
        if self.on_done is not None:
            self.on_done()


def _choose(logits: torch.Tensor, g: Generation) -> int:
    """The next token from one row of logits: argmax for greedy, else temperature and top-p sampling."""
    if g.generator is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / g.temperature, dim=-1)
    if g.top_p < 1.0:
        p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(p, 0) - p < g.top_p  # the smallest set whose mass reaches top_p
        keep[0] = True  # top_p 0: the most likely token alone
        probs = torch.zeros_like(probs).scatter(0, idx[keep], p[keep])
    return int(torch.multinomial(probs, 1, generator=g.generator))


class DecodeLoop:
    """A thread that decodes every submitted generation of one model together.

    `lock`: held for each step. `model_for(keys)`: (module to call, extra forward kwargs) for a batch whose
    rows have these `join` results. `join(generation)`: called under the lock when a generation enters (e.g.
    load and pin its adapter, setting `generation.load_s` if it loaded it); `leave(key)`: when it has left."""

    def __init__(self, tok, lock: threading.Lock, model_for: Callable, join: Callable = lambda g: None,
                 leave: Callable = lambda k: None, max_batch: int = 32, name: str = "model"):
        self.check_max_batch(max_batch)
        self.tok, self.lock, self.model_for, self.join, self.leave = tok, lock, model_for, join, leave
        self.max_batch, self.name = max_batch, name
        eos = tok.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else (min(self.eos) if self.eos else 0)
        self._cv = threading.Condition()
        self._pending: list[Generation] = []
        self._rows: list[Generation] = []  # the batch, row by row
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: [rows, heads, T, dim]
        self._mask: torch.Tensor | None = None  # [rows, T]: 1 where the cache holds a real token
        self._pos: list[int] = []  # each row's next position
        self._last: list[int] = []  # each row's last token, the next step's input
        self._thread: threading.Thread | None = None
        self.counts = {"steps": 0, "prefills": 0, "tokens": 0, "max_rows": 0, "cancelled": 0}

    @staticmethod
    def check_max_batch(max_batch) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise UserError(f"max_batch={max_batch!r}", "a batch holds 1 or more sequences",
                            "give --max-batch 1 (one at a time) or more")

    # -- the callers' side ----------------------------------------------------------------------------------
    def submit(self, g: Generation) -> Generation:
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"decode-{self.name}", daemon=True)
                self._thread.start()
            self._pending.append(g)
            self._cv.notify()
        return g

    @property
    def active(self) -> int:
        return len(self._rows) + len(self._pending)

    # -- the loop -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._rows:
                    if not self._cv.wait(timeout=10):
                        self._thread = None  # idle: the next submit starts a new thread
                        return
                room = self.max_batch - len(self._rows)
                new, self._pending = self._pending[:room], self._pending[room:]
            try:
                with self.lock, torch.inference_mode():
                    for g in new:
                        self._admit(g)
                    self._drop_cancelled()
                    if self._rows:
                        self._step()
            except Exception as e:  # a failed step fails every sequence in it; the loop goes on
                for g in self._rows:
                    self._finish(g, e)
                self._reset()

    def _finish(self, g: Generation, error: BaseException | None = None) -> None:
        try:
            if g.joined:
                g.joined = False
                self.leave(g.key)
        finally:
            g.end(error)

    def _reset(self) -> None:
        self._rows, self._kv, self._mask, self._pos, self._last = [], [], None, [], []

    def _admit(self, g: Generation) -> None:
        """Prefill one generation alone and put it in the batch (unless it ended on its first token)."""
        if g.cancelled:
            self.counts["cancelled"] += 1
            g.end(Cancelled())
            return
        try:
            g.key = self.join(g)
            g.joined = True
        except BaseException as e:  # e.g. an adapter that cannot load: this request fails, no other
            g.end(e)
            return
        try:
            from transformers import DynamicCache

            n = len(g.ids)
            model, kw = self.model_for([g.key])
            kw[_cache_arg(model)] = DynamicCache()
            out = model(input_ids=torch.tensor([g.ids]), attention_mask=torch.ones(1, n, dtype=torch.long),
                        position_ids=torch.arange(n).unsqueeze(0), use_cache=True, **kw)
            self.counts["prefills"] += 1
            token = _choose(out.logits[0, -1], g)
        except Exception as e:
            self._finish(g, e)
            return
        self.counts["tokens"] += 1
        if g.push(token, self.tok, self.eos):
            self._finish(g)
            return
        self._join_rows(g, _kv(out), n, token)

    def _join_rows(self, g: Generation, kv, n: int, token: int) -> None:
        if not self._rows:
            self._kv, self._mask = kv, torch.ones(1, n, dtype=torch.long)
        else:
            t = self._mask.shape[1]
            if n > t:  # the newcomer is longer: pad the batch on the left
                self._kv = [(_lpad(k, n - t), _lpad(v, n - t)) for k, v in self._kv]
                self._mask = torch.cat([torch.zeros(len(self._rows), n - t, dtype=torch.long), self._mask], 1)
                t = n
            self._kv = [(torch.cat([bk, _lpad(k, t - n)]), torch.cat([bv, _lpad(v, t - n)]))
                        for (bk, bv), (k, v) in zip(self._kv, kv)]
            row = torch.cat([torch.zeros(1, t - n, dtype=torch.long), torch.ones(1, n, dtype=torch.long)], 1)
            self._mask = torch.cat([self._mask, row])
        self._rows.append(g)
        self._pos.append(n)
        self._last.append(token)
        self.counts["max_rows"] = max(self.counts["max_rows"], len(self._rows))

    def _drop_cancelled(self) -> None:
        gone = [i for i, g in enumerate(self._rows) if g.cancelled]
        for i in gone:
            self.counts["cancelled"] += 1
            self._finish(self._rows[i], Cancelled())
        if gone:
            self._keep([i for i in range(len(self._rows)) if i not in set(gone)])

    def _step(self) -> None:
        from transformers import DynamicCache

        rows = len(self._rows)
        mask = torch.cat([self._mask, torch.ones(rows, 1, dtype=torch.long)], 1)
        model, kw = self.model_for([g.key for g in self._rows])
        kw[_cache_arg(model)] = DynamicCache(self._kv)
        out = model(input_ids=torch.tensor(self._last).unsqueeze(1), attention_mask=mask,
                    position_ids=torch.tensor(self._pos).unsqueeze(1), use_cache=True, **kw)
        self.counts["steps"] += 1
        self._kv = _kv(out)
        self._mask = mask
        logits = out.logits[:, -1]
        keep = []
        for i, g in enumerate(self._rows):
            token = _choose(logits[i], g)
            self.counts["tokens"] += 1
            self._pos[i] += 1
            self._last[i] = token
            if g.push(token, self.tok, self.eos):
                self._finish(g)
            else:
                keep.append(i)
        if len(keep) < rows:
            self._keep(keep)

    def _keep(self, keep: list[int]) -> None:
        """Keep only these rows of the batch; drop cache columns that are padding in every row left."""
        if not keep:
            self._reset()
            return
        idx = torch.tensor(keep)
        self._rows = [self._rows[i] for i in keep]
        self._pos = [self._pos[i] for i in keep]
        self._last = [self._last[i] for i in keep]
        mask = self._mask[idx]
        start = int((mask.cumsum(1) == 0).sum(1).min())  # leading columns with no real token in any row
        self._mask = mask[:, start:]
        self._kv = [(k[idx, :, start:], v[idx, :, start:]) for k, v in self._kv]


def _cache_arg(model) -> str:
    """The forward argument that takes the KV cache: `cache` in transformers 5.x, `past_key_values` before."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_arg_of(type(hf))


@functools.lru_cache(maxsize=None)
def _cache_arg_of(cls: type) -> str:  # once per model class, not per step
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _kv(out) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cache = getattr(out, "cache", None)
    cache = cache if cache is not None else out.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def _lpad(x: torch.Tensor, n: int) -> torch.Tensor:
    """`x` [rows, heads, T, dim] with `n` zero positions in front."""
    if n == 0:
        return x
    return torch.cat([x.new_zeros(x.shape[0], x.shape[1], n, x.shape[3]), x], 2)
