"""The synthetic scenes as a VCR dataset (multiple-choice Q->A and QA->R).

Every question can only be answered by looking at the image: the choices are built so that a
text-only model is at chance (25 %).

Layout under ``root`` (same as the official release)::

    train.jsonl, val.jsonl, test.jsonl
    vcr1images/<movie>/<name>.jpg    # BGR JPEG
    vcr1images/<movie>/<name>.json   # {"boxes", "segms", "names", "width", "height"}

Example:
    python -m synthetic_vl --root datasets/synthetic_vcr --seed 0
"""
import json
import os
import zlib

import numpy as np

from .scenes import PALETTE, QUADRANTS, quadrant, render, sample_scene
from .writing import start_generation, write_bytes, write_jpeg

DEFAULT_COUNTS = {"train": 2000, "val": 200, "test": 100}
VCR_QUESTION_TYPES = ("color", "position", "size")
IMAGES_PER_MOVIE = 100
MARKER = ".synthetic_complete"


def _shuffled_choices(rng, correct, pool):
    """Returns (4 options incl. ``correct`` in random order, index of correct)."""
    others = [p for p in pool if p != correct]
    picks = [others[k] for k in rng.permutation(len(others))[:3]]
    options = [correct] + picks
    perm = rng.permutation(4)
    return [options[k] for k in perm], int(np.flatnonzero(perm == 0)[0])


def _quadrant_rationales(rng, obj, quad):
    quads, label = _shuffled_choices(rng, quad, range(4))
    return [[[obj], "is", "at", "the", *QUADRANTS[q]] for q in quads], label


def _to_text(tokens, names):
    words = [t if isinstance(t, str) else " and ".join(f"{names[k]}{k}" for k in t)
             for t in tokens]
    return " ".join(words).replace(" ?", "?").replace(" .", ".")


def _make_record(rng, qtype, objects, width, height):
    """Builds question, choices and labels (the id fields are added by the caller)."""
    i = int(rng.integers(len(objects)))
    quad = [quadrant(o["box"], width, height) for o in objects]
    if qtype == "color":
        question = ["what", "color", "is", [i], "?"]
        colors, a_label = _shuffled_choices(rng, objects[i]["color"], list(PALETTE))
        answers = [["it", "is", c, "."] for c in colors]
        rationales, r_label = _quadrant_rationales(rng, i, quad[i])
    elif qtype == "position":
        question = ["where", "is", [i], "?"]
        quads, a_label = _shuffled_choices(rng, quad[i], range(4))
        answers = [list(QUADRANTS[q]) for q in quads]
        colors, r_label = _shuffled_choices(rng, objects[i]["color"], list(PALETTE))
        rationales = [[[i], "is", c] for c in colors]
    elif qtype == "size":
        big = int(np.argmax([o["size"] for o in objects]))
        question = ["which", "object", "is", "the", "biggest", "?"]
        objs, a_label = _shuffled_choices(rng, big, range(len(objects)))
        answers = [[[j]] for j in objs]
        rationales, r_label = _quadrant_rationales(rng, big, quad[big])
    else:
        raise ValueError(f"unknown question type {qtype!r}")
    return question, answers, a_label, rationales, r_label


def _generate_split(root, split, count, seed, image_size, question_types):
    width, height = image_size
    # Seeding per split keeps val/test identical when only the train count changes.
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    lines = []
    for n in range(count):
        qtype = question_types[rng.integers(len(question_types))]
        num = 4 if qtype == "size" else int(rng.integers(3, 6))
        objects = sample_scene(rng, num, width, height, distinct_sizes=qtype == "size")
        img, meta = render(rng, objects, width, height)
        movie, name = f"synth_{split}_{n // IMAGES_PER_MOVIE:04d}", f"{split}_{n:05d}"
        folder = os.path.join(root, "vcr1images", movie)
        os.makedirs(folder, exist_ok=True)
        write_jpeg(os.path.join(folder, name + ".jpg"), img)
        write_bytes(os.path.join(folder, name + ".json"), json.dumps(meta).encode())

        q, answers, a_label, rationales, r_label = _make_record(rng, qtype, objects, width, height)
        names = meta["names"]
        rec = {"movie": movie, "objects": names, "img_fn": f"{movie}/{name}.jpg",
               "metadata_fn": f"{movie}/{name}.json", "question": q,
               "answer_choices": answers, "rationale_choices": rationales}
        if split != "test":
            # *_orig would reveal the labels, so like the labels they are test-hidden.
            rec.update(answer_label=a_label, rationale_label=r_label,
                       answer_orig=_to_text(answers[a_label], names),
                       rationale_orig=_to_text(rationales[r_label], names))
        rec.update(annot_id=f"{split}-{n}", img_id=f"{split}-{n}", question_number=0,
                   question_orig=_to_text(q, names))
        lines.append(json.dumps(rec))
    write_bytes(os.path.join(root, f"{split}.jsonl"), ("\n".join(lines) + "\n").encode())
    return count


def generate_vcr(root, counts=None, seed=0, image_size=(192, 128),
                 question_types=VCR_QUESTION_TYPES):
    """Writes a synthetic dataset in the official VCR layout.

    Args:
        root: Output folder; receives ``{split}.jsonl`` and ``vcr1images/``.
        counts: ``{split: num_records}``; defaults to ``DEFAULT_COUNTS``. One
            record (question) per image.
        seed: Same seed gives byte-identical files.
        image_size: ``(width, height)`` in pixels.
        question_types: Subset of ``("color", "position", "size")``, drawn
            uniformly per record.

    Returns:
        ``{split: num_records}``. The ``test`` split has no ``answer_label`` /
        ``rationale_label`` (nor ``answer_orig`` / ``rationale_orig``), like the
        official test set. Size means side length / diameter, not area.
    """
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    question_types = tuple(question_types)
    marker = start_generation(root, MARKER)
    written = {split: _generate_split(root, split, int(c), seed, tuple(image_size), question_types)
               for split, c in counts.items()}
    info = {"seed": seed, "counts": written, "image_size": list(image_size),
            "question_types": list(question_types)}
    write_bytes(marker, json.dumps(info).encode())
    return written


def is_complete(root):
    """True if ``root`` holds all three splits and a finished-generation marker."""
    needed = [f"{s}.jsonl" for s in ("train", "val", "test")] + [MARKER]
    return all(os.path.isfile(os.path.join(root, f)) for f in needed)


def ensure_synthetic_vcr(root, **kwargs):
    """Generates the dataset unless a complete one already exists at ``root``.

    Args:
        root: Dataset folder.
        **kwargs: Forwarded to :func:`generate_vcr`. Not compared with an
            existing dataset; use ``generate_vcr`` to regenerate.

    Returns:
        True if it generated, False if the dataset was already complete.
    """
    if is_complete(root):
        return False
    generate_vcr(root, **kwargs)
    return True
