"""Helpers for tests and trials with random weights: a tiny detector and sane activations."""
import cv2
import numpy as np
import torch

from detectron2.layers import FrozenBatchNorm2d

# Config overrides that shrink the detector (R50 at 1/8 width, 20 classes, 12 attributes, small
# images, 30 proposals) so that it runs in milliseconds on a CPU.
TINY_OPTS = [
    "MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RPN.CONV_DIMS", "[32]", "MODEL.RPN.PRE_NMS_TOPK_TEST", "300", "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "7", "MODEL.ROI_HEADS.NUM_CLASSES", "20",
    "MODEL.BUA.NUM_ATTRIBUTES", "12", "MODEL.BUA.ATTRIBUTE_EMBED_DIM", "8", "MODEL.BUA.ATTRIBUTE_FC_DIM", "16",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160", "MODEL.DEVICE", "cpu",
]


def noisy_rectangles_image(seed, h, w):
    """An (h, w, 3) uint8 BGR image: 4 coloured rectangles on a noisy background (something for
    the RPN to see); the same seed, the same image."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for _ in range(4):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        color = tuple(int(c) for c in rng.integers(80, 256, 3))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(10, 40)), y + int(rng.integers(10, 40))), color, -1)
    return img


def calibrate_frozen_norms(detector, images, image_format="BGR", seed=0):
    """Give a randomly initialised detector usable activations.

    With random convolutions and identity FrozenBN, activations grow through the ResNet until
    every proposal is the whole image and every class distribution one-hot. This sets every
    FrozenBN's statistics to those of its input on ``images`` (as BatchNorm would in training)
    and re-draws the predictors with small weights, so the outputs vary from RoI to RoI.

    Args:
        detector (RegionDetector): its model is changed in place.
        images (list[np.ndarray]): (H, W, 3) uint8 images.
    """
    model = detector.model
    g = torch.Generator().manual_seed(seed)

    def hook(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)) + 1e-3)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        detector(images, image_format=image_format)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "box_predictor" in name or "rpn_head" in name:
                std = 1.0 if "cls_score.weight" in name else 0.1
                p.copy_(torch.randn(p.shape, generator=g) * std / max(1, p[0].numel()) ** 0.5)
    return detector
