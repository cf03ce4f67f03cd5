"""VQA v2 (Goyal et al., 2017) in its official layout, with bottom-up-attention detections.

::

    <coco>/vqa/v2_OpenEnded_mscoco_{subset}_questions.json   questions[].{image_id, question, question_id}
    <coco>/vqa/v2_mscoco_{subset}_annotations.json           annotations[].{question_id, answers[].answer,
                                                             multiple_choice_answer, answer_type, question_type}
    <coco>/vqa/answers_vqa.txt                               answer vocabulary, one per line (built when missing)
    <coco>/{train2014,val2014,test2015}/COCO_{images}_{image_id:012d}.jpg
    <coco>/vgbua_res101_precomputed/<detections>/{image_id}.json   boxes (and features), see detections.py

Subsets: train2014, val2014, minival2014 / valminusminival2014 (when their files exist),
test-dev2015 and test2015 (no annotations).
"""
import logging
import os
from dataclasses import dataclass
from typing import Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

# The answer vocabulary (reading, building, copying, <unk>) has one owner in the text layer; its
# names are re-exported here, where they used to be.
from ...text.answer_vocab import (ANSWER_MIN_COUNT, UNKNOWN_ANSWER, VQAFormatError,  # noqa: F401
                                  answer_rows, count_answer_vocab, ensure_answer_vocab_file,
                                  load_answer_vocab)
from ...text.answer_vocab import dataset_answer_vocab as answer_vocab_of  # noqa: F401
from ...text.vqa_answers import soft_scores
from ...utils.files import read_json

logger = logging.getLogger(__name__)


def _load_json(path, key):
    data = read_json(path, VQAFormatError, "VQA file", hint=" (see datasets/README.md)")
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise VQAFormatError(f"{path}: expected a JSON object with a '{key}' list")
    return data[key]


def _int_field(record, field, where):
    value = record.get(field) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise VQAFormatError(f"{where}: field '{field}' must be an integer, got {value!r}")
    return value


def load_annotations(path):
    """Read and validate an annotations file.

    Returns:
        dict[int, dict]: question_id -> {"answers": [str], "answer_type", "question_type",
        "multiple_choice_answer", "image_id"}.
    """
    out = {}
    for i, ann in enumerate(_load_json(path, "annotations")):
        where = f"{path}: annotations[{i}]"
        qid = _int_field(ann, "question_id", where)
        answers = ann.get("answers")
        if (not isinstance(answers, list) or not answers
                or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers)):
            raise VQAFormatError(f"{where} (question_id {qid}): field 'answers' must be a non-empty "
                                 "list of {'answer': str}")
        if qid in out:
            raise VQAFormatError(f"{where}: field 'question_id': {qid} is annotated twice")
        out[qid] = {"answers": [a["answer"] for a in answers],
                    "answer_type": str(ann.get("answer_type", "")),
                    "question_type": str(ann.get("question_type", "")),
                    "multiple_choice_answer": str(ann.get("multiple_choice_answer", "")),
                    "image_id": ann.get("image_id")}
    return out


def build_answer_vocab(annotation_files, min_count=ANSWER_MIN_COUNT):
    """The usual VQA answer vocabulary: normalised ``multiple_choice_answer`` values occurring
    at least ``min_count`` times, most frequent first (ties alphabetically)."""
    return count_answer_vocab([ann["multiple_choice_answer"] for path in annotation_files
                               for ann in load_annotations(path).values()], min_count)


@dataclass(frozen=True)
class AnswerVocabBuilder:
    """How a VQA dataset's missing answer vocabulary is built: from its training annotations
    (the ``answer_vocab_builder`` of its metadata, which :mod:`vlbert_d2.text.answer_vocab`
    calls). Compared by value, so that registering a dataset again with the same files is
    allowed by detectron2's metadata."""

    annotation_files: Tuple[str, ...]
    min_count: int = ANSWER_MIN_COUNT

    def __call__(self):
        vocab = build_answer_vocab(self.annotation_files, self.min_count)
        if not vocab:
            raise VQAFormatError(f"no answer occurs {self.min_count} times in {list(self.annotation_files)}: "
                                 "cannot build the answer vocabulary")
        return vocab

    def __str__(self):
        return f"answers occurring >= {self.min_count} times in {', '.join(self.annotation_files)}"


def ensure_answer_vocab(path, annotation_files, min_count=ANSWER_MIN_COUNT):
    """Return the vocabulary at ``path``, building it from ``annotation_files`` when missing."""
    return ensure_answer_vocab_file(path, AnswerVocabBuilder(tuple(annotation_files), min_count))


def load_vqa(questions_file, annotations_file, image_dir, image_prefix, detection_dir, answer_vocab=None):
    """Read and validate one VQA subset.

    Args:
        questions_file (str): ``v2_OpenEnded_mscoco_{subset}_questions.json``.
        annotations_file (str or None): ``v2_mscoco_{subset}_annotations.json``; None for the
            test subsets.
        image_dir (str): folder of ``{image_prefix}{image_id:012d}.jpg``.
        image_prefix (str): e.g. "COCO_train2014_".
        detection_dir (str): folder of the per-image ``{image_id}.json`` detection files.
        answer_vocab (list[str] or None): to count the answers outside the vocabulary.

    Returns:
        list[dict]: per question ``question_id``, ``image_id``, ``question``, ``file_name``,
        ``detection_file``, ``source`` and, with annotations, ``answers`` (raw),
        ``answer_scores`` ({normalised answer: soft score}), ``answer_type``, ``question_type``.

    Raises:
        VQAFormatError: malformed files, a question without annotation, duplicate ids.
    """
    questions = _load_json(questions_file, "questions")
    annotations = load_annotations(annotations_file) if annotations_file else None
    vocab = set(answer_rows(answer_vocab)) if answer_vocab else set()
    dicts, seen = [], set()
    no_target = 0
    for i, q in enumerate(questions):
        where = f"{questions_file}: questions[{i}]"
        qid = _int_field(q, "question_id", where)
        image_id = _int_field(q, "image_id", where)
        if image_id < 0:
            # It names the image file ({image_id:012d}), which a negative id would garble.
            raise VQAFormatError(f"{where} (question_id {qid}): field 'image_id' must be non-negative, got {image_id}")
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            raise VQAFormatError(f"{where} (question_id {qid}): field 'question' must be a non-empty string")
        if qid in seen:
            raise VQAFormatError(f"{where}: field 'question_id': {qid} occurs twice")
        seen.add(qid)
        d = {"question_id": qid, "image_id": image_id, "question": q["question"],
             "file_name": os.path.join(image_dir, f"{image_prefix}{image_id:012d}.jpg"),
             "detection_file": os.path.join(detection_dir, f"{image_id}.json"),
             "source": f"{where} (question_id {qid})"}
        if annotations is not None:
            ann = annotations.get(qid)
            if ann is None:
                raise VQAFormatError(f"{where}: question_id {qid} has no annotation in {annotations_file}")
            scores = soft_scores(ann["answers"])
            if vocab and not any(a in vocab for a in scores):
                no_target += 1
            d.update(answers=ann["answers"], answer_scores=scores,
                     answer_type=ann["answer_type"], question_type=ann["question_type"])
        dicts.append(d)
    if annotations is not None and len(annotations) > len(seen):
        logger.warning("%s: %d annotations have no question in %s; ignored",
                       annotations_file, len(annotations) - len(seen), questions_file)
    if no_target:
        # Kept (the official VQA training keeps them too): their target is all zeros, and the
        # evaluation still counts them.
        logger.warning("%s: %d of %d questions have none of their answers in the answer vocabulary "
                       "(all-zero training target)", questions_file, no_target, len(dicts))
    logger.info("Loaded %d VQA questions from %s", len(dicts), questions_file)
    return dicts


def register_vqa(name, root, subset, images, detections, vocab_file, vocab_annotations,
                 evaluator_type="vqa"):
    """Register one VQA subset under ``name``.

    Args:
        root (str): the COCO folder (holding ``vqa/``).
        subset (str): e.g. "train2014", "test-dev2015".
        images (str): the image folder name ("train2014", "val2014", "test2015").
        detections (str): the detection folder, relative to ``root``.
        vocab_file (str): the answer vocabulary, relative to ``root``.
        vocab_annotations (list[str]): annotation subsets to build it from when missing.
    """
    questions = os.path.join(root, "vqa", f"v2_OpenEnded_mscoco_{subset}_questions.json")
    annotations = os.path.join(root, "vqa", f"v2_mscoco_{subset}_annotations.json")
    has_answers = not subset.startswith("test")
    image_dir = os.path.join(root, images)
    detection_dir = os.path.join(root, detections)
    vocab_path = os.path.join(root, vocab_file)
    vocab_sources = [os.path.join(root, "vqa", f"v2_mscoco_{s}_annotations.json") for s in vocab_annotations]

    def load():
        from .. import check_datasets

        check_datasets([name])
        # Only read here (every data-loader process loads the dataset): the vocabulary is built,
        # when missing, once by the main process (vlbert_d2.text.answer_vocab.prepare_answer_vocab).
        vocab = load_answer_vocab(vocab_path)
        return load_vqa(questions, annotations if has_answers else None, image_dir,
                        f"COCO_{images}_", detection_dir, vocab)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=questions, annotations_file=annotations if has_answers else None,
        detection_root=detection_dir, images=image_dir, subset=subset, has_answers=has_answers,
        answer_vocab_file=vocab_path, answer_vocab_sources=vocab_sources,
        answer_vocab_builder=AnswerVocabBuilder(tuple(vocab_sources)), evaluator_type=evaluator_type)
