"""Many LoRA adapters served on one shared copy of each base model.

A merged `Engine` holds a whole model per fine-tuned version, so a tenant's
dozens of fine-tunes would cost dozens of base copies. An `AdapterPool` loads
each base once and attaches adapters to it unmerged with peft (a few small
extra matmuls per layer), loading an adapter on its first request and keeping
it in an LRU bounded by its measured bytes. `pool.engine(base_id, (name,
folder))` returns an engine with the merged Engine's `chat`/`complete`: the
generation code is Engine's own; only the hook that picks the model to run
(`_activated`) differs, selecting the adapter under the base's lock.

Locks: requests on one base serialize on that base's lock (a CPU forward
already uses every core, and peft's active adapter is per model); different
bases run in parallel. Loading, evicting and unloading an adapter change its
base's modules, so they too happen under that base's lock. An adapter on
another base is evicted only if its lock is free at that moment (no request
is running there), so a request never loses its adapter mid-generation; when
every candidate is busy the pool stays over budget until a later load (see
`over_budget` in `stats`). The budget is checked after a load, measured on
the loaded tensors, so memory may briefly exceed it by the adapter being
loaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuneloop.errors import UserError
from tuneloop.serving.engine import Engine

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@dataclass
class _Base:
    """One base model shared by every adapter on it; `peft` is the PeftModel wrapping it once an adapter
    has been attached (peft injects its layers into `model` in place, so `model` stays the same object)."""

    base_id: str
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    model: object = None
    tok: object = None
    peft: object = None
    active: str | None = None  # peft's active adapter key, if known: set_adapter walks every module


@dataclass
class _Loaded:
    name: str
    key: str  # peft's adapter name: module-dict keys may not hold '.', which model names can
    folder: Path
    base_id: str
    nbytes: int
    last_used: float


@dataclass
class PooledEngine(Engine):
    """An Engine whose model is a shared base: generation selects this engine's adapter (loading it again
    if it was evicted) or, for the bare base, disables all adapters, under the base's lock."""

    pool: "AdapterPool | None" = field(default=None, repr=False)
    base: _Base | None = field(default=None, repr=False)
    adapter: tuple[str, Path] | None = None

    @contextmanager
    def _activated(self):
        with self._lock, self.pool._selected(self.base, self.adapter) as model:
            yield model


def _default_load_base(base_id: str):
    from tuneloop.models.base import load_model, load_tokenizer, resolve_base_model
    from tuneloop.settings import get_settings

    path = resolve_base_model(base_id, get_settings().models_dir, log=lambda m: None)
    return load_model(path), load_tokenizer(path)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


class AdapterPool:
    """Bases loaded once each; adapters attached on demand, least recently used evicted past `budget_bytes`."""

    def __init__(self, budget_bytes: int = 512 * 2**20, load_base: Callable[[str], tuple] | None = None):
        if not isinstance(budget_bytes, int) or isinstance(budget_bytes, bool) or budget_bytes < 0:
            raise UserError(f"budget_bytes={budget_bytes!r}", "the adapter budget is a whole number of bytes, 0 "
                            "or more", "pass e.g. 512 * 2**20 for 512 MiB")
        self.budget_bytes = budget_bytes
        self._load_base = load_base or _default_load_base
        self._mu = threading.Lock()  # the tables below; never held while waiting for a base's lock
        self._bases: dict[str, _Base] = {}
        self._lru: OrderedDict[str, _Loaded] = OrderedDict()  # least recently used first
        self._used = 0
        self.counts = {"base_loads": 0, "loads": 0, "hits": 0, "evictions": 0, "unloads": 0, "over_budget": 0}

    # -- public ---------------------------------------------------------------------------------------------
    def engine(self, base_id: str, adapter: tuple[str, Path] | None = None) -> PooledEngine:
        """An engine for `base_id` bare (adapter None) or with `adapter` = (unique name, peft adapter folder).

        Loads the base if this is its first use. The adapter itself loads on the engine's first generation
        (and again after an eviction); its folder is checked here so a bad one fails before any queue."""
        base = self._base(base_id)
        if adapter is not None:
            name, folder = adapter[0], Path(adapter[1])
            with self._mu:
                loaded = self._lru.get(name)
            if loaded is None:
                self._inspect(name, folder, base)
            elif loaded.base_id != base_id:
                raise UserError(f"adapter {name!r}", f"is loaded on base {loaded.base_id!r}, not {base_id!r}; an "
                                "adapter name stands for one fine-tuned model on one base",
                                "ask for it with the base it was trained on, or give the other model another name")
            adapter = (name, folder)
        return PooledEngine(version=adapter[0] if adapter else "base", model=base.model, tok=base.tok,
                            base_model=base_id, _lock=base.lock, pool=self, base=base, adapter=adapter)

    def stats(self) -> dict:
        with self._mu:
            return {
                "bases": sorted(b for b, e in self._bases.items() if e.model is not None),
                "adapters": [{"name": a.name, "base": a.base_id, "bytes": a.nbytes, "last_used": a.last_used}
                             for a in self._lru.values()],  # least recently used first
                "budget_bytes": self.budget_bytes, "bytes_used": self._used, **self.counts}

    def unload(self, name: str) -> bool:
        """Detach adapter `name` (e.g. its model was deleted); False if it was not loaded. Waits for a
        request running on its base to finish."""
        with self._mu:
            loaded = self._lru.get(name)
        if loaded is None:
            return False
        base = self._bases[loaded.base_id]
        with base.lock, self._mu:
            if self._lru.get(name) is not loaded:  # evicted or replaced meanwhile
                return False
            self._drop(base, loaded)
            self.counts["unloads"] += 1
        return True

    # -- bases ----------------------------------------------------------------------------------------------
    def _base(self, base_id: str) -> _Base:
        with self._mu:
            base = self._bases.setdefault(base_id, _Base(base_id))
        if base.model is None:
            with base.lock:  # concurrent first requests: one loads, the others wait for it
                if base.model is None:
                    model, tok = self._load_base(base_id)
                    model.eval()
                    base.tok, base.model = tok, model
                    with self._mu:
                        self.counts["base_loads"] += 1
        return base

    # -- selection, under the base's lock -------------------------------------------------------------------
    @contextmanager
    def _selected(self, base: _Base, adapter: tuple[str, Path] | None):
        """The model to generate with, its adapter active; the caller holds `base.lock`."""
        if adapter is None:
            if base.peft is not None and base.peft.peft_config:
                with base.peft.disable_adapter():
                    yield base.model
            else:  # no adapter attached (or all evicted): peft's layers, if any, hold none
                yield base.model
            return
        key = self._attach(base, *adapter)
        if base.active != key:
            base.peft.set_adapter(key, inference_mode=True)
            base.active = key
        yield base.peft

    def _attach(self, base: _Base, name: str, folder: Path) -> str:
        """peft's key for adapter `name` on `base`, loading it (and evicting others) if it is not loaded."""
        with self._mu:
            loaded = self._lru.get(name)
            if loaded is not None:
                if loaded.base_id != base.base_id:
                    raise UserError(f"adapter {name!r}", f"is loaded on base {loaded.base_id!r}, not "
                                    f"{base.base_id!r}", "ask for it with the base it was trained on")
                self._lru.move_to_end(name)
                loaded.last_used = time.time()
                self.counts["hits"] += 1
                return loaded.key
        key = "a" + hashlib.sha256(name.encode()).hexdigest()[:16]
        self._inspect(name, folder, base)
        self._load(base, name, folder, key)
        nbytes = self._measure(base, key)
        if nbytes > self.budget_bytes:
            self._detach(base, key)
            raise UserError(f"adapter {name!r} ({folder})",
                            f"it takes {nbytes} bytes ({_mib(nbytes)}) once loaded, more than the whole adapter "
                            f"budget of {self.budget_bytes} bytes ({_mib(self.budget_bytes)})",
                            f"raise the pool's budget_bytes to at least {nbytes}")
        with self._mu:
            self._lru[name] = _Loaded(name, key, folder, base.base_id, nbytes, time.time())
            self._used += nbytes
            self.counts["loads"] += 1
            self._evict(keep=name, holding=base)
        return key

    def _load(self, base: _Base, name: str, folder: Path, key: str) -> None:
        from peft import PeftModel

        base.active = None
        try:
            if base.peft is None:
                base.peft = PeftModel.from_pretrained(base.model, str(folder), adapter_name=key)
            else:
                base.peft.load_adapter(str(folder), adapter_name=key)
        except Exception as e:  # shapes or modules that do not fit this base, unreadable weights
            self._undo(base, key)
            raise UserError(f"adapter {name!r} ({folder})", f"peft could not attach it to base "
                            f"{base.base_id!r}: {type(e).__name__}: {' '.join(str(e).split())[:300]}",
                            "check that the adapter was trained on this base and its files are complete "
                            "(re-export or retrain it)") from e
        missing = self._missing(base, key, folder)
        if missing:
            self._detach(base, key)
            raise UserError(f"adapter {name!r} ({folder})", f"{WEIGHTS} lacks {len(missing)} tensor(s) its "
                            f"config calls for, e.g. {missing[0]}", "re-export the adapter (its files are incomplete)")

    def _undo(self, base: _Base, key: str) -> None:
        """Remove whatever a failed load left on the base, so the pool stays usable."""
        if base.peft is not None:
            if key in base.peft.peft_config:
                self._detach(base, key)
            return
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        # PeftModel.from_pretrained wraps the base's modules in place and hangs its config dict on the base
        # before it loads weights; a later attach would otherwise find both.
        for path, module in list(base.model.named_modules()):
            if not path or not isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
                continue
            original = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module.original_module
            parent, _, child = path.rpartition(".")
            setattr(base.model.get_submodule(parent) if parent else base.model, child, original)
        if "peft_config" in vars(base.model):
            del base.model.peft_config

    def _detach(self, base: _Base, key: str) -> None:
        base.active = None
        others = [k for k in base.peft.peft_config if k != key]
        if others and key in base.peft.active_adapters:  # else peft warns that it switched the active one
            base.peft.set_adapter(others[0], inference_mode=True)
        base.peft.delete_adapter(key)

    @staticmethod
    def _params(base: _Base, key: str):
        for n, p in base.peft.named_parameters():
            if f".{key}." in n or n.endswith(f".{key}"):
                yield n, p

    def _measure(self, base: _Base, key: str) -> int:
        return sum(p.nbytes for _, p in self._params(base, key))

    def _missing(self, base: _Base, key: str, folder: Path) -> list[str]:
        """Adapter parameters the weights file did not provide (peft leaves them at their initial values)."""
        from safetensors import safe_open

        with safe_open(str(folder / WEIGHTS), framework="pt") as f:
            saved = set(f.keys())
        return [n.replace(f".{key}", "") for n, _ in self._params(base, key) if n.replace(f".{key}", "") not in saved]

    # -- eviction, under self._mu ---------------------------------------------------------------------------
    def _evict(self, keep: str, holding: _Base) -> None:
        for name in list(self._lru):  # least recently used first
            if self._used <= self.budget_bytes:
                return
            if name == keep:
                continue
            loaded = self._lru[name]
            base = self._bases[loaded.base_id]
            if base is holding:
                self._drop(base, loaded)
            elif base.lock.acquire(blocking=False):  # busy: a request may be using it right now
                try:
                    self._drop(base, loaded)
                finally:
                    base.lock.release()
            else:
                continue
            self.counts["evictions"] += 1
        if self._used > self.budget_bytes:
            self.counts["over_budget"] += 1

    def _drop(self, base: _Base, loaded: _Loaded) -> None:
        del self._lru[loaded.name]
        self._used -= loaded.nbytes
        self._detach(base, loaded.key)

    # -- checks before loading ------------------------------------------------------------------------------
    def _inspect(self, name: str, folder: Path, base: _Base) -> None:
        """Refuse a folder that is missing, unsafe, corrupt or made for another base, before peft touches the
        shared model: reads adapter_config.json and the weights' header only."""
        from safetensors import safe_open

        from tuneloop.runtime.safety import refuse_pickles

        what = f"adapter {name!r} ({folder})"
        if not folder.is_dir() or not (folder / CONFIG).is_file():
            lack = f"no {CONFIG}" if folder.is_dir() else "no such folder"
            raise UserError(what, f"is not a peft adapter folder: {lack}",
                            "point the model at the folder `save_pretrained` wrote (adapter_config.json and "
                            f"{WEIGHTS}), or unregister the model")
        refuse_pickles(folder, what)
        try:
            config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(what, f"{CONFIG} is not valid JSON ({e})", "re-export the adapter") from e
        if config.get("peft_type") != "LORA":
            raise UserError(what, f"peft_type is {config.get('peft_type')!r}; the pool serves LoRA adapters",
                            "serve it merged (one model per version) or retrain it as LoRA")
        if not (folder / WEIGHTS).is_file():
            raise UserError(what, f"has no {WEIGHTS}", "re-export the adapter with safetensors weights")
        try:
            with safe_open(str(folder / WEIGHTS), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types on a bad header
            raise UserError(what, f"{WEIGHTS} is unreadable ({type(e).__name__}: {e})",
                            "re-export the adapter (the file is corrupt or truncated)") from e
        trained_on = config.get("base_model_name_or_path")
        hint = f" (its config says it was trained on {trained_on!r})" if trained_on else ""
        for k, shape in shapes.items():
            path, sep, rest = k.removeprefix("base_model.model.").partition(".lora_")
            if not sep or rest not in ("A.weight", "B.weight"):
                continue  # other tensors (modules_to_save, ...): peft checks them on load
            try:
                module = base.model.get_submodule(path)
            except AttributeError:
                raise UserError(what, f"targets module {path!r}, which base {base.base_id!r} does not have{hint}",
                                "serve it on the base it was trained on") from None
            module = getattr(module, "base_layer", module)  # already wrapped by an earlier adapter
            dims = (getattr(module, "in_features", None), getattr(module, "out_features", None))
            if None in dims or len(shape) != 2:
                continue
            want = dims[0] if rest == "A.weight" else dims[1]
            got = shape[1] if rest == "A.weight" else shape[0]
            if got != want:
                raise UserError(what, f"its {k} has shape {list(shape)}, but {path} of base {base.base_id!r} "
                                f"takes {dims[0]} inputs and gives {dims[1]} outputs{hint}",
                                "serve it on the base it was trained on")
