"""The VQA answer vocabulary, in one place: one answer per line, one classifier row per answer.

This module is the one owner of the answer list:

* it works out from the config, once, which list a run uses (:func:`prepare_answer_vocab`, which
  :func:`vlbert_d2.config.finalize_vlbert_config` calls before the config is frozen; the config
  then names the file in ``MODEL.VLBERT.VQA.ANSWER_VOCAB`` and its length in
  ``MODEL.VLBERT.VQA.NUM_ANSWERS``, which sizes the head);
* it reads (:func:`load_answer_vocab`), builds (a dataset's missing file) and copies (to the
  training run's folder) the file;
* it knows ``<unk>``: a row of the official vocabulary that is never a target
  (:func:`answer_rows`) nor a prediction (:meth:`AnswerVocab.mask_unknown`).

A registered dataset names its vocabulary in its metadata: ``answer_vocab_file`` (the file) and,
optionally, ``answer_vocab_builder``: a callable returning the answers, called (by the main
process only) when the file is missing (VQA v2: the frequent answers of the training
annotations, see ``vlbert_d2/data/datasets/vqa.py``).
"""
import logging
import os
from collections import Counter

from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from ..utils.files import atomic_write, iter_text_lines
from .vqa_answers import normalize_answer

logger = logging.getLogger(__name__)

UNKNOWN_ANSWER = "<unk>"
# Answers kept in the vocabulary: those given as multiple_choice_answer at least this many times
# in the training annotations (train2014 + val2014 gives the usual 3,129 answers).
ANSWER_MIN_COUNT = 9
# The name of the copy a training run keeps in its OUTPUT_DIR.
VOCAB_FILE_NAME = "answers_vqa.txt"


class VQAFormatError(ValueError):
    """A VQA file that does not follow the format; the message names file, record and field."""


def load_answer_vocab(path):
    """Read a vocabulary file: one answer per line, kept in file order, one classifier row each.

    The official file (``answers_vqa.txt``) has 3,129 lines, one of them ``<unk>``: it keeps its
    row (so official checkpoints fit) but is never a target nor a prediction.
    """
    try:
        lines = [line.strip() for _, line in iter_text_lines(path, VQAFormatError)]
    except FileNotFoundError:
        raise FileNotFoundError(f"VQA answer vocabulary not found: {path} (build it with "
                                "tools/build_vqa_vocab.py; tools/train_net.py builds it when missing)") from None
    vocab = [a for a in lines if a]
    dup = [a for a, c in Counter(vocab).items() if c > 1]
    if dup:
        raise VQAFormatError(f"{path}: answers {dup[:5]} occur on more than one line")
    if not [a for a in vocab if a != UNKNOWN_ANSWER]:
        raise VQAFormatError(f"{path}: the answer vocabulary is empty")
    return vocab


def write_answer_vocab(path, vocab):
    """Write ``vocab`` to ``path``, one answer per line (atomically; the folder is created)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")


def count_answer_vocab(answers, min_count=ANSWER_MIN_COUNT):
    """The usual VQA answer vocabulary from raw answers (VQA v2: every question's
    ``multiple_choice_answer``): the normalised answers occurring at least ``min_count`` times,
    most frequent first (ties alphabetically)."""
    counts = Counter(normalize_answer(a) for a in answers)
    return sorted((a for a, c in counts.items() if c >= min_count and a), key=lambda a: (-counts[a], a))


def answer_rows(vocab):
    """{normalised answer: row} for the targets (the first row wins when two lines normalise
    to the same answer); ``<unk>`` has none."""
    rows = {}
    for i, a in enumerate(vocab):
        if a != UNKNOWN_ANSWER:
            rows.setdefault(normalize_answer(a), i)
    return rows


class AnswerVocab:
    """An answer vocabulary: ``vocab[i]`` is the answer of classifier row ``i``.

    Attributes:
        answers (list[str]): the answers, in row order.
        rows (dict[str, int]): normalised answer -> row, for the targets (:func:`answer_rows`).
        unknown (list[int]): the ``<unk>`` rows, never a target nor a prediction.
    """

    def __init__(self, answers):
        self.answers = list(answers)
        self.rows = answer_rows(self.answers)
        self.unknown = [i for i, a in enumerate(self.answers) if a == UNKNOWN_ANSWER]

    def __len__(self):
        return len(self.answers)

    def __getitem__(self, row):
        return self.answers[row]

    def __iter__(self):
        return iter(self.answers)

    def mask_unknown(self, scores):
        """A copy of the (..., A) score tensor with the ``<unk>`` rows at -inf."""
        scores = scores.clone()
        scores[..., self.unknown] = float("-inf")
        return scores

    def predict(self, scores):
        """The answer of the best-scoring row of the (A,) ``scores``, ``<unk>`` left out."""
        return self.answers[int(self.mask_unknown(scores).argmax())]

    def top_k(self, scores, k):
        """The ``k`` best (answer, score) pairs of the (A,) ``scores``, ``<unk>`` left out."""
        k = min(k, len(self.answers) - len(self.unknown))
        values, rows = self.mask_unknown(scores).topk(k)
        return [(self.answers[int(i)], float(v)) for v, i in zip(values, rows)]


def dataset_answer_vocab(dataset_name, build=False):
    """The answer vocabulary of a registered dataset (its metadata's ``answer_vocab_file``).

    Args:
        build (bool): when the file is missing, build it with the metadata's
            ``answer_vocab_builder`` and write it (do this in one process only; see
            :func:`prepare_answer_vocab`).
    """
    meta = MetadataCatalog.get(dataset_name)
    path = meta.get("answer_vocab_file", None)
    if path is None:
        raise KeyError(f"dataset '{dataset_name}' has no answer vocabulary (not a VQA dataset?)")
    builder = meta.get("answer_vocab_builder", None)
    if build and builder is not None:
        return ensure_answer_vocab_file(path, builder)
    return load_answer_vocab(path)


def ensure_answer_vocab_file(path, build):
    """The vocabulary at ``path``; when the file is missing, ``build()`` gives the answers,
    written there first."""
    if not os.path.exists(path):
        vocab = build()
        write_answer_vocab(path, vocab)
        logger.info("Built the VQA answer vocabulary %s: %d %s", path, len(vocab), build)
    return load_answer_vocab(path)


def vocab_for_cfg(cfg, build=False):
    """The answer vocabulary of a config: ``MODEL.VLBERT.VQA.ANSWER_VOCAB`` when set (always,
    once the config is finalized), else that of the config's datasets (training first), which
    must all agree.

    Args:
        build (bool): build a dataset's missing vocabulary (main process only).
    """
    if cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB:
        return load_answer_vocab(cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB)
    names = _dataset_names(cfg)
    vocab = dataset_answer_vocab(names[0], build)
    for name in names[1:]:
        other = dataset_answer_vocab(name, build)
        if other != vocab:
            raise ValueError(f"datasets '{names[0]}' and '{name}' use different answer vocabularies "
                             "(set MODEL.VLBERT.VQA.ANSWER_VOCAB)")
    return vocab


def _dataset_names(cfg):
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if not names:
        raise ValueError("VQA needs MODEL.VLBERT.VQA.ANSWER_VOCAB or a dataset in DATASETS.TRAIN/TEST "
                         "for its answer vocabulary")
    return names


def prepare_answer_vocab(cfg, output_dir=None):
    """Work out the config's answer vocabulary, once, before anything is built: the main process
    builds a dataset's missing file and, with ``output_dir``, copies the vocabulary there as
    ``answers_vqa.txt`` (so that the trained model can be used without its dataset); the other
    processes wait.

    Returns:
        (str, list[str]): the file the run uses (the copy when ``output_dir`` is given) and its
        answers.
    """
    copy = os.path.join(output_dir, VOCAB_FILE_NAME) if output_dir else None
    if comm.is_main_process():
        vocab = vocab_for_cfg(cfg, build=True)
        if copy:
            write_answer_vocab(copy, vocab)
            logger.info("VQA answer vocabulary (%d answers) copied to %s", len(vocab), copy)
    comm.synchronize()
    if copy:
        return copy, load_answer_vocab(copy)
    path = cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB or MetadataCatalog.get(_dataset_names(cfg)[0]).answer_vocab_file
    return path, vocab_for_cfg(cfg)
