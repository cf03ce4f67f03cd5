"""Deterministic synthetic scenes written in the official VCR file format.

The generated dataset lets the whole VL-BERT pipeline (loader, model, training
loop, evaluation) run end to end without the real VCR images. Every question
can only be answered by looking at the image: the choices are built so that a
text-only model is at chance (25 %).

Layout under ``root`` (same as the official release)::

    train.jsonl, val.jsonl, test.jsonl
    vcr1images/<movie>/<name>.jpg    # BGR JPEG
    vcr1images/<movie>/<name>.json   # {"boxes", "segms", "names", "width", "height"}

Example:
    python -m vlbert_d2.data.synthetic --root datasets/synthetic_vcr --seed 0

The same scenes in the VQA v2 and RefCOCO+ layouts: ``--format vqa`` / ``--format refcoco+``
(see :mod:`vlbert_d2.data.synthetic.coco_tasks`).
"""
import argparse
import json
import os
import time
import zlib

import cv2
import numpy as np

from ...utils.files import atomic_write

DEFAULT_COUNTS = {"train": 2000, "val": 200, "test": 100}
SHAPES = ("ball", "box", "kite")
# BGR values; chosen to stay far apart in color space even after JPEG.
PALETTE = {
    "red": (40, 40, 220),
    "green": (50, 170, 50),
    "blue": (210, 90, 30),
    "yellow": (30, 215, 235),
    "purple": (160, 50, 140),
    "orange": (20, 130, 250),
}
QUADRANTS = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))
MIN_SIZE, MAX_SIZE = 18, 50
SIZE_GAP = 6          # "biggest" must be obvious at a glance
MIDLINE_MARGIN = 8    # keeps each object's quadrant unambiguous
OBJECT_GAP = 2        # free pixels between any two bounding boxes
IMAGES_PER_MOVIE = 100
MARKER = ".synthetic_complete"


def _quadrant(box, width, height):
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return (0 if cy < height / 2 else 2) + (0 if cx < width / 2 else 1)


def _apart(a, b):
    g = OBJECT_GAP + 1  # boxes are inclusive pixel ranges
    return a[2] + g <= b[0] or b[2] + g <= a[0] or a[3] + g <= b[1] or b[3] + g <= a[1]


def _place(rng, sizes, width, height, tries=200):
    """Reject-samples non-overlapping boxes; returns None if the sizes do not fit."""
    boxes = []
    for s in sizes:
        s = int(s)
        for _ in range(tries):
            x1 = int(rng.integers(0, width - s))
            y1 = int(rng.integers(0, height - s))
            if (abs(x1 + s / 2 - width / 2) < MIDLINE_MARGIN
                    or abs(y1 + s / 2 - height / 2) < MIDLINE_MARGIN):
                continue
            box = (x1, y1, x1 + s, y1 + s)
            if all(_apart(box, b) for b in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _sample_scene(rng, num_objects, width, height, distinct_sizes=False):
    """Samples shape, color and size independently per object, then places them.

    Sizes are drawn i.i.d. (exchangeable over object indices) and redrawn
    together on failure, so no object index is systematically bigger.
    """
    for _ in range(1000):
        sizes = rng.integers(MIN_SIZE, MAX_SIZE + 1, num_objects)
        if distinct_sizes and np.any(np.diff(np.sort(sizes)) < SIZE_GAP):
            continue
        boxes = _place(rng, sizes, width, height)
        if boxes is not None:
            break
    else:
        raise ValueError(f"cannot place {num_objects} objects in a {width}x{height} image")
    colors = list(PALETTE)
    return [{"name": SHAPES[rng.integers(len(SHAPES))],
             "color": colors[rng.integers(len(colors))],
             "size": int(s), "box": b} for s, b in zip(sizes, boxes)]


def _polygon(name, box):
    x1, y1, x2, y2 = box
    if name == "box":
        return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
    if name == "kite":
        return [[(x1 + x2) / 2, y1], [x2, y2], [x1, y2]]
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    return [[round(cx + r * np.cos(a), 2), round(cy + r * np.sin(a), 2)] for a in t]


def _render(rng, objects, width, height):
    """Draws the scene; returns (BGR uint8 image, VCR metadata dict)."""
    bg = int(rng.choice([235, 245, 255]))
    img = np.full((height, width, 3), bg, np.uint8)
    # Fixed-point coordinates (shift=2) keep half-pixel centers exact.
    sh, scale = 2, 4
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        color = PALETTE[o["color"]]
        if o["name"] == "ball":
            center = (int((x1 + x2) * scale / 2), int((y1 + y2) * scale / 2))
            cv2.circle(img, center, int((x2 - x1) * scale / 2), color, -1, cv2.LINE_8, sh)
        else:
            pts = (np.array(_polygon(o["name"], o["box"])) * scale).astype(np.int32)
            cv2.fillPoly(img, [pts], color, cv2.LINE_8, sh)
    noise = rng.normal(0, 2.0, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    meta = {
        "boxes": [[float(v) for v in o["box"]] + [1.0] for o in objects],
        "segms": [[[[float(x), float(y)] for x, y in _polygon(o["name"], o["box"])]]
                  for o in objects],
        "names": [o["name"] for o in objects],
        "width": width,
        "height": height,
    }
    return img, meta


def _shuffled_choices(rng, correct, pool):
    """Returns (4 options incl. ``correct`` in random order, index of correct)."""
    others = [p for p in pool if p != correct]
    picks = [others[k] for k in rng.permutation(len(others))[:3]]
    options = [correct] + picks
    perm = rng.permutation(4)
    return [options[k] for k in perm], int(np.flatnonzero(perm == 0)[0])


def _quadrant_rationales(rng, obj, quadrant):
    quads, label = _shuffled_choices(rng, quadrant, range(4))
    return [[[obj], "is", "at", "the", *QUADRANTS[q]] for q in quads], label


def _to_text(tokens, names):
    words = [t if isinstance(t, str) else " and ".join(f"{names[k]}{k}" for k in t)
             for t in tokens]
    return " ".join(words).replace(" ?", "?").replace(" .", ".")


def _make_record(rng, qtype, objects, width, height):
    """Builds question, choices and labels (the id fields are added by the caller)."""
    i = int(rng.integers(len(objects)))
    quad = [_quadrant(o["box"], width, height) for o in objects]
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


def _write_atomic(path, data):
    with atomic_write(path) as f:
        f.write(data)


def _generate_split(root, split, count, seed, image_size, question_types):
    width, height = image_size
    # Seeding per split keeps val/test identical when only the train count changes.
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    lines = []
    for n in range(count):
        qtype = question_types[rng.integers(len(question_types))]
        num = 4 if qtype == "size" else int(rng.integers(3, 6))
        objects = _sample_scene(rng, num, width, height, distinct_sizes=qtype == "size")
        img, meta = _render(rng, objects, width, height)
        movie, name = f"synth_{split}_{n // IMAGES_PER_MOVIE:04d}", f"{split}_{n:05d}"
        folder = os.path.join(root, "vcr1images", movie)
        os.makedirs(folder, exist_ok=True)
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        _write_atomic(os.path.join(folder, name + ".jpg"), jpg.tobytes())
        _write_atomic(os.path.join(folder, name + ".json"), json.dumps(meta).encode())

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
    _write_atomic(os.path.join(root, f"{split}.jsonl"), ("\n".join(lines) + "\n").encode())
    return count


def generate_vcr(root, counts=None, seed=0, image_size=(192, 128),
                 question_types=("color", "position", "size")):
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
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, MARKER)
    # Removed first so that an interrupted run is never mistaken for a complete one.
    if os.path.exists(marker):
        os.remove(marker)
    written = {split: _generate_split(root, split, int(c), seed, tuple(image_size), question_types)
               for split, c in counts.items()}
    info = {"seed": seed, "counts": written, "image_size": list(image_size),
            "question_types": list(question_types)}
    _write_atomic(marker, json.dumps(info).encode())
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


def _disk_usage(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


# Default output folder per --format: the folders that vlbert_d2.data registers.
_DEFAULT_ROOTS = {"vcr": "datasets/synthetic_vcr", "vqa": "datasets/synthetic_vqa",
                  "refcoco+": "datasets/synthetic_refcoco", "captions": "datasets/synthetic_captions"}
VCR_QUESTION_TYPES = ("color", "position", "size")


def _parse_counts(p, items, defaults):
    counts = dict(defaults)
    for item in items:
        split, sep, n = item.partition("=")
        if not sep or split not in defaults or not n.isdigit():
            p.error(f"--counts {item!r}: expected SPLIT=N with SPLIT one of {', '.join(defaults)}")
        counts[split] = int(n)
    return counts


def main(argv=None):
    # Imported here: coco_tasks imports this module's helpers.
    from .captions import CAPTION_FORMATS
    from .coco_tasks import FORMATS

    formats = {"vcr": (generate_vcr, ensure_synthetic_vcr, DEFAULT_COUNTS, VCR_QUESTION_TYPES,
                       "question_types"), **FORMATS, **CAPTION_FORMATS}
    p = argparse.ArgumentParser(
        prog="python -m vlbert_d2.data.synthetic",
        description="Write a deterministic synthetic dataset (colored balls, boxes and "
                    "kites) in the official VCR format: {train,val,test}.jsonl plus "
                    "vcr1images/<movie>/<name>.{jpg,json}; or, with --format, in the VQA v2 "
                    "or RefCOCO+ (REFER) layout (see vlbert_d2/data/synthetic/coco_tasks.py), or "
                    "pre-training captions in the Conceptual Captions layout plus a text corpus "
                    "(vlbert_d2/data/synthetic/captions.py).")
    p.add_argument("--format", choices=list(formats), default="vcr",
                   help="dataset format (default: %(default)s)")
    p.add_argument("--root", default=None,
                   help="output folder (default: " + ", ".join(
                       f"{v} for {k}" for k, v in _DEFAULT_ROOTS.items()) + ")")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    for split, n in DEFAULT_COUNTS.items():
        # None marks "not given": these options belong to VCR, other formats refuse them.
        p.add_argument(f"--{split}", type=int, default=None, help=f"VCR {split} records (default: {n})")
    p.add_argument("--counts", nargs="+", default=[], metavar="SPLIT=N",
                   help="images (vcr: records) per split; splits not named keep their defaults "
                        "(" + "; ".join(f"{k}: " + " ".join(f"{s}={n}" for s, n in v[2].items())
                                        for k, v in formats.items()) + ")")
    p.add_argument("--image-size", type=int, nargs=2, default=(192, 128), metavar=("W", "H"),
                   help="image width and height (default: 192 128)")
    p.add_argument("--question-types", nargs="+", default=None, metavar="TYPE",
                   help="question types (refcoco+: expression types) to draw from, default all ("
                        + "; ".join(f"{k}: {' '.join(v[3])}" for k, v in formats.items()) + ")")
    p.add_argument("--questions-per-image", type=int, default=None,
                   help="vqa only: questions per image, of distinct types (default: 2)")
    p.add_argument("--force", action="store_true", help="regenerate even if a complete dataset exists")
    args = p.parse_args(argv)

    generate, ensure, defaults, known, types_key = formats[args.format]
    if args.format != "vcr":
        given = [f"--{s}" for s in DEFAULT_COUNTS if getattr(args, s) is not None]
        if given:
            p.error(f"{'/'.join(given)} are VCR options; for {args.format} use --counts "
                    f"with splits {', '.join(defaults)}")
    if args.questions_per_image is not None and args.format != "vqa":
        p.error("--questions-per-image is a vqa option")
    counts = _parse_counts(p, args.counts, defaults)
    for split in DEFAULT_COUNTS if args.format == "vcr" else ():
        if getattr(args, split) is not None:
            counts[split] = getattr(args, split)
    types = tuple(args.question_types or known)
    unknown = [t for t in types if t not in known]
    if unknown:
        p.error(f"--question-types {' '.join(unknown)}: not a {args.format} type "
                f"(choose from {', '.join(known)})")
    root = args.root or _DEFAULT_ROOTS[args.format]
    kwargs = {"counts": counts, "seed": args.seed, "image_size": tuple(args.image_size),
              types_key: types}
    if args.questions_per_image is not None:
        kwargs["questions_per_image"] = args.questions_per_image

    start = time.time()
    if args.force:
        generate(root, **kwargs)
    elif not ensure(root, **kwargs):
        print(f"{root} is already complete; use --force to regenerate")
        return
    if args.format == "vcr":
        for split, n in counts.items():
            print(f"wrote {n} records to {os.path.join(root, split + '.jsonl')}")
        print(f"images under {os.path.join(root, 'vcr1images')}; "
              f"{_disk_usage(root) / 2**20:.1f} MiB in {time.time() - start:.1f} s")
    else:
        for split, n in counts.items():
            print(f"wrote {n} {args.format} {split} images")
        print(f"{args.format} dataset under {root}; "
              f"{_disk_usage(root) / 2**20:.1f} MiB in {time.time() - start:.1f} s")
