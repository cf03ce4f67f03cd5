#!/usr/bin/env python
"""Golden inputs and outputs of the public detectron2 port of the bottom-up-attention detector.

Runs the port (github airsplay/py-bottom-up-attention, a detectron2 v0.1 fork) from a user's
clone, on seeded weights in its own layout, on a small synthetic image, and writes what
``tests/fidelity/test_bua_parity.py`` compares this project's detector with. No code of the port is
copied: it is imported from ``--port-repo``, in this process only (its package is also named
``detectron2``, so this script must not import this project's ``bua`` or ``vlbert_d2``).

    python projects/BottomUpAttention/parity/make_golden.py --port-repo /tmp/py-bottom-up-attention \\
        --output tests/fixtures/bua_golden [--port-commit SHA] [--seed 0]

Up to three stand-ins let the unmodified port run with a current Python and PyTorch; none
changes a number:

* ``detectron2._C``, the port's compiled ops (ROIAlign, ROIAlignRotated, deformable conv, rotated
  IoU / NMS), when the clone has no build of them: as published, their C++ does not compile
  against current PyTorch (``AT_DISPATCH_*(t.type(), ...)`` in ``ROIAlign_cpu.cpp``,
  ``ROIAlignRotated_cpu.cpp`` and ``nms_rotated_cpu.cpp``: the dispatch macros take a ScalarType
  now; with those five calls changed to ``t.scalar_type()`` in a scratch copy, the CPU build
  ``python setup.py build_ext --inplace`` succeeds and this script uses it). This detector
  calls none of them (RoIPool and NMS are torchvision's); the stand-in raises if one is called.
  Both give the same golden data, byte for byte.
* ``collections.Mapping`` & co, removed in Python 3.10 and imported by the port's
  ``detectron2/evaluation/testing.py`` (reached through ``detectron2.engine``).
* ``imagesize`` (the port's COCO loader imports it at module level; unused here), only when it
  is not installed.

What the port is run through: its ``DefaultPredictor`` (config, model, its ``DetectionCheckpointer``
reading the ``.pkl``, its resize) and, since its ``GeneralizedRCNN.forward`` cannot run with the
attribute head (``Res5ROIHeads.forward`` unpacks two outputs of the three-output predictor: the
error is recorded), the steps of its feature-extraction demo
(``demo/demo_feature_extraction_attr.ipynb``): backbone, RPN, ``_shared_roi_transform``, mean
pooling, ``box_predictor``, ``FastRCNNOutputs``. Region selection: the port has no 10-100 rule;
the reference applies Anderson et al.'s ``generate_tsv.py`` rule (written here) on the port's
per-class NMS (``detectron2.layers.nms``), and the port's own demo detections
(``fast_rcnn_inference_single_image``) are recorded too.
"""
import argparse
import collections
import collections.abc
import json
import os
import pickle
import subprocess
import sys
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import seeded  # noqa: E402  (numpy only; after the path insert)

PROJ_RES4, PROJ_POOLED, PROJ_DELTAS = 16, 32, 16


def install_stand_ins(port_repo):
    """Put the port first on sys.path and install the stand-ins described in the module doc."""
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))

    import glob
    if glob.glob(os.path.join(port_repo, "detectron2", "_C*.so")):
        compiled = None  # a build of the port's ops is there: use it
    else:
        compiled = types.ModuleType("detectron2._C")

    def _getattr(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"the port's compiled op detectron2._C.{name} was called; it is not "
                               "built here (see make_golden.py)")
        return missing

    if compiled is not None:
        compiled.__getattr__ = _getattr
        sys.modules["detectron2._C"] = compiled
    try:
        import imagesize  # noqa: F401
    except ImportError:
        sys.modules["imagesize"] = types.ModuleType("imagesize")
    sys.path.insert(0, os.path.abspath(port_repo))
    import detectron2
    if not os.path.abspath(detectron2.__file__).startswith(os.path.abspath(port_repo)):
        raise RuntimeError(f"detectron2 was imported from {detectron2.__file__}, not from the port")
    if compiled is None:
        from detectron2 import _C
        return f"compiled ({os.path.basename(_C.__file__)})"
    return "stand-in (no compiled op is called)"


def port_cfg(port_repo, full=False):
    from detectron2.config import get_cfg
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(port_repo, seeded.PORT_CONFIG))
    # As the port's demo notebooks set them.
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 300
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 600, 1000
    cfg.MODEL.DEVICE = "cpu"
    if not full:
        cfg.merge_from_list(seeded.port_opts())
    return cfg


def write_pkl(path, weights):
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "bua parity (seeded)"}, f)


def norm_modules(model):
    from detectron2.layers import FrozenBatchNorm2d
    return {name: m for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}


def calibrate(model, key_shapes, seed, run_backbone, run_rpn, run_heads):
    """Measure the per-layer scalars of :func:`seeded.seeded_tensor` on the port's model.

    FrozenBN: the mean and variance of each layer's input, with the layers before it already
    calibrated (pre-hooks, in forward order). Gains: target std / measured std of each output layer.
    """
    import torch
    calibration = {"norms": {}, "gains": {}}
    sd = {k: torch.from_numpy(v) for k, v in seeded.seeded_state_dict(key_shapes, seed).items()}
    model.load_state_dict(sd, strict=False)

    def hook_for(name):
        def hook(module, inputs):
            x = inputs[0].double()
            mean, var = float(np.float32(x.mean())), float(np.float32(x.var()))
            calibration["norms"][name] = [mean, var]
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                t = seeded.frozen_bn_tensor(f"{name}.{leaf}", tuple(getattr(module, leaf).shape), seed, mean, var)
                getattr(module, leaf).copy_(torch.from_numpy(t))
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in norm_modules(model).items()]
    try:
        with torch.no_grad():
            features = run_backbone()
            head = model.proposal_generator.rpn_head
            for name, layer in (("objectness_logits", head.objectness_logits), ("anchor_deltas", head.anchor_deltas)):
                module = f"proposal_generator.rpn_head.{name}"
                t = torch.relu(head.conv(features["res4"]))
                gain = seeded.GAIN_TARGETS[module] / float(torch.nn.functional.conv2d(t, layer.weight).std())
                calibration["gains"][module] = float(np.float32(gain))
                w = seeded.seeded_tensor(f"{module}.weight", tuple(layer.weight.shape), seed, calibration)
                layer.weight.copy_(torch.from_numpy(w))
            proposals = run_rpn(features)
            pooled = run_heads(features, proposals)
            predictor = model.roi_heads.box_predictor
            for name in ("cls_score", "bbox_pred"):
                module = f"roi_heads.box_predictor.{name}"
                layer = getattr(predictor, name)
                gain = seeded.GAIN_TARGETS[module] / float((pooled @ layer.weight.t()).std())
                calibration["gains"][module] = float(np.float32(gain))
    finally:
        for h in handles:
            h.remove()
    return calibration


def generate_tsv_select(boxes, scores, nms_thresh, thresh, min_boxes, max_boxes, nms):
    """Anderson et al.'s tools/generate_tsv.py selection, with the port's NMS op.

    for every class: keep = nms(boxes of that class, its scores); max_conf[keep] = max(max_conf[keep],
    scores[keep]); then the RoIs with max_conf >= thresh, or the min_boxes / max_boxes most confident.
    Returns (RoI indices ordered by decreasing confidence, confidences, class of each confidence
    (first class reaching it), margins for the robustness report).
    """
    import torch
    num_rois, num_classes = scores.shape
    max_conf = torch.zeros(num_rois, dtype=scores.dtype)
    cls = torch.full((num_rois,), -1, dtype=torch.int64)
    for c in range(num_classes):
        b = boxes if boxes.dim() == 2 else boxes[:, c]
        keep = nms(b, scores[:, c], nms_thresh)
        better = scores[keep, c] > max_conf[keep]
        max_conf[keep[better]] = scores[keep[better], c]
        cls[keep[better]] = c
    above = torch.nonzero(max_conf >= thresh).flatten()
    order = torch.sort(max_conf, descending=True, stable=True).indices
    count = min(max(len(above), min_boxes), max_boxes, num_rois)
    keep = order[:count]
    sorted_conf = max_conf[order]
    margins = {
        "min_abs_conf_minus_thresh": float((max_conf - thresh).abs().min()),
        "gap_at_cut": float(sorted_conf[count - 1] - sorted_conf[count]) if count < num_rois else None,
        "num_above_thresh": len(above),
    }
    return keep, max_conf[keep], cls[keep], margins


def nms_margins(boxes, scores, floor, nms_thresh):
    """How far the per-class NMS that decides the regions is from a tie.

    Only (RoI, class) pairs scoring >= ``floor`` (half the lowest selected confidence) can change
    the selection: a pair below it is never a selected RoI's confidence, and it only suppresses
    pairs scoring lower still. Over those pairs: the smallest |IoU - nms_thresh| of two boxes of
    one class, and the smallest gap between two scores of one class (their NMS order).
    """
    import torch
    from detectron2.structures import Boxes, pairwise_iou
    iou_margin, gap = float("inf"), float("inf")
    for c in range(scores.shape[1]):
        idx = torch.nonzero(scores[:, c] >= floor).flatten()
        if len(idx) < 2:
            continue
        b = boxes[idx] if boxes.dim() == 2 else boxes[idx, c]
        iou = pairwise_iou(Boxes(b), Boxes(b))
        off = ~torch.eye(len(idx), dtype=torch.bool)
        iou_margin = min(iou_margin, float((iou[off] - nms_thresh).abs().min()))
        s = scores[idx, c].sort().values
        gap = min(gap, float((s[1:] - s[:-1]).min()))
    return {"floor": floor, "iou_margin": iou_margin, "score_gap": gap}


def full_layout(port_repo):
    """Names and shapes of the port's full-size R101 / 1600 / 400 model (its real layout)."""
    from detectron2.modeling import build_model
    model = build_model(port_cfg(port_repo, full=True))
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-repo", required=True,
                        help="a clone (or extracted tree) of airsplay/py-bottom-up-attention")
    parser.add_argument("--output", required=True, help="folder for meta.json, golden.npz, port_r101_layout.json")
    parser.add_argument("--port-commit", default=None,
                        help="the port's commit, recorded (default: `git rev-parse HEAD` in --port-repo)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    port_repo = os.path.abspath(args.port_repo)
    commit = args.port_commit
    if commit is None:
        try:
            commit = subprocess.check_output(["git", "-C", port_repo, "rev-parse", "HEAD"], text=True,
                                             stderr=subprocess.DEVNULL).strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    compiled_ops = install_stand_ins(port_repo)

    import torch
    torch.set_num_threads(1)
    from detectron2.engine import DefaultPredictor
    from detectron2.layers import nms
    from detectron2.modeling import build_model
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputs, fast_rcnn_inference_single_image
    from detectron2.structures import Boxes, Instances

    seed = args.seed
    os.makedirs(args.output, exist_ok=True)
    layout = full_layout(port_repo)
    cfg = port_cfg(port_repo)
    image = seeded.synthetic_image(seed)
    raw_h, raw_w = image.shape[:2]

    # --- calibration on the port's model (uncalibrated seeded weights) -------------------------
    model = build_model(cfg).eval()
    key_shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    from detectron2.data import transforms as T
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    inputs = [{"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)), "height": raw_h, "width": raw_w}]
    images = model.preprocess_image(inputs)
    calibration = calibrate(
        model, key_shapes, seed,
        run_backbone=lambda: model.backbone(images.tensor),
        run_rpn=lambda f: model.proposal_generator(images, f, None)[0],
        run_heads=lambda f, p: model.roi_heads._shared_roi_transform(
            [f[k] for k in model.roi_heads.in_features], [x.proposal_boxes for x in p]).mean(dim=[2, 3]))
    del model

    # --- the final weights, from the key list, the seed and the stored scalars only ------------
    weights = seeded.seeded_state_dict(key_shapes, seed, calibration)
    built = build_model(cfg)
    extra = {k: v.numpy() for k, v in built.state_dict().items() if not seeded.is_seeded(k)}
    del built
    weights.update(extra)
    with tempfile.TemporaryDirectory() as tmp:
        pkl = os.path.join(tmp, "seeded_port_layout.pkl")
        write_pkl(pkl, weights)
        cfg.MODEL.WEIGHTS = pkl
        predictor = DefaultPredictor(cfg)  # the port's checkpointer reads the .pkl
    model = predictor.model
    loaded = model.state_dict()
    for k, v in weights.items():
        assert np.array_equal(loaded[k].numpy(), v), f"the port's loader changed {k}"

    # The port's own end-to-end inference (GeneralizedRCNN.forward), with the attribute head.
    try:
        predictor(image)
        full_forward = "ran"
    except Exception as e:  # noqa: BLE001  (recorded)
        full_forward = f"{type(e).__name__}: {e}"

    # --- the steps of the port's demo_feature_extraction_attr.ipynb ---------------------------
    with torch.no_grad():
        resized = predictor.transform_gen.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        inputs = [{"image": tensor, "height": raw_h, "width": raw_w}]
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        box_features = model.roi_heads._shared_roi_transform(
            [features[f] for f in model.roi_heads.in_features], [p.proposal_boxes for p in proposals])
        pooled = box_features.mean(dim=[2, 3])
        cls_logits, attr_logits, deltas = model.roi_heads.box_predictor(pooled)
        outputs = FastRCNNOutputs(model.roi_heads.box2box_transform, cls_logits, deltas, proposals,
                                  model.roi_heads.smooth_l1_beta)
        probs = outputs.predict_probs()[0]
        boxes = outputs.predict_boxes()[0]

        # The demo's detections (score 0.2, NMS 0.5 .. 0.9 until 36, topk 36).
        for demo_nms in np.arange(0.5, 1.0, 0.1):
            demo, demo_ids = fast_rcnn_inference_single_image(boxes, probs, tensor.shape[1:], score_thresh=0.2,
                                                              nms_thresh=demo_nms, topk_per_image=36)
            if len(demo_ids) == 36:
                break
        demo = detector_postprocess(demo, raw_h, raw_w)

        res4 = features["res4"][0]
        c = res4.shape[0]
        p_res4 = torch.from_numpy(seeded.projection(seed, "res4", PROJ_RES4, c)).float()
        p_pooled = torch.from_numpy(seeded.projection(seed, "pooled", PROJ_POOLED, pooled.shape[1])).float()
        p_deltas = torch.from_numpy(seeded.projection(seed, "deltas", PROJ_DELTAS, deltas.shape[1])).float()
        proposal_boxes = proposals[0].proposal_boxes.tensor
        num_classes = probs.shape[1] - 1
        fg = probs[:, :num_classes]
        per_class = Boxes(boxes.reshape(-1, 4))
        per_class.clip(tuple(proposals[0].image_size))
        per_class = per_class.tensor.view(len(proposal_boxes), num_classes, 4)
        argmax_fg = fg.argmax(dim=1)

        golden = {
            "resized_hw": np.array(resized.shape[:2]),
            "res4_proj": (p_res4 @ res4.reshape(c, -1)).numpy(),
            "res4_channel_mean": res4.mean(dim=(1, 2)).numpy(),
            "res4_shape": np.array(res4.shape),
            "proposals": proposal_boxes.numpy(),
            "objectness_logits": proposals[0].objectness_logits.numpy(),
            "pooled_proj": (pooled @ p_pooled.t()).numpy(),
            "pooled_norm": pooled.norm(dim=1).numpy(),
            "cls_logits": cls_logits.numpy(),
            "attr_logits": attr_logits.numpy(),
            "deltas_proj": (deltas @ p_deltas.t()).numpy(),
            "argmax_box": per_class[torch.arange(len(argmax_fg)), argmax_fg].numpy(),
            "demo_boxes": demo.pred_boxes.tensor.numpy(),
            "demo_scores": demo.scores.numpy(),
            "demo_classes": demo.pred_classes.numpy(),
            "demo_rois": demo_ids.numpy(),
        }
        margins = {}
        for name, sel in seeded.SELECTIONS.items():
            b = proposal_boxes if sel["box_source"] == "proposals" else per_class
            keep, conf, cls, m = generate_tsv_select(b, fg, sel["nms"], sel["thresh"], sel["min"], sel["max"], nms)
            chosen = b[keep] if b.dim() == 2 else b[keep, cls]
            inst = Instances(tuple(proposals[0].image_size))
            inst.pred_boxes = Boxes(chosen.clone())
            inst = detector_postprocess(inst, raw_h, raw_w)
            m.update(nms_margins(b, fg, 0.5 * float(conf.min()), sel["nms"]))
            margins[name] = m
            golden[f"{name}_rois"] = keep.numpy()
            golden[f"{name}_conf"] = conf.numpy()
            golden[f"{name}_classes"] = cls.numpy()
            golden[f"{name}_boxes"] = inst.pred_boxes.tensor.numpy()
            golden[f"{name}_class_probs"] = probs[keep].numpy()
            if name == "default":
                golden["default_features"] = pooled[keep].numpy()
                golden["default_attr_logits"] = attr_logits[keep].numpy()
        golden.update({f"extra/{k}": v for k, v in extra.items()})

    np.savez_compressed(os.path.join(args.output, "golden.npz"), **golden)
    meta = {
        "what": "golden outputs of the public detectron2 port of the bottom-up-attention detector "
                "(projects/BottomUpAttention/parity/make_golden.py); tests/fidelity/test_bua_parity.py",
        "port": {"repository": "github.com/airsplay/py-bottom-up-attention", "commit": commit,
                 "config": seeded.PORT_CONFIG, "opts": [str(x) for x in seeded.port_opts()],
                 "full_forward": full_forward, "compiled_ops": compiled_ops,
                 "stand_ins": ["collections.Mapping & co (Python >= 3.10)", "imagesize (unused import)"]},
        "project_opts": seeded.project_opts(),
        "sizes": seeded.SIZES,
        "selections": seeded.SELECTIONS,
        "seed": seed,
        "image": {"height": raw_h, "width": raw_w, "sha256": seeded.image_digest(image), "format": "BGR"},
        "projections": {"res4": PROJ_RES4, "pooled": PROJ_POOLED, "deltas": PROJ_DELTAS},
        "demo": {"score_thresh": 0.2, "nms_thresh": round(float(demo_nms), 6), "topk": 36},
        "margins": margins,
        "calibration": calibration,
        "key_shapes": key_shapes,
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
    }
    with open(os.path.join(args.output, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(args.output, "port_r101_layout.json"), "w") as f:
        json.dump({"what": "names and shapes of the port's full-size model (its config "
                   f"{seeded.PORT_CONFIG}, commit {commit}): the layout of faster_rcnn_from_caffe_attr.pkl",
                   "key_shapes": layout}, f, indent=0)
    print(json.dumps({"full_forward": full_forward, "margins": margins,
                      "selected": {n: len(golden[f'{n}_rois']) for n in seeded.SELECTIONS},
                      "demo_detections": len(golden["demo_rois"]), "demo_nms": float(demo_nms)}, indent=1))


if __name__ == "__main__":
    main()
