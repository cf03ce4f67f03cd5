"""Turns a VQA dataset dict into the VLBERT model's input (paper Figure 2 (b)).

Text: ``[CLS] question [SEP] [MASK] [SEP]``, the question in segment A and the answer slot in
segment B; every token carries the whole image's visual feature. RoIs: the whole image
(``[0, 0, w - 1, h - 1]``, official), then the boxes of the image's detection file, all clamped to
the (resized) image's pixels as the official loader does. The answer head reads VL-BERT's output at the [MASK] slot.
"""
import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable

# The answer vocabulary's owner (vocab_for_cfg used to live here, and is still importable here).
from ..tasks import ANSWERS, task_of_head
from ..text.answer_vocab import AnswerVocab, vocab_for_cfg
from ..text.answer_vocab import prepare_answer_vocab as _prepare_answer_vocab
from ..text.tokenizer import build_tokenizer
from ..text.vqa_answers import normalize_answer
from .common import (WHOLE_IMAGE, build_resize_flip, pack_rows, read_detected_image, resize_boxes_only,
                     swap_left_right, whole_image_box)
from .detections import read_detection

logger = logging.getLogger(__name__)


class VQADatasetMapper:
    """Callable: VQA dataset dict -> model input dict (see :class:`VLBERT`)."""

    @configurable
    def __init__(self, is_train, *, tokenizer, augmentations, image_format, max_text_len,
                 answer_vocab, detection_features=False):
        """
        Args:
            is_train (bool): training (a target is required) or inference.
            tokenizer: a BERT WordPiece tokenizer.
            augmentations (list[Augmentation]): resize (and, in training, random flip).
            image_format (str): e.g. "BGR".
            max_text_len (int): word pieces of the question kept.
            answer_vocab (list[str]): the answers the head scores.
            detection_features (bool): precomputed-feature mode: RoI features come from the
                detection files' ``features`` (the whole image's is their mean, as in the
                official code) and the image is not read.
        """
        self.is_train = is_train
        self.tokenizer = tokenizer
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.max_text_len = max_text_len
        self.answer_vocab = list(answer_vocab)
        self.answer_index = AnswerVocab(self.answer_vocab).rows
        self.detection_features = detection_features

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "tokenizer": build_tokenizer(cfg),
            "augmentations": build_resize_flip(cfg, is_train, allow_flip=not cfg.MODEL.VLBERT.DETECTION_FEATURES),
            "image_format": cfg.INPUT.FORMAT,
            "max_text_len": cfg.INPUT.MAX_TEXT_LEN,
            "answer_vocab": vocab_for_cfg(cfg),
            "detection_features": cfg.MODEL.VLBERT.DETECTION_FEATURES,
        }

    def target(self, answer_scores, flipped=False):
        """(A,) soft target over the vocabulary; answers outside it get none."""
        target = torch.zeros(len(self.answer_vocab))
        for answer, score in answer_scores.items():
            if flipped:
                answer = normalize_answer(swap_left_right(answer))
            i = self.answer_index.get(answer)
            if i is not None:
                target[i] = max(float(target[i]), score)
        return target

    def encode_text(self, question):
        tok = self.tokenizer
        pieces = tok.tokenize(question)[: self.max_text_len]
        ids = tok.convert_tokens_to_ids([tok.cls_token] + pieces + [tok.sep_token, tok.mask_token, tok.sep_token])
        types = [0] * (len(pieces) + 2) + [1, 1]
        out = pack_rows([(ids, types, [WHOLE_IMAGE] * len(ids))])
        out["answer_position"] = len(pieces) + 2
        return out

    def __call__(self, dataset_dict):
        d = copy.copy(dataset_dict)
        if self.is_train and "answer_scores" not in d:
            raise ValueError(f"{d['source']}: training needs the question's answers (annotations)")
        det = read_detection(d["detection_file"])
        if self.detection_features:
            out, flipped = self.precomputed_inputs(d, det), False
        else:
            out, flipped = self.image_inputs(d, det)
        question = swap_left_right(d["question"]) if flipped else d["question"]
        out.update(self.encode_text(question))
        out.update(question_id=d["question_id"], image_id=d["image_id"])
        if "answer_scores" in d:
            out["answer_target"] = self.target(d["answer_scores"], flipped)
        return out

    def precomputed_inputs(self, d, det):
        if "features" not in det:
            raise ValueError(f"{d['detection_file']}: no field 'features' (needed by "
                             "MODEL.VLBERT.DETECTION_FEATURES; for the question " + d["source"] + ")")
        w, h = det["image_w"], det["image_h"]
        features = torch.from_numpy(det["features"])
        # The whole image's feature: the file's own when it has one, else the mean (official).
        whole = (torch.from_numpy(det["image_box_feature"]) if "image_box_feature" in det
                 else features.mean(0, keepdim=True))
        if whole.shape[1] != features.shape[1]:
            raise ValueError(f"{d['detection_file']}: field 'image_box_feature' has {whole.shape[1]} "
                             f"values, 'features' {features.shape[1]} per box")
        features = torch.cat([whole, features])
        # As the official loader: the boxes are resized (and clamped) as the image would be, and
        # the geometry embedding divides by the resized size.
        boxes = np.concatenate([[whole_image_box(w, h)], det["boxes"]]).astype(np.float32)
        boxes, size, _ = resize_boxes_only(self.augmentations, h, w, boxes)
        return {"features": features, "boxes": boxes, "image_size": size, "height": h, "width": w}

    def image_inputs(self, d, det):
        w, h = det["image_w"], det["image_h"]
        boxes = np.concatenate([[whole_image_box(w, h)], det["boxes"]])
        image, boxes, flipped = read_detected_image(d, det, boxes, self.augmentations, self.image_format, "image_id")
        return {"image": image, "boxes": boxes, "height": h, "width": w}, flipped


def prepare_answer_vocab(cfg, output_dir=None):
    """The VQA answer vocabulary, built when missing and copied to ``output_dir`` (None when
    the config's task has no answer vocabulary). Kept for older callers: :func:`vlbert_d2.config.finalize_vlbert_config`
    does this and fills the config (``MODEL.VLBERT.VQA.ANSWER_VOCAB`` / ``NUM_ANSWERS``)."""
    task = task_of_head(cfg.MODEL.VLBERT.HEAD)
    if task is None or task.label_space != ANSWERS:
        return None
    return _prepare_answer_vocab(cfg, output_dir)[1]
