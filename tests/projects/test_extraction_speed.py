"""Fast region extraction (projects/BottomUpAttention): the arithmetic model of bua/flops.py
against fvcore's count traced on the model itself, RegionDetector's fast path (frozen norms folded
into the convolutions, channels-last, res5 in chunks of RoIs) against the modules' own forward,
batches against one image at a time, and tools/benchmark_extraction.py on a tiny detector.
Random weights, small sizes: fast on a CPU."""
import importlib.util
import os

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REPO

import bua  # noqa: E402
from bua.flops import extraction_layers, stage_totals, total_macs  # noqa: E402
from bua.testing import TINY_OPTS, calibrate_frozen_norms  # noqa: E402

CONFIG = os.path.join(REPO, "projects", "BottomUpAttention", "configs", "BUA-R101-C4-VG.yaml")


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8), rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)]


# --- the arithmetic model against fvcore ---

class _Traced(nn.Module):
    """The detector's model on one image tensor, returning the regions' tensors (what a trace
    keeps: jit tracing drops the layers whose outputs are unused)."""

    def __init__(self, model, hw):
        super().__init__()
        self.model, self.hw = model, hw
        self.num_regions = None

    def forward(self, image):
        regions = self.model([{"image": image, "height": self.hw[0], "width": self.hw[1]}])[0]["instances"]
        self.num_regions = len(regions)
        return regions.pred_boxes.tensor, regions.class_probs, regions.features, regions.attr_logits


def fvcore_stage_macs(detector, image):
    """fvcore's count of the convolutions and linear layers per stage, on the model's forward."""
    from fvcore.nn import FlopCountAnalysis

    h, w = image.shape[:2]
    resized = detector.resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
    traced = _Traced(detector.model, (h, w))
    rois = []
    hook = detector.model.proposal_generator.register_forward_hook(lambda m, i, out: rois.append(len(out[0][0])))
    try:
        analysis = FlopCountAnalysis(traced, (tensor,))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        by_module = analysis.by_module_and_operator()
    finally:
        hook.remove()
    modules = {"stem": "backbone.stem", "res2": "backbone.res2", "res3": "backbone.res3", "res4": "backbone.res4",
               "rpn": "proposal_generator", "res5": "roi_heads.res5", "predictors": "roi_heads.box_predictor"}
    counted = ("conv", "linear", "addmm", "matmul", "mm")  # fvcore also counts some batch norms: not MACs
    macs = {k: sum(v for op, v in by_module["model." + m].items() if op in counted) for k, m in modules.items()}
    return macs, rois[0], traced.num_regions


@pytest.mark.parametrize("opts", [
    # The real R101 detector (widths, dilated res5, 14 x 14 RoIPool, 1600 classes, 400 attributes),
    # small input and few RoIs.
    ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160", "MODEL.RPN.POST_NMS_TOPK_TEST", "6"],
    # R50 at 1/8 width; and detectron2's plain C4 (stride-2 res5, its own max pool, stride in 3x3).
    TINY_OPTS,
    TINY_OPTS + ["MODEL.BUA.RES5_DILATION", "1", "MODEL.BUA.CAFFE_MAXPOOL", "False",
                 "MODEL.RESNETS.STRIDE_IN_1X1", "False"],
], ids=["r101", "tiny", "tiny-plain-c4"])
def test_flop_model_matches_fvcore(opts):
    torch.manual_seed(0)
    # Regressed boxes: the box deltas are used, so the trace keeps bbox_pred.
    detector = bua.RegionDetector(bua.setup_detector_cfg(CONFIG, "", opts + ["MODEL.BUA.BOX_SOURCE", "regressed",
                                                                             "MODEL.DEVICE", "cpu"]))
    image = np.random.default_rng(1).integers(0, 256, (75, 130, 3), dtype=np.uint8)
    calibrate_frozen_norms(detector, [image])  # sane activations: the RPN yields its RoIs
    fv, num_rois, num_regions = fvcore_stage_macs(detector, image)
    assert num_rois > 0 and num_regions > 0
    ours = stage_totals(extraction_layers(detector.cfg, image.shape[:2], num_rois, num_regions))
    ours["predictors"] = ours.pop("box_predictor") + ours.pop("attributes")
    assert set(ours) == set(fv)
    for stage in fv:
        assert ours[stage] == pytest.approx(fv[stage], rel=0.01), stage
    assert sum(ours.values()) == pytest.approx(sum(fv.values()), rel=0.01)


def test_flop_model_of_the_full_detector():
    cfg = bua.setup_detector_cfg(CONFIG, device="cpu")
    layers = extraction_layers(cfg, (480, 640))  # 640 x 480 -> 800 x 600, 300 RoIs, 100 regions
    totals = stage_totals(layers)
    # res4 at 38 x 50; res5 at 14 x 14 on 300 RoIs: 300 * 196 * (6029312 + 2 * 4456448) MACs.
    assert totals["res5"] == 300 * 196 * (6029312 + 2 * 4456448)
    assert totals["rpn"] == 38 * 50 * (9 * 1024 * 512 + 512 * 60)
    assert totals["box_predictor"] == 300 * 2048 * (1601 + 6400)
    assert 950e9 < total_macs(layers) < 970e9 and totals["res5"] / total_macs(layers) > 0.9


# --- the fast path against the modules ---

@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    det = bua.RegionDetector(bua.setup_detector_cfg(CONFIG, "", TINY_OPTS))
    return calibrate_frozen_norms(det, _images())


def _run(det, images, fast, roi_chunk=None):
    det.fast, det.roi_chunk = fast, roi_chunk
    try:
        return det(images)
    finally:
        det.fast, det.roi_chunk = True, None


def assert_same_regions(a, b, rtol=1e-4):
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y) and x.image_size == y.image_size
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor, rtol=0, atol=1e-3)
        assert torch.equal(x.pred_classes, y.pred_classes)
        torch.testing.assert_close(x.scores, y.scores, rtol=rtol, atol=1e-5)
        torch.testing.assert_close(x.class_probs, y.class_probs, rtol=rtol, atol=1e-5)
        scale = float(y.features.abs().max())
        torch.testing.assert_close(x.features, y.features, rtol=0, atol=rtol * scale)
        scale = float(y.attr_logits.abs().max())
        torch.testing.assert_close(x.attr_logits, y.attr_logits, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("roi_chunk", [None, 7])
def test_fast_path_matches_the_modules(detector, roi_chunk, monkeypatch):
    images = _images()
    calls = []
    original = bua.RegionDetector._forward_fast
    monkeypatch.setattr(bua.RegionDetector, "_forward_fast", lambda self, x: calls.append(1) or original(self, x))
    fast = _run(detector, images, True, roi_chunk)  # 7: chunks of 7, 7, 7, 7 and 2 of the 30 RoIs
    assert calls, "the fast path did not run"
    slow = _run(detector, images, False)
    assert len(calls) == 1
    assert_same_regions(fast, slow)


def test_fast_path_on_other_blocks_stems_and_norms():
    """R18 (BasicBlock), detectron2's stem and stride-2 res5, and NORM BN: eval BatchNorm2d in
    res3 / res4 / res5 (stem and res2 are frozen, FrozenBatchNorm2d); every conv is folded."""
    from detectron2.layers import Conv2d, FrozenBatchNorm2d

    torch.manual_seed(0)
    det = bua.RegionDetector(bua.setup_detector_cfg(CONFIG, "", TINY_OPTS + [
        "MODEL.RESNETS.DEPTH", "18", "MODEL.BUA.RES5_DILATION", "1", "MODEL.BUA.CAFFE_MAXPOOL", "False",
        "MODEL.RESNETS.NORM", "BN"]))
    norms = [m for m in det.model.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
    assert {type(m) for m in norms} == {FrozenBatchNorm2d, nn.BatchNorm2d}
    images = _images()

    def calibrate(module, inputs):  # sane activations (as calibrate_frozen_norms, for both kinds)
        module.running_mean.copy_(inputs[0].mean(dim=(0, 2, 3)))
        module.running_var.copy_(inputs[0].var(dim=(0, 2, 3)) + 1e-3)

    hooks = [m.register_forward_pre_hook(calibrate) for m in norms]
    try:
        det(images)
    finally:
        for h in hooks:
            h.remove()
    fast = _run(det, images, True)
    convs = [m for root in det._folded.roots for m in root.modules() if isinstance(m, Conv2d)]
    assert set(det._folded._folded) == set(convs)
    assert all(len(r) >= 10 for r in fast)  # MIN_BOXES
    assert_same_regions(fast, _run(det, images, False))


def test_folded_weights_follow_in_place_changes(detector):
    images = _images()[:1]
    before = _run(detector, images, True)
    conv = detector.model.roi_heads.res5[1].conv2
    with torch.no_grad():
        conv.norm.weight.mul_(1.5)  # a change of a FrozenBN buffer, after the folded cache was built
    try:
        fast, slow = _run(detector, images, True), _run(detector, images, False)
    finally:
        with torch.no_grad():
            conv.norm.weight.div_(1.5)
    assert_same_regions(fast, slow)
    assert not torch.allclose(fast[0].features[:3], before[0].features[:3])


def test_hooks_see_their_modules_run(detector):
    """Forward hooks on the trunk (e.g. calibrate_frozen_norms's) switch to the modules' forward."""
    seen = []
    norm = detector.model.backbone.res3[0].conv1.norm
    hook = norm.register_forward_pre_hook(lambda m, i: seen.append(i[0].shape))
    try:
        assert not detector._fast_applies()
        detector(_images()[:1])
    finally:
        hook.remove()
    assert len(seen) == 1 and detector._fast_applies()


def test_batches_give_the_regions_of_single_images(detector):
    images = _images()
    batched = detector(images)
    single = [detector([im])[0] for im in images]
    for x, y in zip(batched, single, strict=True):  # res5 chunks never mix images: equal to rounding
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor)
        torch.testing.assert_close(x.features, y.features)
        torch.testing.assert_close(x.class_probs, y.class_probs)
        torch.testing.assert_close(x.attr_logits, y.attr_logits)


def test_no_rois(detector):
    from detectron2.structures import Boxes

    heads = detector.model.roi_heads
    feature = torch.rand(1, heads.res5[0].in_channels, 6, 10)
    empty = Boxes(torch.zeros(0, 4))
    with torch.no_grad():
        detector._folded.refresh()
        pooled = detector._pooled_res5(heads, feature, empty)
        reference = heads._shared_roi_transform([feature], [empty]).mean(dim=[2, 3])
    assert pooled.shape == reference.shape == (0, heads.res5[-1].out_channels)


def test_roi_pool_split_over_threads_is_exact(detector):
    from bua.regions import _roi_pool

    pooler = detector.model.roi_heads.pooler.level_poolers[0]
    g = torch.Generator().manual_seed(0)
    feature = torch.rand(1, 32, 12, 20, generator=g)
    xy = torch.rand(13, 2, generator=g) * 200
    rois = torch.cat([torch.zeros(13, 1), xy, xy + torch.rand(13, 2, generator=g) * 120], dim=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # 3 parts: the RoIs of the first on this thread, two in the pool
    try:
        for r in (rois, rois[:2], rois[:1], rois[:0]):
            assert torch.equal(_roi_pool(pooler, feature, r), pooler(feature, r))
    finally:
        torch.set_num_threads(threads)


# --- the benchmark tool ---

def test_benchmark_tool_on_a_tiny_detector(tmp_path):
    path = os.path.join(REPO, "tools", "benchmark_extraction.py")
    spec = importlib.util.spec_from_file_location("benchmark_extraction_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    threads = torch.get_num_threads()
    try:
        report = tool.main(["--threads", "1", "--size", "160x120", "--proposals", "20", "--iters", "1",
                            "--warmup", "0", "--batch-size", "1", "2", "--rate-seconds", "0", "--matmul-size", "64",
                            "--json", str(tmp_path / "r.json"), *TINY_OPTS])
    finally:
        torch.set_num_threads(threads)
    assert report["proposals"] == 20 and report["resized_hw"] == [96, 128]
    assert sum(report["stages_gmacs"].values()) == pytest.approx(report["gflop"] / 2)
    assert [r["batch"] for r in report["runs"]] == [1, 2]
    for r in report["runs"]:
        assert r["ratio_to_bound"] == pytest.approx(r["s_per_image"] / report["bound_s"])
    assert report["peak_gflops"] == max(r["gflops"] for r in report["rates"])
    assert report["shape_bound_s"] >= report["bound_s"]
    assert {"bua.trunk", "bua.rpn", "bua.res5", "bua.select"} <= set(report["stage_s"])
    assert (tmp_path / "r.json").is_file()
