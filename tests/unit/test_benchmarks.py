"""lm-eval style benchmarks: file format, sample data, batched scoring equal to one-at-a-time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tuneloop.errors import UserError
from tuneloop.evals import benchmarks as B, loglikelihood as LL, suite as S

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test machines are shared 2-core boxes: two OpenMP threads under contention run 10-40x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lm(tiny_base):
    from tuneloop.models.base import load_tokenizer
    from tuneloop.evals.run import load_for_eval

    return load_for_eval(tiny_base, None), load_tokenizer(tiny_base)


def all_samples() -> dict[str, B.Benchmark]:
    return {n: B.load_benchmark(n) for n in B.SAMPLE_NAMES}


def mc_requests(items: list[dict]) -> list[tuple[str, str]]:
    return [(it["context"], LL.continuation_for(it["context"], c)) for it in items for c in it["choices"]]


def direct_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """Reference: one unpadded forward, plain torch, no batching code of the module under test."""
    ctx, cont = LL.encode_pair(tok, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(ctx) - 1: len(ctx) + len(cont) - 1].float()
    lp = torch.log_softmax(logits, -1)
    target = torch.tensor(cont)
    return float(lp[torch.arange(len(cont)), target].sum()), bool((logits.argmax(-1) == target).all())


# --- files and names -------------------------------------------------------------------------


def test_every_sample_loads_and_validates():
    kinds = {"triviaqa": B.GENERATIVE}
    for name, b in all_samples().items():
        assert b.name == name and b.kind == kinds.get(name, B.MULTIPLE_CHOICE)
        assert 18 <= len(b.items) <= 30
        assert len({it["id"] for it in b.items}) == len(b.items)
        for it in b.items:
            assert B.validate_row(it, name, b.kind)[0] == b.kind
        assert B.load_benchmark(name, limit=3).items == b.items[:3]
        # a sample file is also loadable by path, and the kind comes from the keys alone
        assert B.load_benchmark(B.samples_dir() / f"{name}.jsonl").kind == b.kind
    answers = [it["answer"] for it in all_samples()["arc_easy"].items]
    assert len(set(answers)) == 4  # the right answer is not always in one place


def test_sample_files_are_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"evals/benchmarks_data/*.jsonl"' in text
    assert sorted(p.stem for p in B.samples_dir().glob("*.jsonl")) == sorted(B.SAMPLE_NAMES)


def test_optional_header_names_the_benchmark(tmp_path):
    f = tmp_path / "mine.jsonl"
    rows = [{"benchmark": "my-bench", "kind": "generative"}, {"id": "a", "question": "Q?", "answers": ["x"]}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    b = B.load_benchmark(f)
    assert (b.name, b.kind, len(b.items)) == ("my-bench", B.GENERATIVE, 1)


@pytest.mark.parametrize("lines, line_no, words", [
    (['{"id": "a", "context": "c", "choices": ["x", "y"], "answer": 0}', "{not json", "{}"], 2, "not valid JSON"),
    (['{"id": "a", "context": "c", "choices": ["x", "y"], "answer": 0}', "", '{"id": "b", "context": "c"}'], 3,
     "neither"),
    (['{"id": "a", "context": "c", "choices": ["x", "y"], "answer": 2}'], 1, "`answer`"),
    (['{"id": "a", "context": "c", "choices": ["x", "y"], "answer": true}'], 1, "`answer`"),
    (['{"id": "a", "context": "c", "choices": ["x"], "answer": 0}'], 1, "`choices`"),
    (['{"id": "a", "question": "q", "answers": ["x"]}', '{"id": "a", "question": "r", "answers": ["y"]}'], 2,
     "repeats id"),
    (['{"id": "a", "question": "q", "answers": ["x"]}', '{"id": "b", "context": "c", "choices": ["x", "y"], '
      '"answer": 0}'], 2, "in a generative benchmark"),
    (['{"id": "a", "question": "q", "answers": []}'], 1, "`answers`"),
    (['{"id": 7, "question": "q", "answers": ["x"]}'], 1, "`id`"),
    (['["a list"]'], 1, "not an object"),
])
def test_bad_file_is_a_clear_error_with_the_line(tmp_path, lines, line_no, words):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        B.load_benchmark(str(f))
    assert f"line {line_no}" in str(e.value) and words in str(e.value) and "Fix:" in str(e.value)


def test_empty_or_missing_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="no benchmark rows"):
        B.load_benchmark(tmp_path / "empty.jsonl")
    with pytest.raises(UserError, match="not a file"):
        B.load_benchmark(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("name", ["mmlu", "arc", "someone/unknown-benchmark", "hf:nobody/nothing@test"])
def test_unknown_name_is_a_user_error(name):
    with pytest.raises(UserError) as e:
        B.load_benchmark(name)
    msg = str(e.value)
    assert repr(name) in msg and "arc_easy" in msg and "allenai/ai2_arc" in msg


def test_hub_names_and_adapters_offline():
    ds, hb, config, split = B.parse_hub_name("allenai/ai2_arc:ARC-Challenge@test")
    assert (ds, config, split) == ("allenai/ai2_arc", "ARC-Challenge", "test")
    assert B.parse_hub_name("hf:mandarjoshi/trivia_qa")[2:] == ("rc.nocontext", "validation")
    assert B.parse_hub_name("google/BoolQ")[0] == "google/boolq"
    arc = B.HUB_BENCHMARKS["allenai/ai2_arc"].convert(
        {"id": "Q1", "question": "Which is a metal?", "answerKey": "3",
         "choices": {"text": ["wood", "glass", "iron"], "label": ["1", "2", "3"]}}, 0)
    assert arc == {"id": "Q1", "context": "Question: Which is a metal?\nAnswer:", "choices": ["wood", "glass", "iron"],
                   "answer": 2}
    hs = B.HUB_BENCHMARKS["Rowan/hellaswag"].convert(
        {"ind": 4, "activity_label": "Baking", "ctx_a": "A man mixes flour [header] in a bowl.", "ctx_b": "then he",
         "endings": ["bakes it. [title] Done", " eats  it.", "x", "y"], "label": "1"}, 0)
    assert hs["context"] == "Baking: A man mixes flour in a bowl. Then he"
    assert hs["choices"][:2] == ["bakes it.. Done", "eats it."] and hs["answer"] == 1 and hs["id"] == "hellaswag-4"
    siqa = B.HUB_BENCHMARKS["allenai/social_i_qa"].convert(
        {"context": "Ann smiled.", "question": "Why?", "answerA": "a", "answerB": "b", "answerC": "c", "label": "3"}, 5)
    assert siqa["context"] == "Q: Ann smiled. Why?\nA:" and siqa["answer"] == 2
    boolq = B.HUB_BENCHMARKS["google/boolq"].convert({"question": "is it", "passage": "P.", "answer": True}, 1)
    assert boolq["context"] == "P.\nQuestion: is it?\nAnswer:" and boolq["answer"] == 1
    piqa = B.HUB_BENCHMARKS["ybisk/piqa"].convert({"goal": "g", "sol1": "a", "sol2": "b", "label": 1}, 2)
    assert piqa["answer"] == 1 and piqa["choices"] == ["a", "b"]
    tqa = B.HUB_BENCHMARKS["mandarjoshi/trivia_qa"].convert(
        {"question_id": "tc_1", "question": "Red planet?", "answer": {"aliases": ["Mars", "Planet Mars"],
                                                                      "value": "Mars"}}, 0)
    assert tqa == {"id": "tc_1", "question": "Red planet?", "answers": ["Mars", "Planet Mars"]}
    for row in (arc, hs, siqa, boolq, piqa, tqa):
        B.validate_row(row, "adapter")


# --- tokenization and metrics, no model --------------------------------------------------------


def test_continuation_and_encode_pair_follow_lm_eval(lm):
    _, tok = lm
    assert LL.continuation_for("Answer:", "Paris") == " Paris"
    assert LL.continuation_for("Answer: ", "Paris") == "Paris"
    assert LL.continuation_for("", "Paris") == "Paris"
    ctx, cont = LL.encode_pair(tok, "Answer: ", "Paris")  # trailing space moves to the continuation
    assert (ctx, cont) == LL.encode_pair(tok, "Answer:", " Paris")
    assert ctx[0] == tok.bos_token_id
    whole = tok("Answer: Paris", add_special_tokens=False)["input_ids"]
    assert ctx[1:] + cont == whole


def test_exact_match_normalization():
    n = S.normalize_answer
    assert n("The  Nile!") == n("nile") == "nile"
    assert n("An apple, a day") == "apple day"


def test_acc_norm_divides_by_bytes(monkeypatch):
    """Model-independent: acc takes the larger sum, acc_norm the larger sum per byte of continuation."""
    item = {"id": "x", "context": "Q:", "choices": ["a", "much longer choice"], "answer": 1}
    monkeypatch.setattr(LL, "loglikelihoods", lambda model, tok, reqs, bs: [(-10.0, False), (-12.0, False)])
    assert LL.score_multiple_choice(None, None, [item], 8) == [{"acc": 0, "acc_norm": 1, "pred": 0, "pred_norm": 1}]
    monkeypatch.setattr(LL, "loglikelihoods", lambda model, tok, reqs, bs: [(-3.0, False), (-3.0, False)])
    assert LL.score_multiple_choice(None, None, [item], 8)[0]["pred"] == 0  # ties go to the first choice
    # lm-eval's acc_norm: the choice's own length, not counting the space before it (-2/1 < -3.5/2)
    item = {"id": "y", "context": "Q:", "choices": ["a", "bb"], "answer": 1}
    monkeypatch.setattr(LL, "loglikelihoods", lambda model, tok, reqs, bs: [(-2.0, False), (-3.5, False)])
    assert LL.score_multiple_choice(None, None, [item], 8)[0]["pred_norm"] == 1


# --- scoring with the tiny model -----------------------------------------------------------------


def test_multiple_choice_matches_direct_log_probs(lm):
    model, tok = lm
    ctx = "Route the customer message to one intent.\nAnswer:"
    items = [
        {"id": "a", "context": ctx, "choices": ["refund", "I still have not received my order, can you help?"],
         "answer": 1},
        {"id": "b", "context": ctx, "choices": ["x", "the app crashes on launch on my phone. Thanks in advance."],
         "answer": 0},
        {"id": "c", "context": "Hello,", "choices": ["shipping", "billing", "where is my package?"], "answer": 2},
        {"id": "d", "context": "Hi there, how do I cancel my", "choices": ["Business tier?", "qqq zzz"], "answer": 0},
    ]
    scored = {bs: LL.score_multiple_choice(model, tok, items, bs) for bs in (1, 8)}
    differ = 0
    for k, it in enumerate(items):
        conts = [LL.continuation_for(it["context"], c) for c in it["choices"]]
        lls = [direct_loglikelihood(model, tok, it["context"], c)[0] for c in conts]
        norm = [v / len(c) for v, c in zip(lls, it["choices"])]
        pred, pred_norm = lls.index(max(lls)), norm.index(max(norm))
        expect = {"acc": int(pred == it["answer"]), "acc_norm": int(pred_norm == it["answer"]), "pred": pred,
                  "pred_norm": pred_norm}
        assert scored[1][k] == expect and scored[8][k] == expect
        differ += pred != pred_norm
    assert differ >= 1  # the long, fluent choices lose on the sum and win per byte


def test_loglikelihoods_match_direct_and_batch1_on_all_samples(lm):
    model, tok = lm
    mc = [it for b in all_samples().values() if b.kind == B.MULTIPLE_CHOICE for it in b.items]
    reqs = mc_requests(mc)
    one = LL.loglikelihoods(model, tok, reqs, batch_size=1)
    eight = LL.loglikelihoods(model, tok, reqs, batch_size=8)
    odd = LL.loglikelihoods(model, tok, reqs, batch_size=5)
    assert len(one) == len(eight) == len(reqs) == 300
    for ref in (eight, odd):
        assert max(abs(a[0] - b[0]) for a, b in zip(one, ref)) <= 1e-4
        assert [a[1] for a in one] == [b[1] for b in ref]
    for k in range(0, len(reqs), 37):  # batch 1 is itself the plain lm-eval computation
        d = direct_loglikelihood(model, tok, *reqs[k])
        assert abs(d[0] - one[k][0]) <= 1e-4 and d[1] == one[k][1]
    s1, s8 = LL.score_multiple_choice(model, tok, mc, 1), LL.score_multiple_choice(model, tok, mc, 8)
    assert s1 == s8  # identical acc, acc_norm and predictions on every sample item


def test_is_greedy_like_lm_eval(lm):
    model, tok = lm
    ctx = "Hey, is my refund for order"
    c_ids, _ = LL.encode_pair(tok, ctx, " x")
    greedy = S.greedy_generate(model, [c_ids], 6, 1)[0]
    ll, is_greedy = LL.loglikelihood_tokens(model, [(c_ids, greedy)], 1)[0]
    assert is_greedy and ll <= 0
    other = greedy[:-1] + [(greedy[-1] + 1) % 1000 + 10]
    assert not LL.loglikelihood_tokens(model, [(c_ids, other)], 1)[0][1]
    shared = LL.loglikelihood_tokens(model, [(c_ids, greedy), (c_ids, other)], 8)  # one context, two continuations
    alone = [LL.loglikelihood_tokens(model, [p], 1)[0] for p in [(c_ids, greedy), (c_ids, other)]]
    assert [g for _, g in shared] == [True, False] == [g for _, g in alone]
    assert max(abs(a[0] - b[0]) for a, b in zip(shared, alone)) <= 1e-4
    # the same through text, when the greedy tokens decode and re-encode to themselves
    text = tok.decode(greedy)
    if LL.encode_pair(tok, ctx, text)[1] == greedy:
        assert LL.loglikelihoods(model, tok, [(ctx, text)], 8)[0][1]


def test_generation_batch8_equals_batch1_token_for_token(lm):
    """Every sample item (questions and MC contexts as prompts): identical tokens at batch 1, 3 and 8."""
    model, tok = lm
    samples = all_samples()
    items = list(samples["triviaqa"].items)
    items += [{"id": it["id"], "question": it["context"], "answers": ["-"]}
              for b in samples.values() if b.kind == B.MULTIPLE_CHOICE for it in b.items]
    assert len(items) == 120
    runs = {bs: S.score_generative(model, tok, items, max_new_tokens=24, batch_size=bs) for bs in (1, 3, 8)}
    for bs in (3, 8):
        assert [r["tokens"] for r in runs[bs]] == [r["tokens"] for r in runs[1]]
        assert runs[bs] == runs[1]
    # and batch 1 agrees with transformers' own greedy search, token for token
    prompts = S.generative_prompts(tok, items[:6])
    for p, r in zip(prompts, runs[1][:6]):
        ref = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=len(r["tokens"]), do_sample=False, pad_token_id=tok.pad_token_id)
        assert ref[0, len(p):].tolist() == r["tokens"]


def test_padded_fp32_logits_are_close_not_bitwise(lm):
    """Why the tests compare decisions: padding changes float summation order by a few ulps, no more."""
    model, tok = lm
    a = [tok.bos_token_id, *tok("Where is my package? Order #12907", add_special_tokens=False)["input_ids"]]
    b = a[:5]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b])).logits[0]
        ids = torch.full((2, len(a)), tok.pad_token_id)
        ids[0], ids[1, : len(b)] = torch.tensor(a), torch.tensor(b)
        mask = (torch.arange(len(a))[None, :] < torch.tensor([[len(a)], [len(b)]])).long()
        padded = model(input_ids=ids, attention_mask=mask).logits[1, : len(b)]
    assert (padded - alone).abs().max() <= 1e-4
    assert torch.equal(padded.argmax(-1), alone.argmax(-1))


def test_run_benchmark_results_and_json(lm):
    model, tok = lm
    mc = S.run_benchmark(model, tok, B.load_benchmark("arc_easy", limit=6), batch_size=4)
    assert (mc.name, mc.kind, mc.n) == ("arc_easy", B.MULTIPLE_CHOICE, 6)
    assert set(mc.metrics) == {"acc", "acc_norm"} and set(mc.per_item["acc"]) == {f"arc_easy-00{i}" for i in range(6)}
    assert mc.metrics["acc"] == sum(mc.per_item["acc"].values()) / 6
    gen = S.run_benchmark(model, tok, "triviaqa", batch_size=8, max_new_tokens=8, limit=5)
    assert set(gen.metrics) == {"exact_match"} and gen.n == 5 and gen.seconds > 0
    assert all(isinstance(d["prediction"], str) for d in gen.items)
    for r in (mc, gen):
        d = json.loads(json.dumps(r.to_json()))
        assert S.BenchmarkResult.from_json(d) == r


def test_exact_match_scores_aliases(lm, monkeypatch):
    model, tok = lm
    items = [{"id": "q", "question": "Capital of Japan?", "answers": ["Tokyo", "Tokyo City"]}]
    answer = tok(" the Tokyo.\nMore", add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(S, "greedy_generate", lambda *a, **k: [answer])
    out = S.score_generative(model, tok, items, max_new_tokens=8, batch_size=1)
    assert out[0]["prediction"] == "the Tokyo" and out[0]["exact_match"] == 1


def test_evaluate_benchmarks_loads_the_model_once(tiny_base, monkeypatch):
    import tuneloop.evals.run as run

    calls = []
    real = run.load_for_eval
    monkeypatch.setattr(run, "load_for_eval", lambda *a, **k: calls.append(a) or real(*a, **k))
    res = S.evaluate_benchmarks(tiny_base, None, ["boolq", "triviaqa"], batch_size=8, limit=3, max_new_tokens=4)
    assert list(res) == ["boolq", "triviaqa"] and len(calls) == 1
    assert res["boolq"].n == 3 and set(res["triviaqa"].metrics) == {"exact_match"}
    with pytest.raises(UserError):
        S.evaluate_benchmarks(tiny_base, None, ["boolq", "nope"], batch_size=8)
    assert len(calls) == 1  # a bad name fails before the model is loaded
