"""VQA accuracy over a set of questions (overall, per answer type and per question type), as the
official VQA evaluation (GT-Vision-Lab/VQA, ``vqaEval.py``) reports it.

The per-answer pieces (normalisation, accuracy of one answer, soft scores) live with the other
answer utilities in :mod:`vlbert_d2.text.vqa_answers`; they are re-exported here.
"""
from collections import defaultdict

from ..text.vqa_answers import (ARTICLES, CONTRACTIONS, NUMBER_WORDS, PUNCTUATION,  # noqa: F401
                                normalize_answer, process_digit_article, process_punctuation,
                                soft_scores, vqa_accuracy)


def vqa_metrics(predictions, annotations):
    """Overall, per answer type and per question type accuracy (percent, 2 decimals), as the
    official evaluation reports them.

    Args:
        predictions (dict[int, str]): question_id -> predicted answer.
        annotations (dict[int, dict]): question_id -> {"answers": [10 str], "answer_type",
            "question_type"}; every question must have a prediction.

    Returns:
        dict: {"overall": float, "perAnswerType": {type: float}, "perQuestionType": {...}}
    """
    missing = [q for q in annotations if q not in predictions]
    if missing:
        raise KeyError(f"{len(missing)} annotated questions have no prediction (e.g. question_id {missing[0]})")
    extra = [q for q in predictions if q not in annotations]
    if extra:  # the official loadRes refuses results for other questions too
        raise KeyError(f"{len(extra)} predictions are for questions without annotation (e.g. question_id {extra[0]})")
    accs, by_answer, by_question = [], defaultdict(list), defaultdict(list)
    for qid, ann in annotations.items():
        acc = vqa_accuracy(predictions[qid], ann["answers"])
        accs.append(acc)
        by_answer[ann.get("answer_type", "")].append(acc)
        by_question[ann.get("question_type", "")].append(acc)

    def pct(values):
        return round(100 * sum(values) / len(values), 2) if values else 0.0

    return {"overall": pct(accs),
            "perAnswerType": {k: pct(v) for k, v in by_answer.items()},
            "perQuestionType": {k: pct(v) for k, v in by_question.items()}}
