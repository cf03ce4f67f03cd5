"""Attribute accuracy of the detector's regions against ground-truth objects."""
import itertools
import logging
from collections import OrderedDict

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["AttributeEvaluator", "attribute_accuracy"]


def attribute_accuracy(gt_boxes, gt_attributes, pred_boxes, pred_scores, pred_attributes, iou_threshold=0.5):
    """Match each ground-truth object of one image to a region, and score its attribute.

    An object's region is, among the regions overlapping it by IoU >= ``iou_threshold``, the one
    with the highest score (any class; a region may serve several objects). It is correct when
    the region's top attribute (the best of the A attributes, "no attribute" excluded) is one of
    the object's attributes.

    Args:
        gt_boxes (Tensor): (G, 4) XYXY.
        gt_attributes (list[list[int]]): per object, its attribute indices (objects with none are
            skipped: nothing to score).
        pred_boxes (Tensor): (D, 4) XYXY.
        pred_scores (Tensor): (D,).
        pred_attributes (Tensor): (D,) int64 top attribute per region.

    Returns:
        (int, int, int): objects with attributes, those matched to a region, and those matched
        whose region's attribute is correct.
    """
    scored = [i for i, a in enumerate(gt_attributes) if len(a)]
    if not scored:
        return 0, 0, 0
    if len(pred_boxes) == 0:
        return len(scored), 0, 0
    iou = pairwise_iou(Boxes(gt_boxes[scored]), Boxes(pred_boxes))  # (G', D)
    scores = torch.where(iou >= iou_threshold, pred_scores[None, :].expand_as(iou),
                         torch.full_like(iou, -float("inf")))
    best_score, best = scores.max(dim=1)
    matched = torch.isfinite(best_score)
    correct = sum(int(pred_attributes[best[k]]) in gt_attributes[i]
                  for k, i in enumerate(scored) if matched[k])
    return len(scored), int(matched.sum()), correct


class AttributeEvaluator(DatasetEvaluator):
    """Attribute accuracy of the regions (``pred_boxes``, ``scores``, ``attr_classes``) on a
    dataset with ``attribute_ids`` (:func:`bua.data.load_attribute_coco_json`).

    Reports, in percent: ``accuracy`` (share of the matched objects whose region has the right top
    attribute, see :func:`attribute_accuracy`), ``matched`` (share of the objects with attributes
    that a region overlaps by IoU >= 0.5) and ``accuracy_all`` (correct over all objects with
    attributes, unmatched counted wrong).
    """

    def __init__(self, dataset_name, distributed=True, iou_threshold=0.5):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._iou_threshold = iou_threshold
        self._gt = None
        self._counts = []

    def _ground_truth(self):
        if self._gt is None:
            self._gt = {}
            for record in DatasetCatalog.get(self._dataset_name):
                annos = [a for a in record.get("annotations", []) if a.get("iscrowd", 0) == 0]
                boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
                self._gt[record["image_id"]] = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                                [list(a.get("attribute_ids", [])) for a in annos])
        return self._gt

    def reset(self):
        self._counts = []

    def process(self, inputs, outputs):
        gt = self._ground_truth()
        for inp, out in zip(inputs, outputs):
            regions = out["instances"].to("cpu")
            if not regions.has("attr_classes"):
                raise ValueError("AttributeEvaluator needs regions with attr_classes (MODEL.BUA.ATTRIBUTE_ON)")
            boxes, attributes = gt[inp["image_id"]]
            self._counts.append(attribute_accuracy(boxes, attributes, regions.pred_boxes.tensor, regions.scores,
                                                   regions.attr_classes, self._iou_threshold))

    def evaluate(self):
        counts = self._counts
        if self._distributed:
            comm.synchronize()
            counts = list(itertools.chain(*comm.gather(counts, dst=0)))
            if not comm.is_main_process():
                return {}
        total, matched, correct = (sum(c[k] for c in counts) for k in range(3))
        if total == 0:
            logger.warning("%s: no object with attributes; no attribute accuracy", self._dataset_name)
            return {}
        names = MetadataCatalog.get(self._dataset_name).get("attribute_classes", None)
        result = {"accuracy": 100.0 * correct / max(matched, 1), "matched": 100.0 * matched / total,
                  "accuracy_all": 100.0 * correct / total}
        logger.info("%s: attribute accuracy %.2f%% of %d matched objects (%.2f%% of %d objects matched "
                    "at IoU >= %.2f; %d attributes)", self._dataset_name, result["accuracy"], matched,
                    result["matched"], total, self._iou_threshold, len(names) if names else -1)
        return OrderedDict(attributes=result)
