"""Pieces every task's dataset mapper shares: image reading with named errors, the resize
(and flip) of an image with its boxes, left/right swapping for flips, and packing text rows."""
import io
import re

import numpy as np
import torch

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..utils.files import ZIP_SEPARATOR, read_bytes

WHOLE_IMAGE = 0  # RoI index of the whole image


def build_resize_flip(cfg, is_train, allow_flip=True):
    """detectron2's shortest-edge resize, plus a random horizontal flip in training when
    ``INPUT.RANDOM_FLIP`` is "horizontal" and the task can swap "left"/"right" in its text."""
    if is_train:
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                     cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    else:
        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    flip = cfg.INPUT.RANDOM_FLIP
    if flip not in ("none", "horizontal"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'none' or 'horizontal' for VL-BERT, got {flip!r}")
    if is_train and allow_flip and flip == "horizontal":
        augs.append(T.RandomFlip(horizontal=True, vertical=False))
    return augs


def read_image(path, image_format, source, field="file_name"):
    """Read an image (a file, or ``archive.zip@/inner/path``); a missing or unreadable file is
    reported with the record and field that named it."""
    try:
        if ZIP_SEPARATOR in path:  # a member of an uncompressed zip archive
            from PIL import Image

            image = Image.open(io.BytesIO(read_bytes(path)))
            image = utils._apply_exif_orientation(image)
            return utils.convert_PIL_to_numpy(image, image_format)
        return utils.read_image(path, format=image_format)
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: field '{field}': image not found: {path}") from None
    except OSError as e:
        raise OSError(f"{source}: field '{field}': cannot read image {path}: {e}") from None


def resize_image_and_boxes(augmentations, image, boxes):
    """Apply the augmentations to an image and its (N, 4) x1 y1 x2 y2 boxes.

    Returns:
        (Tensor (3, H', W') uint8, Tensor (N, 4) float32 clipped to the new image,
         TransformList, bool: whether the image was flipped horizontally)
    """
    aug = T.AugInput(image, boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    transforms = T.AugmentationList(augmentations)(aug)
    h, w = aug.image.shape[:2]
    out = torch.as_tensor(aug.boxes, dtype=torch.float32)
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    flipped = sum(isinstance(t, T.HFlipTransform) for t in transforms) % 2 == 1
    image = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
    return image, out, transforms, flipped


def read_detected_image(d, det, boxes, augmentations, image_format, field):
    """Read the image of a record whose regions come from a detection file, check its size
    against the file's ``image_w``/``image_h``, and resize (flip) it with ``boxes``.

    Args:
        d (dict): the record (``file_name``, ``detection_file``, ``source``).
        det (dict): the parsed detection file.
        boxes (array): (N, 4) boxes in pixels of the original image.
        field (str): the record field that names the image, for error messages.

    Returns:
        (Tensor image, Tensor (N, 4) boxes, bool flipped)
    """
    image = read_image(d["file_name"], image_format, d["source"], field=field)
    h, w = image.shape[:2]
    if (det["image_w"], det["image_h"]) != (w, h):
        raise ValueError(f"{d['detection_file']}: fields 'image_w'/'image_h' say "
                         f"{det['image_w']}x{det['image_h']} but {d['file_name']} is {w}x{h}")
    image, boxes, _, flipped = resize_image_and_boxes(augmentations, image, boxes)
    return image, boxes, flipped


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text):
    """"left" <-> "right" (whole words), as a horizontal flip requires of the text."""
    def swap(m):
        word = m.group(1)
        new = "right" if word.lower() == "left" else "left"
        return new.capitalize() if word[0].isupper() else new
    return _LEFT_RIGHT.sub(swap, text)


def pack_rows(rows):
    """(input_ids, token_type_ids, tags) rows -> dict of (K, L) LongTensors padded with 0:
    input_ids, token_type_ids, text_mask, text_tags."""
    length = max(len(r[0]) for r in rows)
    out = {k: torch.zeros((len(rows), length), dtype=torch.long)
           for k in ("input_ids", "token_type_ids", "text_mask", "text_tags")}
    for i, (ids, types, tags) in enumerate(rows):
        n = len(ids)
        out["input_ids"][i, :n] = torch.tensor(ids)
        out["token_type_ids"][i, :n] = torch.tensor(types)
        out["text_mask"][i, :n] = 1
        out["text_tags"][i, :n] = torch.tensor(tags)
    return out
