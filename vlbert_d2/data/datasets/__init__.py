"""Dataset registrations (explicit: see :func:`vlbert_d2.data.register_all`)."""
from .refcoco import RefCOCOFormatError, load_refcoco, register_refcoco
from .vcr import VCR_CLASSES, VCRFormatError, load_vcr_jsonl, load_vcr_metadata, register_vcr
from .vqa import VQAFormatError, build_answer_vocab, ensure_answer_vocab, load_vqa, register_vqa

__all__ = ["VCR_CLASSES", "VCRFormatError", "load_vcr_jsonl", "load_vcr_metadata", "register_vcr",
           "VQAFormatError", "build_answer_vocab", "ensure_answer_vocab", "load_vqa", "register_vqa",
           "RefCOCOFormatError", "load_refcoco", "register_refcoco"]
