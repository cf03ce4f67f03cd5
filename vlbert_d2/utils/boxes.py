"""Box overlap as the official RefCOCO+ code measures it, and the index of the whole-image RoI."""
import torch

WHOLE_IMAGE = 0  # RoI index of the whole image: RoI 0 of every input, the tag of words naming no object


def inclusive_iou(boxes, others):
    """IoU of (N, 4) and (M, 4) x1 y1 x2 y2 boxes with pixel-inclusive sizes (x2 - x1 + 1), the
    convention of the official VL-BERT RefCOCO+ labels (IoU > 0.5) and accuracy (IoU >= 0.5);
    detectron2's ``pairwise_iou`` uses continuous sizes, which moves borderline cases.

    Returns:
        Tensor (N, M).
    """
    boxes, others = boxes.float(), others.float()
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area_o = (others[:, 2] - others[:, 0] + 1) * (others[:, 3] - others[:, 1] + 1)
    lt = torch.max(boxes[:, None, :2], others[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], others[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, None] + area_o[None, :] - inter)
