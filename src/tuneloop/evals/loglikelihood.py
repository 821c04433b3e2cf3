"""Log-likelihood scoring of multiple choice, as lm-evaluation-harness does it, in batches.

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

Packed (or padded) and unpadded fp32
runs are not bit-identical: logits differ by a few ulps (~3e-6) and summed
log-probabilities by up to ~5e-5 on the samples; tests check sums agree to
1e-4 and that decisions (acc, acc_norm, is_greedy, every generated token) are
identical at batch 1 and 8 on all sample items.
"""

from __future__ import annotations

import torch

from tuneloop.errors import UserError
from tuneloop.evals.decode import chunks, forward_params, max_length, model_device


def prefix_ids(tok) -> list[int]:
    tid = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return [] if tid is None else [tid]


def encode_text(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def encode_pair(tok, context: str, continuation: str,
                memo: dict[str, list[int]] | None = None) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: (prefix + context ids, continuation ids), split from a joint encoding.

    `memo` (context text -> ids), when given, saves re-encoding a context shared by several requests.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = encode_text(tok, context + continuation)
    if memo is None:
        ctx = encode_text(tok, context)
    else:
        ctx = memo.get(context)
        if ctx is None:
            ctx = memo[context] = encode_text(tok, context)
    cont = whole[len(ctx):]
    if not cont:  # a merge across the boundary swallowed the continuation: encode it on its own
        cont = encode_text(tok, continuation)
    return prefix_ids(tok) + ctx, cont


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


