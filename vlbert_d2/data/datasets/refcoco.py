"""RefCOCO+ (Kazemzadeh et al., 2014; UNC splits) in the REFER layout.

::

    <coco>/refcoco+/refs(unc).p          pickle: refs[].{ref_id, ann_id, image_id, category_id,
                                         split, sentences[].{sent, tokens, sent_id}}
    <coco>/refcoco+/instances.json       COCO format: images, annotations (bbox x, y, w, h)
    <coco>/refcoco+/proposal/res101_coco_minus_refer_notime_dets.json
                                         detected regions (MAttNet): [{image_id, box: [x, y, w, h]}]
    <coco>/train2014/COCO_train2014_{image_id:012d}.jpg

One dataset record per expression (sentence). The candidate regions are the image's ground-truth
annotations, or the detected regions of the proposals file.
"""
import json
import logging
import math
import os
from collections import defaultdict

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.files import atomic_write, read_json
from ..detections import DetectionFormatError, read_detection
from ...utils.safe_pickle import PLAIN_GLOBALS, restricted_load

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "testA", "testB")
PROPOSALS_FILE = os.path.join("refcoco+", "proposal", "res101_coco_minus_refer_notime_dets.json")


class RefCOCOFormatError(ValueError):
    """A RefCOCO+ file that does not follow the format; the message names file, record, field."""


def load_refs(path):
    """Read ``refs(unc).p`` without running anything: only plain containers may be in it."""
    try:
        refs = restricted_load(path, PLAIN_GLOBALS, what="a REFER refs file")
    except FileNotFoundError:
        raise FileNotFoundError(f"RefCOCO+ refs file not found: {path} (see datasets/README.md)") from None
    if not isinstance(refs, list):
        raise RefCOCOFormatError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def _xywh_to_xyxy(box, where, field):
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise RefCOCOFormatError(f"{where}: field '{field}' must be [x, y, w, h], got {box!r}") from None
    # A NaN corner reaches roi_align and fails there, iterations later, naming no file; a
    # zero-size box has no pixels to pool. Parts outside the image are clipped by the mapper
    # (and counted by the record check, vlbert_d2/data/validation.py).
    if not all(math.isfinite(v) for v in (x, y, x + w, y + h)):
        raise RefCOCOFormatError(f"{where}: field '{field}' has a non-finite value (NaN or infinity): {box!r}")
    if not (w > 0 and h > 0):
        raise RefCOCOFormatError(f"{where}: field '{field}' must have a positive width and height, got {box!r}")
    return [x, y, x + w, y + h]


def _positive_int(value):
    """``value`` as an int when it is a finite positive integer (JSON may give 1e999 = inf or
    NaN, whose int() raises a bare OverflowError / ValueError), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or value <= 0:
        return None
    return int(value)


def _load_json(path):
    return read_json(path, RefCOCOFormatError, "RefCOCO+ file", hint=" (see datasets/README.md)")


def load_instances(path):
    """Images ({id: {width, height}}) and annotation boxes ({ann_id: (image_id, xyxy)})."""
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise RefCOCOFormatError(f"{path}: expected a COCO instances file with 'images' and 'annotations'")
    images = {}
    for i, im in enumerate(data["images"]):
        try:
            image_id = int(im["id"])
            size = {"width": _positive_int(im["width"]), "height": _positive_int(im["height"])}
        except (KeyError, TypeError, ValueError, OverflowError):
            raise RefCOCOFormatError(f"{path}: images[{i}] needs integer 'id', 'width', 'height'") from None
        for field, value in size.items():
            if value is None:
                raise RefCOCOFormatError(f"{path}: images[{i}]: field '{field}' must be a positive integer, "
                                         f"got {im[field]!r}")
        images[image_id] = size
    anns = {}
    for i, a in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(a, dict) or "id" not in a or "image_id" not in a or "bbox" not in a:
            raise RefCOCOFormatError(f"{where}: needs 'id', 'image_id' and 'bbox'")
        if a["image_id"] not in images:
            raise RefCOCOFormatError(f"{where}: field 'image_id': image {a['image_id']} is not in 'images'")
        if a["id"] in anns:
            raise RefCOCOFormatError(f"{where}: field 'id': annotation {a['id']} occurs twice")
        anns[a["id"]] = (a["image_id"], _xywh_to_xyxy(a["bbox"], where, "bbox"))
    return images, anns


def load_proposals(path):
    """{image_id: [xyxy boxes]} from a MAttNet-style detections file."""
    data = _load_json(path)
    if isinstance(data, dict) and isinstance(data.get("dets"), list):  # REFER's own wrapper
        data = data["dets"]
    if not isinstance(data, list):
        raise RefCOCOFormatError(f"{path}: expected a list of {{image_id, box}}")
    out = defaultdict(list)
    for i, det in enumerate(data):
        where = f"{path}: [{i}]"
        if not isinstance(det, dict) or "image_id" not in det or "box" not in det:
            raise RefCOCOFormatError(f"{where}: needs 'image_id' and 'box'")
        out[det["image_id"]].append(_xywh_to_xyxy(det["box"], where, "box"))
    return dict(out)


def load_refcoco(refs_file, instances_file, image_dir, split, proposals_file=None):
    """Read and validate one split.

    Args:
        refs_file, instances_file (str): ``refs(unc).p`` and ``instances.json``.
        image_dir (str): the train2014 image folder.
        split (str): "train", "val", "testA" or "testB".
        proposals_file (str or None): detected regions instead of the ground-truth ones.

    Returns:
        list[dict]: per expression ``file_name``, ``image_id``, ``width``, ``height``,
        ``ref_id``, ``ann_id``, ``sent_id``, ``sentence``, ``gt_box`` (x1, y1, x2, y2),
        ``boxes`` (candidate regions, x1 y1 x2 y2), ``source``.
    """
    if split not in SPLITS:
        raise ValueError(f"RefCOCO+ split must be one of {SPLITS}, got {split!r}")
    refs = load_refs(refs_file)
    images, anns = load_instances(instances_file)
    image_anns = defaultdict(list)
    for ann_id, (image_id, box) in anns.items():
        image_anns[image_id].append(box)
    proposals = load_proposals(proposals_file) if proposals_file else None
    dicts = []
    for i, ref in enumerate(refs):
        where = f"{refs_file}: refs[{i}]"
        if not isinstance(ref, dict):
            raise RefCOCOFormatError(f"{where}: a ref must be a dict")
        for field in ("ref_id", "ann_id", "image_id", "split", "sentences"):
            if field not in ref:
                raise RefCOCOFormatError(f"{where}: missing field '{field}'")
        if ref["split"] != split:
            continue
        where = f"{where} (ref_id {ref['ref_id']})"
        image_id = ref["image_id"]
        if image_id not in images:
            raise RefCOCOFormatError(f"{where}: field 'image_id': image {image_id} is not in {instances_file}")
        if ref["ann_id"] not in anns:
            raise RefCOCOFormatError(f"{where}: field 'ann_id': annotation {ref['ann_id']} is not in {instances_file}")
        if anns[ref["ann_id"]][0] != image_id:
            raise RefCOCOFormatError(f"{where}: field 'ann_id': annotation {ref['ann_id']} belongs to image "
                                     f"{anns[ref['ann_id']][0]}, not to the ref's image {image_id}")
        if proposals is not None:
            boxes = proposals.get(image_id)
            if not boxes:
                raise RefCOCOFormatError(f"{where}: image {image_id} has no region in {proposals_file}")
            if split == "train":
                # As the official detected-regions training ("proposal+gt"): the image's
                # ground-truth boxes are candidates too, so every expression has a positive.
                boxes = boxes + image_anns[image_id]
        else:
            boxes = image_anns[image_id]
        sentences = ref["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise RefCOCOFormatError(f"{where}: field 'sentences' must be a non-empty list")
        for k, sent in enumerate(sentences):
            text = sent.get("sent") if isinstance(sent, dict) else None
            if not isinstance(text, str):
                raise RefCOCOFormatError(f"{where}: field 'sentences[{k}].sent' must be a string")
            dicts.append({
                "file_name": os.path.join(image_dir, f"COCO_train2014_{image_id:012d}.jpg"),
                "image_id": image_id, **images[image_id],
                "ref_id": ref["ref_id"], "ann_id": ref["ann_id"],
                "sent_id": sent.get("sent_id", f"{ref['ref_id']}-{k}"),
                "sentence": text, "gt_box": anns[ref["ann_id"]][1], "boxes": boxes,
                "source": f"{where} sentences[{k}]",
            })
    logger.info("Loaded %d RefCOCO+ expressions of split %s from %s (%s regions)", len(dicts), split,
                refs_file, "detected" if proposals_file else "ground-truth")
    return dicts


def write_proposals(detection_files, path):
    """Write the regions of per-image detection files (:mod:`vlbert_d2.data.detections`, e.g.
    those of ``tools/extract_regions.py``) as a proposals file of the MAttNet layout that
    :func:`load_proposals` reads: ``[{"image_id", "box": [x, y, w, h], "score"}]``.

    Args:
        detection_files (list[str]): one file per image; each is validated (a bad one raises
            naming the file and field) and must hold an integer ``image_id``.
        path (str): the proposals file, written atomically.

    Returns:
        dict: ``images`` read, ``boxes`` written, ``empty_boxes`` left out (zero width or height:
        nothing to pool; logged) and ``images_without_box`` (their ids; an expression on one of
        them stops the dataset's loading, naming the image).
    """
    dets, empty, no_box = [], 0, []
    for f in sorted(detection_files):
        det = read_detection(f)
        image_id = det["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise DetectionFormatError(f"{f}: field 'image_id' must be an integer (the COCO image id), "
                                       f"got {image_id!r}")
        kept = 0
        for x1, y1, x2, y2 in det["boxes"].tolist():
            if x2 > x1 and y2 > y1:
                dets.append({"image_id": image_id, "box": [x1, y1, x2 - x1, y2 - y1]})
                kept += 1
            else:  # no pixel to pool (a detector's regression can collapse a box)
                empty += 1
        if not kept:
            no_box.append(image_id)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as out:
        json.dump(dets, out)
    if empty:
        logger.warning("%s: left out %d boxes of zero width or height; %d images have no box left%s", path,
                       empty, len(no_box), f" (image ids {no_box[:10]})" if no_box else "")
    return {"images": len(detection_files), "boxes": len(dets), "empty_boxes": empty,
            "images_without_box": no_box}


def register_refcoco(name, root, split, detected=False, evaluator_type="refcoco", proposals_file=PROPOSALS_FILE):
    """Register one RefCOCO+ split under ``name`` (``detected``: the regions of ``proposals_file``,
    relative to ``root``; by default the MAttNet file of the official preparation)."""
    refs = os.path.join(root, "refcoco+", "refs(unc).p")
    instances = os.path.join(root, "refcoco+", "instances.json")
    proposals = os.path.join(root, proposals_file) if detected else None
    image_dir = os.path.join(root, "train2014")

    def load():
        from .. import check_datasets

        check_datasets([name])
        return load_refcoco(refs, instances, image_dir, split, proposals)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(refs_file=refs, instances_file=instances, proposals_file=proposals,
                                  image_root=image_dir, split=split, evaluator_type=evaluator_type)
