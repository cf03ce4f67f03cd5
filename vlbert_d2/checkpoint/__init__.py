"""Checkpoint loading and conversion of foreign checkpoint formats."""
from .checkpointer import CheckpointError, VLBertCheckpointer
from .official import ConversionError, ConversionReport, convert_official_state_dict

__all__ = ["CheckpointError", "VLBertCheckpointer", "ConversionError", "ConversionReport",
           "convert_official_state_dict"]
