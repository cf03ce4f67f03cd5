"""The synthetic scenes as a RefCOCO+ dataset (referring expressions, REFER layout).

Every expression needs the image: the referred object cannot be predicted from the text alone.
MAttNet-style proposals (every object jittered, plus low-score distractors) stand in for the
detected regions of the ``_det`` splits.

Layout under ``root`` (that of REFER)::

    train2014/COCO_train2014_{image_id:012d}.jpg       # every split's images, as in RefCOCO+
    refcoco+/instances.json                            # COCO format, one annotation per object
    refcoco+/refs(unc).p                               # pickle of plain dicts
    refcoco+/proposal/res101_coco_minus_refer_notime_dets.json

Use one root per format: VQA and RefCOCO+ both write ``train2014/`` images with the same names.

Example:
    python -m synthetic_vl --format refcoco+ --root datasets/synthetic_refcoco \
        --counts train=300 val=50
"""
import json
import os
import pickle

import numpy as np

from .scenes import (MAX_SIZE, MIN_SIZE, SHAPES, biggest, polygon, render,
                     sample_scene_with_retries, xyxy)
from .writing import (ID_STRIDE, check_types, ensure, merge_counts, start_generation, subset_rng,
                      write_bytes, write_jpeg, write_json)

REFCOCO_DEFAULT_COUNTS = {"train": 1500, "val": 200, "testA": 100, "testB": 100}
REFCOCO_EXPRESSION_TYPES = ("biggest", "smallest", "color", "leftmost", "rightmost")
# As VQA_GEOMETRY_TYPES: the tiny RefCOCO+ config's data.
REFCOCO_GEOMETRY_TYPES = ("biggest", "smallest", "leftmost", "rightmost")
REFCOCO_MARKER = ".synthetic_refcoco+_complete"
REFCOCO_IMAGES = "train2014"
REFCOCO_INSTANCES = os.path.join("refcoco+", "instances.json")
REFCOCO_REFS = os.path.join("refcoco+", "refs(unc).p")
REFCOCO_PROPOSALS = os.path.join("refcoco+", "proposal", "res101_coco_minus_refer_notime_dets.json")
_REFCOCO_ID_BASE = {s: k * ID_STRIDE for k, s in enumerate(REFCOCO_DEFAULT_COUNTS)}
# Shapes are never named in "biggest"/"smallest" phrases: "the biggest ball" would refer to a
# ball that need not be the biggest object, so the phrase would be ambiguous.
_PHRASES = {
    "biggest": ("the biggest one", "the largest one", "biggest object"),
    "smallest": ("the smallest one", "the tiniest one", "smallest object"),
    "color": ("the {color} {shape}", "{color} {shape}"),
    # (RefCOCO+ itself forbids location words; the synthetic data uses them for geometry.)
    "leftmost": ("the left-most one", "the one furthest to the left"),
    "rightmost": ("the right-most one", "the one furthest to the right"),
}
# "left-most" must be obvious at a glance: its centre is this many pixels left of the next one.
REFCOCO_MIN_X_GAP = 8
# Worst-case IoU of a box whose every edge moves by up to this fraction of its side is ~0.77.
_JITTER = 0.06
_DISTRACTOR_MAX_IOU = 0.3


def refcoco_image_file(image_id):
    """Path of an image, relative to the dataset root."""
    return os.path.join(REFCOCO_IMAGES, f"COCO_{REFCOCO_IMAGES}_{image_id:012d}.jpg")


def _iou(a, b):
    """IoU of two x1, y1, x2, y2 boxes (continuous coordinates)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _choose_refs(rng, objects, expression_types, num_refs):
    """Up to ``num_refs`` (expression type, object index) pairs on distinct objects.

    Types are tried in a random order (twice over, so a single type can still give two refs).
    Every rule is permutation-equivariant and scenes are exchangeable, so the referred index is
    uniform over the objects.
    """
    combos = [(o["color"], o["name"]) for o in objects]
    unique = [i for i, c in enumerate(combos) if combos.count(c) == 1]
    chosen = []
    order = list(rng.permutation(len(expression_types))) * 2
    for j in order:
        if len(chosen) == num_refs:
            break
        etype = expression_types[j]
        used = [i for _, i in chosen]
        if etype == "biggest":
            target = biggest(objects)
        elif etype == "smallest":
            target = min(range(len(objects)), key=lambda i: objects[i]["size"])
        elif etype in ("leftmost", "rightmost"):
            sign = 1 if etype == "leftmost" else -1
            order_x = sorted(range(len(objects)),
                             key=lambda i: sign * (objects[i]["box"][0] + objects[i]["box"][2]))
            first, second = (objects[i]["box"][0] + objects[i]["box"][2] for i in order_x[:2])
            if abs(first - second) < 2 * REFCOCO_MIN_X_GAP:  # centres (doubled) too close to tell
                continue
            target = order_x[0]
        else:
            free = [i for i in unique if i not in used]
            if not free:
                continue
            target = free[rng.integers(len(free))]
        if target not in used:
            chosen.append((etype, target))
    return chosen


def _sentences(rng, etype, obj, first_sent_id):
    phrases = _PHRASES[etype]
    num = int(rng.integers(1, 3))
    out = []
    for k, j in enumerate(rng.permutation(len(phrases))[:num]):
        sent = phrases[j].format(color=obj["color"], shape=obj["name"])
        # "raw" is what the annotator typed; "sent" its lower-cased, cleaned form.
        raw = sent.capitalize() if rng.random() < 0.5 else sent
        out.append({"tokens": sent.split(), "raw": raw, "sent_id": first_sent_id + k, "sent": sent})
    return out


def _proposals(rng, image_id, objects, width, height):
    """MAttNet-style detections: every object jittered, plus 1-2 low-score distractors."""
    dets = []
    for o in objects:
        x1, y1, x2, y2 = xyxy(o)
        side = x2 - x1
        j = [float(v) * side for v in rng.uniform(-_JITTER, _JITTER, 4)]
        box = [max(x1 + j[0], 0.0), max(y1 + j[1], 0.0),
               min(x2 + j[2], float(width)), min(y2 + j[3], float(height))]
        dets.append((box, float(rng.uniform(0.7, 0.99)), 1 + SHAPES.index(o["name"])))
    truth = [xyxy(o) for o in objects]
    for _ in range(int(rng.integers(1, 3))):
        # Low IoU with every object keeps the object <-> proposal match unambiguous.
        for _ in range(100):
            w, h = (float(v) for v in rng.uniform(MIN_SIZE / 2, MAX_SIZE, 2))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            box = [x, y, x + w, y + h]
            if all(_iou(box, t) < _DISTRACTOR_MAX_IOU for t in truth):
                score = float(rng.uniform(0.05, 0.5))
                dets.append((box, score, 1 + int(rng.integers(len(SHAPES)))))
                break
    # Shuffled: the list order must not tell objects from distractors.
    out = []
    for k, j in enumerate(rng.permutation(len(dets))):
        (x1, y1, x2, y2), score, category = dets[j]
        out.append({"image_id": image_id, "box": [round(x1, 2), round(y1, 2),
                                                  round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(score, 4), "category_id": category, "det_id": image_id * 10 + k})
    return out


def _polygon_area(points):
    x, y = np.asarray(points, np.float64).T
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _generate_refcoco_split(root, split, count, seed, image_size, expression_types):
    width, height = image_size
    rng = subset_rng("refcoco+", seed, split)
    distinct = any(t in ("biggest", "smallest") for t in expression_types)
    images, annotations, refs, proposals = [], [], [], []
    for n in range(count):
        image_id = _REFCOCO_ID_BASE[split] + n + 1
        num_refs = int(rng.integers(1, 3))
        # Resampled (rarely: only "color" can fail) until one object can be referred to.
        for _ in range(100):
            num = int(rng.integers(3, 6))
            objects = sample_scene_with_retries(rng, num, width, height, distinct)
            chosen = _choose_refs(rng, objects, expression_types, num_refs)
            if chosen:
                break
        else:
            raise ValueError("no scene with a referable object; add expression types")
        img, _ = render(rng, objects, width, height)
        file_name = os.path.basename(refcoco_image_file(image_id))
        write_jpeg(os.path.join(root, refcoco_image_file(image_id)), img)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        ann_ids = []
        for k, o in enumerate(objects):
            x1, y1, x2, y2 = xyxy(o)
            # The polygon runs through pixel centers; +0.5 puts it in COCO's continuous
            # coordinates (pixel i spans [i, i + 1)), centered in the bbox.
            poly = [[x + 0.5, y + 0.5] for x, y in polygon(o["name"], o["box"])]
            ann_ids.append(image_id * 10 + k)
            annotations.append({
                "id": ann_ids[-1], "image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                "category_id": 1 + SHAPES.index(o["name"]), "area": round(_polygon_area(poly), 2),
                "iscrowd": 0, "segmentation": [[float(round(v, 2)) for p in poly for v in p]]})
        for r, (etype, k) in enumerate(chosen):
            ref_id = image_id * 10 + r
            sentences = _sentences(rng, etype, objects[k], ref_id * 10)
            refs.append({"sent_ids": [s["sent_id"] for s in sentences],
                         "file_name": f"{file_name[:-4]}_{ann_ids[k]}.jpg",
                         "ann_id": ann_ids[k], "ref_id": ref_id, "image_id": image_id,
                         "split": split, "sentences": sentences,
                         "category_id": 1 + SHAPES.index(objects[k]["name"])})
        proposals += _proposals(rng, image_id, objects, width, height)
    return images, annotations, refs, proposals


def generate_refcoco(root, counts=None, seed=0, image_size=(192, 128),
                     expression_types=REFCOCO_EXPRESSION_TYPES):
    """Writes a synthetic dataset in the REFER layout of RefCOCO+ (see the module docstring).

    Args:
        root: Output folder.
        counts: ``{split: num_images}`` for some of ``train``, ``val``, ``testA``, ``testB``;
            missing splits get ``REFCOCO_DEFAULT_COUNTS``. Image ids are ``n + 1`` plus
            0, 100000, 200000 and 300000 for the four splits; annotation ids are
            ``image_id * 10 + object index``, ref ids ``image_id * 10 + k``, sentence ids
            ``ref_id * 10 + k``.
        seed: Same seed gives byte-identical files; each split has its own stream.
        image_size: ``(width, height)`` in pixels.
        expression_types: Subset of :data:`REFCOCO_EXPRESSION_TYPES`: "the biggest one",
            "the smallest one" (sizes SIZE_GAP apart), "the {color} {shape}" (a combination
            unique in the image), "the left-most one" / "the right-most one" (centres
            REFCOCO_MIN_X_GAP apart); :data:`REFCOCO_GEOMETRY_TYPES` leaves out the colour one.

    Returns:
        ``{split: num_images}``. Each image has 1 or 2 refs to different objects, each with
        1 or 2 sentences.
    """
    counts = merge_counts(counts, REFCOCO_DEFAULT_COUNTS)
    expression_types = check_types(expression_types, REFCOCO_EXPRESSION_TYPES, "expression_types")
    image_size = tuple(int(v) for v in image_size)
    marker = start_generation(root, REFCOCO_MARKER)
    os.makedirs(os.path.join(root, REFCOCO_IMAGES), exist_ok=True)
    images, annotations, refs, proposals = [], [], [], []
    for split, count in counts.items():
        parts = _generate_refcoco_split(root, split, count, seed, image_size, expression_types)
        for whole, part in zip((images, annotations, refs, proposals), parts):
            whole += part
    categories = [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]
    write_json(os.path.join(root, REFCOCO_INSTANCES),
                {"images": images, "annotations": annotations, "categories": categories})
    # Protocol 2, as REFER's files (readable by Python 2 too); plain containers only.
    write_bytes(os.path.join(root, REFCOCO_REFS), pickle.dumps(refs, protocol=2))
    write_json(os.path.join(root, REFCOCO_PROPOSALS), proposals)
    info = {"format": "refcoco+", "seed": seed, "counts": counts, "image_size": list(image_size),
            "expression_types": list(expression_types)}
    write_bytes(marker, json.dumps(info).encode())
    return counts


def is_complete_refcoco(root):
    """True if ``root`` holds the RefCOCO+ instances, refs, proposals and the finished marker."""
    needed = (REFCOCO_INSTANCES, REFCOCO_REFS, REFCOCO_PROPOSALS, REFCOCO_MARKER)
    return all(os.path.isfile(os.path.join(root, f)) for f in needed)


def ensure_synthetic_refcoco(root, **kwargs):
    """Generates the RefCOCO+ dataset unless a complete one already exists at ``root``
    (``kwargs`` go to :func:`generate_refcoco`; an existing dataset is not compared with them).

    Returns:
        True if it generated, False if the dataset was already complete.
    """
    return ensure(is_complete_refcoco, generate_refcoco, root, kwargs)
