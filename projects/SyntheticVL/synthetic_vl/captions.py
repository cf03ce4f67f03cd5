"""Synthetic pre-training data: captions in the Conceptual Captions layout, and a text corpus.

The scenes are those of the other synthetic datasets (colored balls, boxes and kites). Each
caption states facts that need the image (how many objects and how many on each side, always;
then where the biggest one is or what it is), so that masked language modelling with visual clues
has something to learn from the visual side. Layout under ``root`` (that of the official
preparation, images and detections inside uncompressed zip archives)::

    {train,val}_frcnn.json        # JSON lines {"image", "caption" (list of words), "frcnn"}
    {train,val}_image.zip         # <name>.jpg
    {train,val}_frcnn.zip         # <name>.json: bottom-up-attention format, with "classes"
                                  # (background + the 3 shapes)
    corpus_{train,val}.txt        # text corpus: one passage per line (as many as images),
                                  # describing scenes that are not drawn

Example:
    python -m synthetic_vl --format captions --root datasets/synthetic_captions
"""
import json
import os
import zipfile

import cv2

from vlbert_d2.data.detections import encode_detection

from .scenes import (QUADRANTS, biggest, class_scores, left_count, quadrant, render,
                     sample_scene_with_retries, xyxy)
from .writing import ensure, start_generation, subset_rng, write_bytes

CAPTION_DEFAULT_COUNTS = {"train": 2000, "val": 200}
CAPTION_TYPES = ("count", "sides", "biggest", "where")
# Accepted, not drawn by default: "objects" names every object with its colour, shape and
# quadrant ("a red kite at the top left, ..."), so that a masked region's class can be told from
# the caption and the region's place (make demo-pipeline's pre-training: masked RoI
# classification against the detector's class distributions).
CAPTION_EXTRA_TYPES = ("objects",)
CAPTION_MARKER = ".synthetic_captions_complete"
_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def _sentence(ctype, objects, width, height):
    big = objects[biggest(objects)]
    if ctype == "count":
        n = len(objects)
        verb, plural = ("is", "") if n == 1 else ("are", "s")
        return f"there {verb} {_WORDS[n]} object{plural} in the picture."
    if ctype == "sides":
        left = left_count(objects, width)
        right = len(objects) - left
        return f"{_WORDS.get(left, 'no')} on the left and {_WORDS.get(right, 'none')} on the right."
    if ctype == "biggest":
        article = "an" if big["color"][0] in "aeiou" else "a"
        return f"the biggest object is {article} {big['color']} {big['name']}."
    if ctype == "where":
        top, side = QUADRANTS[quadrant(big["box"], width, height)]
        return f"the biggest one is at the {top} {side}."
    if ctype == "objects":
        parts = []
        for o in sorted(objects, key=lambda o: (o["box"][0] + o["box"][2], o["box"][1])):  # left to right
            top, side = QUADRANTS[quadrant(o["box"], width, height)]
            article = "an" if o["color"][0] in "aeiou" else "a"
            parts.append(f"{article} {o['color']} {o['name']} at the {top} {side}")
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"there is {listed}."
    raise ValueError(f"unknown caption type {ctype!r}")


# Sentences every caption has (when among the types): the facts that need all the regions. Then
# one more of the other types, drawn.
_ALWAYS = ("count", "sides", "objects")


def _caption(rng, objects, width, height, types):
    chosen = [t for t in _ALWAYS if t in types]
    others = [t for t in types if t not in _ALWAYS]
    if others:
        chosen.append(others[int(rng.integers(len(others)))])
    return " ".join(_sentence(t, objects, width, height) for t in chosen)


def _write_zip(path, members):
    tmp = path + ".tmp"
    # Stored, not deflated: the official archives are uncompressed, so members can be read by
    # seeking (vlbert_d2.utils.files.read_bytes).
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in members:
            # A fixed timestamp: the same seed gives byte-identical archives.
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    os.replace(tmp, path)


def _generate_split(root, split, count, seed, image_size, types):
    width, height = image_size
    rng = subset_rng("captions", seed, split)
    images, detections, lines = [], [], []
    for n in range(count):
        name = f"{split}_{n:06d}"
        objects = sample_scene_with_retries(rng, int(rng.integers(2, 6)), width, height, True)
        img, _ = render(rng, objects, width, height)
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        images.append((f"{name}.jpg", jpg.tobytes()))
        det = encode_detection(n, width, height, [xyxy(o) for o in objects],
                               classes=class_scores(rng, objects))
        detections.append((f"{name}.json", json.dumps(det).encode()))
        caption = _caption(rng, objects, width, height, types)
        lines.append(json.dumps({"image": f"{split}_image.zip@/{name}.jpg",
                                 "caption": caption.split(),
                                 "frcnn": f"{split}_frcnn.zip@/{name}.json"}))
    _write_zip(os.path.join(root, f"{split}_image.zip"), images)
    _write_zip(os.path.join(root, f"{split}_frcnn.zip"), detections)
    write_bytes(os.path.join(root, f"{split}_frcnn.json"), ("\n".join(lines) + "\n").encode())

    # Text corpus: descriptions of scenes that are not drawn (language only).
    passages = []
    for _ in range(count):
        objects = sample_scene_with_retries(rng, int(rng.integers(2, 6)), width, height, True)
        passages.append(" ".join(_sentence(t, objects, width, height) for t in CAPTION_TYPES))
    write_bytes(os.path.join(root, f"corpus_{split}.txt"), ("\n".join(passages) + "\n").encode())


def generate_captions(root, counts=None, seed=0, image_size=(192, 128),
                      caption_types=CAPTION_TYPES):
    """Write synthetic captions and a text corpus (see the module docstring).

    Args:
        root: output folder.
        counts: ``{"train": n, "val": n}`` images (missing splits: :data:`CAPTION_DEFAULT_COUNTS`).
        seed: same seed, same files.
        image_size: ``(width, height)``.
        caption_types: the sentences of a caption (:data:`CAPTION_TYPES`, and
            :data:`CAPTION_EXTRA_TYPES` when asked for): "count", "sides" and "objects" when
            given, plus one drawn from the others.

    Returns:
        ``{split: num_images}``.
    """
    counts = {**CAPTION_DEFAULT_COUNTS, **(counts or {})}
    unknown = set(counts) - set(CAPTION_DEFAULT_COUNTS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; "
                         f"expected some of {list(CAPTION_DEFAULT_COUNTS)}")
    types = tuple(dict.fromkeys(caption_types))
    bad = [t for t in types if t not in CAPTION_TYPES + CAPTION_EXTRA_TYPES]
    if not types or bad:
        raise ValueError(f"caption_types must be a non-empty subset of {CAPTION_TYPES + CAPTION_EXTRA_TYPES}, "
                         f"got {caption_types}")
    marker = start_generation(root, CAPTION_MARKER)
    for split, count in counts.items():
        _generate_split(root, split, int(count), seed, tuple(int(v) for v in image_size), types)
    info = {"format": "captions", "seed": seed, "counts": counts, "image_size": list(image_size),
            "caption_types": list(types)}
    write_bytes(marker, json.dumps(info).encode())
    return counts


def is_complete_captions(root):
    needed = [f"{s}_{k}" for s in CAPTION_DEFAULT_COUNTS
              for k in ("frcnn.json", "image.zip", "frcnn.zip")]
    needed += [f"corpus_{s}.txt" for s in CAPTION_DEFAULT_COUNTS] + [CAPTION_MARKER]
    return all(os.path.isfile(os.path.join(root, f)) for f in needed)


def ensure_synthetic_captions(root, **kwargs):
    """Generate unless a complete dataset exists at ``root``; True when it generated."""
    return ensure(is_complete_captions, generate_captions, root, kwargs)
