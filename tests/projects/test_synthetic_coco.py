"""Tests for the synthetic VQA v2 and RefCOCO+ generators (projects/SyntheticVL: synthetic_vl.vqa, .refcoco)."""
import collections
import io
import json
import os
import pickle
import re

import cv2
import numpy as np
import pytest
import synthetic_vl as synthetic
from synthetic_vl import MAX_SIZE, MIDLINE_MARGIN, MIN_SIZE, PALETTE, SHAPES, SIZE_GAP
from synthetic_vl import REFCOCO_MIN_X_GAP as _MIN_X_GAP
from synthetic_vl import (
    REFCOCO_EXPRESSION_TYPES, REFCOCO_GEOMETRY_TYPES, REFCOCO_INSTANCES,
    REFCOCO_MARKER, REFCOCO_PROPOSALS, REFCOCO_REFS, VQA_DETECTION_DIRS, VQA_GEOMETRY_TYPES,
    VQA_MARKER, VQA_QUESTION_TYPES, ensure_synthetic_refcoco, ensure_synthetic_vqa,
    generate_refcoco, generate_vqa, is_complete_refcoco, is_complete_vqa, refcoco_image_file,
    vqa_annotation_file, vqa_image_file, vqa_question_file)

from vlbert_d2.data.detections import read_detection

VQA_COUNTS = {"train2014": 150, "val2014": 40, "test2015": 10}
REF_COUNTS = {"train": 120, "val": 30, "testA": 15, "testB": 15}
VQA_SMALL = {"train2014": 4, "val2014": 3, "test2015": 3}
REF_SMALL = {"train": 4, "val": 2, "testA": 2, "testB": 2}
_NUMBERS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}
_QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
# Question text -> question type; written out here (not taken from the generator) as the spec.
_VQA_QUESTIONS = [
    ("color", re.compile(r"what color is the biggest object\?")),
    ("shape", re.compile(r"what shape is the biggest object\?")),
    ("count", re.compile(r"how many objects are there\?")),
    ("yesno", re.compile(r"is the biggest object (%s)\?" % "|".join(PALETTE))),
    ("position", re.compile(r"where is the biggest object\?")),
    ("side", re.compile(r"is the biggest object on the (left|right)\?")),
    ("morethan", re.compile(r"are there more than 3 objects\?")),
    ("moreside", re.compile(r"which side has more objects\?")),
]
# Question type -> (annotation question_type, answer_type, canonical answers).
_VQA_ANSWERS = {
    "color": ("what color is", "other", set(PALETTE)),
    "shape": ("what shape is", "other", set(SHAPES)),
    "count": ("how many", "number", {"2", "3", "4", "5"}),
    "yesno": ("is the", "yes/no", {"yes", "no"}),
    "position": ("where is", "other", set(_QUADRANTS)),
    "side": ("is the", "yes/no", {"yes", "no"}),
    "morethan": ("are there", "yes/no", {"yes", "no"}),
    "moreside": ("which side has", "other", {"left", "right"}),
}
_REF_PHRASES = {
    "biggest": {"the biggest one", "the largest one", "biggest object"},
    "smallest": {"the smallest one", "the tiniest one", "smallest object"},
    "leftmost": {"the left-most one", "the one furthest to the left"},
    "rightmost": {"the right-most one", "the one furthest to the right"},
}


def _normalize(answer):
    # The parts of the official VQA normalisation that the generator's variants exercise:
    # periods not before a digit removed, lower case, number words to digits.
    words = re.sub(r"\.(?!\d)", "", answer).lower().split()
    return " ".join(_NUMBERS.get(w, w) for w in words)


def _json(root, rel):
    with open(os.path.join(root, rel)) as f:
        return json.load(f)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


def _read(root, rel):
    with open(os.path.join(root, rel), "rb") as f:
        return f.read()


def _vqa_kind(text):
    """(question type, regex match) of a generated question."""
    kinds = [(k, m) for k, pattern in _VQA_QUESTIONS for m in [pattern.fullmatch(text)] if m]
    assert len(kinds) == 1, text
    return kinds[0]


def _ref_kind(sent):
    kinds = [k for k, phrases in _REF_PHRASES.items() if sent in phrases]
    return kinds[0] if kinds else "color"


def _color_at(img, x1, y1, x2, y2):
    # The central half of a box lies inside every shape (ball, box, kite).
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    patch = img[int(cy - h / 8):int(cy + h / 8) + 1, int(cx - w / 8):int(cx + w / 8) + 1]
    mean = patch.reshape(-1, 3).mean(0)
    return min(PALETTE, key=lambda c: np.linalg.norm(mean - np.array(PALETTE[c])))


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vqa"))
    generate_vqa(root, counts=VQA_COUNTS, seed=0)
    return root


@pytest.fixture(scope="module")
def refcoco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("refcoco"))
    generate_refcoco(root, counts=REF_COUNTS, seed=0)
    return root


# ------------------------------------------------------------------------------------ VQA


def test_vqa_deterministic(tmp_path):
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    generate_vqa(a, counts=VQA_SMALL, seed=3)
    generate_vqa(b, counts=VQA_SMALL, seed=3)
    generate_vqa(c, counts=VQA_SMALL, seed=4)
    files = _files(a)
    assert files == _files(b) == _files(c)
    assert all(_read(a, f) == _read(b, f) for f in files)
    differ = [f for f in files if f != VQA_MARKER and _read(a, f) != _read(c, f)]
    assert any(f.endswith(".jpg") for f in differ)
    assert vqa_annotation_file("train2014") in differ
    # Changing only the train count leaves the other subsets as they were.
    generate_vqa(d, counts={**VQA_SMALL, "train2014": 7}, seed=3)
    same = [f for f in files if "train2014" not in f and f != VQA_MARKER
            and not f.startswith(VQA_DETECTION_DIRS["train2014"])]
    same += [os.path.join(VQA_DETECTION_DIRS["val2014"], f"{100001 + k}.json") for k in range(3)]
    assert all(_read(a, f) == _read(d, f) for f in same)


def test_vqa_format(vqa):
    image_ids = set()
    for subset, count in VQA_COUNTS.items():
        data = _json(vqa, vqa_question_file(subset))
        assert set(data) == {"info", "task_type", "data_type", "license", "data_subtype", "questions"}
        assert data["task_type"] == "Open-Ended" and data["data_type"] == "mscoco"
        assert data["data_subtype"] == subset
        assert isinstance(data["info"], dict) and isinstance(data["license"], dict)
        per_image = collections.defaultdict(list)
        for q in data["questions"]:
            assert set(q) == {"image_id", "question", "question_id"}
            assert isinstance(q["image_id"], int) and isinstance(q["question_id"], int)
            assert isinstance(q["question"], str) and q["question"].endswith("?")
            assert q["question_id"] // 1000 == q["image_id"]
            per_image[q["image_id"]].append(q["question_id"] % 1000)
        assert len(per_image) == count
        assert all(sorted(ks) == [0, 1] for ks in per_image.values())
        assert not image_ids & per_image.keys()
        image_ids |= per_image.keys()
        for image_id in list(per_image)[:5]:
            img = cv2.imread(os.path.join(vqa, vqa_image_file(subset, image_id)))
            assert img is not None and img.shape == (128, 192, 3)
        has_ann = os.path.exists(os.path.join(vqa, vqa_annotation_file(subset)))
        assert has_ann == (subset != "test2015")

    test = _json(vqa, vqa_question_file("test2015"))["questions"]
    dev = _json(vqa, vqa_question_file("test-dev2015"))
    assert dev["data_subtype"] == "test-dev2015"
    assert dev["questions"] == test[:len(test) // 2]
    assert is_complete_vqa(vqa)


def test_vqa_annotations(vqa):
    assert set(_VQA_ANSWERS) == set(VQA_QUESTION_TYPES)
    seen = collections.Counter()
    variants = set()
    for subset in ("train2014", "val2014"):
        data = _json(vqa, vqa_annotation_file(subset))
        assert set(data) == {"info", "license", "data_subtype", "annotations"}
        assert data["data_subtype"] == subset
        questions = {q["question_id"]: q for q in _json(vqa, vqa_question_file(subset))["questions"]}
        assert len(data["annotations"]) == len(questions)
        for ann in data["annotations"]:
            assert set(ann) == {"question_id", "image_id", "question_type", "answer_type",
                                "multiple_choice_answer", "answers"}
            q = questions[ann["question_id"]]
            assert ann["image_id"] == q["image_id"]
            kind = _vqa_kind(q["question"])[0]
            seen[kind] += 1
            question_type, answer_type, values = _VQA_ANSWERS[kind]
            assert ann["question_type"] == question_type
            assert q["question"].startswith(ann["question_type"] + " ")
            assert ann["answer_type"] == answer_type
            mca = ann["multiple_choice_answer"]
            assert mca in values
            answers = ann["answers"]
            assert [a["answer_id"] for a in answers] == list(range(1, 11))
            assert all(set(a) == {"answer", "answer_confidence", "answer_id"} for a in answers)
            assert all(a["answer_confidence"] in ("yes", "maybe", "no") for a in answers)
            normalized = [_normalize(a["answer"]) for a in answers]
            assert normalized.count(mca) >= 8
            # Wrong answers are of the same type.
            assert all(n in values or answer_type == "number" and n.isdigit() for n in normalized)
            variants |= {a["answer"] for a in answers if a["answer"] != _normalize(a["answer"])}
    assert {v for v in variants if v.endswith(".")} and {v for v in variants if v[0].isupper()}
    assert variants & set(_NUMBERS) and variants & {"Yes", "No"}
    assert variants & {q.capitalize() for q in _QUADRANTS} and variants & {q + "." for q in _QUADRANTS}
    assert variants & {"Left", "Right", "left.", "right."}
    assert set(seen) == set(VQA_QUESTION_TYPES), seen


def test_vqa_detections_match_answers(vqa):
    seen = collections.Counter()
    for subset in ("train2014", "val2014", "test2015"):
        questions = _json(vqa, vqa_question_file(subset))["questions"]
        by_image = collections.defaultdict(list)
        for q in questions:
            by_image[q["image_id"]].append(q)
        answers = {}
        if subset != "test2015":
            answers = {a["question_id"]: a["multiple_choice_answer"]
                       for a in _json(vqa, vqa_annotation_file(subset))["annotations"]}
        for image_id, qs in list(by_image.items())[:60]:
            det = read_detection(os.path.join(vqa, VQA_DETECTION_DIRS[subset], f"{image_id}.json"))
            assert (det["image_id"], det["image_w"], det["image_h"]) == (image_id, 192, 128)
            boxes, classes = det["boxes"], det["classes"]
            assert classes.shape == (len(boxes), 1 + len(SHAPES))
            np.testing.assert_allclose(classes.sum(1), 1, atol=1e-5)
            assert (classes.argmax(1) > 0).all() and (classes.max(1) >= 0.8).all()
            sides = boxes[:, 2] - boxes[:, 0]
            np.testing.assert_array_equal(sides, boxes[:, 3] - boxes[:, 1])
            assert ((sides >= MIN_SIZE + 1) & (sides <= MAX_SIZE + 1)).all()
            assert (boxes >= 0).all() and (boxes[:, 2] <= 192).all() and (boxes[:, 3] <= 128).all()
            img = cv2.imread(os.path.join(vqa, vqa_image_file(subset, image_id)))
            big = int(np.argmax(sides))
            color = _color_at(img, *boxes[big])
            shape = SHAPES[int(classes[big].argmax()) - 1]
            # Scenes have 3..5 objects, 2..5 when one of the questions counts them.
            kinds = {_vqa_kind(q["question"])[0] for q in qs}
            counted = bool(kinds & {"count", "morethan"})
            assert (2 if counted else 3) <= len(boxes) <= 5
            # Every object's box centre keeps clear of the vertical midline (detection boxes
            # are continuous: the scene's inclusive box + 1 pixel).
            centres = (boxes[:, 0] + boxes[:, 2]) / 2
            assert (abs(centres - 192 / 2) >= MIDLINE_MARGIN - 0.5).all()
            left = int((centres < 192 / 2).sum())
            # The biggest object's box centre, and the quadrant / half of the image it lies in;
            # placement keeps every centre clear of the midlines.
            cx, cy = (boxes[big, 0] + boxes[big, 2]) / 2, (boxes[big, 1] + boxes[big, 3]) / 2
            side = "left" if cx < 192 / 2 else "right"
            quadrant = ("top " if cy < 128 / 2 else "bottom ") + side
            for q in qs:
                text = q["question"]
                kind, match = _vqa_kind(text)
                if kind == "count":
                    truth = str(len(boxes))
                elif kind == "morethan":
                    truth = "yes" if len(boxes) > 3 else "no"
                elif kind == "moreside":
                    # Never a tie: scenes asked about are resampled until the sides differ.
                    assert 2 * left != len(boxes), boxes
                    truth = "left" if 2 * left > len(boxes) else "right"
                else:
                    assert np.diff(np.sort(sides)).min() >= SIZE_GAP
                    if kind == "color":
                        truth = color
                    elif kind == "shape":
                        truth = shape
                    elif kind == "yesno":
                        truth = "yes" if match.group(1) == color else "no"
                    else:
                        # Detection boxes are continuous (the scene's inclusive box + 1 pixel).
                        assert abs(cx - 192 / 2) >= MIDLINE_MARGIN - 0.5
                        assert abs(cy - 128 / 2) >= MIDLINE_MARGIN - 0.5
                        if kind == "position":
                            truth = quadrant
                        else:
                            truth = "yes" if match.group(1) == side else "no"
                if q["question_id"] in answers:
                    assert answers[q["question_id"]] == truth, text
                seen[kind] += 1
                seen[kind, truth] += 1
    assert {k for k in seen if isinstance(k, str)} == set(VQA_QUESTION_TYPES), seen
    # Both answers of every yes/no kind, both sides, and every quadrant, do occur.
    assert all(seen[k, a] for k in ("yesno", "side", "morethan") for a in ("yes", "no")), seen
    assert all(seen["moreside", s] for s in ("left", "right")), seen
    assert all(seen["position", q] for q in _QUADRANTS), seen


def test_vqa_answers_need_the_image(vqa):
    by_text = collections.defaultdict(collections.Counter)
    for subset in ("train2014", "val2014"):
        questions = {q["question_id"]: q["question"]
                     for q in _json(vqa, vqa_question_file(subset))["questions"]}
        for ann in _json(vqa, vqa_annotation_file(subset))["annotations"]:
            by_text[questions[ann["question_id"]]][ann["multiple_choice_answer"]] += 1
    # color, shape, count, position, morethan and moreside questions have one text each;
    # yes/no questions one per asked color, side questions one per asked side.
    assert len(by_text) == 6 + len(PALETTE) + 2, sorted(by_text)
    assert all(len(answers) > 1 for answers in by_text.values()), by_text
    # The best text-only model answers each question string with its most frequent answer;
    # even scored on its own training data it stays near chance (0.375 expected: 1/6 for
    # colors, 1/3 shapes, 1/4 counts and quadrants, 1/2 the three yes/no kinds and the
    # left/right one; 0.45 with this seed, as each asked color has only a few questions).
    best = sum(a.most_common(1)[0][1] for a in by_text.values())
    assert best / sum(sum(a.values()) for a in by_text.values()) < 0.5


@pytest.mark.parametrize("qtype, num_texts", [("yesno", len(PALETTE)), ("side", 2), ("morethan", 1)])
def test_vqa_yes_no_balanced(tmp_path, qtype, num_texts):
    # A fair coin per question: over a few hundred questions the share of "yes" stays near 1/2
    # (one standard deviation is 0.03 here), overall and for every question text (every asked
    # color, every asked side; "more than 3" of 2..5 objects drawn uniformly).
    root = str(tmp_path / qtype)
    generate_vqa(root, counts={"train2014": 260, "val2014": 0, "test2015": 0}, seed=1,
                 question_types=(qtype,))
    questions = {q["question_id"]: q["question"]
                 for q in _json(root, vqa_question_file("train2014"))["questions"]}
    by_text = collections.defaultdict(collections.Counter)
    for ann in _json(root, vqa_annotation_file("train2014"))["annotations"]:
        assert ann["answer_type"] == "yes/no" and ann["question_type"] == _VQA_ANSWERS[qtype][0]
        by_text[questions[ann["question_id"]]][ann["multiple_choice_answer"]] += 1
    assert {_vqa_kind(t)[0] for t in by_text} == {qtype}
    total = sum(by_text.values(), collections.Counter())
    assert sum(total.values()) == 260 and 0.42 <= total["yes"] / 260 <= 0.58, total
    assert len(by_text) == num_texts
    assert all(0.25 <= c["yes"] / (c["yes"] + c["no"]) <= 0.75 for c in by_text.values()), by_text


def test_vqa_more_side(tmp_path):
    # "which side has more objects?" alone: 3..5 objects, never as many left as right of the
    # vertical midline, and both answers occur (about equally: placement is mirror-symmetric).
    root = str(tmp_path / "moreside")
    generate_vqa(root, counts={"train2014": 120, "val2014": 0, "test2015": 0}, seed=1,
                 question_types=("moreside",))
    answers = {a["question_id"]: a for a in _json(root, vqa_annotation_file("train2014"))["annotations"]}
    seen = collections.Counter()
    for q in _json(root, vqa_question_file("train2014"))["questions"]:
        assert q["question"] == "which side has more objects?"
        ann = answers[q["question_id"]]
        assert (ann["question_type"], ann["answer_type"]) == ("which side has", "other")
        det = read_detection(os.path.join(root, VQA_DETECTION_DIRS["train2014"], f"{q['image_id']}.json"))
        boxes = det["boxes"]
        assert 3 <= len(boxes) <= 5
        left = int(((boxes[:, 0] + boxes[:, 2]) / 2 < 192 / 2).sum())
        assert 2 * left != len(boxes), boxes
        assert ann["multiple_choice_answer"] == ("left" if 2 * left > len(boxes) else "right")
        seen[ann["multiple_choice_answer"]] += 1
        seen[len(boxes)] += 1
    assert sum(seen[s] for s in ("left", "right")) == 120
    assert 0.3 <= seen["left"] / 120 <= 0.7, seen
    # The tie-free resampling still leaves 4-object scenes (3-1 splits).
    assert all(seen[n] for n in (3, 4, 5)), seen


def test_vqa_question_types(tmp_path):
    root = str(tmp_path / "q")
    generate_vqa(root, counts={"train2014": 20, "val2014": 0, "test2015": 0},
                 question_types=("count",), questions_per_image=3)
    questions = _json(root, vqa_question_file("train2014"))["questions"]
    assert len(questions) == 20 and all(q["question"] == "how many objects are there?" for q in questions)
    assert _json(root, vqa_question_file("test-dev2015"))["questions"] == []
    with pytest.raises(ValueError):
        generate_vqa(root, counts=VQA_SMALL, question_types=("leftmost",))
    with pytest.raises(ValueError):
        generate_vqa(root, counts={"val": 3})


def test_vqa_geometry_types(tmp_path):
    root = str(tmp_path / "geometry")
    generate_vqa(root, counts={"train2014": 40, "val2014": 10, "test2015": 0}, seed=2,
                 question_types=VQA_GEOMETRY_TYPES)
    assert set(VQA_GEOMETRY_TYPES) == {"count", "morethan", "moreside"}
    kinds = collections.Counter()
    for subset in ("train2014", "val2014"):
        questions = _json(root, vqa_question_file(subset))["questions"]
        per_image = collections.defaultdict(list)
        for q in questions:
            per_image[q["image_id"]].append(_vqa_kind(q["question"])[0])
        # Two questions per image, of distinct kinds.
        assert all(len(ks) == len(set(ks)) == 2 for ks in per_image.values())
        kinds.update(k for ks in per_image.values() for k in ks)
        answer_types = {a["answer_type"] for a in _json(root, vqa_annotation_file(subset))["annotations"]}
        assert answer_types == {"number", "other", "yes/no"}
    assert set(kinds) == set(VQA_GEOMETRY_TYPES), kinds


def test_ensure_synthetic_vqa(tmp_path):
    root = str(tmp_path / "vqa")
    assert ensure_synthetic_vqa(root, counts=VQA_SMALL)
    assert not ensure_synthetic_vqa(root, counts=VQA_SMALL)
    os.remove(os.path.join(root, VQA_MARKER))
    assert not is_complete_vqa(root)
    assert ensure_synthetic_vqa(root, counts=VQA_SMALL)
    os.remove(os.path.join(root, vqa_annotation_file("val2014")))
    assert ensure_synthetic_vqa(root, counts=VQA_SMALL)
    assert not ensure_synthetic_vqa(root, counts=VQA_SMALL)


# ------------------------------------------------------------------------------- RefCOCO+


class _NoClasses(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} in a refs file")


def _refs(root):
    with open(os.path.join(root, REFCOCO_REFS), "rb") as f:
        return _NoClasses(io.BytesIO(f.read())).load()


def _plain(value):
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return type(value) in (str, int, float)


def test_refcoco_deterministic(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate_refcoco(a, counts=REF_SMALL, seed=3)
    generate_refcoco(b, counts=REF_SMALL, seed=3)
    generate_refcoco(c, counts=REF_SMALL, seed=4)
    files = _files(a)
    assert files == _files(b) == _files(c)
    assert all(_read(a, f) == _read(b, f) for f in files)
    for f in (REFCOCO_INSTANCES, REFCOCO_REFS, REFCOCO_PROPOSALS, refcoco_image_file(1)):
        assert _read(a, f) != _read(c, f)


def test_refcoco_format(refcoco):
    inst = _json(refcoco, REFCOCO_INSTANCES)
    assert set(inst) == {"images", "annotations", "categories"}
    assert inst["categories"] == [{"id": k + 1, "name": s, "supercategory": "shape"}
                                  for k, s in enumerate(SHAPES)]
    images = {im["id"]: im for im in inst["images"]}
    assert len(images) == len(inst["images"]) == sum(REF_COUNTS.values())
    for im in inst["images"]:
        assert set(im) == {"id", "file_name", "width", "height"}
        assert im["file_name"] == f"COCO_train2014_{im['id']:012d}.jpg"
        assert (im["width"], im["height"]) == (192, 128)
    for image_id in list(images)[:5]:
        img = cv2.imread(os.path.join(refcoco, refcoco_image_file(image_id)))
        assert img is not None and img.shape == (128, 192, 3)
    per_image = collections.Counter()
    assert len({a["id"] for a in inst["annotations"]}) == len(inst["annotations"])
    for ann in inst["annotations"]:
        assert set(ann) == {"id", "image_id", "bbox", "category_id", "area", "iscrowd", "segmentation"}
        assert ann["image_id"] in images and ann["iscrowd"] == 0 and ann["category_id"] in (1, 2, 3)
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert w == h and MIN_SIZE + 1 <= w <= MAX_SIZE + 1
        assert x >= 0 and y >= 0 and x + w <= 192 and y + h <= 128
        (poly,) = ann["segmentation"]
        pts = np.asarray(poly).reshape(-1, 2)
        assert len(pts) >= 3 and pts.min(0).tolist() >= [x, y] and pts.max(0).tolist() <= [x + w, y + h]
        assert 0 < ann["area"] <= w * h
        per_image[ann["image_id"]] += 1
    assert set(per_image.values()) <= {3, 4, 5} and per_image.keys() == images.keys()
    assert is_complete_refcoco(refcoco)


def test_refcoco_refs_format(refcoco):
    refs = _refs(refcoco)
    assert isinstance(refs, list) and all(_plain(r) for r in refs)
    anns = {a["id"]: a for a in _json(refcoco, REFCOCO_INSTANCES)["annotations"]}
    assert len({r["ref_id"] for r in refs}) == len(refs)
    sent_ids = [s for r in refs for s in r["sent_ids"]]
    assert len(set(sent_ids)) == len(sent_ids)
    by_image = collections.defaultdict(list)
    splits = collections.defaultdict(set)
    for r in refs:
        assert set(r) == {"ref_id", "ann_id", "image_id", "category_id", "split", "file_name",
                          "sent_ids", "sentences"}
        assert all(isinstance(r[k], int) for k in ("ref_id", "ann_id", "image_id", "category_id"))
        ann = anns[r["ann_id"]]
        assert ann["image_id"] == r["image_id"] and ann["category_id"] == r["category_id"]
        assert r["file_name"] == f"COCO_train2014_{r['image_id']:012d}_{r['ann_id']}.jpg"
        assert 1 <= len(r["sentences"]) <= 2
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
        for s in r["sentences"]:
            assert set(s) == {"sent_id", "sent", "raw", "tokens"}
            assert s["tokens"] == s["sent"].split() and s["raw"].lower() == s["sent"]
        by_image[r["image_id"]].append(r["ann_id"])
        splits[r["split"]].add(r["image_id"])
    assert {s: len(ids) for s, ids in splits.items()} == REF_COUNTS
    assert all(len(set(a)) == len(a) in (1, 2) for a in by_image.values())
    assert {len(a) for a in by_image.values()} == {1, 2}


def _check_refs(root, uniform_index=True):
    """Checks every sentence against its scene; returns the sentences per kind and the refs."""
    inst = _json(root, REFCOCO_INSTANCES)
    by_image = collections.defaultdict(list)
    for ann in inst["annotations"]:
        by_image[ann["image_id"]].append(ann)
    colors = {}
    kinds = collections.Counter()
    first, expected_first = 0, 0.0
    refs = _refs(root)
    for r in refs:
        anns = by_image[r["image_id"]]
        index = [a["id"] for a in anns].index(r["ann_id"])
        first += index == 0
        expected_first += 1 / len(anns)
        sides = [a["bbox"][2] for a in anns]
        centres = [a["bbox"][0] + a["bbox"][2] / 2 for a in anns]
        for s in r["sentences"]:
            kind = _ref_kind(s["sent"])
            if kind == "biggest":
                assert sides[index] == max(sides) and sorted(sides)[-2] + SIZE_GAP <= sides[index]
            elif kind == "smallest":
                assert sides[index] == min(sides) and sorted(sides)[1] - SIZE_GAP >= sides[index]
            elif kind == "leftmost":
                assert centres[index] == min(centres)
                assert sorted(centres)[1] - _MIN_X_GAP >= centres[index], (centres, index)
            elif kind == "rightmost":
                assert centres[index] == max(centres)
                assert sorted(centres)[-2] + _MIN_X_GAP <= centres[index], (centres, index)
            else:
                words = s["tokens"]
                assert len(words) in (2, 3) and words[0] in ("the", *PALETTE), s
                color, shape = words[-2:]
                assert SHAPES[r["category_id"] - 1] == shape and color in PALETTE
                if r["image_id"] not in colors:
                    img = cv2.imread(os.path.join(root, refcoco_image_file(r["image_id"])))
                    colors[r["image_id"]] = [
                        (_color_at(img, a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                   a["bbox"][1] + a["bbox"][3]), SHAPES[a["category_id"] - 1])
                        for a in anns]
                combos = colors[r["image_id"]]
                assert combos[index] == (color, shape) and combos.count((color, shape)) == 1
            kinds[kind] += 1
    # The referred object's index among the image's objects is uniform (no ordering shortcut).
    assert not uniform_index or abs(first - expected_first) / len(refs) < 0.06, (first, expected_first)
    return kinds, refs


def test_refcoco_expressions_match_scene(refcoco):
    kinds, _ = _check_refs(refcoco)
    assert set(kinds) == set(REFCOCO_EXPRESSION_TYPES) and min(kinds.values()) > 30, kinds


def test_refcoco_proposals(refcoco):
    dets = _json(refcoco, REFCOCO_PROPOSALS)
    assert isinstance(dets, list)
    assert len({d["det_id"] for d in dets}) == len(dets)
    by_image = collections.defaultdict(list)
    for d in dets:
        assert set(d) == {"image_id", "box", "score", "category_id", "det_id"}
        assert len(d["box"]) == 4 and 0 < d["score"] < 1 and d["category_id"] in (1, 2, 3)
        by_image[d["image_id"]].append(d)

    def xyxy(b):
        return [b[0], b[1], b[0] + b[2], b[1] + b[3]]

    def iou(a, b):
        iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
        ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    anns = collections.defaultdict(list)
    for a in _json(refcoco, REFCOCO_INSTANCES)["annotations"]:
        anns[a["image_id"]].append(a)
    assert by_image.keys() == anns.keys()
    for image_id, ds in by_image.items():
        assert 1 <= len(ds) - len(anns[image_id]) <= 2
        for a in anns[image_id]:
            ious = [iou(xyxy(a["bbox"]), xyxy(d["box"])) for d in ds]
            matched = [d for d, v in zip(ds, ious) if v > 0.5]
            assert len(matched) == 1 and max(ious) >= 0.7
            assert matched[0]["category_id"] == a["category_id"]


def test_ensure_synthetic_refcoco(tmp_path):
    root = str(tmp_path / "ref")
    assert ensure_synthetic_refcoco(root, counts=REF_SMALL)
    assert not ensure_synthetic_refcoco(root, counts=REF_SMALL)
    os.remove(os.path.join(root, REFCOCO_MARKER))
    assert ensure_synthetic_refcoco(root, counts=REF_SMALL)
    with pytest.raises(ValueError):
        generate_refcoco(root, counts=REF_SMALL, expression_types=("position",))


def test_refcoco_geometry_types(tmp_path):
    root = str(tmp_path / "geometry")
    generate_refcoco(root, counts={"train": 40, "val": 10, "testA": 5, "testB": 5}, seed=2,
                     expression_types=REFCOCO_GEOMETRY_TYPES)
    assert set(REFCOCO_GEOMETRY_TYPES) == {"biggest", "smallest", "leftmost", "rightmost"}
    # Every sentence is a geometry phrase (no color or shape named) and points at the right object.
    kinds, refs = _check_refs(root, uniform_index=False)
    assert set(kinds) == set(REFCOCO_GEOMETRY_TYPES), kinds
    assert len({r["image_id"] for r in refs}) == 60


@pytest.mark.parametrize("etype", ["leftmost", "rightmost"])
def test_refcoco_single_geometry_type(tmp_path, etype):
    # One ref per image at most (a single extreme object), and only when the gap allows it.
    root = str(tmp_path / etype)
    generate_refcoco(root, counts={"train": 15, "val": 0, "testA": 0, "testB": 0},
                     expression_types=(etype,))
    kinds, refs = _check_refs(root, uniform_index=False)
    assert set(kinds) == {etype}
    images = [r["image_id"] for r in refs]
    assert len(images) == len(set(images)) == 15


def test_refcoco_single_type(tmp_path):
    root = str(tmp_path / "color")
    generate_refcoco(root, counts={"train": 15, "val": 0, "testA": 0, "testB": 0},
                     expression_types=("color",))
    refs = _refs(root)
    assert all(len(s["tokens"]) in (2, 3) for r in refs for s in r["sentences"])
    # Two refs still happen with one type (on different objects).
    assert any(len([r for r in refs if r["image_id"] == i]) == 2 for i in {r["image_id"] for r in refs})


# -------------------------------------------------------------------------------------- CLI


def test_cli_formats(tmp_path, capsys):
    root = str(tmp_path / "vqa")
    argv = ["--format", "vqa", "--root", root, "--counts", "train2014=3", "val2014=2",
            "test2015=2", "--question-types", "color", "yesno", "--questions-per-image", "1"]
    synthetic.main(argv)
    assert "wrote 3 vqa train2014 images" in capsys.readouterr().out
    assert is_complete_vqa(root)
    assert len(_json(root, vqa_question_file("val2014"))["questions"]) == 2
    synthetic.main(argv)
    assert "already complete" in capsys.readouterr().out

    root = str(tmp_path / "ref")
    synthetic.main(["--format", "refcoco+", "--root", root, "--counts", "train=3", "val=1",
                    "testA=1", "testB=1", "--question-types", "biggest"])
    assert "wrote 3 refcoco+ train images" in capsys.readouterr().out
    assert is_complete_refcoco(root)
    assert all(s["sent"] in ("the biggest one", "the largest one", "biggest object")
               for r in _refs(root) for s in r["sentences"])

    root = str(tmp_path / "vcr")
    synthetic.main(["--root", root, "--counts", "train=2", "val=1", "test=1", "--val", "2"])
    with open(os.path.join(root, "val.jsonl")) as f:
        assert len(f.readlines()) == 2


@pytest.mark.parametrize("argv", [
    ["--format", "vqa", "--train", "3"],
    ["--format", "vqa", "--question-types", "leftmost"],
    ["--format", "refcoco+", "--question-types", "side"],
    ["--format", "refcoco+", "--counts", "train2014=3"],
    ["--format", "refcoco+", "--counts", "train=x"],
    ["--format", "refcoco+", "--questions-per-image", "1"],
    ["--question-types", "yesno"],
])
def test_cli_errors(tmp_path, argv):
    with pytest.raises(SystemExit) as e:
        synthetic.main(["--root", str(tmp_path / "x"), *argv])
    assert e.value.code == 2
