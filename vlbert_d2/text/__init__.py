"""Text and answers, below data, modeling and evaluation (which all use them): the WordPiece
tokenizer and pretrained names (:mod:`.tokenizer`), VQA answer normalisation, soft scores and
accuracy (:mod:`.vqa_answers`), and the VQA answer vocabulary's one owner (:mod:`.answer_vocab`).
"""
from .answer_vocab import (ANSWER_MIN_COUNT, UNKNOWN_ANSWER, AnswerVocab, VQAFormatError,
                           answer_rows, count_answer_vocab, dataset_answer_vocab,
                           ensure_answer_vocab_file, load_answer_vocab, prepare_answer_vocab,
                           vocab_for_cfg, write_answer_vocab)
from .tokenizer import PretrainedNotFoundError, build_tokenizer, from_pretrained, resolve_pretrained
from .vqa_answers import normalize_answer, soft_scores, vqa_accuracy

__all__ = [
    "ANSWER_MIN_COUNT", "UNKNOWN_ANSWER", "AnswerVocab", "VQAFormatError", "answer_rows",
    "count_answer_vocab", "dataset_answer_vocab", "ensure_answer_vocab_file", "load_answer_vocab",
    "prepare_answer_vocab", "vocab_for_cfg", "write_answer_vocab",
    "PretrainedNotFoundError", "build_tokenizer", "from_pretrained", "resolve_pretrained",
    "normalize_answer", "soft_scores", "vqa_accuracy",
]
