"""vLLM as the serving engine: the blue and green slots hold LoRA adapters loaded into a vLLM server.

    vllm serve BASE --enable-lora --max-loras 4 --max-lora-rank 64     # with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
    tuneloop serve --engine vllm --vllm-url http://gpu-host:8000 [--vllm-key-env VLLM_API_KEY]

vLLM serves the base and any number of adapters by name, but has no alias
that an application's model name could point to, and no plan for moving
traffic. So `tuneloop serve` stays the server the application and the
promote flow talk to, with the same OpenAI routes and admin routes; only what
a slot holds changes:

- loading a version into a slot sends vLLM's documented
  `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`, the name being
  `<served name>-<slot>-<version>` and the path the version's adapter folder
  (its files checked against the registry's sha256 first; vLLM must see the
  same path: one machine, or a disk both mount); "base" is vLLM's base model;
- a request routed to a slot (the served name, the canary's share, or a pin
  such as `tuneloop@green` that the promote flow validates with) goes to vLLM
  with that adapter's name, streamed or not; stop strings and sampling are
  vLLM's, chat answers are stripped as the built-in engine strips them;
- unloading a slot, or loading another version over it, sends
  `POST /v1/unload_lora_adapter`; a rollback ends the canary or switches
  back, then unloads the rolled-back candidate;
- `/health` includes vLLM's `/health`, and `/metrics` appends vLLM's own.

`scripts/vllm_promote.sh` runs a promotion and a rollback against a real
vLLM on a GPU machine; `tests/serving/test_vllm.py` runs them against
`tests/fakes/vllm_server.py`, a local server speaking the same routes.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx

from tuneloop.errors import TuneloopError, UserError
from tuneloop.runtime.http import HttpClient
from tuneloop.serving.decode import Cancelled, Completion, Generation
from tuneloop.serving.engine import Answers

class VllmError(TuneloopError):
    """vLLM refused or failed a call."""

    def __init__(self, message: str, http_status: int = 502):
        super().__init__(message)
        self.http_status = http_status


def _message(r: httpx.Response) -> str:
    """vLLM's error text: `{"object": "error", "message"}`, OpenAI's `{"error": {"message"}}`, or the body."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:300] or r.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            return str(body["error"].get("message"))
        if "message" in body:
            return str(body["message"])
    return json.dumps(body)[:300]


class VllmClient(HttpClient):
    """vLLM's routes that the slots use, with `HttpClient`'s retries (loads and unloads are not replayed once
    sent: a lost answer raises, and the next load or unload finds the state by the model list)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0, max_retries: int = 2):
        super().__init__(url.rstrip("/").removesuffix("/v1"), "the vLLM server",
                          headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
                          timeout=timeout, max_retries=max_retries, backoff=0.5, max_backoff=8.0)
        self._owners: dict[str, object] = {}  # lora name -> the engine that loaded it
        self._mu = threading.Lock()

    def refused(self, r: httpx.Response, method: str, path: str, sent: dict | None) -> TuneloopError:
        text = _message(r)
        msg = f"vLLM answered {method} {path} with {r.status_code}: {text}"
        if path == "/v1/load_lora_adapter" and r.status_code == 404:
            if "adapter" in text.lower():  # vLLM cannot read the folder it was given
                return UserError(str((sent or {}).get("lora_path")), f"{msg}; vLLM reads the adapter from this "
                                 "path on its own machine", "run vLLM where the registry's folders are at the same "
                                 "path (one machine, or a disk both mount)")
            return UserError(self.base_url, f"{msg}; this vLLM does not take adapters at run time",
                             "start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
        if 400 <= r.status_code < 500:
            return UserError(f"{method} {path}", msg, "check the adapter and vLLM's --max-lora-rank / --max-loras")
        return VllmError(msg)

    # -- what vLLM serves -----------------------------------------------------------------------------------
    def models(self) -> list[dict]:
        return self.json("GET", "/v1/models").get("data", [])

    def base_model(self) -> str:
        """The id of vLLM's base model (the entry of /v1/models with no parent)."""
        bases = [m["id"] for m in self.models() if not m.get("parent")]
        if not bases:
            raise VllmError(f"{self.base_url}/v1/models lists no base model")
        return bases[0]

    def loaded(self) -> dict[str, str]:
        """lora name -> path of the adapters vLLM has loaded."""
        return {m["id"]: m.get("root", "") for m in self.models() if m.get("parent")}

    def health(self) -> dict:
        try:
            r = self.http.get(f"{self.base_url}/health", timeout=5)
            return {"ok": r.status_code == 200, "url": self.base_url, "status": r.status_code}
        except httpx.HTTPError as e:
            return {"ok": False, "url": self.base_url, "error": f"{type(e).__name__}: {e}"}

    def metrics_text(self) -> str:
        try:
            r = self.http.get(f"{self.base_url}/metrics", timeout=5)
            return r.text if r.status_code == 200 else ""
        except httpx.HTTPError:
            return ""

    # -- adapters -------------------------------------------------------------------------------------------
    def load_lora(self, name: str, path: str, owner: object) -> float:
        """Load adapter `path` as `name` (replacing an adapter of that name left from before); its seconds."""
        t0 = time.perf_counter()
        if name in self.loaded():  # e.g. the server restarted while vLLM kept it: load it fresh
            self.request("POST", "/v1/unload_lora_adapter", json_body={"lora_name": name})
        self.request("POST", "/v1/load_lora_adapter", json_body={"lora_name": name, "lora_path": path})
        with self._mu:
            self._owners[name] = owner
        return time.perf_counter() - t0

    def unload_lora(self, name: str, owner: object) -> bool:
        """Unload `name` if `owner` loaded it last (a newer load of the same name keeps it)."""
        with self._mu:
            if self._owners.get(name) is not owner:
                return False
            del self._owners[name]
        r = self.request("POST", "/v1/unload_lora_adapter", json_body={"lora_name": name}, expect=(404,))
        return r.status_code == 200


class RemoteGeneration(Generation):
    """A generation that vLLM runs: a thread reads vLLM's stream and feeds the text in; `cancel()` closes the
    stream (vLLM aborts a request whose client went away)."""

    def __init__(self, client: VllmClient, model: str, kind: str, payload, max_tokens: int, temperature: float,
                 top_p: float, stop: list[str], seed: int | None, on_delta=None, on_done=None):
        super().__init__([], max_tokens, 0.0, top_p, [], None, kind == "chat", None, on_delta, on_done)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self._body = {"model": model, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
                      "stream": True, "stream_options": {"include_usage": True},
                      **({"stop": stop} if stop else {}), **({"seed": seed} if seed is not None else {}),
                      **({"messages": payload} if kind == "chat" else {"prompt": payload})}
        self._path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        self._client = client
        threading.Thread(target=self._run, name=f"vllm-{model}", daemon=True).start()

    def _run(self) -> None:
        error = None
        try:
            with self._client.http.stream("POST", f"{self._client.base_url}{self._path}", json=self._body) as r:
                if r.status_code != 200:
                    r.read()
                    msg = f"vLLM answered {r.status_code}: {_message(r)}"
                    raise (UserError(self._body["model"], msg, "check the request") if r.status_code in (400, 422)
                           else VllmError(msg, 503 if r.status_code == 404 else 502))
                for line in r.iter_lines():
                    if self.cancelled:
                        raise Cancelled()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    self._take(json.loads(data))
        except Cancelled as e:
            error = e
        except TuneloopError as e:
            error = e
        except (httpx.HTTPError, ValueError) as e:
            error = VllmError(f"the vLLM stream failed ({type(e).__name__}: {e})")
        if error is None and self.finish is None:
            self.finish = "length"
        if error is None:
            self._emit()
        self.end(error)

    def _take(self, chunk: dict) -> None:
        if "error" in chunk:
            raise VllmError(f"vLLM failed mid-answer: {_message_of(chunk)}")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
            if piece:
                if self.first_token_s is None:
                    self.first_token_s = time.perf_counter() - self.submitted
                self.text += piece
            if choice.get("finish_reason"):
                self.finish = "stop" if choice["finish_reason"] == "stop" else "length"
            self._emit()

    def result(self, timeout: float | None = None) -> Completion:
        if not self._done.wait(timeout):
            raise TimeoutError(f"no answer within {timeout} s")
        if self.error is not None:
            raise self.error
        return Completion(self.text.strip() if self.strip else self.text, int(self.usage.get("prompt_tokens", 0)),
                          int(self.usage.get("completion_tokens", 0)), self.finish or "length")


def _message_of(chunk: dict) -> str:
    err = chunk.get("error")
    return str(err.get("message")) if isinstance(err, dict) else str(err)


@dataclass
class VllmEngine(Answers):
    """A slot's model on vLLM: the base, or an adapter loaded under `lora_name`."""

    version: str
    client: VllmClient
    base_model: str
    lora_name: str | None = None
    load_s: float | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def model_name(self) -> str:
        return self.lora_name or self.base_model

    def start(self, kind: str, payload, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
              stop: list[str] | None = None, seed: int | None = None, on_delta=None,
              on_done=None) -> RemoteGeneration:
        if max_tokens < 1:
            raise UserError(max_tokens, "max_tokens must be at least 1", "ask for 1 or more tokens")
        return RemoteGeneration(self.client, self.model_name, kind, payload, max_tokens, temperature, top_p,
                                stop or [], seed, on_delta, on_done)

    def release(self) -> None:
        """The slot let go of this engine: unload its adapter from vLLM (unless loaded again since)."""
        if self.lora_name is not None:
            self.client.unload_lora(self.lora_name, self)


class VllmLoader:
    """Turns a version reference into a VllmEngine for a slot (the `Loader` the admin routes call)."""

    takes_slot = True  # the admin route passes the slot: the adapter's name in vLLM says which

    def __init__(self, registry, client: VllmClient, served_name: str = "tuneloop"):
        self.registry, self.client, self.served_name = registry, client, served_name

    def owner(self, ref: str) -> tuple[str, str]:
        from tuneloop.serving.app import DEFAULT_TENANT

        v = self.registry.get(ref)
        return v.id, v.manifest.get("tenant") or DEFAULT_TENANT

    def for_slot(self, slot: str):
        return lambda ref: self(ref, slot)

    def __call__(self, ref: str, slot: str = "blue") -> VllmEngine:
        base = self.client.base_model()
        if ref == "base":
            return VllmEngine("base", self.client, base)
        v = self.registry.get(ref)
        folder = self.registry.adapter_for(v.id)  # sha256 of every file checked (and fetched from S3) first
        engine = VllmEngine(v.id, self.client, base, f"{self.served_name}-{slot}-{v.id}")
        engine.load_s = self.client.load_lora(engine.lora_name, str(folder), engine)
        return engine
