"""General benchmarks in the style of lm-evaluation-harness, scored in batches.

Benchmark files (JSONL, one JSON object a line, blank lines ignored)
--------------------------------------------------------------------
A file holds rows of one kind, inferred from the keys of its rows; no header
is needed. An optional first line ``{"benchmark": "<name>", "kind":
"multiple_choice" | "generative", "description": "..."}`` names the benchmark
(otherwise the file's stem does) and states the kind, which the rows must then
match. Extra keys on a row are kept and ignored.

Multiple choice::

    {"id": "arc-001", "context": "Question: Which gas do plants take in?\\nAnswer:",
     "choices": ["oxygen", "carbon dioxide"], "answer": 1}

``context`` is the prompt, already formatted (lm-eval's ``doc_to_text``); each
choice is scored as a continuation of it. The continuation is the choice with
a single leading space (lm-eval's ``target_delimiter=" "``) unless the context
is empty or ends in whitespace or the choice starts with whitespace, in which
case it is the choice as written. ``answer`` is the 0-based index of the
correct choice. ``id`` must be unique within the file; at least two non-empty
choices.

Generative (short-answer, TriviaQA style)::

    {"id": "tqa-001", "question": "Which planet is known as the Red Planet?",
     "answers": ["Mars", "planet Mars"]}

The prompt is ``"Question: {question}\\nAnswer:"``; the model answers greedily
and its text is cut at the first newline, ``.`` or ``,`` (lm-eval's ``until``
for TriviaQA). Exact match is 1 when the normalized prediction (lowercase, no
punctuation, no articles a/an/the, single spaces) equals any normalized alias.

Names
-----
``load_benchmark`` takes a path to such a file, one of the samples shipped
with the package (``SAMPLE_NAMES``: about 20 items each, written for tuneloop
in the style of the real benchmark, for smoke tests and timings, not for
measuring a model), or a Hugging Face ``datasets`` id with an adapter
(``HUB_BENCHMARKS``), written ``<id>[:<config>][@<split>]``, e.g.
``allenai/ai2_arc:ARC-Challenge@test`` (needs the network or a warm cache).

Scoring
-------
Tokenization follows lm-eval's ``_encode_pair``: trailing whitespace of the
context moves to the front of the continuation, ``context + continuation`` is
encoded jointly and split after as many tokens as the context alone encodes
to, so the continuation's tokens are those of the whole text. The tokenizer's
BOS token (or, without one, its EOS token) is prepended to every context.
Sequences longer than the model's ``max_position_embeddings`` are cut on the
left.

A multiple choice item's ``acc`` takes the choice with the largest summed
log-likelihood; ``acc_norm`` divides each sum by the length of the choice in
characters, as written (without the leading space), which is what
lm-evaluation-harness computes for ``acc_norm`` (``len(choice)`` of its
``doc_to_choice``; for ASCII text that is also the length in bytes, which
lm-eval scores separately as ``acc_bytes``). Ties go to the first choice,
like ``numpy.argmax``.
``bench/mc_vs_lm_eval.py`` checks both per item against lm-eval.

Batch sizes count rows as lm-eval does: requests whose continuation is one
token and that share a context need one row (the context), every other
request one row of its own. At batch size 1 each row is one unpadded forward
of (context + continuation)[:-1]; at larger batch sizes a batch runs as one
packed row with no padding: each distinct context once (the choices of a
multiple choice item share theirs), followed by every continuation that
shares it, under a block attention mask (a continuation sees its context and
itself) with positions continuing after the context, so each request's
log-probabilities are those of its own unpadded run. Models whose attention
ignores custom masks (flash kernels) fall back to right-padded rows.

Greedy generation runs left-padded with an attention mask, explicit position
ids counted from each row's first real token and a KV cache; the task
evaluation (`evals.run.generate`) uses the same decoder. Requests are
sorted by length (longest first) to reduce padding and results are returned in
the caller's order. At batch size 1 every row is one unpadded forward,
exactly lm-eval's computation. Packed (or padded) and unpadded fp32
runs are not bit-identical: logits differ by a few ulps (~3e-6) and summed
log-probabilities by up to ~5e-5 on the samples; tests check sums agree to
1e-4 and that decisions (acc, acc_norm, is_greedy, every generated token) are
identical at batch 1 and 8 on all sample items.
"""

from __future__ import annotations

import json
import math
import re
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tuneloop.errors import UserError
from tuneloop.evals.decode import chunks, forward_params, greedy_generate, max_length, model_device, stop_table

MULTIPLE_CHOICE = "multiple_choice"
GENERATIVE = "generative"
KINDS = (MULTIPLE_CHOICE, GENERATIVE)
SAMPLE_NAMES = ("arc_easy", "boolq", "hellaswag", "piqa", "siqa", "triviaqa")
GEN_PROMPT = "Question: {question}\nAnswer:"
GEN_UNTIL = ("\n", ".", ",")
_KEYS = {MULTIPLE_CHOICE: ("id", "context", "choices", "answer"), GENERATIVE: ("id", "question", "answers")}


def samples_dir() -> Path:
    """Folder of the shipped sample benchmarks (package data)."""
    return Path(__file__).resolve().parent / "benchmarks_data"


@dataclass
class Benchmark:
    name: str
    kind: str  # MULTIPLE_CHOICE or GENERATIVE
    items: list[dict]
    source: str = ""


@dataclass
class BenchmarkResult:
    name: str
    kind: str
    n: int
    metrics: dict[str, float]
    per_item: dict[str, dict[str, float]]  # metric -> item id -> score
    seconds: float = 0.0
    items: list[dict] = field(default_factory=list)  # id, pred / prediction

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n": self.n, "metrics": self.metrics,
                "per_item": self.per_item, "seconds": self.seconds, "items": self.items}

    @classmethod
    def from_json(cls, d: dict) -> "BenchmarkResult":
        return cls(d["name"], d["kind"], d["n"], d["metrics"], d["per_item"], d.get("seconds", 0.0),
                   d.get("items", []))


# ---------------------------------------------------------------------------------------------
# Loading and validation


def _kind_of(obj: dict, where: str) -> str:
    mc = all(k in obj for k in _KEYS[MULTIPLE_CHOICE][1:])
    gen = all(k in obj for k in _KEYS[GENERATIVE][1:])
    if mc == gen:
        raise UserError(where, "is neither a multiple choice row (id, context, choices, answer) nor a generative "
                        "row (id, question, answers)" if not mc else "has the keys of both row kinds",
                        "give each row exactly one of those key sets (see tuneloop.evals.benchmarks)")
    return MULTIPLE_CHOICE if mc else GENERATIVE


def validate_row(obj: object, where: str, kind: str | None = None) -> tuple[str, dict]:
    """(kind, row) for one benchmark row, or UserError naming `where` (e.g. 'file.jsonl line 3')."""
    if not isinstance(obj, dict):
        raise UserError(where, f"is a JSON {type(obj).__name__}, not an object", "write one JSON object per line")
    k = _kind_of(obj, where)
    if kind is not None and k != kind:
        raise UserError(where, f"is a {k} row in a {kind} benchmark", "keep one kind of row per file")
    if not isinstance(obj.get("id"), str) or not obj["id"].strip():
        raise UserError(where, "needs an `id` that is a non-empty string", 'add e.g. "id": "item-001"')
    if k == MULTIPLE_CHOICE:
        ch = obj["choices"]
        if not isinstance(obj["context"], str):
            raise UserError(where, "`context` must be a string", "put the formatted prompt in `context`")
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c.strip() for c in ch):
            raise UserError(where, "`choices` must be a list of at least two non-empty strings",
                            "list every candidate continuation as a string")
        a = obj["answer"]
        if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < len(ch):
            raise UserError(where, f"`answer` must be an integer index into the {len(ch)} choices, got {a!r}",
                            f"use 0 to {len(ch) - 1}")
    else:
        if not isinstance(obj["question"], str) or not obj["question"].strip():
            raise UserError(where, "`question` must be a non-empty string", "write the question text")
        ans = obj["answers"]
        if not isinstance(ans, list) or not ans or not all(isinstance(x, str) and x.strip() for x in ans):
            raise UserError(where, "`answers` must be a non-empty list of non-empty strings (aliases)",
                            'e.g. "answers": ["Mars", "planet Mars"]')
    return k, obj


def read_benchmark_file(path: str | Path, limit: int | None = None, name: str | None = None) -> Benchmark:
    """Read and validate a benchmark JSONL file (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(str(path), "is not a file", "give the path of a benchmark .jsonl file")
    items: list[dict] = []
    ids: dict[str, int] = {}
    kind: str | None = None
    header_name = None
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(items) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(where, f"is not valid JSON ({e.msg} at column {e.colno})",
                                "write one JSON object per line") from None
            if not items and kind is None and isinstance(obj, dict) and "benchmark" in obj and "id" not in obj:
                header_name, kind = str(obj["benchmark"]), obj.get("kind")
                if kind is not None and kind not in KINDS:
                    raise UserError(where, f"header kind {kind!r} is not one of {', '.join(KINDS)}",
                                    "fix the header's kind or drop it (the kind is inferred from the rows)")
                continue
            k, row = validate_row(obj, where, kind)
            kind = k
            if row["id"] in ids:
                raise UserError(where, f"repeats id {row['id']!r} of line {ids[row['id']]}", "make ids unique")
            ids[row["id"]] = n
            items.append(row)
    if not items:
        raise UserError(str(path), "holds no benchmark rows", "add rows in the format of tuneloop.evals.benchmarks")
    return Benchmark(name or header_name or path.stem, kind, items, str(path))


# --- Hugging Face datasets adapters (lm-eval's prompts) ---------------------------------------


def _hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are artifacts of the WikiHow part of HellaSwag
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _arc(doc: dict, i: int) -> dict:
    labels = list(doc["choices"]["label"])
    return {"id": str(doc["id"]), "context": f"Question: {doc['question']}\nAnswer:",
            "choices": list(doc["choices"]["text"]), "answer": labels.index(doc["answerKey"])}


def _boolq(doc: dict, i: int) -> dict:
    return {"id": f"boolq-{i}", "context": f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:",
            "choices": ["no", "yes"], "answer": int(bool(doc["answer"]))}


def _hellaswag(doc: dict, i: int) -> dict:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {"id": f"hellaswag-{doc.get('ind', i)}",
            "context": _hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_preprocess(e) for e in doc["endings"]], "answer": int(doc["label"])}


def _piqa(doc: dict, i: int) -> dict:
    return {"id": f"piqa-{i}", "context": f"Question: {doc['goal']}\nAnswer:",
            "choices": [doc["sol1"], doc["sol2"]], "answer": int(doc["label"])}


def _siqa(doc: dict, i: int) -> dict:
    return {"id": f"siqa-{i}", "context": f"Q: {doc['context']} {doc['question']}\nA:",
            "choices": [doc["answerA"], doc["answerB"], doc["answerC"]], "answer": int(doc["label"]) - 1}


def _triviaqa(doc: dict, i: int) -> dict:
    ans = doc["answer"]
    aliases = list(dict.fromkeys([*ans.get("aliases", []), ans.get("value", "")]))
    return {"id": str(doc.get("question_id") or f"triviaqa-{i}"), "question": doc["question"],
            "answers": [a for a in aliases if a and a.strip()]}


@dataclass(frozen=True)
class HubBenchmark:
    name: str  # benchmark name for results; {config} is filled in
    kind: str
    convert: object  # (doc, index) -> row in the local format
    config: str | None = None  # default config
    split: str = "validation"


HUB_BENCHMARKS: dict[str, HubBenchmark] = {
    "allenai/ai2_arc": HubBenchmark("arc_{config}", MULTIPLE_CHOICE, _arc, "ARC-Easy", "test"),
    "google/boolq": HubBenchmark("boolq", MULTIPLE_CHOICE, _boolq),
    "Rowan/hellaswag": HubBenchmark("hellaswag", MULTIPLE_CHOICE, _hellaswag),
    "ybisk/piqa": HubBenchmark("piqa", MULTIPLE_CHOICE, _piqa),
    "allenai/social_i_qa": HubBenchmark("siqa", MULTIPLE_CHOICE, _siqa),
    "mandarjoshi/trivia_qa": HubBenchmark("triviaqa", GENERATIVE, _triviaqa, "rc.nocontext"),
}


def _unknown(name: str) -> UserError:
    return UserError(repr(name), "is not a benchmark file, a shipped sample or a Hugging Face dataset tuneloop "
                     "has an adapter for",
                     f"give a .jsonl file in the documented format, a sample ({', '.join(SAMPLE_NAMES)}) or one of "
                     f"{', '.join(HUB_BENCHMARKS)} (optionally `:config` and `@split`)")


def parse_hub_name(spec: str) -> tuple[str, HubBenchmark, str | None, str]:
    """`<id>[:<config>][@<split>]` (optionally prefixed `hf:`) -> (id, adapter, config, split)."""
    s = spec[3:] if spec.startswith("hf:") else spec
    s, _, split = s.partition("@")
    ds_id, _, config = s.partition(":")
    match = {k.lower(): k for k in HUB_BENCHMARKS}.get(ds_id.lower())
    if match is None:
        raise _unknown(spec)
    hb = HUB_BENCHMARKS[match]
    return match, hb, config or hb.config, split or hb.split


def load_hub_benchmark(spec: str, limit: int | None = None) -> Benchmark:
    """Download (or read from the HF cache) a known benchmark and convert it to the local format."""
    ds_id, hb, config, split = parse_hub_name(spec)
    import datasets  # deferred: slow to import, and only this path needs it

    ds = datasets.load_dataset(ds_id, config, split=f"{split}[:{limit}]" if limit else split)
    items, kind = [], hb.kind
    for i, doc in enumerate(ds):
        items.append(validate_row(hb.convert(doc, i), f"{spec} row {i}", kind)[1])
    name = hb.name.format(config=(config or "").lower().replace("arc-", ""))
    return Benchmark(name, kind, items, f"hf:{ds_id}:{config or ''}@{split}")


def load_benchmark(name_or_path: str | Path, limit: int | None = None) -> Benchmark:
    """A benchmark from a .jsonl path, a shipped sample name, or a known Hugging Face dataset id."""
    if limit is not None and limit < 1:
        raise UserError(limit, "limit must be a positive number of items", "give a limit of 1 or more, or none")
    s = str(name_or_path)
    if isinstance(name_or_path, Path) or s.endswith(".jsonl") or Path(s).is_file():
        return read_benchmark_file(s, limit)
    if s in SAMPLE_NAMES:
        return read_benchmark_file(samples_dir() / f"{s}.jsonl", limit, name=s)
    if "/" in s:
        return load_hub_benchmark(s, limit)
    raise _unknown(s)


# ---------------------------------------------------------------------------------------------
# Scoring


def _prefix(tok) -> list[int]:
    tid = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return [] if tid is None else [tid]


def _enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def encode_pair(tok, context: str, continuation: str,
                memo: dict[str, list[int]] | None = None) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: (prefix + context ids, continuation ids), split from a joint encoding.

    `memo` (context text -> ids), when given, saves re-encoding a context shared by several requests.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = _enc(tok, context + continuation)
    if memo is None:
        ctx = _enc(tok, context)
    else:
        ctx = memo.get(context)
        if ctx is None:
            ctx = memo[context] = _enc(tok, context)
    cont = whole[len(ctx):]
    if not cont:  # a merge across the boundary swallowed the continuation: encode it on its own
        cont = _enc(tok, continuation)
    return _prefix(tok) + ctx, cont


def continuation_for(context: str, choice: str) -> str:
    """The text scored for a choice: a leading space unless the context ends (or the choice starts) with one."""
    if not context or context[-1].isspace() or choice[:1].isspace():
        return choice
    return " " + choice


def _score_rows(rows: list[torch.Tensor], targets: list[list[int]], dev) -> list[tuple[float, bool]]:
    """(sum log-prob of targets, all targets are the argmax) from each request's logit rows."""
    lens = [len(t) for t in targets]
    sel = torch.cat(rows).float()
    t = torch.tensor([x for tg in targets for x in tg], device=dev)
    lp = sel.log_softmax(-1).gather(1, t[:, None])[:, 0]
    hit = sel.argmax(-1) == t
    return [(float(a.sum()), bool(h.all())) for a, h in zip(lp.split(lens), hit.split(lens))]


def _keep(positions: list[int], params: set[str], dev) -> tuple[dict, dict[int, int]]:
    """`logits_to_keep` for the union of the positions needed, and position -> index in the kept logits."""
    if "logits_to_keep" not in params:
        return {}, {p: p for p in positions}
    kept = sorted(set(positions))
    return {"logits_to_keep": torch.tensor(kept, device=dev)}, {p: k for k, p in enumerate(kept)}


def _padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[j, : len(s)] = 1
    return ids, mask


def _no_cache(params: set[str]) -> dict:
    """`use_cache=False` where the forward takes it: scoring never reuses a KV cache, so don't build one."""
    return {"use_cache": False} if "use_cache" in params else {}


def _ll_plain(model, chunk, dev, pad_id, params) -> list[tuple[float, bool]]:
    """One right-padded forward row per distinct (context + continuation)[:-1]."""
    inputs = [tuple((c + x)[:-1]) for c, x in chunk]
    row_of: dict[tuple[int, ...], int] = {}
    for inp in inputs:
        row_of.setdefault(inp, len(row_of))
    ids, mask = _padded([list(r) for r in row_of], pad_id)
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    need = [p for inp, (_, x) in zip(inputs, chunk) for p in range(len(inp) - len(x), len(inp))]
    keep, where = _keep(need, params, dev)
    logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), **keep,
                   **_no_cache(params)).logits
    rows = [logits[row_of[inp], [where[p] for p in range(len(inp) - len(x), len(inp))]]
            for inp, (_, x) in zip(inputs, chunk)]
    return _score_rows(rows, [x for _, x in chunk], dev)


def _custom_masks_ok(model) -> bool:
    """Whether the model's attention takes a custom 4D additive mask (eager and SDPA do; flash kernels ignore it)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return impl in ("sdpa", "eager")


def _ll_packed(model, chunk, dev, pad_id, params) -> list[tuple[float, bool]]:
    """The whole batch as one packed row, so no position is padding: each distinct context once, followed by
    every continuation[:-1] that shares it. A block mask lets a context attend causally to itself and a
    continuation to its own context and to itself only; positions restart at 0 for each context and continue
    after it for each of its continuations, as in an unpadded run of context + continuation."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, (c, _) in enumerate(chunk):
        groups.setdefault(tuple(c), []).append(j)
    ids: list[int] = []
    grp: list[int] = []
    mem: list[int] = []
    pos: list[int] = []
    at: list[list[int]] = [[] for _ in chunk]
    for g, (c, members) in enumerate(groups.items()):
        start = len(ids)
        ids += c
        grp += [g] * len(c)
        mem += [0] * len(c)
        pos += range(len(c))
        for k, j in enumerate(members, start=1):
            x = chunk[j][1][:-1]
            # logits predicting continuation j: its context's last position, then its own tokens
            at[j] = [start + len(c) - 1] + list(range(len(ids), len(ids) + len(x)))
            ids += x
            grp += [g] * len(x)
            mem += [k] * len(x)
            pos += range(len(c), len(c) + len(x))
    g_t, m_t = torch.tensor(grp), torch.tensor(mem)
    n = len(ids)
    allowed = (torch.ones(n, n, dtype=torch.bool).tril() & (g_t[:, None] == g_t[None, :])
               & ((m_t[None, :] == 0) | (m_t[:, None] == m_t[None, :])))
    dtype = next(model.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    mask = torch.zeros((1, 1, n, n), dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    keep, where = _keep([p for ps in at for p in ps], params, dev)
    logits = model(input_ids=torch.tensor([ids], device=dev), attention_mask=mask.to(dev),
                   position_ids=torch.tensor([pos], device=dev), **keep, **_no_cache(params)).logits
    rows = [logits[0, [where[p] for p in ps]] for ps in at]
    return _score_rows(rows, [x for _, x in chunk], dev)


@torch.inference_mode()
def loglikelihood_tokens(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8,
                         pad_id: int = 0) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), is_greedy) for (context ids, continuation ids) pairs.

    Requests are grouped by context, sorted longest first and cut into
    batches of at most `batch_size` rows, keeping a context's requests
    together where they fit; a row is a distinct (context + continuation)[:-1],
    so a context's one-token continuations share one row, as in lm-eval. At
    batch size 1 each row is one unpadded forward, as lm-eval does. A larger batch
    is one packed forward (`_ll_packed`): each distinct context once, then its
    continuations, under a block mask, positions continuing after the context;
    causal attention makes both compute the same
    log-probabilities. Only the logits at the scored positions are projected.
    """
    if batch_size < 1:
        raise UserError(batch_size, "batch size must be at least 1", "give a batch size of 1 or more")
    dev, max_len, params = model_device(model), max_length(model), forward_params(model)
    reqs: list[tuple[list[int], list[int]]] = []
    for ctx, cont in pairs:
        if not cont:
            raise UserError(repr(cont), "the continuation encodes to no tokens", "give non-empty continuations")
        if not ctx:
            raise UserError("context", "is empty and the tokenizer has no BOS or EOS token to start it with",
                            "give a non-empty context")
        cont = cont[-max_len:]
        whole = (ctx + cont)[-(max_len + 1):]  # cut on the left, like lm-eval
        reqs.append((whole[: len(whole) - len(cont)], cont))
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (c, _) in enumerate(reqs):
        groups.setdefault(tuple(c), []).append(i)
    longest = {c: max(len(c) + len(reqs[i][1]) for i in g) for c, g in groups.items()}
    batches: list[list[int]] = []  # whole context groups per batch where they fit, longest first
    cur: list[int] = []
    n_rows = 0
    for c in sorted(groups, key=lambda c: (-longest[c], c)):
        g = sorted(groups[c], key=lambda i: (-len(reqs[i][1]), reqs[i][1], i))
        rows: dict[tuple[int, ...], list[int]] = {}  # this context's rows: continuation[:-1] -> requests
        for i in g:
            rows.setdefault(tuple(reqs[i][1][:-1]), []).append(i)
        if cur and n_rows + len(rows) > batch_size:
            batches.append(cur)
            cur, n_rows = [], 0
        for piece in chunks(list(rows.values()), batch_size):
            if n_rows + len(piece) > batch_size:
                batches.append(cur)
                cur, n_rows = [], 0
            cur += [i for row in piece for i in row]
            n_rows += len(piece)
    if cur:
        batches.append(cur)
    out: list[tuple[float, bool] | None] = [None] * len(reqs)
    packed = batch_size > 1 and _custom_masks_ok(model)
    for idx in batches:
        chunk = [reqs[i] for i in idx]
        scores = (_ll_packed if packed else _ll_plain)(model, chunk, dev, pad_id, params)
        for i, s in zip(idx, scores):
            out[i] = s
    return out  # type: ignore[return-value]


def loglikelihoods(model, tok, requests: list[tuple[str, str]], batch_size: int = 8) -> list[tuple[float, bool]]:
    """lm-eval's loglikelihood requests: (context, continuation) -> (log-prob sum, is_greedy), in input order."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ctx_ids: dict[str, list[int]] = {}  # the choices of an item share a context: encode it once
    return loglikelihood_tokens(model, [encode_pair(tok, c, x, ctx_ids) for c, x in requests], batch_size, pad)


def score_multiple_choice(model, tok, items: list[dict], batch_size: int = 8) -> list[dict]:
    """Per item {"acc", "acc_norm", "pred", "pred_norm"}; acc_norm divides by the choice's length in characters
    (lm-eval's acc_norm; see the module docstring)."""
    reqs, spans = [], []
    for it in items:
        conts = [continuation_for(it["context"], c) for c in it["choices"]]
        spans.append((len(reqs), conts))
        reqs += [(it["context"], c) for c in conts]
    lls = loglikelihoods(model, tok, reqs, batch_size)
    out = []
    for it, (start, conts) in zip(items, spans):
        ll = [lls[start + k][0] for k in range(len(conts))]
        norm = [v / max(len(c), 1) for v, c in zip(ll, it["choices"])]
        pred = max(range(len(ll)), key=lambda k: (ll[k], -k))  # first maximum, like numpy.argmax
        pred_norm = max(range(len(norm)), key=lambda k: (norm[k], -k))
        out.append({"acc": int(pred == it["answer"]), "acc_norm": int(pred_norm == it["answer"]),
                    "pred": pred, "pred_norm": pred_norm})
    return out


def normalize_answer(s: str) -> str:
    """SQuAD/TriviaQA normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _cut(text: str, until: tuple[str, ...]) -> str:
    for u in until:
        k = text.find(u)
        if k >= 0:
            text = text[:k]
    return text.strip()


def generative_prompts(tok, items: list[dict]) -> list[list[int]]:
    return [_prefix(tok) + _enc(tok, GEN_PROMPT.format(question=it["question"])) for it in items]


def score_generative(model, tok, items: list[dict], max_new_tokens: int = 32, batch_size: int = 8,
                     until: tuple[str, ...] = GEN_UNTIL) -> list[dict]:
    """Per item {"exact_match": 0/1, "prediction": str, "tokens": generated ids} by greedy decoding."""
    stop, eos = stop_table(model, tok, until)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    gens = greedy_generate(model, generative_prompts(tok, items), max_new_tokens, batch_size, stop, pad)
    out = []
    for it, g in zip(items, gens):
        text = _cut(tok.decode([t for t in g if t not in eos], skip_special_tokens=True), until)
        em = int(any(normalize_answer(text) == normalize_answer(a) for a in it["answers"]))
        out.append({"exact_match": em, "prediction": text, "tokens": g})
    return out


def run_benchmark(model, tok, bench: Benchmark | str, batch_size: int = 8, max_new_tokens: int = 32,
                  limit: int | None = None) -> BenchmarkResult:
    """Score one benchmark; metrics are means over items."""
    if not isinstance(bench, Benchmark):
        bench = load_benchmark(bench, limit)
    t0 = time.perf_counter()
    items = bench.items
    if bench.kind == MULTIPLE_CHOICE:
        scores = score_multiple_choice(model, tok, items, batch_size)
        names = ("acc", "acc_norm")
        details = [{"id": it["id"], "pred": s["pred"], "pred_norm": s["pred_norm"]} for it, s in zip(items, scores)]
    else:
        scores = score_generative(model, tok, items, max_new_tokens, batch_size)
        names = ("exact_match",)
        details = [{"id": it["id"], "prediction": s["prediction"]} for it, s in zip(items, scores)]
    per_item = {m: {it["id"]: float(s[m]) for it, s in zip(items, scores)} for m in names}
    metrics = {m: (sum(per_item[m].values()) / len(items) if items else math.nan) for m in names}
    return BenchmarkResult(bench.name, bench.kind, len(items), metrics, per_item, time.perf_counter() - t0, details)


def headline(result: BenchmarkResult) -> str:
    """The metric a benchmark is guarded on: normalized accuracy for multiple choice, else exact match."""
    return "acc_norm" if "acc_norm" in result.per_item else "exact_match"


def guarded_pairs(candidate: dict[str, BenchmarkResult],
                  incumbent: dict[str, BenchmarkResult]) -> dict[str, tuple[dict, dict]]:
    """Per-item headline scores of both models on each benchmark, as `promotion.decide(guarded=...)` takes them."""
    return {name: (c.per_item[headline(c)], incumbent[name].per_item[headline(c)]) for name, c in candidate.items()}


def evaluate_benchmarks(base_path: str, adapter_dir: str | Path | None, names: list[str], batch_size: int = 8,
                        limit: int | None = None, max_new_tokens: int = 32,
                        quantization: str = "none") -> dict[str, BenchmarkResult]:
    """Load base (+ adapter) once and run each named benchmark on it."""
    from tuneloop.models.base import load_tokenizer
    from tuneloop.evals.run import load_for_eval

    benches = [load_benchmark(n, limit) for n in names]  # fail on a bad name before loading the model
    tok = load_tokenizer(base_path)
    model = load_for_eval(base_path, adapter_dir, quantization)
    results: dict[str, BenchmarkResult] = {}
    for name, b in zip(names, benches):
        results[str(name)] = run_benchmark(model, tok, b, batch_size, max_new_tokens)
    return results
