"""Turns a RefCOCO+ dataset dict into the VLBERT model's input (paper Figure 2 (c)).

Text: ``[CLS] expression [SEP]`` (segment A, whole-image visual feature). RoIs: the whole image
(``[0, 0, w - 1, h - 1]``, official), then the candidate regions; as in the official code the
whole image is a candidate too. Each RoI's label is 1 when its IoU with the referred object's box
(pixel-inclusive, official) is above 0.5, computed after the resize, flip and clamp to the
image's pixels, as the official code does.
"""
import copy

import numpy as np
import torch

from detectron2.config import configurable

from ..text.tokenizer import build_tokenizer
from ..utils.boxes import inclusive_iou
from .common import (WHOLE_IMAGE, build_resize_flip, pack_rows, read_image, resize_image_and_boxes,
                     swap_left_right, whole_image_box)

POSITIVE_IOU = 0.5


class RefCOCODatasetMapper:
    """Callable: RefCOCO+ dataset dict -> model input dict (see :class:`VLBERT`)."""

    @configurable
    def __init__(self, is_train, *, tokenizer, augmentations, image_format, max_text_len):
        self.is_train = is_train
        self.tokenizer = tokenizer
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.max_text_len = max_text_len

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {"is_train": is_train, "tokenizer": build_tokenizer(cfg),
                "augmentations": build_resize_flip(cfg, is_train),
                "image_format": cfg.INPUT.FORMAT, "max_text_len": cfg.INPUT.MAX_TEXT_LEN}

    def encode_text(self, sentence):
        tok = self.tokenizer
        pieces = tok.tokenize(sentence)[: self.max_text_len]
        ids = tok.convert_tokens_to_ids([tok.cls_token] + pieces + [tok.sep_token])
        return pack_rows([(ids, [0] * len(ids), [WHOLE_IMAGE] * len(ids))])

    def __call__(self, dataset_dict):
        d = copy.copy(dataset_dict)
        image = read_image(d["file_name"], self.image_format, d["source"], field="image_id")
        h, w = image.shape[:2]
        if (w, h) != (d["width"], d["height"]):
            raise ValueError(f"{d['file_name']}: image is {w}x{h} but the instances file says "
                             f"{d['width']}x{d['height']} ({d['source']})")
        candidates = np.asarray(d["boxes"], dtype=np.float32).reshape(-1, 4)
        original = np.concatenate([[whole_image_box(w, h)], candidates]).astype(np.float32)
        boxes = np.concatenate([original, [d["gt_box"]]]).astype(np.float32)
        image, boxes, _, flipped = resize_image_and_boxes(self.augmentations, image, boxes)
        boxes, gt = boxes[:-1], boxes[-1:]
        # The official prediction is the chosen RoI, clamped in the resized image, divided by the
        # resize ratio: in the original image's pixels, the box clamped to [0, (W' - 1) / ratio].
        new_h, new_w = image.shape[1:]
        limit = np.array([(new_w - 1) * w / new_w, (new_h - 1) * h / new_h] * 2, dtype=np.float32)
        original = np.clip(original, 0, limit)
        labels = (inclusive_iou(boxes, gt)[:, 0] > POSITIVE_IOU).float()
        sentence = swap_left_right(d["sentence"]) if flipped else d["sentence"]
        out = {"image": image, "boxes": boxes, "height": h, "width": w,
               "region_labels": labels,
               # In the original image's pixels, for the evaluation.
               "candidate_boxes": torch.from_numpy(original),
               "gt_box": torch.tensor(d["gt_box"], dtype=torch.float32),
               "ref_id": d["ref_id"], "sent_id": d["sent_id"], "image_id": d["image_id"]}
        out.update(self.encode_text(sentence))
        return out
