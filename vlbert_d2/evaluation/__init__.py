"""Evaluators, chosen by the ``evaluator_type`` of a dataset's metadata."""
from detectron2.data import MetadataCatalog

from ..text.answer_vocab import vocab_for_cfg
from .pretrain_evaluation import PretrainEvaluator, pretrain_metrics
from .refcoco_evaluation import RefCOCOEvaluator
from .vqa_eval import normalize_answer, soft_scores, vqa_accuracy, vqa_metrics
from .vqa_evaluation import VQAEvaluator, write_vqa_submission
from .vcr_evaluation import (VCREvaluator, load_predictions, vcr_metrics,
                             write_leaderboard_csv)


def build_vlbert_evaluator(cfg, dataset_name, output_dir=None):
    """The evaluator for ``dataset_name`` according to its metadata's ``evaluator_type``."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "vcr":
        return VCREvaluator(dataset_name, cfg.MODEL.VLBERT.VCR.TASK, output_dir,
                            num_choices=cfg.MODEL.VLBERT.VCR.NUM_CHOICES)
    if evaluator_type == "vqa":
        return VQAEvaluator(dataset_name, vocab_for_cfg(cfg), output_dir)
    if evaluator_type == "refcoco":
        return RefCOCOEvaluator(dataset_name, output_dir)
    if evaluator_type == "pretrain":
        return PretrainEvaluator(dataset_name)
    raise NotImplementedError(f"no evaluator for dataset '{dataset_name}' "
                              f"(evaluator_type {evaluator_type!r})")


__all__ = ["VCREvaluator", "VQAEvaluator", "RefCOCOEvaluator", "PretrainEvaluator", "pretrain_metrics",
           "normalize_answer", "soft_scores", "vqa_accuracy", "vqa_metrics", "write_vqa_submission",
           "build_vlbert_evaluator", "load_predictions", "vcr_metrics", "write_leaderboard_csv"]
