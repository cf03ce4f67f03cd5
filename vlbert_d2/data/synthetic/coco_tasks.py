"""Deterministic synthetic scenes written as VQA v2 and RefCOCO+ datasets.

The scenes are those of the VCR generator (:mod:`vlbert_d2.data.synthetic`): colored balls,
boxes and kites on a plain background. Only the questions, expressions and file formats differ,
so the VQA and referring-expression pipelines can run end to end without COCO. Every question
and expression needs the image: the answer (or the referred object) cannot be predicted from
the text alone.

VQA v2 layout under ``root`` (that of the official release)::

    {train2014,val2014,test2015}/COCO_{subset}_{image_id:012d}.jpg       # BGR JPEG
    vqa/v2_OpenEnded_mscoco_{subset}_questions.json    # also test-dev2015 (half of test2015)
    vqa/v2_mscoco_{train2014,val2014}_annotations.json
    vgbua_res101_precomputed/trainval2014_resnet101_faster_rcnn_genome/{image_id}.json
    vgbua_res101_precomputed/test2015_resnet101_faster_rcnn_genome/{image_id}.json

RefCOCO+ layout under ``root`` (that of REFER)::

    train2014/COCO_train2014_{image_id:012d}.jpg       # every split's images, as in RefCOCO+
    refcoco+/instances.json                            # COCO format, one annotation per object
    refcoco+/refs(unc).p                               # pickle of plain dicts
    refcoco+/proposal/res101_coco_minus_refer_notime_dets.json

Use one root per format: both write ``train2014/`` images with the same names.

Example:
    python -m vlbert_d2.data.synthetic --format vqa --root datasets/synthetic_vqa
    python -m vlbert_d2.data.synthetic --format refcoco+ --counts train=300 val=50
"""
import json
import os
import pickle
import zlib

import cv2
import numpy as np

from ..detections import encode_detection, write_detection
from . import (MAX_SIZE, MIN_SIZE, PALETTE, QUADRANTS, SHAPES, _polygon, _quadrant, _render, _sample_scene,
               _write_atomic)

# --------------------------------------------------------------------------------------------
# Shared helpers

# Image ids are offset per subset so that they are unique across subsets and a subset's ids do
# not depend on the other subsets' counts.
_ID_STRIDE = 100000
_MAX_IMAGES = _ID_STRIDE - 1
# A 5-object scene with sizes SIZE_GAP apart is rare among i.i.d. size draws (about 0.4 %), so
# one _sample_scene call (1000 draws) fails now and then; a few more calls make it negligible.
_SCENE_RETRIES = 10


def _subset_rng(fmt, seed, subset):
    # Seeding per subset keeps val/test identical when only the train count changes; the format
    # name keeps the streams apart from the VCR generator's for the same seed and split name.
    return np.random.default_rng([seed, zlib.crc32(fmt.encode()), zlib.crc32(subset.encode())])


def _scene(rng, num_objects, width, height, distinct_sizes):
    """:func:`_sample_scene`, retried; retrying keeps the scene exchangeable over indices."""
    for _ in range(_SCENE_RETRIES):
        try:
            return _sample_scene(rng, num_objects, width, height, distinct_sizes=distinct_sizes)
        except ValueError as e:
            error = e
    raise error


def _write_jpeg(path, img):
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    _write_atomic(path, jpg.tobytes())


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_atomic(path, json.dumps(data).encode())


def _xyxy(obj):
    """The object's box as float x1, y1, x2, y2 with exclusive x2, y2.

    Scene boxes are inclusive pixel ranges (the shape covers pixels x1..x2), so the continuous
    box ends one pixel further.
    """
    x1, y1, x2, y2 = obj["box"]
    return [float(x1), float(y1), float(x2 + 1), float(y2 + 1)]


def _merge_counts(counts, defaults):
    if counts is None:
        return dict(defaults)
    unknown = set(counts) - set(defaults)
    if unknown:
        raise ValueError(f"unknown subsets {sorted(unknown)}; expected some of {list(defaults)}")
    merged = {s: int(counts.get(s, n)) for s, n in defaults.items()}
    bad = {s: n for s, n in merged.items() if not 0 <= n <= _MAX_IMAGES}
    if bad:
        raise ValueError(f"image counts must be in [0, {_MAX_IMAGES}], got {bad}")
    return merged


def _check_types(types, known, what):
    # Duplicates dropped: a VQA image's questions must be of distinct types.
    types = tuple(dict.fromkeys(types))
    unknown = [t for t in types if t not in known]
    if not types or unknown:
        raise ValueError(f"{what} must be a non-empty subset of {known}, got {types}")
    return types


def _start(root, marker):
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, marker)
    # Removed first so that an interrupted run is never mistaken for a complete one.
    if os.path.exists(path):
        os.remove(path)
    return path


# --------------------------------------------------------------------------------------------
# VQA v2

VQA_DEFAULT_COUNTS = {"train2014": 2000, "val2014": 300, "test2015": 100}
VQA_QUESTION_TYPES = ("color", "shape", "count", "yesno", "position", "side", "morethan", "moreside")
# The types a tiny model trained from scratch on a CPU learns in minutes: they need the regions'
# geometry (not the CNN's colour and shape features) summed over all regions (not read from one
# region picked by another property, as "position" and "side" do). The tiny VQA config's data.
VQA_GEOMETRY_TYPES = ("count", "morethan", "moreside")
VQA_MARKER = ".synthetic_vqa_complete"
VQA_LABELLED = ("train2014", "val2014")
VQA_TEST_DEV = "test-dev2015"
_DET_ROOT = "vgbua_res101_precomputed"
VQA_DETECTION_DIRS = {
    "train2014": os.path.join(_DET_ROOT, "trainval2014_resnet101_faster_rcnn_genome"),
    "val2014": os.path.join(_DET_ROOT, "trainval2014_resnet101_faster_rcnn_genome"),
    "test2015": os.path.join(_DET_ROOT, "test2015_resnet101_faster_rcnn_genome"),
}
_VQA_ID_BASE = {s: k * _ID_STRIDE for k, s in enumerate(VQA_DEFAULT_COUNTS)}
_NUMBER_WORDS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six"}
# A correct human answer is written as a surface variant with this probability, for at most
# _MAX_VARIANTS of them, so that at least 6 answers are canonical and the canonical prediction
# scores 1 whatever the official normalisation does with the variants.
_VARIANT_RATE = 0.15
_MAX_VARIANTS = 2
_VQA_INFO = {"description": "Synthetic VQA v2-format dataset (vlbert_d2)", "version": "2.0",
             "contributor": "vlbert_d2.data.synthetic", "url": ""}
_LICENSE = {"name": "generated data, no license restrictions", "url": ""}


def vqa_question_file(subset):
    """Path of a subset's questions file, relative to the dataset root."""
    return os.path.join("vqa", f"v2_OpenEnded_mscoco_{subset}_questions.json")


def vqa_annotation_file(subset):
    """Path of a subset's annotations file, relative to the dataset root."""
    return os.path.join("vqa", f"v2_mscoco_{subset}_annotations.json")


def vqa_image_file(subset, image_id):
    """Path of an image, relative to the dataset root."""
    return os.path.join(subset, f"COCO_{subset}_{image_id:012d}.jpg")


def _biggest(objects):
    return max(range(len(objects)), key=lambda i: objects[i]["size"])


def _vqa_question(rng, qtype, objects, width, height):
    """Returns (question, question_type, answer_type, canonical answer, same-type answers)."""
    big = objects[_biggest(objects)]
    if qtype == "color":
        return ("what color is the biggest object?", "what color is", "other", big["color"],
                list(PALETTE))
    if qtype == "shape":
        return "what shape is the biggest object?", "what shape is", "other", big["name"], list(SHAPES)
    if qtype == "count":
        return "how many objects are there?", "how many", "number", str(len(objects)), None
    if qtype == "yesno":
        # A fair coin, with a uniformly drawn wrong color on "no": then for every asked color
        # P(yes) = 1/6 * 1/2 = P(no) = 5/6 * 1/2 * 1/5, so the text alone gives nothing away.
        yes = bool(rng.random() < 0.5)
        others = [c for c in PALETTE if c != big["color"]]
        asked = big["color"] if yes else others[rng.integers(len(others))]
        return f"is the biggest object {asked}?", "is the", "yes/no", "yes" if yes else "no", ["yes", "no"]
    if qtype == "position":
        quadrant = " ".join(QUADRANTS[_quadrant(big["box"], width, height)])
        return ("where is the biggest object?", "where is", "other", quadrant,
                [" ".join(q) for q in QUADRANTS])
    if qtype == "side":
        # The side asked is a fair coin, independent of the scene: P(yes) = 1/2 for both texts.
        asked = "left" if rng.random() < 0.5 else "right"
        actual = "left" if (big["box"][0] + big["box"][2]) / 2 < width / 2 else "right"
        return (f"is the biggest object on the {asked}?", "is the", "yes/no",
                "yes" if asked == actual else "no", ["yes", "no"])
    if qtype == "morethan":
        # Scenes of this type have 2 to 5 objects, uniformly: P(yes) = 1/2.
        return ("are there more than 3 objects?", "are there", "yes/no",
                "yes" if len(objects) > 3 else "no", ["yes", "no"])
    if qtype == "moreside":
        left = _left_count(objects, width)
        if 2 * left == len(objects):
            raise ValueError("a 'moreside' scene needs more objects on one side")
        return ("which side has more objects?", "which side has", "other",
                "left" if 2 * left > len(objects) else "right", ["left", "right"])
    raise ValueError(f"unknown question type {qtype!r}")


def _wrong_answer(rng, answer_type, correct, pool):
    if answer_type == "number":
        # Miscounting by one is the realistic human error.
        pool = [str(int(correct) + d) for d in (-1, 1) if int(correct) + d >= 1]
    others = [a for a in pool if a != correct]
    return others[rng.integers(len(others))]


def _variant(rng, answer, answer_type):
    """A surface form that the official normalisation maps back to ``answer``."""
    if answer_type == "number":
        return _NUMBER_WORDS[answer]
    if answer_type == "yes/no":
        return answer.capitalize()
    return answer.capitalize() if rng.random() < 0.5 else answer + "."


def _human_answers(rng, answer_type, correct, pool):
    """10 answers: 8 to 10 correct (a few as surface variants), the rest wrong of the same type."""
    n_right = int(rng.integers(8, 11))
    answers, variants = [], 0
    for _ in range(n_right):
        if variants < _MAX_VARIANTS and rng.random() < _VARIANT_RATE:
            answers.append((_variant(rng, correct, answer_type), True))
            variants += 1
        else:
            answers.append((correct, True))
    answers += [(_wrong_answer(rng, answer_type, correct, pool), False) for _ in range(10 - n_right)]
    order = rng.permutation(10)
    out = []
    for k, j in enumerate(order):
        text, right = answers[j]
        if right:
            confidence = "yes" if rng.random() < 0.85 else "maybe"
        else:
            confidence = "maybe" if rng.random() < 0.5 else "no"
        out.append({"answer": text, "answer_confidence": confidence, "answer_id": k + 1})
    return out


def _class_scores(rng, objects):
    """(N, 1 + len(SHAPES)) detector class distributions; column 0 is background."""
    scores = np.zeros((len(objects), 1 + len(SHAPES)), np.float64)
    for k, o in enumerate(objects):
        true = 1 + SHAPES.index(o["name"])
        p = rng.uniform(0.8, 0.95)
        rest = rng.dirichlet(np.ones(len(SHAPES))) * (1 - p)
        scores[k, [j for j in range(scores.shape[1]) if j != true]] = rest
        scores[k, true] = p
    return scores


_AGGREGATE_TYPES = ("count", "morethan", "moreside")


def _left_count(objects, width):
    return sum((o["box"][0] + o["box"][2]) / 2 < width / 2 for o in objects)


def _generate_vqa_subset(root, subset, count, seed, image_size, question_types, per_image):
    width, height = image_size
    rng = _subset_rng("vqa", seed, subset)
    os.makedirs(os.path.join(root, subset), exist_ok=True)
    det_dir = os.path.join(root, VQA_DETECTION_DIRS[subset])
    questions, annotations = [], []
    for n in range(count):
        image_id = _VQA_ID_BASE[subset] + n + 1
        types = [question_types[j] for j in rng.permutation(len(question_types))[:per_image]]
        # Counting questions need 2 to 5 objects, uniformly (then "more than 3" is a fair coin).
        num = int(rng.integers(2, 6) if {"count", "morethan"} & set(types) else rng.integers(3, 6))
        # The non-aggregate types ask about "the biggest object", which must be obvious at a glance.
        distinct = any(t not in _AGGREGATE_TYPES for t in types)
        objects = _scene(rng, num, width, height, distinct)
        while "moreside" in types and 2 * _left_count(objects, width) == len(objects):
            objects = _scene(rng, num, width, height, distinct)  # no tie between the sides
        img, _ = _render(rng, objects, width, height)
        _write_jpeg(os.path.join(root, vqa_image_file(subset, image_id)), img)
        write_detection(os.path.join(det_dir, f"{image_id}.json"),
                        encode_detection(image_id, width, height, [_xyxy(o) for o in objects],
                                         classes=_class_scores(rng, objects)))
        for k, qtype in enumerate(types):
            question_id = image_id * 1000 + k
            text, question_type, answer_type, answer, pool = _vqa_question(rng, qtype, objects, width, height)
            questions.append({"image_id": image_id, "question": text, "question_id": question_id})
            # Drawn for the test subsets too, so that all subsets consume the stream alike.
            answers = _human_answers(rng, answer_type, answer, pool)
            annotations.append({"question_type": question_type, "multiple_choice_answer": answer,
                                "answers": answers, "image_id": image_id,
                                "answer_type": answer_type, "question_id": question_id})
    return questions, annotations


def _vqa_questions_json(subset, questions):
    return {"info": _VQA_INFO, "task_type": "Open-Ended", "data_type": "mscoco",
            "license": _LICENSE, "data_subtype": subset, "questions": questions}


def generate_vqa(root, counts=None, seed=0, image_size=(192, 128),
                 question_types=VQA_QUESTION_TYPES, questions_per_image=2):
    """Writes a synthetic dataset in the official VQA v2 layout (see the module docstring).

    Args:
        root: Output folder.
        counts: ``{subset: num_images}`` for some of ``train2014``, ``val2014``, ``test2015``;
            missing subsets get ``VQA_DEFAULT_COUNTS``. Image ids are ``n + 1`` plus 0, 100000
            and 200000 for the three subsets.
        seed: Same seed gives byte-identical files; each subset has its own stream.
        image_size: ``(width, height)`` in pixels.
        question_types: Subset of :data:`VQA_QUESTION_TYPES` (``color``, ``shape``,
            ``count``, ``yesno``, ``position``, ``side``, ``morethan``, ``moreside``);
            :data:`VQA_GEOMETRY_TYPES` are those a tiny model learns from scratch on a CPU.
        questions_per_image: Questions per image, of distinct types drawn uniformly
            (fewer when there are fewer types). ``question_id = image_id * 1000 + k``.

    Returns:
        ``{subset: num_images}``. ``test-dev2015`` holds the questions of the first half
        (rounded up) of the test2015 images; the test subsets have no annotations file.
    """
    counts = _merge_counts(counts, VQA_DEFAULT_COUNTS)
    question_types = _check_types(question_types, VQA_QUESTION_TYPES, "question_types")
    per_image = min(int(questions_per_image), len(question_types))
    if per_image < 1:
        raise ValueError(f"questions_per_image must be >= 1, got {questions_per_image}")
    image_size = tuple(int(v) for v in image_size)
    marker = _start(root, VQA_MARKER)
    for subset, count in counts.items():
        questions, annotations = _generate_vqa_subset(root, subset, count, seed, image_size,
                                                      question_types, per_image)
        _write_json(os.path.join(root, vqa_question_file(subset)),
                    _vqa_questions_json(subset, questions))
        if subset in VQA_LABELLED:
            _write_json(os.path.join(root, vqa_annotation_file(subset)),
                        {"info": _VQA_INFO, "license": _LICENSE, "data_subtype": subset,
                         "annotations": annotations})
        else:
            # Whole images, so that no test-dev image has only some of its questions.
            last_dev_image = _VQA_ID_BASE[subset] + (count + 1) // 2
            dev = [q for q in questions if q["image_id"] <= last_dev_image]
            _write_json(os.path.join(root, vqa_question_file(VQA_TEST_DEV)),
                        _vqa_questions_json(VQA_TEST_DEV, dev))
    info = {"format": "vqa", "seed": seed, "counts": counts, "image_size": list(image_size),
            "question_types": list(question_types), "questions_per_image": per_image}
    _write_atomic(marker, json.dumps(info).encode())
    return counts


def _ensure(is_complete, generate, root, kwargs):
    if is_complete(root):
        return False
    generate(root, **kwargs)
    return True


def is_complete_vqa(root):
    """True if ``root`` holds every VQA questions/annotations file and the finished marker."""
    needed = [vqa_question_file(s) for s in (*VQA_DEFAULT_COUNTS, VQA_TEST_DEV)]
    needed += [vqa_annotation_file(s) for s in VQA_LABELLED] + [VQA_MARKER]
    return all(os.path.isfile(os.path.join(root, f)) for f in needed)


def ensure_synthetic_vqa(root, **kwargs):
    """Generates the VQA dataset unless a complete one already exists at ``root``
    (``kwargs`` go to :func:`generate_vqa`; an existing dataset is not compared with them).

    Returns:
        True if it generated, False if the dataset was already complete.
    """
    return _ensure(is_complete_vqa, generate_vqa, root, kwargs)


# --------------------------------------------------------------------------------------------
# RefCOCO+

REFCOCO_DEFAULT_COUNTS = {"train": 1500, "val": 200, "testA": 100, "testB": 100}
REFCOCO_EXPRESSION_TYPES = ("biggest", "smallest", "color", "leftmost", "rightmost")
# As VQA_GEOMETRY_TYPES: the tiny RefCOCO+ config's data.
REFCOCO_GEOMETRY_TYPES = ("biggest", "smallest", "leftmost", "rightmost")
REFCOCO_MARKER = ".synthetic_refcoco+_complete"
REFCOCO_IMAGES = "train2014"
REFCOCO_INSTANCES = os.path.join("refcoco+", "instances.json")
REFCOCO_REFS = os.path.join("refcoco+", "refs(unc).p")
REFCOCO_PROPOSALS = os.path.join("refcoco+", "proposal", "res101_coco_minus_refer_notime_dets.json")
_REFCOCO_ID_BASE = {s: k * _ID_STRIDE for k, s in enumerate(REFCOCO_DEFAULT_COUNTS)}
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
_MIN_X_GAP = 8
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
            target = _biggest(objects)
        elif etype == "smallest":
            target = min(range(len(objects)), key=lambda i: objects[i]["size"])
        elif etype in ("leftmost", "rightmost"):
            sign = 1 if etype == "leftmost" else -1
            order_x = sorted(range(len(objects)), key=lambda i: sign * (objects[i]["box"][0] + objects[i]["box"][2]))
            first, second = (objects[i]["box"][0] + objects[i]["box"][2] for i in order_x[:2])
            if abs(first - second) < 2 * _MIN_X_GAP:  # centres (doubled) too close to tell
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
        x1, y1, x2, y2 = _xyxy(o)
        side = x2 - x1
        j = [float(v) * side for v in rng.uniform(-_JITTER, _JITTER, 4)]
        box = [max(x1 + j[0], 0.0), max(y1 + j[1], 0.0),
               min(x2 + j[2], float(width)), min(y2 + j[3], float(height))]
        dets.append((box, float(rng.uniform(0.7, 0.99)), 1 + SHAPES.index(o["name"])))
    truth = [_xyxy(o) for o in objects]
    for _ in range(int(rng.integers(1, 3))):
        # Low IoU with every object keeps the object <-> proposal match unambiguous.
        for _ in range(100):
            w, h = (float(v) for v in rng.uniform(MIN_SIZE / 2, MAX_SIZE, 2))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            box = [x, y, x + w, y + h]
            if all(_iou(box, t) < _DISTRACTOR_MAX_IOU for t in truth):
                dets.append((box, float(rng.uniform(0.05, 0.5)), 1 + int(rng.integers(len(SHAPES)))))
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
    rng = _subset_rng("refcoco+", seed, split)
    distinct = any(t in ("biggest", "smallest") for t in expression_types)
    images, annotations, refs, proposals = [], [], [], []
    for n in range(count):
        image_id = _REFCOCO_ID_BASE[split] + n + 1
        num_refs = int(rng.integers(1, 3))
        # Resampled (rarely: only "color" can fail) until one object can be referred to.
        for _ in range(100):
            objects = _scene(rng, int(rng.integers(3, 6)), width, height, distinct)
            chosen = _choose_refs(rng, objects, expression_types, num_refs)
            if chosen:
                break
        else:
            raise ValueError("no scene with a referable object; add expression types")
        img, _ = _render(rng, objects, width, height)
        file_name = os.path.basename(refcoco_image_file(image_id))
        _write_jpeg(os.path.join(root, refcoco_image_file(image_id)), img)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        ann_ids = []
        for k, o in enumerate(objects):
            x1, y1, x2, y2 = _xyxy(o)
            # The polygon runs through pixel centers; +0.5 puts it in COCO's continuous
            # coordinates (pixel i spans [i, i + 1)), centered in the bbox.
            poly = [[x + 0.5, y + 0.5] for x, y in _polygon(o["name"], o["box"])]
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
            _MIN_X_GAP apart); :data:`REFCOCO_GEOMETRY_TYPES` leaves out the colour one.

    Returns:
        ``{split: num_images}``. Each image has 1 or 2 refs to different objects, each with
        1 or 2 sentences.
    """
    counts = _merge_counts(counts, REFCOCO_DEFAULT_COUNTS)
    expression_types = _check_types(expression_types, REFCOCO_EXPRESSION_TYPES, "expression_types")
    image_size = tuple(int(v) for v in image_size)
    marker = _start(root, REFCOCO_MARKER)
    os.makedirs(os.path.join(root, REFCOCO_IMAGES), exist_ok=True)
    images, annotations, refs, proposals = [], [], [], []
    for split, count in counts.items():
        parts = _generate_refcoco_split(root, split, count, seed, image_size, expression_types)
        for whole, part in zip((images, annotations, refs, proposals), parts):
            whole += part
    categories = [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]
    _write_json(os.path.join(root, REFCOCO_INSTANCES),
                {"images": images, "annotations": annotations, "categories": categories})
    # Protocol 2, as REFER's files (readable by Python 2 too); plain containers only.
    _write_atomic(os.path.join(root, REFCOCO_REFS), pickle.dumps(refs, protocol=2))
    _write_json(os.path.join(root, REFCOCO_PROPOSALS), proposals)
    info = {"format": "refcoco+", "seed": seed, "counts": counts, "image_size": list(image_size),
            "expression_types": list(expression_types)}
    _write_atomic(marker, json.dumps(info).encode())
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
    return _ensure(is_complete_refcoco, generate_refcoco, root, kwargs)


# The formats besides VCR that the CLI offers: generator, ensure function, default counts,
# types, and the keyword that receives the types.
FORMATS = {
    "vqa": (generate_vqa, ensure_synthetic_vqa, VQA_DEFAULT_COUNTS, VQA_QUESTION_TYPES,
            "question_types"),
    "refcoco+": (generate_refcoco, ensure_synthetic_refcoco, REFCOCO_DEFAULT_COUNTS,
                 REFCOCO_EXPRESSION_TYPES, "expression_types"),
}
