"""The adapter pool: many LoRA adapters on one shared base, answering exactly as merged models do.

Adapters here are untrained LoRAs with random A and B (made in well under a second each), so each one
changes the tiny base's greedy answers in its own way; every test uses `tiny_base` and so is `model` tier."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from tuneloop.errors import UserError

TINY = "tuneloop/tiny-llama"
CHATS = [[{"role": "user", "content": "I was charged twice"}],
         [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "reset my password"}]]
PROMPT = "Question: where is my parcel?\nAnswer:"


def _lora(base: str, out: Path, seed: int, r: int = 4, targets=("q_proj", "v_proj")) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneloop.models.base import load_model

    torch.manual_seed(seed)
    model = get_peft_model(load_model(base), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)  # B is zero at init, which would make every adapter answer as the base
    model.save_pretrained(out)
    return out


def _other_base_lora(out: Path) -> Path:
    """A LoRA made for a narrower Llama (hidden 64): same module names, other shapes."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=2048)
    get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


def _nbytes(folder: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.nbytes for t in load_file(folder / "adapter_model.safetensors").values())


@pytest.fixture(scope="module")
def lib(tiny_base, tmp_path_factory):
    """Adapters a0..a2 (r=4 on q, v), big (r=16 on q, k, v, o), other (another base's), and each one's
    answers from a merged Engine, the reference the pool must reproduce."""
    from tuneloop.serving.engine import Engine

    root = tmp_path_factory.mktemp("pool-adapters")
    folders = {f"a{k}": _lora(tiny_base, root / f"a{k}", seed=k) for k in range(3)}
    folders["big"] = _lora(tiny_base, root / "big", seed=9, r=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    folders["other"] = _other_base_lora(root / "other")
    ref = {}
    for name in ("base", "a0", "a1", "a2"):
        eng = Engine.load(name, tiny_base, None if name == "base" else folders[name])
        ref[name] = _answers(eng)
    assert len({tuple(v) for v in ref.values()}) == 4  # each adapter changes the answers: the test can tell
    return {"root": root, "dirs": folders, "ref": ref, "base": tiny_base}


def _answers(engine) -> list[str]:
    return [engine.chat(m, max_tokens=8).text for m in CHATS] + [engine.complete(PROMPT, max_tokens=6).text]


def _pool(lib, **kw):
    from tuneloop.models.base import load_model, load_tokenizer
    from tuneloop.serving.adapters import AdapterPool

    return AdapterPool(load_base=lambda base_id: (load_model(lib["base"]), load_tokenizer(lib["base"])), **kw)


def _ad(lib, name):
    return (f"ft:{TINY}:acme:{name}:ftjob-{name}", lib["dirs"][name])


def test_pooled_answers_equal_merged_engine_and_bare_base(lib):
    from tuneloop.serving.adapters import AdapterPool

    pool = AdapterPool()  # the default loader: the tiny base through resolve_base_model and the settings
    for name in ("a0", "base", "a1", "base"):
        eng = pool.engine(TINY, None if name == "base" else _ad(lib, name))
        assert eng.version == (_ad(lib, name)[0] if name != "base" else "base")
        assert eng.max_context == 512
        assert _answers(eng) == lib["ref"][name], name
    out = pool.engine(TINY, _ad(lib, "a0")).chat(CHATS[0], max_tokens=8)
    assert out.prompt_tokens > 0 and out.completion_tokens <= 8 and out.finish_reason in ("stop", "length")


def test_adapters_alternate_on_one_shared_base(lib):
    pool = _pool(lib)
    engines = {n: pool.engine(TINY, _ad(lib, n)) for n in ("a0", "a1")}
    engines["base"] = pool.engine(TINY)
    for name in ("a0", "a1", "a0", "base", "a1", "base", "a0"):
        assert _answers(engines[name]) == lib["ref"][name], name
    shared = {id(e.model) for e in engines.values()}
    assert len(shared) == 1 and id(engines["a0"].base.peft.get_base_model()) in shared
    st = pool.stats()
    assert st["bases"] == [TINY] and st["base_loads"] == 1
    assert st["loads"] == 2 and st["evictions"] == 0
    assert st["hits"] == (3 + 2) * 3 - 2  # 3 answers per turn; all but each adapter's first are hits
    assert [a["name"] for a in st["adapters"]] == [_ad(lib, "a1")[0], _ad(lib, "a0")[0]]  # a0 used last
    assert st["bytes_used"] == 2 * _nbytes(lib["dirs"]["a0"])


def test_lru_evicts_by_measured_bytes_and_reloads_on_next_use(lib):
    one = _nbytes(lib["dirs"]["a0"])  # 2 layers x (q, v) x (A 4x128 + B 128x4) fp32
    assert one == 2 * 2 * 2 * 4 * 128 * 4
    pool = _pool(lib, budget_bytes=2 * one + one // 2)
    run = {n: pool.engine(TINY, _ad(lib, n)) for n in ("a0", "a1", "a2")}
    for name in ("a0", "a1", "a0", "a2"):  # a1 is least recently used when a2 arrives
        assert run[name].chat(CHATS[0], max_tokens=8).text == lib["ref"][name][0]
    st = pool.stats()
    assert [a["name"] for a in st["adapters"]] == [_ad(lib, "a0")[0], _ad(lib, "a2")[0]]
    assert [a["bytes"] for a in st["adapters"]] == [one, one] and st["bytes_used"] == 2 * one <= st["budget_bytes"]
    assert (st["loads"], st["evictions"], st["hits"]) == (3, 1, 1)
    assert _answers(run["a1"]) == lib["ref"]["a1"]  # evicted: loads again, evicting a0, and answers the same
    st = pool.stats()
    assert [a["name"] for a in st["adapters"]] == [_ad(lib, "a2")[0], _ad(lib, "a1")[0]]
    assert (st["loads"], st["evictions"], st["over_budget"]) == (4, 2, 0)
    assert _answers(pool.engine(TINY)) == lib["ref"]["base"]
    assert pool.unload(_ad(lib, "a1")[0]) and not pool.unload(_ad(lib, "a1")[0])
    st = pool.stats()
    assert st["unloads"] == 1 and st["bytes_used"] == one and [a["name"] for a in st["adapters"]] == [_ad(lib, "a2")[0]]
    assert _answers(run["a1"]) == lib["ref"]["a1"]  # an unloaded adapter also comes back on demand


def test_a_request_in_flight_keeps_its_adapter(lib):
    """Two bases (same weights, two ids), room for one adapter: while a request is in a step on base t2 (its
    loop holds t2's lock), loading on t1 must not evict t2's adapter; once t2 is idle, the next load does."""
    pool = _pool(lib, budget_bytes=_nbytes(lib["dirs"]["a0"]) * 3 // 2)
    on_t2 = pool.engine("t2", _ad(lib, "a0"))
    assert on_t2.chat(CHATS[0], max_tokens=8).text == lib["ref"]["a0"][0]
    inside, go = threading.Event(), threading.Event()

    def hold(_delta):  # called from t2's loop, mid-step
        inside.set()
        go.wait(30)

    g = on_t2.start("completion", PROMPT, max_tokens=6, on_delta=hold)
    assert inside.wait(30)
    try:
        assert pool.engine("t1", _ad(lib, "a1")).chat(CHATS[0], max_tokens=8).text == lib["ref"]["a1"][0]
        st = pool.stats()
        assert len(st["adapters"]) == 2 and st["evictions"] == 0 and st["over_budget"] == 1
    finally:
        go.set()
    assert g.result(30).text == lib["ref"]["a0"][2]
    assert pool.engine("t1", _ad(lib, "a2")).chat(CHATS[0], max_tokens=8).text == lib["ref"]["a2"][0]
    st = pool.stats()
    assert [a["name"] for a in st["adapters"]] == [_ad(lib, "a2")[0]] and st["evictions"] == 2
    assert st["bases"] == ["t1", "t2"] and st["base_loads"] == 2


def test_a_batch_mixes_adapters_and_pins_them(lib):
    """One base, room for one adapter: a request for a1 that joins while a0's is mid-answer shares its batch
    (both answer as their merged models do), and a0 is not evicted under it; once both end, a load evicts."""
    pool = _pool(lib, budget_bytes=_nbytes(lib["dirs"]["a0"]) * 3 // 2)
    second = []

    def join_another(_delta):  # from the loop's thread, after a0's first piece of text
        if not second:
            second.append(pool.engine(TINY, _ad(lib, "a1")).start("chat", CHATS[0], max_tokens=8))

    first = pool.engine(TINY, _ad(lib, "a0")).start("completion", PROMPT, max_tokens=6, on_delta=join_another)
    out = first.result(30)
    assert out.text == lib["ref"]["a0"][2] and second and second[0].result(30).text == lib["ref"]["a1"][0]
    assert out.completion_tokens == 6, "the first answer must outlast the step where the second joins"
    st = pool.stats()
    assert pool._loop(pool._bases[TINY]).counts["max_rows"] == 2  # they decoded in one batch
    assert len(st["adapters"]) == 2 and st["evictions"] == 0 and st["over_budget"] == 1
    assert all(a["in_use"] == 0 for a in st["adapters"])
    assert _answers(pool.engine(TINY, _ad(lib, "a2"))) == lib["ref"]["a2"]
    st = pool.stats()
    assert [a["name"] for a in st["adapters"]] == [_ad(lib, "a2")[0]] and st["evictions"] == 2


def test_adapter_bigger_than_the_budget_is_refused_clearly(lib):
    small, big = _nbytes(lib["dirs"]["a0"]), _nbytes(lib["dirs"]["big"])
    pool = _pool(lib, budget_bytes=small * 2)
    assert pool.engine(TINY, _ad(lib, "a0")).chat(CHATS[0], max_tokens=8).text == lib["ref"]["a0"][0]
    name = _ad(lib, "big")[0]
    with pytest.raises(UserError) as e:
        pool.engine(TINY, _ad(lib, "big")).chat(CHATS[0], max_tokens=8)
    msg = str(e.value)
    assert name in msg and f"{big} bytes" in msg and f"budget of {small * 2} bytes" in msg
    assert f"raise the pool's budget_bytes to at least {big}" in msg
    st = pool.stats()
    assert [a["name"] for a in st["adapters"]] == [_ad(lib, "a0")[0]] and st["evictions"] == 0  # a0 stayed
    assert _answers(pool.engine(TINY, _ad(lib, "a0"))) == lib["ref"]["a0"]
    assert _answers(pool.engine(TINY)) == lib["ref"]["base"]
    with pytest.raises(UserError, match="budget_bytes=-1"):
        _pool(lib, budget_bytes=-1)


def _broken(lib) -> dict[str, tuple[Path, str]]:
    """name -> (folder, what the error must say), in the order tried."""
    root = lib["root"] / "broken"
    if not root.exists():
        root.mkdir()
        for name in ("no-config", "bad-json", "truncated", "wrong-rank", "gpt2-modules", "partial"):
            shutil.copytree(lib["dirs"]["a0"], root / name)
        (root / "no-config" / "adapter_config.json").unlink()
        (root / "bad-json" / "adapter_config.json").write_text("{not json")
        w = root / "truncated" / "adapter_model.safetensors"
        w.write_bytes(w.read_bytes()[:200])
        cfg = json.loads((root / "wrong-rank" / "adapter_config.json").read_text())
        (root / "wrong-rank" / "adapter_config.json").write_text(json.dumps(cfg | {"r": 8}))
        from safetensors.torch import load_file, save_file

        w = root / "gpt2-modules" / "adapter_model.safetensors"
        save_file({k.replace("model.layers.0.self_attn.q_proj", "transformer.h.0.attn.c_attn"): v
                   for k, v in load_file(w).items()}, w)
        w = root / "partial" / "adapter_model.safetensors"
        save_file({k: v for k, v in load_file(w).items() if "layers.1.self_attn.v_proj.lora_B" not in k}, w)
    return {"missing": (root / "nope", "no such folder"),
            "no-config": (root / "no-config", "no adapter_config.json"),
            "bad-json": (root / "bad-json", "adapter_config.json is not valid JSON"),
            "truncated": (root / "truncated", "is unreadable"),
            "wrong-rank": (root / "wrong-rank", "size mismatch"),  # peft's own error, past the header checks
            "gpt2-modules": (root / "gpt2-modules", "targets module 'transformer.h.0.attn.c_attn'"),
            "other-base": (lib["dirs"]["other"], "has shape [4, 64], but model.layers.0.self_attn.q_proj"),
            # last: it attaches, then fails
            "partial": (root / "partial", "lacks 1 tensor(s) its config calls for, e.g. "
                        "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")}


@pytest.mark.parametrize("first", [True, False], ids=["as-first-adapter", "beside-a-loaded-one"])
def test_missing_corrupt_or_foreign_adapters_are_refused_and_the_pool_stays_usable(lib, first):
    """As the first adapter, peft wraps the shared base in place before it fails: the pool must undo that."""
    pool = _pool(lib)
    if not first:
        assert _answers(pool.engine(TINY, _ad(lib, "a0"))) == lib["ref"]["a0"]
    for name, (folder, says) in _broken(lib).items():
        with pytest.raises(UserError) as e:
            pool.engine(TINY, (f"ft:{name}", folder)).chat(CHATS[0], max_tokens=4)
        assert f"'ft:{name}'" in str(e.value) and str(folder) in str(e.value) and says in str(e.value), name
        assert "Fix:" in str(e.value)
        assert _answers(pool.engine(TINY)) == lib["ref"]["base"], name  # the base is untouched
        base = pool.engine(TINY).base
        if first and name != "partial":  # nothing of a failed first attach is left on the shared base
            from peft.tuners.tuners_utils import BaseTunerLayer

            assert base.peft is None and "peft_config" not in vars(base.model), name
            assert not any(isinstance(m, BaseTunerLayer) for m in base.model.modules()), name
        assert [a["name"] for a in pool.stats()["adapters"]] == ([] if first else [_ad(lib, "a0")[0]])
        if base.peft is not None:  # "partial" attaches, then is detached: peft's wrapper stays, holding none
            assert list(base.peft.peft_config) == ([] if first else [pool._lru[_ad(lib, "a0")[0]].key])
    assert _answers(pool.engine(TINY, _ad(lib, "a1"))) == lib["ref"]["a1"]
    st = pool.stats()
    assert [a["name"] for a in st["adapters"]] == [_ad(lib, n)[0] for n in (("a1",) if first else ("a0", "a1"))]
    with pytest.raises(UserError, match="is loaded on base 'tuneloop/tiny-llama', not 'other'"):
        pool.engine("other", _ad(lib, "a1"))


def test_concurrent_requests_each_get_their_own_adapter(lib):
    import time

    from tuneloop.models.base import load_model, load_tokenizer
    from tuneloop.serving.adapters import AdapterPool

    calls = []

    def slow_load(base_id):
        calls.append(base_id)
        time.sleep(0.2)  # every thread arrives while the first one loads
        return load_model(lib["base"]), load_tokenizer(lib["base"])

    pool = AdapterPool(load_base=slow_load)
    names = ["a0", "a1", "base"] * 3
    got: dict[int, list[str]] = {}
    errors = []

    def ask(k: int, name: str):
        try:
            eng = pool.engine(TINY, None if name == "base" else _ad(lib, name))
            got[k] = _answers(eng)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(k, n)) for k, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and calls == [TINY]  # the base loaded once
    assert all(got[k] == lib["ref"][n] for k, n in enumerate(names)), got
    st = pool.stats()
    assert (st["base_loads"], st["loads"], st["hits"]) == (1, 2, 2 * 3 * 3 - 2)
