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

    def _load_model(self, checkpoint):
        start_heads_from_pretraining(checkpoint["model"], self.model)
        return super()._load_model(checkpoint)


# Task heads that the official fine-tuning starts from a pre-training head (its configs'
# PARTIAL_PRETRAIN_PREFIX_CHANGES): head class -> {pre-training prefix: task-head prefix}.
HEADS_FROM_PRETRAINING = {
    "VQAHead": {"head.mlm_transform.": "head.transform."},        # dense, GELU, LayerNorm
    "RefCOCOHead": {"head.mvrc_transform.": "head.transform."},   # dense, GELU
}


def start_heads_from_pretraining(state_dict, model):
    """When a pre-training checkpoint (with ``head.mlm_transform``/``head.mvrc_transform``) is
    loaded into a VQA or RefCOCO+ model, copy the matching pre-training transform to the task
    head's transform, in place. A checkpoint that already has a task head is left alone.

    Returns:
        list[str]: the keys added.
    """
    rules = HEADS_FROM_PRETRAINING.get(type(getattr(model, "head", None)).__name__)
    if not rules or any(k.startswith("head.transform.") for k in state_dict):
        return []
    added = []
    for src, dst in rules.items():
        for key in [k for k in state_dict if k.startswith(src)]:
            state_dict[dst + key[len(src):]] = state_dict[key]
            added.append(dst + key[len(src):])
    if added:
        import logging

        logging.getLogger(__name__).info("%s starts from the pre-trained %s* (%d tensors)",
                                         type(model.head).__name__, next(iter(rules)), len(added))
    return added
