"""The synthetic scenes as an object detection dataset with attributes (COCO instances format).

For training the bottom-up-attention detector (projects/BottomUpAttention) in miniature: the
object classes are the 3 shapes and every object has one attribute, its colour (6), as Visual
Genome objects have attributes. Layout under ``root``::

    {train,val}/{image_id:012d}.jpg                   # BGR JPEG, every split in its folder
    annotations/instances_{train,val}.json            # COCO instances, plus attributes

Each instances file is COCO's ``{"images", "annotations", "categories"}`` plus an
``"attributes"`` table ``[{"id": 1, "name": "red"}, ...]`` (ids from 1, as category ids) and,
per annotation, ``"attribute_ids": [id, ...]`` (here always one: the colour). Annotations have
``bbox`` ``[x, y, w, h]`` (continuous coordinates: pixel i spans [i, i + 1)), the shape's
polygon as ``segmentation``, its ``area`` and ``iscrowd`` 0.

Example:
    python -m synthetic_vl --format detection --root datasets/synthetic_detection --seed 0
"""
import json
import os

import numpy as np

from .scenes import PALETTE, SHAPES, polygon, render, sample_scene_with_retries, xyxy
from .writing import (ID_STRIDE, ensure, merge_counts, start_generation, subset_rng, write_bytes,
                      write_jpeg, write_json)

DETECTION_DEFAULT_COUNTS = {"train": 1500, "val": 200}
DETECTION_MARKER = ".synthetic_detection_complete"
# Objects per image, drawn uniformly.
DETECTION_MIN_OBJECTS, DETECTION_MAX_OBJECTS = 1, 5
_DETECTION_ID_BASE = {s: k * ID_STRIDE for k, s in enumerate(DETECTION_DEFAULT_COUNTS)}


def detection_instances_file(split):
    """Path of a split's instances JSON, relative to the dataset root."""
    return os.path.join("annotations", f"instances_{split}.json")


def detection_image_file(split, image_id):
    """Path of an image, relative to the dataset root (the JSON's ``file_name`` is the name in
    the split's folder)."""
    return os.path.join(split, f"{image_id:012d}.jpg")


def detection_categories():
    """COCO ``categories``: the shapes, ids from 1."""
    return [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]


def detection_attributes():
    """The ``attributes`` table: the colours, ids from 1."""
    return [{"id": k + 1, "name": c} for k, c in enumerate(PALETTE)]


def _area(points):
    """Shoelace area of a polygon ``[[x, y], ...]``."""
    x, y = np.asarray(points, np.float64).T
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _generate_detection_split(root, split, count, seed, image_size):
    width, height = image_size
    rng = subset_rng("detection", seed, split)
    colors = list(PALETTE)
    images, annotations = [], []
    for n in range(count):
        image_id = _DETECTION_ID_BASE[split] + n + 1
        num = int(rng.integers(DETECTION_MIN_OBJECTS, DETECTION_MAX_OBJECTS + 1))
        objects = sample_scene_with_retries(rng, num, width, height, False)
        img, _ = render(rng, objects, width, height)
        path = detection_image_file(split, image_id)
        write_jpeg(os.path.join(root, path), img)
        images.append({"id": image_id, "file_name": os.path.basename(path), "width": width,
                       "height": height})
        for k, o in enumerate(objects):
            x1, y1, x2, y2 = xyxy(o)
            # The polygon runs through pixel centres; +0.5 puts it in continuous coordinates.
            poly = [[x + 0.5, y + 0.5] for x, y in polygon(o["name"], o["box"])]
            annotations.append({
                "id": image_id * 10 + k, "image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                "category_id": 1 + SHAPES.index(o["name"]),
                "attribute_ids": [1 + colors.index(o["color"])],
                "area": round(_area(poly), 2), "iscrowd": 0,
                "segmentation": [[float(round(v, 2)) for p in poly for v in p]]})
    return images, annotations


def generate_detection(root, counts=None, seed=0, image_size=(192, 128)):
    """Writes the synthetic detection dataset (see the module docstring).

    Args:
        root: Output folder.
        counts: ``{split: num_images}`` for some of ``train``, ``val``; missing splits get
            ``DETECTION_DEFAULT_COUNTS``. Image ids are ``n + 1`` plus 0 and 100000 for the two
            splits; annotation ids ``image_id * 10 + object index``.
        seed: Same seed gives byte-identical files; each split has its own stream.
        image_size: ``(width, height)`` in pixels.

    Returns:
        ``{split: num_images}``. Each image has 1 to 5 objects (sizes 18 to 50 pixels), each
        with a shape (category) and a colour (attribute).
    """
    counts = merge_counts(counts, DETECTION_DEFAULT_COUNTS)
    image_size = tuple(int(v) for v in image_size)
    marker = start_generation(root, DETECTION_MARKER)
    for split, count in counts.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = _generate_detection_split(root, split, count, seed, image_size)
        write_json(os.path.join(root, detection_instances_file(split)),
                   {"info": {"description": "Synthetic detection dataset with attributes (synthetic_vl)"},
                    "images": images, "annotations": annotations,
                    "categories": detection_categories(), "attributes": detection_attributes()})
    info = {"format": "detection", "seed": seed, "counts": counts, "image_size": list(image_size)}
    write_bytes(marker, json.dumps(info).encode())
    return counts


def is_complete_detection(root):
    """True if ``root`` holds every split's instances file and the finished marker."""
    needed = [detection_instances_file(s) for s in DETECTION_DEFAULT_COUNTS] + [DETECTION_MARKER]
    return all(os.path.isfile(os.path.join(root, f)) for f in needed)


def ensure_synthetic_detection(root, **kwargs):
    """Generates the detection dataset unless a complete one already exists at ``root``
    (``kwargs`` go to :func:`generate_detection`; an existing dataset is not compared with them).

    Returns:
        True if it generated, False if the dataset was already complete.
    """
    return ensure(is_complete_detection, generate_detection, root, kwargs)
