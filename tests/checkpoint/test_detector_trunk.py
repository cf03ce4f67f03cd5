"""MODEL.VLBERT.DETECTOR_WEIGHTS from a detector trained here (a detectron2 ``.pth``): VL-BERT's
visual trunk, built with the detector's layout and loaded from its checkpoint, computes the very
features that the detector itself extracts for its regions (projects/BottomUpAttention, the
outside oracle: its own modules, its own resize, its own pooling); ``.pth`` files are read with
``weights_only=True`` (a file that asks for code is refused, nothing of it runs)."""
import os

import numpy as np
import pytest
import torch

from conftest import REPO, make_cfg

import bua  # noqa: E402  (tests/conftest.py puts projects/BottomUpAttention on the path)
from bua.checkpoint import BottomUpCheckpointer  # noqa: E402
from bua.testing import calibrate_frozen_norms, noisy_rectangles_image  # noqa: E402

CONFIG = os.path.join(REPO, "projects", "BottomUpAttention", "configs", "BUA-Tiny-Synthetic.yaml")
# The synthetic-scene detector's layout, narrower, with frozen norms (so that random weights can be
# calibrated) and the regions' features pooled over the proposals the boxes come from.
DETECTOR_OPTS = ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
                 "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "MODEL.BUA.BOX_SOURCE", "proposals",
                 "MODEL.BUA.MIN_BOXES", "4", "MODEL.BUA.MAX_BOXES", "8",
                 "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160", "MODEL.DEVICE", "cpu"]


_image = noisy_rectangles_image


@pytest.fixture(scope="module")
def detector_checkpoint(tmp_path_factory):
    """A tiny detector (calibrated random weights) saved by detectron2's checkpointer as a .pth."""
    torch.manual_seed(0)
    detector = bua.RegionDetector(bua.setup_detector_cfg(CONFIG, "", DETECTOR_OPTS))
    calibrate_frozen_norms(detector, [_image(1, 96, 144), _image(2, 128, 96)])
    folder = tmp_path_factory.mktemp("detector")
    BottomUpCheckpointer(detector.model, str(folder)).save("model_final")
    return detector, str(folder / "model_final.pth")


def _vlbert_cfg(weights, caffe_maxpool=True):
    """The tiny VL-BERT with the detector's trunk layout (tiny config's keys changed to it)."""
    cfg = make_cfg(MODEL__VLBERT__VCR__NUM_OBJECT_CLASSES="3", MODEL__RESNETS__NORM="FrozenBN", MODEL__RESNETS__RES2_OUT_CHANNELS="16",
                   MODEL__RESNETS__STRIDE_IN_1X1="False", MODEL__VLBERT__POOLER_RESOLUTION="7",
                   MODEL__VLBERT__POOLER_TYPE="ROIAlignV2", MODEL__VLBERT__POOLER_SAMPLING_RATIO="0",
                   MODEL__VLBERT__CAFFE_MAXPOOL=str(caffe_maxpool), MODEL__VLBERT__DETECTOR_WEIGHTS=weights)
    return cfg


def _trunk_features(model, image, boxes, min_size=96, max_size=160):
    """The region features of VL-BERT's trunk for ``boxes`` (in ``image``'s pixels), on the image
    resized as the detector resizes it."""
    from detectron2.data import transforms as T
    from detectron2.structures import Boxes

    resized = T.ResizeShortestEdge([min_size, min_size], max_size).get_transform(image).apply_image(image)
    sy, sx = resized.shape[0] / image.shape[0], resized.shape[1] / image.shape[1]
    x = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)), dtype=torch.float32)
    x = (x - model.pixel_mean) / model.pixel_std
    scaled = torch.as_tensor(boxes) * torch.tensor([sx, sy, sx, sy])
    with torch.no_grad():
        return model.region_extractor(x[None], [Boxes(scaled)])


def test_vlbert_trunk_computes_the_detectors_own_region_features(detector_checkpoint):
    from detectron2.modeling import build_model

    detector, path = detector_checkpoint
    images = [_image(3, 96, 144), _image(4, 128, 96)]
    model = build_model(_vlbert_cfg(path)).eval()
    plain = build_model(_vlbert_cfg(path, caffe_maxpool=False)).eval()
    for image, regions in zip(images, detector(images)):
        expected = regions.features
        assert len(expected) >= 4
        got = _trunk_features(model, image, regions.pred_boxes.tensor)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
        # detectron2's stem pool (the official VL-BERT's) sees shifted windows: other features.
        other = _trunk_features(plain, image, regions.pred_boxes.tensor)
        assert float((other - expected).abs().max()) > 1e-2 * float(expected.abs().max())


def test_detector_checkpoint_report(detector_checkpoint):
    from detectron2.modeling import build_model

    from vlbert_d2.checkpoint import load_detector_weights

    _, path = detector_checkpoint
    model = build_model(_vlbert_cfg(""))
    report = load_detector_weights(model.region_extractor, path)
    assert report["missing"] == []
    assert any(k.startswith("proposal_generator.") for k in report["unused"])
    assert any(k.startswith("roi_heads.box_predictor.") for k in report["unused"])
    saved = torch.load(path, weights_only=True)["model"]
    assert torch.equal(model.region_extractor.res5[2].conv3.weight, saved["roi_heads.res5.2.conv3.weight"])
    assert torch.equal(model.region_extractor.backbone.stem.conv1.weight, saved["backbone.stem.conv1.weight"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_detector_pth_that_asks_for_code_is_refused(tmp_path):
    from detectron2.modeling import build_model

    from vlbert_d2.checkpoint import CheckpointError

    marker = tmp_path / "ran"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1)}, "x": _Payload(str(marker))}, str(path))
    with pytest.raises(CheckpointError, match=str(path)):
        build_model(_vlbert_cfg(str(path)))
    assert not marker.exists()
    # The same file, unpickled without care, does run it: the refusal above is real.
    torch.load(str(path), weights_only=False)
    assert marker.exists()


def test_detector_pth_that_is_not_a_checkpoint(tmp_path):
    from detectron2.modeling import build_model

    from vlbert_d2.checkpoint import CheckpointError

    path = tmp_path / "truncated.pth"
    torch.save({"model": {"a": torch.zeros(3)}}, str(path))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        build_model(_vlbert_cfg(str(path)))
    strings = tmp_path / "strings.pth"
    torch.save({"model": {"backbone.stem.conv1.weight": "not a tensor"}}, str(strings))
    with pytest.raises(ValueError, match="strings.pth"):
        build_model(_vlbert_cfg(str(strings)))
