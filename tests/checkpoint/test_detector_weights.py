"""Visual Genome detector weights (detectron2 .pkl format) into the visual trunk, and the
restricted unpickler that refuses anything but containers and numpy arrays."""
import os
import pickle

import numpy as np
import pytest
import torch

from vlbert_d2.checkpoint import UnsafePickleError, load_weights_pickle


def fake_detector_pkl(path, region_extractor):
    """A file shaped like faster_rcnn_from_caffe_attr.pkl for this trunk: detectron2 R-C4 names,
    numpy arrays, plus the RPN and the box/attribute predictors (1601 classes, 401 attributes)."""
    rng = np.random.default_rng(0)
    model = {}
    for k, v in region_extractor.state_dict().items():
        name = k if k.startswith("backbone.") else "roi_heads." + k
        model[name] = rng.standard_normal(tuple(v.shape)).astype(np.float32)
    c = model["roi_heads.res5.2.conv3.weight"].shape[0]
    model["proposal_generator.rpn_head.conv.weight"] = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    model["roi_heads.box_predictor.cls_score.weight"] = rng.standard_normal((1601, c)).astype(np.float32)
    model["roi_heads.box_predictor.attr_score.weight"] = rng.standard_normal((401, 512)).astype(np.float32)
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "test", "matching_heuristics": True}, f, protocol=2)
    return model


def test_detector_weights_fill_trunk_and_res5(tmp_path, tiny_cfg):
    from detectron2.modeling import build_model

    tiny_cfg.MODEL.RESNETS.NORM = "FrozenBN"  # as the paper's trunk (no BatchNorm counters)
    model = build_model(tiny_cfg)
    path = str(tmp_path / "faster_rcnn_from_caffe_attr.pkl")
    weights = fake_detector_pkl(path, model.region_extractor)

    from vlbert_d2.checkpoint import load_detector_weights

    report = load_detector_weights(model.region_extractor, path)
    assert set(report["unused"]) == {"proposal_generator.rpn_head.conv.weight",
                                     "roi_heads.box_predictor.cls_score.weight",
                                     "roi_heads.box_predictor.attr_score.weight"}
    assert report["missing"] == []
    state = model.region_extractor.state_dict()
    np.testing.assert_array_equal(state["backbone.res4.1.conv2.weight"].numpy(), weights["backbone.res4.1.conv2.weight"])
    np.testing.assert_array_equal(state["res5.0.shortcut.weight"].numpy(), weights["roi_heads.res5.0.shortcut.weight"])

    # The same through the config key, when the model is built.
    tiny_cfg.MODEL.VLBERT.DETECTOR_WEIGHTS = path
    built = build_model(tiny_cfg)
    np.testing.assert_array_equal(built.region_extractor.res5[1].conv1.weight.detach().numpy(),
                                  weights["roi_heads.res5.1.conv1.weight"])


def test_detector_weights_shape_mismatch_names_the_tensor(tmp_path, tiny_cfg):
    from detectron2.modeling import build_model

    from vlbert_d2.checkpoint import load_detector_weights

    model = build_model(tiny_cfg)
    path = str(tmp_path / "w.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"roi_heads.res5.0.conv1.weight": np.zeros((3, 3, 1, 1), np.float32)}}, f)
    with pytest.raises(ValueError, match=r"res5\.0\.conv1\.weight.*\(3, 3, 1, 1\)"):
        load_detector_weights(model.region_extractor, path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": _Exploit(str(marker))}}, f)
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*system"):
        load_weights_pickle(str(path))
    assert not marker.exists()


def test_weights_pickle_accepts_arrays_and_rejects_other_content(tmp_path):
    ok = tmp_path / "ok.pkl"
    with open(ok, "wb") as f:
        pickle.dump({"a": np.arange(3, dtype=np.float32)}, f)
    assert load_weights_pickle(str(ok))["a"].tolist() == [0.0, 1.0, 2.0]
    odd = tmp_path / "odd.pkl"
    with open(odd, "wb") as f:
        pickle.dump({"model": {"a": [1, 2]}}, f)
    with pytest.raises(ValueError, match="odd.pkl"):
        load_weights_pickle(str(odd))
    torch_pkl = tmp_path / "tensor.pkl"
    with open(torch_pkl, "wb") as f:
        pickle.dump({"model": {"a": torch.zeros(2)}}, f)
    with pytest.raises(UnsafePickleError, match="torch"):
        load_weights_pickle(str(torch_pkl))
