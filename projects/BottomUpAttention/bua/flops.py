"""Arithmetic of region extraction, from the layer shapes: multiply-accumulates (MACs) per image.

:func:`extraction_layers` lists every convolution and fully connected layer that
:class:`bua.RegionDetector` runs on one image, with its shape and MACs, computed from the config
alone (the ResNet depth and widths, the strides, the resized input size, the RPN head, res5 on
``num_proposals`` RoIs at the pooler's resolution, the class / box / attribute predictors).
Element-wise operations (ReLU, residual adds, batch norms, pooling, NMS) are not counted:
they are memory-bound and tiny next to the convolutions. ``tests/projects/test_extraction_speed.py``
checks the count against fvcore's ``FlopCountAnalysis`` traced on the model itself.

One MAC is 2 floating-point operations (FLOPs). ``tools/benchmark_extraction.py`` turns the count
into a lower bound on time from this machine's measured convolution rate.

For the full detector on a 640 x 480 image (600 x 800 input, 300 RoIs, 100 regions) it is about
960 GMACs (1.9 TFLOPs), of which about 92% is res5 on the RoIs::

    from bua.flops import extraction_layers, stage_totals
    layers = extraction_layers(cfg, (480, 640), num_proposals=300)
    print(stage_totals(layers))  # {"stem": 1.1e9, "res2": 6.4e9, ..., "res5": 8.8e11, ...}
"""
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Layer", "extraction_layers", "resized_size", "stage_totals", "total_macs"]

# Bottleneck blocks per stage (res2, res3, res4, res5) of the ResNet depths.
_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@dataclass(frozen=True)
class Layer:
    """One layer, ``count`` times (e.g. the identical blocks of a stage, or RoIs).

    A convolution: ``kernel`` k (k x k), output ``out_hw``; a fully connected layer: kernel 1,
    ``out_hw`` (1, 1). ``batch`` is the number of maps (RoIs) or rows it runs on.
    """

    stage: str
    name: str
    in_channels: int
    out_channels: int
    kernel: int = 1
    out_hw: tuple = (1, 1)
    batch: int = 1
    groups: int = 1
    dilation: int = 1
    count: int = 1

    @property
    def macs(self):
        h, w = self.out_hw
        return (self.count * self.batch * h * w * self.out_channels * (self.in_channels // self.groups)
                * self.kernel * self.kernel)


def resized_size(height, width, min_size, max_size):
    """(H, W) of an image after ``ResizeShortestEdge(min_size, max_size)`` (detectron2's rule)."""
    scale = min_size / min(height, width)
    h, w = (min_size, scale * width) if height < width else (scale * height, min_size)
    if max(h, w) > max_size:
        scale = max_size / max(h, w)
        h, w = h * scale, w * scale
    return int(h + 0.5), int(w + 0.5)


def _conv_out(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    return (-(-span // stride) if ceil_mode else span // stride) + 1


def _bottleneck_stage(layers, stage, hw, in_c, bottleneck_c, out_c, blocks, stride, dilation, groups,
                      stride_in_1x1, batch=1):
    """Append one stage of bottleneck blocks; returns its output (H, W)."""
    h, w = hw
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    h1, w1 = _conv_out(h, 1, s1, 0), _conv_out(w, 1, s1, 0)  # after conv1
    pad = dilation  # detectron2: padding = dilation for the 3x3 conv
    h2, w2 = _conv_out(h1, 3, s3, pad, dilation), _conv_out(w1, 3, s3, pad, dilation)
    hs, ws = _conv_out(h, 1, stride, 0), _conv_out(w, 1, stride, 0)  # the shortcut
    assert (hs, ws) == (h2, w2)
    # The first block (stride, shortcut projection), then blocks - 1 identical ones.
    if in_c != out_c or stride != 1:
        layers.append(Layer(stage, "block0.shortcut", in_c, out_c, 1, (hs, ws), batch))
    layers.append(Layer(stage, "block0.conv1", in_c, bottleneck_c, 1, (h1, w1), batch))
    layers.append(Layer(stage, "block0.conv2", bottleneck_c, bottleneck_c, 3, (h2, w2), batch, groups, dilation))
    layers.append(Layer(stage, "block0.conv3", bottleneck_c, out_c, 1, (h2, w2), batch))
    if blocks > 1:
        n = blocks - 1
        layers.append(Layer(stage, "blocks.conv1", out_c, bottleneck_c, 1, (h2, w2), batch, count=n))
        layers.append(Layer(stage, "blocks.conv2", bottleneck_c, bottleneck_c, 3, (h2, w2), batch, groups, dilation,
                            count=n))
        layers.append(Layer(stage, "blocks.conv3", bottleneck_c, out_c, 1, (h2, w2), batch, count=n))
    return h2, w2


def extraction_layers(cfg, image_hw, num_proposals=None, num_regions=None):
    """The layers :class:`bua.RegionDetector` runs on one image, with their MACs.

    Args:
        cfg (CfgNode): the detector's config (``add_bottom_up_config`` keys; R50 / R101 / R152
            C4 with bottleneck blocks).
        image_hw (tuple): (H, W) of the image before resizing.
        num_proposals (int or None): RoIs from the RPN (default: ``RPN.POST_NMS_TOPK_TEST``).
        num_regions (int or None): regions kept, which the attribute head runs on (default:
            ``MODEL.BUA.MAX_BOXES``, the most there can be).

    Returns:
        list[Layer]: in the order they run; stages "stem", "res2".."res4" (the trunk), "rpn",
        "res5" (on the RoIs), "box_predictor" (class and box logits of the RoIs), "attributes".
    """
    m = cfg.MODEL
    r = m.RESNETS
    if r.DEPTH not in _BLOCKS:
        raise ValueError(f"RESNETS.DEPTH {r.DEPTH}: only bottleneck ResNets ({sorted(_BLOCKS)}) are counted")
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("deformable convolutions are not counted")
    num_proposals = m.RPN.POST_NMS_TOPK_TEST if num_proposals is None else num_proposals
    num_regions = m.BUA.MAX_BOXES if num_regions is None else num_regions
    num_regions = min(num_regions, num_proposals)
    layers = []
    h, w = resized_size(*image_hw, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)

    # Stem: 7 x 7 conv, stride 2, then a 3 x 3 max pool of stride 2 (Caffe's: no padding, ceil).
    h, w = _conv_out(h, 7, 2, 3), _conv_out(w, 7, 2, 3)
    layers.append(Layer("stem", "conv1", 3, r.STEM_OUT_CHANNELS, 7, (h, w)))
    caffe = m.BUA.CAFFE_MAXPOOL
    pad = 0 if caffe else 1
    h, w = _conv_out(h, 3, 2, pad, ceil_mode=caffe), _conv_out(w, 3, 2, pad, ceil_mode=caffe)

    # Trunk: res2 .. the last output stage (res4 for C4).
    stages = ["res2", "res3", "res4", "res5"]
    last = max(stages.index(f) for f in r.OUT_FEATURES)
    in_c, out_c, bottleneck_c = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.NUM_GROUPS * r.WIDTH_PER_GROUP
    for i, stage in enumerate(stages[:last + 1]):
        stride = 1 if i == 0 or (stage == "res5" and r.RES5_DILATION == 2) else 2
        dilation = r.RES5_DILATION if stage == "res5" else 1
        h, w = _bottleneck_stage(layers, stage, (h, w), in_c, bottleneck_c, out_c, _BLOCKS[r.DEPTH][i], stride,
                                 dilation, r.NUM_GROUPS, r.STRIDE_IN_1X1)
        in_c, out_c, bottleneck_c = out_c, out_c * 2, bottleneck_c * 2

    # RPN head on the last trunk feature: 3 x 3 conv(s), then 1 x 1 objectness and box deltas.
    anchors = len(m.ANCHOR_GENERATOR.SIZES[0]) * len(m.ANCHOR_GENERATOR.ASPECT_RATIOS[0])
    c = in_c
    for i, dim in enumerate(m.RPN.CONV_DIMS):
        dim = c if dim == -1 else dim
        layers.append(Layer("rpn", f"conv{i}", c, dim, 3, (h, w)))
        c = dim
    layers.append(Layer("rpn", "objectness_logits", c, anchors, 1, (h, w)))
    layers.append(Layer("rpn", "anchor_deltas", c, anchors * 4, 1, (h, w)))

    # res5 on every RoI's pooled map (stride 1 and dilation with MODEL.BUA.RES5_DILATION > 1).
    p = m.ROI_BOX_HEAD.POOLER_RESOLUTION
    res5_dilation = m.BUA.RES5_DILATION
    _bottleneck_stage(layers, "res5", (p, p), in_c, bottleneck_c, out_c, _BLOCKS[r.DEPTH][3],
                      1 if res5_dilation > 1 else 2, res5_dilation, r.NUM_GROUPS, r.STRIDE_IN_1X1, batch=num_proposals)

    # Predictors on the pooled 2048-d features.
    k = m.ROI_HEADS.NUM_CLASSES
    layers.append(Layer("box_predictor", "cls_score", out_c, k + 1, batch=num_proposals))
    box_out = 4 if m.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG else 4 * k
    layers.append(Layer("box_predictor", "bbox_pred", out_c, box_out, batch=num_proposals))
    if m.BUA.ATTRIBUTE_ON:
        b = m.BUA
        layers.append(Layer("attributes", "fc_attr", out_c + b.ATTRIBUTE_EMBED_DIM, b.ATTRIBUTE_FC_DIM,
                            batch=num_regions))
        layers.append(Layer("attributes", "attr_score", b.ATTRIBUTE_FC_DIM, b.NUM_ATTRIBUTES + 1, batch=num_regions))
    return layers


def stage_totals(layers):
    """OrderedDict stage -> MACs, in the order the stages run."""
    totals = OrderedDict()
    for layer in layers:
        totals[layer.stage] = totals.get(layer.stage, 0) + layer.macs
    return totals


def total_macs(layers):
    return sum(layer.macs for layer in layers)
