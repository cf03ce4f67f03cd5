"""Seeded weights, input image and digests shared by the two sides of the parity check.

``make_golden.py`` imports this module in a process where ``detectron2`` is the public port
(airsplay/py-bottom-up-attention, a detectron2 v0.1 fork); ``tests/fidelity/test_bua_parity.py`` imports it
where ``detectron2`` is this project's v0.6. It therefore needs numpy only.

Every tensor of the port's state dict is drawn from its own ``numpy.random.RandomState`` (whose
stream numpy keeps frozen across versions), seeded from the global seed and the tensor's name, so
the weights are rebuilt bit for bit from the key list, the seed and a few per-layer scalars (the
FrozenBN statistics and three output gains that the golden script measures once on the port and
stores with the golden data; the test never recomputes them, so a difference in the project
cannot be absorbed by re-calibration).
"""
import hashlib
import zlib

import numpy as np

# Reduced sizes, applied identically to the port and to this project. Everything else is the real
# detector: R101 block counts, stem 64, res4 1024 / res5 2048 channels (so the pooled features
# are the real 2048-d), 12 anchors, RoIPool 14 x 14 at 1/16, dilated res5, attribute head
# 2048 + 256 -> 512 -> A + 1 (the port ties 256 / 512 to the feature size).
SIZES = {
    "width_per_group": 8,   # real: 64 (bottlenecks 64/128/256/512 -> 8/16/32/64)
    "rpn_hidden": 64,       # real: 512
    "num_classes": 100,     # real: 1600
    "num_attributes": 40,   # real: 400
    "post_nms_topk": 50,    # real: 300 (the port's demos and this project's config)
    "min_size_test": 192,   # real: 600
    "max_size_test": 320,   # real: 1000
}

PORT_CONFIG = "configs/VG-Detection/faster_rcnn_R_101_C4_attr_caffemaxpool.yaml"
PROJECT_CONFIG = "configs/BUA-R101-C4-VG.yaml"


def port_opts(sizes=SIZES):
    """Overrides of the port's config (its key names), as its demo notebooks set them."""
    s = sizes
    return ["MODEL.RESNETS.WIDTH_PER_GROUP", s["width_per_group"],
            "MODEL.PROPOSAL_GENERATOR.HID_CHANNELS", s["rpn_hidden"],
            "MODEL.ROI_HEADS.NUM_CLASSES", s["num_classes"],
            "MODEL.ROI_BOX_HEAD.NUM_ATTRS", s["num_attributes"],
            "MODEL.RPN.POST_NMS_TOPK_TEST", s["post_nms_topk"],
            "MODEL.RPN.NMS_THRESH", 0.7,
            "INPUT.MIN_SIZE_TEST", s["min_size_test"], "INPUT.MAX_SIZE_TEST", s["max_size_test"],
            "MODEL.DEVICE", "cpu"]


def project_opts(sizes=SIZES):
    """The same overrides for ``projects/BottomUpAttention/configs/BUA-R101-C4-VG.yaml``."""
    s = sizes
    return ["MODEL.RESNETS.WIDTH_PER_GROUP", str(s["width_per_group"]),
            "MODEL.RPN.CONV_DIMS", f"[{s['rpn_hidden']}]",
            "MODEL.ROI_HEADS.NUM_CLASSES", str(s["num_classes"]),
            "MODEL.BUA.NUM_ATTRIBUTES", str(s["num_attributes"]),
            "MODEL.RPN.POST_NMS_TOPK_TEST", str(s["post_nms_topk"]),
            "INPUT.MIN_SIZE_TEST", str(s["min_size_test"]), "INPUT.MAX_SIZE_TEST", str(s["max_size_test"]),
            "MODEL.DEVICE", "cpu"]


# Region selections compared (Anderson et al.'s generate_tsv.py rule; see make_golden.py).
SELECTIONS = {
    "default": {"box_source": "proposals", "nms": 0.3, "thresh": 0.5, "min": 10, "max": 100},
    "fixed36": {"box_source": "proposals", "nms": 0.3, "thresh": 0.2, "min": 36, "max": 36},
    "regressed": {"box_source": "regressed", "nms": 0.3, "thresh": 0.5, "min": 10, "max": 100},
}


def _rng(seed, name):
    return np.random.RandomState((seed * 1000003 + zlib.crc32(name.encode())) % (2 ** 32))


def synthetic_image(seed, height=150, width=200):
    """(H, W, 3) uint8 BGR image: a smooth gradient with a few flat rectangles and noise."""
    rng = _rng(seed, "image")
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([60 + 120 * x / width, 40 + 150 * y / height, 200 - 100 * (x + y) / (width + height)], axis=-1)
    for _ in range(6):
        h, w = rng.randint(20, 70, size=2)
        top, left = rng.randint(0, height - h), rng.randint(0, width - w)
        img[top:top + h, left:left + w] = rng.randint(0, 256, size=3)
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def image_digest(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def projection(seed, name, rows, cols):
    """A fixed random (rows, cols) float64 matrix, for digests of tensors too big to store."""
    return _rng(seed, "projection/" + name).standard_normal((rows, cols)) / np.sqrt(cols)


def is_seeded(name):
    """Whether the rule below draws this tensor (the anchors buffer is computed from the config)."""
    return "anchor_generator" not in name


def norm_module(name):
    """'backbone.res2.0.conv1.norm' for 'backbone.res2.0.conv1.norm.running_var', else None."""
    head, _, leaf = name.rpartition(".")
    return head if head.endswith(".norm") and leaf in ("weight", "bias", "running_mean", "running_var") else None


# Output layers whose weights are scaled by a gain that the golden script measures (so that the
# class distributions are neither uniform nor one-hot, and the boxes move a little): the target
# standard deviation of their outputs on the image.
GAIN_TARGETS = {
    "proposal_generator.rpn_head.objectness_logits": 2.0,
    "proposal_generator.rpn_head.anchor_deltas": 0.2,
    "roi_heads.box_predictor.cls_score": 4.0,
    "roi_heads.box_predictor.bbox_pred": 0.3,
}


def frozen_bn_tensor(name, shape, seed, mean, var):
    """A FrozenBN statistic from its layer's input mean and variance (per-layer scalars).

    running_mean = mean + 0.1 sqrt(var) z, running_var = var u, u in [0.8, 1.25]; weight in
    [0.5, 1.5]; bias ~ N(0, 0.1^2).
    """
    rng = _rng(seed, name)
    leaf = name.rpartition(".")[2]
    if leaf == "weight":
        return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    if leaf == "bias":
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if leaf == "running_mean":
        return (mean + 0.1 * np.sqrt(var) * rng.standard_normal(shape)).astype(np.float32)
    return (var * rng.uniform(0.8, 1.25, size=shape)).astype(np.float32)


def seeded_tensor(name, shape, seed, calibration=None):
    """The tensor ``name`` of the port's state dict.

    Args:
        name (str): its name in the port's layout.
        shape (tuple): its shape.
        seed (int): the global seed.
        calibration (dict or None): ``{"norms": {module: [mean, var]}, "gains": {module: g}}``;
            None draws the uncalibrated tensors (FrozenBN identity, gains 1), which the golden
            script uses to measure them.

    Returns:
        np.ndarray float32.
    """
    calibration = calibration or {"norms": {}, "gains": {}}
    shape = tuple(shape)
    module = norm_module(name)
    if module is not None:
        if module not in calibration["norms"]:
            leaf = name.rpartition(".")[2]
            return np.full(shape, 1.0 if leaf in ("weight", "running_var") else 0.0, np.float32)
        mean, var = calibration["norms"][module]
        return frozen_bn_tensor(name, shape, seed, mean, var)
    rng = _rng(seed, name)
    module, _, leaf = name.rpartition(".")
    gain = calibration["gains"].get(module, 1.0)
    if module.endswith("cls_embedding"):
        return rng.standard_normal(shape).astype(np.float32)
    if leaf == "bias":
        scale = 0.25 * GAIN_TARGETS[module] if module in GAIN_TARGETS else 0.05
        return (scale * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    # He initialisation for the hidden layers (convs, the RPN conv, fc_attr); unit-variance
    # outputs, times the measured gain, for the output layers.
    std = (1.0 if module in GAIN_TARGETS or module.endswith("attr_score") else np.sqrt(2.0)) / np.sqrt(fan_in)
    return (gain * std * rng.standard_normal(shape)).astype(np.float32)


def seeded_state_dict(key_shapes, seed, calibration=None):
    """{name: float32 array} for every seeded name of ``key_shapes`` ({name: shape})."""
    return {k: seeded_tensor(k, s, seed, calibration) for k, s in key_shapes.items() if is_seeded(k)}
