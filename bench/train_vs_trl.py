"""Training tokens/s: tuneloop's loop against TRL's SFTTrainer with peft and packing, at an equal final loss.

    .venv/bin/python bench/train_vs_trl.py [--size 20m] [--rows 128] [--batch 8] [--repeats 1] [--threads 1]

Both train the same randomly initialized Llama (~21M parameters with `--size 20m`, built in-process
with the tiny base's tokenizer) for one epoch over the same chat rows (a skewed length distribution,
bench/_train_common.py), tokenized once by tuneloop (`encode_rows`: ids, and labels on the assistant
tokens only) and handed to TRL as an already tokenized dataset with `input_ids` and `labels`, so both
see the same tokens and train on the same targets. Same LoRA (r 16, alpha 32, dropout 0.1 on
q/k/v/o), lr 1e-3 linear to 0 with no warmup, weight decay 0, grad-norm clip 1, fp32, CPU, seed 42,
max length 512, one epoch, and the same number of optimizer steps: tuneloop takes `--batch` rows
per step; TRL packs the rows into 512-token sequences (its documented best for short examples,
`packing=True`, strategy bfd) and takes as many packed sequences per step as gives the same number
of steps, so both steps hold about the same tokens; TRL runs twice, with those packs in one
micro-batch and one pack per micro-batch with gradient accumulation (on CPU the second shape wastes
less attention, see below), and the faster counts. TRL runs with `bf16=False` (its SFTConfig
defaults to bf16 autocast, which on a CPU with avx512_bf16 runs the matmuls in bf16: not the fp32
both are compared in) and `gradient_checkpointing=False` (on by default in SFTConfig; it recomputes
the forward, which is slower), and saves and reports nothing.

Cross-example attention in TRL: bfd packing turns on `padding_free`; the collator flattens a micro-batch's
packed sequences into one row with position ids restarting at 0 for every example and no attention
mask, and transformers turns restarting position ids into a block-diagonal causal mask for sdpa on
CPU: no attention crosses examples, but sdpa computes the whole (tokens x tokens) product and masks
it. tuneloop packs a micro-batch into one row too, and runs attention example by example.

Final loss: both adapters are scored by the same function (tuneloop's mean token loss on the
assistant tokens, padded batches, eval mode) on 64 held-out rows of the same distribution; they must
agree within 2 %. Tokens/s counts real tokens (no padding) over the wall time of the training call
(tuneloop: its own measurement from the first step; TRL: `trainer.train()`). The machines are shared:
with `--repeats N` each trainer runs N times, interleaved, and the fastest run counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_common as C  # noqa: E402  (sets the offline environment before transformers loads)

LORA = dict(rank=16, alpha=32, dropout=0.1, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
LR, MAX_LEN, SEED = 1e-3, 512, 42


def run_tuneloop(base: str, rows, batch: int, run_dir: Path, max_steps: int | None = None) -> dict:
    from tuneloop.specs import TrainingSpec
    from tuneloop.training import train_lora

    spec = TrainingSpec(**LORA, learning_rate=LR, batch_size=batch, gradient_accumulation=1, epochs=1,
                        max_steps=max_steps, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                        max_seq_len=MAX_LEN, seed=SEED, save_every=10**6, early_stopping_patience=None)
    start: list[float] = []

    def log(message: str) -> None:  # train_lora logs "training ..." right after it starts its clock
        if message.startswith("training") and not start:
            start.append(time.process_time())

    res = train_lora(spec, base, rows, [], run_dir, resume=False, log=log)
    return {"seconds": res.seconds, "cpu_seconds": time.process_time() - start[0], "tokens": res.train_tokens,
            "steps": res.steps, "last_loss": res.final_loss, "adapter": str(res.adapter_dir)}


def trl_dataset(enc):
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": ids, "labels": labels} for ids, labels in enc])


def run_trl(base: str, enc, packs: int, accumulation: int, out: Path, threads: int, max_steps: int = -1) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tuneloop.models.base import load_tokenizer

    torch.manual_seed(SEED)
    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = SFTConfig(output_dir=str(out), use_cpu=True, packing=True, packing_strategy="bfd", max_length=MAX_LEN,
                    per_device_train_batch_size=packs, gradient_accumulation_steps=accumulation, num_train_epochs=1,
                    max_steps=max_steps,
                    learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
                    max_grad_norm=1.0, seed=SEED, gradient_checkpointing=False, bf16=False, save_strategy="no",
                    report_to=[],
                    logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, log_level="error")
    peft_cfg = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules=list(LORA["target_modules"]), task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=trl_dataset(enc), processing_class=tok,
                         peft_config=peft_cfg)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every logged step
    if threads:
        torch.set_num_threads(threads)
    first = trainer.data_collator([trainer.train_dataset[i] for i in range(min(2, len(trainer.train_dataset)))])
    t0, c0 = time.perf_counter(), time.process_time()
    out_ = trainer.train()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": sum(len(ids) for ids, _ in enc),
            "steps": out_.global_step,
            "last_loss": losses[-1] if losses else float("nan"), "model": trainer.model,
            "packs": len(trainer.train_dataset), "padding_free": trainer.padding_free,
            "batch_keys": sorted(first), "attn": trainer.model.config._attn_implementation}


def held_out_loss(model, tok, enc) -> float:
    from tuneloop.training.loop import mean_loss

    return mean_loss(model, enc, 8, tok.pad_token_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_run_args(ap, batch_help="tuneloop rows per optimizer step")
    args = ap.parse_args()

    import torch
    from peft import PeftModel

    import trl
    from tuneloop.models.base import load_model, load_tokenizer
    from tuneloop.training.objectives import encode_rows

    C.set_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tl-vs-trl-"))
    base, n_params = C.build_base(args.size, work / "base")
    tok = load_tokenizer(base)
    rows, held = C.skewed_rows(args.rows, seed=0), C.skewed_rows(64, seed=1)
    enc, held_enc = encode_rows(tok, rows, MAX_LEN), encode_rows(tok, held, MAX_LEN)
    tokens = sum(len(ids) for ids, _ in enc)
    steps = -(-len(enc) // args.batch)
    from trl.data_utils import pack_dataset

    n_packs = len(pack_dataset(trl_dataset(enc), MAX_LEN, "bfd"))
    packs_per_step = max(1, round(n_packs / steps))
    print(C.machine_line())
    print(f"model: Llama {args.size} ({n_params:,} parameters), trl {trl.__version__}; data: {len(enc)} rows, "
          f"{tokens:,} tokens (mean {tokens / len(enc):.0f}, max {max(len(i) for i, _ in enc)}), "
          f"{sum(sum(1 for x in y[1:] if x != -100) for _, y in enc):,} target tokens")
    print(f"steps: tuneloop {steps} x {args.batch} rows; TRL {-(-n_packs // packs_per_step)} x {packs_per_step} "
          f"packed sequences of <= {MAX_LEN} tokens ({n_packs} packs)")

    trainers = {"tuneloop": None, f"trl {packs_per_step}x1": (packs_per_step, 1),
                f"trl 1x{packs_per_step}": (1, packs_per_step)}
    run_tuneloop(base, rows, args.batch, work / "tl-warm", max_steps=2)  # warm-up: first-touch allocations,
    run_trl(base, enc, packs_per_step, 1, work / "trl-warm", args.threads, max_steps=2)  # lazy imports
    best: dict[str, dict] = {}
    for r in range(args.repeats):
        for name, shape in trainers.items():
            if shape is None:
                res = run_tuneloop(base, rows, args.batch, work / f"tl-{r}")
            else:
                res = run_trl(base, enc, *shape, work / f"{name.replace(' ', '-')}-{r}", args.threads)
            print(f"  repeat {r + 1} {name}: {res['steps']} steps, {res['seconds']:.1f} s wall "
                  f"({res['tokens'] / res['seconds']:,.0f} tokens/s), {res['cpu_seconds']:.1f} s CPU "
                  f"({res['tokens'] / res['cpu_seconds']:,.0f} tokens/CPU-s), last step loss {res['last_loss']:.4f}",
                  flush=True)
            if name not in best or res["seconds"] < best[name]["seconds"]:
                best[name] = res

    fastest = min((k for k in best if k != "tuneloop"), key=lambda k: best[k]["seconds"])
    trl_res = best[fastest]
    print(f"TRL packing: padding_free {trl_res['padding_free']}, attention {trl_res['attn']}, collator keys "
          f"{trl_res['batch_keys']} (a micro-batch's packs flattened into one row, position ids restarting per "
          f"example, no attention mask: transformers builds a block-diagonal causal mask, so no attention crosses "
          f"examples)")
    tl_model = PeftModel.from_pretrained(load_model(base), best["tuneloop"]["adapter"]).eval()
    with torch.no_grad():
        base_loss = held_out_loss(load_model(base).eval(), tok, held_enc)
        loss = {k: held_out_loss(tl_model if k == "tuneloop" else best[k]["model"].eval(), tok, held_enc)
                for k in best}
    gap = abs(loss["tuneloop"] - loss[fastest]) / loss[fastest]
    rate = {k: v["tokens"] / v["seconds"] for k, v in best.items()}
    cpu_rate = {k: v["tokens"] / v["cpu_seconds"] for k, v in best.items()}
    print(f"held-out loss (64 rows, same function): base {base_loss:.4f}, "
          + ", ".join(f"{k} {v:.4f}" for k, v in loss.items())
          + f"; tuneloop vs {fastest}: gap {gap:.2%} (within 2%: {gap <= 0.02})")
    print(f"{'trainer (packs x accumulation)':30} {'tokens':>7} {'wall s':>7} {'tokens/s':>9} {'CPU s':>6} "
          f"{'tokens/CPU-s':>12} {'final loss':>10}")
    for k in best:
        print(f"{k:30} {best[k]['tokens']:7,} {best[k]['seconds']:7.1f} {rate[k]:9,.0f} "
              f"{best[k]['cpu_seconds']:6.1f} {cpu_rate[k]:12,.0f} {loss[k]:10.4f}")
    print(f"tokens per CPU-second, tuneloop/{fastest}: {cpu_rate['tuneloop'] / cpu_rate[fastest]:.2f} "
          f"(the steadier figure when other processes share the cores)")
    print(f"ratio tuneloop/trl tokens/s (TRL's faster shape, {fastest}): {rate['tuneloop'] / rate[fastest]:.2f}")
    sys.exit(0 if gap <= 0.02 else 1)


if __name__ == "__main__":
    main()
