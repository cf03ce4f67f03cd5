"""Box head of the bottom-up-attention detector: dilated res5, attribute predictor, region
selection.

Class columns follow detectron2 inside the model: ``K`` object classes, then background at
column ``K`` (the detection files put background first; see :mod:`bua.regions`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances

__all__ = ["AttributeFastRCNNOutputLayers", "BottomUpRes5ROIHeads", "attribute_loss", "pad_attributes",
           "select_regions"]


def pad_attributes(attribute_lists, device=None):
    """Per-object attribute lists as one (N, M) int64 tensor padded with -1.

    Args:
        attribute_lists (list[list[int]]): per object, its attribute indices in [0, A).
        device: of the tensor.

    Returns:
        Tensor: (N, M), M the longest list (at least 1), -1 where an object has fewer.
    """
    width = max([len(a) for a in attribute_lists] + [1])
    out = torch.full((len(attribute_lists), width), -1, dtype=torch.int64, device=device)
    for i, attributes in enumerate(attribute_lists):
        if attributes:
            out[i, :len(attributes)] = torch.as_tensor(attributes, dtype=torch.int64)
    return out


def attribute_loss(logits, gt_attributes):
    """The attribute loss of the bottom-up-attention detector, for foreground RoIs.

    A multi-label softmax cross entropy, as the Caffe model's ``SoftmaxWithLoss`` with several
    labels per RoI: each ground-truth attribute ``a`` of a RoI contributes ``-log softmax(z)[a]``
    and the RoI's loss is the mean of its terms; a RoI without any attribute has one term, the
    "no attribute" column (the last). The loss is the mean over the RoIs (0 when there are none).

    Example: 3 columns (2 attributes + "no attribute"), RoI 1 with logits (0, 0, 0) and attribute
    0, RoI 2 with logits (0, ln 2, 0) and attributes {0, 1}, RoI 3 with logits (0, 0, ln 2) and
    none: ((ln 3) + (ln 4 + ln 2) / 2 + (ln 2)) / 3.

    Args:
        logits (Tensor): (R, A + 1) attribute logits, "no attribute" last.
        gt_attributes (Tensor): (R, M) int64 attribute indices in [0, A), -1 padded.

    Returns:
        Tensor: scalar.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    valid = gt_attributes >= 0
    none = ~valid.any(dim=1)
    targets = gt_attributes.clamp(min=0)
    weights = valid.to(logits.dtype)
    # A RoI without attributes: its first slot becomes the "no attribute" column.
    targets[none, 0] = logits.shape[1] - 1
    weights[none, 0] = 1.0
    weights = weights / weights.sum(dim=1, keepdim=True)
    nll = -F.log_softmax(logits, dim=1).gather(1, targets)
    return (nll * weights).sum() / logits.shape[0]


class AttributeFastRCNNOutputLayers(FastRCNNOutputLayers):
    """detectron2's class and box predictor plus the Visual Genome attribute predictor.

    The attribute logits of a RoI come from its pooled feature concatenated with an embedding of
    a class (at inference the argmax of the class logits, background included; in training the
    ground-truth class, as the ``cls_embedding`` layer of the official train.prototxt reads the
    labels): ``[x | E[c]] -> fc_attr -> ReLU -> attr_score``. The module names
    (``cls_embedding``, ``fc_attr``, ``attr_score``) are those of the public detectron2-format
    weights. In training the attribute loss (:func:`attribute_loss`, weighted by
    ``attribute_loss_weight``) covers the foreground RoIs.
    """

    @configurable
    def __init__(self, input_shape, *, num_attributes, attribute_embed_dim, attribute_fc_dim,
                 attribute_loss_weight=0.5, **kwargs):
        """
        Args:
            input_shape (ShapeSpec): the pooled RoI feature (C channels, 1 x 1).
            num_attributes (int): A, attribute classes; the logits have A + 1 columns, the last
                being "no attribute" (detectron2 order, as the class logits).
            attribute_embed_dim (int): size of the class embedding.
            attribute_fc_dim (int): size of the hidden layer.
            attribute_loss_weight (float): weight of the attribute loss (``loss_attr``).
            kwargs: those of :class:`FastRCNNOutputLayers`.
        """
        super().__init__(input_shape, **kwargs)
        input_size = self.cls_score.in_features
        self.num_attributes = num_attributes
        self.attribute_loss_weight = attribute_loss_weight
        self.cls_embedding = nn.Embedding(self.num_classes + 1, attribute_embed_dim)
        self.fc_attr = nn.Linear(input_size + attribute_embed_dim, attribute_fc_dim)
        self.attr_score = nn.Linear(attribute_fc_dim, num_attributes + 1)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(num_attributes=cfg.MODEL.BUA.NUM_ATTRIBUTES,
                   attribute_embed_dim=cfg.MODEL.BUA.ATTRIBUTE_EMBED_DIM,
                   attribute_fc_dim=cfg.MODEL.BUA.ATTRIBUTE_FC_DIM,
                   attribute_loss_weight=cfg.MODEL.BUA.ATTRIBUTE_LOSS_WEIGHT)
        return ret

    def attribute_logits(self, x, classes):
        """
        Args:
            x (Tensor): (R, C) pooled RoI features.
            classes (Tensor): (R,) int64 class per RoI in [0, K] (K = background).

        Returns:
            Tensor: (R, A + 1) attribute logits, "no attribute" last.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        h = torch.cat([x, self.cls_embedding(classes)], dim=1)
        return self.attr_score(F.relu(self.fc_attr(h)))

    def attribute_losses(self, x, proposals):
        """The attribute loss of the sampled RoIs: on the foreground ones, the logits for their
        ground-truth class (:func:`attribute_loss`).

        Args:
            x (Tensor): (R, C) pooled features of the RoIs of ``proposals``, in order.
            proposals (list[Instances]): per image, the sampled RoIs with ``gt_classes`` and,
                where the image has objects, ``gt_attributes`` ((R_i, M_i) int64, -1 padded)
                of the matched object.

        Returns:
            dict: ``{"loss_attr": weighted loss}``.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        classes, attributes = [], []
        for p in proposals:
            classes.append(p.gt_classes)
            if p.has("gt_attributes"):
                attributes.append(p.gt_attributes)
            else:  # an image without objects: all its RoIs are background
                attributes.append(torch.full((len(p), 1), -1, dtype=torch.int64, device=x.device))
        width = max([a.shape[1] for a in attributes] + [1])
        attributes = torch.cat([F.pad(a, (0, width - a.shape[1]), value=-1) for a in attributes])
        classes = torch.cat(classes) if classes else torch.zeros(0, dtype=torch.int64, device=x.device)
        fg = (classes >= 0) & (classes < self.num_classes)
        logits = self.attribute_logits(x[fg], classes[fg])
        return {"loss_attr": self.attribute_loss_weight * attribute_loss(logits, attributes[fg])}


def _iou(a, b):
    """IoU of boxes ``a`` (..., 4) with boxes ``b`` (..., N, 4), broadcasting: (..., N)."""
    a = a.unsqueeze(-2)
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter).clamp(min=1e-9)


def _max_confidence(boxes, scores, nms_thresh, floor):
    """Per-class NMS over the (RoI, class) pairs scoring >= ``floor``; per RoI, the best score
    among the classes where it survived.

    Greedy NMS runs for all classes at once: round ``i`` takes every class's ``i``-th best RoI,
    keeps it unless an already kept RoI of that class overlaps it by IoU > ``nms_thresh``, and
    then suppresses that class's RoIs it overlaps. Only classes with a pair above ``floor`` take
    part, for as many rounds as the longest such list, so a high floor is cheap; a kept pair only
    depends on pairs of its class scoring higher, hence the result is exact for every RoI whose
    confidence (over all pairs) is >= ``floor``.

    Args:
        boxes (Tensor): (R, 4), or (R, K, 4) per class.
        scores (Tensor): (R, K).

    Returns:
        (Tensor (R,) confidence, 0 where no pair survived; Tensor (R,) int64 class of it (lowest
         id on ties; the class argmax where none survived); Tensor (R,) bool: a pair survived)
    """
    num_rois = scores.shape[0]
    classes = torch.nonzero(scores.max(dim=0).values >= floor).flatten()  # (K',)
    if len(classes) == 0:
        return (scores.new_zeros(num_rois), scores.argmax(dim=1),
                torch.zeros(num_rois, dtype=torch.bool, device=scores.device))
    s = scores[:, classes].t()  # (K', R)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    rounds = int((s >= floor).sum(dim=1).max())
    if boxes.dim() == 2:
        overlaps = _iou(boxes, boxes) > nms_thresh  # (R, R), shared by all classes
    else:
        per_class = boxes[:, classes].transpose(0, 1)  # (K', R, 4)
    kept = torch.zeros_like(s, dtype=torch.bool)
    suppressed = torch.zeros_like(kept)
    rows = torch.arange(len(classes), device=scores.device)
    for i in range(rounds):
        cand = order[:, i]
        take = ~suppressed[rows, cand] & (s[rows, cand] >= floor)
        kept[rows, cand] = take
        if boxes.dim() == 2:
            over = overlaps.index_select(0, cand)  # (K', R)
        else:
            over = _iou(per_class[rows, cand], per_class) > nms_thresh
        suppressed |= over & take[:, None]
    conf, best = torch.where(kept, s, torch.zeros_like(s)).max(dim=0)  # first (lowest) class on ties
    found = kept.any(dim=0)
    return conf, torch.where(found, classes[best], scores.argmax(dim=1)), found


def select_regions(boxes, scores, nms_thresh=0.3, score_thresh=0.5, min_boxes=10, max_boxes=100):
    """Anderson et al.'s region selection (``generate_tsv.py``), by decreasing confidence.

    For every class, NMS of all RoIs by that class's score; a RoI's confidence is its best score
    among the classes where it survived NMS. The RoIs with confidence >= ``score_thresh`` are kept;
    if fewer than ``min_boxes``, the ``min_boxes`` most confident; if more than ``max_boxes``, the
    ``max_boxes`` most confident. ``min_boxes == max_boxes`` gives a fixed count (fewer only when
    the image has fewer RoIs).

    The per-class NMS is first run on the pairs scoring >= ``score_thresh`` only (exact for the
    RoIs above it, see :func:`_max_confidence`), then, when that keeps fewer than ``min_boxes``,
    on pairs above lower floors down to all pairs, until the ``min_boxes`` best are exact.

    Args:
        boxes (Tensor): (R, 4) one box per RoI, or (R, K, 4) one per RoI and class.
        scores (Tensor): (R, K) foreground class probabilities (background column removed).
        nms_thresh (float): IoU above which NMS suppresses a box of the same class.
        score_thresh (float): confidence to keep a RoI.
        min_boxes, max_boxes (int): bounds on the number kept.

    Returns:
        (Tensor (N,) int64 RoI indices, Tensor (N,) confidences, Tensor (N,) int64 class of each
        confidence in [0, K)).
    """
    if not 1 <= min_boxes <= max_boxes:
        raise ValueError(f"need 1 <= min_boxes <= max_boxes, got {min_boxes} and {max_boxes}")
    num_rois = scores.shape[0]
    if num_rois == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=scores.device)
        return empty, scores.new_zeros(0), empty
    wanted = min(min_boxes, num_rois)
    for floor in (score_thresh, score_thresh / 10, score_thresh / 100, 0.0):
        conf, cls, found = _max_confidence(boxes, scores, nms_thresh, floor)
        if int(found.sum()) >= wanted:  # the `wanted` best confidences are exact
            break
    order = torch.sort(conf, descending=True, stable=True).indices
    above = int((conf >= score_thresh).sum())
    count = min(max(above, min_boxes), max_boxes, num_rois)
    keep = order[:count]
    return keep, conf[keep], cls[keep]


@ROI_HEADS_REGISTRY.register()
class BottomUpRes5ROIHeads(Res5ROIHeads):
    """detectron2's C4 box head as in the bottom-up-attention detector.

    * res5 runs with stride 1 and dilation ``MODEL.BUA.RES5_DILATION`` (2: Caffe's test.prototxt),
      so the pooled RoI map keeps its resolution;
    * with ``MODEL.BUA.ATTRIBUTE_ON``, the box predictor is
      :class:`AttributeFastRCNNOutputLayers`;
    * at inference, instead of detectron2's per-class detections, it returns the regions chosen
      by :func:`select_regions`, each with its whole class distribution, pooled feature and
      attributes, which is what region-feature extraction needs.

    Training: detectron2's proposal sampling and class and box losses, plus the attribute loss
    (:meth:`AttributeFastRCNNOutputLayers.attribute_losses`) when the targets carry
    ``gt_attributes`` (see :class:`bua.data.AttributeDatasetMapper`), which the sampling copies
    to the RoIs matched to each object.
    """

    @configurable
    def __init__(self, *, min_boxes, max_boxes, score_thresh, nms_thresh, box_source, **kwargs):
        """
        Args:
            min_boxes, max_boxes, score_thresh, nms_thresh: see :func:`select_regions`.
            box_source (str): "proposals" (a region's box is the RoI whose feature is pooled) or
                "regressed" (its class-specific regression for the class of its confidence).
            kwargs: those of :class:`Res5ROIHeads`.
        """
        super().__init__(**kwargs)
        if box_source not in ("proposals", "regressed"):
            raise ValueError(f"MODEL.BUA.BOX_SOURCE must be 'proposals' or 'regressed', got {box_source!r}")
        if not 1 <= min_boxes <= max_boxes:
            raise ValueError(f"need 1 <= MODEL.BUA.MIN_BOXES <= MODEL.BUA.MAX_BOXES, got {min_boxes} and {max_boxes}")
        self.min_boxes, self.max_boxes = min_boxes, max_boxes
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.box_source = box_source

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        if cfg.MODEL.BUA.ATTRIBUTE_ON:
            channels = ret["box_predictor"].cls_score.in_features
            ret["box_predictor"] = AttributeFastRCNNOutputLayers(cfg, ShapeSpec(channels=channels, height=1, width=1))
        b = cfg.MODEL.BUA
        ret.update(min_boxes=b.MIN_BOXES, max_boxes=b.MAX_BOXES, score_thresh=b.SCORE_THRESH,
                   nms_thresh=b.NMS_THRESH, box_source=b.BOX_SOURCE)
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        dilation = cfg.MODEL.BUA.RES5_DILATION
        if dilation == 1:
            return super()._build_res5_block(cfg)
        r = cfg.MODEL.RESNETS
        out_channels = r.RES2_OUT_CHANNELS * 8  # res5 is 8x res2
        blocks = ResNet.make_stage(
            BottleneckBlock,
            3,
            stride_per_block=[1, 1, 1],  # the RoI map keeps its size: dilation instead of stride
            in_channels=out_channels // 2,
            bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8,
            out_channels=out_channels,
            num_groups=r.NUM_GROUPS,
            norm=r.NORM,
            stride_in_1x1=r.STRIDE_IN_1X1,
            dilation=dilation,
        )
        return nn.Sequential(*blocks), out_channels

    def forward(self, images, features, proposals, targets=None):
        """Training: detectron2's class and box losses and the attribute loss. Inference: see
        :meth:`select`.

        Returns:
            (list[Instances], dict): per image the regions (inference) or [] (training), and
            the losses (training) or {}.
        """
        if self.training:
            return [], self.losses(features, proposals, targets)
        box_features = self._shared_roi_transform([features[f] for f in self.in_features],
                                                  [p.proposal_boxes for p in proposals])
        pooled = box_features.mean(dim=[2, 3])
        del box_features
        return self.select(pooled, proposals), {}

    def losses(self, features, proposals, targets):
        """The training losses: ``loss_cls``, ``loss_box_reg`` and, with the attribute head,
        ``loss_attr``.

        Args:
            features (dict[str, Tensor]): the trunk's features.
            proposals (list[Instances]): per image, the RPN's proposals.
            targets (list[Instances]): per image, ``gt_boxes``, ``gt_classes`` and, for the
                attribute loss, ``gt_attributes``.
        """
        if self.mask_on:
            raise NotImplementedError("the bottom-up-attention box head has no mask head (MODEL.MASK_ON)")
        assert targets, "training needs the targets"
        proposals = self.label_and_sample_proposals(proposals, targets)
        box_features = self._shared_roi_transform([features[f] for f in self.in_features],
                                                  [p.proposal_boxes for p in proposals])
        pooled = box_features.mean(dim=[2, 3])
        del box_features
        predictions = self.box_predictor(pooled)
        losses = self.box_predictor.losses(predictions, proposals)
        if isinstance(self.box_predictor, AttributeFastRCNNOutputLayers):
            if not all(t.has("gt_attributes") for t in targets if len(t)):
                raise ValueError("the attribute loss needs gt_attributes in the targets: train with "
                                 "bua.data.AttributeDatasetMapper on a dataset with attribute_ids "
                                 "(or MODEL.BUA.ATTRIBUTE_ON False)")
            losses.update(self.box_predictor.attribute_losses(pooled, proposals))
        return losses

    def select(self, pooled, proposals):
        """Classify the RoIs and keep the regions of :func:`select_regions`.

        Args:
            pooled (Tensor): (R, C) pooled res5 features of all images' proposals.
            proposals (list[Instances]): per image, ``proposal_boxes`` (R_i in all).

        Returns:
            list[Instances]: per image, N_i regions in the (resized) input's pixels with
            ``pred_boxes`` (N_i, 4), ``scores`` (N_i,) confidence, ``pred_classes`` (N_i,) class of
            it in [0, K), ``class_probs`` (N_i, K + 1) softmax with background last,
            ``features`` (N_i, C) pooled res5 features and, with attributes,
            ``attr_logits`` (N_i, A + 1) ("no attribute" last), ``attr_classes`` (N_i,) and
            ``attr_scores`` (N_i,) (the best of the A attributes by softmax over them, as the
            detectron2 port reports them).
        """
        predictions = self.box_predictor(pooled)
        logits = predictions[0]
        probs = F.softmax(logits, dim=-1)
        num_classes = probs.shape[1] - 1
        if self.box_source == "regressed":
            per_image_boxes = self.box_predictor.predict_boxes(predictions, proposals)
        else:
            per_image_boxes = [p.proposal_boxes.tensor for p in proposals]
        counts = [len(p) for p in proposals]
        results = []
        for p, boxes, probs_i, logits_i, pooled_i in zip(
                proposals, per_image_boxes, probs.split(counts), logits.split(counts), pooled.split(counts)):
            if boxes.shape[1] > 4:  # class-specific regression: (R, K * 4) -> (R, K, 4), clipped
                boxes = Boxes(boxes.reshape(-1, 4))
                boxes.clip(p.image_size)
                boxes = boxes.tensor.view(len(p), -1, 4)
            keep, conf, cls = select_regions(boxes, probs_i[:, :num_classes], self.nms_thresh,
                                             self.score_thresh, self.min_boxes, self.max_boxes)
            if boxes.dim() == 3:
                chosen = boxes[keep, cls] if boxes.shape[1] > 1 else boxes[keep, 0]
            else:
                chosen = boxes[keep]
            out = Instances(p.image_size)
            out.pred_boxes = Boxes(chosen)
            out.scores = conf
            out.pred_classes = cls
            out.class_probs = probs_i[keep]
            out.features = pooled_i[keep]
            if isinstance(self.box_predictor, AttributeFastRCNNOutputLayers):
                attr = self.box_predictor.attribute_logits(pooled_i[keep], logits_i[keep].argmax(dim=1))
                out.attr_logits = attr
                out.attr_scores, out.attr_classes = F.softmax(attr[:, :-1], dim=-1).max(dim=1)
            results.append(out)
        return results
