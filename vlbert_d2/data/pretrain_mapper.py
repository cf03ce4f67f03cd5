"""Turns pre-training records into the VLBERT model's inputs (paper section 3.3, Figure 1).

Caption records (Conceptual Captions): ``[CLS] caption [SEP]`` with whole-word masking for
masked language modelling with visual clues; RoIs: the whole image, then the detection file's
boxes (10 to 100 with score >= 0.5), 15% of which are chosen for masked RoI classification with
linguistic clues: 90% of the chosen RoIs are masked (their pixels become the pixel mean, i.e.
zero in the normalised image the CNN sees; the model replaces their [IMG] token with a learned
[MASK] token), 10% are kept; each chosen RoI is predicted as the detector's class distribution.

Text records (the text corpus): the word pieces alone, without [CLS] or [SEP] (at most
``TEXT_MAX_LEN``), with whole-word masking and no image, as the official multi-task pre-training
feeds them; the model gives every word one learned visual feature and closes the sequence with
the [END] element, as for captions. The records either hold their ``text`` or point into a
corpus file (``text_file``, ``text_offset``, ``text_bytes``: see
:func:`~.datasets.pretrain.read_corpus_sample`), so that the corpus stays on disk.

Masking is random in training (numpy's global generator, which detectron2 seeds per worker from
``SEED``) and a fixed function of the record in evaluation (its file's name and line, not the
folder it is in), so evaluations are repeatable, wherever the dataset lives.
"""
import copy
import logging
import os
import zlib

import numpy as np
import torch

from detectron2.config import configurable

from ..text.tokenizer import build_tokenizer
from .common import (WHOLE_IMAGE, build_resize_flip, pack_rows, read_detected_image, resize_boxes_only,
                     swap_left_right, whole_image_box)
from .datasets.pretrain import read_corpus_sample
from .detections import DetectionFormatError, read_detection

logger = logging.getLogger(__name__)

IGNORE = -1  # label of a token / RoI that is not predicted


def mask_whole_words(piece_ids, word_ids, rng, prob, vocab_size, mask_id):
    """BERT's masking at the level of whole words.

    Each word is chosen with probability ``prob``; all word pieces of a chosen word are then
    replaced by [MASK] (80%), by random tokens (10%) or kept (10%), and become targets.

    Args:
        piece_ids (list[int]): word-piece ids.
        word_ids (list[int]): the word each piece belongs to (same length).
        rng (np.random.Generator)
        prob (float): probability of choosing a word.
        vocab_size (int): random replacements are drawn from [0, vocab_size).
        mask_id (int): id of [MASK].

    Returns:
        (list[int], list[int]): the input ids and the labels (the original id of every piece of
        a chosen word, ``IGNORE`` elsewhere).
    """
    ids, labels = list(piece_ids), [IGNORE] * len(piece_ids)
    pieces_of = {}
    for i, w in enumerate(word_ids):
        pieces_of.setdefault(w, []).append(i)
    for w in sorted(pieces_of):
        if rng.random() >= prob:
            continue
        action = rng.random()
        for i in pieces_of[w]:
            labels[i] = piece_ids[i]
            if action < 0.8:
                ids[i] = mask_id
            elif action < 0.9:
                ids[i] = int(rng.integers(vocab_size))
    return ids, labels


def choose_masked_regions(num_regions, rng, prob, keep_fraction=0.1):
    """Masked RoI classification's choice over the RoIs (the whole image, RoI 0, never chosen).

    Returns:
        (np.ndarray bool (N,), np.ndarray bool (N,)): chosen (targets) and masked (chosen and
        hidden: 90% of the chosen ones; the other 10% keep their content).
    """
    chosen = np.zeros(num_regions, dtype=bool)
    masked = np.zeros(num_regions, dtype=bool)
    for k in range(1, num_regions):
        if rng.random() < prob:
            chosen[k] = True
            masked[k] = rng.random() >= keep_fraction
    return chosen, masked


def mask_region_pixels(image, boxes, masked, fill):
    """Paint the pixels of the masked RoIs with ``fill`` (the pixel mean), so that they are zero
    in the normalised image the CNN sees (official: ``image[:, int(y1):int(y2)+1, int(x1):int(x2)+1] = 0``
    after normalisation).

    Args:
        image (Tensor): (3, H, W) image, not normalised.
        boxes (Tensor): (N, 4) RoIs in pixels of ``image``.
        masked (array of bool): (N,) which RoIs to mask.
        fill (sequence of 3 floats): the value per channel (``MODEL.PIXEL_MEAN``).

    Returns:
        Tensor: (3, H, W) float32 copy of the image with the RoIs painted.
    """
    out = image.to(torch.float32).clone()
    fill = torch.as_tensor(fill, dtype=torch.float32).view(-1, 1, 1)
    for box, m in zip(boxes.tolist(), masked):
        if m:
            x1, y1, x2, y2 = (int(v) for v in box)
            out[:, y1:y2 + 1, x1:x2 + 1] = fill
    return out


def select_boxes(classes, min_boxes, max_boxes, score_thresh, path):
    """Indices of the boxes to use, best first: those whose highest class probability is at
    least ``score_thresh``, but at least ``min_boxes`` and at most ``max_boxes`` (official order:
    by that probability, descending)."""
    conf = classes.max(axis=1)
    if len(conf) < min_boxes:
        raise DetectionFormatError(f"{path}: field 'num_boxes': {len(conf)} boxes, fewer than the "
                                   f"minimum MODEL.VLBERT.PRETRAIN.MIN_BOXES={min_boxes}")
    order = np.argsort(-conf, kind="stable")
    keep = int(np.clip((conf >= score_thresh).sum(), min_boxes, max_boxes))
    return order[:keep]


class PretrainDatasetMapper:
    """Callable: a caption or text-corpus record -> model input dict (see :class:`VLBERT`)."""

    @configurable
    def __init__(self, is_train, *, tokenizer, augmentations, image_format, pixel_mean,
                 max_text_len, text_max_len, with_mlm=True, mlm_prob=0.15, with_mvrc=True,
                 mvrc_prob=0.15, num_region_classes=1601, num_region_attributes=0, min_boxes=10, max_boxes=100,
                 score_thresh=0.5, detection_features=False, rel_captions=None):
        """
        Args:
            is_train (bool): random masking (training) or a fixed one per record (evaluation).
            tokenizer: BERT WordPiece tokenizer (fast).
            augmentations (list[Augmentation]): resize (and random flip) of caption images.
            image_format (str): e.g. "BGR".
            pixel_mean (list[float]): ``MODEL.PIXEL_MEAN``: the colour of masked RoIs.
            max_text_len (int): word pieces of a caption kept.
            text_max_len (int): word pieces of a text-corpus sample (no [CLS] or [SEP] is added).
            with_mlm, mlm_prob, with_mvrc, mvrc_prob: the two tasks (``MODEL.VLBERT.PRETRAIN``).
            num_region_classes (int): width of the detection files' ``classes``.
            num_region_attributes (int): width of their ``attributes`` (0: not read).
            min_boxes, max_boxes, score_thresh: box selection (see :func:`select_boxes`).
            detection_features (bool): precomputed-feature mode (the detection files' features).
            rel_captions (list[str] or None): captions to draw mismatched ones from for the
                sentence-image relationship task (None: task off).
        """
        self.is_train = is_train
        self.tokenizer = tokenizer
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.pixel_mean = list(pixel_mean)
        self.max_text_len = max_text_len
        self.text_max_len = text_max_len
        self.with_mlm, self.mlm_prob = with_mlm, mlm_prob
        self.with_mvrc, self.mvrc_prob = with_mvrc, mvrc_prob
        self.num_region_classes = num_region_classes
        self.num_region_attributes = num_region_attributes
        self.min_boxes, self.max_boxes, self.score_thresh = min_boxes, max_boxes, score_thresh
        self.detection_features = detection_features
        self.rel_captions = rel_captions
        self.vocab_size = len(tokenizer)
        if text_max_len < 1:
            raise ValueError(f"MODEL.VLBERT.PRETRAIN.TEXT_MAX_LEN must be >= 1, got {text_max_len}")

    @classmethod
    def from_config(cls, cfg, is_train=True):
        from detectron2.data import DatasetCatalog, MetadataCatalog

        p = cfg.MODEL.VLBERT.PRETRAIN
        rel_captions = None
        if p.WITH_REL:
            names = [n for n in (cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)
                     if MetadataCatalog.get(n).get("pretrain_kind", None) == "caption"]
            rel_captions = [d["caption"] for n in names for d in DatasetCatalog.get(n)]
        return {
            "is_train": is_train,
            "tokenizer": build_tokenizer(cfg),
            "augmentations": build_resize_flip(cfg, is_train, allow_flip=not cfg.MODEL.VLBERT.DETECTION_FEATURES),
            "image_format": cfg.INPUT.FORMAT,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "max_text_len": cfg.INPUT.MAX_TEXT_LEN,
            "text_max_len": p.TEXT_MAX_LEN,
            "with_mlm": p.WITH_MLM, "mlm_prob": p.MLM_PROB,
            "with_mvrc": p.WITH_MVRC, "mvrc_prob": p.MVRC_PROB,
            "num_region_classes": p.NUM_REGION_CLASSES, "num_region_attributes": p.NUM_REGION_ATTRIBUTES,
            "min_boxes": p.MIN_BOXES, "max_boxes": p.MAX_BOXES, "score_thresh": p.SCORE_THRESH,
            "detection_features": cfg.MODEL.VLBERT.DETECTION_FEATURES,
            "rel_captions": rel_captions,
        }

    def _rng(self, d):
        if self.is_train:
            return np.random.default_rng(np.random.randint(2 ** 31 - 1))
        # The record's file name and line ("val_frcnn.json:12"): the same masks in any folder (the
        # absolute path made a fresh clone's evaluation differ from the same model's elsewhere).
        return np.random.default_rng(zlib.crc32(os.path.basename(d["source"]).encode()))

    def encode_text(self, text, max_pieces, rng, special_tokens=True):
        """Whole-word masked word pieces, as ``[CLS] text [SEP]`` (captions) or alone
        (``special_tokens=False``: the text corpus, official); returns the packed row and the
        labels."""
        tok = self.tokenizer
        enc = tok(text, add_special_tokens=False)
        pieces, words = enc["input_ids"][:max_pieces], enc.word_ids()[:max_pieces]
        if self.with_mlm:
            pieces, labels = mask_whole_words(pieces, words, rng, self.mlm_prob, self.vocab_size,
                                              tok.mask_token_id)
        else:
            labels = [IGNORE] * len(pieces)
        if special_tokens:
            pieces = [tok.cls_token_id] + pieces + [tok.sep_token_id]
            labels = [IGNORE] + labels + [IGNORE]
        out = pack_rows([(pieces, [0] * len(pieces), [WHOLE_IMAGE] * len(pieces))])
        out["mlm_labels"] = torch.tensor([labels], dtype=torch.long)
        return out

    def __call__(self, dataset_dict):
        d = copy.copy(dataset_dict)
        rng = self._rng(d)
        if "text" in d or "text_file" in d:
            text = d["text"] if "text" in d else read_corpus_sample(d)
            # Official (GeneralCorpus + the multi-task model): the word pieces without [CLS] and
            # [SEP]; the model appends the [END] element.
            out = self.encode_text(text, self.text_max_len, rng, special_tokens=False)
            out.update(pretrain_kind="text", source=d["source"])
            return out
        return self.caption_input(d, rng)

    def caption_input(self, d, rng):
        det = read_detection(d["detection_file"])
        path = d["detection_file"]
        if "classes" not in det:
            raise DetectionFormatError(f"{path}: missing field 'classes' (the class distributions "
                                       f"that masked RoI classification predicts; for {d['source']})")
        if det["classes"].shape[1] != self.num_region_classes:
            raise DetectionFormatError(
                f"{path}: field 'classes' has {det['classes'].shape[1]} classes per box, expected "
                f"MODEL.VLBERT.PRETRAIN.NUM_REGION_CLASSES={self.num_region_classes}")
        keep = select_boxes(det["classes"], self.min_boxes, self.max_boxes, self.score_thresh, path)
        classes = det["classes"][keep]
        n = len(keep) + 1  # + the whole image
        if self.with_mvrc:
            chosen, masked = choose_masked_regions(n, rng, self.mvrc_prob)
        else:
            chosen = masked = np.zeros(n, dtype=bool)
        targets = torch.zeros((n, self.num_region_classes))
        targets[1:][torch.from_numpy(chosen[1:])] = torch.from_numpy(classes[chosen[1:]])
        attr_targets = None
        if self.num_region_attributes:
            if "attributes" not in det:
                raise DetectionFormatError(
                    f"{path}: missing field 'attributes' (the attribute distributions that "
                    f"MODEL.VLBERT.PRETRAIN.NUM_REGION_ATTRIBUTES={self.num_region_attributes} predicts; "
                    f"for {d['source']}; write them with a detector that has an attribute head: regions "
                    f"extracted before detection files carried attributes need extracting again)")
            if det["attributes"].shape[1] != self.num_region_attributes:
                raise DetectionFormatError(
                    f"{path}: field 'attributes' has {det['attributes'].shape[1]} entries per box, expected "
                    f"MODEL.VLBERT.PRETRAIN.NUM_REGION_ATTRIBUTES={self.num_region_attributes}")
            attr_targets = torch.zeros((n, self.num_region_attributes))
            attr_targets[1:][torch.from_numpy(chosen[1:])] = torch.from_numpy(det["attributes"][keep][chosen[1:]])

        w, h = det["image_w"], det["image_h"]
        # The whole image as the official loader adds it: [0, 0, w - 1, h - 1].
        boxes = np.concatenate([[whole_image_box(w, h)], det["boxes"][keep]]).astype(np.float32)
        flipped = False
        if self.detection_features:
            if "features" not in det:
                raise DetectionFormatError(f"{path}: no field 'features' (needed by "
                                           "MODEL.VLBERT.DETECTION_FEATURES; for " + d["source"] + ")")
            features = torch.from_numpy(det["features"][keep])
            # The whole image's feature: the mean over the boxes that are not masked (official).
            visible = ~torch.from_numpy(masked[1:])
            whole = features[visible].mean(0, keepdim=True) if visible.any() else features.mean(0, keepdim=True)
            # Boxes resized and clamped as the image would be (official), for the geometry.
            boxes_t, size, _ = resize_boxes_only(self.augmentations, h, w, boxes)
            out = {"features": torch.cat([whole, features]), "boxes": boxes_t, "image_size": size}
        else:
            image, boxes_t, flipped = read_detected_image(d, det, boxes, self.augmentations,
                                                          self.image_format, "image")
            if masked.any():
                image = mask_region_pixels(image, boxes_t, masked, self.pixel_mean)
            out = {"image": image, "boxes": boxes_t}
        caption = d["caption"]
        if self.rel_captions is not None:
            matched = rng.random() < 0.5
            if not matched and len(self.rel_captions) > 1:
                other = caption
                while other == caption:
                    other = self.rel_captions[int(rng.integers(len(self.rel_captions)))]
                caption = other
            out["rel_label"] = int(matched or len(self.rel_captions) <= 1)
        if flipped:
            caption = swap_left_right(caption)
        out.update(self.encode_text(caption, self.max_text_len, rng))
        out.update(mvrc_masked=torch.from_numpy(masked), mvrc_targets=targets, height=h, width=w,
                   image_id=d["image_id"], pretrain_kind="caption", source=d["source"])
        if attr_targets is not None:
            out["mvrc_attr_targets"] = attr_targets
        return out
