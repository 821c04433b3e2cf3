"""Preference-training tokens/s: tuneloop's DPO and KTO against TRL's DPOTrainer and KTOTrainer, at an equal loss.

    .venv/bin/python bench/prefs_vs_trl.py [--quick] [--data chat|demo] [--size 20m] [--rows 128] [--batch 8]
                                           [--repeats 1] [--threads 1] [--dropout 0.1]

`--quick` (what `make bench` runs): 32 rows of each, batch 8, so 4 steps. The default: 128 rows, 16 steps.

Model: the same randomly initialized Llama as bench/train_vs_trl.py (~21M parameters with `--size 20m`, built
in-process with the tiny base's tokenizer); both sides load it from the same folder.

Data (`--data`):
- chat (the default): the chat rows of the SFT bench (bench/_train_common.py: a skewed prompt length, most
  prompts 20-60 tokens, a quarter up to a few hundred; the answer is one corpus line of ~10-25 tokens). DPO pairs:
  the row's own answer preferred over the next row's answer. KTO: each prompt once, unpaired, as the demo's
  thumbs data is built: its own answer marked desirable for about two rows in five, another row's answer marked
  undesirable for the rest. Answers of several tokens make the token throughput mean something; the skewed prompts
  are where padded batches lose most.
- demo: the shipped preference task (`tuneloop.demo.data.write_preference_data`: pairs.jsonl for DPO,
  thumbs.jsonl for KTO), whose answers are one word; `--rows` of each.
Held-out (for the equal-loss check): 64 pairs (32 with `--quick`) from unseen rows (chat: `skewed_rows(seed=1)`; demo:
heldout-pairs.jsonl); KTO is scored on them unpaired (each pair: a desirable and an undesirable answer).

Same tokens on both sides: tuneloop encodes the rows (`objectives.DPO` / `objectives.KTO`: BOS, the chat template
piece by piece, targets on the final answer and its end token) and TRL trains on those very ids: TRL's trainer is
built on the same rows in TRL's conversational format (`prompt` = messages, `chosen` / `rejected` or `completion` +
`label`), and its tokenized train set is then replaced by one with the same columns (`prompt_ids`, `chosen_ids`,
`rejected_ids`; `prompt_ids`, `completion_ids`, `KL_completion_ids`, `label`) built from tuneloop's encoding. TRL's
own tokenization of these rows differs in two tokens a sequence (it renders the template without BOS, and also
targets the newline the template puts after the end token), which the bench checks and prints. TRL's completion is
cut after the end token: tuneloop forwards that trailing newline but never uses it (nothing is predicted from the
last position), so TRL forwards one token less per sequence for the same targets (this can only help TRL).
KTO's mismatched pairs for the KL estimate are each side's own: TRL rotates completions by one within each batch
(as its `_prepare_dataset` does), tuneloop pairs every example with a fixed other one.

Same training: LoRA r 16, alpha 32, dropout `--dropout` (0.1) on q/k/v/o; beta 0.1; lr 1e-3 linear to 0, no
warmup, weight decay 0, grad-norm clip 1; fp32, CPU, seed 42, max length 512; one epoch of `--batch` units
(pairs or answers) per optimizer step, no accumulation, so the same number of steps; and the same units in every
step: TRL reads its train set in order (`train_sampling_strategy="sequential"`, which KTOTrainer requires anyway)
and the train set is laid out in tuneloop's epoch order. DPO: `loss_type=["sigmoid"]`, no `rpo_alpha`
(tuneloop's sft_weight 0). KTO: the desirable / undesirable weights tuneloop chooses from the counts
(`kto_weights`), passed explicitly to both. Reference = the base with the adapter disabled on both sides
(TRL: `ref_model=None` with `peft_config`; it computes the reference per batch, `precompute_ref_log_probs`
False, its default; tuneloop computes it once before the first step).
The equalizations against TRL's defaults, all documented in its configs: `bf16=False` (DPOConfig / KTOConfig
default to bf16 autocast: not the fp32 both are compared in), `gradient_checkpointing=False` (on by default; it
recomputes the forward), `disable_dropout=False` (on by default, it sets every dropout, the LoRA dropout included,
to 0: with `--dropout 0` it is left on, as it then changes nothing), `lr` and `beta` set, no saving, no reporting,
no evaluation. Everything else is TRL's default (its optimizer, logging every 10 steps, padded batches:
DPOTrainer's `padding_free` is disabled in 1.16, so each micro-batch is padded to its longest sequence, chosen and
rejected together; its fused LM head runs on the target positions only, as tuneloop's does).

Tokens: the same rule on both sides: the non-pad tokens of every sequence a training step forwards with gradient or
for the KL estimate, each counted once per epoch (DPO: prompt + chosen and prompt + rejected; KTO: prompt + answer
and prompt + mismatched answer), up to the last target token (so tuneloop's unused trailing newline is not counted).
The reference passes are not counted again on either side.

Time: tuneloop's is `train_lora`'s own measurement (from the first step, including the final checkpoint it always
writes) PLUS the reference pre-computation that runs just before it (timed here around `prepare`); it is also shown
without it. TRL's is `trainer.train()`. Model loading and tokenization are outside both. With `--repeats N` each
trainer runs N times, interleaved, and the fastest run counts (the machines are shared); a one-step warm-up of
each comes first.

Equal loss: every final adapter is scored by one function here on the held-out pairs, in eval mode, with the base
(adapter off) as reference: for DPO the mean -log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r))) over the pairs,
for KTO the weighted KTO loss with z0 = max(0, mean of pi - ref over the mismatched held-out pairs), and the
held-out preference accuracy of both. Losses must agree within 2 % (relative); the exit status is 1 if not.
The last line is the summary.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _train_common as C  # noqa: E402  (sets the offline environment before transformers loads)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LR, MAX_LEN, SEED, BETA = 1e-3, 512, 42, 0.1
IGNORE = -100


# ---------------------------------------------------------------------------------------------------- data


def chat_data(n: int, seed: int):
    """(pair rows, thumbs rows) from the SFT bench's skewed chat rows."""
    from tuneloop.data.validate import Row

    rows = C.skewed_rows(n, seed=seed)
    rng = random.Random(seed + 1)
    pairs, thumbs = [], []
    for i, r in enumerate(rows):
        other = rows[(i + 1) % n].answer
        pairs.append(Row(line=i + 1, messages=r.messages, rejected=other))
        good = rng.random() < 0.4
        thumbs.append(Row(line=i + 1, messages=[*r.prompt_messages, {"role": "assistant",
                                                                       "content": r.answer if good else other}],
                          label=good))
    return pairs, thumbs


def demo_data(n: int, n_held: int, work: Path):
    """(pair rows, thumbs rows, held-out pair rows) of the shipped preference task."""
    from tuneloop.data import prepare_dataset
    from tuneloop.demo.data import write_preference_data
    from tuneloop.specs import DataSpec

    files = write_preference_data(work / "demo-data", seed=0)
    spec = DataSpec(validation_split=0.0, test_split=0.0)
    pairs = prepare_dataset(files["pairs"], spec, method="dpo").train[:n]
    thumbs = prepare_dataset(files["thumbs"], spec, method="kto").train[:n]
    held = prepare_dataset(files["heldout_pairs"], spec, method="dpo").train[:n_held]
    return pairs, thumbs, held


def held_out(tok, rows, weights) -> dict:
    """Encoded held-out pairs (chosen, rejected) and, for the KTO loss's z0, each answer on the next pair's prompt."""
    from tuneloop.training.objectives import encode_answer

    keep = []
    for r in rows:
        c = encode_answer(tok, r.prompt_messages, r.answer, MAX_LEN)
        j = encode_answer(tok, r.prompt_messages, r.rejected, MAX_LEN)
        if c is not None and j is not None:
            keep.append((r, c, j))
    mismatched = []
    for i, (r, _, _) in enumerate(keep):
        other = keep[(i + 1) % len(keep)][0]
        for answer in (other.answer, other.rejected):
            m = encode_answer(tok, r.prompt_messages, answer, MAX_LEN)
            if m is not None:
                mismatched.append(m)
    return {"chosen": [c for _, c, _ in keep], "rejected": [j for _, _, j in keep], "mismatched": mismatched,
            "weights": weights}


def split(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): the completion runs from the first target token to the last one."""
    first = next(i for i, y in enumerate(labels) if y != IGNORE)
    last = max(i for i, y in enumerate(labels) if y != IGNORE)
    return ids[:first], ids[first: last + 1]


def useful(ids: list[int], labels: list[int]) -> int:
    """Tokens of a sequence up to its last target (the counting rule)."""
    return max(i for i, y in enumerate(labels) if y != IGNORE) + 1


def spec_for(method: str, batch: int, dropout: float, weights=(None, None), max_steps=None):
    from tuneloop.specs import TrainingSpec

    return TrainingSpec(method=method, rank=16, alpha=32, dropout=dropout, target_modules=TARGETS, learning_rate=LR,
                        batch_size=batch, gradient_accumulation=1, epochs=1, max_steps=max_steps, warmup_steps=0,
                        weight_decay=0.0, max_grad_norm=1.0, max_seq_len=MAX_LEN, seed=SEED, save_every=10**6,
                        early_stopping_patience=None, beta=BETA, sft_weight=0.0, desirable_weight=weights[0],
                        undesirable_weight=weights[1])


def order(n: int, batch: int) -> list[int]:
    """tuneloop's epoch-0 order of its units (packed runs: no length grouping)."""
    from tuneloop.training.packing import epoch_batches

    return [i for mb in epoch_batches([1] * n, batch, SEED, 0) for i in mb]


def trl_dpo_rows(obj, batch: int) -> tuple[list[dict], int]:
    """TRL's tokenized DPO columns from tuneloop's encoded pairs, in tuneloop's order; and their tokens."""
    rows, tokens = [], 0
    for i in order(len(obj.pairs), batch):
        (c_ids, c_lab), (r_ids, r_lab) = obj.pairs[i]
        p, chosen = split(c_ids, c_lab)
        p2, rejected = split(r_ids, r_lab)
        assert p == p2, "chosen and rejected encode the prompt differently"
        rows.append({"prompt_ids": p, "chosen_ids": chosen, "rejected_ids": rejected})
        tokens += 2 * len(p) + len(chosen) + len(rejected)
    return rows, tokens


def trl_kto_rows(obj, batch: int) -> tuple[list[dict], int]:
    """TRL's tokenized KTO columns from tuneloop's encoded answers, in tuneloop's order, with TRL's own KL
    completions (rotated by one within each batch, as KTOTrainer._prepare_dataset does); and their tokens."""
    rows = []
    for i in order(len(obj.examples), batch):
        p, completion = split(*obj.examples[i])
        rows.append({"prompt_ids": p, "completion_ids": completion, "label": bool(obj.good[i])})
    tokens = 0
    for s in range(0, len(rows), batch):
        chunk = rows[s: s + batch]
        kl = [chunk[-1]["completion_ids"]] + [r["completion_ids"] for r in chunk[:-1]]
        for r, k in zip(chunk, kl):
            r["KL_completion_ids"] = k
            tokens += min(len(r["prompt_ids"]) + len(r["completion_ids"]), MAX_LEN)
            tokens += min(len(r["prompt_ids"]) + len(k), MAX_LEN)
    return rows, tokens


def trl_conversational(method: str, rows) -> list[dict]:
    if method == "dpo":
        return [{"prompt": r.prompt_messages, "chosen": [{"role": "assistant", "content": r.answer}],
                 "rejected": [{"role": "assistant", "content": r.rejected}]} for r in rows]
    return [{"prompt": r.prompt_messages, "completion": [{"role": "assistant", "content": r.answer}],
             "label": bool(r.label)} for r in rows]


# ---------------------------------------------------------------------------------------------------- runs


def run_tuneloop(method: str, base: str, rows, spec, run_dir: Path, tokens: int) -> dict:
    from tuneloop.training import objectives, train_lora

    prep = {"wall": 0.0, "cpu0": None}
    original = objectives._Referenced.prepare

    def timed_prepare(self, *a, **k):  # only measures: the same call, timed
        t, c = time.perf_counter(), time.process_time()
        if prep["cpu0"] is None:
            prep["cpu0"] = c
        try:
            return original(self, *a, **k)
        finally:
            prep["wall"] += time.perf_counter() - t

    objectives._Referenced.prepare = timed_prepare
    try:
        res = train_lora(spec, base, rows, [], run_dir, resume=False, log=lambda m: None)
        cpu_end = time.process_time()
    finally:
        objectives._Referenced.prepare = original
    return {"seconds": res.seconds + prep["wall"], "train_seconds": res.seconds, "ref_seconds": prep["wall"],
            "cpu_seconds": cpu_end - prep["cpu0"], "tokens": tokens, "steps": res.steps,
            "mean_loss": sum(h["loss"] for h in res.history) / len(res.history), "adapter": str(res.adapter_dir), "tl_tokens": res.train_tokens}


def run_trl(method: str, base: str, conv: list[dict], tokenized: list[dict], batch: int, weights, dropout: float,
            out: Path, threads: int, tokens: int, max_steps: int = -1) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback

    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer
    from tuneloop.models.base import load_tokenizer

    torch.manual_seed(SEED)
    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    common = dict(output_dir=str(out), use_cpu=True, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                  num_train_epochs=1, max_steps=max_steps, learning_rate=LR, lr_scheduler_type="linear",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=SEED, gradient_checkpointing=False,
                  bf16=False, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
                  dataloader_num_workers=0, log_level="error", beta=BETA, max_length=MAX_LEN,
                  disable_dropout=dropout == 0, train_sampling_strategy="sequential")
    peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules=list(TARGETS),
                          task_type="CAUSAL_LM")
    if method == "dpo":
        cfg, cls = DPOConfig(**common, loss_type=["sigmoid"]), DPOTrainer
    else:
        cfg, cls = KTOConfig(**common, loss_type="kto", desirable_weight=weights[0],
                             undesirable_weight=weights[1]), KTOTrainer
    trainer = cls(model=model, ref_model=None, args=cfg, train_dataset=Dataset.from_list(conv),
                  processing_class=tok, peft_config=peft_cfg)
    own = trainer.train_dataset  # TRL's own tokenization of the same rows, kept for the check
    trainer.train_dataset = Dataset.from_list(tokenized)  # the same columns, tuneloop's ids and order
    trainer.remove_callback(PrinterCallback)
    if threads:
        torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    out_ = trainer.train()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": tokens, "steps": out_.global_step,
            "mean_loss": out_.training_loss, "trainer": trainer, "own": own}


# ---------------------------------------------------------------------------------------------------- scoring


def seq_logps(model, seqs, pad_id: int, batch: int = 16):
    """Summed target log-probabilities of encoded sequences (padded batches of similar lengths, eval mode)."""
    import torch

    from tuneloop.training.objectives import sequence_logps
    from tuneloop.training.packing import collate

    out = torch.zeros(len(seqs), dtype=torch.float64)
    by_len = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for s in range(0, len(seqs), batch):
        idx = by_len[s: s + batch]
        lp = sequence_logps(model, collate([seqs[i] for i in idx], pad_id, "cpu", packed=False), len(idx))
        out[idx] = lp.double()
    return out


def held_logps(model, held, pad_id: int, kto: bool) -> dict:
    """Log-probabilities of the held-out chosen (c), rejected (r) and, for KTO, mismatched (m) sequences."""
    import torch

    model.eval()
    with torch.no_grad():
        out = {"c": seq_logps(model, held["chosen"], pad_id), "r": seq_logps(model, held["rejected"], pad_id)}
        if kto:
            out["m"] = seq_logps(model, held["mismatched"], pad_id)
    return out


def score(pol: dict, ref: dict, held) -> dict:
    """The one scoring function: held-out DPO or KTO loss against the reference (the base, adapter off), and the
    held-out preference accuracy (the chosen answer more likely than the rejected one)."""
    import torch
    import torch.nn.functional as F

    margin = BETA * ((pol["c"] - ref["c"]) - (pol["r"] - ref["r"]))
    out = {"dpo": float(-F.logsigmoid(margin).mean()), "acc": float((pol["c"] > pol["r"]).double().mean())}
    if "m" in pol:  # KTO: every pair gives a desirable (chosen) and an undesirable (rejected) answer
        z0 = max(float((pol["m"] - ref["m"]).mean()), 0.0)
        wd, wu = held["weights"]
        up = wd * (1 - torch.sigmoid(BETA * ((pol["c"] - ref["c"]) - z0)))
        down = wu * (1 - torch.sigmoid(BETA * (z0 - (pol["r"] - ref["r"]))))
        out["kto"] = float(torch.cat([up, down]).mean())
    return out


def load_adapter(base: str, adapter: str):
    from peft import PeftModel

    from tuneloop.models.base import load_model

    return PeftModel.from_pretrained(load_model(base), adapter).eval()


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 rows of each, batch 8 (4 steps), 32 held-out pairs")
    ap.add_argument("--data", choices=("chat", "demo"), default="chat")
    ap.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout on both sides")
    C.add_run_args(ap, batch_help="pairs (DPO) or answers (KTO) per optimizer step, on both sides")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.batch = 32, 8
    n_held = 32 if args.quick else 64

    import warnings

    import datasets

    import trl
    from tuneloop.models.base import load_tokenizer

    datasets.disable_progress_bars()  # TRL maps its train set at every trainer's construction
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' gradient_checkpointing renames
    from tuneloop.training.objectives import DPO, KTO, kto_weights

    C.set_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="tl-prefs-vs-trl-"))
    base, n_params = C.build_base(args.size, work / "base")
    tok = load_tokenizer(base)
    if args.data == "chat":
        pairs, thumbs = chat_data(args.rows, seed=0)
        held_pairs = chat_data(n_held, seed=1)[0]
    else:
        pairs, thumbs, held_pairs = demo_data(args.rows, n_held, work)
    n_good = sum(bool(r.label) for r in thumbs)
    weights = kto_weights(n_good, len(thumbs) - n_good)
    specs = {"dpo": spec_for("dpo", args.batch, args.dropout),
             "kto": spec_for("kto", args.batch, args.dropout, weights)}
    rows = {"dpo": pairs, "kto": thumbs}
    objs = {m: (DPO if m == "dpo" else KTO)(tok, rows[m], MAX_LEN, specs[m]) for m in specs}
    tokenized, tokens = {}, {}
    tokenized["dpo"], tokens["trl dpo"] = trl_dpo_rows(objs["dpo"], args.batch)
    tokenized["kto"], tokens["trl kto"] = trl_kto_rows(objs["kto"], args.batch)
    tokens["tuneloop dpo"] = sum(useful(*c) + useful(*j) for c, j in objs["dpo"].pairs)
    tokens["tuneloop kto"] = sum(useful(*e) + useful(*m) for e, m in zip(objs["kto"].examples, objs["kto"].mismatched))
    conv = {m: trl_conversational(m, rows[m]) for m in specs}
    held = held_out(tok, held_pairs, weights)
    steps = -(-len(objs["dpo"]) // args.batch)

    print(C.machine_line())
    tgt = lambda ex: sum(1 for y in ex[1][1:] if y != IGNORE)  # noqa: E731
    print(f"model: Llama {args.size} ({n_params:,} parameters), trl {trl.__version__}; data {args.data}: "
          f"DPO {len(objs['dpo'])} pairs (mean {tokens['tuneloop dpo'] / len(objs['dpo']) / 2:.0f} tokens a sequence, "
          f"answers mean {sum(tgt(c) for c, _ in objs['dpo'].pairs) / len(objs['dpo']):.1f} target tokens), "
          f"KTO {len(objs['kto'])} answers ({n_good} desirable, weights {weights[0]:.3g} / {weights[1]:.3g}); "
          f"held-out {len(held['chosen'])} pairs")
    print(f"steps: {steps} x {args.batch} units on both sides, one epoch, the same units in each step; "
          f"LoRA dropout {args.dropout}")

    names = ["tuneloop dpo", "trl dpo", "tuneloop kto", "trl kto"]

    def run(name: str, tag: str, max_steps=None):
        method = name.split()[1]
        if name.startswith("tuneloop"):
            spec = specs[method] if max_steps is None else spec_for(
                method, args.batch, args.dropout, weights if method == "kto" else (None, None), max_steps)
            return run_tuneloop(method, base, rows[method], spec, work / f"{name.replace(' ', '-')}-{tag}",
                                tokens[name])
        return run_trl(method, base, conv[method], tokenized[method], args.batch, weights, args.dropout,
                       work / f"{name.replace(' ', '-')}-{tag}", args.threads, tokens[name],
                       max_steps=-1 if max_steps is None else max_steps)

    for name in names:  # warm-up: first-touch allocations, lazy imports
        run(name, "warm", max_steps=1)
    best: dict[str, dict] = {}
    for r in range(args.repeats):
        for name in names:
            res = run(name, str(r))
            extra = (f" (reference pre-computation {res['ref_seconds']:.1f} s + training {res['train_seconds']:.1f} s)"
                     if "ref_seconds" in res else "")
            print(f"  repeat {r + 1} {name}: {res['steps']} steps, {res['seconds']:.1f} s wall{extra} "
                  f"({res['tokens'] / res['seconds']:,.0f} tokens/s), {res['cpu_seconds']:.1f} s CPU "
                  f"({res['tokens'] / res['cpu_seconds']:,.0f} tokens/CPU-s), mean step loss {res['mean_loss']:.4f}",
                  flush=True)
            if name not in best or res["seconds"] < best[name]["seconds"]:
                best[name] = res

    # TRL's own tokenization of the same rows, against the ids it trained on here
    for m in ("dpo", "kto"):
        own, ours = best[f"trl {m}"]["own"], tokenized[m]
        col = "chosen_ids" if m == "dpo" else "completion_ids"
        same_prompt = sum(own[i]["prompt_ids"] == ours[j]["prompt_ids"][1:] for j, i in
                          enumerate(order(len(own), args.batch)))
        tail = sum(own[i][col][:-1] == ours[j][col] for j, i in enumerate(order(len(own), args.batch)))
        print(f"TRL's own {m} tokenization of the same rows: prompt = tuneloop's without BOS in {same_prompt}/{len(own)}, "
              f"{col} = tuneloop's completion + the newline after the end token in {tail}/{len(own)}")

    for name in ("trl dpo", "trl kto"):  # score saved adapters, loaded the same way as tuneloop's
        adir = work / f"{name.replace(' ', '-')}-adapter"
        best[name]["trainer"].model.save_pretrained(str(adir))
        best[name]["adapter"] = str(adir)
        best[name].pop("trainer"), best[name].pop("own")
    pol = {name: load_adapter(base, best[name]["adapter"]) for name in names}
    with pol["tuneloop kto"].disable_adapter():
        ref = held_logps(pol["tuneloop kto"], held, tok.pad_token_id, kto=True)
    scores = {name: score(held_logps(model, held, tok.pad_token_id, "kto" in name), ref, held)
              for name, model in pol.items()}
    base_score = score(ref, ref, held)

    key = {"dpo": "dpo", "kto": "kto"}
    rate = {k: v["tokens"] / v["seconds"] for k, v in best.items()}
    cpu_rate = {k: v["tokens"] / v["cpu_seconds"] for k, v in best.items()}
    print(f"{'trainer':14} {'steps':>5} {'tokens':>7} {'wall s':>7} {'tokens/s':>9} {'CPU s':>6} {'tok/CPU-s':>9} "
          f"{'held-out loss':>13} {'pref acc':>8}")
    for k in names:
        m = k.split()[1]
        wall = f"{best[k]['seconds']:7.1f}"
        print(f"{k:14} {best[k]['steps']:5} {best[k]['tokens']:7,} {wall} {rate[k]:9,.0f} "
              f"{best[k]['cpu_seconds']:6.1f} {cpu_rate[k]:9,.0f} {scores[k][key[m]]:13.4f} {scores[k]['acc']:8.3f}")
    print(f"{'base (adapter off)':14} {'':5} {'':7} {'':7} {'':9} {'':6} {'':9} "
          f"{base_score['dpo']:6.4f} {base_score['kto']:6.4f} {base_score['acc']:8.3f}  (dpo / kto loss)")
    summary, ok = [], True
    for m in ("dpo", "kto"):
        tl = best[f"tuneloop {m}"]
        ratio = rate[f"tuneloop {m}"] / rate[f"trl {m}"]
        no_ref = (tl["tokens"] / tl["train_seconds"]) / rate[f"trl {m}"]
        cpu_ratio = cpu_rate[f"tuneloop {m}"] / cpu_rate[f"trl {m}"]
        a, b = scores[f"tuneloop {m}"][key[m]], scores[f"trl {m}"][key[m]]
        gap = abs(a - b) / b
        ok &= gap <= 0.02
        print(f"{m}: tuneloop/trl tokens/s {ratio:.2f} (with tuneloop's reference pre-computation, "
              f"{tl['ref_seconds']:.1f} s of its {tl['seconds']:.1f} s; without it {no_ref:.2f}); tokens per CPU-second "
              f"{cpu_ratio:.2f}; held-out {m} loss {a:.4f} vs {b:.4f}, gap {gap:.1%} (within 2%: {gap <= 0.02}); "
              f">= 1.5x: {ratio >= 1.5}")
        summary.append(f"{m} {ratio:.2f}x tokens/s (loss {a:.4f} vs {b:.4f}, {gap:.1%}"
                       + ("" if gap <= 0.02 else ", NOT within 2%") + ")")
    print(f"prefs_vs_trl ({args.data}, {args.size}, {steps} steps x {args.batch}): " + ", ".join(summary))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
