"""projects/BottomUpAttention against the public detectron2 port of the bottom-up-attention
detector (github airsplay/py-bottom-up-attention), on the same seeded weights and image.

``tests/fixtures/bua_golden`` holds what the port computed (``projects/BottomUpAttention/parity/
make_golden.py`` ran it from a clone; see its docstring for the three import stand-ins and why
its steps are those of its feature-extraction demo): the key list of its state dict, the seed
and the per-layer calibration scalars the weights are rebuilt from, and its outputs. No weights
file is stored: the test rebuilds the tensors, writes them as a ``.pkl`` in the port's layout,
loads it through this project's ``BottomUpCheckpointer`` and runs ``RegionDetector``.

Tolerances: float32 features and logits within 1e-5 of the largest magnitude of the tensor
compared (the same operations in the same order, on one CPU thread, agree bit for bit on the
machine that wrote the golden data; 1e-5 leaves room for another BLAS / oneDNN build, whose
summation order differs by a few ulps per layer through ~110 layers), boxes within 1e-3 pixel
(float32 on a 320-pixel image is 3e-5), and identical region sets (the selections' margins,
recorded in meta.json, are orders of magnitude above such differences).
"""
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

PROJECT = os.path.join(REPO, "projects", "BottomUpAttention")
sys.path.insert(0, os.path.join(PROJECT, "parity"))

import bua  # noqa: E402
import seeded  # noqa: E402

GOLDEN = os.path.join(REPO, "tests", "fixtures", "bua_golden")
CONFIG = os.path.join(PROJECT, seeded.PROJECT_CONFIG)
ANCHORS = "proposal_generator.anchor_generator.cell_anchors.0"
RTOL = 1e-5
BOX_ATOL = 1e-3


def assert_close(actual, expected, what, rtol=RTOL):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs port {expected.shape}"
    scale = max(float(np.abs(expected).max()), 1e-12) if expected.size else 1.0
    err = float(np.abs(actual - expected).max()) / scale if expected.size else 0.0
    assert err <= rtol, f"{what}: max |difference| = {err:.3g} of the largest value (tolerance {rtol})"
    return err


def assert_boxes(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: {actual.shape} vs port {expected.shape}"
    err = float(np.abs(actual - expected).max()) if expected.size else 0.0
    assert err <= BOX_ATOL, f"{what}: boxes differ by up to {err:.3g} px"


@pytest.fixture(scope="module")
def golden():
    if not os.path.isfile(os.path.join(GOLDEN, "meta.json")):
        pytest.skip("no golden data (run projects/BottomUpAttention/parity/make_golden.py)")
    with open(os.path.join(GOLDEN, "meta.json")) as f:
        meta = json.load(f)
    with np.load(os.path.join(GOLDEN, "golden.npz")) as z:
        data = {k: z[k] for k in z.files}
    image = seeded.synthetic_image(meta["seed"])
    assert seeded.image_digest(image) == meta["image"]["sha256"], "the synthetic image is not the port's"
    assert meta["sizes"] == seeded.SIZES and meta["selections"] == seeded.SELECTIONS
    return meta, data, image


@pytest.fixture(scope="module")
def weights_pkl(golden, tmp_path_factory):
    """The port's state dict rebuilt from the key list, the seed and the calibration, as a .pkl in
    its layout (the form of faster_rcnn_from_caffe_attr.pkl)."""
    meta, data, _ = golden
    weights = seeded.seeded_state_dict(meta["key_shapes"], meta["seed"], meta["calibration"])
    weights.update({k[len("extra/"):]: v for k, v in data.items() if k.startswith("extra/")})
    assert sorted(weights) == sorted(meta["key_shapes"])
    path = str(tmp_path_factory.mktemp("bua_parity") / "seeded_port_layout.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "bua parity (seeded)"}, f)
    return path, weights


def make_detector(weights_pkl, selection="default"):
    sel = seeded.SELECTIONS[selection]
    opts = seeded.project_opts() + [
        "MODEL.BUA.NMS_THRESH", str(sel["nms"]), "MODEL.BUA.SCORE_THRESH", str(sel["thresh"]),
        "MODEL.BUA.MIN_BOXES", str(sel["min"]), "MODEL.BUA.MAX_BOXES", str(sel["max"]),
        "MODEL.BUA.BOX_SOURCE", sel["box_source"]]
    return bua.RegionDetector(bua.setup_detector_cfg(CONFIG, weights_pkl[0], opts=opts, device="cpu"))


@pytest.fixture(scope="module")
def detector(weights_pkl):
    return make_detector(weights_pkl)


@pytest.fixture(scope="module")
def steps(golden, detector):
    """This project's model, step by step, on the image (as RegionDetector feeds it)."""
    _, _, image = golden
    model = detector.model
    resized = detector.resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
    with torch.no_grad():
        images = model.preprocess_image([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        heads = model.roi_heads
        pooled = heads._shared_roi_transform([features[f] for f in heads.in_features],
                                             [p.proposal_boxes for p in proposals]).mean(dim=[2, 3])
        predictions = heads.box_predictor(pooled)
        logits, deltas = predictions
        attr = heads.box_predictor.attribute_logits(pooled, logits.argmax(dim=1))
        per_class = heads.box_predictor.predict_boxes(predictions, proposals)[0]
    return {"resized": resized, "res4": features["res4"][0], "proposals": proposals[0], "pooled": pooled,
            "logits": logits, "deltas": deltas, "attr": attr, "boxes": per_class, "image_size": images.image_sizes[0]}


def test_port_full_layout_loads(golden):
    """The port's full-size state dict (R101, 1600 classes, 400 attributes) fills every tensor of
    this project's full-size detector, by the same names and shapes; only the port's anchor
    buffer (computed from the config in both) is left over."""
    with open(os.path.join(GOLDEN, "port_r101_layout.json")) as f:
        layout = {k: tuple(v) for k, v in json.load(f)["key_shapes"].items()}
    from detectron2.modeling import build_model

    cfg = bua.setup_detector_cfg(CONFIG, device="meta")
    with torch.device("meta"):  # 65M parameters, no memory, no time
        model = build_model(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stand_ins = {k: np.broadcast_to(np.float32(0), s) for k, s in layout.items()}
    mapped, renamed, unused = bua.map_bottom_up_weights(stand_ins, shapes)
    assert unused == [ANCHORS]
    assert renamed == {}
    assert sorted(mapped) == sorted(shapes)
    assert len(layout) == 536


def test_weights_load(weights_pkl, detector):
    report = detector.load_report
    assert report["missing"] == [] and report["incorrect_shapes"] == []
    # The port's file carries its anchor buffer; detectron2 v0.6 drops it silently (its anchors
    # are non-persistent buffers computed from the config), so nothing is reported unused.
    assert report["unused"] == [] and report["renamed"] == {}
    state = detector.model.state_dict()
    for k, v in weights_pkl[1].items():
        if k != ANCHORS:
            assert np.array_equal(state[k].numpy(), v), k
    # The anchors the project computes from its config are the port's buffer.
    anchors = next(iter(detector.model.proposal_generator.anchor_generator.cell_anchors))
    assert np.array_equal(anchors.numpy(), weights_pkl[1][ANCHORS])


def test_backbone(golden, steps):
    meta, data, _ = golden
    assert tuple(steps["resized"].shape[:2]) == tuple(data["resized_hw"])
    res4 = steps["res4"]
    assert tuple(res4.shape) == tuple(data["res4_shape"])
    c = res4.shape[0]
    p = torch.from_numpy(seeded.projection(meta["seed"], "res4", meta["projections"]["res4"], c)).float()
    assert_close(p @ res4.reshape(c, -1), data["res4_proj"], "res4 (projected)")
    assert_close(res4.mean(dim=(1, 2)), data["res4_channel_mean"], "res4 channel means")


def test_rpn(golden, steps):
    _, data, _ = golden
    proposals = steps["proposals"]
    assert_boxes(proposals.proposal_boxes.tensor, data["proposals"], "RPN proposals (in order)")
    assert_close(proposals.objectness_logits, data["objectness_logits"], "objectness logits")


def test_roi_head(golden, steps):
    meta, data, _ = golden
    pooled = steps["pooled"]
    assert pooled.shape[1] == 2048
    p = torch.from_numpy(seeded.projection(meta["seed"], "pooled", meta["projections"]["pooled"], 2048)).float()
    assert_close(pooled @ p.t(), data["pooled_proj"], "pooled res5 features (projected)")
    assert_close(pooled.norm(dim=1), data["pooled_norm"], "pooled res5 feature norms")
    assert_close(steps["logits"], data["cls_logits"], "class logits")
    assert_close(steps["attr"], data["attr_logits"], "attribute logits")
    d = steps["deltas"]
    p = torch.from_numpy(seeded.projection(meta["seed"], "deltas", meta["projections"]["deltas"], d.shape[1])).float()
    assert_close(d @ p.t(), data["deltas_proj"], "box deltas (projected)")
    probs = torch.softmax(steps["logits"], dim=1)
    k = probs.shape[1] - 1
    from detectron2.structures import Boxes
    boxes = Boxes(steps["boxes"].reshape(-1, 4))
    boxes.clip(steps["image_size"])
    boxes = boxes.tensor.view(len(probs), k, 4)
    arg = probs[:, :k].argmax(dim=1)
    assert_boxes(boxes[torch.arange(len(arg)), arg], data["argmax_box"], "regressed box of the best class")


def _match(actual_boxes, expected_boxes, what):
    """Index of the port's region for each of ours (boxes are unique per region)."""
    a, e = np.asarray(actual_boxes, np.float64), np.asarray(expected_boxes, np.float64)
    assert len(a) == len(e), f"{what}: {len(a)} regions vs {len(e)} in the port"
    dist = np.abs(a[:, None, :] - e[None, :, :]).max(axis=2)
    idx = dist.argmin(axis=1)
    assert (dist[np.arange(len(a)), idx] <= BOX_ATOL).all(), f"{what}: a region's box is not among the port's"
    assert len(set(idx.tolist())) == len(idx), f"{what}: the region sets differ"
    return idx


@pytest.mark.parametrize("selection", sorted(seeded.SELECTIONS))
def test_regions(golden, weights_pkl, detector, selection):
    """RegionDetector's regions = the generate_tsv.py rule on the port's outputs: the same
    boxes (in the image's pixels), confidences, classes, class distributions and, for the
    default selection (VL-BERT's 10-100 at 0.5), the 2048-d features and attribute logits."""
    _, data, image = golden
    det = detector if selection == "default" else make_detector(weights_pkl, selection)
    regions = det([image])[0]
    idx = _match(regions.pred_boxes.tensor, data[f"{selection}_boxes"], selection)
    assert np.array_equal(idx, np.arange(len(idx))), f"{selection}: same regions, other order"
    assert_close(regions.scores, data[f"{selection}_conf"], f"{selection}: confidences")
    assert np.array_equal(regions.pred_classes.numpy(), data[f"{selection}_classes"]), f"{selection}: classes"
    assert_close(regions.class_probs, data[f"{selection}_class_probs"], f"{selection}: class distributions")
    if selection == "default":
        assert_close(regions.features, data["default_features"], "2048-d features of the regions")
        assert_close(regions.attr_logits, data["default_attr_logits"], "attribute logits of the regions")
        best = torch.softmax(regions.attr_logits[:, :-1], dim=1).max(dim=1)
        assert np.array_equal(regions.attr_classes.numpy(), best.indices.numpy())


def test_port_demo_detections(golden, steps):
    """The port's own demo post-processing (detectron2's per-class NMS on the regressed boxes,
    score 0.2, 36 detections), which the project does not offer, gives the same detections from
    this project's class scores and boxes (detectron2 v0.6's function on the project's outputs)."""
    meta, data, image = golden
    from detectron2.modeling.postprocessing import detector_postprocess
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
    demo = meta["demo"]
    probs = torch.softmax(steps["logits"], dim=1)
    inst, ids = fast_rcnn_inference_single_image(steps["boxes"], probs, steps["image_size"], demo["score_thresh"],
                                                 demo["nms_thresh"], demo["topk"])
    inst = detector_postprocess(inst, image.shape[0], image.shape[1])
    assert np.array_equal(ids.numpy(), data["demo_rois"])
    assert np.array_equal(inst.pred_classes.numpy(), data["demo_classes"])
    assert_close(inst.scores, data["demo_scores"], "demo detection scores")
    assert_boxes(inst.pred_boxes.tensor, data["demo_boxes"], "demo detection boxes")
