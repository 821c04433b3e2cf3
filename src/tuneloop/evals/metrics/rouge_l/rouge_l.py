"""Per-item ROUGE-L F-measure via rouge_score, shipped locally so it loads offline."""

import evaluate
from rouge_score import rouge_scorer, tokenizers

from tuneloop.evals.scoring import mean_or_zero, text_pair_info

_DESCRIPTION = (
    "ROUGE-L F-measure per pair (rouge_score, no stemming), averaged. The "
    "default tokenizer keeps only ASCII letters/digits; when both texts "
    "tokenize to nothing the pair scores 1.0 if the raw strings are equal, else 0.0."
)
_CITATION = """\
@inproceedings{lin-2004-rouge,
  title = {{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author = {Lin, Chin-Yew},
  booktitle = {Text Summarization Branches Out},
  year = {2004},
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): model outputs.
    references (list[str]): one reference per prediction.
Returns:
    rouge_l (float): mean of per_item (0.0 when there are no items).
    per_item (list[float]): ROUGE-L F-measure per pair.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                              reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"])

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)  # same as the scorer's
        per_item = []
        for pred, ref in zip(predictions, references):
            if not tokenizer.tokenize(pred) and not tokenizer.tokenize(ref):
                # rouge_score would give 0.0; equal raw strings (e.g. both non-ASCII) should match.
                per_item.append(1.0 if pred == ref else 0.0)
            else:
                per_item.append(scorer.score(ref, pred)["rougeL"].fmeasure)
        return {"rouge_l": mean_or_zero(per_item), "per_item": per_item}
