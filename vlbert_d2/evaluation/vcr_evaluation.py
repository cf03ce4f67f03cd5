"""VCR evaluation: Q->A, QA->R and Q->AR accuracy, prediction files and the leaderboard CSV."""
import csv
import json
import logging
import os
from collections import OrderedDict

import numpy as np

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager

from ..config import VCR_NUM_CHOICES
from .common import gather_on_main

logger = logging.getLogger(__name__)


class VCREvaluator(DatasetEvaluator):
    """Accuracy of one VCR sub-task (Q->A or QA->R) and a prediction file per run.

    The predictions are saved as ``{output_dir}/vcr_{task}_predictions.json``:
    ``{annot_id: {"scores": [...], "label": int or -1}}``, where ``scores`` has 4 entries, or, for
    QA->R on records without a known answer (the test set), 16: the rationale scores conditioned
    on each of the 4 answers in turn. Q->AR needs a Q->A and a QA->R run: combine their files
    with :func:`vcr_metrics` (``python tools/vcr_combine.py``).
    """

    def __init__(self, dataset_name, task="Q2A", output_dir=None, distributed=True,
                 num_choices=VCR_NUM_CHOICES):
        """
        Args:
            num_choices (int): choices per question (``MODEL.VLBERT.VCR.NUM_CHOICES``).
        """
        self._dataset_name = dataset_name
        self._task = task
        self._num_choices = num_choices
        self._output_dir = output_dir
        self._distributed = distributed
        self._predictions = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            self._predictions.append({
                "annot_id": x["annot_id"],
                "scores": out["scores"].float().cpu().tolist(),
                "label": int(x.get("label", -1)),
            })

    def evaluate(self):
        predictions = gather_on_main(self._predictions, self._distributed)
        if predictions is None:
            return {}
        by_id = OrderedDict((p["annot_id"], {"scores": p["scores"], "label": p["label"]})
                            for p in predictions)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, f"vcr_{self._task}_predictions.json")
            with PathManager.open(path, "w") as f:
                json.dump(by_id, f)
            logger.info("Saved %d VCR %s predictions to %s", len(by_id), self._task, path)
        labelled = [p for p in by_id.values() if p["label"] >= 0]
        result = {"num_predictions": float(len(by_id)), "num_labelled": float(len(labelled))}
        if labelled:
            result[self._task] = 100.0 * accuracy(labelled, self._num_choices)
        else:
            logger.warning("%s: no labels (a test split?): accuracy not computed; predictions "
                           "saved for the leaderboard CSV", self._dataset_name)
        return {"vcr": result}


def accuracy(predictions, num_choices=VCR_NUM_CHOICES):
    """Fraction of predictions whose arg-max score among the first ``num_choices`` is the label."""
    correct = [int(np.argmax(p["scores"][:num_choices])) == p["label"] for p in predictions]
    return float(np.mean(correct)) if correct else float("nan")


def load_predictions(path):
    with PathManager.open(path) as f:
        return json.load(f)


def vcr_metrics(q2a, qa2r=None, num_choices=VCR_NUM_CHOICES):
    """Q->A, QA->R and, when both are given, Q->AR accuracy in percent.

    Args:
        q2a (dict): annot_id -> {"scores": [4], "label": int}, from a Q->A run.
        qa2r (dict or None): the same from a QA->R run (conditioned on the correct answer).
        num_choices (int): choices per question (VCR: 4).

    Returns:
        dict: "Q2A", "QA2R" (when given) and "Q2AR": a question counts as right only if both
        its answer and its rationale are right; computed over the annot_ids present in both.
    """
    result = {}
    if q2a:
        result["Q2A"] = 100.0 * accuracy([p for p in q2a.values() if p["label"] >= 0], num_choices)
    if qa2r:
        result["QA2R"] = 100.0 * accuracy([p for p in qa2r.values() if p["label"] >= 0], num_choices)
    if q2a and qa2r:
        common = [k for k in q2a if k in qa2r and q2a[k]["label"] >= 0 and qa2r[k]["label"] >= 0]
        missing = len(q2a) - len(common)
        if missing:
            logger.warning("Q->AR: %d Q->A predictions have no labelled QA->R counterpart", missing)
        both = [int(np.argmax(q2a[k]["scores"][:num_choices])) == q2a[k]["label"]
                and int(np.argmax(qa2r[k]["scores"][:num_choices])) == qa2r[k]["label"]
                for k in common]
        result["Q2AR"] = 100.0 * float(np.mean(both)) if both else float("nan")
    return result


def _normalise(scores, num_choices):
    groups = np.asarray(scores, dtype=np.float64).reshape(-1, num_choices)
    return (groups / groups.sum(axis=1, keepdims=True)).ravel().tolist()


def write_leaderboard_csv(q2a, qa2r, path, num_choices=VCR_NUM_CHOICES):
    """Write the VCR leaderboard's test-set CSV.

    Columns: ``annot_id``, ``answer_0..3`` (Q->A probabilities) and
    ``rationale_conditioned_on_a{i}_{j}`` (QA->R probability of rationale j given answer i).
    Scores are rescaled to sum to 1 over each group of 4 choices (the head's per-choice
    sigmoid scores do not).

    Args:
        q2a (dict): annot_id -> {"scores": [4]}.
        qa2r (dict): annot_id -> {"scores": [16]} (answer-major), from a QA->R run on records
            without answer labels, which conditions on each answer in turn.
        path (str): output file.
        num_choices (int): choices per question (VCR: 4).

    Returns:
        int: number of rows written.
    """
    n = num_choices
    header = ["annot_id"] + [f"answer_{i}" for i in range(n)] + [
        f"rationale_conditioned_on_a{i}_{j}" for i in range(n) for j in range(n)]
    rows = []
    for annot_id, p in q2a.items():
        if annot_id not in qa2r:
            raise KeyError(f"annot_id {annot_id!r} has a Q->A prediction but no QA->R prediction")
        r = qa2r[annot_id]["scores"]
        if len(r) != n * n or len(p["scores"]) != n:
            raise ValueError(f"annot_id {annot_id!r}: the CSV needs {n} answer scores and {n * n} "
                             f"rationale scores (QA->R conditioned on each answer: run it on a "
                             f"split without answer labels), got {len(p['scores'])} and {len(r)}")
        rows.append([annot_id] + _normalise(p["scores"], n) + _normalise(r, n))
    with PathManager.open(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)
