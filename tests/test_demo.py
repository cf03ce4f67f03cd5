"""tools/demo.py on the tiny VQA and RefCOCO+ models (random weights saved in the test): the
answer picture and the attention views have the expected size and differ from the input."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO

CONFIGS = {"vqa": os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticVQA.yaml"),
           "vcr": os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticVCR.yaml"),
           "refcoco": os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticRefCOCO+.yaml")}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """An image (160 x 96) with 3 boxes, its boxes file, and a 4-answer vocabulary."""
    d = tmp_path_factory.mktemp("demo")
    img = np.full((96, 160, 3), 240, np.uint8)
    boxes = [[10, 10, 50, 50], [70, 20, 100, 60], [110, 40, 150, 90]]
    for (x1, y1, x2, y2), c in zip(boxes, [(0, 0, 220), (0, 200, 0), (220, 0, 0)]):
        cv2.rectangle(img, (x1, y1), (x2, y2), c, -1)
    cv2.imwrite(str(d / "scene.jpg"), img)
    (d / "scene.json").write_text(json.dumps(boxes))
    (d / "answers_vqa.txt").write_text("2\n3\nleft\nright\n")
    return d


def _checkpoint(task, scene):
    """A random-weight tiny model saved as a checkpoint, with the run's vocabulary beside it."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(CONFIGS[task])
    cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB = str(scene / "answers_vqa.txt")
    torch.manual_seed(0)
    path = scene / f"{task}_model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


@pytest.mark.parametrize("task, text", [
    ("vqa", ["--question", "which side has more objects?"]),
    ("refcoco", ["--expression", "the left-most one"]),
    ("vcr", ["--question", "which object is the biggest ?", "--choices", "[0]", "[1]", "[2]", "[0,2]",
             "--objects", "box", "ball", "kite"]),
])
def test_demo_draws_answer_and_attention(task, text, scene, tmp_path):
    weights = _checkpoint(task, scene)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, os.path.join(REPO, "tools", "demo.py"), "--config-file", CONFIGS[task],
                          "--weights", str(weights), "--input", str(scene / "scene.jpg"),
                          "--boxes", str(scene / "scene.json"), "--output", str(out), "--layers", "0", "1",
                          "--draw-size", "320"] + text,
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    if task == "vqa":
        assert summary["answer"] in ("2", "3", "left", "right") and len(summary["top_k"]) == 4
    elif task == "vcr":
        assert len(summary["scores"]) == 4 and summary["objects"] == [[0], [1], [2], [0, 2]][summary["answer"]]
    else:
        assert 0 <= summary["index"] <= 3 and len(summary["box"]) == 4
    src = cv2.imread(str(scene / "scene.jpg"))
    big = np.repeat(np.repeat(src, 2, axis=0), 2, axis=1)  # 160 x 96 drawn x2 (>= 320)
    answer = cv2.imread(str(out / "scene_answer.png"))
    assert answer.shape == big.shape and np.abs(answer.astype(int) - big).mean() > 1.0
    for layer in (0, 1):
        lines = cv2.imread(str(out / f"scene_attention_L{layer}.png"))
        assert lines.shape[1] == big.shape[1] and lines.shape[0] > big.shape[0]  # a band for the words
        assert np.abs(lines[-big.shape[0]:].astype(int) - big).mean() > 1.0  # lines drawn on the image
        heat = cv2.imread(str(out / f"scene_heatmap_L{layer}.png"))
        assert heat is not None and heat.std() > 10


def test_demo_reports_bad_boxes(scene, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 2, 3]]")
    res = subprocess.run([sys.executable, os.path.join(REPO, "tools", "demo.py"), "--config-file", CONFIGS["vqa"],
                          "--weights", str(_checkpoint("vqa", scene)), "--input", str(scene / "scene.jpg"),
                          "--boxes", str(bad), "--question", "q?"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert f"--boxes: {bad}: expected a non-empty list of [x1, y1, x2, y2]" in res.stderr


def test_vcr_region_references():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vlbert_demo", os.path.join(REPO, "tools", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.vcr_tokens("is [0,2] near [1] ?", 3, "--question") == ["is", [0, 2], "near", [1], "?"]
    with pytest.raises(SystemExit, match="region 3 does not exist"):
        demo.vcr_tokens("[3]", 3, "--choices")
    with pytest.raises(SystemExit, match="not a region reference"):
        demo.vcr_tokens("[a]", 3, "--choices")


# --- regions from the bottom-up-attention detector (projects/BottomUpAttention) ---

def _detector_pkl(scene):
    """A tiny random detector (calibrated so that its regions vary) saved in the public format."""
    import pickle

    import torch

    sys.path.insert(0, os.path.join(REPO, "projects", "BottomUpAttention"))
    import bua
    from bua.testing import TINY_OPTS, calibrate_frozen_norms

    config = os.path.join(REPO, "projects", "BottomUpAttention", "configs", "BUA-R101-C4-VG.yaml")
    torch.manual_seed(0)
    det = calibrate_frozen_norms(bua.RegionDetector(bua.setup_detector_cfg(config, "", TINY_OPTS)),
                                 [cv2.imread(str(scene / "scene.jpg"))])
    path = scene / "tiny_detector.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in det.model.state_dict().items()}}, f)
    return path, " ".join(TINY_OPTS)


def test_demo_with_detector_regions(scene, tmp_path, capsys):
    from vlbert_d2.data.detections import read_detection

    weights, opts = _detector_pkl(scene)
    out = tmp_path / "out"
    # In-process (the subprocess runs above cover the command line itself).
    _load_demo().main(["--config-file", CONFIGS["vqa"], "--weights", str(_checkpoint("vqa", scene)),
                       "--input", str(scene / "scene.jpg"), "--question", "how many objects are there?",
                       "--detector-weights", str(weights),
                       "--detector-opts", opts + " MODEL.BUA.MIN_BOXES 4 MODEL.BUA.MAX_BOXES 4",
                       "--output", str(out), "--draw-size", "320"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["answer"] in ("2", "3", "left", "right")
    det = read_detection(str(out / "scene_detections.json"))
    assert det["boxes"].shape == (4, 4) and (det["image_w"], det["image_h"]) == (160, 96)
    assert str(out / "scene_detections.json") in summary["written"]
    big = np.repeat(np.repeat(cv2.imread(str(scene / "scene.jpg")), 2, axis=0), 2, axis=1)
    answer = cv2.imread(str(out / "scene_answer.png"))
    assert answer.shape == big.shape and np.abs(answer.astype(int) - big).mean() > 1.0
    heat = cv2.imread(str(out / "scene_heatmap_L1.png"))  # 2 layers: the last one by default
    assert heat is not None and heat.std() > 10


def _load_demo():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vlbert_demo", os.path.join(REPO, "tools", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_demo_regions_from_one_source(scene, capsys):
    demo = _load_demo()
    common = ["--config-file", CONFIGS["vqa"], "--weights", "w.pth", "--input", str(scene / "scene.jpg"),
              "--question", "q?"]
    for extra in ([], ["--boxes", "b.json", "--detector-weights", "d.pkl"]):
        with pytest.raises(SystemExit):
            demo.main(common + extra)
        assert "give the regions: --boxes, or the detector" in capsys.readouterr().err
