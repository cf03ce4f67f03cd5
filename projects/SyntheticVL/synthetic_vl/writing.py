"""What the format writers share: atomic files, completion markers, per-subset random streams
and the checks of counts and types.

A dataset is complete when its marker file exists: :func:`start_generation` removes the marker
before anything is written and the writer puts it back (with the generation's settings) last,
so an interrupted run is never mistaken for a complete one.
"""
import json
import os
import zlib

import cv2
import numpy as np

from vlbert_d2.utils.files import atomic_write

# Image ids are offset per subset so that they are unique across subsets and a subset's ids do
# not depend on the other subsets' counts.
ID_STRIDE = 100000
MAX_IMAGES = ID_STRIDE - 1


def write_bytes(path, data):
    """Writes ``data`` to ``path`` atomically (no half-written file after a crash)."""
    with atomic_write(path) as f:
        f.write(data)


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_bytes(path, json.dumps(data).encode())


def write_jpeg(path, img):
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    write_bytes(path, jpg.tobytes())


def start_generation(root, marker):
    """Creates ``root`` and removes its completion marker; returns the marker's path."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, marker)
    # Removed first so that an interrupted run is never mistaken for a complete one.
    if os.path.exists(path):
        os.remove(path)
    return path


def ensure(is_complete, generate, root, kwargs):
    """``generate(root, **kwargs)`` unless ``is_complete(root)``; True when it generated."""
    if is_complete(root):
        return False
    generate(root, **kwargs)
    return True


def subset_rng(fmt, seed, subset):
    """The random stream of one subset (split) of one format."""
    # Seeding per subset keeps val/test identical when only the train count changes; the format
    # name keeps the streams apart from the VCR generator's for the same seed and split name.
    return np.random.default_rng([seed, zlib.crc32(fmt.encode()), zlib.crc32(subset.encode())])


def merge_counts(counts, defaults):
    """``{subset: images}``: ``counts`` over ``defaults``, checked."""
    if counts is None:
        return dict(defaults)
    unknown = set(counts) - set(defaults)
    if unknown:
        raise ValueError(f"unknown subsets {sorted(unknown)}; expected some of {list(defaults)}")
    merged = {s: int(counts.get(s, n)) for s, n in defaults.items()}
    bad = {s: n for s, n in merged.items() if not 0 <= n <= MAX_IMAGES}
    if bad:
        raise ValueError(f"image counts must be in [0, {MAX_IMAGES}], got {bad}")
    return merged


def check_types(types, known, what):
    """``types`` without duplicates; ValueError unless a non-empty subset of ``known``."""
    # Duplicates dropped: a VQA image's questions must be of distinct types.
    types = tuple(dict.fromkeys(types))
    unknown = [t for t in types if t not in known]
    if not types or unknown:
        raise ValueError(f"{what} must be a non-empty subset of {known}, got {types}")
    return types
