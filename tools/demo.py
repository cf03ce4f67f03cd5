#!/usr/bin/env python
"""Run a trained VL-BERT on your own image(s) and draw the result and its attention.

    # VQA: the answer and its top-k scores; regions from a detection file (bottom-up format)
    python tools/demo.py --config-file configs/quick_schedules/VLBERT-Tiny-SyntheticVQA.yaml \\
        --weights output/tiny_synthetic_vqa/model_final.pth --input image.jpg \\
        --question "how many objects are there?" --boxes image_detections.json --output demo_out
    # VCR (Q->A): the chosen answer and the objects it mentions; [k] refers to region k
    python tools/demo.py --config-file configs/quick_schedules/VLBERT-Tiny-SyntheticVCR.yaml \\
        --weights output/tiny_synthetic_vcr/model_final.pth --input image.jpg --boxes boxes.json \\
        --objects ball box kite --question "which object is the biggest ?" --choices "[0]" "[1]" "[2]"
    # RefCOCO+: the referred region
    python tools/demo.py --config-file "configs/quick_schedules/VLBERT-Tiny-SyntheticRefCOCO+.yaml" \\
        --weights "output/tiny_synthetic_refcoco+/model_final.pth" --input image.jpg \\
        --expression "the biggest one" --boxes boxes.json --output demo_out

    # regions found by the bottom-up-attention detector instead of given boxes
    python tools/demo.py --config-file configs/quick_schedules/VLBERT-Tiny-SyntheticVQA.yaml \\
        --weights output/tiny_synthetic_vqa/model_final.pth --input image.jpg \\
        --question "how many objects are there?" --detector-weights faster_rcnn_from_caffe_attr.pkl \\
        --detector-opts "MODEL.BUA.MAX_BOXES 20"

--boxes is a detection JSON of the bottom-up-attention format (as the VQA loader reads) or a JSON
list of [x1, y1, x2, y2] in the image's pixels; with a folder of images, a folder holding
``<image stem>.json`` per image. Or the regions come from the detector of
projects/BottomUpAttention (--detector-weights, --detector-config, --detector-opts; the same code
as tools/extract_regions.py), and are also written as ``<stem>_detections.json`` (usable as
--boxes).

Outputs, in --output (created if needed), per image: ``<stem>_answer.png`` and, for the chosen
layers, ``<stem>_attention_L<l>.png`` (lines from the words to the regions, as the paper's
Figure 3, weights rescaled per layer) and ``<stem>_heatmap_L<l>.png`` (text-to-region attention
per head); with the detector also ``<stem>_detections.json``. Each file is written atomically
(a temporary file, then renamed) and checked; one JSON line per image on stdout gives the answer
and the files written.

Size: the model sees the image at the config's test size (INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST).
The pictures are drawn with the longer side at most --max-draw-size pixels (the cap, below):
larger images are reduced first, as drawing costs about 150 bytes per pixel (a 12000 x 12000
photo would need over 20 GB); small ones are enlarged to at least --draw-size. Images above
Pillow's decompression-bomb limit (about 179 megapixels) are refused.

The model runs through ``vlbert_d2.engine.VLBertPredictor`` (the same answers from Python in one
call: see its docstring); the pictures are drawn by ``vlbert_d2.utils.visualization``.

Errors: a missing, empty, truncated or non-image input, a bad --boxes file, or an output that
cannot be written stops the run with a message naming the file and exit status 1.
"""
import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys

import numpy as np

from detectron2.config import get_cfg

from vlbert_d2 import add_vlbert_config
from vlbert_d2.checkpoint import CheckpointError
from vlbert_d2.data.common import read_image
from vlbert_d2.data.detections import DetectionFormatError, parse_detection, write_detection
from vlbert_d2.engine import PredictorInputError, VLBertPredictor
from vlbert_d2.utils.visualization import (DEFAULT_MAX_DRAW_SIZE, DEFAULT_MIN_DRAW_SIZE, draw_answer,
                                           draw_attention, resize_for_drawing, save_picture,
                                           summarize_answer)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTTOM_UP_PROJECT = os.path.join(REPO, "projects", "BottomUpAttention")
DETECTOR_CONFIG = os.path.join(BOTTOM_UP_PROJECT, "configs", "BUA-R101-C4-VG.yaml")


def setup_cfg(args):
    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.WEIGHTS = args.weights  # (VQA: the answers_vqa.txt beside it, found by the predictor)
    cfg.MODEL.DEVICE = args.device
    cfg.freeze()
    return cfg


def read_input_image(path, image_format):
    """Decode an input image at full resolution with the dataset mappers' reader, so that the
    model sees what it would in evaluation (EXIF orientation applied, 16-bit rescaled).

    Args:
        path (str): the image file.
        image_format (str): ``cfg.INPUT.FORMAT`` ("BGR": a channel-reversed view of RGB).

    Returns:
        ndarray (H, W, C) uint8.

    Raises:
        SystemExit: naming the file when it is missing, empty, not an image, truncated, or
            over Pillow's decompression-bomb limit.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise SystemExit(f"--input: image not found: {path}")
    if os.path.getsize(path) == 0:
        raise SystemExit(f"--input: {path} is empty (0 bytes), not an image")
    # Pillow's own message for a file that is no image shows a file object, not the name.
    # Opening reads the header only (and refuses decompression bombs, a non-OSError).
    try:
        Image.open(path).close()
    except UnidentifiedImageError:
        raise SystemExit(f"--input: {path} is not an image (or not in a format Pillow reads)") from None
    except (OSError, Image.DecompressionBombError) as e:
        raise SystemExit(f"--input: cannot read image {path}: {e}") from None
    # Corrupt data fails while decoding: OSError ("image file is truncated"), or the
    # SyntaxError/ValueError some of Pillow's decoders raise.
    try:
        return read_image(path, image_format, "--input", field="image")
    except (OSError, SyntaxError, ValueError) as e:
        raise SystemExit(str(e)) from None


@contextlib.contextmanager
def writing(path):
    """Turn a failed write of ``path`` into an exit (status 1) whose message names it."""
    try:
        yield path
    except OSError as e:
        raise SystemExit(f"cannot write {path}: {e.strerror or e}") from None


def prepare_output(folder):
    """Create the output folder, or stop (before the model is loaded) when it cannot be written."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"--output: cannot create the folder {folder}: {e.strerror or e}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(f"--output: the folder {folder} is not writable")


def read_boxes(path, width, height):
    """(N, 4) float32 boxes from a detection JSON or a list of [x1, y1, x2, y2]."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"--boxes: file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"--boxes: {path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        try:
            det = parse_detection(data, path)
        except DetectionFormatError as e:
            raise SystemExit(f"--boxes: {e}") from None
        if (det["image_w"], det["image_h"]) != (width, height):
            raise SystemExit(f"--boxes: {path} is for a {det['image_w']}x{det['image_h']} image, "
                             f"the input is {width}x{height}")
        return det["boxes"]
    boxes = np.asarray(data, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise SystemExit(f"--boxes: {path}: expected a non-empty list of [x1, y1, x2, y2]")
    return boxes


def import_bottom_up_attention():
    """The ``bua`` package of projects/BottomUpAttention: the installed one, else the checkout's,
    loaded under the name ``bua`` without adding the project to ``sys.path``."""
    if "bua" in sys.modules:
        return sys.modules["bua"]
    try:
        return importlib.import_module("bua")
    except ImportError:
        pass
    init = os.path.join(BOTTOM_UP_PROJECT, "bua", "__init__.py")
    spec = importlib.util.spec_from_file_location("bua", init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bua"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["bua"]
        raise
    return module


def build_detector(args):
    """The bottom-up-attention detector of projects/BottomUpAttention (None with --boxes): the
    predictor calls it on each image (as tools/extract_regions.py runs it)."""
    if args.detector_config is None and args.detector_weights is None:
        return None
    weights = args.detector_weights or ""
    if weights == "none":
        weights = ""  # random weights: tests and trials only
    elif not weights:
        raise SystemExit("--detector-config needs --detector-weights (faster_rcnn_from_caffe_attr.pkl; "
                         "'none': random weights)")
    elif not os.path.isfile(weights):
        raise SystemExit(f"--detector-weights: file not found: {weights}")
    config = args.detector_config or DETECTOR_CONFIG
    if not os.path.isfile(config):
        raise SystemExit(f"--detector-config: file not found: {config}")
    bua = import_bottom_up_attention()
    try:
        return bua.RegionDetector(bua.setup_detector_cfg(config, weights, args.detector_opts or "", args.device))
    except (ValueError, KeyError) as e:
        raise SystemExit(f"detector: {e}") from None


def write_detections(prediction, path, width, height, output):
    """The detector's regions as ``<stem>_detections.json`` (usable as --boxes); its path."""
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(output, f"{stem}_detections.json")
    record = import_bottom_up_attention().detection_record(stem, width, height, prediction["detections"])
    with writing(out):
        write_detection(out, record)  # atomic (tmp + rename)
    return out


def run_one(predictor, path, boxes_path, args):
    """Answer for one image and draw the answer and the attention views.

    Returns:
        (dict: the answer, list[str]: the files written)
    """
    image_bgr = read_input_image(path, "BGR")  # the one full-resolution copy
    h, w = image_bgr.shape[:2]
    boxes = None if predictor.detector is not None else read_boxes(boxes_path, w, h)
    texts = {"question": args.question, "expression": args.expression, "choices": args.choices}
    if args.choices is not None:
        texts["objects"] = args.objects
    try:
        prediction = predictor(image_bgr, boxes=boxes, attention=True, top_k=args.top_k,
                               **{k: v for k, v in texts.items() if v is not None})
    except PredictorInputError as e:
        found = " (found by the detector)" if e.argument in ("objects", "question", "choices") and boxes is None else ""
        raise SystemExit(f"--{e.argument}: {e.message}{found}") from None
    written = []
    boxes = prediction["boxes"]
    if prediction["detections"] is not None:
        if len(boxes) == 0:
            raise SystemExit(f"{path}: the detector found no region")
        written.append(write_detections(prediction, path, w, h, args.output))
    # The pictures are drawn at a capped size (drawing at full resolution took over 20 GB for a
    # 12000 x 12000 photo). A "BGR" image is a reversed view of contiguous RGB, so reversing it
    # back costs no copy, and the full-resolution image is dropped before anything is drawn.
    image_rgb, shown = resize_for_drawing(image_bgr[:, :, ::-1], boxes, args.draw_size, args.max_draw_size)
    del image_bgr
    stem = os.path.splitext(os.path.basename(path))[0]
    written.append(_save(draw_answer(image_rgb, shown, prediction), os.path.join(args.output, f"{stem}_answer.png")))
    num_layers = len(prediction["attention"]["layers"])
    for layer in args.layers or [num_layers - 1]:
        try:
            lines, heat = draw_attention(image_rgb, shown, prediction["attention"], layer, args.heads)
        except IndexError as e:
            raise SystemExit(f"--{'layers' if 'layers' in str(e) else 'heads'}: {e}") from None
        layer %= num_layers
        written.append(_save(lines, os.path.join(args.output, f"{stem}_attention_L{layer}.png")))
        written.append(_save(heat, os.path.join(args.output, f"{stem}_heatmap_L{layer}.png")))
    return summary(prediction), written


def summary(prediction):
    """The JSON line of one image: what the model answered (the task's registered summary)."""
    return summarize_answer(prediction)


def list_inputs(input_path, boxes, use_detector):
    """The (image, boxes file or None) pairs to run, checked before the model is loaded.

    Raises:
        SystemExit: no image, a missing input, no folder of boxes for a folder of images, or
            two images with the same stem (their outputs would overwrite each other).
    """
    if not os.path.isdir(input_path):
        if not os.path.isfile(input_path):
            raise SystemExit(f"--input: image not found: {input_path}")
        return [(input_path, boxes)]
    images = sorted(os.path.join(input_path, f) for f in os.listdir(input_path)
                    if f.lower().endswith(IMAGE_EXTENSIONS))
    if not images:
        raise SystemExit(f"--input: no image in {input_path}")
    stems = [os.path.splitext(os.path.basename(im))[0] for im in images]
    clash = sorted({im for im, stem in zip(images, stems) if stems.count(stem) > 1})
    if clash:
        raise SystemExit(f"--input: images with the same name would write the same outputs: {clash}")
    if use_detector:
        return [(im, None) for im in images]
    if not os.path.isdir(boxes):
        raise SystemExit("--boxes: with a folder of images, give a folder of <stem>.json")
    return [(im, os.path.join(boxes, stem + ".json")) for im, stem in zip(images, stems)]


def _save(rgb, path):
    with writing(path):
        save_picture(path, rgb)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="a checkpoint (model_final.pth)")
    p.add_argument("--input", required=True, help="an image or a folder of images")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--question", help="VQA question, or VCR question (with --choices)")
    text.add_argument("--expression", help="RefCOCO+ referring expression")
    p.add_argument("--boxes",
                   help="regions: a detection JSON or a list of [x1, y1, x2, y2] (a folder of "
                        "<stem>.json with a folder of images); or use the detector (below)")
    det = p.add_argument_group("regions from the bottom-up-attention detector (instead of --boxes)")
    det.add_argument("--detector-weights", help="faster_rcnn_from_caffe_attr.pkl (or a detectron2 .pth); "
                     "'none': random weights (tests)")
    det.add_argument("--detector-config", help=f"detector config (default: {os.path.relpath(DETECTOR_CONFIG, REPO)})")
    det.add_argument("--detector-opts", help='detector config overrides in one string, e.g. '
                     '"MODEL.BUA.MAX_BOXES 20 MODEL.BUA.SCORE_THRESH 0.3"')
    p.add_argument("--choices", nargs="+", help="VCR answer choices; [k] in them and in the question "
                   "refers to region k of --boxes")
    p.add_argument("--objects", nargs="+", help="VCR: the class name of each region (default: 'object')")
    p.add_argument("--output", default="demo_output",
                   help="folder for the outputs, created if needed (default: %(default)s): per image "
                        "<stem>_answer.png, <stem>_attention_L<l>.png, <stem>_heatmap_L<l>.png and, with "
                        "the detector, <stem>_detections.json")
    p.add_argument("--top-k", type=int, default=5, help="VQA answers listed (default: %(default)s)")
    p.add_argument("--layers", type=int, nargs="*", help="layers of the attention view (default: the last)")
    p.add_argument("--heads", type=int, nargs="*", help="heads averaged in the line view (default: all)")
    p.add_argument("--draw-size", type=int, default=DEFAULT_MIN_DRAW_SIZE,
                   help="draw images whose longer side is shorter enlarged (by a whole factor) to at "
                        "least this (default: %(default)s)")
    p.add_argument("--max-draw-size", type=int, default=DEFAULT_MAX_DRAW_SIZE,
                   help="the cap: draw images whose longer side is longer reduced to this, which bounds "
                        "the memory drawing takes (about 150 bytes per drawn pixel; default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = p.parse_args(argv)
    use_detector = args.detector_weights is not None or args.detector_config is not None
    if use_detector == (args.boxes is not None):
        p.error("give the regions: --boxes, or the detector (--detector-weights), not both")
    if not 0 < args.draw_size <= args.max_draw_size:
        p.error(f"need 0 < --draw-size <= --max-draw-size, got {args.draw_size} and {args.max_draw_size}")
    pairs = list_inputs(args.input, args.boxes, use_detector)
    prepare_output(args.output)

    cfg = setup_cfg(args)
    detector = build_detector(args)
    try:  # .pkl through the restricted unpickler, .pth with weights_only=True: nothing runs
        predictor = VLBertPredictor(cfg, detector=detector)
    except CheckpointError as e:
        raise SystemExit(f"--weights: {e}") from None
    if predictor.task == "vcr" and args.choices is None:
        raise SystemExit("a VCR model needs --choices (and --question)")
    for image, boxes in pairs:
        summary_, written = run_one(predictor, image, boxes, args)
        print(json.dumps({"image": image, **summary_, "written": written}))


if __name__ == "__main__":
    sys.exit(main())
