"""tools/extract_regions.py on generated images with a tiny random detector (saved as a .pkl in
the public format): the files read back through the detection reader and the VQA loader, the
region counts follow --num-boxes / --min-boxes / --max-boxes / --score-thresh, an interrupted run
resumes with exactly one file per image, corrupt images are skipped and counted, shards cover
every image once, and batching does not change the results."""
import importlib.util
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO


import bua  # noqa: E402
from bua.extraction import extract_regions, list_folder_images, plan_outputs  # noqa: E402
from bua.testing import TINY_OPTS, calibrate_frozen_norms, noisy_rectangles_image  # noqa: E402
from vlbert_d2.data.detections import read_detection  # noqa: E402

CONFIG = os.path.join(REPO, "projects", "BottomUpAttention", "configs", "BUA-R101-C4-VG.yaml")
GOOD = [1, 2, 3, 4, 5]  # image ids of the readable images


def _load_tool():
    path = os.path.join(REPO, "tools", "extract_regions.py")
    spec = importlib.util.spec_from_file_location("extract_regions_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


tool = _load_tool()


_image = noisy_rectangles_image


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """5 readable COCO-named images (JPEG and PNG, several sizes), a file of garbage named .jpg,
    a truncated JPEG, and a text file that is not an image."""
    d = tmp_path_factory.mktemp("images")
    sizes = [(120, 200), (90, 70), (64, 64), (150, 100), (80, 160)]
    for i, (h, w) in zip(GOOD, sizes):
        ext = ".png" if i == 4 else ".jpg"
        cv2.imwrite(str(d / f"COCO_val2014_{i:012d}{ext}"), _image(i, h, w))
    (d / "broken.jpg").write_bytes(b"this is not a JPEG" * 10)
    ok, data = cv2.imencode(".jpg", _image(9, 100, 100))
    (d / "COCO_val2014_000000000009.jpg").write_bytes(data.tobytes()[: len(data) // 3])
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def weights(folder, tmp_path_factory):
    """A tiny detector with calibrated random weights, saved as {"model": {name: array}}."""
    import pickle

    torch.manual_seed(0)
    det = bua.RegionDetector(bua.setup_detector_cfg(CONFIG, "", TINY_OPTS))
    calibrate_frozen_norms(det, [_image(1, 120, 200), _image(2, 90, 70)])
    path = str(tmp_path_factory.mktemp("weights") / "tiny_from_caffe_attr.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in det.model.state_dict().items()}, "__author__": "test"}, f)
    return path


def run(folder, out, weights, *extra):
    argv = ["--input", str(folder), "--output", str(out), "--weights", weights, "--num-workers", "0",
            "--no-progress", *extra, *TINY_OPTS]
    return tool.main(argv)


def _files(out):
    return sorted(f for f in os.listdir(out) if f.endswith(".json"))


def test_folder_extraction_round_trips(folder, weights, tmp_path, capsys):
    out = tmp_path / "dets"
    summary = run(folder, out, weights, "--features")
    assert summary == {"total": 7, "skipped": 0, "written": 5, "failed": 2,
                       "failed_report": str(out / "failed_images.tsv")}
    assert _files(out) == [f"{i}.json" for i in GOOD]
    for i in GOOD:
        det = read_detection(str(out / f"{i}.json"))
        img = cv2.imread(str(next(folder.glob(f"COCO_val2014_{i:012d}.*"))))
        h, w = img.shape[:2]
        n = len(det["boxes"])
        assert det["image_id"] == i and (det["image_w"], det["image_h"]) == (w, h)
        assert 10 <= n <= 30  # MIN_BOXES 10, at most the 30 proposals
        assert (det["boxes"][:, 2] <= w + 1e-3).all() and (det["boxes"][:, 3] <= h + 1e-3).all()
        assert det["classes"].shape == (n, 21) and det["features"].shape == (n, 512)
        np.testing.assert_allclose(det["classes"].sum(1), 1.0, rtol=1e-5)
    report = (out / "failed_images.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in report] == sorted([str(folder / "COCO_val2014_000000000009.jpg"),
                                                                str(folder / "broken.jpg")])
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in report)
    assert "'failed': 2" in capsys.readouterr().out
    # Nothing left to do on a second run; the report is rewritten for it.
    again = run(folder, out, weights, "--features")
    assert (again["skipped"], again["written"], again["failed"]) == (5, 0, 2)


def test_fixed_count_and_min_max(folder, weights, tmp_path):
    out = tmp_path / "fixed"
    run(folder, out, weights, "--num-boxes", "7")
    counts = [read_detection(str(out / f))["boxes"].shape[0] for f in _files(out)]
    assert counts == [7] * 5
    for thresh, expected in (("0", 6), ("1.01", 2)):  # every RoI passes / none does
        out = tmp_path / f"minmax{thresh}"
        run(folder, out, weights, "--min-boxes", "2", "--max-boxes", "6", "--score-thresh", thresh)
        assert [read_detection(str(out / f))["boxes"].shape[0] for f in _files(out)] == [expected] * 5
    out = tmp_path / "between"
    run(folder, out, weights, "--min-boxes", "2", "--max-boxes", "25", "--score-thresh", "0.12")
    counts = [read_detection(str(out / f))["boxes"].shape[0] for f in _files(out)]
    assert all(2 <= c <= 25 for c in counts) and len(set(counts)) > 1  # adaptive: varies by image


def test_resume_after_interruption(folder, weights, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    calls = {"n": 0}
    original = bua.RegionDetector.__call__

    def interrupted(self, images, image_format="BGR"):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the third image
        return original(self, images, image_format)

    monkeypatch.setattr(bua.RegionDetector, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(folder, out, weights, "--batch-size", "1")
    assert _files(out) == ["1.json", "2.json"]  # sorted order: the first two images
    monkeypatch.setattr(bua.RegionDetector, "__call__", original)
    first = (out / "1.json").read_text()
    (out / "2.json").write_text((out / "2.json").read_text()[:100])  # damaged since: redone
    (out / "4.json.tmp.999999999").write_text("{half")  # a write a killed process cut: removed
    summary = run(folder, out, weights, "--batch-size", "1")
    assert (summary["skipped"], summary["written"], summary["failed"]) == (1, 4, 2)
    assert sorted(os.listdir(out)) == sorted([f"{i}.json" for i in GOOD] + ["failed_images.tsv"])
    ids = [read_detection(str(out / f))["image_id"] for f in _files(out)]
    assert sorted(ids) == GOOD  # exactly one record per image
    assert (out / "1.json").read_text() == first  # untouched


def test_batches_give_the_same_files(folder, weights, tmp_path):
    one, three = tmp_path / "one", tmp_path / "three"
    run(folder, one, weights, "--batch-size", "1")
    run(folder, three, weights, "--batch-size", "3", "--num-workers", "1")
    assert _files(one) == _files(three)
    for f in _files(one):
        a, b = read_detection(str(one / f)), read_detection(str(three / f))
        np.testing.assert_allclose(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(a["classes"], b["classes"], rtol=1e-4, atol=1e-5)


def test_shards_cover_every_image_once(folder, weights, tmp_path):
    det = bua.RegionDetector(bua.setup_detector_cfg(CONFIG, weights, TINY_OPTS))
    items = plan_outputs(list_folder_images(str(folder)), str(tmp_path))
    stats = [extract_regions(det, items, rank=r, world_size=2, progress=False) for r in (0, 1)]
    assert [s["total"] for s in stats] == [4, 3]
    assert sum(s["written"] for s in stats) == 5 and sum(len(s["failed"]) for s in stats) == 2
    assert _files(tmp_path) == [f"{i}.json" for i in GOOD]


def test_registered_dataset_and_stem_names(folder, weights, tmp_path):
    from detectron2.data import DatasetCatalog

    name = "pytest_bua_images"
    files = sorted(str(p) for p in folder.glob("COCO_val2014_*"))[:3]
    records = [{"file_name": f, "image_id": 100 + k} for k, f in enumerate(files)]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records + records[:1])  # two records of one image
    out = tmp_path / "ds"
    summary = tool.main(["--dataset", name, "--output", str(out), "--weights", weights, "--num-workers", "0",
                         "--no-progress", "--num-boxes", "3", *TINY_OPTS])
    assert summary["total"] == 3 and _files(out) == ["100.json", "101.json", "102.json"]
    assert read_detection(str(out / "101.json"))["image_id"] == 101
    out = tmp_path / "stems"
    run(folder, out, weights, "--file-names", "stem", "--num-boxes", "3")
    assert _files(out) == sorted(f"COCO_val2014_{i:012d}.json" for i in GOOD)


def test_vqa_loader_reads_the_files(weights, tmp_path):
    """The files are what the VQA loader and mapper read, from the images and from the features."""
    from synthetic_vl import generate_vqa
    from vlbert_d2.data.datasets.vqa import load_vqa
    from vlbert_d2.data.vqa_mapper import VQADatasetMapper
    from vlbert_d2.modeling.bert import build_tokenizer

    from conftest import make_cfg

    root = str(tmp_path / "coco")
    generate_vqa(root, counts={"train2014": 1, "val2014": 3, "test2015": 1}, seed=0)
    dets = os.path.join(root, "vgbua_res101_precomputed", "trainval2014_resnet101_faster_rcnn_genome")
    shutil.rmtree(dets)  # the generator's own detections: replaced by the detector's
    summary = run(os.path.join(root, "val2014"), dets, weights, "--features", "--num-boxes", "5")
    assert summary["written"] == 3 and summary["failed"] == 0
    dicts = load_vqa(os.path.join(root, "vqa", "v2_OpenEnded_mscoco_val2014_questions.json"),
                     os.path.join(root, "vqa", "v2_mscoco_val2014_annotations.json"),
                     os.path.join(root, "val2014"), "COCO_val2014_", dets)
    tokenizer = build_tokenizer(make_cfg())
    for features in (False, True):
        mapper = VQADatasetMapper(False, tokenizer=tokenizer, augmentations=[], image_format="BGR",
                                  max_text_len=16, answer_vocab=["yes", "no"], detection_features=features)
        for d in dicts:
            x = mapper(d)
            assert x["boxes"].shape == (6, 4)  # the whole image, then the 5 regions
            if features:
                assert x["features"].shape == (6, 512)


def test_command_line_errors(folder, weights, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tool.parse_args(["--help"])
    assert e.value.code == 0 and "Resumable" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.parse_args(["--input", "a", "--dataset", "b", "--output", "o"])
    assert "give one of --input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args(["--input", "a", "--output", "o", "--num-boxes", "36", "--max-boxes", "10"])
    assert "fixed count" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="give the detector weights"):
        tool.main(["--input", str(folder), "--output", str(tmp_path / "x"), *TINY_OPTS])
    clash = tmp_path / "clash"
    clash.mkdir()
    for n in ("a1.jpg", "b1.jpg"):
        cv2.imwrite(str(clash / n), _image(0, 40, 40))
    with pytest.raises(SystemExit, match=r"a1\.jpg and .*b1\.jpg would both be written to .*1\.json"):
        run(clash, tmp_path / "y", weights)
    with pytest.raises(SystemExit, match="MIN_BOXES <= MODEL.BUA.MAX_BOXES"):
        run(folder, tmp_path / "z", weights, "--min-boxes", "20", "--max-boxes", "5")
    assert json.dumps(tool.selection_opts(tool.parse_args(["--input", "a", "--output", "o", "--num-boxes", "36"]))) \
        == json.dumps(["MODEL.BUA.MIN_BOXES", "36", "MODEL.BUA.MAX_BOXES", "36"])


def test_detector_failure_on_one_image_loses_only_it(folder, weights, tmp_path, monkeypatch):
    original = bua.RegionDetector.__call__

    def fragile(self, images, image_format="BGR"):
        if any(im.shape[:2] == (64, 64) for im in images):  # image 3
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, images, image_format)

    monkeypatch.setattr(bua.RegionDetector, "__call__", fragile)
    out = tmp_path / "fragile"
    summary = run(folder, out, weights, "--batch-size", "3")
    assert (summary["written"], summary["failed"]) == (4, 3)
    assert _files(out) == ["1.json", "2.json", "4.json", "5.json"]
    report = (out / "failed_images.tsv").read_text()
    assert "COCO_val2014_000000000003.jpg\tdetector failed: RuntimeError: CUDA out of memory (simulated)" in report
