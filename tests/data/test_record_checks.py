"""Fail fast, never silently: every record is checked before iteration 0 (vlbert_d2/data/
validation.py), the readers refuse non-finite and zero-area values naming file and field, the
"skip" policy, the per-record cache and tools/check_dataset.py.

The data come from the synthetic generators; every corruption is written by hand (raw JSON,
base64 of numpy arrays, truncated bytes), not through the code under test."""
import base64
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import REPO, make_cfg
from vlbert_d2.data import SYNTHETIC_CLASSES, build_vlbert_train_loader, validation
from vlbert_d2.data.datasets import VCRFormatError, load_vcr_jsonl, load_vcr_metadata, register_vcr
from vlbert_d2.data.datasets.pretrain import load_conceptual_captions
from vlbert_d2.data.datasets.refcoco import RefCOCOFormatError, load_instances, load_proposals
from vlbert_d2.data.datasets.vqa import load_vqa
from vlbert_d2.data.detections import DetectionFormatError, parse_detection
from vlbert_d2.data.test_loader import build_vlbert_test_loader
from vlbert_d2.data.validation import BadRecordsError, check_dataset_records, check_records

TINY_VQA = os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticVQA.yaml")
TINY_PRETRAIN = os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticPretrain.yaml")
DETS = "vgbua_res101_precomputed/trainval2014_resnet101_faster_rcnn_genome"


def _b64(values):
    return base64.b64encode(np.asarray(values, dtype=np.float32).tobytes()).decode()


def _edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _cfg(config_file, tmp_path, **overrides):
    """A tiny config of ``config_file`` (1 layer), the check's cache and OUTPUT_DIR in tmp_path."""
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(config_file)
    overrides = {"MODEL__VLBERT__NUM_LAYERS": 1, "DATALOADER__NUM_WORKERS": 0,
                 "DATALOADER__CHECK_CACHE_DIR": str(tmp_path / "cache"),
                 "OUTPUT_DIR": str(tmp_path / "output"), **overrides}
    cfg.merge_from_list([x for k, v in overrides.items() for x in (k.replace("__", "."), v)])
    return cfg


# ---------------------------------------------------------------------------------------------
# Data


@pytest.fixture(scope="module")
def vcr_root(tmp_path_factory):
    from synthetic_vl import generate_vcr

    root = str(tmp_path_factory.mktemp("record_checks_vcr"))
    generate_vcr(root, counts={"train": 40}, seed=1)
    return root


def _vcr_copy(vcr_root, tmp_path):
    root = str(tmp_path / "vcr")
    shutil.copytree(vcr_root, root)
    return root, load_vcr_jsonl(os.path.join(root, "train.jsonl"), os.path.join(root, "vcr1images"),
                                list(SYNTHETIC_CLASSES))


def _set_box(d, i, box):
    def edit(meta):
        meta["boxes"][i] = box + [1.0]
    _edit_json(d["metadata_file"], edit)


@pytest.fixture(scope="module")
def bad_vqa(tmp_path_factory):
    """A synthetic VQA subset (10 images, 2 questions each) with one corruption per image for 8
    of them. Returns (cfg, dicts, {image_id: (field, file, words of the message)}, clipped id)."""
    from synthetic_vl import generate_vqa

    tmp = tmp_path_factory.mktemp("record_checks_vqa")
    root = str(tmp / "coco")
    generate_vqa(root, counts={"train2014": 10, "val2014": 1, "test2015": 1}, seed=0)
    vocab = tmp / "answers.txt"
    vocab.write_text("yes\nno\n")
    dicts = load_vqa(os.path.join(root, "vqa", "v2_OpenEnded_mscoco_train2014_questions.json"),
                     os.path.join(root, "vqa", "v2_mscoco_train2014_annotations.json"),
                     os.path.join(root, "train2014"), "COCO_train2014_", os.path.join(root, DETS))
    ids = sorted({d["image_id"] for d in dicts})
    first = {i: next(d for d in dicts if d["image_id"] == i) for i in ids}
    image, det = ({i: first[i][key] for i in ids} for key in ("file_name", "detection_file"))
    expected = {}

    os.remove(image[ids[0]])  # a missing image
    expected[ids[0]] = ("image_id", image[ids[0]], "image not found")
    os.remove(det[ids[1]])  # a missing detection file
    expected[ids[1]] = ("detection_file", det[ids[1]], "detection file not found")
    _edit_json(det[ids[2]], lambda r: r.update(boxes="not*base64!"))  # bad base64
    expected[ids[2]] = ("boxes", det[ids[2]], "not valid base64")
    _edit_json(det[ids[3]], lambda r: r.update(num_boxes=r["num_boxes"] + 1))  # a wrong num_boxes
    expected[ids[3]] = ("boxes", det[ids[3]], "num_boxes")
    with open(image[ids[4]], "rb") as f:  # a corrupt (truncated) JPEG
        data = f.read()
    with open(image[ids[4]], "wb") as f:
        f.write(data[: len(data) // 2])
    expected[ids[4]] = ("image_id", image[ids[4]], "cannot read image")

    def nan_features(r):  # NaN in one box's features
        features = np.ones((r["num_boxes"], 6), np.float32)
        features[-1, 2] = np.nan
        r["features"] = _b64(features)
    _edit_json(det[ids[5]], nan_features)
    expected[ids[5]] = ("features", det[ids[5]], "non-finite")

    def box_outside(r):  # a box entirely right of the image: nothing left once clipped
        boxes = np.frombuffer(base64.b64decode(r["boxes"]), np.float32).reshape(-1, 4).copy()
        boxes[0] = [r["image_w"] + 5, 1, r["image_w"] + 20, 9]
        r["boxes"] = _b64(boxes)
    _edit_json(det[ids[6]], box_outside)
    expected[ids[6]] = ("boxes[0]", det[ids[6]], "no part of it lies inside")

    def zero_area(r):  # x1 == x2: accepted by the detection reader, a bad record for the check
        boxes = np.frombuffer(base64.b64decode(r["boxes"]), np.float32).reshape(-1, 4).copy()
        boxes[0, 2] = boxes[0, 0]
        r["boxes"] = _b64(boxes)
    _edit_json(det[ids[7]], zero_area)
    expected[ids[7]] = ("boxes[0]", det[ids[7]], "zero-area")

    def partly_outside(r):  # allowed: clipped, and counted
        boxes = np.frombuffer(base64.b64decode(r["boxes"]), np.float32).reshape(-1, 4).copy()
        boxes[0, 2] = r["image_w"] + 30
        r["boxes"] = _b64(boxes)
    _edit_json(det[ids[8]], partly_outside)

    cfg = _cfg(TINY_VQA, tmp, MODEL__VLBERT__VQA__ANSWER_VOCAB=str(vocab))
    return cfg, dicts, expected, ids[8]


# ---------------------------------------------------------------------------------------------
# Found before training, with file:line and field


def test_one_bad_box_among_many_vcr_records_stops_before_training(vcr_root, tmp_path):
    root, dicts = _vcr_copy(vcr_root, tmp_path)
    x1, y1, x2, y2 = load_vcr_metadata(dicts[26]["metadata_file"], len(dicts[26]["objects"]), "")["boxes"][0]
    _set_box(dicts[26], 0, [x2, y1, x1, y2])  # inverted, at line 27
    _set_box(dicts[33], 0, [x1, y1, x1, y2])  # zero width, at line 34 (accepted by the old reader)
    name = "pytest_record_checks_vcr_train"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_vcr(name, root, "train", class_names=list(SYNTHETIC_CLASSES))
    cfg = make_cfg(DATASETS__TRAIN=(name,), DATASETS__TEST=(name,), OUTPUT_DIR=str(tmp_path / "output"),
                   DATALOADER__CHECK_CACHE_DIR=str(tmp_path / "cache"))
    calls = []

    def mapper(d):  # the training mapper: never reached
        calls.append(d)
        return d

    start = time.perf_counter()
    with pytest.raises(BadRecordsError) as info:
        build_vlbert_train_loader(cfg, mapper)
    msg = str(info.value)
    assert "2 of 40 records of dataset 'pytest_record_checks_vcr_train' are bad" in msg
    assert "before training" in msg
    assert f"{root}/train.jsonl:27 [boxes[0]]" in msg and f"{root}/train.jsonl:34 [boxes[0]]" in msg
    assert dicts[26]["metadata_file"] in msg and "x1 < x2" in msg
    assert not calls and time.perf_counter() - start < 30
    listed = (tmp_path / "output" / f"bad_records_{name}.jsonl").read_text().splitlines()
    assert [json.loads(line)["record"] for line in listed] == [f"{root}/train.jsonl:27", f"{root}/train.jsonl:34"]
    # Evaluation checks its dataset the same way (from the cache now).
    with pytest.raises(BadRecordsError, match="before evaluation started"):
        build_vlbert_test_loader(cfg, name, mapper)


def test_bad_files_are_found_up_front_with_file_and_field(bad_vqa):
    cfg, dicts, expected, clipped_id = bad_vqa
    report = check_records(cfg, "pytest_bad_vqa", dicts, progress=False)
    bad = {dicts[b.index]["image_id"]: b for b in report.bad}
    assert set(bad) == set(expected)
    assert len(report.bad) == sum(d["image_id"] in expected for d in dicts) == 16
    for image_id, (field, path, words) in expected.items():
        b = bad[image_id]
        assert (b.field, b.file) == (field, path), b.line()
        assert words in b.message, b.line()
        # The record's own source: the questions file, the index and the question_id.
        assert "train2014_questions.json: questions[" in b.record and "(question_id " in b.record
    # The box partly outside its image is not an error: clipped, counted and reported.
    assert report.clipped_boxes == 2 and report.clipped_records == 2  # 1 box x 2 questions
    assert "2 boxes clipped to the image in 2 records" in report.summary()
    assert clipped_id not in bad


def test_missing_zip_members_and_nan_classes_of_captions(tmp_path):
    from synthetic_vl import generate_captions

    root = tmp_path / "captions"
    generate_captions(str(root), counts={"train": 5, "val": 1}, seed=0)
    lines = (root / "train_frcnn.json").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    records[1]["image"] = "train_image.zip@/no_such_image.jpg"
    records[2]["frcnn"] = "train_frcnn.zip@/no_such_detection.json"
    classes = np.full((3, 4), 0.25, np.float32)
    classes[1, 3] = np.nan
    (root / "nan_classes.json").write_text(json.dumps({
        "image_id": 3, "image_w": 192, "image_h": 128, "num_boxes": 3,
        "boxes": _b64([[1, 1, 20, 20], [30, 30, 60, 60], [5, 40, 25, 90]]), "classes": _b64(classes)}))
    records[3]["frcnn"] = "nan_classes.json"
    (root / "train_frcnn.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    dicts = load_conceptual_captions(str(root / "train_frcnn.json"), str(root))
    cfg = _cfg(TINY_PRETRAIN, tmp_path)
    report = check_records(cfg, "pytest_captions", dicts, progress=False)
    got = {b.record: b for b in report.bad}
    src = str(root / "train_frcnn.json")
    assert sorted(got) == [f"{src}:2", f"{src}:3", f"{src}:4"]
    assert (got[f"{src}:2"].field, got[f"{src}:2"].file) == ("image", dicts[1]["file_name"])
    assert "image not found" in got[f"{src}:2"].message
    assert (got[f"{src}:3"].field, got[f"{src}:3"].file) == ("detection_file", dicts[2]["detection_file"])
    assert "no member 'no_such_detection.json'" in got[f"{src}:3"].message
    assert (got[f"{src}:4"].field, got[f"{src}:4"].file) == ("classes", str(root / "nan_classes.json"))
    assert "row 1 has non-finite values" in got[f"{src}:4"].message


# ---------------------------------------------------------------------------------------------
# The readers refuse non-finite values, naming file, record and field


def test_nan_in_a_vcr_polygon_box_or_size_is_refused(tmp_path):
    path = tmp_path / "meta.json"
    good_box = "[10, 10, 50, 50, 0.9]"
    # Non-finite values written as strings pass any JSON parser and reach the field checks (a
    # NaN vertex gave a silently wrong mask, 1e999 a bare OverflowError).
    cases = {
        f'{{"boxes": [{good_box}], "segms": [[[[30, 10], ["NaN", 50], [10, 50]]]], "width": 120, "height": 80}}':
            "field 'segms[0][0]' has a non-finite coordinate",
        '{"boxes": [[10, 10, "Infinity", 50, 1]], "width": 120, "height": 80}': "field 'boxes[0]'",
        '{"boxes": [[10, 10, 10, 50, 1]], "width": 120, "height": 80}': "field 'boxes[0]'",  # zero width
        f'{{"boxes": [{good_box}], "width": 1e999, "height": 80}}': None,  # inf: field 'width' or the parser
        f'{{"boxes": [{good_box}], "width": 120, "height": NaN}}': None,
        f'{{"boxes": [{good_box}], "segms": [[[[30, 10], [NaN, 50], [10, 50]]]], "width": 120, "height": 80}}': None,
    }
    for text, needle in cases.items():
        path.write_text(text)
        with pytest.raises(VCRFormatError) as info:
            load_vcr_metadata(str(path), 1, "train.jsonl:5")
        msg = str(info.value)
        assert str(path) in msg, msg
        if needle is None:  # a JSON literal: refused by the field check or by the JSON parser
            assert any(w in msg for w in ("must be a positive integer", "non-finite", "not a finite number",
                                          "out of the range")), msg
        else:
            assert needle in msg and "train.jsonl:5" in msg, msg


def test_nan_or_zero_size_in_a_refcoco_bbox_is_refused(tmp_path):
    path = tmp_path / "instances.json"
    for bbox, needle in (('["NaN", 10, 20, 20]', "non-finite"), ("[5, 10, 0, 20]", "positive width and height"),
                         ('[5, "Infinity", 20, 20]', "non-finite"), ("[NaN, 10, 20, 20]", None)):
        path.write_text('{"images": [{"id": 1, "width": 64, "height": 48}], "annotations": ['
                        '{"id": 7, "image_id": 1, "bbox": [1, 1, 10, 10]}, '
                        f'{{"id": 8, "image_id": 1, "bbox": {bbox}}}]}}')
        with pytest.raises(RefCOCOFormatError) as info:
            load_instances(str(path))
        msg = str(info.value)
        if needle is None:  # the JSON literal NaN (it crashed in roi_align at iteration ~9)
            assert str(path) in msg and ("field 'bbox' has a non-finite" in msg or "NaN" in msg), msg
        else:
            assert f"{path}: annotations[1]: field 'bbox'" in msg and needle in msg, msg
    path.write_text('{"images": [{"id": 1, "width": 1e999, "height": 48}], "annotations": []}')
    with pytest.raises(RefCOCOFormatError, match=r"instances\.json.*(field 'width' must be a positive|1e999)"):
        load_instances(str(path))
    proposals = tmp_path / "dets.json"
    proposals.write_text('[{"image_id": 1, "box": [1, 2, 3, 4]}, {"image_id": 1, "box": ["NaN", 2, 3, 4]}]')
    with pytest.raises(RefCOCOFormatError, match=r"dets\.json: \[1\]: field 'box' has a non-finite value"):
        load_proposals(str(proposals))


def test_nan_features_classes_and_huge_sizes_in_detection_files_are_refused():
    boxes = _b64([[1, 1, 10, 10], [2, 2, 8, 9]])
    base = {"image_id": 1, "image_w": 64, "image_h": 48, "num_boxes": 2, "boxes": boxes}
    features = np.ones((2, 3), np.float32)
    features[1, 0] = np.nan
    with pytest.raises(DetectionFormatError, match=r"d\.json: field 'features': row 1 has non-finite values"):
        parse_detection(dict(base, features=_b64(features)), "d.json")
    with pytest.raises(DetectionFormatError, match=r"d\.json: field 'classes': row 0 has non-finite"):
        parse_detection(dict(base, classes=_b64([[np.inf, 0.5], [0.5, 0.5]])), "d.json")
    with pytest.raises(DetectionFormatError, match=r"field 'classes': box 1 has a negative class probability"):
        parse_detection(dict(base, classes=_b64([[0.5, 0.5], [-0.5, 1.5]])), "d.json")
    # json.loads("1e999") is inf: int() of it was a bare OverflowError naming no file.
    for value in (json.loads("1e999"), float("nan"), 10 ** 30, 12.5, -3):
        with pytest.raises(DetectionFormatError, match=r"d\.json: field 'image_w' must be a non-negative integer"):
            parse_detection(dict(base, image_w=value), "d.json")


# ---------------------------------------------------------------------------------------------
# Policy, cache, tool


def test_skip_policy_drops_exactly_the_bad_records_counts_and_lists_them(bad_vqa, tmp_path, caplog):
    cfg, dicts, expected, _ = bad_vqa
    cfg = cfg.clone()
    cfg.DATALOADER.BAD_RECORDS = "skip"
    name = "pytest_bad_vqa_skip"
    with caplog.at_level(logging.WARNING, logger="vlbert_d2.data.validation"):
        kept = check_dataset_records(cfg, name, dicts, is_train=True, output_dir=str(tmp_path))
    assert kept == [d for d in dicts if d["image_id"] not in expected]
    assert f"skipped 16 bad records of {len(dicts)}" in caplog.text
    assert "2 boxes lie partly outside their image, in 2 of 20 records" in caplog.text
    listed = [json.loads(line) for line in (tmp_path / f"bad_records_{name}.jsonl").read_text().splitlines()]
    assert len(listed) == 16
    assert {r["record"] for r in listed} == {d["source"] for d in dicts if d["image_id"] in expected}
    assert all(r["field"] and r["file"] and r["message"] and r["dataset"] == name for r in listed)
    # The default policy stops, listing the first ones and the count.
    cfg.DATALOADER.BAD_RECORDS = "error"
    with pytest.raises(BadRecordsError, match=r"16 of 20 records of dataset 'x' are bad"):
        check_dataset_records(cfg, "x", dicts, is_train=True, output_dir=str(tmp_path))
    cfg.DATALOADER.CHECK_RECORDS = False  # off: nothing checked, nothing dropped
    assert check_dataset_records(cfg, "x", dicts, is_train=True) == dicts


def test_cache_makes_the_second_run_skip_the_work(vcr_root, tmp_path, monkeypatch):
    root, dicts = _vcr_copy(vcr_root, tmp_path)
    _set_box(dicts[5], 1, [500.0, 1.0, 600.0, 9.0])  # outside the 192 x 128 image
    cfg = make_cfg(DATALOADER__NUM_WORKERS=2, DATALOADER__CHECK_CACHE_DIR=str(tmp_path / "cache"))
    first = check_records(cfg, "v", dicts, progress=False)  # two worker processes
    assert (first.cache_hits, [b.index for b in first.bad]) == (0, [5])

    calls = []
    original = validation._RecordChecker.__call__
    monkeypatch.setattr(validation._RecordChecker, "__call__", lambda self, d: calls.append(d) or original(self, d))
    cfg.DATALOADER.NUM_WORKERS = 0  # in process, where the calls can be counted
    start = time.perf_counter()
    second = check_records(cfg, "v", dicts, progress=False)
    assert time.perf_counter() - start < 2
    # No good record is mapped again; the bad one is (a failure may be transient).
    assert [d["source"] for d in calls] == [dicts[5]["source"]]
    assert second.cache_hits == 39 and second.bad == first.bad
    # A changed file (size or mtime) is checked again; only its record (and the bad one).
    st = os.stat(dicts[7]["file_name"])
    os.utime(dicts[7]["file_name"], ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    calls.clear()
    third = check_records(cfg, "v", dicts, progress=False)
    assert sorted(d["source"] for d in calls) == sorted([dicts[5]["source"], dicts[7]["source"]])
    assert third.cache_hits == 38
    # Good data: the second run maps nothing at all.
    _set_box(dicts[5], 1, [5.0, 1.0, 60.0, 9.0])
    check_records(cfg, "v", dicts, progress=False)
    calls.clear()
    fourth = check_records(cfg, "v", dicts, progress=False)
    assert not calls and fourth.cache_hits == 40 and not fourth.bad


def test_check_dataset_tool_exits_1_on_bad_data_and_0_on_good(vcr_root, tmp_path):
    from synthetic_vl import generate_vcr

    datasets = tmp_path / "datasets"
    generate_vcr(str(datasets / "synthetic_vcr"), counts={"val": 6}, seed=2)
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", "check_dataset.py"), "--no-progress",
           "--config-file", os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticVCR.yaml"),
           "--dataset", "synthetic_vcr_val", "DATALOADER.NUM_WORKERS", "0",
           "DATALOADER.CHECK_CACHE_DIR", str(tmp_path / "cache"), "MODEL.VLBERT.NUM_LAYERS", "1"]
    good = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "6 records checked (0 from the cache)" in good.stdout and "0 bad" in good.stdout

    line4 = json.loads((datasets / "synthetic_vcr" / "val.jsonl").read_text().splitlines()[3])
    path = datasets / "synthetic_vcr" / "vcr1images" / line4["metadata_fn"]
    text = path.read_text()
    assert '"segms": [[[[' in text
    path.write_text(text.replace('"segms": [[[[', '"segms": [[[["NaN", 0.0], [', 1))  # a NaN vertex
    bad = subprocess.run(cmd[:2] + ["--output-dir", str(tmp_path / "out")] + cmd[2:], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "6 records checked (5 from the cache)" in bad.stdout and "1 bad" in bad.stdout
    assert "val.jsonl:4 [segms[" in bad.stdout and str(path) in bad.stdout
    assert (tmp_path / "out" / "bad_records_synthetic_vcr_val.jsonl").exists()
