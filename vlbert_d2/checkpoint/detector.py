"""Visual Genome detector weights (bottom-up attention) for the visual trunk.

The paper's trunk is the Faster R-CNN ResNet-101 (C4, caffe style) that Anderson et al. trained
on Visual Genome (1600 object classes, 400 attributes). Its public detectron2-format weights
(``faster_rcnn_from_caffe.pkl``, ``faster_rcnn_from_caffe_attr.pkl``) are pickles of
``{"model": {name: numpy array}, ...}`` in detectron2's R-C4 names: ``backbone.*`` (stem,
res2-res4) and ``roi_heads.res5.*``, plus the RPN and box/attribute predictors, which VL-BERT does
not use. The res5 weights fit the VL-BERT head (the same convolutions, run with stride 1 and
dilation 2 instead of stride 2, as in the official implementation).

Pickles can run code when loaded, so :func:`load_weights_pickle` only rebuilds plain containers,
numbers, strings and numpy arrays and refuses anything else.
"""
import logging

import numpy as np
import torch

from ..utils.safe_pickle import NUMPY_GLOBALS, PLAIN_GLOBALS, UnsafePickleError, restricted_load

logger = logging.getLogger(__name__)

__all__ = ["UnsafePickleError", "load_weights_pickle", "map_detector_weights", "load_detector_weights"]


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


def map_detector_weights(weights):
    """detectron2 R-C4 detector names -> :class:`RegionFeatureExtractor` names.

    Returns:
        (dict[str, Tensor], list[str]): the mapped tensors and the names not used.
    """
    mapped, unused = {}, []
    for name, value in weights.items():
        if name.startswith("backbone."):
            mapped[name] = torch.from_numpy(np.ascontiguousarray(value)).float()
        elif name.startswith("roi_heads.res5."):
            mapped["res5." + name[len("roi_heads.res5."):]] = torch.from_numpy(np.ascontiguousarray(value)).float()
        else:
            unused.append(name)
    return mapped, unused


def load_detector_weights(region_extractor, path):
    """Fill ``region_extractor`` (trunk and res5) from a detector weights pickle.

    Raises on any shape mismatch; logs what it loaded, what in the file it did not use (RPN,
    box and attribute predictors) and what of the trunk it did not find.

    Returns:
        dict with the lists "loaded", "unused" (in the file) and "missing" (in the model).
    """
    mapped, unused = map_detector_weights(load_weights_pickle(path))
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
