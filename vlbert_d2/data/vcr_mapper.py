"""Turns a VCR dataset dict into the VLBERT model's input (paper Figure 2 (a)).

Q->A: ``[CLS] question [SEP] answer_k [SEP]`` for the 4 answers; QA->R: ``[CLS] question
answer [SEP] rationale_k [SEP]`` for the 4 rationales, with the correct answer (or, on the test
set where it is unknown, each of the 4 answers in turn: 16 sequences). Object references become
the class name (persons get R2C's gender-neutral names) and each of
their word pieces carries the visual feature of that RoI; other tokens carry the whole image's.
"""
import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.structures import PolygonMasks

from ..text.tokenizer import build_tokenizer
from .common import WHOLE_IMAGE, build_resize_flip, pack_rows, read_image, resize_image_and_boxes, whole_image_box
from .datasets.vcr import load_vcr_metadata
from .feature_cache import FeatureCache

logger = logging.getLogger(__name__)

# R2C's gender-neutral names for "person" objects, chosen by object index. (The official
# VL-BERT uses its own, shorter list with a running count of the persons of a record.)
GENDER_NEUTRAL_NAMES = ["Casey", "Riley", "Jessie", "Jackie", "Avery", "Jaime", "Peyton", "Kerry",
                        "Jody", "Kendall", "Peyton", "Skyler", "Frankie", "Pat", "Quinn"]
# Object i of a record is RoI i + 1 (RoI 0, WHOLE_IMAGE, is the whole image).


def object_name(objects, index):
    if objects[index] == "person":
        return GENDER_NEUTRAL_NAMES[index % len(GENDER_NEUTRAL_NAMES)]
    return objects[index]


def tokenize_vcr(tokens, objects, tokenize):
    """Word pieces of a VCR token list and the RoI each piece is grounded to.

    Args:
        tokens (list): words, or lists of object indices (``[1, 3]`` -> "name1 and name3";
            three or more: "a and b and c", as the official loader; each "and" carries the
            whole image).
        objects (list[str]): class names of the objects.
        tokenize (callable): word -> list of word pieces.

    Returns:
        (list[str], list[int]): the pieces and their RoI indices (0 = whole image).
    """
    pieces, tags = [], []
    for token in tokens:
        if isinstance(token, str):
            words = [(token, WHOLE_IMAGE)]
        else:
            words = []
            for j, index in enumerate(token):
                if j > 0:
                    words.append(("and", WHOLE_IMAGE))
                words.append((object_name(objects, index), index + 1))
        for word, tag in words:
            p = tokenize(word)
            pieces.extend(p)
            tags.extend([tag] * len(p))
    return pieces, tags


def _pop(seq):
    seq[0].pop()
    seq[1].pop()


def _copy(seq):
    return list(seq[0]), list(seq[1])


def truncate_q2a(question, answers, max_len):
    """The official VCR loader's Q->A truncation (``max_len``: its ``seq_len``, 64).

    The answers are visited in order; while the question and the answer are longer than
    ``max_len`` together, the answer loses its last piece if it is longer than the question, else
    the question does (so on equal lengths the question). The question is one list in the
    official code: what one answer cuts from it stays cut, and every sequence, the earlier
    answers' included, uses the question as the last answer left it.

    Args:
        question ((pieces, tags)): sentence A.
        answers (list of (pieces, tags)): the candidates.

    Returns:
        ((pieces, tags), list of (pieces, tags)): new lists; the inputs are not modified.
    """
    q, out = _copy(question), [_copy(a) for a in answers]
    for a in out:
        while len(q[0]) + len(a[0]) > max_len:
            _pop(a if len(a[0]) > len(q[0]) else q)
    return q, out


def truncate_qa2r(question, answer, rationales, max_len):
    """The official VCR loader's QA->R truncation (``max_len``: its ``seq_len``, 64).

    The rationales are visited in order; while question + answer + rationale exceed
    ``max_len``, the rationale loses its last piece if it is longer than question and answer
    together, else the question does while it has more than one piece, else the answer. Question
    and answer are shared by the rationales, as in :func:`truncate_q2a`.

    Returns:
        ((pieces, tags), (pieces, tags), list of (pieces, tags)): new lists.
    """
    q, a, out = _copy(question), _copy(answer), [_copy(r) for r in rationales]
    for r in out:
        while len(q[0]) + len(a[0]) + len(r[0]) > max_len:
            if len(r[0]) > len(q[0]) + len(a[0]):
                _pop(r)
            elif len(q[0]) > 1:
                _pop(q)
            else:
                _pop(a)
    return q, a, out


class VCRDatasetMapper:
    """Callable: VCR dataset dict -> model input dict (see :class:`VLBERT`)."""

    @configurable
    def __init__(self, is_train, *, tokenizer, augmentations, image_format, task, max_text_len,
                 mask_size=14, use_masks=True, feature_cache=None):
        """
        Args:
            is_train (bool): training (the label is required) or inference.
            tokenizer: a BERT WordPiece tokenizer.
            augmentations (list[Augmentation]): applied to the image, boxes and polygons.
            image_format (str): e.g. "BGR".
            task (str): "Q2A" or "QA2R".
            max_text_len (int): maximum number of word pieces of the two sentences ([CLS] and
                [SEP]s not counted).
            mask_size (int): side of the instance masks (the RoIAlign resolution).
            use_masks (bool): produce instance masks from the polygons.
            feature_cache (FeatureCache or None): precomputed-feature mode: RoI features, boxes
                and image size come from this cache instead of the image.
        """
        if max_text_len < 2:
            raise ValueError(f"INPUT.MAX_TEXT_LEN must be at least 2 (one piece per sentence), got {max_text_len}")
        if task not in ("Q2A", "QA2R"):
            raise ValueError(f"VCR task must be 'Q2A' or 'QA2R', got {task!r}")
        self.is_train = is_train
        self.tokenizer = tokenizer
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.task = task
        self.max_text_len = max_text_len
        self.mask_size = mask_size
        self.use_masks = use_masks
        self.feature_cache = feature_cache
        self._piece_cache = {}

    @classmethod
    def from_config(cls, cfg, is_train=True):
        return {
            "is_train": is_train,
            "tokenizer": build_tokenizer(cfg),
            # No random flip here. The official VCR fine-tuning does flip (TRAIN.FLIP_PROB 0.5:
            # the image, the boxes and the masks, not the text, so "left"/"right" in a question
            # or answer may then be wrong); this project does not (README).
            "augmentations": build_resize_flip(cfg, is_train, allow_flip=False),
            "image_format": cfg.INPUT.FORMAT,
            "task": cfg.MODEL.VLBERT.VCR.TASK,
            "max_text_len": cfg.INPUT.MAX_TEXT_LEN,
            "mask_size": cfg.MODEL.VLBERT.POOLER_RESOLUTION,
            "use_masks": cfg.MODEL.VLBERT.USE_INSTANCE_MASKS,
            "feature_cache": FeatureCache(cfg.MODEL.VLBERT.FEATURE_CACHE) if cfg.MODEL.VLBERT.FEATURE_CACHE else None,
        }

    def _tokenize(self, word):
        pieces = self._piece_cache.get(word)
        if pieces is None:
            pieces = self.tokenizer.tokenize(word)
            if len(self._piece_cache) < 100_000:
                self._piece_cache[word] = pieces
        return pieces

    def _contexts_and_choices(self, d):
        """The sentence-A token lists (one per conditioning), the candidate lists, the label."""
        if self.task == "Q2A":
            return [d["question"]], d["answer_choices"], d["answer_label"]
        answers = ([d["answer_label"]] if d["answer_label"] is not None
                   else range(len(d["answer_choices"])))
        contexts = [(d["question"], d["answer_choices"][a]) for a in answers]
        return contexts, d["rationale_choices"], d["rationale_label"]

    def encode_text(self, objects, contexts, choices, truncate=True):
        """Token ids, segments, mask and RoI tags of every (context, choice) sequence.

        Truncated to ``max_text_len`` word pieces as the official loader does
        (:func:`truncate_q2a`, :func:`truncate_qa2r`).

        Args:
            objects (list[str]): the record's object class names.
            contexts (list): VCR token lists of sentence A, or (question, answer) pairs of them
                (QA->R: sentence A is the question followed by the answer).
            choices (list[list]): VCR token lists of sentence B.
            truncate (bool): False: keep every piece (the official loader does not truncate
                QA->R on the test split, where the answer is unknown).

        Returns:
            dict of (K, L) LongTensors: input_ids, token_type_ids, text_mask, text_tags.
        """
        tok = self.tokenizer
        rows = []
        for context in contexts:
            b = [tokenize_vcr(choice, objects, self._tokenize) for choice in choices]
            if isinstance(context, tuple):  # QA->R
                q, ans = (tokenize_vcr(c, objects, self._tokenize) for c in context)
                if truncate:
                    q, ans, b = truncate_qa2r(q, ans, b, self.max_text_len)
                a = (q[0] + ans[0], q[1] + ans[1])
            else:
                a = tokenize_vcr(context, objects, self._tokenize)
                if truncate:
                    a, b = truncate_q2a(a, b, self.max_text_len)
            for b_ in b:
                pieces = [tok.cls_token] + a[0] + [tok.sep_token] + b_[0] + [tok.sep_token]
                tags = [WHOLE_IMAGE] + a[1] + [WHOLE_IMAGE] + b_[1] + [WHOLE_IMAGE]
                types = [0] * (len(a[0]) + 2) + [1] * (len(b_[0]) + 1)
                rows.append((tok.convert_tokens_to_ids(pieces), types, tags))
        return pack_rows(rows)

    def __call__(self, dataset_dict):
        d = copy.copy(dataset_dict)
        contexts, choices, label = self._contexts_and_choices(d)
        if self.is_train and label is None:
            raise ValueError(f"{d['source']}: training needs the label of task {self.task}")
        out = self.precomputed_inputs(d) if self.feature_cache is not None else self.image_inputs(d)
        out.update({
            "object_classes": torch.tensor([-1] + list(d["object_classes"]), dtype=torch.long),
            "label": -1 if label is None else label,
            "annot_id": d["annot_id"],
        })
        # Official: QA->R with an unknown answer (test split) is not truncated.
        truncate = not (self.task == "QA2R" and d["answer_label"] is None)
        out.update(self.encode_text(d["objects"], contexts, choices, truncate=truncate))
        return out

    def precomputed_inputs(self, d):
        """Features, boxes and image size of the record's image from the feature cache."""
        features, boxes, (h, w) = self.feature_cache.get(d["img_fn"])
        if len(boxes) != len(d["objects"]) + 1:
            raise ValueError(f"{d['source']}: the feature cache {self.feature_cache.directory} has "
                             f"{len(boxes)} RoIs for '{d['img_fn']}', the record {len(d['objects'])} "
                             "objects + the whole image")
        return {"features": features, "boxes": boxes, "image_size": (h, w), "height": h, "width": w}

    def image_inputs(self, d):
        """The resized image, its RoIs (whole image first) and their instance masks."""
        meta = load_vcr_metadata(d["metadata_file"], len(d["objects"]), d["source"])
        image = read_image(d["file_name"], self.image_format, d["source"], field="img_fn")
        if image.shape[:2] != (meta["height"], meta["width"]):
            raise ValueError(f"{d['file_name']}: image is {image.shape[1]}x{image.shape[0]} but its "
                             f"metadata {d['metadata_file']} says {meta['width']}x{meta['height']}")
        h, w = image.shape[:2]
        # The whole image as the official loader adds it: [0, 0, w - 1, h - 1].
        boxes = np.array([whole_image_box(w, h)] + meta["boxes"], dtype=np.float32).reshape(-1, 4)
        image, boxes, transforms, _ = resize_image_and_boxes(self.augmentations, image, boxes)
        out = {
            "image": image,
            "height": h, "width": w,
            "boxes": boxes,
        }
        if self.use_masks:
            out["masks"] = self._masks(meta["segms"], boxes, transforms)
        return out

    def _masks(self, segms, boxes, transforms):
        """(N, M, M) float masks in box coordinates; ones for the whole image and for objects
        without polygons."""
        polygons = []
        for i, polys in enumerate(segms, start=1):
            if polys:
                points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polys]
                polygons.append([p.reshape(-1) for p in transforms.apply_polygons(points)])
            else:
                x1, y1, x2, y2 = boxes[i].tolist()
                polygons.append([np.array([x1, y1, x2, y1, x2, y2, x1, y2], dtype=np.float64)])
        masks = torch.ones((len(boxes), self.mask_size, self.mask_size))
        if polygons:
            masks[1:] = PolygonMasks(polygons).crop_and_resize(boxes[1:], self.mask_size).float()
        return masks
