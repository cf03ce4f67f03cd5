"""Pictures of what the model answered and where it looked, drawn with detectron2's Visualizer
(and matplotlib for the attention heatmaps): :func:`draw_answer` and :func:`draw_attention` draw
a :class:`~vlbert_d2.engine.VLBertPredictor` result (``tools/demo.py``).

Drawing renders through matplotlib at the picture's own size and costs about 150 bytes per
pixel (a 12000 x 12000 photo: over 20 GB), so pictures are brought to a bounded size with
:func:`resize_for_drawing` before they are drawn on.
"""
import numpy as np

from detectron2.utils.visualizer import Visualizer

from .files import atomic_write

_REGION_COLOR = (0.55, 0.55, 0.55)
_CHOSEN_COLOR = (0.1, 0.75, 0.2)

DEFAULT_MIN_DRAW_SIZE = 480  # smaller pictures are enlarged, so that their text stays readable
DEFAULT_MAX_DRAW_SIZE = 1600  # larger ones are reduced, so that drawing needs bounded memory


def resize_for_drawing(image, boxes, min_size=DEFAULT_MIN_DRAW_SIZE, max_size=DEFAULT_MAX_DRAW_SIZE):
    """The image and its boxes at the size they are drawn at.

    A small image is enlarged by a whole factor (pixel-exact), to a longer side of at least
    ``min_size`` but at most ``max_size``; an image whose longer side exceeds ``max_size`` is
    reduced (area averaging) to exactly ``max_size``; others are returned as they are.

    Args:
        image (ndarray): (H, W, C) uint8, in any channel order (it is kept); contiguous, for
            a large one (else it is copied once at full size).
        boxes (ndarray): (N, 4) x1 y1 x2 y2 in the image's pixels.
        min_size (int): the longer side a small image is enlarged to (at least).
        max_size (int): the most the longer side may have; must be >= ``min_size``.

    Returns:
        (ndarray (H', W', C) uint8 with max(H', W') <= max_size (unless the input is
        already smaller), ndarray (N, 4) float32 boxes in the new pixels).
    """
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
    h, w = image.shape[:2]
    longer = max(h, w)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if longer > max_size:
        import cv2

        new_w, new_h = max(1, round(w * max_size / longer)), max(1, round(h * max_size / longer))
        # cv2 needs a contiguous array: pass one (a reversed-channel view, e.g. detectron2's
        # "BGR", would be copied here at full size; reversing it back gives the contiguous RGB).
        small = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=cv2.INTER_AREA)
        scale = np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
        return small.reshape(new_h, new_w, -1), boxes * scale
    factor = max(1, min(-(-min_size // longer), max_size // longer))
    if factor == 1:
        return image, boxes
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1), boxes * factor


def draw_prediction(image_rgb, boxes, lines, chosen=None, scores=None):
    """The image with its regions, the chosen one highlighted, and text lines in the corner.

    Args:
        image_rgb (ndarray): (H, W, 3) uint8 RGB, at its drawing size (see
            :func:`resize_for_drawing`).
        boxes (ndarray): (N, 4) regions x1 y1 x2 y2 in the image's pixels (the whole image
            excluded).
        lines (list[str]): text to write (answer, top-k scores, the question).
        chosen (int, collection of int or None): regions to highlight (the referred one for
            RefCOCO+, the objects the chosen answer mentions for VCR).
        scores (list[float] or None): a score to print on each region.

    Returns:
        ndarray (H, W, 3) uint8 RGB.
    """
    vis = Visualizer(image_rgb)
    chosen = set() if chosen is None else {chosen} if isinstance(chosen, int) else set(chosen)
    for i, box in enumerate(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)):
        picked = i in chosen
        color = _CHOSEN_COLOR if picked else _REGION_COLOR
        vis.draw_box(box, alpha=1.0 if picked else 0.6, edge_color=color,
                     line_style="-" if picked else "--")
        if scores is not None:
            vis.draw_text(f"{scores[i]:.2f}", (box[0] + 2, box[1] + 2), color=color,
                          horizontal_alignment="left", font_size=max(vis._default_font_size * 0.6, 6))
    h = image_rgb.shape[0]
    for k, line in enumerate(lines):
        vis.draw_text(line, (4, 4 + k * max(h * 0.06, 8)), color="w", horizontal_alignment="left",
                      font_size=max(vis._default_font_size * 0.7, 7))
    return vis.get_output().get_image()


def draw_answer(image_rgb, boxes, prediction):
    """The picture of a :class:`~vlbert_d2.engine.VLBertPredictor` answer: the regions and the
    text, with what the answer points at highlighted.

    * VQA: the question, the answer and the top-k answers with their scores;
    * RefCOCO+: the expression, the referred region highlighted, every region's score;
    * VCR: the question and the choices with their scores, the chosen one marked and the
      regions it mentions highlighted.

    Args:
        image_rgb (ndarray): (H, W, 3) uint8 RGB, at its drawing size (see
            :func:`resize_for_drawing`).
        boxes (ndarray): (N, 4) the prediction's ``boxes`` in the drawn picture's pixels.
        prediction (dict): what the predictor returned (its ``task`` and that task's keys).

    Returns:
        ndarray (H, W, 3) uint8 RGB.
    """
    task = prediction["task"]
    if task not in DRAWINGS:
        raise ValueError(f"no drawing for task {task!r} (register one with register_drawing)")
    return DRAWINGS[task](image_rgb, boxes, prediction)


# The demo's picture of each task's answer: task name (vlbert_d2/tasks.py) -> draw(image_rgb,
# boxes, prediction) -> (H, W, 3) uint8 RGB; and the JSON summary of the answer tools/demo.py
# writes: task name -> summary(prediction) -> dict.
DRAWINGS = {}
SUMMARIES = {}


def register_drawing(task_name, draw, summary):
    """Register how the demo draws and summarises the answers of the task ``task_name``:
    ``draw(image_rgb, boxes, prediction)`` -> RGB picture, ``summary(prediction)`` -> a
    JSON-serialisable dict."""
    DRAWINGS[task_name], SUMMARIES[task_name] = draw, summary


def summarize_answer(prediction):
    """The JSON-serialisable summary of a predictor answer (the demo's line per image)."""
    return SUMMARIES[prediction["task"]](prediction)


def _draw_vqa(image_rgb, boxes, prediction):
    lines = [f"Q: {prediction['question']}", f"A: {prediction['answer']}"] + [
        f"  {a}: {s:.2f}" for a, s in prediction["top_k"]]
    return draw_prediction(image_rgb, boxes, lines)


def _draw_refcoco(image_rgb, boxes, prediction):
    region = prediction["region"]
    best = "the whole image" if region is None else f"region {region}"
    return draw_prediction(image_rgb, boxes, [f"\"{prediction['expression']}\"", f"-> {best}"],
                           chosen=region, scores=prediction["scores"][1:].tolist())


def _draw_vcr(image_rgb, boxes, prediction):
    best = prediction["answer"]
    lines = [f"Q: {prediction['question']}"] + [
        f"{'>' if k == best else ' '} {_text(c)}: {float(s):.2f}"
        for k, (c, s) in enumerate(zip(prediction["choices"], prediction["scores"]))]
    return draw_prediction(image_rgb, boxes, lines, chosen=prediction["mentioned"])


register_drawing("vqa", _draw_vqa,
                 lambda p: {"answer": p["answer"], "top_k": [[a, s] for a, s in p["top_k"]]})
register_drawing("refcoco", _draw_refcoco, lambda p: {"index": p["index"], "box": p["box"]})
register_drawing("vcr", _draw_vcr, lambda p: {"answer": p["answer"], "scores": p["scores"].tolist(),
                                              "objects": p["mentioned"]})


def _text(tokens):
    """A VCR text as written (a string, or a token list of words and region-index lists)."""
    if isinstance(tokens, str):
        return tokens
    return " ".join(t if isinstance(t, str) else "[" + ",".join(str(k) for k in t) + "]" for t in tokens)


def draw_attention(image_rgb, boxes, attention, layer, heads=None):
    """The two attention views of one layer of a predictor's ``attention`` output: lines from
    the words to the regions (the paper's Figure 3; the heads averaged) and one text-to-region
    heatmap per head.

    Args:
        image_rgb (ndarray): (H, W, 3) uint8 RGB, at its drawing size.
        boxes (ndarray): (N, 4) the regions in the drawn picture's pixels (the whole image
            excluded).
        attention (dict): ``prediction["attention"]`` (``tokens``, ``text_to_region``).
        layer (int): the layer (negative: from the last).
        heads (list[int] or None): the heads shown (None: all).

    Returns:
        (ndarray lines picture, ndarray heatmap picture), uint8 RGB.

    Raises:
        IndexError: no such layer or head.
    """
    weights = attention["text_to_region"]  # (layers, text_len, N + 1, A)
    num_layers, num_heads = weights.shape[0], weights.shape[-1]
    if not -num_layers <= layer < num_layers:
        raise IndexError(f"the model has {num_layers} layers, got {layer}")
    bad = [k for k in heads or () if not -num_heads <= k < num_heads]
    if bad:
        raise IndexError(f"the model has {num_heads} heads, got {bad[0]}")
    layer %= num_layers
    weights = weights[layer]
    if heads is not None:
        weights = weights[:, :, list(heads)]
    weights = np.asarray(weights, dtype=np.float32)
    tokens = attention["tokens"]
    # Region 0 (the whole image) has no box to draw a line to: lines go to the given boxes.
    lines = draw_attention_lines(image_rgb, boxes, tokens, weights[:, 1:].mean(-1), title=f"layer {layer}")
    heat = draw_attention_heatmap(tokens, ["image"] + [f"r{i}" for i in range(weights.shape[1] - 1)], weights,
                                  title=f"text-to-region attention, layer {layer}")
    return lines, heat


def draw_attention_lines(image_rgb, boxes, tokens, weights, title=""):
    """Paper Figure 3: lines from each text token (listed along the top) to each region's
    centre, whose opacity is the attention weight rescaled by the layer's maximum.

    Args:
        image_rgb (ndarray): (H, W, 3) uint8 RGB, at its drawing size (see
            :func:`resize_for_drawing`).
        boxes (ndarray): (N, 4) regions (the whole image excluded).
        tokens (list[str]): the text tokens.
        weights (ndarray): (len(tokens), N) attention of the tokens to the regions.
        title (str): written in the top-left corner.

    Returns:
        ndarray (H + band, W, 3) uint8 RGB: the tokens in a white band above the image.
    """
    h, w = image_rgb.shape[:2]
    band = max(int(h * 0.18), 24)  # a white band above the image for the tokens
    canvas = np.full((h + band, w, 3), 255, dtype=np.uint8)
    canvas[band:] = image_rgb
    vis = Visualizer(canvas)
    weights = np.asarray(weights, dtype=np.float64)
    scale = weights.max() if weights.size and weights.max() > 0 else 1.0
    xs = np.linspace(w * 0.05, w * 0.95, num=max(len(tokens), 1))
    font = max(vis._default_font_size * 0.55, 6)
    for t, token in enumerate(tokens):
        vis.draw_text(token, (xs[t], band * 0.35), color="w", rotation=45, font_size=font)
    for n, box in enumerate(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)):
        vis.draw_box((box[0], box[1] + band, box[2], box[3] + band), alpha=0.8, edge_color=_REGION_COLOR)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2 + band
        for t in range(len(tokens)):
            a = float(weights[t, n] / scale)
            if a > 0.05:
                vis.draw_line([xs[t], cx], [band * 0.7, cy], color=(0.85, 0.1, 0.1, a), linewidth=1 + 2 * a)
    if title:
        vis.draw_text(title, (4, 2), color="w", horizontal_alignment="left", font_size=font)
    return vis.get_output().get_image()


def draw_attention_heatmap(tokens, region_names, weights, title=""):
    """Text-to-region attention as one heatmap per head.

    Args:
        weights (ndarray): (len(tokens), len(region_names), heads).

    Returns:
        ndarray (H, W, 3) uint8 RGB.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    heads = weights.shape[2]
    cols = min(heads, 4)
    rows = (heads + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 0.3 * len(tokens) * rows + 1.2 * rows), dpi=80)
    FigureCanvasAgg(fig)
    for k in range(heads):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(weights[:, :, k], aspect="auto", cmap="viridis")
        ax.set_title(f"head {k}", fontsize=8)
        ax.set_yticks(range(len(tokens)))
        ax.set_yticklabels(tokens, fontsize=6)
        ax.set_xticks(range(len(region_names)))
        ax.set_xticklabels(region_names, fontsize=6, rotation=90)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_picture(path, image_rgb):
    """Write an RGB picture as a PNG, atomically.

    The PNG is encoded in memory and written to a temporary file beside ``path``, then renamed:
    ``cv2.imwrite`` reports a failed write only by returning False, and an interrupted write
    would leave a partial file under the final name.

    Args:
        path (str): the PNG to write.
        image_rgb (ndarray): (H, W, 3) uint8 RGB.

    Raises:
        OSError: the file could not be written (no partial file is left behind).
        ValueError: the picture could not be encoded.
    """
    import cv2

    ok, png = cv2.imencode(".png", np.ascontiguousarray(image_rgb[:, :, ::-1]))
    if not ok:
        raise ValueError(f"{path}: cannot encode a {image_rgb.shape} {image_rgb.dtype} picture as PNG")
    with atomic_write(path) as f:
        f.write(png.tobytes())
