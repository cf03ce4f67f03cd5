"""Detection datasets with attributes, for training the detector: loading and mapping.

The format is COCO's instances JSON plus an ``"attributes"`` table ``[{"id", "name"}, ...]`` and,
per annotation, ``"attribute_ids"``: a list of ids into that table (Visual Genome objects have
several; an empty list means "no attribute"). :func:`load_attribute_coco_json` reads it with
detectron2's :func:`load_coco_json` and, as detectron2 does with ``category_id``, turns the
attribute ids into contiguous indices in [0, A) in the order of the table (``attribute_ids`` of
each annotation dict). :class:`AttributeDatasetMapper` puts them on the targets as
``gt_attributes``, which the RoI sampling copies to the matched proposals.

The synthetic one (``python -m synthetic_vl --format detection``, projects/SyntheticVL: 3 shapes,
6 colours) is registered as ``synthetic_detection_{train,val}`` under
``$DETECTRON2_DATASETS/synthetic_detection`` (default ``./datasets``).
"""
import json
import os

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data.datasets import load_coco_json

from .roi_heads import pad_attributes

__all__ = ["AttributeDatasetMapper", "load_attribute_coco_json", "register_attribute_coco",
           "register_synthetic_detection", "SYNTHETIC_DETECTION_SPLITS"]

SYNTHETIC_DETECTION_SPLITS = ("train", "val")


def _attribute_table(json_file):
    with open(json_file) as f:
        table = json.load(f).get("attributes")
    if not table:
        raise ValueError(f"{json_file}: no 'attributes' table (a list of {{'id', 'name'}})")
    table = sorted(table, key=lambda a: a["id"])
    return [a["name"] for a in table], {a["id"]: k for k, a in enumerate(table)}


def load_attribute_coco_json(json_file, image_root, dataset_name=None):
    """detectron2's :func:`load_coco_json` with each annotation's ``attribute_ids`` as
    contiguous indices (the ``attributes`` table's order).

    With ``dataset_name``, the metadata also gets ``attribute_classes`` (names) and
    ``attribute_dataset_id_to_contiguous_id``, besides detectron2's ``thing_*`` entries.

    Returns:
        list[dict]: detectron2 dataset dicts; every annotation has ``attribute_ids`` (a list,
        empty when the JSON has none for it).
    """
    names, to_contiguous = _attribute_table(json_file)
    dicts = load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys=["attribute_ids"])
    for record in dicts:
        for anno in record.get("annotations", []):
            ids = anno.get("attribute_ids") or []
            unknown = [a for a in ids if a not in to_contiguous]
            if unknown:
                raise ValueError(f"{json_file}: annotation of image {record['image_id']} has attribute "
                                 f"ids {unknown} missing from the 'attributes' table")
            anno["attribute_ids"] = [to_contiguous[a] for a in ids]
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(attribute_classes=names,
                                              attribute_dataset_id_to_contiguous_id=to_contiguous)
    return dicts


def register_attribute_coco(name, json_file, image_root):
    """Register a COCO-with-attributes dataset (lazily: the JSON is read on first use). Its
    metadata has ``json_file``, ``image_root``, ``evaluator_type`` "coco" (detectron2's
    COCOEvaluator reads the ground truth from the file) and ``has_attributes`` True."""
    DatasetCatalog.register(name, lambda: load_attribute_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  has_attributes=True)


def register_synthetic_detection(root=None, prefix="synthetic_detection"):
    """Register ``{prefix}_{train,val}`` from ``root`` (the layout of ``python -m synthetic_vl
    --format detection``; default ``$DETECTRON2_DATASETS/synthetic_detection``). Names already
    registered are left alone."""
    if root is None:
        root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "synthetic_detection")
    for split in SYNTHETIC_DETECTION_SPLITS:
        name = f"{prefix}_{split}"
        if name not in DatasetCatalog.list():
            register_attribute_coco(name, os.path.join(root, "annotations", f"instances_{split}.json"),
                                    os.path.join(root, split))


class AttributeDatasetMapper(DatasetMapper):
    """detectron2's :class:`DatasetMapper` that also puts each object's attributes on the
    targets: ``instances.gt_attributes``, (N, M) int64 contiguous attribute indices padded with -1
    (M the most attributes of an object of the image, at least 1), filtered with the boxes."""

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        annos = [a for a in dataset_dict.pop("annotations") if a.get("iscrowd", 0) == 0]
        for anno in annos:
            if not self.use_instance_mask:
                anno.pop("segmentation", None)
            if not self.use_keypoint:
                anno.pop("keypoints", None)
        attributes = pad_attributes([list(a.get("attribute_ids", [])) for a in annos])
        annos = [utils.transform_instance_annotations(a, transforms, image_shape,
                                                      keypoint_hflip_indices=self.keypoint_hflip_indices)
                 for a in annos]
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances.gt_attributes = attributes
        dataset_dict["instances"] = utils.filter_empty_instances(instances)


# The synthetic datasets are registered on import, as vlbert_d2.data registers its own.
register_synthetic_detection()
