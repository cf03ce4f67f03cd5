"""Running the detector on images: what ``tools/extract_regions.py`` and ``tools/demo.py`` share.

:class:`RegionDetector` turns images into regions (boxes in the image's pixels, class
distributions, pooled features, attributes); :func:`detection_record` turns them into the
per-image detection JSON of :mod:`vlbert_d2.data.detections`, whose class distribution has the
background first (column 0, as the Caffe model and the VL-BERT loaders have it), where detectron2
puts it last.
"""
import logging
import os
import shlex
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.poolers import convert_boxes_to_pooler_format
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from vlbert_d2.data.detections import encode_detection

from .backbone import FoldedResNet
from .checkpoint import load_bottom_up_weights
from .config import add_bottom_up_config
from .roi_heads import BottomUpRes5ROIHeads

logger = logging.getLogger(__name__)

# RoIs per res5 pass on a CPU (RegionDetector's roi_chunk); see RegionDetector.__init__.
DEFAULT_CPU_ROI_CHUNK = 16

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

    def __init__(self, cfg, fast=True, roi_chunk=None):
        """
        Args:
            cfg (CfgNode): a config with :func:`add_bottom_up_config` keys (see
                :func:`setup_detector_cfg`). ``MODEL.WEIGHTS`` empty: random weights (for tests;
                the regions mean nothing), with a warning.
            fast (bool): run the fast inference path (:meth:`_forward_fast`): the frozen batch
                norms folded into the convolutions (a cache beside the model, which is left
                as built and loaded), channels-last activations, res5 over each image's RoIs in
                chunks. False: the modules' own forward (:meth:`_forward_modules`). Both give the
                same regions up to float rounding; the fast path is used only where it applies
                (model in eval mode, no forward hooks on the trunk or box head, a
                :class:`BottomUpRes5ROIHeads` with one pooler level), else the modules run.
            roi_chunk (int or None): RoIs per res5 pass in the fast path. None: 16 on a CPU
                (an activation of a chunk, 16 x 2048 x 14 x 14 floats, is 26 MB: it stays in a
                large last-level cache; 8 to 32 measured alike, larger chunks slower), all of
                an image's RoIs on a GPU.
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
        if roi_chunk is not None and roi_chunk < 1:
            raise ValueError(f"roi_chunk must be >= 1 or None, got {roi_chunk}")
        self.fast = fast
        self.roi_chunk = roi_chunk
        roots = [self.model.backbone]
        if hasattr(self.model.roi_heads, "res5"):
            roots.append(self.model.roi_heads.res5)
        self._folded = FoldedResNet(roots)

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
        """``GeneralizedRCNN`` inference whose results do not depend on the batch:
        :meth:`_forward_fast` where it applies (see ``fast``), else :meth:`_forward_modules`.
        The stages are labelled for ``torch.profiler`` ("bua.trunk", "bua.rpn", then "bua.res5"
        and "bua.select" or, in the modules' forward, "bua.box_head")."""
        if self._fast_applies():
            return self._forward_fast(inputs)
        return self._forward_modules(inputs)

    def _fast_applies(self):
        model, heads = self.model, self.model.roi_heads
        if not self.fast or model.training or not isinstance(heads, BottomUpRes5ROIHeads):
            return False
        if len(heads.pooler.level_poolers) != 1 or len(heads.in_features) != 1:
            return False
        # Forward hooks (e.g. bua.testing.calibrate_frozen_norms's) must see their modules run.
        if _global_forward_hooks or _global_forward_pre_hooks:
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks
                       for root in (model.backbone, heads.pooler, heads.res5) for m in root.modules())

    def _forward_modules(self, inputs):
        """The modules' own forward (detectron2's), batch-independent.

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
            with record_function("bua.trunk"):
                feats = model.backbone(image.tensor)
            with record_function("bua.rpn"):
                proposals.append(model.proposal_generator(image, feats, None)[0][0])
            images.append(image)
            features.append(feats)
        stacked = {}
        for name in features[0]:
            maps = [f[name] for f in features]
            h = max(m.shape[-2] for m in maps)
            w = max(m.shape[-1] for m in maps)
            stacked[name] = torch.cat([F.pad(m, (0, w - m.shape[-1], 0, h - m.shape[-2])) for m in maps])
        with record_function("bua.box_head"):
            results, _ = model.roi_heads(None, stacked, proposals)
        return GeneralizedRCNN._postprocess(results, inputs, [im.image_sizes[0] for im in images])

    def _forward_fast(self, inputs):
        """The computation of :meth:`_forward_modules` (the same layers with the same weights;
        equal up to float rounding), arranged for speed:

        * each convolution and its frozen batch norm are one convolution (:class:`FoldedResNet`):
          detectron2's ``FrozenBatchNorm2d`` is a separate pass over every conv's output;
        * activations are channels-last (NHWC), oneDNN's fastest layout (with 2 threads, res5's
          1 x 1 convolutions measured up to 2x slower in NCHW on an AVX-512 CPU), and on a CPU
          every convolution is oneDNN's (see :meth:`FoldedResNet.conv`);
        * res5 (about 90% of the arithmetic: 9 convolutions at 14 x 14 on every RoI) runs on each
          image's RoIs in chunks of ``roi_chunk``, each pooled to its 2048-d vector before the
          next, instead of on all RoIs of the batch at once (300 RoIs: 480 MB per activation,
          allocated and page-faulted anew for each of the ~30 intermediate tensors). An image's
          chunks do not depend on its batch-mates, so neither do its regions;
        * each RoI is pooled from its own image's feature map (the same values as from the
          zero-padded stack: the maps are post-ReLU, >= 0, and RoIs lie inside their image),
          the RoIs of a chunk split over the CPU threads (:func:`_roi_pool`).

        The folded weights are a second copy of the trunk's and res5's (about 230 MB for R101).
        """
        model, heads = self.model, self.model.roi_heads
        self._folded.refresh()
        in_feature = heads.in_features[0]
        images, pooled, proposals = [], [], []
        for x in inputs:
            image = model.preprocess_image([x])
            with record_function("bua.trunk"):
                feats = self._folded.resnet(model.backbone, image.tensor)
            with record_function("bua.rpn"):
                props = model.proposal_generator(image, feats, None)[0][0]
            with record_function("bua.res5"):
                pooled.append(self._pooled_res5(heads, feats[in_feature], props.proposal_boxes))
            images.append(image)
            proposals.append(props)
        with record_function("bua.select"):
            results = heads.select(torch.cat(pooled), proposals)
        return GeneralizedRCNN._postprocess(results, inputs, [im.image_sizes[0] for im in images])

    def _pooled_res5(self, heads, feature, boxes):
        """(R, C) res5 features of one image's RoIs averaged over the pooled map, computed
        ``roi_chunk`` RoIs at a time (:meth:`BottomUpRes5ROIHeads.forward` at inference)."""
        pooler = heads.pooler.level_poolers[0]
        feature = feature.contiguous()  # RoIPool reads NCHW
        rois = convert_boxes_to_pooler_format([boxes])
        chunk = self.roi_chunk or (len(rois) if feature.device.type == "cuda" else DEFAULT_CPU_ROI_CHUNK)
        out = []
        for start in range(0, len(rois), max(chunk, 1)):
            x = self._folded.blocks(heads.res5, _roi_pool(pooler, feature, rois[start:start + chunk]))
            out.append(x.mean(dim=[2, 3]))
        if not out:
            return feature.new_zeros((0, heads.res5[-1].out_channels))
        return torch.cat(out)

_POOL_EXECUTORS = {}


def _roi_pool(pooler, feature, rois):
    """``pooler(feature, rois)``; on a CPU with several torch threads, the RoIs split among them.

    torchvision's CPU RoIPool is a plain loop on one thread (about 0.4 s per image for 300 RoIs
    of 1024 channels, while the convolutions use every thread); it releases the GIL, so parts of
    the RoIs run in Python threads at once. Every RoI is pooled alone: the result is the same.
    """
    parts = min(torch.get_num_threads(), len(rois)) if feature.device.type == "cpu" else 1
    if parts < 2:
        return pooler(feature, rois)
    key = (os.getpid(), parts - 1)  # a forked process (a data-loader worker) makes its own threads
    executor = _POOL_EXECUTORS.get(key)
    if executor is None:
        executor = _POOL_EXECUTORS[key] = ThreadPoolExecutor(parts - 1, thread_name_prefix="bua-roi-pool")

    def pool(r):
        with torch.no_grad():  # grad mode is per thread
            return pooler(feature, r)

    pieces = rois.tensor_split(parts)
    futures = [executor.submit(pool, r) for r in pieces[1:]]
    return torch.cat([pool(pieces[0])] + [f.result() for f in futures])


def detection_record(image_id, image_w, image_h, regions, with_features=False):
    """The detection-file dict of one image (see :mod:`vlbert_d2.data.detections`).

    Args:
        image_id (int or str): the image's id.
        image_w, image_h (int): the image's size in pixels.
        regions (Instances): as :class:`RegionDetector` returns them.
        with_features (bool): also store the (N, C) pooled features.

    Returns:
        dict: boxes (N, 4), classes (N, K + 1) background first, optionally features (N, C),
        and, from a detector with an attribute head, attributes (N, A + 1): the softmax of its
        attribute logits, "no attribute" last (the targets of
        ``MODEL.VLBERT.PRETRAIN.NUM_REGION_ATTRIBUTES``).
    """
    attributes = None
    if regions.has("attr_logits"):
        attributes = torch.softmax(regions.attr_logits.float(), dim=1).numpy()
    return encode_detection(
        image_id, image_w, image_h,
        boxes=regions.pred_boxes.tensor.numpy(),
        classes=to_background_first(regions.class_probs).numpy(),
        features=regions.features.numpy() if with_features else None,
        attributes=attributes)
