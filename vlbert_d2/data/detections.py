"""Per-image detection files in the bottom-up-attention JSON format.

The Visual Genome Faster R-CNN of Anderson et al. (bottom-up attention) and the official VL-BERT
preparation store one JSON file per image::

    {"image_id": 42, "image_w": 640, "image_h": 480, "num_boxes": 36,
     "boxes": base64(float32 N x 4, x1 y1 x2 y2 in pixels),
     "features": base64(float32 N x D)        # optional (D = 2048 for the R101 detector)
     "classes": base64(float32 N x C),        # optional: class distribution (C = 1601 with
                                              # background for Visual Genome)
     "attributes": base64(float32 N x A)}     # optional: attribute distribution ("no
                                              # attribute" last; A = 401 for Visual Genome)

VQA v2 reads the boxes (and, in precomputed-feature mode, the features); pre-training reads the
class distributions as the targets of masked RoI classification (and, with
``MODEL.VLBERT.PRETRAIN.NUM_REGION_ATTRIBUTES``, the attribute distributions).
"""
import base64
import json
import math
import os

import numpy as np

from ..utils.files import atomic_write, read_json_any

_ARRAYS = ("boxes", "features", "classes", "attributes")
# Image sides and box counts above this are corrupt values: float32 (the box tensors) holds
# integers exactly only up to 2**24, and no real image or detection comes near it.
_MAX_INT = 2 ** 24


class DetectionFormatError(ValueError):
    """A detection file that does not follow the format; the message names file and field."""


def _encode(array):
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.float32).tobytes()).decode("ascii")


def encode_detection(image_id, image_w, image_h, boxes, features=None, classes=None, attributes=None):
    """The JSON-serialisable dict of one image's detections (see the module docstring)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    record = {"image_id": image_id, "image_w": int(image_w), "image_h": int(image_h),
              "num_boxes": int(len(boxes)), "boxes": _encode(boxes)}
    for key, value in (("features", features), ("classes", classes), ("attributes", attributes)):
        if value is not None:
            value = np.asarray(value, dtype=np.float32)
            if value.ndim != 2 or len(value) != len(boxes):
                raise ValueError(f"{key} must be (num_boxes={len(boxes)}, D), got {value.shape}")
            record[key] = _encode(value)
    return record


def write_detection(path, record):
    """Write a record atomically (a reader never sees a half-written file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(record, f)


def _decode(record, key, num_boxes, path, width=None):
    try:
        raw = base64.b64decode(record[key], validate=True)
    except (TypeError, ValueError) as e:
        raise DetectionFormatError(f"{path}: field '{key}' is not valid base64 ({e})") from None
    if len(raw) % 4:
        raise DetectionFormatError(f"{path}: field '{key}' holds {len(raw)} bytes, not float32 values")
    values = np.frombuffer(raw, dtype=np.float32)
    if num_boxes == 0 or len(values) % num_boxes or (width is not None and len(values) != num_boxes * width):
        expected = f"{num_boxes} x {width}" if width is not None else f"a multiple of {num_boxes}"
        raise DetectionFormatError(f"{path}: field '{key}' has {len(values)} float32 values, "
                                   f"expected {expected} (num_boxes = {num_boxes})")
    return values.reshape(num_boxes, -1).copy()


def parse_detection(record, path="<detection>"):
    """Validate and decode a detection record.

    Returns:
        dict with ``image_id``, ``image_w``, ``image_h``, ``boxes`` (N, 4) float32 and, when
        present, ``features`` (N, D), ``classes`` (N, C) and ``attributes`` (N, A).
    """
    if not isinstance(record, dict):
        raise DetectionFormatError(f"{path}: expected a JSON object, got {type(record).__name__}")
    for key in ("image_w", "image_h", "num_boxes", "boxes"):
        if key not in record:
            raise DetectionFormatError(f"{path}: missing field '{key}'")
    for key in ("image_w", "image_h", "num_boxes"):
        value = record[key]
        # isfinite first: JSON gives 1e999 as inf and NaN as nan, whose int() raises a bare
        # OverflowError / ValueError.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value != int(value) or not 0 <= value <= _MAX_INT:
            raise DetectionFormatError(f"{path}: field '{key}' must be a non-negative integer "
                                       f"(at most {_MAX_INT}), got {value!r}")
    for key in ("image_w", "image_h"):
        if record[key] <= 0:
            raise DetectionFormatError(f"{path}: field '{key}' must be positive, got {record[key]!r}")
    n = int(record["num_boxes"])
    if n == 0:
        raise DetectionFormatError(f"{path}: field 'num_boxes' is 0: an image needs at least one box")
    w, h = int(record["image_w"]), int(record["image_h"])
    out = {"image_id": record.get("image_id"), "image_w": w, "image_h": h,
           "boxes": _decode(record, "boxes", n, path, width=4)}
    for key in ("features", "classes", "attributes"):
        if record.get(key) is not None:
            out[key] = _decode(record, key, n, path)
    if record.get("image_box_feature") is not None:  # the whole image's feature, when stored
        out["image_box_feature"] = _decode(record, "image_box_feature", 1, path)
    b = out["boxes"]
    bad = ~np.isfinite(b).all(1) | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DetectionFormatError(f"{path}: field 'boxes': box {i} {b[i].tolist()} is not "
                                   "x1 <= x2, y1 <= y2 (finite)")
    # NaN features gave garbage predictions with rc 0, NaN class distributions NaN soft targets:
    # both are refused here, naming the first bad box.
    for key in ("features", "classes", "attributes", "image_box_feature"):
        if key in out:
            _check_finite(out[key], key, path)
    for key in ("classes", "attributes"):
        if key in out and (out[key] < 0).any():
            i = int(np.flatnonzero((out[key] < 0).any(1))[0])
            what = "class" if key == "classes" else "attribute"
            raise DetectionFormatError(f"{path}: field '{key}': box {i} has a negative {what} probability "
                                       f"({float(out[key][i].min())}); a {what} distribution is non-negative")
    return out


def _check_finite(values, key, path):
    bad = ~np.isfinite(values).all(1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DetectionFormatError(f"{path}: field '{key}': row {i} has non-finite values (NaN or "
                                   f"infinity; {int(bad.sum())} of {len(values)} rows)")


def read_detection(path):
    """Read and validate one detection file (see :func:`parse_detection`); ``path`` may name a
    member of an uncompressed zip archive (``archive.zip@/inner/path.json``)."""
    record = read_json_any(path, DetectionFormatError, "detection file", bad="not valid JSON")
    return parse_detection(record, path)
