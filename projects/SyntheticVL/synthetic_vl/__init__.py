"""synthetic_vl: deterministic synthetic vision-and-language datasets for vlbert_d2.

Colored balls, boxes and kites on a plain background (:mod:`.scenes`), written in the file
layouts of the official releases so that vlbert_d2's loaders, models, training loop and
evaluators run end to end without the real data:

- :mod:`.vcr`: VCR (multiple-choice Q->A, QA->R), :func:`generate_vcr`;
- :mod:`.vqa`: VQA v2 (open-ended, 10 answers per question, precomputed regions),
  :func:`generate_vqa`;
- :mod:`.refcoco`: RefCOCO+ (REFER layout, with MAttNet-style proposals), :func:`generate_refcoco`;
- :mod:`.captions`: pre-training captions (Conceptual Captions layout) and a text corpus,
  :func:`generate_captions`;
- :mod:`.detection`: object detection with attributes (COCO instances, the shapes as classes and
  the colours as attributes), for training the bottom-up-attention detector,
  :func:`generate_detection`.

Every question, expression and caption needs the image. The same seed gives byte-identical files.
Command line: ``python -m synthetic_vl --help``.
"""
from .captions import (CAPTION_DEFAULT_COUNTS, CAPTION_EXTRA_TYPES, CAPTION_MARKER, CAPTION_TYPES,
                       ensure_synthetic_captions, generate_captions, is_complete_captions)
from .cli import main
from .detection import (DETECTION_DEFAULT_COUNTS, DETECTION_MARKER, detection_attributes,
                        detection_categories, detection_image_file, detection_instances_file,
                        ensure_synthetic_detection, generate_detection, is_complete_detection)
from .refcoco import (REFCOCO_DEFAULT_COUNTS, REFCOCO_EXPRESSION_TYPES, REFCOCO_GEOMETRY_TYPES,
                      REFCOCO_IMAGES, REFCOCO_INSTANCES, REFCOCO_MARKER, REFCOCO_MIN_X_GAP,
                      REFCOCO_PROPOSALS, REFCOCO_REFS, ensure_synthetic_refcoco, generate_refcoco,
                      is_complete_refcoco, refcoco_image_file)
from .scenes import (MAX_SIZE, MIDLINE_MARGIN, MIN_SIZE, OBJECT_GAP, PALETTE, QUADRANTS, SHAPES,
                     SIZE_GAP)
from .vcr import (DEFAULT_COUNTS, MARKER, VCR_QUESTION_TYPES, ensure_synthetic_vcr, generate_vcr,
                  is_complete)
from .vqa import (VQA_DEFAULT_COUNTS, VQA_DETECTION_DIRS, VQA_GEOMETRY_TYPES, VQA_LABELLED,
                  VQA_MARKER, VQA_QUESTION_TYPES, VQA_TEST_DEV, ensure_synthetic_vqa, generate_vqa,
                  is_complete_vqa, vqa_annotation_file, vqa_image_file, vqa_question_file)

__all__ = [
    # scenes
    "SHAPES", "PALETTE", "QUADRANTS", "MIN_SIZE", "MAX_SIZE", "SIZE_GAP", "MIDLINE_MARGIN",
    "OBJECT_GAP",
    # VCR
    "generate_vcr", "ensure_synthetic_vcr", "is_complete", "DEFAULT_COUNTS", "VCR_QUESTION_TYPES",
    "MARKER",
    # VQA v2
    "generate_vqa", "ensure_synthetic_vqa", "is_complete_vqa", "VQA_DEFAULT_COUNTS",
    "VQA_QUESTION_TYPES", "VQA_GEOMETRY_TYPES", "VQA_MARKER", "VQA_LABELLED", "VQA_TEST_DEV",
    "VQA_DETECTION_DIRS", "vqa_question_file", "vqa_annotation_file", "vqa_image_file",
    # RefCOCO+
    "generate_refcoco", "ensure_synthetic_refcoco", "is_complete_refcoco", "REFCOCO_DEFAULT_COUNTS",
    "REFCOCO_EXPRESSION_TYPES", "REFCOCO_GEOMETRY_TYPES", "REFCOCO_MARKER", "REFCOCO_IMAGES",
    "REFCOCO_INSTANCES", "REFCOCO_REFS", "REFCOCO_PROPOSALS", "REFCOCO_MIN_X_GAP",
    "refcoco_image_file",
    # captions
    "generate_captions", "ensure_synthetic_captions", "is_complete_captions",
    "CAPTION_DEFAULT_COUNTS", "CAPTION_TYPES", "CAPTION_EXTRA_TYPES", "CAPTION_MARKER",
    # detection with attributes
    "generate_detection", "ensure_synthetic_detection", "is_complete_detection",
    "DETECTION_DEFAULT_COUNTS", "DETECTION_MARKER", "detection_instances_file", "detection_image_file",
    "detection_categories", "detection_attributes",
    # command line
    "main",
]
