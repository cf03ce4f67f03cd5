"""VQA v2 evaluation: the official accuracy (overall and per answer type) and the submission file
of the evaluation server (test-dev / test-std)."""
import json
import logging
import os

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager

from ..text.answer_vocab import AnswerVocab
from ..utils.records import skipped_records
from .common import gather_on_main
from .vqa_eval import vqa_metrics

logger = logging.getLogger(__name__)


def write_vqa_submission(predictions, path):
    """Write ``[{"question_id": int, "answer": str}]``, the format of the VQA evaluation server.

    Args:
        predictions (dict[int, str]): question_id -> answer.
    """
    PathManager.mkdirs(os.path.dirname(path) or ".")
    rows = [{"question_id": int(q), "answer": a} for q, a in sorted(predictions.items())]
    with PathManager.open(path, "w") as f:
        json.dump(rows, f)
    return len(rows)


class VQAEvaluator(DatasetEvaluator):
    """Predicted answer = the vocabulary's best-scoring answer. Writes
    ``{output_dir}/vqa_{dataset}_results.json`` (the submission format) and, when the dataset has
    annotations, returns the official accuracy: ``{"vqa": {"accuracy", "yes/no", "number",
    "other", ...}}`` in percent."""

    def __init__(self, dataset_name, answer_vocab, output_dir=None, distributed=True):
        self._dataset_name = dataset_name
        # <unk> (the official vocabulary has it) is never a prediction.
        self._vocab = AnswerVocab(answer_vocab)
        self._output_dir = output_dir
        self._distributed = distributed
        self._predictions = {}

    def reset(self):
        self._predictions = {}

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            self._predictions[int(x["question_id"])] = self._vocab.predict(out["scores"])

    def evaluate(self):
        pairs = gather_on_main(self._predictions.items(), self._distributed)
        if pairs is None:
            return {}
        predictions = dict(pairs)
        if self._output_dir:
            path = os.path.join(self._output_dir, f"vqa_{self._dataset_name}_results.json")
            n = write_vqa_submission(predictions, path)
            logger.info("Saved %d VQA answers to %s", n, path)
        dicts = DatasetCatalog.get(self._dataset_name)
        annotated = {d["question_id"]: d for d in dicts if "answers" in d}
        if not annotated:
            logger.warning("%s: no annotations (a test split): accuracy not computed; submit the "
                           "results file to the VQA evaluation server", self._dataset_name)
            return {"vqa": {"num_predictions": float(len(predictions))}}
        # Questions left out by the record check (DATALOADER.BAD_RECORDS skip, listed in
        # OUTPUT_DIR/bad_records_<dataset>.jsonl) are not scored, and say so; any other question
        # without a prediction is an error (vqa_metrics).
        skipped = {d.get("question_id") for d in skipped_records(self._dataset_name)}
        unscored = [q for q in annotated if q not in predictions and q in skipped]
        if unscored:
            logger.warning("%s: %d of %d annotated questions were skipped as bad records; the "
                           "accuracy covers the other %d", self._dataset_name, len(unscored),
                           len(annotated), len(annotated) - len(unscored))
            annotated = {q: d for q, d in annotated.items() if q not in set(unscored)}
        metrics = vqa_metrics(predictions, annotated)
        result = {"accuracy": metrics["overall"], "num_predictions": float(len(predictions))}
        if unscored:
            result["num_skipped"] = float(len(unscored))
        result.update({k: v for k, v in metrics["perAnswerType"].items()})
        return {"vqa": result}
