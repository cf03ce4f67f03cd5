"""RefCOCO+ evaluation: accuracy at IoU >= 0.5 and the prediction file ``[{ref_id, box}]``."""
import json
import logging
import os

import torch

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager

from ..utils.boxes import inclusive_iou
from .common import gather_on_main

logger = logging.getLogger(__name__)
CORRECT_IOU = 0.5


class RefCOCOEvaluator(DatasetEvaluator):
    """The predicted box is the best-scoring candidate region; it is right when its IoU with the
    referred object's box is at least 0.5 (pixel-inclusive sizes, as the official evaluation).
    Writes ``{output_dir}/refcoco_{dataset}_results.json``: ``[{"ref_id", "sent_id", "box":
    [x, y, w, h]}]`` (pixels of the original image)."""

    def __init__(self, dataset_name, output_dir=None, distributed=True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._predictions = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for x, out in zip(inputs, outputs):
            box = x["candidate_boxes"][out["index"]].float()
            iou = float(inclusive_iou(box[None], x["gt_box"].float()[None])[0, 0])
            x1, y1, x2, y2 = box.tolist()
            self._predictions.append({"ref_id": x["ref_id"], "sent_id": x["sent_id"],
                                      "box": [x1, y1, x2 - x1, y2 - y1], "iou": iou})

    def evaluate(self):
        predictions = gather_on_main(self._predictions, self._distributed)
        if predictions is None:
            return {}
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, f"refcoco_{self._dataset_name}_results.json")
            with PathManager.open(path, "w") as f:
                json.dump([{k: p[k] for k in ("ref_id", "sent_id", "box")} for p in predictions], f)
            logger.info("Saved %d RefCOCO+ predictions to %s", len(predictions), path)
        if not predictions:
            return {"refcoco": {"num_predictions": 0.0}}
        correct = torch.tensor([p["iou"] >= CORRECT_IOU for p in predictions], dtype=torch.float)
        return {"refcoco": {"accuracy": 100.0 * float(correct.mean()),
                            "num_predictions": float(len(predictions))}}
