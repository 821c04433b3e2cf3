"""Exact match after whitespace/case normalisation, shipped locally so it loads offline."""

import evaluate

from tuneloop.evals.scoring import mean_or_zero, text_pair_info

_DESCRIPTION = (
    "Exact match after stripping surrounding whitespace, collapsing inner "
    "whitespace and casefolding. Returns the mean and a per-item 0/1 list."
)
_CITATION = ""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): model outputs.
    references (list[str]): gold answers, one per prediction.
Returns:
    exact_match (float): mean of per_item (0.0 when there are no items).
    per_item (list[float]): 1.0 where the normalised strings are equal, else 0.0.
"""


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references):
        per_item = [
            1.0 if _normalise(p) == _normalise(r) else 0.0
            for p, r in zip(predictions, references)
        ]
        return {"exact_match": mean_or_zero(per_item), "per_item": per_item}
