"""Checkpoint loading with errors that name the file."""
import os

from detectron2.checkpoint import DetectionCheckpointer


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing or cannot be read."""


class VLBertCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer; a missing or unreadable file raises :class:`CheckpointError`
    naming it (instead of a bare assertion or unpickling error)."""

    def _load_file(self, filename):
        if not os.path.isfile(filename):
            raise CheckpointError(f"checkpoint not found: {filename}")
        try:
            return super()._load_file(filename)
        except Exception as e:  # torch.load / pickle raise many types for a damaged file
            raise CheckpointError(f"cannot read checkpoint {filename}: {type(e).__name__}: {e}") from e
