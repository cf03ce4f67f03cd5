"""The bottom-up-attention detector (projects/BottomUpAttention): its structure against the names
and shapes of the public weights, loading a generated .pkl in their format (and refusing a
malicious one), the region selection of Anderson et al., the attribute head, and the detection
records it writes. Random weights, tiny sizes: fast on a CPU."""
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import REPO


import bua  # noqa: E402
from bua.testing import TINY_OPTS, calibrate_frozen_norms  # noqa: E402

CONFIG = os.path.join(REPO, "projects", "BottomUpAttention", "configs", "BUA-R101-C4-VG.yaml")


def public_r101_shapes():
    """Names and shapes of faster_rcnn_from_caffe_attr.pkl, written out from the public port's
    module layout (not from this project's model): R101-C4 caffe, RPN 512 hidden / 12 anchors,
    1600 classes + background, 400 attributes + "no attribute"."""
    shapes = {}

    def conv(name, out_c, in_c, k, bias=False, norm=True):
        shapes[f"{name}.weight"] = (out_c, in_c, k, k)
        if bias:
            shapes[f"{name}.bias"] = (out_c,)
        if norm:
            for p in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{name}.norm.{p}"] = (out_c,)

    conv("backbone.stem.conv1", 64, 3, 7)
    in_c = 64
    for prefix, stage, blocks, width in (("backbone.", "res2", 3, 64), ("backbone.", "res3", 4, 128),
                                         ("backbone.", "res4", 23, 256), ("roi_heads.", "res5", 3, 512)):
        out_c = width * 4
        for b in range(blocks):
            name = f"{prefix}{stage}.{b}"
            if b == 0:
                conv(f"{name}.shortcut", out_c, in_c, 1)
            conv(f"{name}.conv1", width, in_c if b == 0 else out_c, 1)
            conv(f"{name}.conv2", width, width, 3)
            conv(f"{name}.conv3", out_c, width, 1)
        in_c = out_c
    conv("proposal_generator.rpn_head.conv", 512, 1024, 3, bias=True, norm=False)
    conv("proposal_generator.rpn_head.objectness_logits", 12, 512, 1, bias=True, norm=False)
    conv("proposal_generator.rpn_head.anchor_deltas", 48, 512, 1, bias=True, norm=False)
    p = "roi_heads.box_predictor."
    shapes.update({p + "cls_score.weight": (1601, 2048), p + "cls_score.bias": (1601,),
                   p + "bbox_pred.weight": (6400, 2048), p + "bbox_pred.bias": (6400,),
                   p + "cls_embedding.weight": (1601, 256),
                   p + "fc_attr.weight": (512, 2304), p + "fc_attr.bias": (512,),
                   p + "attr_score.weight": (401, 512), p + "attr_score.bias": (401,)})
    return shapes


def _stand_in(shape):
    """A float32 array of that shape holding no memory (every element is the same zero)."""
    return np.broadcast_to(np.float32(0), shape)


def test_true_r101_structure_matches_the_public_weights():
    from detectron2.modeling import build_model

    cfg = bua.setup_detector_cfg(CONFIG, device="meta")
    with torch.device("meta"):  # 65M parameters, no memory, no time
        model = build_model(cfg)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    public = public_r101_shapes()
    assert own == public
    assert type(model.roi_heads).__name__ == "BottomUpRes5ROIHeads"
    assert type(model.backbone.stem).__name__ == "CaffeMaxPoolStem"
    assert model.roi_heads.res5[0].conv1.stride == (1, 1) and model.roi_heads.res5[0].shortcut.stride == (1, 1)
    assert all(model.roi_heads.res5[i].conv2.dilation == (2, 2) for i in range(3))
    assert model.roi_heads.pooler.level_poolers[0].__class__.__name__ == "RoIPool"

    # The public file (stand-ins of its arrays) maps onto it name for name; the extras are listed.
    weights = {k: _stand_in(v) for k, v in public.items()}
    weights["anchor_generator.extra"] = _stand_in((3,))
    mapped, renamed, unused = bua.map_bottom_up_weights(weights, own)
    assert set(mapped) == set(own) and renamed == {} and unused == ["anchor_generator.extra"]
    # Without attributes (faster_rcnn_from_caffe.pkl): the three attribute modules are left out.
    cfg = bua.setup_detector_cfg(CONFIG, opts=["MODEL.BUA.ATTRIBUTE_ON", "False"], device="meta")
    with torch.device("meta"):
        plain = build_model(cfg)
    assert set(public) - set(plain.state_dict()) == {k for k in public if "attr" in k or "cls_embedding" in k}


def test_weight_shape_mismatch_names_the_tensor():
    shapes = {"roi_heads.box_predictor.cls_score.weight": (1601, 2048), "backbone.stem.conv1.weight": (64, 3, 7, 7)}
    weights = {"roi_heads.box_predictor.cls_score.weight": _stand_in((81, 2048)),
               "backbone.stem.conv1.weight": _stand_in((64, 3, 7, 7))}
    with pytest.raises(ValueError, match=r"cls_score\.weight': file \(81, 2048\) vs model \(1601, 2048\)"):
        bua.map_bottom_up_weights(weights, shapes, "w.pkl")


def test_suffix_names_map_like_detectron2():
    shapes = {"roi_heads.res5.0.conv1.weight": (2, 2), "backbone.res4.0.conv1.weight": (2, 2)}
    w = {"res5.0.conv1.weight": _stand_in((2, 2)), "conv1.weight": _stand_in((2, 2))}
    mapped, renamed, unused = bua.map_bottom_up_weights(w, shapes)
    assert renamed == {"res5.0.conv1.weight": "roi_heads.res5.0.conv1.weight"}
    assert unused == ["conv1.weight"]  # ambiguous: never guessed


# --- the tiny detector ---

@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8), rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)]


def tiny_detector(*opts, weights=""):
    return bua.RegionDetector(bua.setup_detector_cfg(CONFIG, weights, TINY_OPTS + list(opts)))


@pytest.fixture(scope="module")
def detector(images):
    torch.manual_seed(0)
    return calibrate_frozen_norms(tiny_detector(), images)


def save_public_pkl(path, model, drop=(), rename=None, extra=None):
    """The model's weights as the public files store them: {"model": {name: numpy array}}."""
    weights = {k: v.numpy().copy() for k, v in model.state_dict().items() if not any(d in k for d in drop)}
    for old, new in (rename or {}).items():
        weights[new] = weights.pop(old)
    weights.update(extra or {})
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "test", "matching_heuristics": True}, f, protocol=2)
    return weights


def test_load_generated_public_pkl(detector, images, tmp_path):
    path = str(tmp_path / "faster_rcnn_from_caffe_attr.pkl")
    extra = {"proposal_generator.anchor_generator.unknown": np.zeros(3, np.float32)}
    written = save_public_pkl(path, detector.model, extra=extra,
                              rename={"roi_heads.res5.2.conv3.weight": "res5.2.conv3.weight"})
    torch.manual_seed(1)
    loaded = tiny_detector(weights=path)
    report = loaded.load_report
    assert report["missing"] == [] and report["unused"] == ["proposal_generator.anchor_generator.unknown"]
    assert report["renamed"] == {"res5.2.conv3.weight": "roi_heads.res5.2.conv3.weight"}
    assert len(report["loaded"]) == len(written) - 1
    np.testing.assert_array_equal(loaded.model.roi_heads.res5[2].conv3.weight.detach().numpy(),
                                  written["res5.2.conv3.weight"])
    a, b = detector(images), loaded(images)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor)
        torch.testing.assert_close(x.class_probs, y.class_probs)
        torch.testing.assert_close(x.attr_logits, y.attr_logits)


def test_file_without_attributes_reports_them_missing(detector, tmp_path):
    path = str(tmp_path / "faster_rcnn_from_caffe.pkl")
    save_public_pkl(path, detector.model, drop=("attr", "cls_embedding"))
    report = tiny_detector(weights=path).load_report
    assert report["missing"] == ["roi_heads.box_predictor." + k for k in (
        "attr_score.bias", "attr_score.weight", "cls_embedding.weight", "fc_attr.bias", "fc_attr.weight")]
    assert report["unused"] == []
    # ... and loads fully into the detector without the attribute head.
    assert tiny_detector("MODEL.BUA.ATTRIBUTE_ON", "False", weights=path).load_report["missing"] == []


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    from vlbert_d2.utils.safe_pickle import UnsafePickleError

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.stem.conv1.weight": _Exploit(marker)}}, f)
    with pytest.raises(UnsafePickleError, match="refusing to load 'posix.system'"):
        tiny_detector(weights=str(path))
    assert not marker.exists()


# --- region selection ---

def reference_selection(boxes, scores, nms_thresh, score_thresh, min_boxes, max_boxes):
    """Anderson et al.'s generate_tsv.py selection, written plainly: NMS per class on all RoIs."""
    from torchvision.ops import nms

    conf = torch.zeros(len(scores))
    for c in range(scores.shape[1]):
        keep = nms(boxes if boxes.dim() == 2 else boxes[:, c], scores[:, c], nms_thresh)
        conf[keep] = torch.maximum(conf[keep], scores[keep, c])
    keep = torch.nonzero(conf >= score_thresh).flatten()
    if len(keep) < min_boxes:
        keep = torch.sort(conf, descending=True, stable=True).indices[:min_boxes]
    elif len(keep) > max_boxes:
        keep = torch.sort(conf, descending=True, stable=True).indices[:max_boxes]
    return set(keep.tolist()), conf


def test_select_regions_by_hand():
    # RoIs 0 and 1 overlap (IoU 0.81), 2 and 3 are apart; classes a, b.
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 9, 9], [20, 20, 30, 30], [40, 0, 50, 10]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.05], [0.8, 0.15], [0.1, 0.6], [0.3, 0.2]])
    keep, conf, cls = bua.select_regions(boxes, scores, 0.5, 0.5, 1, 10)
    # RoI 1 loses class a to RoI 0; its confidence is class b's 0.15 (not suppressed there).
    assert keep.tolist() == [0, 2] and cls.tolist() == [0, 1]
    torch.testing.assert_close(conf, torch.tensor([0.9, 0.6]))
    keep, conf, cls = bua.select_regions(boxes, scores, 0.5, 0.5, 3, 10)  # at least 3
    assert keep.tolist() == [0, 2, 3] and conf[-1].item() == pytest.approx(0.3)
    keep, _, _ = bua.select_regions(boxes, scores, 0.5, 0.5, 4, 4)  # fixed count
    assert keep.tolist() == [0, 2, 3, 1]
    keep, _, _ = bua.select_regions(boxes, scores, 0.5, 0.0, 1, 2)  # at most 2
    assert keep.tolist() == [0, 2]
    keep, _, _ = bua.select_regions(boxes, scores, 0.5, 0.5, 10, 10)  # fewer RoIs than asked
    assert len(keep) == 4
    with pytest.raises(ValueError, match="min_boxes <= max_boxes"):
        bua.select_regions(boxes, scores, 0.5, 0.5, 5, 2)


@pytest.mark.parametrize("score_thresh, min_boxes, max_boxes, per_class", [
    (0.5, 10, 100, False), (0.2, 5, 12, False), (0.05, 36, 36, False), (0.9, 3, 100, False), (0.01, 1, 8, False),
    (0.3, 10, 20, True), (0.05, 36, 36, True)])
def test_select_regions_matches_reference(score_thresh, min_boxes, max_boxes, per_class):
    g = torch.Generator().manual_seed(int(score_thresh * 100) + min_boxes)
    n, k = 60, 15
    shape = (n, k, 2) if per_class else (n, 2)  # one box per RoI, or per RoI and class (regressed)
    xy = torch.rand(shape, generator=g) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(shape, generator=g) * 40], dim=-1)
    scores = torch.softmax(torch.randn(n, k + 1, generator=g) * 3, dim=1)[:, :k]
    keep, conf, _ = bua.select_regions(boxes, scores, 0.3, score_thresh, min_boxes, max_boxes)
    expected, ref_conf = reference_selection(boxes, scores, 0.3, score_thresh, min_boxes, max_boxes)
    assert set(keep.tolist()) == expected and len(keep) == len(expected)
    torch.testing.assert_close(conf, ref_conf[keep])
    assert (conf[:-1] >= conf[1:]).all()  # by decreasing confidence


def test_regions_of_the_tiny_detector(detector, images):
    out = detector(images)
    for regions, image in zip(out, images):
        h, w = image.shape[:2]
        assert regions.image_size == (h, w) and 10 <= len(regions) <= 30  # MIN_BOXES, proposals
        b = regions.pred_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all() and (b[:, 2] > b[:, 0]).all()
        assert regions.class_probs.shape == (len(regions), 21) and regions.features.shape == (len(regions), 512)
        torch.testing.assert_close(regions.class_probs.sum(1), torch.ones(len(regions)))
        # The attribute head: [feature | embedding of the class argmax incl. background] -> fc -> ReLU -> 13.
        head = detector.model.roi_heads.box_predictor
        cls = head.cls_score(regions.features).argmax(1)
        manual = head.attr_score(torch.relu(head.fc_attr(torch.cat([regions.features, head.cls_embedding(cls)], 1))))
        torch.testing.assert_close(regions.attr_logits, manual)
        assert regions.attr_logits.shape == (len(regions), 13) and (regions.attr_classes < 12).all()
    # A different class embedding changes the attributes, not the classes.
    with torch.no_grad():
        head.cls_embedding.weight.mul_(-3)
    try:
        again = detector(images[:1])[0]
    finally:
        with torch.no_grad():
            head.cls_embedding.weight.div_(-3)
    torch.testing.assert_close(again.class_probs, out[0].class_probs)
    assert not torch.allclose(again.attr_logits, out[0].attr_logits)
    # When background wins the class argmax, its embedding (row K) is the one used.
    with torch.no_grad():
        head.cls_score.bias[-1] += 50.0
    try:
        bg = detector(images[:1])[0]
    finally:
        with torch.no_grad():
            head.cls_score.bias[-1] -= 50.0
    background = head.cls_embedding.weight[-1].expand(len(bg), -1)
    manual = head.attr_score(torch.relu(head.fc_attr(torch.cat([bg.features, background], 1))))
    torch.testing.assert_close(bg.attr_logits, manual)


def test_regressed_boxes_and_no_attributes(images):
    torch.manual_seed(0)
    det = calibrate_frozen_norms(tiny_detector("MODEL.BUA.BOX_SOURCE", "regressed", "MODEL.BUA.ATTRIBUTE_ON", "False"),
                                 images)
    regions = det(images[:1])[0]
    assert not regions.has("attr_logits") and len(regions) >= 10
    assert "attributes" not in bua.detection_record(1, 200, 120, regions)  # no attribute head: none written
    with pytest.raises(ValueError, match="BOX_SOURCE"):
        tiny_detector("MODEL.BUA.BOX_SOURCE", "gt")


def test_caffe_maxpool_stem():
    import torch.nn.functional as F

    torch.manual_seed(0)
    det = tiny_detector()
    stem = det.model.backbone.stem
    x = torch.randn(1, 3, 30, 30)
    y = stem(x)  # conv: 15 x 15; Caffe's pool: ceil((15 - 3) / 2) + 1 = 7; detectron2's: 8
    assert y.shape[-2:] == (7, 7)
    torch.testing.assert_close(y, F.max_pool2d(F.relu(stem.conv1(x)), 3, 2, 0, ceil_mode=True))
    assert F.max_pool2d(F.relu(stem.conv1(x)), 3, 2, 1).shape[-2:] == (8, 8)


def test_detection_record_round_trip(detector, images, tmp_path):
    from vlbert_d2.data.detections import read_detection, write_detection

    regions = detector(images[:1])[0]
    path = str(tmp_path / "42.json")
    write_detection(path, bua.detection_record(42, 200, 120, regions, with_features=True))
    det = read_detection(path)
    assert det["image_id"] == 42 and (det["image_w"], det["image_h"]) == (200, 120)
    np.testing.assert_allclose(det["boxes"], regions.pred_boxes.tensor.numpy())
    np.testing.assert_allclose(det["features"], regions.features.numpy())
    # Background first in the files, last in detectron2.
    np.testing.assert_allclose(det["classes"][:, 0], regions.class_probs[:, -1].numpy())
    np.testing.assert_allclose(det["classes"][:, 1:], regions.class_probs[:, :-1].numpy())
    # The attribute distributions: the softmax of the attribute logits, "no attribute" last.
    logits = regions.attr_logits.double().numpy()
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert det["attributes"].shape == (len(regions), 13)
    np.testing.assert_allclose(det["attributes"], expected, rtol=1e-5, atol=1e-7)
    write_detection(path, bua.detection_record(42, 200, 120, regions))
    assert "features" not in read_detection(path)
