"""General benchmarks in the style of lm-evaluation-harness: their files, the shipped samples, hub names.

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

Scoring multiple choice: `evals.loglikelihood`; generative answers, running a suite and
the guarded headline metric: `evals.suite`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import UserError

MULTIPLE_CHOICE = "multiple_choice"
GENERATIVE = "generative"
KINDS = (MULTIPLE_CHOICE, GENERATIVE)
SAMPLE_NAMES = ("arc_easy", "boolq", "hellaswag", "piqa", "siqa", "triviaqa")
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

