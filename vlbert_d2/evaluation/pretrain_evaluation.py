"""Pre-training evaluation: masked-word and masked-RoI accuracy (paper section 3.3 tasks)."""
import logging

from detectron2.evaluation import DatasetEvaluator

from .common import gather_on_main

logger = logging.getLogger(__name__)


def pretrain_metrics(counts):
    """Accuracies (%) from the per-input counts of :class:`PretrainHead`.

    Returns:
        dict: ``mlm_caption_acc`` (masked word pieces of captions predicted right),
        ``mlm_text_acc`` (of text-corpus samples), ``mvrc_acc`` (chosen RoIs whose most probable
        detector class is predicted), ``mvrc_attr_acc`` (their most probable attribute, with
        ``MODEL.VLBERT.PRETRAIN.NUM_REGION_ATTRIBUTES``), ``rel_acc``, each only when its inputs
        were seen, and the numbers of predictions they rest on (``num_mlm_caption``,
        ``num_mlm_text``, ``num_mvrc``, ``num_mvrc_attr``).
    """
    out = {}
    for name, kind, task in (("mlm_caption", "caption", "mlm"), ("mlm_text", "text", "mlm"),
                             ("mvrc", "caption", "mvrc"), ("mvrc_attr", "caption", "mvrc_attr")):
        rows = [c for c in counts if c["kind"] == kind and f"{task}_total" in c]
        n = sum(c[f"{task}_total"] for c in rows)
        if n:
            out[f"{name}_acc"] = 100.0 * sum(c[f"{task}_correct"] for c in rows) / n
            out[f"num_{name}"] = float(n)
    rel = [c["rel_correct"] for c in counts if "rel_correct" in c]
    if rel:
        out["rel_acc"] = 100.0 * sum(rel) / len(rel)
    return out


class PretrainEvaluator(DatasetEvaluator):
    """Accumulates :class:`PretrainHead`'s per-input counts over a dataset (all ranks)."""

    def __init__(self, dataset_name, distributed=True):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._counts = []

    def reset(self):
        self._counts = []

    def process(self, inputs, outputs):
        self._counts.extend(outputs)

    def evaluate(self):
        counts = gather_on_main(self._counts, self._distributed)
        if counts is None:
            return {}
        metrics = pretrain_metrics(counts)
        if not metrics:
            logger.warning("%s: no masked word or RoI to evaluate", self._dataset_name)
        return {"pretrain": metrics}
