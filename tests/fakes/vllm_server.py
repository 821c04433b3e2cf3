"""A local stand-in for a vLLM OpenAI-compatible server started with runtime LoRA updating
(`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), that really generates text with a real (tiny) model.

The base is a local Hugging Face folder, loaded with transformers in fp32; adapters are peft LoRA
folders (adapter_config.json + adapter_model.safetensors), loaded and unloaded at runtime. One lock
serializes every generation and every change to the model, so answers are reproducible. Speaks:

- GET  /health                  200, empty body (no auth)
- GET  /metrics                 Prometheus text, labeled model_name="<served name>" (no auth):
                                vllm:num_requests_running, vllm:num_requests_waiting (gauges),
                                vllm:request_success_total{finished_reason="stop"|"length"},
                                vllm:prompt_tokens_total, vllm:generation_tokens_total (counters),
                                vllm:e2e_request_latency_seconds (histogram); counted from requests served
- GET  /v1/models               the base card (root=base_path, max_model_len), then one card per loaded
                                LoRA (root=lora_path, parent=<served name>, max_model_len null)
- POST /v1/load_lora_adapter    {lora_name, lora_path} -> 200 text/plain "Success: LoRA adapter '<name>'
                                added successfully."; 400 when a field is missing or the name is loaded;
                                404 NotFoundError "Loading lora <name> failed: No adapter found for <path>"
                                when the folder or its adapter_config.json is missing (as vLLM does);
                                400 BadRequestError naming the path when the folder does not load
- POST /v1/unload_lora_adapter  {lora_name} -> 200 text/plain "Success: LoRA adapter '<name>' removed
                                successfully."; 404 NotFoundError for a name not loaded
- POST /v1/chat/completions     model (served name or a loaded LoRA, else 404), messages (chat template),
                                max_tokens / max_completion_tokens (default: the rest of the context, as
                                vLLM), temperature (0: greedy; >0: sampled; default 1.0), top_p, top_k,
                                seed, stop (str or list), stream, stream_options.include_usage; the
                                answer is stripped
- POST /v1/completions          prompt (a string), the same options (max_tokens default 16), not stripped

Streams are `data: <chunk JSON>\\n\\n` events ending with `data: [DONE]\\n\\n`, sent as one body. Errors
have vLLM's (<= 0.10) body {"object": "error", "message", "type", "param", "code"}; `nested_errors=True`
gives the newer {"error": {"message", "type", "param", "code"}}. With `api_key` set, /v1/* needs
`Authorization: Bearer <api_key>` (401 {"error": "Unauthorized"}). Unknown routes answer FastAPI's 404
{"detail": "Not Found"}, a wrong method on a known route 405. Not served (400 with a message saying
so): n != 1, logprobs, echo. Every request is recorded in `requests` as {"method", "path", "body"};
`loaded()` maps LoRA names to paths; `fail_next(n, status)` makes the next n generation requests
answer `status` with an error body.

    with FakeVllm(tiny_base, served_model_name="base-model", api_key="sk-v") as vllm:
        httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": "cand", "lora_path": adapter},
                   headers={"Authorization": "Bearer sk-v"})
        client = openai.OpenAI(base_url=vllm.url + "/v1", api_key="sk-v", max_retries=0)
        client.chat.completions.create(model="cand", messages=[...], temperature=0, max_tokens=16)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
import uuid
from http import HTTPStatus
from urllib.parse import urlparse

from fakes.base import Answer, FakeServer, json_answer

GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")
ROUTES = {"/health": "GET", "/metrics": "GET", "/v1/models": "GET", "/v1/load_lora_adapter": "POST",
          "/v1/unload_lora_adapter": "POST", "/v1/chat/completions": "POST", "/v1/completions": "POST"}
# vLLM's buckets for vllm:e2e_request_latency_seconds
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)


class RequestError(Exception):
    """Answered as a vLLM error body."""

    def __init__(self, status: int, message: str, kind: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or _error_type(status)


def _error_type(status: int) -> str:
    name = HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    return name if name.endswith("Error") else name + "Error"


class FakeVllm(FakeServer):
    name = "fake-vllm"

    def __init__(self, base_path: str, served_model_name: str = "base-model", api_key: str | None = None, *,
                 nested_errors: bool = False):
        super().__init__()
        self.base_path = str(base_path)
        self.served_model_name = served_model_name
        self.api_key = api_key
        self.nested_errors = nested_errors
        self.requests: list[dict] = []
        self._lock = threading.Lock()  # the model: every generation, load and unload
        self._state = threading.Lock()  # requests, counters, fail_next
        self._loras: dict[str, str] = {}
        self._fail, self._fail_status = 0, 500
        self._running = self._waiting = 0
        self._success = {"stop": 0, "length": 0}
        self._prompt_tokens = self._generation_tokens = 0
        self._latency_buckets = [0] * len(LATENCY_BUCKETS)
        self._latency_sum, self._latency_count = 0.0, 0

        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.base_path)
        self.base = self._load_base()
        self.peft = None  # the PeftModel wrapping `base` while at least one LoRA is loaded
        self.max_model_len = int(self.base.config.max_position_embeddings)

    def _load_base(self):
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.base_path, dtype=torch.float32).eval()

    # -- test helpers --------------------------------------------------------

    def loaded(self) -> dict[str, str]:
        with self._state:
            return dict(self._loras)

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._state:
            self._fail, self._fail_status = n, status

    # -- HTTP ----------------------------------------------------------------

    def serve(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        path = urlparse(target).path
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._state:
            self.requests.append({"method": method, "path": path, "body": body})
        if path.startswith("/v1") and self.api_key is not None \
                and headers.get("authorization") != f"Bearer {self.api_key}":
            return json_answer(401, {"error": "Unauthorized"})
        if path not in ROUTES:
            return json_answer(404, {"detail": "Not Found"})
        if method != ROUTES[path]:
            return json_answer(405, {"detail": "Method Not Allowed"}, {"Allow": ROUTES[path]})
        try:
            if path in GENERATION_ROUTES:
                with self._state:
                    failing, self._fail = self._fail > 0, max(self._fail - 1, 0)
                if failing:
                    raise RequestError(self._fail_status, f"fake vLLM: injected failure ({self._fail_status})")
            if path == "/health":
                return 200, {}, b""
            if path == "/metrics":
                return 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}, self._metrics().encode()
            if path == "/v1/models":
                return json_answer(200, self._models())
            if not isinstance(body, dict):
                raise RequestError(400, "The request body must be a JSON object.")
            if path == "/v1/load_lora_adapter":
                return _text(self._load(body))
            if path == "/v1/unload_lora_adapter":
                return _text(self._unload(body))
            return self._generate(body, chat=path == "/v1/chat/completions")
        except RequestError as e:
            return self._error(e)

    def _error(self, e: RequestError) -> Answer:
        info = {"message": e.message, "type": e.kind, "param": e.param, "code": e.status}
        return json_answer(e.status, {"error": info} if self.nested_errors else {"object": "error", **info})

    # -- models and adapters -------------------------------------------------

    def _models(self) -> dict:
        now = int(time.time())

        def card(id_: str, root: str, parent: str | None, max_len: int | None) -> dict:
            return {"id": id_, "object": "model", "created": now, "owned_by": "vllm", "root": root, "parent": parent,
                    "max_model_len": max_len, "permission": [_permission(now)]}

        cards = [card(self.served_model_name, self.base_path, None, self.max_model_len)]
        cards += [card(name, path, self.served_model_name, None) for name, path in self.loaded().items()]
        return {"object": "list", "data": cards}

    def _load(self, body: dict) -> str:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path or not isinstance(name, str) or not isinstance(path, str):
            raise RequestError(400, "Both 'lora_name' and 'lora_path' must be provided.", "BadRequestError")
        with self._lock:
            if name in self.loaded():
                raise RequestError(400, f"The lora adapter '{name}' has already been loaded.", "BadRequestError")
            if not os.path.isfile(os.path.join(path, "adapter_config.json")):
                raise RequestError(404, f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError")
            if not os.path.isfile(os.path.join(path, "adapter_model.safetensors")):
                raise RequestError(400, f"{path} doesn't contain tensors (this fake reads "
                                        "adapter_model.safetensors only)", "BadRequestError")
            try:
                self._attach(name, path)
            except Exception as e:
                raise RequestError(400, f"Loading lora {name} from {path} failed: {e}", "BadRequestError") from e
            with self._state:
                self._loras[name] = path
        return f"Success: LoRA adapter '{name}' added successfully."

    def _attach(self, name: str, path: str) -> None:
        from peft import PeftModel

        if self.peft is None:
            try:
                self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name).eval()
            except Exception:
                self.base = self._load_base()  # LoRA layers may be half injected: start from a clean base
                raise
            return
        try:
            self.peft.load_adapter(path, adapter_name=name)
            self.peft.eval()
        except Exception:
            if name in self.peft.peft_config:
                self._detach(name)
            raise

    def _unload(self, body: dict) -> str:
        name = body.get("lora_name")
        if not name or not isinstance(name, str):
            raise RequestError(400, "either 'lora_name' and 'lora_int_id' needs to be provided.", "BadRequestError")
        with self._lock:
            if name not in self.loaded():
                raise RequestError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            self._detach(name)
            with self._state:
                del self._loras[name]
        return f"Success: LoRA adapter '{name}' removed successfully."

    def _detach(self, name: str) -> None:
        others = [n for n in self.peft.peft_config if n != name]
        if not others:  # the last one: back to the plain base model
            self.base = self.peft.unload().eval()
            self.peft = None
            return
        if name in _active(self.peft):
            self.peft.set_adapter(others[0], inference_mode=True)
        self.peft.delete_adapter(name)

    # -- generation ----------------------------------------------------------

    def _generate(self, body: dict, chat: bool) -> Answer:
        started = time.monotonic()
        model = body.get("model") or self.served_model_name
        self._check_model(model)
        for key in ("n", "best_of"):
            if body.get(key) not in (None, 1):
                raise RequestError(400, f"fake vLLM serves {key}=1 only", param=key)
        for key in ("logprobs", "top_logprobs", "echo"):
            if body.get(key) not in (None, False):
                raise RequestError(400, f"fake vLLM does not serve {key}", param=key)
        stream = bool(body.get("stream"))
        if body.get("stream_options") is not None and not stream:
            raise RequestError(400, "Stream options can only be defined when `stream=True`.", param="stream_options")
        include_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
        prompt_ids = self._chat_ids(body.get("messages")) if chat else self._prompt_ids(body.get("prompt"))
        max_tokens = body.get("max_completion_tokens") if chat else None
        max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
        default = self.max_model_len - len(prompt_ids) if chat else 16
        max_tokens = default if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestError(400, f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
        if len(prompt_ids) + max_tokens > self.max_model_len:
            raise RequestError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, "
                                    f"you requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the "
                                    f"messages, {max_tokens} in the completion). Please reduce the length of the "
                                    "messages or completion.", param="max_tokens")
        sampling = _sampling(body)
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise RequestError(400, "stop must be a string or a list of strings", param="stop")

        with self._state:
            self._waiting += 1
        with self._lock:
            with self._state:
                self._waiting -= 1
                self._running += 1
            try:
                self._check_model(model)  # it may have been unloaded while this request waited
                new_ids = self._run(model, prompt_ids, max_tokens, **sampling)
            finally:
                with self._state:
                    self._running -= 1
        text, n_out, finish, stop_reason = self._finish(new_ids, max_tokens, [s for s in stops if s])
        if chat:
            text = text.strip()
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": n_out,
                 "total_tokens": len(prompt_ids) + n_out}
        self._count(finish, len(prompt_ids), n_out, time.monotonic() - started)
        rid = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model}
        if stream:
            return 200, {"Content-Type": "text/event-stream; charset=utf-8"}, \
                _stream(head, chat, text, finish, stop_reason, usage, include_usage)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice |= {"logprobs": None, "finish_reason": finish, "stop_reason": stop_reason}
        return json_answer(200, head | {"choices": [choice], "usage": usage})

    def _check_model(self, model) -> None:
        if model != self.served_model_name and model not in self.loaded():
            raise RequestError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")

    def _chat_ids(self, messages) -> list[int]:
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise RequestError(400, "messages must be a non-empty list of message objects", param="messages")
        flat = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):  # content parts: the text ones, joined as vLLM does for text templates
                content = "\n".join(p.get("text", "") for p in content
                                    if isinstance(p, dict) and p.get("type") == "text")
            flat.append({**m, "content": content if content is not None else ""})
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(400, "The tokenizer has no chat template; pass one to apply it.")
        try:
            out = self.tokenizer.apply_chat_template(flat, add_generation_prompt=True, tokenize=True)
        except Exception as e:
            raise RequestError(400, f"Could not apply the chat template: {e}", param="messages") from e
        return _token_list(out)

    def _prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError(400, "fake vLLM serves prompt as one non-empty string", param="prompt")
        return _token_list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def _run(self, model: str, prompt_ids: list[int], max_tokens: int, temperature: float, top_p: float,
             top_k: int, seed: int | None) -> list[int]:
        """New token ids (EOS included when reached); call with `_lock` held."""
        import contextlib

        import torch

        tok = self.tokenizer
        ids = torch.tensor([prompt_ids])
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_tokens,
                  "eos_token_id": tok.eos_token_id,
                  "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
        if temperature > 0:
            kwargs |= {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
        else:
            kwargs |= {"do_sample": False}
        if self.peft is None:
            net, scope = self.base, contextlib.nullcontext()
        elif model == self.served_model_name:
            net, scope = self.peft, self.peft.disable_adapter()
        else:
            self.peft.set_adapter(model, inference_mode=True)
            net, scope = self.peft, contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), torch.no_grad(), scope:
            torch.manual_seed(seed if seed is not None else secrets.randbits(63))
            out = net.generate(**kwargs)
        return [int(t) for t in out[0, len(prompt_ids):].tolist()]

    def _finish(self, new_ids: list[int], max_tokens: int, stops: list[str]) -> tuple[str, int, str, str | None]:
        """(text, completion tokens, finish_reason, stop_reason), cut at the first EOS, then the first stop."""
        eos = self.tokenizer.eos_token_id
        hit_eos = eos in new_ids
        body = new_ids[:new_ids.index(eos)] if hit_eos else new_ids
        text = self._decode(body)
        if stops and any(s in text for s in stops):
            for k in range(1, len(body) + 1):  # the token that completed the stop string ends the request
                part = self._decode(body[:k])
                hits = [(part.index(s), s) for s in stops if s in part]
                if hits:
                    at, stop = min(hits)
                    return part[:at], k, "stop", stop
        if hit_eos:
            return text, len(body) + 1, "stop", None
        return text, len(body), "length" if len(body) >= max_tokens else "stop", None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- metrics -------------------------------------------------------------

    def _count(self, finish: str, prompt_tokens: int, generation_tokens: int, seconds: float) -> None:
        with self._state:
            self._success[finish] += 1
            self._prompt_tokens += prompt_tokens
            self._generation_tokens += generation_tokens
            for i, le in enumerate(LATENCY_BUCKETS):
                if seconds <= le:
                    self._latency_buckets[i] += 1
            self._latency_sum += seconds
            self._latency_count += 1

    def _metrics(self) -> str:
        label = f'model_name="{self.served_model_name}"'
        with self._state:
            lines = []

            def family(name: str, kind: str, help_: str, samples: list[tuple[str, str, float]]) -> None:
                lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
                lines.extend(f"{name}{suffix}{{{extra}{label}}} {float(v)!r}" for suffix, extra, v in samples)

            family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
                   [("", "", self._running)])
            family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
                   [("", "", self._waiting)])
            family("vllm:request_success_total", "counter", "Count of successfully processed requests.",
                   [("", f'finished_reason="{r}",', n) for r, n in self._success.items()])
            family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
                   [("", "", self._prompt_tokens)])
            family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
                   [("", "", self._generation_tokens)])
            buckets = [("_bucket", f'le="{le}",', n) for le, n in zip(LATENCY_BUCKETS, self._latency_buckets)]
            buckets.append(("_bucket", 'le="+Inf",', self._latency_count))
            family("vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.",
                   buckets + [("_count", "", self._latency_count), ("_sum", "", self._latency_sum)])
        return "\n".join(lines) + "\n"


def _permission(now: int) -> dict:
    return {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": now,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
            "group": None, "is_blocking": False}


def _text(message: str) -> Answer:
    return 200, {"Content-Type": "text/plain; charset=utf-8"}, message.encode()


def _active(peft_model) -> list[str]:
    active = peft_model.active_adapter
    return [active] if isinstance(active, str) else list(active)


def _token_list(out) -> list[int]:
    """Token ids from a list, a tensor, or a BatchEncoding/dict, batched or not."""
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(t) for t in out]


def _number(body: dict, key: str, default: float, low: float, high: float | None = None) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low \
            or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise RequestError(400, f"{key} must be {bounds}, got {value}.", param=key)
    return float(value)


def _sampling(body: dict) -> dict:
    temperature = _number(body, "temperature", 1.0, 0.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise RequestError(400, f"top_p must be in (0, 1], got {top_p}.", param="top_p")
    top_k = body.get("top_k")
    if top_k is None or top_k == -1:
        top_k = 0  # vLLM's default: no top-k (transformers: 0 disables it)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise RequestError(400, f"top_k must be -1 (disable), or at least 1, got {top_k}.", param="top_k")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(400, "seed must be an integer", param="seed")
    return {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}


def _pieces(text: str) -> list[str]:
    """The text in word-sized pieces that join back to exactly the text."""
    return [p for p in re.split(r"(?<=\S)(?=\s)", text) if p]


def _stream(head: dict, chat: bool, text: str, finish: str, stop_reason: str | None, usage: dict,
            include_usage: bool) -> bytes:
    head = head | {"object": "chat.completion.chunk" if chat else "text_completion"}
    extra = {"usage": None} if include_usage else {}

    def chunk(piece: str | None, role: bool = False, done: bool = False) -> dict:
        if chat:
            delta = {} if done else ({"role": "assistant", "content": ""} if role else {"content": piece})
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": "" if done else piece}
        choice |= {"logprobs": None, "finish_reason": finish if done else None,
                   "stop_reason": stop_reason if done else None}
        return head | {"choices": [choice]} | extra

    chunks = ([chunk(None, role=True)] if chat else []) + [chunk(p) for p in _pieces(text)] + [chunk(None, done=True)]
    if include_usage:
        chunks.append(head | {"choices": [], "usage": usage})
    events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    return "".join(events).encode()
