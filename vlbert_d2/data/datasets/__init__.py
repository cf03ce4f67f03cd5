"""Dataset registrations (explicit: see :func:`register_all`)."""
from .vcr import VCR_CLASSES, VCRFormatError, load_vcr_jsonl, load_vcr_metadata, register_vcr

__all__ = ["VCR_CLASSES", "VCRFormatError", "load_vcr_jsonl", "load_vcr_metadata", "register_vcr"]
