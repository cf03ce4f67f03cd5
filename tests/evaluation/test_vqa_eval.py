"""The official VQA accuracy, normalisation and soft scores on hand-computed cases."""
import pytest

from vlbert_d2.evaluation.vqa_eval import (normalize_answer, process_digit_article, process_punctuation,
                                           soft_scores, vqa_accuracy, vqa_metrics)


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),                       # number words -> digits, lower case
    ("the red one", "red 1"),           # articles dropped
    ("A dog.", "dog"),                  # trailing period removed
    ("3.5", "3.5"),                     # a decimal point is kept
    ("dont", "don't"),                  # contractions restored
    ("yes!", "yes"),                    # mark not next to a space -> space, then split/join
    ("black/white", "black white"),     # "/" between words becomes a space
    ("black / white", "black white"),   # ... and is removed when next to a space
    ("1,000", "1000"),                  # comma between digits: every mark is removed
    ("  \tnone\n", "0"),                # whitespace cleaned, "none" -> "0"
    ("Im", "im"),                       # the official table's capitalised keys never match
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_punctuation_is_not_digit_article():
    # The human answers only get the punctuation step: "Two" stays as it is.
    assert process_punctuation("Two") == "Two"
    assert process_digit_article("an apple") == "apple"


def test_accuracy_leave_one_out():
    # 10 answers, 2 say "red": each leave-one-out subset has 1 or 2 matches ->
    # (8 subsets x 2/3 + 2 subsets x 1/3) / 10 = 0.6
    gts = ["red"] * 2 + ["blue"] * 8
    assert vqa_accuracy("red", gts) == pytest.approx(0.6)
    # 3 matches: 7 subsets keep 3 (1.0), 3 subsets keep 2 (2/3) -> 0.9
    assert vqa_accuracy("blue", ["blue"] * 3 + ["red"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("blue", ["blue"] * 4 + ["red"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("green", gts) == 0.0


def test_accuracy_normalisation_rules():
    # Differing human answers: both sides are fully normalised ("Two" -> "2", "the red" -> "red").
    assert vqa_accuracy("Two", ["2"] * 5 + ["3"] * 5) == 1.0
    assert vqa_accuracy("red", ["the red"] * 5 + ["blue"] * 5) == 1.0
    assert vqa_accuracy("2", ["two"] * 4 + ["3"] * 6) == 1.0
    assert vqa_accuracy("red", ["red."] * 5 + ["blue"] * 5) == 1.0
    # Identical human answers: compared as they are (only tabs, newlines and outer spaces go).
    assert vqa_accuracy("Two", ["2"] * 10) == 0.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0
    # Outer spaces are cleaned before deciding whether the answers differ: "dog " == "dog".
    assert vqa_accuracy("dog", ["dog "] * 9 + ["dog"]) == 1.0


def test_soft_scores():
    scores = soft_scores(["Red"] * 2 + ["red."] + ["blue"] * 7)
    assert set(scores) == {"red", "blue"}
    assert scores["red"] == pytest.approx(0.9)    # 3 matching answers after normalisation
    assert scores["blue"] == pytest.approx(1.0)
    assert soft_scores(["two"])["2"] == 0.0       # a single answer: its leave-one-out is empty


def test_metrics_per_answer_type():
    ann = {1: {"answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is the"},
           2: {"answers": ["2"] * 10, "answer_type": "number", "question_type": "how many"},
           3: {"answers": ["red"] * 2 + ["blue"] * 8, "answer_type": "other", "question_type": "what color"}}
    m = vqa_metrics({1: "yes", 2: "3", 3: "red"}, ann)
    assert m["perAnswerType"] == {"yes/no": 100.0, "number": 0.0, "other": 60.0}
    assert m["overall"] == round(100 * (1 + 0 + 0.6) / 3, 2)
    with pytest.raises(KeyError, match="no prediction"):
        vqa_metrics({1: "yes"}, ann)
    with pytest.raises(KeyError, match="without annotation"):
        vqa_metrics({1: "yes", 2: "3", 3: "red", 4: "no"}, ann)
