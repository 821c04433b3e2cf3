"""LoRA and QLoRA training on the tiny base: base frozen, adapter learns, loss on assistant tokens only."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tuneloop.models.base import load_model, load_tokenizer
from tuneloop.models.chat import IGNORE, encode_chat
from tuneloop.data import prepare_dataset
from tuneloop.runtime.fsutil import sha256_file
from tuneloop.specs import DataSpec, TrainingSpec
from tuneloop.training import train_lora
from tuneloop.training.loop import build_lora_model

FAST = dict(batch_size=8, gradient_accumulation=1, epochs=1, max_steps=6, save_every=3, learning_rate=3e-3)


def test_only_lora_parameters_are_trainable(tiny_base):
    model = build_lora_model(tiny_base, TrainingSpec())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    targets = {n.split(".")[-4] for n in trainable}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_labels_cover_assistant_tokens_only(tiny_base):
    tok = load_tokenizer(tiny_base)
    msgs = [{"role": "system", "content": "Route it."}, {"role": "user", "content": "my card was charged twice"},
            {"role": "assistant", "content": "billing"}]
    ids, labels = encode_chat(tok, msgs)
    learned = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(learned) == "billing<|end|>"
    prompt_ids, _ = encode_chat(tok, msgs[:-1], add_generation_prompt=True)
    assert ids[: len(prompt_ids)] == prompt_ids  # generation sees the exact training prefix


def test_base_stays_frozen_and_adapter_changes(tiny_base, demo_files, tmp_path):
    before = {p.name: sha256_file(p) for p in sorted(__import__("pathlib").Path(tiny_base).glob("*.safetensors"))}
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    result = train_lora(TrainingSpec(**FAST), tiny_base, ds.train[:48], ds.validation[:16], tmp_path / "run",
                        log=lambda m: None)
    assert result.steps == 6 and result.final_loss > 0
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b), "lora_B starts at zero and must have moved"

    after = {p.name: sha256_file(p) for p in sorted(__import__("pathlib").Path(tiny_base).glob("*.safetensors"))}
    assert before == after
    from peft import PeftModel

    base = load_model(tiny_base)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(load_model(tiny_base), str(result.adapter_dir))
    for name, value in tuned.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(value, reference[key]), f"base weight {key} changed"


def test_qlora_trains_on_a_4bit_base(tiny_base, demo_files, tmp_path):
    import bitsandbytes as bnb

    spec = TrainingSpec(**FAST, quantization="4bit")
    model = build_lora_model(tiny_base, spec)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    result = train_lora(spec, tiny_base, ds.train[:32], ds.validation[:8], tmp_path / "q", log=lambda m: None)
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < first


def test_early_stopping_keeps_the_best_checkpoint(tiny_base, demo_files, tmp_path):
    # a learning rate far too high makes validation loss rise after the first evaluation
    spec = TrainingSpec(batch_size=8, gradient_accumulation=1, epochs=20, eval_every=2, save_every=2,
                        early_stopping_patience=2, learning_rate=0.5, warmup_steps=0)
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    result = train_lora(spec, tiny_base, ds.train[:32], ds.validation[:16], tmp_path / "es", log=lambda m: None)
    vals = [h["val_loss"] for h in result.history if "val_loss" in h]
    assert result.stopped_early and result.steps < result.total_steps
    assert result.best_val_loss == min(vals)
    assert result.best_step == next(h["step"] for h in result.history if h.get("val_loss") == min(vals))
    best = load_file(str(next((tmp_path / "es").glob("best-*")) / "adapter" / "adapter_model.safetensors"))
    final = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert all(torch.equal(best[k], final[k]) for k in best)


def test_training_continues_from_an_adapter(tiny_base, demo_files, tmp_path):
    """init_adapter (a job whose model is an earlier fine-tuned model): training starts from that adapter,
    with its rank and targets, not from a fresh one."""
    ds = prepare_dataset(demo_files["feedback"], DataSpec())
    first = train_lora(TrainingSpec(**(FAST | {"max_steps": 12})), tiny_base, ds.train[:96], ds.validation[:16],
                       tmp_path / "one", log=lambda m: None)
    spec = TrainingSpec(**(FAST | {"max_steps": 1, "learning_rate": 1e-9, "warmup_steps": 0, "rank": 4,
                                   "init_adapter": str(first.adapter_dir)}))
    cont = train_lora(spec, tiny_base, ds.train[:96], ds.validation[:16], tmp_path / "two", log=lambda m: None)
    fresh = train_lora(TrainingSpec(**(FAST | {"max_steps": 1, "learning_rate": 1e-9, "warmup_steps": 0})),
                       tiny_base, ds.train[:96], ds.validation[:16], tmp_path / "three", log=lambda m: None)
    assert cont.history[0]["loss"] < fresh.history[0]["loss"] - 0.1  # it starts where the first run ended
    before = load_file(str(first.adapter_dir / "adapter_model.safetensors"))
    after = load_file(str(cont.adapter_dir / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and before[next(iter(before))].shape == after[next(iter(after))].shape


def test_cli_evaluate_scores_every_row_of_the_file(tiny_base, demo_files, tmp_path, capsys):
    """`tuneloop evaluate --data FILE`: every row is an item (it once split the file and refused it, since
    the leak check emptied the training side it does not use)."""
    from tuneloop.cli.main import main

    rows = demo_files["heldout"].read_text().splitlines()[:6]
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(data), "--max-new-tokens", "2", "--output", str(out)]) == 0
    assert "exact_match" in capsys.readouterr().out
    assert len(__import__("json").loads(out.read_text())["items"]) == 6
