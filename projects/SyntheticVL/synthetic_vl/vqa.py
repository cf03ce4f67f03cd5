"""The synthetic scenes as a VQA v2 dataset (open-ended questions with 10 human answers each).

Every question needs the image: the answer cannot be predicted from the text alone. Besides
the images, each image gets a bottom-up-attention detection file (the objects' boxes with
noisy class scores), the precomputed regions the VQA loader reads.

Layout under ``root`` (that of the official release)::

    {train2014,val2014,test2015}/COCO_{subset}_{image_id:012d}.jpg       # BGR JPEG
    vqa/v2_OpenEnded_mscoco_{subset}_questions.json    # also test-dev2015 (half of test2015)
    vqa/v2_mscoco_{train2014,val2014}_annotations.json
    vgbua_res101_precomputed/trainval2014_resnet101_faster_rcnn_genome/{image_id}.json
    vgbua_res101_precomputed/test2015_resnet101_faster_rcnn_genome/{image_id}.json

Use one root per format: VQA and RefCOCO+ both write ``train2014/`` images with the same names.

Example:
    python -m synthetic_vl --format vqa --root datasets/synthetic_vqa
"""
import json
import os

from vlbert_d2.data.detections import encode_detection, write_detection

from .scenes import (PALETTE, QUADRANTS, SHAPES, biggest, class_scores, left_count, quadrant,
                     render, sample_scene_with_retries, xyxy)
from .writing import (ID_STRIDE, check_types, ensure, merge_counts, start_generation, subset_rng,
                      write_bytes, write_jpeg, write_json)

VQA_DEFAULT_COUNTS = {"train2014": 2000, "val2014": 300, "test2015": 100}
VQA_QUESTION_TYPES = ("color", "shape", "count", "yesno", "position", "side", "morethan",
                      "moreside")
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
_VQA_ID_BASE = {s: k * ID_STRIDE for k, s in enumerate(VQA_DEFAULT_COUNTS)}
_NUMBER_WORDS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six"}
# A correct human answer is written as a surface variant with this probability, for at most
# _MAX_VARIANTS of them, so that at least 6 answers are canonical and the canonical prediction
# scores 1 whatever the official normalisation does with the variants.
_VARIANT_RATE = 0.15
_MAX_VARIANTS = 2
_VQA_INFO = {"description": "Synthetic VQA v2-format dataset (vlbert_d2)", "version": "2.0",
             "contributor": "synthetic_vl", "url": ""}
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


def _vqa_question(rng, qtype, objects, width, height):
    """Returns (question, question_type, answer_type, canonical answer, same-type answers)."""
    big = objects[biggest(objects)]
    if qtype == "color":
        return ("what color is the biggest object?", "what color is", "other", big["color"],
                list(PALETTE))
    if qtype == "shape":
        return ("what shape is the biggest object?", "what shape is", "other", big["name"],
                list(SHAPES))
    if qtype == "count":
        return "how many objects are there?", "how many", "number", str(len(objects)), None
    if qtype == "yesno":
        # A fair coin, with a uniformly drawn wrong color on "no": then for every asked color
        # P(yes) = 1/6 * 1/2 = P(no) = 5/6 * 1/2 * 1/5, so the text alone gives nothing away.
        yes = bool(rng.random() < 0.5)
        others = [c for c in PALETTE if c != big["color"]]
        asked = big["color"] if yes else others[rng.integers(len(others))]
        return (f"is the biggest object {asked}?", "is the", "yes/no", "yes" if yes else "no",
                ["yes", "no"])
    if qtype == "position":
        where = " ".join(QUADRANTS[quadrant(big["box"], width, height)])
        return ("where is the biggest object?", "where is", "other", where,
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
        left = left_count(objects, width)
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
    answers += [(_wrong_answer(rng, answer_type, correct, pool), False)
                for _ in range(10 - n_right)]
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


_AGGREGATE_TYPES = ("count", "morethan", "moreside")


def _generate_vqa_subset(root, subset, count, seed, image_size, question_types, per_image):
    width, height = image_size
    rng = subset_rng("vqa", seed, subset)
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
        objects = sample_scene_with_retries(rng, num, width, height, distinct)
        while "moreside" in types and 2 * left_count(objects, width) == len(objects):
            # No tie between the sides.
            objects = sample_scene_with_retries(rng, num, width, height, distinct)
        img, _ = render(rng, objects, width, height)
        write_jpeg(os.path.join(root, vqa_image_file(subset, image_id)), img)
        write_detection(os.path.join(det_dir, f"{image_id}.json"),
                        encode_detection(image_id, width, height, [xyxy(o) for o in objects],
                                         classes=class_scores(rng, objects)))
        for k, qtype in enumerate(types):
            question_id = image_id * 1000 + k
            text, question_type, answer_type, answer, pool = _vqa_question(rng, qtype, objects,
                                                                           width, height)
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
    counts = merge_counts(counts, VQA_DEFAULT_COUNTS)
    question_types = check_types(question_types, VQA_QUESTION_TYPES, "question_types")
    per_image = min(int(questions_per_image), len(question_types))
    if per_image < 1:
        raise ValueError(f"questions_per_image must be >= 1, got {questions_per_image}")
    image_size = tuple(int(v) for v in image_size)
    marker = start_generation(root, VQA_MARKER)
    for subset, count in counts.items():
        questions, annotations = _generate_vqa_subset(root, subset, count, seed, image_size,
                                                      question_types, per_image)
        write_json(os.path.join(root, vqa_question_file(subset)),
                    _vqa_questions_json(subset, questions))
        if subset in VQA_LABELLED:
            write_json(os.path.join(root, vqa_annotation_file(subset)),
                        {"info": _VQA_INFO, "license": _LICENSE, "data_subtype": subset,
                         "annotations": annotations})
        else:
            # Whole images, so that no test-dev image has only some of its questions.
            last_dev_image = _VQA_ID_BASE[subset] + (count + 1) // 2
            dev = [q for q in questions if q["image_id"] <= last_dev_image]
            write_json(os.path.join(root, vqa_question_file(VQA_TEST_DEV)),
                        _vqa_questions_json(VQA_TEST_DEV, dev))
    info = {"format": "vqa", "seed": seed, "counts": counts, "image_size": list(image_size),
            "question_types": list(question_types), "questions_per_image": per_image}
    write_bytes(marker, json.dumps(info).encode())
    return counts


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
    return ensure(is_complete_vqa, generate_vqa, root, kwargs)
