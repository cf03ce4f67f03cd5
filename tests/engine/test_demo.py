"""tools/demo.py on the tiny VQA and RefCOCO+ models (random weights saved in the test): the
answer picture and the attention views have the expected size and differ from the input; large
images are drawn at the cap in bounded memory; files that are not images and failed writes stop
with a message naming the file."""
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
    from vlbert_d2.config import finalize_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(CONFIGS[task])
    cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB = str(scene / "answers_vqa.txt")
    cfg = finalize_vlbert_config(cfg)  # the sizes the model is built with (answers, object classes)
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
                          "--boxes", str(bad), "--question", "q?", "--output", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert f"--boxes: {bad}: expected a non-empty list of [x1, y1, x2, y2]" in res.stderr


def test_vcr_region_references(scene, tmp_path):
    """Region references in the text are checked (by the predictor) and named on the command line."""
    args = ["--config-file", CONFIGS["vcr"], "--weights", str(_checkpoint("vcr", scene)), "--input",
            str(scene / "scene.jpg"), "--boxes", str(scene / "scene.json"), "--output", str(tmp_path / "out"),
            "--question", "is [0,2] near [1] ?"]
    for choices, message in ((["[0]", "[3]"], "--choices: region 3 does not exist (there are 3 regions)"),
                             (["[a]"], "--choices: '[a]' is not a region reference like [0] or [0,2]")):
        with pytest.raises(SystemExit) as e:
            _load_demo().main(args + ["--choices"] + choices)
        assert e.value.code == message
    with pytest.raises(SystemExit, match="--objects: 2 names for 3 regions"):
        _load_demo().main(args + ["--choices", "[0]", "--objects", "a", "b"])
    with pytest.raises(SystemExit, match="a VCR model needs --choices"):
        _load_demo().main(args)


# --- regions from the bottom-up-attention detector (projects/BottomUpAttention) ---

def _detector_pkl(scene):
    """A tiny random detector (calibrated so that its regions vary) saved in the public format."""
    import pickle

    import torch

    bua = _load_demo().import_bottom_up_attention()  # the project's package, as the demo loads it
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


def test_bottom_up_project_is_found_without_sys_path():
    """The demo loads the detector's project from the checkout under the name ``bua`` in a
    process where it is not importable, without adding it to sys.path."""
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('demo', sys.argv[1])\n"
            "demo = importlib.util.module_from_spec(spec); spec.loader.exec_module(demo)\n"
            "f = demo.import_bottom_up_attention\n"
            "assert 'bua' not in sys.modules\n"
            "bua = f(); import bua.testing\n"
            "print(bua.RegionDetector.__name__, f() is bua, any('BottomUpAttention' in p for p in sys.path))")
    res = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "tools", "demo.py")], cwd=str(REPO),
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["RegionDetector", "True", "False"]


def test_demo_regions_from_one_source(scene, capsys):
    demo = _load_demo()
    common = ["--config-file", CONFIGS["vqa"], "--weights", "w.pth", "--input", str(scene / "scene.jpg"),
              "--question", "q?"]
    for extra in ([], ["--boxes", "b.json", "--detector-weights", "d.pkl"]):
        with pytest.raises(SystemExit):
            demo.main(common + extra)
        assert "give the regions: --boxes, or the detector" in capsys.readouterr().err


# --- failure cases and bounded memory (the README's table of failure cases) ---

def _run_demo(args, timeout=300):
    """tools/demo.py as a command; returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "demo.py")] + [str(a) for a in args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _vqa_args(scene, image, out):
    return ["--config-file", CONFIGS["vqa"], "--weights", str(_checkpoint("vqa", scene)), "--input", str(image),
            "--boxes", str(scene / "scene.json"), "--question", "how many?", "--output", str(out)]


def test_resize_for_drawing():
    from vlbert_d2.utils.visualization import resize_for_drawing

    boxes = np.array([[10, 20, 30, 40]], np.float32)
    small = np.arange(96 * 160 * 3, dtype=np.uint8).reshape(96, 160, 3)
    drawn, shown = resize_for_drawing(small, boxes, 320, 1600)  # enlarged x2, pixel-exact
    assert drawn.shape == (192, 320, 3) and (drawn[::2, ::2] == small).all() and (shown == 2 * boxes).all()
    drawn, shown = resize_for_drawing(small, boxes, 400, 400)  # x3 would pass the cap: x2
    assert drawn.shape == (192, 320, 3) and (shown == 2 * boxes).all()
    big = np.zeros((3000, 5000, 3), np.uint8)
    big[:, 2500:] = 200
    drawn, shown = resize_for_drawing(big[:, :, ::-1], boxes * 100, 480, 1600)  # a reversed-channel view
    assert drawn.shape == (960, 1600, 3) and drawn[:, 810:].min() == 200 and drawn[:, :790].max() == 0
    assert np.allclose(shown, boxes * 100 * 0.32)
    with pytest.raises(ValueError, match="min_size <= max_size"):
        resize_for_drawing(small, boxes, 2000, 1600)


# Peak RSS of the demo in a fresh process, and its peak just before the input image is read: the
# difference is what the image costs, independent of the torch/model baseline of the machine.
_PEAK_RSS = """
import importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("vlbert_demo", sys.argv[1])
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)
read, before = demo.read_input_image, []
def measured_read(*args):
    before.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return read(*args)
demo.read_input_image = measured_read
demo.main(sys.argv[2:])
print(json.dumps({"before_kb": before[0], "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kB on Linux")
def test_demo_draws_large_images_at_the_cap_in_bounded_memory(scene, tmp_path):
    n = 6000
    img = np.zeros((n, n, 3), np.uint8)
    img[:] = np.linspace(0, 255, n, dtype=np.uint8)[None, :, None]
    boxes = [[600, 600, 3000, 3000], [3000, 2000, 5400, 5400]]
    for (x1, y1, x2, y2), c in zip(boxes, [(0, 0, 220), (0, 200, 0)]):
        cv2.rectangle(img, (x1, y1), (x2, y2), c, -1)
    cv2.imwrite(str(tmp_path / "big.jpg"), img)
    del img
    (tmp_path / "big.json").write_text(json.dumps(boxes))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", _PEAK_RSS, os.path.join(REPO, "tools", "demo.py"),
                          "--config-file", CONFIGS["vqa"], "--weights", str(_checkpoint("vqa", scene)),
                          "--input", str(tmp_path / "big.jpg"), "--boxes", str(tmp_path / "big.json"),
                          "--question", "how many?", "--output", str(out)],
                         cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary, rss = (json.loads(line) for line in res.stdout.strip().splitlines()[-2:])
    assert len(summary["written"]) == 3 and all(os.path.isfile(f) for f in summary["written"])
    answer = cv2.imread(str(out / "big_answer.png"))
    assert answer.shape == (1600, 1600, 3)  # drawn at the default cap
    assert cv2.imread(str(out / "big_attention_L1.png")).shape[1] == 1600
    # Drawing at full resolution cost ~150 bytes per pixel (6.3 GB peak here, 22.4 GB for
    # 12000 x 12000). Now the image costs only its decoding (~14 bytes per pixel for a moment:
    # Pillow's decoded image, its RGB copy, and the bytes numpy is built from); 40 leaves room
    # for allocator slack and is still far below any drawing at full resolution.
    per_pixel = (rss["peak_kb"] - rss["before_kb"]) * 1024 / (n * n)
    assert per_pixel < 40, f"{per_pixel:.0f} bytes per input pixel (peak {rss['peak_kb'] // 1024} MB)"


@pytest.fixture(scope="module")
def not_images(tmp_path_factory):
    """Files named like images that are not readable ones."""
    d = tmp_path_factory.mktemp("not_images")
    good = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8))[1]
    (d / "text.jpg").write_text("this is not an image\n")
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(good.tobytes()[:len(good) // 2])
    return d


def test_demo_refuses_a_text_file_named_jpg(scene, not_images, tmp_path):
    res = _run_demo(_vqa_args(scene, not_images / "text.jpg", tmp_path / "out"))
    assert res.returncode == 1 and res.stdout == ""
    assert f"--input: {not_images / 'text.jpg'} is not an image" in res.stderr
    assert "Traceback" not in res.stderr  # one line, not a wall of frames


@pytest.mark.parametrize("name, message", [
    ("empty.jpg", "is empty (0 bytes), not an image"),
    ("truncated.jpg", "image file is truncated"),
])
def test_demo_refuses_broken_images(name, message, scene, not_images, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _load_demo().main(_vqa_args(scene, not_images / name, tmp_path / "out"))
    assert str(not_images / name) in str(e.value.code) and message in str(e.value.code)
    assert capsys.readouterr().out == ""


def test_demo_fails_when_a_write_fails(scene, tmp_path):
    out = tmp_path / "out"
    (out / "scene_answer.png").mkdir(parents=True)  # a write that fails even for root
    res = _run_demo(_vqa_args(scene, scene / "scene.jpg", out))
    assert res.returncode == 1 and res.stdout == ""  # no "written" line
    assert f"cannot write {out / 'scene_answer.png'}: Is a directory" in res.stderr
    assert "Traceback" not in res.stderr
    assert os.listdir(out) == ["scene_answer.png"]  # no temporary file left behind


def test_demo_output_folder_that_cannot_be_created(scene, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="--output: cannot create the folder .*file/out: Not a directory"):
        _load_demo().main(_vqa_args(scene, scene / "scene.jpg", tmp_path / "file" / "out"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_demo_unwritable_output_folder(scene, tmp_path):
    out = tmp_path / "out"
    out.mkdir(mode=0o500)
    with pytest.raises(SystemExit, match="--output: the folder .* is not writable"):
        _load_demo().main(_vqa_args(scene, scene / "scene.jpg", out))


def test_demo_failed_detection_write_names_the_file(tmp_path):
    from vlbert_d2.data.detections import write_detection

    target = tmp_path / "x_detections.json"
    target.mkdir()
    with pytest.raises(SystemExit, match=f"cannot write {target}: Is a directory"):
        with _load_demo().writing(str(target)):
            write_detection(str(target), {"image_id": "x"})


def test_demo_refuses_images_with_the_same_stem(tmp_path):
    for name in ("a.jpg", "a.png", "b.jpg"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SystemExit, match="images with the same name would write the same outputs"):
        _load_demo().list_inputs(str(tmp_path), str(tmp_path), use_detector=False)


def test_demo_help_states_the_cap_and_the_outputs(capsys):
    with pytest.raises(SystemExit) as e:
        _load_demo().main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-draw-size" in text and "default: 1600" in text
    for output in ("<stem>_answer.png", "<stem>_attention_L<l>.png", "<stem>_heatmap_L<l>.png",
                   "<stem>_detections.json"):
        assert output in text
