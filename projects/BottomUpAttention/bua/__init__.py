"""Bottom-up-attention region detector (Anderson et al., CVPR 2018) as detectron2 components.

Importing the package registers ``build_bua_resnet_backbone`` (BACKBONE_REGISTRY),
``BottomUpRes5ROIHeads`` (ROI_HEADS_REGISTRY) and the synthetic detection datasets
(``synthetic_detection_{train,val}``, :mod:`bua.data`); the model is detectron2's
``GeneralizedRCNN`` built from ``configs/BUA-R101-C4-VG.yaml`` after :func:`add_bottom_up_config`.
Training (class, box and attribute losses): :mod:`bua.training` and ``train_detector.py``.
"""
from . import backbone, roi_heads  # noqa: F401  (registration)
from .checkpoint import BottomUpCheckpointer, load_bottom_up_weights, map_bottom_up_weights
from .config import add_bottom_up_config
from .data import (AttributeDatasetMapper, load_attribute_coco_json, register_attribute_coco,
                   register_synthetic_detection)
from .evaluation import AttributeEvaluator, attribute_accuracy
from .regions import RegionDetector, detection_record, setup_detector_cfg, to_background_first
from .roi_heads import (AttributeFastRCNNOutputLayers, BottomUpRes5ROIHeads, attribute_loss, pad_attributes,
                        select_regions)

__all__ = ["add_bottom_up_config", "AttributeFastRCNNOutputLayers", "BottomUpRes5ROIHeads",
           "BottomUpCheckpointer", "load_bottom_up_weights", "map_bottom_up_weights", "RegionDetector",
           "detection_record", "select_regions", "setup_detector_cfg", "to_background_first",
           "attribute_loss", "pad_attributes", "AttributeDatasetMapper", "load_attribute_coco_json",
           "register_attribute_coco", "register_synthetic_detection", "AttributeEvaluator",
           "attribute_accuracy"]
