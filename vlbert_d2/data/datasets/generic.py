"""Your own dataset without writing a loader: one JSON-lines file, one record per line.

Every record names an image and a text; its label decides the task (the *kind* of the file)::

    {"image": "imgs/1.jpg", "text": "what colour is the ball?", "answer": "red",
     "boxes": [[...], ...]}
    {"image": "imgs/2.jpg", "text": "which one is heavier ?", "choices": ["[0]", "[1]"], "label": 1,
     "boxes": [[...], [...]], "objects": ["ball", "box"]}
    {"image": "imgs/3.jpg", "text": "the ball left of the box", "box": [10, 20, 60, 80],
     "boxes": [[...], ...]}

* ``answer`` (or ``answers``, a list of human answers): an open answer, the VQA head
  (``VQAHead``, evaluator "vqa", submission file ``[{question_id, answer}]``);
* ``choices`` (2 or more texts, as many in every record of a file and at most
  ``MODEL.VLBERT.VCR.NUM_CHOICES``, 4 by default) and ``label`` (the index of the right one):
  multiple choice, the VCR head (``VCRHead`` with ``MODEL.VLBERT.VCR.TASK Q2A``, evaluator
  "vcr", predictions file ``{id: {scores, label}}``);
* ``box``: the region the text refers to, the RefCOCO+ head (``RefCOCOHead``, evaluator
  "refcoco", predictions file ``[{ref_id, sent_id, box}]``).

The regions are the record's ``boxes`` ([x1, y1, x2, y2] in pixels of the image) or those of a
detection folder in the bottom-up-attention format (``vlbert_d2/data/detections.py``) holding
``<image path without its extension>.json`` per image (``tools/extract_regions.py --input <image
root> --recursive --file-names stem`` writes them). Optional: ``id`` (default: the line number),
``objects`` (names of the regions, for ``[k]`` references in multiple-choice texts),
``answer_type`` (answer records: the category the accuracy is also reported by). The complete
description, with a worked example: ``docs/custom_datasets.md``.

Each record becomes the dataset dict the task's existing loader produces (``vqa.py``,
``vcr.py``, ``refcoco.py``), so the task's mapper, head, evaluator and submission writer are used
unchanged. Where those mappers read the regions from a file (the VQA detection file, the VCR
metadata file) and the record gives its boxes inline, the loader writes those files into one
uncompressed zip archive in the cache folder (``$VLBERT_D2_CACHE/generic_datasets``, else
``$XDG_CACHE_HOME/vlbert_d2/generic_datasets``), named by its content.

Register a file with :func:`register_generic_dataset`, or list it in the config key
``DATASETS.GENERIC`` (:func:`register_generic_from_cfg`, which ``tools/train_net.py`` calls).
"""
import hashlib
import io
import json
import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...tasks import get_task
from ...text import count_answer_vocab, normalize_answer, soft_scores
from ...utils.files import ZIP_SEPARATOR, atomic_write, iter_json_lines, path_exists, read_bytes
from ..detections import DetectionFormatError, encode_detection, read_detection

logger = logging.getLogger(__name__)

# kind -> (the task it trains (vlbert_d2/tasks.py: its head, and the evaluator_type of the
# dataset's metadata), the field that makes it)
KINDS = {
    "answer": ("vqa", "answer"),
    "choice": ("vcr", "choices"),
    "box": ("refcoco", "box"),
}
DEFAULT_OBJECT_NAME = "object"
# VQA's accuracy compares a prediction with 10 human answers; one given answer counts 10 times
# (then a right answer scores 1, a wrong one 0).
_HUMAN_ANSWERS = 10
# A word of a multiple-choice text that refers to regions: "[0]" or "[0,2]" (as tools/demo.py).
_REFERENCE = re.compile(r"^\[(\d+(?:,\d+)*)\]$")
_NO_CLASS = -100  # the RoI classification loss ignores the regions of generic records
# The fields that make a record of a kind.
_LABEL_FIELDS = (("choices", "choice"), ("box", "box"), ("answer", "answer"), ("answers", "answer"))


class GenericFormatError(ValueError):
    """A record that does not follow the generic format; the message names file, line and field."""


def generic_cache_dir():
    """Where the vocabularies and region archives of generic datasets go:
    ``$VLBERT_D2_CACHE/generic_datasets``, else ``$XDG_CACHE_HOME/vlbert_d2/generic_datasets``
    (default ``~/.cache/vlbert_d2/generic_datasets``)."""
    if os.environ.get("VLBERT_D2_CACHE"):
        return os.path.join(os.path.expanduser(os.environ["VLBERT_D2_CACHE"]), "generic_datasets")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vlbert_d2", "generic_datasets")


# ---------------------------------------------------------------------------------------------
# Fields


def _number(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _box(value, where, field):
    """[x1, y1, x2, y2] as floats, with x1 < x2 and y1 < y2."""
    if not (isinstance(value, list) and len(value) == 4 and all(_number(v) for v in value)
            and value[0] < value[2] and value[1] < value[3]):
        raise GenericFormatError(f"{where}: field '{field}' must be [x1, y1, x2, y2] in pixels "
                                 f"with x1 < x2 and y1 < y2, got {value!r}")
    return [float(v) for v in value]


def _text(value, where, field):
    if not isinstance(value, str) or not value.strip():
        raise GenericFormatError(f"{where}: field '{field}' must be a non-empty string, "
                                 f"got {value!r}")
    return value


def _kind_of(record):
    """The kind a record's fields make it ("answer" also for a record without a label)."""
    for kind in ("choice", "box"):
        if KINDS[kind][1] in record:
            return kind
    return "answer"


def _answers(record, where):
    """The record's answers, normalised as VQA normalises them, or None when it has none."""
    if "answer" in record and "answers" in record:
        raise GenericFormatError(f"{where}: fields 'answer' and 'answers': give one of them")
    if "answer" in record:
        raw, field = [_text(record["answer"], where, "answer")] * _HUMAN_ANSWERS, "answer"
    elif "answers" in record:
        raw, field = record["answers"], "answers"
        if not isinstance(raw, list) or not raw:
            raise GenericFormatError(f"{where}: field 'answers' must be a non-empty list of "
                                     f"strings, got {raw!r}")
        for i, a in enumerate(raw):
            _text(a, where, f"answers[{i}]")
    else:
        return None
    answers = [normalize_answer(a) for a in raw]
    for a, n in zip(raw, answers):
        if not n:
            raise GenericFormatError(f"{where}: field '{field}': the answer {a!r} is empty once "
                                     "normalised as VQA does (articles and punctuation dropped)")
    return answers


def _record_id(record, where, kind, line, seen):
    """The record's ``id`` (an integer for answer records: the submission's question_id), by
    default its line number; unique in the file."""
    rid = record.get("id", line)
    if kind == "answer":
        if isinstance(rid, bool) or not isinstance(rid, int):
            raise GenericFormatError(f"{where}: field 'id' must be an integer for answer records "
                                     f"(the question_id of the submission file), got {rid!r}")
    elif isinstance(rid, bool) or not isinstance(rid, (int, str)) or rid == "":
        raise GenericFormatError(f"{where}: field 'id' must be an integer or a non-empty string, "
                                 f"got {rid!r}")
    if rid in seen:
        default = "" if "id" in record else " (the default id is the line number)"
        raise GenericFormatError(f"{where}: field 'id': {rid!r} is already the id of line "
                                 f"{seen[rid]}{default}")
    seen[rid] = line
    return rid


def _tokens(text, num_regions, where, field):
    """A VCR token list: words, and ``[k]`` / ``[k,j]`` references to regions as index lists."""
    tokens = []
    for word in text.split():
        m = _REFERENCE.match(word)
        if m is None:
            tokens.append(word)
            continue
        refs = [int(k) for k in m.group(1).split(",")]
        bad = [k for k in refs if k >= num_regions]
        if bad:
            raise GenericFormatError(f"{where}: field '{field}' refers to region {bad[0]} "
                                     f"('{word}') but the record has {num_regions} regions "
                                     "(numbered from 0)")
        tokens.append(refs)
    return tokens


def _image_size(path, where):
    """(width, height) of an image as the mappers read it (EXIF orientation applied), from its
    header only."""
    from PIL import Image

    try:
        f = io.BytesIO(read_bytes(path)) if ZIP_SEPARATOR in path else open(path, "rb")
        with f, Image.open(f) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: field 'image': image not found: {path}") from None
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's errors on files it cannot read
        raise GenericFormatError(f"{where}: field 'image': cannot read image {path}: {e}") from None
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees
        width, height = height, width
    return width, height


# ---------------------------------------------------------------------------------------------
# Loading


class _Regions:
    """The regions of one record: boxes (list of [x1, y1, x2, y2]), the image size, and the
    detection file they come from (None for the record's own boxes)."""

    def __init__(self, boxes, width, height, detection_file=None):
        self.boxes, self.width, self.height = boxes, width, height
        self.detection_file = detection_file


def _regions(record, where, kind, image_path, image_name, detections, sizes):
    if "boxes" in record:
        boxes = record["boxes"]
        if not isinstance(boxes, list) or not boxes:
            raise GenericFormatError(f"{where}: field 'boxes' must be a non-empty list of "
                                     f"[x1, y1, x2, y2], got {boxes!r}")
        boxes = [_box(b, where, f"boxes[{i}]") for i, b in enumerate(boxes)]
        if image_path not in sizes:
            sizes[image_path] = _image_size(image_path, where)
        return _Regions(boxes, *sizes[image_path])
    if detections is None:
        raise GenericFormatError(f"{where}: missing field 'boxes' (the record's regions; or "
                                 "register the dataset with a detection folder: "
                                 "detections=<folder>)")
    relative = os.path.basename(image_name) if os.path.isabs(image_name) else image_name
    detection_file = os.path.join(detections, os.path.splitext(relative)[0] + ".json")
    missing = f"{where}: no field 'boxes' and no detection file {detection_file} for its image"
    if not path_exists(image_path):
        raise FileNotFoundError(f"{where}: field 'image': image not found: {image_path}")
    if kind == "answer":  # the VQA mapper reads the file itself (features included)
        if not path_exists(detection_file):
            raise FileNotFoundError(missing)
        return _Regions(None, None, None, detection_file)
    try:
        det = read_detection(detection_file)
    except FileNotFoundError:
        raise FileNotFoundError(missing) from None
    except DetectionFormatError as e:
        raise GenericFormatError(f"{where}: {e}") from None
    return _Regions(det["boxes"].tolist(), det["image_w"], det["image_h"], detection_file)


class _Member:
    """A region file inside the archive not yet written."""

    def __init__(self, name):
        self.name = name


class _RegionArchive:
    """The region files the VQA and VCR mappers read, for records that give their boxes inline:
    collected while loading, then written once as an uncompressed zip named by its content."""

    def __init__(self):
        self.members = {}

    def add(self, content):
        data = json.dumps(content, sort_keys=True).encode("utf-8")
        name = hashlib.sha1(data).hexdigest()[:24] + ".json"
        self.members[name] = data
        return name

    def write(self):
        """The archive's path (written unless it exists already)."""
        key = hashlib.sha1("\n".join(sorted(self.members)).encode("ascii")).hexdigest()[:24]
        folder = generic_cache_dir()
        path = os.path.join(folder, f"regions_{key}.zip")
        if not os.path.isfile(path):
            os.makedirs(folder, exist_ok=True)
            with atomic_write(path, "wb") as f:
                with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
                    for name in sorted(self.members):
                        archive.writestr(name, self.members[name])
            logger.info("Wrote the regions of %d records given inline to %s", len(self.members),
                        path)
        return path


def load_generic(jsonl_file, image_root=None, kind=None, detections=None, add_target_box=False):
    """Read and validate a generic JSON-lines file (see the module docstring).

    Args:
        jsonl_file (str): the file.
        image_root (str or None): the folder the records' relative ``image`` paths start from
            (default: the file's folder).
        kind (str or None): "answer", "choice" or "box"; None: that of the first record.
        detections (str or None): a folder of bottom-up-attention detection files
            (``<image path without extension>.json``), for records without ``boxes``.
        add_target_box (bool): box records: the target box is a candidate region too (as the
            official RefCOCO+ training on detected regions does), when it is not one already.

    Returns:
        list[dict]: the dataset dicts of the kind's task (those of ``load_vqa``,
        ``load_vcr_jsonl`` or ``load_refcoco``), each with ``source`` = "file:line".

    Raises:
        GenericFormatError: a malformed line, a missing or invalid field, a label out of range,
            records of different kinds; FileNotFoundError: a missing image or detection file.
            Every message names the file, the line and the field.
    """
    image_root = (os.path.dirname(jsonl_file) or ".") if image_root is None else image_root
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    dicts, seen, sizes, archive = [], {}, {}, _RegionArchive()
    first = {}  # what the first record decided: kind, labelled (answers), number of choices
    records = iter_json_lines(jsonl_file, GenericFormatError, ("image", "text"), skip_blank=True)
    for where, record in records:
        line = int(where.rsplit(":", 1)[1])
        if kind is None:
            kind = _kind_of(record)
            first["kind"] = line
        field = KINDS[kind][1]
        if kind != "answer" and field not in record:
            raise GenericFormatError(f"{where}: missing field '{field}' (a file of {kind} records)")
        for other_field, other in _LABEL_FIELDS:
            if other != kind and other_field in record:
                decided = f"line {first['kind']} decides" if "kind" in first else "as registered"
                raise GenericFormatError(f"{where}: field '{other_field}' makes this a {other} "
                                         f"record, in a file of {kind} records ({decided})")
        image_name = _text(record["image"], where, "image")
        image_path = os.path.join(image_root, image_name)
        text = _text(record["text"], where, "text")
        rid = _record_id(record, where, kind, line, seen)
        regions = _regions(record, where, kind, image_path, image_name, detections, sizes)
        d = {"file_name": image_path, "source": where}
        if regions.width is not None:
            d.update(width=regions.width, height=regions.height)
        args = (record, where, rid, image_name, text, regions)
        if kind == "answer":
            d.update(_answer_dict(*args, archive, first, line))
        elif kind == "choice":
            d.update(_choice_dict(*args, archive, first, line))
        else:
            d.update(_box_dict(*args, add_target_box))
        dicts.append(d)
    if archive.members:
        path = archive.write()
        for d in dicts:
            for key in ("detection_file", "metadata_file"):
                if isinstance(d.get(key), _Member):
                    d[key] = f"{path}@/{d[key].name}"
    logger.info("Loaded %d %s records from %s", len(dicts), kind or "", jsonl_file)
    return dicts


def _answer_dict(record, where, rid, image_name, text, regions, archive, first, line):
    answers = _answers(record, where)
    labelled = answers is not None
    if first.setdefault("labelled", (labelled, line))[0] != labelled:
        other = first["labelled"][1]
        problem = (f"field 'answer' given, but line {other} has none" if labelled
                   else f"missing field 'answer' (line {other} has one)")
        raise GenericFormatError(f"{where}: {problem}: a file gives the answers of all its records "
                                 "(to train or evaluate on) or of none (to predict)")
    detection_file = regions.detection_file
    if detection_file is None:
        detection_file = _Member(archive.add(encode_detection(
            image_name, regions.width, regions.height, regions.boxes)))
    d = {"question_id": rid, "image_id": image_name, "question": text,
         "detection_file": detection_file}
    if labelled:
        answer_type = record.get("answer_type", "other")
        _text(answer_type, where, "answer_type")
        d.update(answers=answers, answer_scores=soft_scores(answers), answer_type=answer_type,
                 question_type="")
    return d


def _choice_dict(record, where, rid, image_name, text, regions, archive, first, line):
    choices = record["choices"]
    if not isinstance(choices, list) or len(choices) < 2:
        n = len(choices) if isinstance(choices, list) else type(choices).__name__
        raise GenericFormatError(f"{where}: field 'choices' must be a list of at least 2 texts, "
                                 f"got {n}")
    count, other = first.setdefault("choices", (len(choices), line))
    if len(choices) != count:
        raise GenericFormatError(f"{where}: field 'choices' has {len(choices)} texts but line "
                                 f"{other} has {count}: every record of a file has the same number "
                                 "of choices")
    n = len(regions.boxes)
    objects = record.get("objects", [DEFAULT_OBJECT_NAME] * n)
    if (not isinstance(objects, list) or len(objects) != n
            or not all(isinstance(o, str) and o.strip() for o in objects)):
        raise GenericFormatError(f"{where}: field 'objects' must name each of the {n} regions (a "
                                 f"list of {n} non-empty strings), got {objects!r}")
    label, k = record.get("label"), len(choices)
    if "label" in record and (isinstance(label, bool) or not isinstance(label, int)
                              or not 0 <= label < k):
        raise GenericFormatError(f"{where}: field 'label' must be an integer in [0, {k}) (the "
                                 f"index of the right one of the {k} choices), got {label!r}")
    question = _tokens(_text(text, where, "text"), n, where, "text")
    answer_choices = [_tokens(_text(c, where, f"choices[{k}]"), n, where, f"choices[{k}]")
                      for k, c in enumerate(choices)]
    metadata = _Member(archive.add({"boxes": regions.boxes, "width": regions.width,
                                    "height": regions.height}))
    return {"img_fn": image_name, "metadata_file": metadata, "image_id": rid, "annot_id": rid,
            "objects": objects, "object_classes": [_NO_CLASS] * n, "question": question,
            "answer_choices": answer_choices, "rationale_choices": None,
            "answer_label": label, "rationale_label": None}


def _box_dict(record, where, rid, image_name, text, regions, add_target_box):
    target = _box(record["box"], where, "box")
    boxes = list(regions.boxes)
    if add_target_box and target not in boxes:
        boxes.append(target)
    return {"image_id": image_name, "ref_id": rid, "ann_id": rid, "sent_id": rid, "sentence": text,
            "gt_box": target, "boxes": boxes}


# ---------------------------------------------------------------------------------------------
# The answer vocabulary of answer records


def build_generic_answer_vocab(jsonl_files, min_count=1):
    """Every answer of the files' records (normalised as VQA does, counted once per record) that
    occurs in at least ``min_count`` records, most frequent first (ties alphabetically), as the
    VQA vocabulary is ordered (:func:`vlbert_d2.text.count_answer_vocab`)."""
    per_record = []
    for path in jsonl_files:
        try:
            for where, record in iter_json_lines(path, GenericFormatError, skip_blank=True):
                per_record += sorted(set(_answers(record, where) or ()))
        except FileNotFoundError:
            raise FileNotFoundError(f"answer records not found: {path} (the answer vocabulary is "
                                    "built from them; or give it: MODEL.VLBERT.VQA.ANSWER_VOCAB, "
                                    "e.g. the answers_vqa.txt of a training run)") from None
    return count_answer_vocab(per_record, min_count)


@dataclass(frozen=True)
class GenericAnswerVocabBuilder:
    """Builds the answer vocabulary of generic answer records when its file is missing (the
    ``answer_vocab_builder`` of the dataset's metadata, which :mod:`vlbert_d2.text.answer_vocab`
    calls in the main process)."""

    jsonl_files: Tuple[str, ...]
    min_count: int = 1

    def __call__(self):
        vocab = build_generic_answer_vocab(self.jsonl_files, self.min_count)
        if not vocab:
            raise GenericFormatError(
                f"no answer occurs in {self.min_count} records of {', '.join(self.jsonl_files)}: "
                "cannot build the answer vocabulary (give one: answer_vocab=<file>, or "
                "MODEL.VLBERT.VQA.ANSWER_VOCAB, e.g. the answers_vqa.txt a training run wrote to "
                "its OUTPUT_DIR)")
        return vocab

    def __str__(self):
        return f"answers of >= {self.min_count} records of {', '.join(self.jsonl_files)}"


def generic_answer_vocab_path(jsonl_files, min_count=1):
    """Where the vocabulary built from ``jsonl_files`` is kept: a file of the cache folder named
    by the files' paths, sizes and times (a changed file gets a new vocabulary)."""
    stats = []
    for path in jsonl_files:
        try:
            st = os.stat(path)
            stats.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
        except OSError:  # reported when the vocabulary is built, or by check_datasets
            stats.append([os.path.abspath(path), None, None])
    key = hashlib.sha1(json.dumps([stats, min_count]).encode("utf-8")).hexdigest()[:24]
    return os.path.join(generic_cache_dir(), f"answers_{key}.txt")


# ---------------------------------------------------------------------------------------------
# Registration


def _first_record(jsonl_file):
    try:
        for where, record in iter_json_lines(jsonl_file, GenericFormatError, ("image", "text"),
                                             skip_blank=True):
            return where, record
    except FileNotFoundError:
        raise FileNotFoundError(f"generic dataset file not found: {jsonl_file} (its first record "
                                "decides its kind: give kind= to register it before it exists)"
                                ) from None
    raise GenericFormatError(f"{jsonl_file}: no record (an empty file)")


def peek_kind(jsonl_file):
    """The kind of a generic file: that of its first record."""
    return _kind_of(_first_record(jsonl_file)[1])


def peek_num_choices(jsonl_file):
    """The number of choices of the first record of a file of choice records (0 if it has none)."""
    choices = _first_record(jsonl_file)[1].get("choices")
    return len(choices) if isinstance(choices, list) else 0


def register_generic_dataset(name, jsonl_file, image_root=None, *, kind=None, detections=None,
                             answer_vocab=None, vocab_from=None, answer_min_count=1,
                             add_target_box=False):
    """Register a generic JSON-lines file under ``name`` (then usable in ``DATASETS.TRAIN`` /
    ``DATASETS.TEST`` with the kind's head). Registering a name again replaces it.

    Args:
        name (str): the dataset's name.
        jsonl_file (str): the records (see the module docstring and docs/custom_datasets.md).
        image_root (str or None): the folder of the relative ``image`` paths (default: the
            file's folder).
        kind (str or None): "answer", "choice" or "box"; None: read from the first record.
        detections (str or None): a folder of bottom-up-attention detection files, for the
            records without ``boxes``.
        answer_vocab (str or None): answer records: the answer vocabulary file to use (one
            answer per line, e.g. the ``answers_vqa.txt`` of a training run). None: built from
            ``vocab_from``.
        vocab_from (list[str] or None): answer records: the files whose answers form the
            vocabulary (those of the training set; a validation or test set must name the
            training file here). None: ``[jsonl_file]``.
        answer_min_count (int): answers kept in a built vocabulary: those of at least this many
            records.
        add_target_box (bool): box records: the target box is a candidate region too.

    Returns:
        str: the kind.
    """
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("generic_jsonl", None) is None:
            raise ValueError(f"dataset name '{name}' is already registered (not as a generic "
                             "dataset): choose another name")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    kind = peek_kind(jsonl_file) if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    image_root = (os.path.dirname(jsonl_file) or ".") if image_root is None else image_root
    meta = {"json_file": jsonl_file, "image_root": image_root, "generic_jsonl": jsonl_file,
            "generic_kind": kind, "evaluator_type": get_task(KINDS[kind][0]).name}
    if detections is not None:
        meta["detection_root"] = detections
    if kind == "answer":
        # Read as the VQA datasets' own (vlbert_d2.text.answer_vocab): the file, and how to build
        # it when missing (by the main process, when the config is finalized).
        if answer_vocab:
            if not os.path.isfile(answer_vocab):
                raise FileNotFoundError(f"generic dataset '{name}': answer vocabulary not found: "
                                        f"{answer_vocab}")
            meta["answer_vocab_file"] = answer_vocab
        else:
            files = tuple(vocab_from or [jsonl_file])
            meta["answer_vocab_file"] = generic_answer_vocab_path(files, answer_min_count)
            meta["answer_vocab_builder"] = GenericAnswerVocabBuilder(files, answer_min_count)

    def load():
        from .. import check_datasets

        check_datasets([name])
        return load_generic(jsonl_file, image_root, kind, detections, add_target_box)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(**meta)
    return kind


_ENTRY_OPTIONS = ("images", "detections", "kind", "add_target_box")


def parse_generic_entry(entry, where="DATASETS.GENERIC"):
    """``"name=path/to/file.jsonl[,images=<folder>][,detections=<folder>][,kind=answer|choice|box]
    [,add_target_box=true]"`` -> (name, path, options)."""
    head, *options = str(entry).split(",")
    name, sep, path = head.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"{where}: {entry!r} is not 'name=path/to/file.jsonl' (with optional "
                         f"',key=value' options: {', '.join(_ENTRY_OPTIONS)})")
    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep or key not in _ENTRY_OPTIONS:
            raise ValueError(f"{where}: {entry!r}: unknown option {option!r} (known: "
                             f"{', '.join(k + '=...' for k in _ENTRY_OPTIONS)})")
        parsed[key] = value.strip()
    if "add_target_box" in parsed:
        flag = parsed["add_target_box"].lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{where}: {entry!r}: add_target_box must be true or false")
        parsed["add_target_box"] = flag in ("true", "1", "yes")
    if parsed.get("kind", "answer") not in KINDS:
        raise ValueError(f"{where}: {entry!r}: kind must be one of {', '.join(KINDS)}")
    return name.strip(), path.strip(), parsed


def register_generic_from_cfg(cfg):
    """Register the datasets of ``DATASETS.GENERIC`` (before the config's datasets are used) and
    check that the config's generic datasets suit its head.

    Answer records: the vocabulary is ``MODEL.VLBERT.VQA.ANSWER_VOCAB`` when set, else built from
    the generic answer datasets of ``DATASETS.TRAIN`` (each dataset's own file when there is
    none), keeping the answers of at least ``DATASETS.GENERIC_ANSWER_MIN_COUNT`` records.

    Returns:
        list[str]: the names registered.
    """
    head_kind = {get_task(task).head: kind for kind, (task, _) in KINDS.items()}.get(cfg.MODEL.VLBERT.HEAD)
    entries = []
    for i, entry in enumerate(cfg.DATASETS.GENERIC):
        name, path, options = parse_generic_entry(entry, f"DATASETS.GENERIC[{i}]")
        # A missing file (e.g. the training set, at evaluation) takes the head's kind; the
        # datasets that are used are checked to exist (check_datasets).
        kind = options.get("kind") or (head_kind if head_kind and not os.path.exists(path)
                                       else peek_kind(path))
        entries.append((name, path, kind, options))
    train_answers = [path for name, path, kind, _ in entries
                     if kind == "answer" and name in cfg.DATASETS.TRAIN]
    for name, path, kind, options in entries:
        register_generic_dataset(
            name, path, options.get("images"), kind=kind, detections=options.get("detections"),
            answer_vocab=cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB or None,
            vocab_from=train_answers or None,
            answer_min_count=cfg.DATASETS.GENERIC_ANSWER_MIN_COUNT,
            add_target_box=options.get("add_target_box", False))
    check_generic_head(cfg)
    return [e[0] for e in entries]


def check_generic_head(cfg):
    """Raise ValueError when a generic dataset of ``DATASETS.TRAIN``/``TEST`` holds records of
    another task than the config's head."""
    head = cfg.MODEL.VLBERT.HEAD
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name not in DatasetCatalog.list():
            continue
        kind = MetadataCatalog.get(name).get("generic_kind", None)
        if kind is None:
            continue
        wanted = get_task(KINDS[kind][0]).head
        if wanted != head:
            raise ValueError(f"dataset '{name}' holds {kind} records, for MODEL.VLBERT.HEAD "
                             f"{wanted}; the config's head is {head}")
        vcr = cfg.MODEL.VLBERT.VCR
        if kind == "choice":
            if vcr.TASK != "Q2A":
                raise ValueError(f"dataset '{name}' holds choice records, for "
                                 f"MODEL.VLBERT.VCR.TASK Q2A; the config has {vcr.TASK}")
            # Every record of a file has as many choices as the first (load_generic checks).
            path = MetadataCatalog.get(name).generic_jsonl
            count = peek_num_choices(path) if os.path.exists(path) else 0
            if count > vcr.NUM_CHOICES:
                raise ValueError(f"dataset '{name}' has {count} choices per record, more than "
                                 f"MODEL.VLBERT.VCR.NUM_CHOICES {vcr.NUM_CHOICES} (the "
                                 f"evaluator's): set it to {count}")
