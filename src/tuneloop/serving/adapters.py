"""Many LoRA adapters served on one shared copy of each base model.

A merged `Engine` holds a whole model per fine-tuned version, so a tenant's
dozens of fine-tunes would cost dozens of base copies. An `AdapterPool` loads
each base once and attaches adapters to it unmerged with peft (a few small
extra matmuls per layer), loading an adapter on its first request and keeping
it in an LRU bounded by its measured bytes. `pool.engine(base_id, (name,
folder))` returns an engine with the merged Engine's `chat`/`complete`: the
generation code is Engine's own; only the hook that picks the model to run
(`_activated`) differs, selecting the adapter under the base's lock.

Batching: each base has one decode loop (serving.decode) that runs every
request on that base together, whatever its adapter: peft's `adapter_names`
sends each row of a batch through its own adapter ("__base__" for the bare
base). A request pins its adapter from the step it joins to the step it
leaves; eviction skips pinned adapters, and an `unload` of a pinned one
waits (the adapter goes when its last request ends), so no request loses its
adapter mid-answer. Loading, evicting and unloading change the base's
modules, so they happen under the base's lock, which the loop holds for each
step and releases between steps. An adapter on another base is evicted only
if that base's lock is free at that moment. When every candidate is pinned
or busy the pool stays over budget until a later load (see `over_budget` in
`stats`). The budget is checked after a load, measured on the loaded
tensors, so memory may briefly exceed it by the adapter being loaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tuneloop.errors import UserError
from tuneloop.serving.decode import BASE_ROW, DecodeLoop
from tuneloop.serving.engine import DEFAULT_MAX_BATCH, Engine

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
    loop: DecodeLoop | None = None


@dataclass
class _Loaded:
    name: str
    key: str  # peft's adapter name: module-dict keys may not hold '.', which model names can
    folder: Path
    base_id: str
    nbytes: int
    last_used: float
    pins: int = 0  # requests using it now
    doomed: bool = False  # unloaded while pinned: goes when the last request ends
    load_s: float = 0.0  # seconds its last load took


@dataclass
class PooledEngine(Engine):
    """An Engine whose model is a shared base: its requests go to the base's decode loop with this engine's
    adapter (loaded again if it was evicted), or none for the bare base."""

    pool: "AdapterPool | None" = field(default=None, repr=False)
    base: _Base | None = field(default=None, repr=False)
    adapter: tuple[str, Path] | None = None

    def _decoder(self) -> DecodeLoop:
        return self.pool._loop(self.base)

    def _adapter(self):
        return self.adapter


def _default_load_base(base_id: str):
    from tuneloop.models.base import load_model, load_tokenizer, resolve_base_model
    from tuneloop.settings import get_settings

    path = resolve_base_model(base_id, get_settings().models_dir, log=lambda m: None)
    return load_model(path), load_tokenizer(path)


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


class AdapterPool:
    """Bases loaded once each; adapters attached on demand, least recently used evicted past `budget_bytes`."""

    def __init__(self, budget_bytes: int = 512 * 2**20, load_base: Callable[[str], tuple] | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH):
        if not isinstance(budget_bytes, int) or isinstance(budget_bytes, bool) or budget_bytes < 0:
            raise UserError(f"budget_bytes={budget_bytes!r}", "the adapter budget is a whole number of bytes, 0 "
                            "or more", "pass e.g. 512 * 2**20 for 512 MiB")
        DecodeLoop.check_max_batch(max_batch)
        self.budget_bytes, self.max_batch = budget_bytes, max_batch
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
                            base_model=base_id, max_batch=self.max_batch, _lock=base.lock, pool=self, base=base,
                            adapter=adapter)

    def version_engine(self, registry, ref: str, tenant: str | None = None) -> PooledEngine:
        """An engine for registry version `ref` (its adapter, every file's sha256 checked first, on its
        manifest's base), named `<tenant>:<id>` in the pool; `tenant` None: the manifest's, else "default"."""
        import dataclasses

        v = registry.get(ref)
        folder = Path(registry.adapter_for(v.id))
        tenant = tenant or v.manifest.get("tenant") or "default"
        engine = self.engine(v.manifest["base_model"], (f"{tenant}:{v.id}", folder))
        return dataclasses.replace(engine, version=v.id)  # the slot shows (and pins by) the registry's id

    def stats(self) -> dict:
        with self._mu:
            return {
                "bases": sorted(b for b, e in self._bases.items() if e.model is not None),
                "adapters": [{"name": a.name, "base": a.base_id, "bytes": a.nbytes, "last_used": a.last_used,
                          "in_use": a.pins, "load_s": round(a.load_s, 4)} for a in self._lru.values()],  # least recently used first
                "budget_bytes": self.budget_bytes, "bytes_used": self._used, **self.counts}

    def load_seconds(self, name: str) -> float | None:
        """How long adapter `name`'s last load took, if it is loaded."""
        with self._mu:
            loaded = self._lru.get(name)
            return None if loaded is None else loaded.load_s

    def unload(self, name: str) -> bool:
        """Detach adapter `name` (e.g. its model was deleted); False if it was not loaded. While requests use
        it, it stays until the last of them ends, then goes."""
        with self._mu:
            loaded = self._lru.get(name)
        if loaded is None:
            return False
        base = self._bases[loaded.base_id]
        with base.lock, self._mu:  # between two steps of the base's loop
            if self._lru.get(name) is not loaded:  # evicted or replaced meanwhile
                return False
            if loaded.pins:
                loaded.doomed = True
            else:
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

    # -- the base's decode loop ------------------------------------------------------------------------------
    def _loop(self, base: _Base) -> DecodeLoop:
        with self._mu:
            if base.loop is None:
                base.loop = DecodeLoop(base.tok, base.lock, lambda keys: self._model_for(base, keys),
                                       join=lambda g: self._join(base, g), leave=self._leave,
                                       max_batch=self.max_batch, name=base.base_id)
            return base.loop

    @staticmethod
    def _model_for(base: _Base, keys: list) -> tuple:
        """Under the base's lock. Every row on one adapter: that adapter made active (peft's plain LoRA
        forward); else peft's mixed batch, each row naming its adapter (BASE_ROW for none)."""
        if base.peft is None or not base.peft.peft_config:  # no adapter attached (yet, or any more)
            return base.model, {}
        if keys[0] is not None and all(k == keys[0] for k in keys):
            if base.peft.active_adapter != keys[0]:
                base.peft.set_adapter(keys[0], inference_mode=True)
            return base.peft, {}
        return base.peft, {"adapter_names": [k or BASE_ROW for k in keys]}

    def _join(self, base: _Base, g) -> str | None:
        """Under the base's lock (the loop's step): load generation `g`'s adapter if need be (setting
        `g.load_s`) and pin it; its peft key."""
        if g.adapter is None:
            return None
        key, g.load_s = self._attach(base, *g.adapter)
        with self._mu:
            self._lru[g.adapter[0]].pins += 1
        return key

    def _leave(self, key: str | None) -> None:
        """Under the base's lock: unpin the adapter with peft key `key`; drop it if it was unloaded meanwhile."""
        if key is None:
            return
        with self._mu:
            loaded = next((a for a in self._lru.values() if a.key == key), None)
            if loaded is None:
                return
            loaded.pins -= 1
            if loaded.pins == 0 and loaded.doomed:
                self._drop(self._bases[loaded.base_id], loaded)

    def _attach(self, base: _Base, name: str, folder: Path) -> tuple[str, float | None]:
        """(peft's key for adapter `name` on `base`, seconds its load took or None if it was loaded already),
        loading it (and evicting others) if need be."""
        with self._mu:
            loaded = self._lru.get(name)
            if loaded is not None:
                if loaded.base_id != base.base_id:
                    raise UserError(f"adapter {name!r}", f"is loaded on base {loaded.base_id!r}, not "
                                    f"{base.base_id!r}", "ask for it with the base it was trained on")
                self._lru.move_to_end(name)
                loaded.last_used = time.time()
                self.counts["hits"] += 1
                return loaded.key, None
        key = "a" + hashlib.sha256(name.encode()).hexdigest()[:16]
        t0 = time.perf_counter()
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
            self._lru[name] = _Loaded(name, key, folder, base.base_id, nbytes, time.time(),
                                      load_s=time.perf_counter() - t0)
            self._used += nbytes
            self.counts["loads"] += 1
            self._evict(keep=name, holding=base)
        return key, self._lru[name].load_s

    def _load(self, base: _Base, name: str, folder: Path, key: str) -> None:
        from peft import PeftModel

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
        if base.peft.active_adapter not in base.peft.peft_config:  # its last adapter was detached
            base.peft.set_adapter(key, inference_mode=True)  # (rows pick theirs by name; peft needs one active)
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
            loaded = self._lru[name]
            if name == keep or loaded.pins:  # a request is using it
                continue
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
