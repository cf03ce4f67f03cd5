"""Checkpoint loading and conversion of foreign checkpoint formats."""
from .checkpointer import CheckpointError, SafeCheckpointer, VLBertCheckpointer, load_checkpoint_file
from .detector import UnsafePickleError, load_detector_weights, load_weights_pickle
from .official import ConversionError, ConversionReport, convert_official_state_dict

__all__ = ["CheckpointError", "SafeCheckpointer", "VLBertCheckpointer", "load_checkpoint_file",
           "ConversionError", "ConversionReport", "convert_official_state_dict", "UnsafePickleError",
           "load_detector_weights", "load_weights_pickle"]
