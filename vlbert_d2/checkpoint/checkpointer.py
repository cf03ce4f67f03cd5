"""Checkpoint reading and writing that never runs code from a file and survives a crash.

detectron2's checkpointer unpickles ``.pkl`` files with plain :func:`pickle.load` (any file can
run a command) and leaves ``.pth`` files to ``torch.load``'s default; it writes checkpoints and
``last_checkpoint`` in place (a crash leaves a partial file that ``--resume`` then picks), and an
empty or damaged ``last_checkpoint`` stops a resume. :class:`SafeCheckpointer` changes exactly
these: ``.pkl`` through the restricted unpickler (containers, numbers, strings, numpy arrays),
everything else with ``torch.load(weights_only=True)``, atomic writes (temporary file, flush,
fsync, rename), and a fallback to the newest readable ``model_*.pth``.
"""
import logging
import os
import re
import zipfile

import torch

from detectron2.checkpoint import DetectionCheckpointer

from ..tasks import task_of_head
from ..utils.files import atomic_write, remove_stale_temporaries
from ..utils.safe_pickle import NUMPY_GLOBALS, PLAIN_GLOBALS, UnsafePickleError, restricted_load

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
_PERIODIC = re.compile(r"^model_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, cannot be read, or asks to run code."""


def load_checkpoint_file(filename):
    """Read a weights file without running any code it may hold.

    ``.pkl``: detectron2's pickle formats (``{"model": ..., "__author__": ...}`` or the
    Caffe2/Detectron1 ``blobs``), rebuilt by the restricted unpickler. Anything else: a
    ``torch.save`` file read with ``weights_only=True`` (tensors, containers, numbers, strings).

    Returns:
        dict with "model" (name -> tensor or array) and whatever else the file holds.

    Raises:
        CheckpointError: missing, unreadable, or asking for code; the message names the file.
    """
    if not os.path.isfile(filename):
        raise CheckpointError(f"checkpoint not found: {filename}")
    try:
        if filename.endswith(".pkl"):
            data = restricted_load(filename, NUMPY_GLOBALS | PLAIN_GLOBALS, what="a weights file")
            if not isinstance(data, dict):
                raise CheckpointError(f"{filename}: expected a dict of weights, got {type(data).__name__}")
            if "model" in data and "__author__" in data:
                return data
            # The Caffe2 / Detectron1 layout, as detectron2 reads it.
            data = data.get("blobs", data)
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        data = torch.load(filename, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except UnsafePickleError as e:
        raise CheckpointError(str(e)) from None  # names the file and what it asked for
    except Exception as e:  # torch.load / zip / pickle raise many types for a damaged file
        hint = (" (the file asks for more than tensors and plain containers: weights files are "
                "loaded with weights_only=True, so nothing in them can run)"
                if "weights_only" in str(e).lower() or "Unsupported global" in str(e) else "")
        raise CheckpointError(f"cannot read checkpoint {filename}: {type(e).__name__}: {e}{hint}") from None
    if filename.endswith(".pyth"):  # pycls, as detectron2 reads it
        if not isinstance(data, dict) or "model_state" not in data:
            raise CheckpointError(f"{filename}: a .pyth (pycls) checkpoint must hold 'model_state'")
        state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    if not isinstance(data, dict):
        raise CheckpointError(f"{filename}: expected a dict of weights, got {type(data).__name__}")
    return data if "model" in data else {"model": data}


def is_readable_checkpoint(path):
    """Cheap check that a ``torch.save`` file is whole: its zip directory (written last) reads."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


class SafeCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer with safe reading, atomic writing and a resume fallback."""

    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        if self.save_dir and self.save_to_disk:
            remove_stale_temporaries(self.save_dir)

    def _load_file(self, filename):
        return load_checkpoint_file(filename)

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        with atomic_write(path) as f:  # a crash never leaves a partial checkpoint under its name
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        with atomic_write(os.path.join(self.save_dir, LAST_CHECKPOINT), "w") as f:
            f.write(last_filename_basename)

    def _periodic_checkpoints(self):
        """``model_<iter>.pth`` files of ``save_dir``, newest (highest iteration) first."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        found = [(int(m.group(1)), f) for f in os.listdir(self.save_dir) if (m := _PERIODIC.match(f))]
        return [os.path.join(self.save_dir, f) for _, f in sorted(found, reverse=True)]

    def has_checkpoint(self):
        return (os.path.exists(os.path.join(self.save_dir, LAST_CHECKPOINT))
                or bool(self._periodic_checkpoints()))

    def get_checkpoint_file(self):
        """The file ``last_checkpoint`` names; when it is missing, empty, or names a file that
        is missing or not whole, the newest readable ``model_*.pth`` (with a warning)."""
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT)
        problem = None
        try:
            with open(tag) as f:
                name = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            name, problem = "", f"cannot read {tag} ({type(e).__name__})"
        if name:
            path = os.path.join(self.save_dir, name)
            # Only torch.save files can be checked cheaply; other formats are read as they are.
            if os.path.isfile(path) and (not path.endswith(".pth") or is_readable_checkpoint(path)):
                return path
            problem = f"{tag} names {name}, which is missing or incomplete"
        elif problem is None:
            problem = f"{tag} is empty" if os.path.exists(tag) else f"no {tag}"
        for path in self._periodic_checkpoints():
            if is_readable_checkpoint(path):
                logger.warning("%s: resuming from the newest readable checkpoint %s", problem, path)
                return path
            logger.warning("skipping %s: not a whole checkpoint (interrupted while written?)", path)
        return ""

    resumed_from = None  # the checkpoint that resume_or_load resumed from (None: none)

    def resume_or_load(self, path, *, resume=True):
        self.resumed_from = None
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if last:
                self.resumed_from = last
                return self.load(last)
            logger.warning("--resume: no readable checkpoint in %s; starting from %s", self.save_dir,
                           path or "the initialisation")
        return self.load(path, checkpointables=[])


class VLBertCheckpointer(SafeCheckpointer):
    """:class:`SafeCheckpointer` that also starts a VQA/RefCOCO+ head from the pre-training
    head of a pre-training checkpoint (the official fine-tuning configs' prefix changes)."""

    def _load_model(self, checkpoint):
        start_heads_from_pretraining(checkpoint["model"], self.model)
        return super()._load_model(checkpoint)


def start_heads_from_pretraining(state_dict, model):
    """When a pre-training checkpoint (with ``head.mlm_transform``/``head.mvrc_transform``) is
    loaded into a VQA, RefCOCO+ or VCR model, copy the matching pre-training transform to the
    task head's transform (VCR: the RoI classifier's), in place. A checkpoint that already has
    that part of the task head is left alone, and so is a model without it (a VCR model with
    ``ROI_CLS_LOSS_WEIGHT`` 0).

    Returns:
        list[str]: the keys added.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    # The task table's (pre-training prefix, head prefix) pairs of the model's head (the official
    # fine-tuning configs' PARTIAL_PRETRAIN_PREFIX_CHANGES).
    task = task_of_head(type(getattr(model, "head", None)).__name__)
    rules = dict(task.heads_from_pretraining) if task is not None else {}
    if not rules or any(k.startswith(dst) for dst in rules.values() for k in state_dict):
        return []
    wanted = model.state_dict()
    added = []
    for src, dst in rules.items():
        for key in [k for k in state_dict if k.startswith(src)]:
            if dst + key[len(src):] in wanted:
                state_dict[dst + key[len(src):]] = state_dict[key]
                added.append(dst + key[len(src):])
    if added:
        logger.info("%s starts from the pre-trained %s* (%d tensors)",
                    type(model.head).__name__, next(iter(rules)), len(added))
    return added
