"""Visual Commonsense Reasoning (Zellers et al., 2019) in its official layout.

::

    <root>/train.jsonl, val.jsonl, test.jsonl     one annotation per line
    <root>/vcr1images/<movie>/<image>.jpg         the images (``img_fn``)
    <root>/vcr1images/<movie>/<image>.json        their metadata (``metadata_fn``): ``boxes``
                                                  [x1, y1, x2, y2, score], ``segms`` (polygons),
                                                  ``width``, ``height``

Each line: ``question``, ``answer_choices``, ``rationale_choices`` (token lists whose tokens are
words or lists of object indices), ``answer_label``, ``rationale_label`` (absent in test),
``objects`` (class names), ``img_fn``, ``metadata_fn``, ``annot_id``.
"""
import logging
import math
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.utils.logger import log_first_n

from ...config import VCR_NUM_CHOICES
from ...utils.files import iter_json_lines, read_json

logger = logging.getLogger(__name__)

# VCR's objects are named with the COCO thing classes, written without spaces ("diningtable").
VCR_CLASSES = [c["name"].replace(" ", "") for c in COCO_CATEGORIES if c["isthing"]]
NUM_CHOICES = VCR_NUM_CHOICES  # answer (and rationale) choices of every question
_REQUIRED = ("question", "answer_choices", "rationale_choices", "objects", "img_fn",
             "metadata_fn", "annot_id")


class VCRFormatError(ValueError):
    """An annotation that does not follow the VCR format; the message names file, line, field."""


def _check_tokens(tokens, num_objects, where, field):
    if not isinstance(tokens, list):
        raise VCRFormatError(f"{where}: field '{field}' must be a list of tokens, got {type(tokens).__name__}")
    for token in tokens:
        if isinstance(token, str):
            continue
        if (not isinstance(token, list) or not token
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in token)):
            raise VCRFormatError(f"{where}: field '{field}' has token {token!r}; a token is a "
                                 "word or a non-empty list of object indices")
        for i in token:
            if not 0 <= i < num_objects:
                raise VCRFormatError(f"{where}: field '{field}' refers to object {i} but the "
                                     f"record has {num_objects} objects")


def _check_label(record, field, where, required):
    if field not in record:
        if required:
            raise VCRFormatError(f"{where}: missing field '{field}'")
        return None
    label = record[field]
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_CHOICES:
        raise VCRFormatError(f"{where}: field '{field}' must be an integer in [0, {NUM_CHOICES}), got {label!r}")
    return label


def load_vcr_jsonl(jsonl_file, image_root, class_names=VCR_CLASSES, require_labels=True):
    """Read and validate a VCR annotation file.

    Args:
        jsonl_file (str): path of ``{split}.jsonl``.
        image_root (str): the ``vcr1images`` directory that ``img_fn``/``metadata_fn`` are
            relative to.
        class_names (list[str]): object class vocabulary (for the RoI classification loss).
        require_labels (bool): every record must carry ``answer_label`` and
            ``rationale_label`` (train and val); test records have none.

    Returns:
        list[dict]: one dataset dict per annotation, with ``file_name``, ``img_fn``, ``metadata_file``,
        ``image_id``, ``annot_id``, ``objects``, ``object_classes``, ``question``,
        ``answer_choices``, ``rationale_choices``, ``answer_label``, ``rationale_label``
        (None when absent) and ``source`` ("file:line", for error messages downstream).

    Raises:
        VCRFormatError: a malformed line, a missing field, a wrong number of choices, an object
            index out of range, an unknown class; FileNotFoundError: a missing image or
            metadata file. Every message names the file, the line and the field.
    """
    class_index = {name: i for i, name in enumerate(class_names)}
    dicts, seen = [], {}
    for where, record in iter_json_lines(jsonl_file, VCRFormatError, _REQUIRED):
        objects = record["objects"]
        if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
            raise VCRFormatError(f"{where}: field 'objects' must be a list of class names")
        classes = []
        for i, name in enumerate(objects):
            if name not in class_index:
                raise VCRFormatError(f"{where}: field 'objects[{i}]' is '{name}', not one of the "
                                     f"{len(class_names)} known classes")
            classes.append(class_index[name])
        _check_tokens(record["question"], len(objects), where, "question")
        for field in ("answer_choices", "rationale_choices"):
            choices = record[field]
            if not isinstance(choices, list) or len(choices) != NUM_CHOICES:
                n = len(choices) if isinstance(choices, list) else type(choices).__name__
                raise VCRFormatError(f"{where}: field '{field}' must hold {NUM_CHOICES} choices, got {n}")
            for k, choice in enumerate(choices):
                _check_tokens(choice, len(objects), where, f"{field}[{k}]")
        answer_label = _check_label(record, "answer_label", where, require_labels)
        rationale_label = _check_label(record, "rationale_label", where, require_labels)
        paths = {}
        for field in ("img_fn", "metadata_fn", "annot_id"):
            if not isinstance(record[field], str):
                raise VCRFormatError(f"{where}: field '{field}' must be a string, got {record[field]!r}")
        if record["annot_id"] in seen:
            raise VCRFormatError(f"{where}: field 'annot_id': '{record['annot_id']}' already used at "
                                 f"line {seen[record['annot_id']]}")
        seen[record["annot_id"]] = where.rsplit(":", 1)[1]
        for field in ("img_fn", "metadata_fn"):
            path = os.path.join(image_root, record[field])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{where}: field '{field}': file not found: {path}")
            paths[field] = path
        dicts.append({
            "file_name": paths["img_fn"],
            "img_fn": record["img_fn"],
            "metadata_file": paths["metadata_fn"],
            "image_id": record["annot_id"],
            "annot_id": record["annot_id"],
            "objects": objects,
            "object_classes": classes,
            "question": record["question"],
            "answer_choices": record["answer_choices"],
            "rationale_choices": record["rationale_choices"],
            "answer_label": answer_label,
            "rationale_label": rationale_label,
            "source": where,
        })
    logger.info("Loaded %d VCR annotations from %s", len(dicts), jsonl_file)
    return dicts


def load_vcr_metadata(path, num_objects, source):
    """Read an image's metadata JSON and check it against its annotation.

    Returns:
        dict with ``boxes`` (list of [x1, y1, x2, y2]), ``segms`` (per object, a list of
        polygons as flat [x0, y0, x1, y1, ...] lists; empty when absent), ``width``, ``height``.
    """
    try:  # the strict reader: invalid UTF-8, NaN, 1e999, huge integers and deep nesting refused
        meta = read_json(path, VCRFormatError, "metadata file")
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: field 'metadata_fn': file not found: {path}") from None
    except VCRFormatError as e:
        raise VCRFormatError(f"{e} (metadata of {source})") from None
    if not isinstance(meta, dict):
        raise VCRFormatError(f"{path}: expected a JSON object, got {type(meta).__name__} (metadata of {source})")
    for field in ("boxes", "width", "height"):
        if field not in meta:
            raise VCRFormatError(f"{path}: missing field '{field}' (metadata of {source})")
    boxes = meta["boxes"]
    if not isinstance(boxes, list) or len(boxes) != num_objects:
        n = len(boxes) if isinstance(boxes, list) else type(boxes).__name__
        raise VCRFormatError(f"{path}: field 'boxes' has {n} entries but {source} "
                             f"lists {num_objects} objects")
    sizes = []
    for field in ("width", "height"):
        value = meta[field]
        # json reads 1e999 as inf and NaN as nan: int() of those raises a bare OverflowError /
        # ValueError, so the value is checked before it is converted.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value != int(value) or value <= 0:
            raise VCRFormatError(f"{path}: field '{field}' must be a positive integer, got {value!r} "
                                 f"(metadata of {source})")
        sizes.append(int(value))
    width, height = sizes
    checked = []
    for i, box in enumerate(boxes):
        try:
            x1, y1, x2, y2 = (float(v) for v in box[:4])
        except (TypeError, ValueError):
            x1 = y1 = x2 = y2 = float("nan")
        # Finite with a positive area: an inverted or zero-area box has no pixels to pool (and a
        # NaN one poisons RoIAlign). Parts outside the image are clipped by the mapper, and
        # counted by the record check (vlbert_d2/data/validation.py).
        if not (isinstance(box, list) and len(box) >= 4 and x1 < x2 and y1 < y2
                and math.isfinite(x2 - x1 + y2 - y1)):
            raise VCRFormatError(f"{path}: field 'boxes[{i}]' is {box!r}; a box is [x1, y1, x2, y2, "
                                 f"score] with finite x1 < x2 and y1 < y2 (metadata of {source})")
        checked.append([x1, y1, x2, y2])
    segms = meta.get("segms") or [[] for _ in boxes]
    if not isinstance(segms, list) or len(segms) != num_objects:
        n = len(segms) if isinstance(segms, list) else type(segms).__name__
        raise VCRFormatError(f"{path}: field 'segms' has {n} entries but {source} "
                             f"lists {num_objects} objects")
    polygons = []
    for i, obj in enumerate(segms):
        try:
            ok = all(len(point) == 2 for poly in obj for point in poly)
            polys = [[float(v) for point in poly for v in point] for poly in obj] if ok else []
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise VCRFormatError(f"{path}: field 'segms[{i}]' must be a list of polygons of [x, y] "
                                 f"points (metadata of {source})")
        for k, poly in enumerate(polys):
            # A NaN or infinite vertex rasterises to a silently wrong (often empty) mask.
            if not all(math.isfinite(v) for v in poly):
                raise VCRFormatError(f"{path}: field 'segms[{i}][{k}]' has a non-finite coordinate "
                                     f"(NaN or infinity) (metadata of {source})")
        kept = [poly for poly in polys if len(poly) >= 6]
        if len(kept) < len(polys):
            # A polygon of fewer than 3 points has no area; the mask uses the others (or the box).
            log_first_n(logging.WARNING, f"{path}: segms[{i}]: skipped {len(polys) - len(kept)} "
                        "polygon(s) with fewer than 3 points", n=20, key="message")
        polygons.append(kept)
    return {"boxes": checked, "segms": polygons, "width": width, "height": height}


def register_vcr(name, root, split, class_names=VCR_CLASSES, evaluator_type="vcr"):
    """Register one split of a VCR-format dataset under ``name``.

    Loading is lazy (detectron2's DatasetCatalog); a missing file gives an error that names it
    and points to ``datasets/README.md``.
    """
    jsonl = os.path.join(root, f"{split}.jsonl")
    image_root = os.path.join(root, "vcr1images")

    def load():
        from .. import check_datasets  # the same message as the early check in tools/

        check_datasets([name])
        return load_vcr_jsonl(jsonl, image_root, class_names, require_labels=split != "test")

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=jsonl, image_root=image_root, split=split,
                                  thing_classes=list(class_names), evaluator_type=evaluator_type)
