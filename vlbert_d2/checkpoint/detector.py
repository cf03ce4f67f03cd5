"""Visual Genome detector weights (bottom-up attention) for the visual trunk.

The paper's trunk is the Faster R-CNN ResNet-101 (C4, caffe style) that Anderson et al. trained
on Visual Genome (1600 object classes, 400 attributes). Its public detectron2-format weights
(``faster_rcnn_from_caffe.pkl``, ``faster_rcnn_from_caffe_attr.pkl``) are pickles of
``{"model": {name: numpy array}, ...}`` in detectron2's R-C4 names: ``backbone.*`` (stem,
res2-res4) and ``roi_heads.res5.*``, plus the RPN and box/attribute predictors, which VL-BERT does
not use. The res5 weights fit the VL-BERT head (the same convolutions, run with stride 1 and
dilation 2 instead of stride 2, as in the official implementation).

A detector trained with detectron2 here (``projects/BottomUpAttention/train_detector.py``, e.g. the
tiny one of ``make demo-pipeline``) is a ``.pth`` checkpoint with the same names under ``model``
(BatchNorm layers add ``num_batches_tracked``, which the trunk's FrozenBN has no place for).

Pickles can run code when loaded, so :func:`load_weights_pickle` only rebuilds plain containers,
numbers, strings and numpy arrays and refuses anything else; ``.pth`` files are read with
``torch.load(weights_only=True)`` (:func:`load_detector_state`).
"""
import logging

import numpy as np
import torch

from ..utils.safe_pickle import NUMPY_GLOBALS, PLAIN_GLOBALS, UnsafePickleError, restricted_load

logger = logging.getLogger(__name__)

__all__ = ["UnsafePickleError", "load_weights_pickle", "load_detector_state", "map_detector_weights",
           "load_detector_weights"]


def load_weights_pickle(path):
    """Load a ``.pkl`` weights file, allowing only plain containers and numpy arrays.

    Returns:
        dict[str, np.ndarray]: the ``model`` entry of the file (or the file itself when it is
        a flat dict of arrays).
    """
    obj = restricted_load(path, NUMPY_GLOBALS | PLAIN_GLOBALS, what="a weights file")
    weights = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, np.ndarray) for v in weights.values()):
        raise ValueError(f"{path}: expected {{'model': {{name: numpy array}}}} (detectron2's .pkl format)")
    return weights


def load_detector_state(path):
    """The detector's weights, by name, from a ``.pkl`` (:func:`load_weights_pickle`) or a
    detectron2 ``.pth`` checkpoint (``torch.load(weights_only=True)``, its ``model`` entry).

    Raises:
        CheckpointError: missing, unreadable or asking to run code (names the file).
        ValueError: not a dict of tensors / arrays under ``model``.
    """
    if path.endswith(".pkl"):
        return load_weights_pickle(path)
    from .checkpointer import load_checkpoint_file  # the checkpointer imports this module's package

    weights = load_checkpoint_file(path)["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, (torch.Tensor, np.ndarray)) for v in weights.values()):
        raise ValueError(f"{path}: expected {{'model': {{name: tensor}}}} (a detectron2 checkpoint of the detector)")
    return weights


def _as_tensor(value):
    """float32 for the weights (files may hold float64 or float16), other dtypes (BatchNorm's
    int64 counter) as they are."""
    t = value.detach().clone() if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    return t.float() if t.is_floating_point() else t


def map_detector_weights(weights):
    """detectron2 R-C4 detector names -> :class:`RegionFeatureExtractor` names.

    Returns:
        (dict[str, Tensor], list[str]): the mapped tensors and the names not used.
    """
    mapped, unused = {}, []
    for name, value in weights.items():
        if name.startswith("backbone."):
            mapped[name] = _as_tensor(value)
        elif name.startswith("roi_heads.res5."):
            mapped["res5." + name[len("roi_heads.res5."):]] = _as_tensor(value)
        else:
            unused.append(name)
    return mapped, unused


def load_detector_weights(region_extractor, path):
    """Fill ``region_extractor`` (trunk and res5) from a detector's weights (``.pkl`` or ``.pth``,
    :func:`load_detector_state`).

    Raises on any shape mismatch; logs what it loaded, what in the file it did not use (RPN,
    box and attribute predictors) and what of the trunk it did not find.

    Returns:
        dict with the lists "loaded", "unused" (in the file) and "missing" (in the model).
    """
    mapped, unused = map_detector_weights(load_detector_state(path))
    own = region_extractor.state_dict()
    bad = [f"'{k}': file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{path}: shape mismatch with the visual trunk:\n  " + "\n  ".join(bad))
    unused += [k for k in mapped if k not in own]
    loadable = {k: v for k, v in mapped.items() if k in own}
    region_extractor.load_state_dict(loadable, strict=False)
    missing = [k for k in own if k not in loadable and not k.endswith("num_batches_tracked")]
    logger.info("Loaded %d tensors of the visual trunk from %s; %d in the file unused (%s); "
                "%d of the trunk not in the file%s", len(loadable), path, len(unused),
                ", ".join(sorted({u.split(".")[0] + "." + u.split(".")[1] for u in unused if "." in u})) or "-",
                len(missing), (": " + ", ".join(missing)) if missing else "")
    return {"loaded": sorted(loadable), "unused": sorted(unused), "missing": missing}
