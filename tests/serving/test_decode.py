"""The decode loop: requests batched across one forward per step give the answers one-at-a-time generation gives.

The model is a small random Llama (its answers run to max_tokens, so sequences of many lengths share the
batch) with two random LoRA adapters; the reference is transformers' own `generate`, one request at a time."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch


@pytest.fixture(scope="module")
def rig(tiny_base):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneloop.models.base import load_tokenizer

    tok = load_tokenizer(tiny_base)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    peft = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                            init_lora_weights=False), adapter_name="one")
    peft.add_adapter("two", LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft.eval()
    rng = random.Random(0)
    words = "the cat dog sat on a mat red blue what is one two three answer where my parcel".split()
    prompts = [[tok.bos_token_id] + tok(" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))),
                                        add_special_tokens=False)["input_ids"] for _ in range(20)]
    return tok, peft, prompts


def _reference(tok, peft, ids, adapter, n):
    from contextlib import nullcontext

    with torch.inference_mode(), (peft.disable_adapter() if adapter == "__base__" else nullcontext()):
        if adapter != "__base__":
            peft.set_adapter(adapter)
        out = peft.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=n, do_sample=False, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    new = out[0, len(ids):].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


def _loop(tok, peft, max_batch):
    from tuneloop.serving.decode import DecodeLoop

    return DecodeLoop(tok, threading.Lock(), lambda keys: (peft, {"adapter_names": list(keys)}),
                      join=lambda g: g.adapter, max_batch=max_batch)


def test_batched_greedy_answers_equal_one_at_a_time_across_adapters(rig):
    from tuneloop.serving.decode import Generation

    tok, peft, prompts = rig
    rng = random.Random(1)
    jobs = [(ids, rng.choice(["one", "two", "__base__"]), rng.randint(1, 24)) for ids in prompts]
    want = [_reference(tok, peft, ids, a, n) for ids, a, n in jobs]
    loop = _loop(tok, peft, max_batch=8)
    gens = []
    for ids, a, n in jobs:  # arriving one by one while others decode: they join between steps
        gens.append(loop.submit(Generation(ids, n, 0.0, 1.0, [], None, False, adapter=a)))
        time.sleep(0.001 * rng.randint(0, 5))
    outs = [g.result(120) for g in gens]
    assert [g.tokens for g in gens] == want
    assert [o.completion_tokens for o in outs] == [len(w) for w in want]
    assert len({tuple(w) for w in want}) == len(want)  # every answer differs: a mixed-up row would show
    assert 2 <= loop.counts["max_rows"] <= 8 and loop.counts["steps"] < loop.counts["tokens"]
    assert loop.active == 0


def test_sampling_is_reproducible_by_seed_whatever_the_batch(rig):
    from tuneloop.serving.decode import Generation

    tok, peft, prompts = rig

    def run(max_batch):
        loop = _loop(tok, peft, max_batch)
        gens = [loop.submit(Generation(ids, 12, 0.9, 0.8, [], 7 + k, False, adapter="one"))
                for k, ids in enumerate(prompts[:8])]
        return [g.result(120).text for g in gens]

    alone, together = run(1), run(8)
    assert alone == together and len(set(alone)) > 1


def test_pieces_join_up_to_the_answer_and_stop_strings_are_never_sent(rig):
    """The streamed pieces concatenate to the final text (chat answers stripped), with no piece of a stop
    string sent before the stop is known; a cancelled generation ends with Cancelled and leaves the batch."""
    from tuneloop.serving.decode import Cancelled, Generation

    tok, peft, prompts = rig
    loop = _loop(tok, peft, 4)
    for ids in prompts[:6]:
        full = Generation(ids, 20, 0.0, 1.0, [], None, False, adapter="two")
        text = loop.submit(full).result(60).text
        stop = text[len(text) // 2: len(text) // 2 + 3]  # a stop string that occurs mid-answer
        for strip in (False, True):
            pieces = []
            g = loop.submit(Generation(ids, 20, 0.0, 1.0, [stop, "\x00never"], None, strip, adapter="two",
                                       on_delta=pieces.append))
            out = g.result(60)
            want = text[: text.find(stop)] if stop else text
            assert out.text == (want.strip() if strip else want) and "".join(pieces) == out.text
            assert out.finish_reason == ("stop" if stop else "length")
    g = Generation(prompts[0], 400, 0.0, 1.0, [], None, False, adapter="one", on_delta=lambda piece: g.cancel())
    loop.submit(g)
    with pytest.raises(Cancelled):
        g.result(60)
    assert len(g.tokens) < 10 and loop.counts["cancelled"] == 1 and loop.active == 0
