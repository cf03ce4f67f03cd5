"""Bottom-up-attention region detector (Anderson et al., CVPR 2018) as detectron2 components.

Importing the package registers ``build_bua_resnet_backbone`` (BACKBONE_REGISTRY) and
``BottomUpRes5ROIHeads`` (ROI_HEADS_REGISTRY); the model is detectron2's ``GeneralizedRCNN``
built from ``configs/BUA-R101-C4-VG.yaml`` after :func:`add_bottom_up_config`.
"""
from . import backbone, roi_heads  # noqa: F401  (registration)
from .checkpoint import BottomUpCheckpointer, load_bottom_up_weights, map_bottom_up_weights
from .config import add_bottom_up_config
from .regions import RegionDetector, detection_record, setup_detector_cfg, to_background_first
from .roi_heads import AttributeFastRCNNOutputLayers, BottomUpRes5ROIHeads, select_regions

__all__ = ["add_bottom_up_config", "AttributeFastRCNNOutputLayers", "BottomUpRes5ROIHeads",
           "BottomUpCheckpointer", "load_bottom_up_weights", "map_bottom_up_weights", "RegionDetector",
           "detection_record", "select_regions", "setup_detector_cfg", "to_background_first"]
