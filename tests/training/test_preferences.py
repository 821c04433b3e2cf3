"""DPO and KTO on the training loop: the losses against their closed forms, the reference computed once and
carried through a resume, the data each method reads, and DPO learning the shipped preference task."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tuneloop.data import prepare_dataset
from tuneloop.data.validate import Row
from tuneloop.demo.data import write_preference_data
from tuneloop.errors import UserError
from tuneloop.models.base import load_model, load_tokenizer
from tuneloop.specs import DataSpec, TrainingSpec
from tuneloop.training import train_lora
from tuneloop.training.loop import build_lora_model
from tuneloop.training.objectives import DPO, KTO, kto_weights, preference_accuracy, sequence_logps
from tuneloop.training.packing import collate

QUIET = dict(log=lambda m: None)
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def pref_files(tmp_path_factory):
    return write_preference_data(tmp_path_factory.mktemp("pref"), seed=0)


def pairs(files, n=None) -> list[Row]:
    rows = prepare_dataset(files["pairs"], DataSpec(validation_split=0.0, test_split=0.0), method="dpo").train
    return rows[:n] if n else rows


def perturbed(model, seed=0):
    """LoRA B off zero, so the adapter changes the model (a fresh adapter is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def full_logp(model, ids, labels) -> float:
    """Summed log-probability of the label tokens from one unpacked, unbatched forward: the plain definition."""
    x = torch.tensor([ids])
    logits = model(input_ids=x).logits[0, :-1].float()
    target = torch.tensor(labels[1:])
    keep = target != -100
    return float(torch.log_softmax(logits, -1)[keep].gather(1, target[keep].unsqueeze(1)).sum())


@pytest.mark.parametrize("packed, varlen", [(False, False), (True, False), (True, True)])
def test_sequence_logps_sum_each_examples_answer_tokens_in_every_layout(tiny_base, pref_files, packed, varlen):
    from tuneloop.training.packing import enable_varlen_attention

    tok = load_tokenizer(tiny_base)
    model = perturbed(build_lora_model(tiny_base, TrainingSpec(dropout=0.0, target_modules=ALL))).eval()
    if varlen:
        assert enable_varlen_attention(model)
    dpo = DPO(tok, pairs(pref_files, 6), 512, TrainingSpec(method="dpo"))
    seqs = [c for c, _ in dpo.pairs] + [j for _, j in dpo.pairs]
    with torch.no_grad():
        got = sequence_logps(model, collate(seqs, tok.pad_token_id, "cpu", packed, one_row=varlen), len(seqs), varlen)
        want = [full_logp(model, ids, labels) for ids, labels in seqs]
    assert torch.allclose(got, torch.tensor(want, dtype=got.dtype), atol=1e-3), (got, want)
    # only the answer is a target: the prompt's tokens (system and user) are not
    ids, labels = dpo.pairs[0][0]
    assert sum(lab != -100 for lab in labels) <= 4 < len(ids)


def test_at_the_first_step_the_policy_is_the_reference(tiny_base, pref_files):
    """A fresh adapter is the identity, so every DPO pair costs log 2 and every KTO answer half its weight."""
    tok = load_tokenizer(tiny_base)
    model = build_lora_model(tiny_base, TrainingSpec(dropout=0.0, target_modules=ALL)).eval()
    rows = pairs(pref_files, 8)
    for cls, spec in ((DPO, TrainingSpec(method="dpo")), (KTO, TrainingSpec(method="kto"))):
        obj = cls(tok, rows, 512, spec)
        obj.prepare(model, 8, tok.pad_token_id, "cpu", True, False, False, lambda m: None)
        loss, stats = obj.loss(model, list(range(len(obj))), tok.pad_token_id, "cpu", True, False)
        per_unit = float(loss) / len(obj)
        want = math.log(2) if cls is DPO else 0.5 * (obj.w_desirable + obj.w_undesirable) / 2
        assert per_unit == pytest.approx(want, abs=1e-4), cls.__name__


def test_the_losses_are_the_papers_formulas(tiny_base, pref_files):
    tok = load_tokenizer(tiny_base)
    model = build_lora_model(tiny_base, TrainingSpec(dropout=0.0, target_modules=ALL)).eval()
    rows = pairs(pref_files, 5)
    dpo = DPO(tok, rows, 512, TrainingSpec(method="dpo", beta=0.3))
    kto = KTO(tok, rows, 512, TrainingSpec(method="kto", beta=0.3, desirable_weight=1.5, undesirable_weight=0.5))
    for obj in (dpo, kto):
        obj.prepare(model, 8, tok.pad_token_id, "cpu", False, False, False, lambda m: None)  # adapter off
    perturbed(model, seed=3)
    with torch.no_grad():
        d_loss, _ = dpo.loss(model, [0, 1, 2, 3, 4], tok.pad_token_id, "cpu", True, False)
        k_loss, _ = kto.loss(model, list(range(len(kto))), tok.pad_token_id, "cpu", True, False)
        with model.disable_adapter():
            ref = [(full_logp(model, *c), full_logp(model, *j)) for c, j in dpo.pairs]
            ref_k = [(full_logp(model, *e), full_logp(model, *m)) for e, m in zip(kto.examples, kto.mismatched)]
        pol = [(full_logp(model, *c), full_logp(model, *j)) for c, j in dpo.pairs]
        pol_k = [(full_logp(model, *e), full_logp(model, *m)) for e, m in zip(kto.examples, kto.mismatched)]
    want = sum(-math.log(1 / (1 + math.exp(-0.3 * ((pc - rc) - (pr - rr))))) for (pc, pr), (rc, rr) in zip(pol, ref))
    assert float(d_loss) == pytest.approx(want, rel=1e-3)
    z0 = max(0.0, sum(p[1] - r[1] for p, r in zip(pol_k, ref_k)) / len(pol_k))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want_k = sum(1.5 * (1 - sig(0.3 * (p[0] - r[0] - z0))) if good else 0.5 * (1 - sig(0.3 * (z0 - (p[0] - r[0]))))
                 for p, r, good in zip(pol_k, ref_k, kto.good.tolist()))
    assert float(k_loss) == pytest.approx(want_k, rel=1e-3)
    assert kto.good.tolist() == [True, False] * 5  # each pair gave one desirable and one undesirable answer


def test_sft_weight_adds_the_preferred_answers_mean_token_loss(tiny_base, pref_files):
    tok = load_tokenizer(tiny_base)
    model = build_lora_model(tiny_base, TrainingSpec(dropout=0.0, target_modules=ALL)).eval()
    rows = pairs(pref_files, 4)
    plain, mixed = (DPO(tok, rows, 512, TrainingSpec(method="dpo", sft_weight=w)) for w in (0.0, 0.7))
    good_plain, good_mixed = (KTO(tok, rows, 512, TrainingSpec(method="kto", sft_weight=w)) for w in (0.0, 0.7))
    for obj in (plain, mixed, good_plain, good_mixed):
        obj.prepare(model, 8, tok.pad_token_id, "cpu", True, False, False, lambda m: None)
    perturbed(model, seed=4)
    with torch.no_grad():
        nll = [-full_logp(model, *c) / sum(lab != -100 for lab in c[1][1:]) for c, _ in plain.pairs]
        d0, _ = plain.loss(model, [0, 1, 2, 3], tok.pad_token_id, "cpu", True, False)
        d1, _ = mixed.loss(model, [0, 1, 2, 3], tok.pad_token_id, "cpu", True, False)
        k0, _ = good_plain.loss(model, list(range(8)), tok.pad_token_id, "cpu", True, False)
        k1, _ = good_mixed.loss(model, list(range(8)), tok.pad_token_id, "cpu", True, False)
    assert float(d1 - d0) == pytest.approx(0.7 * sum(nll), rel=1e-3)
    assert float(k1 - k0) == pytest.approx(0.7 * sum(nll), rel=1e-3)  # the desirable answers are the preferred ones


@pytest.mark.parametrize("n_good, n_bad, want", [(10, 10, (1.0, 1.0)), (10, 100, (10.0, 1.0)),
                                                 (100, 10, (1.0, 7.5)), (12, 10, (1.0, 1.0))])
def test_kto_weights_keep_the_desirable_share_between_1_and_4_thirds(n_good, n_bad, want):
    w_d, w_u = kto_weights(n_good, n_bad)
    assert (w_d, w_u) == pytest.approx(want)
    assert 1 - 1e-9 <= w_d * n_good / (w_u * n_bad) <= 4 / 3 + 1e-9


def test_dpo_resumes_exactly_with_the_reference_it_started_with(tiny_base, pref_files, tmp_path):
    rows = pairs(pref_files, 48)
    spec = TrainingSpec(method="dpo", target_modules=ALL, learning_rate=3e-3, batch_size=8, gradient_accumulation=1,
                        epochs=3, max_steps=12, save_every=3, eval_every=6, warmup_steps=0, seed=5,
                        early_stopping_patience=None)
    whole = train_lora(spec, tiny_base, rows[:40], rows[40:], tmp_path / "whole", **QUIET)
    calls = [0]

    def stop(step, total, elapsed):
        return "test stop" if step == 6 else None

    part = train_lora(spec, tiny_base, rows[:40], rows[40:], tmp_path / "part", should_stop=stop, **QUIET)
    assert part.stopped_reason == "test stop" and part.steps == 6
    state = json.loads((tmp_path / "part" / "checkpoints" / "step-0000006" / "state.json").read_text())
    assert len(state["objective"]["train"]["reference"]) == 40  # two log-probabilities per pair, in the checkpoint
    done = train_lora(spec, tiny_base, rows[:40], rows[40:], tmp_path / "part", **QUIET)
    assert done.resumed_from_step == 6 and done.steps == 12 and calls == [0]
    assert [h["loss"] for h in done.history] == [h["loss"] for h in whole.history]
    assert done.best_val_loss == whole.best_val_loss


def test_dpo_learns_the_shipped_preference_task(tiny_base, pref_files, tmp_path):
    """Held-out preference accuracy from about chance to 0.85 or more in 250 steps (the benchmark,
    bench/preferences.py, runs the full budget and KTO and SFT beside it)."""
    held = prepare_dataset(pref_files["heldout_pairs"], DataSpec(validation_split=0.0, test_split=0.0),
                           method="dpo").train
    ds = prepare_dataset(pref_files["pairs"], DataSpec(validation_split=0.1, test_split=0.0), method="dpo")
    spec = TrainingSpec(method="dpo", target_modules=ALL, learning_rate=3e-3, batch_size=16, gradient_accumulation=1,
                        epochs=50, max_steps=250, warmup_steps=10, save_every=1000, early_stopping_patience=None)
    result = train_lora(spec, tiny_base, ds.train, ds.validation, tmp_path / "run", **QUIET)
    from peft import PeftModel

    tok = load_tokenizer(tiny_base)
    model = PeftModel.from_pretrained(load_model(tiny_base), str(result.adapter_dir))
    with model.disable_adapter():
        before = preference_accuracy(model, tok, held)
    after = preference_accuracy(model, tok, held)
    assert before["pairs"] == after["pairs"] == 120
    assert 0.3 <= before["accuracy"] <= 0.7, before  # a random base: about chance
    assert after["accuracy"] >= 0.85 and after["margin"] > before["margin"], (before, after)
    assert result.history[-1]["accuracy"] > 0.5  # the share of training pairs ranked right is logged per step


def test_each_method_reads_what_it_trains_on(pref_files, demo_files, tmp_path):
    spec = DataSpec(validation_split=0.0, test_split=0.0)
    with pytest.raises(UserError) as e:
        prepare_dataset(demo_files["feedback"], spec, method="dpo")
    assert "no preference pairs" in str(e.value) and "method sft" in str(e.value)
    with pytest.raises(UserError) as e:
        prepare_dataset(demo_files["feedback"], spec, method="kto")  # every row rated 5: nothing undesirable
    assert "no undesirable answer" in str(e.value) and '"label": false' in str(e.value)
    with pytest.raises(UserError) as e:
        prepare_dataset(demo_files["feedback"], spec, method="ppo")
    assert "training.method 'ppo'" in str(e.value)
    thumbs = prepare_dataset(pref_files["thumbs"], spec, method="kto").train
    assert {r.label for r in thumbs} == {True, False}
    sft_on_pairs = prepare_dataset(pref_files["pairs"], spec, method="sft")
    assert all(r.rejected is not None for r in sft_on_pairs.train)  # SFT learns each pair's preferred answer
    # a held-out preference file is compared on its preferred answers
    ev = prepare_dataset(demo_files["feedback"], DataSpec(), eval_data=pref_files["heldout_pairs"])
    assert len(ev.eval_rows) == 120 and all(r.answer != r.rejected for r in ev.eval_rows)


def test_a_feedback_dataset_gives_dpo_its_corrections_and_kto_its_negatives(tmp_path):
    from datetime import datetime, timezone

    from tuneloop.feedback.build import build_feedback_dataset
    from tuneloop.feedback.items import FeedbackItem

    now = datetime.now(timezone.utc)
    items = []
    for i in range(30):
        good = i % 3 != 0
        items.append(FeedbackItem(
            id=f"f{i}", tenant="acme", source="file", timestamp=now.isoformat(),
            messages=({"role": "user", "content": f"question number {i} about item {i * 7}"},),
            response=f"answer {i}" if good else f"wrong {i}", score=1.0 if good else 0.0,
            correction=None if good else f"right {i}", user=f"u{i}"))
    ds = build_feedback_dataset(items, tmp_path / "ds", tenant="acme", max_user_share=1.0)
    spec = DataSpec(validation_split=0.0, test_split=0.0)
    dpo = prepare_dataset(ds.path, spec, tenant="acme", method="dpo").train
    assert len(dpo) == 10 and all(r.rejected.startswith("wrong") and r.answer.startswith("right") for r in dpo)
    kto = prepare_dataset(ds.path, spec, tenant="acme", method="kto").train
    assert sorted(r.answer.split()[0] for r in kto if r.label is False) == ["wrong"] * 10
    assert sum(r.label is not False for r in kto) == 30  # 20 good answers and 10 corrections


def test_the_estimate_counts_what_each_method_runs(tiny_base, pref_files):
    """The guards' token estimate: dpo trains on both answers and kto on one answer plus a forward on another,
    and both score every sequence once with the reference first."""
    from tuneloop.cost.sizing import estimate_run
    from tuneloop.specs import RetrainSpec

    rows = pairs(pref_files, 40)
    planned = {m: estimate_run(RetrainSpec(data="x.jsonl", base_model=tiny_base, training={"method": m, "epochs": 2}),
                               tiny_base, rows)[2] for m in ("sft", "dpo", "kto", "sft_then_dpo")}
    per_epoch = estimate_run(RetrainSpec(data="x.jsonl", base_model=tiny_base), tiny_base, rows)[1]
    assert planned["sft"] == 2 * per_epoch
    assert planned["dpo"] == round(2 * planned["sft"] + per_epoch * 2 / 3)
    assert planned["kto"] == round(planned["sft"] * 4 / 3 + per_epoch * 2 / 3)
    assert planned["sft_then_dpo"] == round(3 * planned["sft"] + per_epoch * 2 / 3)  # SFT, then DPO on its pairs


def test_sft_then_dpo_trains_dpo_from_the_sft_adapter_as_its_reference_and_resumes_by_stage(tiny_base, pref_files,
                                                                                             tmp_path):
    from peft import PeftModel

    from tuneloop.training.objectives import encode_pairs

    rows = pairs(pref_files, 48)
    spec = TrainingSpec(method="sft_then_dpo", target_modules=ALL, learning_rate=3e-3, batch_size=8,
                        gradient_accumulation=1, epochs=2, save_every=2, warmup_steps=0, seed=3,
                        early_stopping_patience=None)
    lines: list[str] = []
    whole = train_lora(spec, tiny_base, rows[:40], rows[40:], tmp_path / "whole", log=lines.append)
    assert [s["run_dir"].rsplit("/", 1)[-1] for s in whole.stages] == ["sft", "dpo"]
    assert whole.steps == whole.total_steps == 20 and {h["stage"] for h in whole.history} == {"sft", "dpo"}
    assert any(m.startswith("[dpo] reference log-probabilities") and "the starting adapter" in m for m in lines)
    final = (tmp_path / "whole" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert final == (tmp_path / "whole" / "dpo" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert final != (tmp_path / "whole" / "sft" / "adapter" / "adapter_model.safetensors").read_bytes()

    # DPO's reference is the SFT stage's adapter: the log-probabilities stored with the DPO stage are that model's
    tok = load_tokenizer(tiny_base)
    sft = PeftModel.from_pretrained(load_model(tiny_base), str(tmp_path / "whole" / "sft" / "adapter")).eval()
    enc = encode_pairs(tok, rows[:4], 512)
    lp = sequence_logps(sft, collate([c for c, _ in enc] + [j for _, j in enc], tok.pad_token_id, "cpu", False), 8)
    state = json.loads((tmp_path / "whole" / "dpo" / "checkpoints" / "step-0000010" / "state.json").read_text())
    stored = torch.tensor(state["objective"]["train"]["reference"][:4], dtype=torch.float64)
    assert torch.allclose(stored[:, 0], lp[:4].double(), atol=1e-4)
    assert torch.allclose(stored[:, 1], lp[4:].double(), atol=1e-4)

    seen = []

    def stop(step, total, elapsed):  # the guards see one run of 20 steps
        seen.append((step, total))
        return "test stop" if step == 13 else None

    part = train_lora(spec, tiny_base, rows[:40], rows[40:], tmp_path / "part", should_stop=stop, **QUIET)
    assert part.stopped_reason == "test stop" and part.steps == 13 and seen[0] == (1, 20) and seen[-1] == (13, 20)
    done = train_lora(spec, tiny_base, rows[:40], rows[40:], tmp_path / "part", **QUIET)
    assert done.stages[0]["resumed_from_step"] == 10 and done.stages[1]["resumed_from_step"] == 3
    assert [h["loss"] for h in done.history] == [h["loss"] for h in whole.history]
    assert (tmp_path / "part" / "adapter" / "adapter_model.safetensors").read_bytes() == final
