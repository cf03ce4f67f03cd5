"""Loading the public detectron2-format weights of the bottom-up-attention detector.

``faster_rcnn_from_caffe.pkl`` and ``faster_rcnn_from_caffe_attr.pkl`` (the detectron2 port
of Anderson et al.'s Caffe model) are pickles of ``{"model": {name: numpy array}, ...}`` named
as this detector's state dict:

* ``backbone.stem.conv1.*``, ``backbone.res{2,3,4}.<block>.{conv1,conv2,conv3,shortcut}.*``
  (R101: 3, 4 and 23 blocks; FrozenBN ``norm.{weight,bias,running_mean,running_var}``);
* ``proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}.*`` (512 hidden channels,
  12 anchors: 4 sizes x 3 aspect ratios);
* ``roi_heads.res5.<block>.*``;
* ``roi_heads.box_predictor.cls_score.*`` (1601 x 2048, background last),
  ``roi_heads.box_predictor.bbox_pred.*`` (6400 x 2048: 4 deltas per object class) and, in the
  ``_attr`` file, ``roi_heads.box_predictor.cls_embedding.weight`` (1601 x 256),
  ``roi_heads.box_predictor.fc_attr.*`` (512 x 2304) and ``roi_heads.box_predictor.attr_score.*``
  (401 x 512, "no attribute" last).

Pickles can run code when loaded: the file is read only through
:func:`vlbert_d2.checkpoint.detector.load_weights_pickle`, which rebuilds containers and numpy
arrays and refuses anything else. Other checkpoints (a detectron2 ``.pth`` trained here) load with
``torch.load(weights_only=True)``.
"""
import logging

from vlbert_d2.checkpoint import SafeCheckpointer
from vlbert_d2.checkpoint.detector import load_weights_pickle

logger = logging.getLogger(__name__)

__all__ = ["BottomUpCheckpointer", "load_bottom_up_weights", "map_bottom_up_weights"]


def _shape(value):
    return tuple(value.shape)


def map_bottom_up_weights(weights, model_shapes, path="<weights>"):
    """Match the file's names to the model's.

    A name is used as is when the model has it; otherwise, as detectron2 matches pre-trained
    weights, it maps to the one model name it is a complete suffix of (``res5.0.conv1.weight``
    -> ``roi_heads.res5.0.conv1.weight``). Arrays stay numpy arrays (the checkpointer converts
    them), so this also runs on file stand-ins that hold no data.

    Args:
        weights (dict[str, np.ndarray]): the file's ``model`` entry.
        model_shapes (dict[str, tuple]): the model's state-dict names and shapes.
        path (str): the file, for messages.

    Returns:
        (dict[str, np.ndarray] keyed by model name, dict[str, str] file name -> model name for the
        renamed ones, list[str] file names the model has no place for)

    Raises:
        ValueError: a matched tensor whose shape differs from the model's (lists all of them).
    """
    mapped = {name: weights[name] for name in weights if name in model_shapes}
    renamed, unused = {}, []
    for name in sorted(k for k in weights if k not in model_shapes):
        candidates = [k for k in model_shapes if k.endswith("." + name) and k not in mapped]
        if len(candidates) == 1:
            mapped[candidates[0]] = weights[name]
            renamed[name] = candidates[0]
        else:
            unused.append(name)
    bad = [f"'{k}': file {_shape(v)} vs model {tuple(model_shapes[k])}"
           for k, v in mapped.items() if _shape(v) != tuple(model_shapes[k])]
    if bad:
        raise ValueError(f"{path}: shapes differ from the detector built by the config (wrong "
                         "RESNETS.DEPTH, NUM_CLASSES or MODEL.BUA keys?):\n  " + "\n  ".join(bad))
    return mapped, renamed, unused


class BottomUpCheckpointer(SafeCheckpointer):
    """The safe checkpointer (``.pkl`` through the restricted unpickler, ``.pth`` with
    ``weights_only=True``), mapping the public ``.pkl`` layout's names to this detector's.

    After :meth:`load`, :attr:`report` holds what happened: ``loaded`` (model names filled),
    ``renamed`` (file name -> model name), ``unused`` (file names not used) and ``missing``
    (model names the file did not fill; they keep their initialisation).
    """

    report = None

    def _load_file(self, filename):
        if not filename.endswith(".pkl"):
            self._renamed = {}
            return super()._load_file(filename)
        weights = load_weights_pickle(filename)
        shapes = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        mapped, self._renamed, unused = map_bottom_up_weights(weights, shapes, filename)
        # Unused names are passed on too, so that detectron2 lists them with the missing ones.
        mapped.update({k: weights[k] for k in unused})
        return {"model": mapped, "__author__": "bottom-up-attention (detectron2 port)"}

    def _load_model(self, checkpoint):
        names = sorted(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        not_loaded = set(incompatible.unexpected_keys) | {k for k, _, _ in incompatible.incorrect_shapes}
        self.report = {
            "loaded": [k for k in names if k not in not_loaded],
            "renamed": dict(self._renamed),
            "unused": sorted(incompatible.unexpected_keys),
            "missing": sorted(k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")),
            "incorrect_shapes": list(incompatible.incorrect_shapes),
        }
        return incompatible


def load_bottom_up_weights(model, path):
    """Fill ``model`` from ``path`` (a ``.pkl`` of the public format, or a detectron2 ``.pth``).

    Returns:
        dict: :attr:`BottomUpCheckpointer.report`.
    """
    checkpointer = BottomUpCheckpointer(model)
    checkpointer.load(path)
    report = checkpointer.report
    logger.info("%s: %d tensors loaded (%d renamed), %d in the file unused, %d of the model missing",
                path, len(report["loaded"]), len(report["renamed"]), len(report["unused"]),
                len(report["missing"]))
    if report["missing"]:
        logger.warning("%s does not hold %s: they keep their random initialisation", path,
                       ", ".join(_group(report["missing"])))
    return report


def _group(names):
    """Module names of parameter names, in order, without repeats (for short messages)."""
    seen = []
    for n in names:
        m = n.rsplit(".", 1)[0]
        if m not in seen:
            seen.append(m)
    return seen
