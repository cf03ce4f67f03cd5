"""Running the detector on images: what ``tools/extract_regions.py`` and ``tools/demo.py`` share.

:class:`RegionDetector` turns images into regions (boxes in the image's pixels, class
distributions, pooled features, attributes); :func:`detection_record` turns them into the
per-image detection JSON of :mod:`vlbert_d2.data.detections`, whose class distribution has the
background first (column 0, as the Caffe model and the VL-BERT loaders have it), where detectron2
puts it last.
"""
import logging
import shlex

import numpy as np
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.modeling import GeneralizedRCNN, build_model

from vlbert_d2.data.detections import encode_detection

from .checkpoint import load_bottom_up_weights
from .config import add_bottom_up_config

logger = logging.getLogger(__name__)

__all__ = ["RegionDetector", "setup_detector_cfg", "detection_record", "to_background_first"]


def setup_detector_cfg(config_file, weights=None, opts=(), device=None):
    """The detector's config: ``config_file`` with ``opts`` (a list, or one string of
    ``KEY VALUE`` pairs) merged, ``MODEL.WEIGHTS`` set to ``weights`` when given; the device
    is ``device``, else the config's when it is usable, else the CPU."""
    cfg = add_bottom_up_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(shlex.split(opts) if isinstance(opts, str) else list(opts))
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if device is not None:
        cfg.MODEL.DEVICE = device
    elif cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def to_background_first(class_probs):
    """(N, K + 1) detectron2 order (background last) -> (N, K + 1) background first."""
    return torch.cat([class_probs[:, -1:], class_probs[:, :-1]], dim=1)


class RegionDetector:
    """The bottom-up-attention detector, from images to regions.

    Example::

        detector = RegionDetector(setup_detector_cfg("configs/BUA-R101-C4-VG.yaml",
                                                     "faster_rcnn_from_caffe_attr.pkl"))
        regions = detector([cv2.imread("image.jpg")])[0]   # Instances in the image's pixels
    """

    def __init__(self, cfg):
        """
        Args:
            cfg (CfgNode): a config with :func:`add_bottom_up_config` keys (see
                :func:`setup_detector_cfg`). ``MODEL.WEIGHTS`` empty: random weights (for tests;
                the regions mean nothing), with a warning.
        """
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        self.load_report = None
        if cfg.MODEL.WEIGHTS:
            self.load_report = load_bottom_up_weights(self.model, cfg.MODEL.WEIGHTS)
        else:
            logger.warning("No detector weights (MODEL.WEIGHTS is empty): random weights, the regions "
                           "are meaningless. Give faster_rcnn_from_caffe_attr.pkl for real ones.")
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    @property
    def device(self):
        return self.model.device

    def __call__(self, images, image_format="BGR"):
        """Detect the regions of a batch of images.

        Args:
            images (list[np.ndarray]): (H_i, W_i, 3) uint8 images.
            image_format (str): their channel order ("BGR" as cv2 reads, or "RGB").

        Returns:
            list[Instances]: per image, on the CPU, in the image's pixels: ``pred_boxes``
            (N_i, 4), ``scores``, ``pred_classes``, ``class_probs`` (N_i, K + 1, background
            last), ``features`` (N_i, C) and, with attributes, ``attr_logits``,
            ``attr_classes``, ``attr_scores`` (see :meth:`BottomUpRes5ROIHeads.select`).
        """
        inputs = []
        for image in images:
            if image_format != self.input_format:
                image = image[:, :, ::-1]
            h, w = image.shape[:2]
            resized = self.resize.get_transform(image).apply_image(image)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
            inputs.append({"image": tensor, "height": h, "width": w})
        with torch.no_grad():
            outputs = self._forward(inputs)
        return [o["instances"].to("cpu") for o in outputs]

    def _forward(self, inputs):
        """``GeneralizedRCNN`` inference whose results do not depend on the batch.

        detectron2 pads the images of a batch to one size before the trunk, which changes the
        features near the padded borders, so an image's regions would depend on its batch-mates.
        Here the trunk and the RPN see each image alone; the box head (res5 on every RoI, the
        costly part) runs on the whole batch: its RoIs only read their own image's feature map,
        so zero-padding the maps to stack them changes nothing.
        """
        model = self.model
        images, features, proposals = [], [], []
        for x in inputs:
            image = model.preprocess_image([x])
            feats = model.backbone(image.tensor)
            proposals.append(model.proposal_generator(image, feats, None)[0][0])
            images.append(image)
            features.append(feats)
        stacked = {}
        for name in features[0]:
            maps = [f[name] for f in features]
            h = max(m.shape[-2] for m in maps)
            w = max(m.shape[-1] for m in maps)
            stacked[name] = torch.cat([F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2])) for m in maps])
        results, _ = model.roi_heads(None, stacked, proposals)
        return GeneralizedRCNN._postprocess(results, inputs, [im.image_sizes[0] for im in images])


def detection_record(image_id, image_w, image_h, regions, with_features=False):
    """The detection-file dict of one image (see :mod:`vlbert_d2.data.detections`).

    Args:
        image_id (int or str): the image's id.
        image_w, image_h (int): the image's size in pixels.
        regions (Instances): as :class:`RegionDetector` returns them.
        with_features (bool): also store the (N, C) pooled features.

    Returns:
        dict: boxes (N, 4), classes (N, K + 1) background first, optionally features (N, C).
    """
    return encode_detection(
        image_id, image_w, image_h,
        boxes=regions.pred_boxes.tensor.numpy(),
        classes=to_background_first(regions.class_probs).numpy(),
        features=regions.features.numpy() if with_features else None)
