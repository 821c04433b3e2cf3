"""SQuAD-style token F1, shipped locally so it loads offline."""

import collections
import re
import string

import evaluate

from tuneloop.evals.scoring import mean_or_zero, text_pair_info

_DESCRIPTION = (
    "SQuAD-style token F1: lowercase, drop punctuation and the articles "
    "a/an/the, split on whitespace, then F1 over the token multisets."
)
_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
  title = {{SQuAD}: 100,000+ Questions for Machine Comprehension of Text},
  author = {Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle = {Proceedings of EMNLP},
  year = {2016},
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): model outputs.
    references (list[str]): gold answers, one per prediction.
Returns:
    token_f1 (float): mean of per_item (0.0 when there are no items).
    per_item (list[float]): token F1 per pair; both empty -> 1.0, one empty -> 0.0.
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def _tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return _ARTICLES.sub(" ", text).split()


def _f1(prediction: str, reference: str) -> float:
    pred, ref = _tokens(prediction), _tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TokenF1(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        per_item = [_f1(p, r) for p, r in zip(predictions, references)]
        return {"token_f1": mean_or_zero(per_item), "per_item": per_item}
