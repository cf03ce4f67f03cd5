"""Config keys of the bottom-up-attention detector (``cfg.MODEL.BUA``)."""
from detectron2.config import CfgNode as CN


def add_bottom_up_config(cfg):
    """Add the ``MODEL.BUA`` keys to a detectron2 config (in place) and return it.

    The detector is Anderson et al.'s Visual Genome Faster R-CNN (bottom-up attention, CVPR 2018)
    in the detectron2 port of the public weights (``faster_rcnn_from_caffe[_attr].pkl``). The
    standard detectron2 keys carry the rest (``RESNETS.DEPTH 101``, ``ROI_HEADS.NUM_CLASSES 1600``,
    ``RPN.CONV_DIMS [512]``, ...): see ``configs/BUA-R101-C4-VG.yaml``.
    """
    cfg.MODEL.BUA = CN()
    # Stem max pool as Caffe computes it: kernel 3, stride 2, no padding, ceil mode (detectron2's
    # stem pads by 1). The ported weights were trained with Caffe's.
    cfg.MODEL.BUA.CAFFE_MAXPOOL = True
    # Dilation of res5 in the box head. 2: res5 runs with stride 1 and dilation 2 on the 14x14
    # RoI map (the Caffe test.prototxt; "RES5HALVE False" in the port). 1: detectron2's stride-2
    # res5.
    cfg.MODEL.BUA.RES5_DILATION = 2

    # Attribute head: [pooled feature | embedding of the class argmax (background included) at
    # inference, of the ground-truth class in training] -> fc (FC_DIM) -> ReLU ->
    # NUM_ATTRIBUTES + 1 logits (the extra column is "no attribute").
    cfg.MODEL.BUA.ATTRIBUTE_ON = True
    cfg.MODEL.BUA.NUM_ATTRIBUTES = 400
    cfg.MODEL.BUA.ATTRIBUTE_EMBED_DIM = 256  # class embedding (the port: feature dim / 8)
    cfg.MODEL.BUA.ATTRIBUTE_FC_DIM = 512  # hidden layer (the port: feature dim / 4)
    # Training (bua.roi_heads.attribute_loss): the class embedded is the RoI's ground-truth class;
    # for each foreground RoI, the mean over its ground-truth attributes of the softmax cross
    # entropy over the NUM_ATTRIBUTES + 1 columns ("no attribute" the target of a RoI without
    # any), averaged over the foreground RoIs, times this weight (0.5: the loss_weight of
    # loss_attr in the official train.prototxt, models/vg/ResNet-101/faster_rcnn_end2end_final).
    cfg.MODEL.BUA.ATTRIBUTE_LOSS_WEIGHT = 0.5

    # Region selection at inference (Anderson et al.'s generate_tsv.py): for every object class,
    # NMS of all RoIs by that class's score; a RoI's confidence is its best score among the
    # classes where it survived; keep the RoIs whose confidence is >= SCORE_THRESH, at least
    # MIN_BOXES and at most MAX_BOXES of them, by decreasing confidence. MIN_BOXES = MAX_BOXES =
    # 36 gives the fixed-count variant. VL-BERT (Su et al., section 4.1): 10 to 100 RoIs at 0.5.
    cfg.MODEL.BUA.MIN_BOXES = 10
    cfg.MODEL.BUA.MAX_BOXES = 100
    cfg.MODEL.BUA.SCORE_THRESH = 0.5
    cfg.MODEL.BUA.NMS_THRESH = 0.3  # per-class NMS IoU (py-faster-rcnn's TEST.NMS)
    # The box written for a RoI: "proposals" (the RoI itself, whose feature is pooled: the
    # official generate_tsv.py) or "regressed" (its box regression for the class of its
    # confidence, as the detectron2 port's demos draw).
    cfg.MODEL.BUA.BOX_SOURCE = "proposals"
    return cfg
