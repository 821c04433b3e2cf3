"""Corpus BLEU via sacrebleu, scaled to 0..1, shipped locally so it loads offline."""

import evaluate
import sacrebleu

from tuneloop.evals.scoring import text_pair_info

_DESCRIPTION = (
    "Corpus-level BLEU computed with sacrebleu.corpus_bleu (one reference per "
    "prediction), divided by 100 so it lies in 0..1 like the other metrics."
)
_CITATION = """\
@inproceedings{post-2018-call,
  title = {A Call for Clarity in Reporting {BLEU} Scores},
  author = {Post, Matt},
  booktitle = {Proceedings of the Third Conference on Machine Translation},
  year = {2018},
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): model outputs.
    references (list[str]): one reference per prediction.
Returns:
    bleu (float): corpus BLEU in 0..1 (0.0 when there are no items).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self):
        return text_pair_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION,
                              reference_urls=["https://github.com/mjpost/sacrebleu"])

    def _compute(self, predictions, references):
        if not predictions:
            return {"bleu": 0.0}
        result = sacrebleu.corpus_bleu(list(predictions), [list(references)])
        return {"bleu": result.score / 100.0}
