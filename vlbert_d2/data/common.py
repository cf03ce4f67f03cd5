"""Pieces every task's dataset mapper shares: image reading with named errors, the resize
(and flip) of an image with its boxes, left/right swapping for flips, and packing text rows."""
import io
import logging
import re

import numpy as np
import torch

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.logger import log_first_n

from ..utils.boxes import WHOLE_IMAGE  # noqa: F401  (the mappers import it from here)
from ..utils.files import read_bytes



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
    """Read an image (a file, or ``archive.zip@/inner/path``) as detectron2's
    ``utils.read_image`` does (EXIF orientation applied, uint8 in ``image_format``), except
    that 16-bit images are rescaled to 8 bits instead of clipped (see :func:`_to_8_bits`).

    Args:
        path (str): the image.
        image_format (str): "BGR", "RGB", ... (``INPUT.FORMAT``).
        source (str): the record that names the image ("file:line"), for messages.
        field (str): the record's field that names the image, for messages.

    Raises:
        FileNotFoundError, OSError: naming the record, the field and the path (a missing
        file, a file that is not an image, a truncated one, samples of more than 16 bits).
    """
    from PIL import Image

    try:
        data = read_bytes(path)
        image = Image.open(io.BytesIO(data))
        if _is_16_bit(image):
            image = _to_8_bits(image, data, path)
        elif image.mode in ("I", "F"):
            # 32-bit integer or float samples have no defined white level; detectron2 would clip.
            raise OSError(f"{image.mode} images (32-bit integer or float samples) are not supported")
        image = utils._apply_exif_orientation(image)
        return utils.convert_PIL_to_numpy(image, image_format)
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: field '{field}': image not found: {path}") from None
    except (OSError, ValueError) as e:  # Pillow raises ValueError too on some corrupt files
        raise OSError(f"{source}: field '{field}': cannot read image {path}: {e}") from None


def _is_16_bit(image):
    """Whether an opened (not yet decoded) PIL image has 16-bit samples.

    Pillow (< 10) opens a 16-bit grayscale file as mode "I" or "I;16*", and a 16-bit colour
    one as "RGB"/"RGBA"/"LA" keeping the high byte of each sample: only the decoder's raw
    mode ("I;16B", "RGB;16B", "RGBA;16N", ...), known until the pixels are loaded, tells.
    """
    if image.mode.startswith("I;16"):
        return True
    args = image.tile[0][3] if image.tile else None
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return isinstance(rawmode, str) and rawmode.startswith(image.mode + ";16")


def _to_8_bits(image, data, path):
    """A 16-bit image (see :func:`_is_16_bit`) as an 8-bit PIL image ("L", "RGB" or "RGBA"):
    each sample ``v`` becomes ``round(v * 255 / 65535)``, with a warning (once per process)
    naming the first such file.

    detectron2 converts with ``Image.convert``, which clips 16-bit gray values to 255 (a
    16-bit photo reads almost all white), and Pillow keeps only the high byte of 16-bit colour
    (``v // 256``); rescaling reads both like their 8-bit export. Colour samples come from
    OpenCV, which decodes all 16 bits. The EXIF orientation is carried over.
    """
    import cv2
    from PIL import Image

    if image.mode.startswith("I"):  # grayscale: Pillow decodes the 16 bits exactly
        samples = np.asarray(image)
    else:
        samples = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if samples is None or samples.dtype != np.uint16 or samples.ndim != 3:
            raise OSError(f"a 16-bit {image.mode} image that OpenCV cannot decode as such")
        # OpenCV's channels are BGR(A) (16-bit gray with alpha comes as BGRA too): to RGB(A).
        samples = samples[..., [2, 1, 0, 3][:samples.shape[2]]]
    if samples.min() < 0 or samples.max() > 65535:  # "I;16S": signed samples
        raise OSError(f"16-bit samples outside 0..65535 ({samples.min()}..{samples.max()})")
    # round(v * 255 / 65535) in integers (65535 = 255 * 257, so never a tie).
    eight = Image.fromarray(((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    log_first_n(logging.WARNING, f"{path} is a 16-bit image: rescaled to 8 bits (round(v * 255 / 65535)); "
                "further 16-bit images are rescaled without a warning", n=1, key="caller")
    try:
        orientation = image.getexif().get(utils._EXIF_ORIENT)
    except Exception:  # noqa: BLE001  (as detectron2: a broken EXIF block is ignored)
        orientation = None
    if orientation:
        exif = Image.Exif()
        exif[utils._EXIF_ORIENT] = orientation
        eight.info["exif"] = exif.tobytes()
    return eight


def whole_image_box(width, height):
    """The whole image as a RoI, ``[0, 0, width - 1, height - 1]``: the official loaders of all
    four tasks treat box coordinates as pixel indices (the last column is ``width - 1``)."""
    return [0.0, 0.0, float(width) - 1.0, float(height) - 1.0]


def _apply_to_boxes(transforms, boxes):
    """(N, 4) boxes through ``transforms`` in the official pixel-index convention: a horizontal
    flip maps x to ``W - 1 - x`` (detectron2's maps the continuous coordinate x to ``W - x``);
    resizes scale by the size ratio, as both do."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    for t in transforms:
        if isinstance(t, T.HFlipTransform):
            out[:, [0, 2]] = (t.width - 1) - out[:, [2, 0]]
        elif isinstance(t, T.VFlipTransform):
            out[:, [1, 3]] = (t.height - 1) - out[:, [3, 1]]
        else:
            out = t.apply_box(out).astype(np.float32)
    return out


def _clamp_pixel_boxes(boxes, height, width):
    """Clamp (N, 4) boxes to the pixel indices of a ``height`` x ``width`` image (official:
    ``[0, width - 1]`` and ``[0, height - 1]``)."""
    out = torch.as_tensor(boxes, dtype=torch.float32)
    out[:, 0::2] = out[:, 0::2].clamp(0, width - 1)
    out[:, 1::2] = out[:, 1::2].clamp(0, height - 1)
    return out


def _flatten(transforms):
    return list(transforms.transforms) if isinstance(transforms, T.TransformList) else [transforms]


def resize_image_and_boxes(augmentations, image, boxes):
    """Apply the augmentations to an image and its (N, 4) x1 y1 x2 y2 boxes.

    Boxes follow the official convention (all four tasks): coordinates are pixel indices, a
    horizontal flip maps x to ``W - 1 - x``, and after the transforms every box is clamped to
    ``[0, W - 1] x [0, H - 1]`` of the new image (see :func:`whole_image_box`).

    Returns:
        (Tensor (3, H', W') uint8, Tensor (N, 4) float32 clamped to the new image,
         TransformList, bool: whether the image was flipped horizontally)
    """
    aug = T.AugInput(image)
    transforms = T.AugmentationList(augmentations)(aug)
    h, w = aug.image.shape[:2]
    out = _clamp_pixel_boxes(_apply_to_boxes(_flatten(transforms), boxes), h, w)
    flipped = sum(isinstance(t, T.HFlipTransform) for t in _flatten(transforms)) % 2 == 1
    image = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
    return image, out, transforms, flipped


def resize_boxes_only(augmentations, height, width, boxes):
    """What :func:`resize_image_and_boxes` does to the boxes of a ``height`` x ``width`` image,
    without any pixels (precomputed-feature mode: the official loaders resize, flip and clamp the
    boxes there too, and the geometry embedding divides by the resized image's size).

    Returns:
        (Tensor (N, 4) float32, (H', W'), bool flipped)
    """
    shape = (int(height), int(width))
    transforms = []
    for augmentation in augmentations:
        # The augmentations read only the image's shape: a zero-stride view costs no memory.
        t = augmentation.get_transform(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (*shape, 3)))
        for step in _flatten(t):
            if isinstance(step, T.ResizeTransform):
                shape = (step.new_h, step.new_w)
            elif not isinstance(step, (T.HFlipTransform, T.VFlipTransform, T.NoOpTransform)):
                raise ValueError(f"precomputed-feature mode cannot apply {type(step).__name__} to boxes alone")
            transforms.append(step)
    out = _clamp_pixel_boxes(_apply_to_boxes(transforms, boxes), *shape)
    flipped = sum(isinstance(t, T.HFlipTransform) for t in transforms) % 2 == 1
    return out, shape, flipped


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
