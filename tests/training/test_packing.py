"""Packing: a packed batch has the padded loss of the same examples and no attention across examples;
batches are a pure function of (seed, epoch); LoRA dropout's cheaper mask keeps nn.Dropout's law."""

from __future__ import annotations

import pytest
import torch

from tuneloop.models.base import load_tokenizer
from tuneloop.models.chat import IGNORE
from tuneloop.data import prepare_dataset
from tuneloop.specs import DataSpec, TrainingSpec
from tuneloop.training import train_lora
from tuneloop.training.loop import FastDropout, build_lora_model, use_fast_dropout
from tuneloop.training.objectives import batch_loss, encode_rows, token_loss_sum
from tuneloop.training.packing import (collate, collate_packed, collate_padded, enable_varlen_attention,
                                       epoch_batches, first_fit_decreasing)

QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def examples(tiny_base, demo_files):
    """Encoded demo rows, with longer ones made by repeating the user text so lengths differ a lot."""
    tok = load_tokenizer(tiny_base)
    rows = prepare_dataset(demo_files["feedback"], DataSpec()).train[:12]
    for k, r in enumerate(rows[::3]):
        user = next(m for m in r.messages if m["role"] == "user")
        user["content"] = " ".join([user["content"]] * (2 + 2 * k))
    enc = encode_rows(tok, rows, 512)
    assert len({len(ids) for ids, _ in enc}) > 3
    return tok, enc


def lora_model(tiny_base, varlen: bool):
    """The tiny base under LoRA with lora_B moved off zero, so the adapter takes part in the loss."""
    torch.manual_seed(0)
    model = build_lora_model(tiny_base, TrainingSpec(dropout=0.0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    if varlen:
        assert enable_varlen_attention(model)
    return model


def losses_and_grads(model, batch, varlen=False):
    model.zero_grad(set_to_none=True)
    loss, n = batch_loss(model, batch, varlen)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return loss.item(), n, grads


@pytest.mark.parametrize("varlen", [False, True], ids=["block-mask", "per-example-attention"])
def test_packed_loss_and_gradients_equal_the_padded_ones(tiny_base, examples, varlen):
    tok, enc = examples
    reference = lora_model(tiny_base, varlen=False).eval()  # eval: no dropout, both layouts see one function
    padded = losses_and_grads(reference, collate_padded(enc, tok.pad_token_id, "cpu"))
    model = lora_model(tiny_base, varlen).eval() if varlen else reference  # same seed, same weights
    packed_batch = collate(enc, tok.pad_token_id, "cpu", packed=True, one_row=varlen)
    assert packed_batch["input_ids"].shape[0] < len(enc)  # examples really share rows
    packed = losses_and_grads(model, packed_batch, varlen)
    assert packed[1] == padded[1] == sum(sum(lab != IGNORE for lab in y[1:]) for _, y in enc)
    assert packed[0] == pytest.approx(padded[0], rel=1e-5)
    for k, g in padded[2].items():  # float sums in another order: equal up to rounding, relative to the tensor
        assert (packed[2][k] - g).norm() <= 1e-5 * g.norm(), k
    assert any(g.abs().sum() > 0 for g in padded[2].values())


def logits_of(model, ids, pos, segments=None):
    extra = {"segment_lengths": segments} if segments else {}
    with torch.no_grad():
        return model(input_ids=ids, position_ids=pos, use_cache=False, **extra).logits[0]


@pytest.mark.parametrize("varlen", [False, True], ids=["block-mask", "per-example-attention"])
def test_no_attention_crosses_examples_in_a_pack(tiny_base, examples, varlen):
    tok, enc = examples
    model = lora_model(tiny_base, varlen)
    model.eval()
    first, second = enc[0], enc[1]
    batch = collate_packed([first, second], tok.pad_token_id, "cpu", capacity=len(first[0]) + len(second[0]))
    ids, pos = batch["input_ids"], batch["position_ids"]
    assert ids.shape[0] == 1 and len(batch["segments"][0]) == 2
    head_len, n2 = batch["segments"][0]  # the example laid first in the row, and the one after it
    tail = slice(head_len, None)
    segs = batch["segments"][0] if varlen else None
    before = logits_of(model, ids, pos, segs)

    changed = ids.clone()
    changed[0, 1:head_len] = (changed[0, 1:head_len] + 7) % len(tok)  # every token of the first example but BOS
    after = logits_of(model, changed, pos, segs)
    assert not torch.allclose(after[:head_len], before[:head_len])  # the change is seen where it belongs...
    assert torch.equal(after[tail], before[tail])  # ...and nowhere else

    alone = logits_of(model, ids[:, tail], pos[:, tail])  # the second example as a batch of its own
    assert torch.allclose(before[tail], alone, atol=1e-4)

    # control: the same row without restarting positions lets the second example see the first
    flat = torch.arange(ids.shape[1]).unsqueeze(0)
    crossed = logits_of(model, changed, flat) - logits_of(model, ids, flat)
    assert crossed[tail].abs().max() > 1e-4


def test_lm_head_on_targets_only_matches_the_full_logits(tiny_base, examples):
    tok, enc = examples
    model = lora_model(tiny_base, varlen=False)
    model.eval()
    b = collate_padded(enc, tok.pad_token_id, "cpu")
    with torch.no_grad():
        loss, n = token_loss_sum(model, b["input_ids"], b["labels"], b["attention_mask"])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), b["labels"][:, 1:].reshape(-1),
                                                ignore_index=IGNORE, reduction="sum")
    assert n == int((b["labels"][:, 1:] != IGNORE).sum())
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_batches_are_a_pure_function_of_seed_and_epoch():
    lengths = [(i * 37) % 200 + 5 for i in range(203)]
    for grouped in (False, True):
        a = epoch_batches(lengths, 8, seed=3, epoch=1, group_by_length=grouped)
        assert a == epoch_batches(lengths, 8, seed=3, epoch=1, group_by_length=grouped)
        assert a != epoch_batches(lengths, 8, seed=3, epoch=2, group_by_length=grouped)
        assert sorted(i for b in a for i in b) == list(range(len(lengths)))
        assert len(a) == -(-len(lengths) // 8) and all(len(b) == 8 for b in a[:-1] if not grouped)

    def padded_tokens(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded_tokens(epoch_batches(lengths, 8, 3, 1, True)) < padded_tokens(epoch_batches(lengths, 8, 3, 1, False))


def test_first_fit_decreasing_places_every_item_within_capacity():
    lengths = [50, 7, 33, 50, 12, 1, 40, 9]
    bins = first_fit_decreasing(lengths, 50)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 50 for b in bins)
    assert len(bins) == -(-sum(lengths) // 50)  # the fewest bins possible, for these lengths
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([51], 50)


def test_fast_dropout_keeps_nn_dropout_law():
    drop = FastDropout(0.1)
    x = torch.ones(1_000_000)
    torch.manual_seed(0)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    sigma = (0.1 * 0.9 / x.numel()) ** 0.5
    assert abs(kept - 0.9) < 5 * sigma
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # drawn from the global generator: checkpointed, so resume is exact
    drop.eval()
    assert drop(x) is x


def test_fast_dropout_replaces_every_lora_dropout(tiny_base):
    model = build_lora_model(tiny_base, TrainingSpec(dropout=0.1))
    n_lora = sum(1 for m in model.modules() if hasattr(m, "lora_dropout") and m.lora_dropout)
    assert use_fast_dropout(model) == n_lora > 0
    left = [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
            for d in m.lora_dropout.values() if isinstance(d, torch.nn.Dropout)]
    assert not left


@pytest.fixture(scope="module")
def rows(demo_files):
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    return ds.train[:24], ds.validation[:8]


def test_packed_and_padded_training_follow_the_same_losses(tiny_base, rows, tmp_path):
    train, val = rows
    base = dict(batch_size=6, gradient_accumulation=2, max_steps=4, save_every=50, eval_every=2, dropout=0.0,
                learning_rate=3e-3, warmup_steps=0, early_stopping_patience=None, seed=5, group_by_length=False)
    packed = train_lora(TrainingSpec(**base, packing=True), tiny_base, train, val, tmp_path / "p", **QUIET)
    padded = train_lora(TrainingSpec(**base, packing=False), tiny_base, train, val, tmp_path / "d", **QUIET)
    assert [h["step"] for h in packed.history] == [h["step"] for h in padded.history]
    for a, b in zip(packed.history, padded.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        if "val_loss" in b:
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert packed.train_tokens == padded.train_tokens  # real tokens, not padding


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "length-grouped"])
def test_stop_and_resume_is_exact_in_both_layouts(tiny_base, rows, tmp_path, packing):
    train, val = rows
    spec = TrainingSpec(batch_size=4, gradient_accumulation=1, epochs=2, max_steps=8, save_every=50, eval_every=4,
                        learning_rate=3e-3, warmup_steps=0, early_stopping_patience=None, seed=9, packing=packing)
    first = train_lora(spec, tiny_base, train, val, tmp_path / "r", should_stop=lambda s, t, e: "stop" if s == 3
                       else None, **QUIET)
    assert first.steps == 3
    resumed = train_lora(spec, tiny_base, train, val, tmp_path / "r", **QUIET)
    straight = train_lora(spec, tiny_base, train, val, tmp_path / "s", resume=False, **QUIET)
    assert resumed.resumed_from_step == 3 and resumed.steps == straight.steps == 8
    assert abs(resumed.final_loss - straight.final_loss) <= 1e-6
    assert resumed.best_val_loss == pytest.approx(straight.best_val_loss, abs=1e-6)


def test_packing_is_exact_only_for_models_that_separate_examples_by_position_ids(tiny_base):
    """Llama takes attention functions and position ids: packing is exact. BLOOM builds its mask and ALiBi
    bias without position ids (packed examples would attend to each other): packing is refused."""
    from transformers import BloomConfig, BloomForCausalLM

    from tuneloop.training.packing import packing_is_exact

    assert packing_is_exact(build_lora_model(tiny_base, TrainingSpec(dropout=0.0)))
    bloom = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2))
    assert not packing_is_exact(bloom)


def test_the_lm_head_shortcut_is_taken_only_when_it_gives_the_models_own_logits(tiny_base, examples):
    """A model whose forward changes its logits in a way no config flag announces (here: divides them by 2)
    fails the one-time numeric check and takes the full forward: the loss stays the model's own."""
    from tuneloop.training.objectives import _backbone_and_head

    tok, enc = examples
    plain = lora_model(tiny_base, varlen=False).eval()
    assert _backbone_and_head(plain) is not None

    scaled = lora_model(tiny_base, varlen=False).eval()
    base = scaled.get_base_model()
    original = type(base).forward

    def halved(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.logits = out.logits / 2
        return out

    base.forward = halved.__get__(base)
    assert _backbone_and_head(scaled) is None
    b = collate_padded(enc[:3], tok.pad_token_id, "cpu")
    with torch.no_grad():
        loss, _ = token_loss_sum(scaled, b["input_ids"], b["labels"], b["attention_mask"])
        logits = scaled(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), b["labels"][:, 1:].reshape(-1),
                                                ignore_index=IGNORE, reduction="sum")
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_fast_dropout_keeps_fp32_precision_of_the_scale_on_bf16_inputs():
    d = FastDropout(0.1).train()
    x = torch.ones(4096, dtype=torch.bfloat16)
    y = d(x)
    kept = y[y != 0]
    assert kept.dtype == torch.bfloat16
    assert float(kept[0]) == float(torch.tensor(1 / 0.9, dtype=torch.float32).to(torch.bfloat16))
