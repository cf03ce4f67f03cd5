"""The scenes every format draws: colored balls, boxes and kites on a plain background.

Sampling (sizes, placement, shape and color per object), rendering (BGR image plus VCR-style
metadata) and the facts about a scene that the questions, expressions and captions ask about.
Boxes are inclusive pixel ranges ``(x1, y1, x2, y2)``: the shape covers pixels x1..x2.
"""
import cv2
import numpy as np

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
# A 5-object scene with sizes SIZE_GAP apart is rare among i.i.d. size draws (about 0.4 %), so
# one sample_scene call (1000 draws) fails now and then; a few more calls make it negligible.
SCENE_RETRIES = 10


def quadrant(box, width, height):
    """Index into :data:`QUADRANTS` of the box's centre."""
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


def sample_scene(rng, num_objects, width, height, distinct_sizes=False):
    """Samples shape, color and size independently per object, then places them.

    Sizes are drawn i.i.d. (exchangeable over object indices) and redrawn
    together on failure, so no object index is systematically bigger.

    Returns:
        A list of ``{"name", "color", "size", "box"}``. Raises ValueError when the objects
        do not fit (see :func:`sample_scene_with_retries`).
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


def sample_scene_with_retries(rng, num_objects, width, height, distinct_sizes):
    """:func:`sample_scene`, retried; retrying keeps the scene exchangeable over indices."""
    for _ in range(SCENE_RETRIES):
        try:
            return sample_scene(rng, num_objects, width, height, distinct_sizes=distinct_sizes)
        except ValueError as e:
            error = e
    raise error


def polygon(name, box):
    """The shape's outline as ``[[x, y], ...]`` in pixel coordinates."""
    x1, y1, x2, y2 = box
    if name == "box":
        return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
    if name == "kite":
        return [[(x1 + x2) / 2, y1], [x2, y2], [x1, y2]]
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    return [[round(cx + r * np.cos(a), 2), round(cy + r * np.sin(a), 2)] for a in t]


def render(rng, objects, width, height):
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
            pts = (np.array(polygon(o["name"], o["box"])) * scale).astype(np.int32)
            cv2.fillPoly(img, [pts], color, cv2.LINE_8, sh)
    noise = rng.normal(0, 2.0, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    meta = {
        "boxes": [[float(v) for v in o["box"]] + [1.0] for o in objects],
        "segms": [[[[float(x), float(y)] for x, y in polygon(o["name"], o["box"])]]
                  for o in objects],
        "names": [o["name"] for o in objects],
        "width": width,
        "height": height,
    }
    return img, meta


def biggest(objects):
    """Index of the biggest object."""
    return max(range(len(objects)), key=lambda i: objects[i]["size"])


def left_count(objects, width):
    """How many objects have their centre in the left half."""
    return sum((o["box"][0] + o["box"][2]) / 2 < width / 2 for o in objects)


def xyxy(obj):
    """The object's box as float x1, y1, x2, y2 with exclusive x2, y2.

    Scene boxes are inclusive pixel ranges (the shape covers pixels x1..x2), so the continuous
    box ends one pixel further.
    """
    x1, y1, x2, y2 = obj["box"]
    return [float(x1), float(y1), float(x2 + 1), float(y2 + 1)]


def class_scores(rng, objects):
    """(N, 1 + len(SHAPES)) detector class distributions; column 0 is background."""
    scores = np.zeros((len(objects), 1 + len(SHAPES)), np.float64)
    for k, o in enumerate(objects):
        true = 1 + SHAPES.index(o["name"])
        p = rng.uniform(0.8, 0.95)
        rest = rng.dirichlet(np.ones(len(SHAPES))) * (1 - p)
        scores[k, [j for j in range(scores.shape[1]) if j != true]] = rest
        scores[k, true] = p
    return scores
