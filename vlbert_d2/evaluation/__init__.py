"""Evaluators, registered per task and chosen by the ``evaluator_type`` of a dataset's metadata."""
from detectron2.data import MetadataCatalog

from ..tasks import get_task
from ..text.answer_vocab import vocab_for_cfg
from .pretrain_evaluation import PretrainEvaluator, pretrain_metrics
from .refcoco_evaluation import RefCOCOEvaluator
from .vqa_eval import normalize_answer, soft_scores, vqa_accuracy, vqa_metrics
from .vqa_evaluation import VQAEvaluator, write_vqa_submission
from .vcr_evaluation import (VCREvaluator, load_predictions, vcr_metrics,
                             write_leaderboard_csv)


# Evaluators by task name (vlbert_d2/tasks.py), which a dataset's metadata names as its
# ``evaluator_type``: builder(cfg, dataset_name, output_dir) -> DatasetEvaluator.
TASK_EVALUATORS = {}


def register_task_evaluator(task_name, builder=None):
    """Register ``builder(cfg, dataset_name, output_dir)`` as the evaluator of the datasets whose
    metadata's ``evaluator_type`` is ``task_name`` (a row of :data:`vlbert_d2.tasks.TASKS`).
    Usable as a decorator: ``@register_task_evaluator("my_task")``."""
    if builder is None:
        return lambda b: register_task_evaluator(task_name, b)
    get_task(task_name)  # a row of the table first
    TASK_EVALUATORS[task_name] = builder
    return builder


register_task_evaluator("vcr", lambda cfg, name, out: VCREvaluator(
    name, cfg.MODEL.VLBERT.VCR.TASK, out, num_choices=cfg.MODEL.VLBERT.VCR.NUM_CHOICES))
register_task_evaluator("vqa", lambda cfg, name, out: VQAEvaluator(name, vocab_for_cfg(cfg), out))
register_task_evaluator("refcoco", lambda cfg, name, out: RefCOCOEvaluator(name, out))
register_task_evaluator("pretrain", lambda cfg, name, out: PretrainEvaluator(name))


def build_vlbert_evaluator(cfg, dataset_name, output_dir=None):
    """The evaluator for ``dataset_name``: its metadata's ``evaluator_type`` names the task."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in TASK_EVALUATORS:
        raise NotImplementedError(f"no evaluator for dataset '{dataset_name}' (evaluator_type "
                                  f"{evaluator_type!r}; registered: {sorted(TASK_EVALUATORS)})")
    return TASK_EVALUATORS[evaluator_type](cfg, dataset_name, output_dir)


__all__ = ["VCREvaluator", "VQAEvaluator", "RefCOCOEvaluator", "PretrainEvaluator", "pretrain_metrics",
           "normalize_answer", "soft_scores", "vqa_accuracy", "vqa_metrics", "write_vqa_submission",
           "build_vlbert_evaluator",
           "register_task_evaluator", "TASK_EVALUATORS", "load_predictions", "vcr_metrics", "write_leaderboard_csv"]
