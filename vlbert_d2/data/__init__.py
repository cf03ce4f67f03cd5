"""Data: dataset registrations and mappers.

Datasets are registered here, explicitly, from the table below; the root is
``$DETECTRON2_DATASETS`` (default ``./datasets``), as in detectron2.
"""
import os

from detectron2.data import DatasetCatalog

from ..tasks import get_task, task_for_cfg
from .build import MixedBatchLoader, build_vlbert_train_loader
from .datasets import register_refcoco, register_vcr, register_vqa
from .datasets.refcoco import PROPOSALS_FILE
from .datasets.generic import register_generic_dataset, register_generic_from_cfg  # your own data
from .datasets.pretrain import register_conceptual_captions, register_text_corpus
from .pretrain_mapper import PretrainDatasetMapper
from .refcoco_mapper import RefCOCODatasetMapper
from .vcr_mapper import VCRDatasetMapper
from .vqa_mapper import VQADatasetMapper

# The object classes of the synthetic scenes (projects/SyntheticVL writes the datasets; its
# synthetic_vl.SHAPES): data here, so that the library does not import the project.
# tests/projects/test_synthetic.py checks that the two agree.
SYNTHETIC_CLASSES = ("ball", "box", "kite")

# (name, directory under the datasets root, split, object classes or None for VCR's)
_VCR_DATASETS = [
    ("vcr_train", "vcr", "train", None),
    ("vcr_val", "vcr", "val", None),
    ("vcr_test", "vcr", "test", None),
    ("synthetic_vcr_train", "synthetic_vcr", "train", SYNTHETIC_CLASSES),
    ("synthetic_vcr_val", "synthetic_vcr", "val", SYNTHETIC_CLASSES),
    ("synthetic_vcr_test", "synthetic_vcr", "test", SYNTHETIC_CLASSES),
    # The demo's data: only "which object is the biggest?" questions (see the README).
    ("synthetic_vcr_size_train", "synthetic_vcr_size", "train", SYNTHETIC_CLASSES),
    ("synthetic_vcr_size_val", "synthetic_vcr_size", "val", SYNTHETIC_CLASSES),
    ("synthetic_vcr_size_test", "synthetic_vcr_size", "test", SYNTHETIC_CLASSES),
    # The pipeline's data (make demo-pipeline): colour, position and size questions, answered
    # from the pixels by the tiny detector's trunk (configs/quick_schedules/VLBERT-Tiny-PipelineVCR.yaml).
    ("synthetic_vcr_pixels_train", "synthetic_vcr_pixels", "train", SYNTHETIC_CLASSES),
    ("synthetic_vcr_pixels_val", "synthetic_vcr_pixels", "val", SYNTHETIC_CLASSES),
    ("synthetic_vcr_pixels_test", "synthetic_vcr_pixels", "test", SYNTHETIC_CLASSES),
]

# VQA v2: (name, COCO folder, subset, image folder, detection folder). Detections: the 10-100
# adaptive bottom-up-attention boxes of the official preparation. The answer vocabulary is
# <folder>/vqa/answers_vqa.txt, built from train2014 + val2014 when missing.
_VQA_DETECTIONS = {"trainval": "vgbua_res101_precomputed/trainval2014_resnet101_faster_rcnn_genome",
                   "test": "vgbua_res101_precomputed/test2015_resnet101_faster_rcnn_genome"}
# The regions (with 256-d features) that the tiny bottom-up-attention detector trained on the
# synthetic scenes finds (tools/extract_regions.py; projects/SyntheticVL/pipeline.py): a folder of their own,
# next to the generator's ground-truth detection files, which stay.
_BUA_REGIONS = {"trainval": "bua_regions/trainval2014", "test": "bua_regions/test2015"}
_VQA_DATASETS = [
    (f"{prefix}_{subset}", folder, subset, images, detections[dets])
    for prefix, folder, detections in (
        ("vqa", "coco", _VQA_DETECTIONS), ("synthetic_vqa", "synthetic_vqa", _VQA_DETECTIONS),
        # The tiny VQA config's data: geometry questions only (README).
        ("synthetic_vqa_geometry", "synthetic_vqa_geometry", _VQA_DETECTIONS),
        # The pipeline's data (make demo-pipeline): colour and shape questions, on the regions
        # of the tiny detector (configs/quick_schedules/VLBERT-Tiny-PipelineVQA.yaml).
        ("synthetic_vqa_pixels", "synthetic_vqa_pixels", _BUA_REGIONS))
    for subset, images, dets in (("train2014", "train2014", "trainval"), ("val2014", "val2014", "trainval"),
                                 ("minival2014", "val2014", "trainval"),
                                 ("valminusminival2014", "val2014", "trainval"),
                                 ("test-dev2015", "test2015", "test"), ("test2015", "test2015", "test"))
]
# RefCOCO+ (UNC splits): (name, folder, split, detected regions?, proposals file). "_det": the
# MAttNet proposals; for the pipeline's data, the regions of the tiny detector, which
# projects/SyntheticVL/pipeline.py writes (vlbert_d2.data.datasets.refcoco.write_proposals).
BUA_PROPOSALS = os.path.join("refcoco+", "proposal", "bua_regions_dets.json")
_REFCOCO_DATASETS = [
    (f"{prefix}_{split}{'_det' if det else ''}", folder, split, det, proposals)
    for prefix, folder, proposals in (
        ("refcoco+", "coco", PROPOSALS_FILE), ("synthetic_refcoco+", "synthetic_refcoco", PROPOSALS_FILE),
        ("synthetic_refcoco+_geometry", "synthetic_refcoco_geometry", PROPOSALS_FILE),
        # The pipeline's data (make demo-pipeline): "the red kite" expressions, on the regions of
        # the tiny detector (configs/quick_schedules/VLBERT-Tiny-PipelineRefCOCO+.yaml).
        ("synthetic_refcoco+_pixels", "synthetic_refcoco_pixels", BUA_PROPOSALS))
    for split in ("train", "val", "testA", "testB") for det in (False, True)
]

# Pre-training: Conceptual Captions (name, folder, JSON-lines file) in the official layout, and
# text corpora (name, folder, files). The synthetic ones: `python -m synthetic_vl
# --format captions` (projects/SyntheticVL).
_CAPTION_DATASETS = [
    ("conceptual_captions_train", "conceptual-captions", "train_frcnn.json"),
    ("conceptual_captions_val", "conceptual-captions", "val_frcnn.json"),
    ("synthetic_captions_train", "synthetic_captions", "train_frcnn.json"),
    ("synthetic_captions_val", "synthetic_captions", "val_frcnn.json"),
    # The pipeline's captions (make demo-pipeline): "_gt" with the generator's boxes and classes;
    # the others with the regions, class distributions and features of the tiny detector, which
    # projects/SyntheticVL/pipeline.py extracts and points {train,val}_bua.json at.
    ("synthetic_captions_pixels_gt_train", "synthetic_captions_pixels", "train_frcnn.json"),
    ("synthetic_captions_pixels_gt_val", "synthetic_captions_pixels", "val_frcnn.json"),
    ("synthetic_captions_pixels_train", "synthetic_captions_pixels", "train_bua.json"),
    ("synthetic_captions_pixels_val", "synthetic_captions_pixels", "val_bua.json"),
]
_TEXT_DATASETS = [
    # The official corpus files: BooksCorpus (bc1g.doc) and English Wikipedia (wiki.doc).
    ("en_corpus_train", "en_corpus", ("bc1g.doc", "wiki.doc")),
    ("en_corpus_val", "en_corpus", ("bc1g.doc",)),
    ("synthetic_corpus_train", "synthetic_captions", ("corpus_train.txt",)),
    ("synthetic_corpus_val", "synthetic_captions", ("corpus_val.txt",)),
    ("synthetic_corpus_pixels_train", "synthetic_captions_pixels", ("corpus_train.txt",)),
    ("synthetic_corpus_pixels_val", "synthetic_captions_pixels", ("corpus_val.txt",)),
]

# Which mapper formats a task's inputs: task name (vlbert_d2/tasks.py) -> mapper class, called
# as ``mapper(cfg, is_train)``.
TASK_MAPPERS = {}


def register_task_mapper(task_name, mapper=None):
    """Register ``mapper`` (a class or function called as ``mapper(cfg, is_train)``) as the dataset
    mapper of the task ``task_name`` (a row of :data:`vlbert_d2.tasks.TASKS`). Usable as a
    decorator: ``@register_task_mapper("my_task")``."""
    if mapper is None:
        return lambda m: register_task_mapper(task_name, m)
    get_task(task_name)  # a row of the table first
    TASK_MAPPERS[task_name] = mapper
    return mapper


register_task_mapper("vcr", VCRDatasetMapper)
register_task_mapper("vqa", VQADatasetMapper)
register_task_mapper("refcoco", RefCOCODatasetMapper)
register_task_mapper("pretrain", PretrainDatasetMapper)


def build_vlbert_mapper(cfg, is_train):
    """The dataset mapper of the config's task (the task of ``MODEL.VLBERT.HEAD``)."""
    task = task_for_cfg(cfg)
    if task.name not in TASK_MAPPERS:
        raise KeyError(f"no dataset mapper for task {task.name!r} (MODEL.VLBERT.HEAD={task.head!r}): "
                       f"register one with vlbert_d2.data.register_task_mapper; known: {sorted(TASK_MAPPERS)}")
    return TASK_MAPPERS[task.name](cfg, is_train)


def check_datasets(names):
    """Raise FileNotFoundError naming every missing file of the registered datasets ``names``
    (those whose metadata records ``json_file``/``image_root``/``detection_root``...), and where to read how to get
    them. Cheap: only checks that the paths exist, so it can run before building a model."""
    from detectron2.data import MetadataCatalog

    missing, seen = [], set()
    for name in names:
        meta = MetadataCatalog.get(name)
        paths = [meta.get(key, None) for key in ("json_file", "image_root", "detection_root", "refs_file",
                                                   "instances_file", "proposals_file")]
        for path in [p for p in paths if p is not None] + list(meta.get("text_files", [])):
            if not os.path.exists(path) and path not in seen:
                seen.add(path)
                missing.append(f"{path} (dataset '{name}')")
    if missing:
        raise FileNotFoundError(
            "Missing dataset files:\n  " + "\n  ".join(missing) + "\nSee datasets/README.md for how "
            "to download and lay out the data (or set DETECTRON2_DATASETS to the folder holding it).")


def datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def register_all(root=None):
    """Register every dataset of the table under ``root`` (idempotent)."""
    root = datasets_root() if root is None else root
    for name, folder, split, classes in _VCR_DATASETS:
        if name in DatasetCatalog.list():
            continue
        kwargs = {} if classes is None else {"class_names": list(classes)}
        register_vcr(name, os.path.join(root, folder), split, **kwargs)
    for name, folder, subset, images, detections in _VQA_DATASETS:
        if name not in DatasetCatalog.list():
            register_vqa(name, os.path.join(root, folder), subset, images, detections,
                         os.path.join("vqa", "answers_vqa.txt"), ["train2014", "val2014"])
    for name, folder, split, detected, proposals in _REFCOCO_DATASETS:
        if name not in DatasetCatalog.list():
            register_refcoco(name, os.path.join(root, folder), split, detected, proposals_file=proposals)
    for name, folder, json_file in _CAPTION_DATASETS:
        if name not in DatasetCatalog.list():
            register_conceptual_captions(name, os.path.join(root, folder), json_file)
    for name, folder, files in _TEXT_DATASETS:
        if name not in DatasetCatalog.list():
            register_text_corpus(name, os.path.join(root, folder), list(files))


register_all()

__all__ = ["VCRDatasetMapper", "VQADatasetMapper", "RefCOCODatasetMapper", "PretrainDatasetMapper",
           "MixedBatchLoader", "build_vlbert_train_loader", "check_datasets", "build_vlbert_mapper",
           "register_task_mapper", "TASK_MAPPERS",
           "register_all", "datasets_root", "SYNTHETIC_CLASSES"]
# Your own datasets in the generic JSON-lines format (docs/custom_datasets.md).
__all__ += ["register_generic_dataset", "register_generic_from_cfg"]
