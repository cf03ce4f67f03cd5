"""Your own dataset in the generic JSON-lines format (docs/custom_datasets.md): the documentation's
example data, trained a few iterations then evaluated with --eval-only through tools/train_net.py
for each kind of record (answer, choice, box), with regions given inline or from a detection
folder; and the errors of malformed records, which name the file, the line and the field."""
import json
import os
import re
import sys

import pytest

from conftest import REPO
from conftest import copypaste_metrics, run

DOC = os.path.join(REPO, "docs", "custom_datasets.md")
CONFIGS = {kind: os.path.join(REPO, "configs", "quick_schedules",
                             f"VLBERT-Tiny-Generic-{name}.yaml")
           for kind, name in (("answer", "VQA"), ("choice", "Choice"), ("box", "Grounding"))}
# The dataset names of the configs: <prefix>_train, <prefix>_val.
PREFIX = {"answer": "generic_vqa", "choice": "generic_choice", "box": "generic_box"}
NUM_VAL = 16  # validation records of the documented example


def documented_script():
    """The example-data script of docs/custom_datasets.md (its ```python block that starts with
    "# make_generic_example.py")."""
    with open(DOC, encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    scripts = [b for b in blocks if b.startswith("# make_generic_example.py")]
    assert len(scripts) == 1, "docs/custom_datasets.md lost its example-data script"
    return scripts[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The documented example (images/, {answer,choice,box}_{train,val}.jsonl), plus the answer
    validation records without their boxes, whose regions come from a detection folder."""
    from vlbert_d2.data.detections import encode_detection, write_detection

    root = tmp_path_factory.mktemp("generic_example")
    argv = sys.argv
    try:
        sys.argv = ["make_generic_example.py", str(root)]
        exec(compile(documented_script(), DOC, "exec"), {"__name__": "__main__"})
    finally:
        sys.argv = argv
    with open(root / "answer_val.jsonl") as f, \
            open(root / "answer_val_detected.jsonl", "w") as out:
        for line in f:
            record = json.loads(line)
            boxes = record.pop("boxes")
            stem = os.path.splitext(record["image"])[0]
            write_detection(str(root / "detections" / f"{stem}.json"),
                            encode_detection(stem, 128, 96, boxes))
            out.write(json.dumps(record) + "\n")
    return root


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("kind", ["answer", "choice", "box"])
def test_train_then_eval_only(example, kind, tmp_path):
    prefix = PREFIX[kind]
    val = (f"{prefix}_val={example}/answer_val_detected.jsonl,detections={example}/detections"
           if kind == "answer" else f"{prefix}_val={example}/{kind}_val.jsonl")
    generic = [f"{prefix}_train={example}/{kind}_train.jsonl", val]
    common = ["DATASETS.GENERIC", json.dumps(generic), "MODEL.VLBERT.NUM_LAYERS", "1",
              "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "4"]
    out, ev = tmp_path / "out", tmp_path / "eval"
    train = run(["--config-file", CONFIGS[kind]] + common +
                ["SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1,)",
                 "TEST.EVAL_PERIOD", "2", "OUTPUT_DIR", str(out)], example)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    evaluated = run(["--config-file", CONFIGS[kind], "--eval-only"] + common +
                    ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(ev)], example)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = copypaste_metrics(train.stdout)
    assert copypaste_metrics(evaluated.stdout) == metrics
    assert metrics["num_predictions"] == NUM_VAL

    folder = ev / "inference" / f"{prefix}_val"
    records = _lines(example / f"{kind}_val.jsonl")
    if kind == "answer":
        vocab = (out / "answers_vqa.txt").read_text().split("\n")[:-1]
        train = _lines(example / "answer_train.jsonl")
        assert sorted(vocab) == sorted({r["answer"] for r in train})
        results = json.loads((folder / f"vqa_{prefix}_val_results.json").read_text())
        # The question ids are the line numbers (no "id" field); every answer is of the vocabulary.
        assert sorted(r["question_id"] for r in results) == list(range(1, NUM_VAL + 1))
        assert all(r["answer"] in vocab for r in results)
        right = sum(r["answer"] == records[r["question_id"] - 1]["answer"] for r in results)
        assert metrics["accuracy"] == pytest.approx(100.0 * right / NUM_VAL, abs=0.01)
    elif kind == "choice":
        predictions = json.loads((folder / "vcr_Q2A_predictions.json").read_text())
        assert sorted(map(int, predictions)) == list(range(1, NUM_VAL + 1))
        assert all(len(p["scores"]) == 3 and p["label"] == records[int(k) - 1]["label"]
                   for k, p in predictions.items())
        assert metrics["num_labelled"] == NUM_VAL and 0 <= metrics["Q2A"] <= 100
    else:
        results = json.loads((folder / f"refcoco_{prefix}_val_results.json").read_text())
        assert sorted(r["ref_id"] for r in results) == list(range(1, NUM_VAL + 1))
        for r in results:  # the chosen candidate (or the whole image), as [x, y, w, h]
            x, y, w, h = r["box"]
            candidates = records[r["ref_id"] - 1]["boxes"] + [[0, 0, 127, 95]]
            assert [x, y, x + w, y + h] in [[float(v) for v in b] for b in candidates]


# --------------------------------------------------------------------------------------------
# Loading, in process


def _write(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")
    return str(path)


def _load(*args, **kwargs):
    from vlbert_d2.data.datasets.generic import load_generic

    return load_generic(*args, **kwargs)


IMAGE = "images/train_0.jpg"  # 128 x 96
BOXES = [[8, 1, 27, 13], [72, 56, 87, 89], [99, 49, 124, 76]]
ANSWER = {"image": IMAGE, "text": "t", "answer": "red", "boxes": BOXES}
CHOICE = {"image": IMAGE, "text": "t", "choices": ["a", "b", "c"], "label": 1, "boxes": BOXES}
BOX = {"image": IMAGE, "text": "t", "box": BOXES[0], "boxes": BOXES}


def without(record, *fields):
    return {k: v for k, v in record.items() if k not in fields}


@pytest.mark.parametrize("records, line, field, message", [
    # A missing field.
    ([ANSWER, without(ANSWER, "text")], 2, "text", "missing field 'text'"),
    ([BOX, without(BOX, "box")], 2, "box", "missing field 'box'"),
    ([without(ANSWER, "boxes")], 1, "boxes", "missing field 'boxes'"),
    # A label out of range, and other bad values.
    ([CHOICE, {**CHOICE, "label": 3}], 2, "label", "must be an integer in [0, 3)"),
    ([{**CHOICE, "label": True}], 1, "label", "got True"),
    ([{**CHOICE, "text": "is [3] big ?"}], 1, "text", "refers to region 3"),
    ([CHOICE, {**CHOICE, "choices": ["a", "b"], "label": 0}], 2, "choices", "line 1 has 3"),
    ([{**CHOICE, "objects": ["x"]}], 1, "objects", "3 regions"),
    ([{**BOX, "box": [30, 1, 27, 13]}], 1, "box", "x1 < x2"),
    ([{**ANSWER, "boxes": [[8, 1, 27]]}], 1, "boxes[0]", "[x1, y1, x2, y2]"),
    ([{**ANSWER, "answer": "the"}], 1, "answer", "empty once normalised"),
    ([ANSWER, without(ANSWER, "answer")], 2, "answer", "gives the answers of all its records"),
    ([{**ANSWER, "id": 4}, {**ANSWER, "id": 4}], 2, "id", "already the id of line 1"),
    ([{**ANSWER, "id": "q1"}], 1, "id", "must be an integer"),
    ([ANSWER, BOX], 2, "box", "makes this a box record"),
    (['{"image": "x.jpg", "text": "t", "answer": NaN}'], 1, "", "not a finite number"),
])
def test_malformed_records_name_file_line_and_field(example, tmp_path, records, line, field,
                                                    message):
    from vlbert_d2.data.datasets.generic import GenericFormatError

    path = _write(tmp_path / "bad.jsonl", records)
    with pytest.raises(GenericFormatError) as e:
        _load(path, str(example))
    text = str(e.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert (f"field '{field}'" in text) if field else True, text
    assert message in text, text


def test_missing_image_names_the_record(example, tmp_path):
    path = _write(tmp_path / "x.jsonl", [{**ANSWER, "image": "images/nope.jpg"}])
    expected = f"{path}:1: field 'image': image not found"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        _load(path, str(example))


def test_registered_dataset_reports_through_the_catalog(example, tmp_path):
    """The one call: errors surface (with file:line and field) when the dataset is used."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vlbert_d2.data import register_generic_dataset
    from vlbert_d2.data.datasets.generic import GenericFormatError

    path = _write(tmp_path / "c.jsonl", [CHOICE, {**CHOICE, "label": 3}])
    assert register_generic_dataset("pytest_generic_bad", path, str(example)) == "choice"
    assert MetadataCatalog.get("pytest_generic_bad").evaluator_type == "vcr"
    with pytest.raises(GenericFormatError, match=re.escape(f"{path}:2: field 'label'")):
        DatasetCatalog.get("pytest_generic_bad")
    # Registering the name again replaces it; a name of another dataset is refused.
    register_generic_dataset("pytest_generic_bad", path, str(example), kind="choice")
    with pytest.raises(ValueError, match="already registered"):
        register_generic_dataset("vcr_train", path)


def test_records_become_the_tasks_dataset_dicts(example, tmp_path):
    """Each kind gives the dicts of its task's loader; inline regions land in one zip archive
    that the VQA and VCR readers read."""
    from vlbert_d2.data.datasets.vcr import load_vcr_metadata
    from vlbert_d2.data.detections import read_detection

    answer = _load(str(example / "answer_train.jsonl"))
    assert answer[0]["question_id"] == 1
    assert answer[0]["answer_scores"] == {answer[0]["answers"][0]: 1.0}
    det = read_detection(answer[0]["detection_file"])
    assert ".zip@/" in answer[0]["detection_file"]
    assert (det["image_w"], det["image_h"]) == (128, 96)
    assert det["boxes"].tolist() == _lines(example / "answer_train.jsonl")[0]["boxes"]

    choice = _load(str(example / "choice_train.jsonl"))
    first = _lines(example / "choice_train.jsonl")[0]
    assert choice[0]["answer_choices"] == [[[0]], [[1]], [[2]]]
    assert choice[0]["answer_label"] == first["label"]
    meta = load_vcr_metadata(choice[0]["metadata_file"], 3, choice[0]["source"])
    assert meta["boxes"] == [[float(v) for v in b] for b in first["boxes"]]
    assert (meta["width"], meta["height"]) == (128, 96)

    box = _load(str(example / "box_train.jsonl"))
    assert box[0]["gt_box"] in box[0]["boxes"]
    assert (box[0]["width"], box[0]["height"]) == (128, 96)
    # add_target_box: the target is a candidate too (once).
    path = _write(tmp_path / "b.jsonl", [{**BOX, "boxes": BOXES[1:]}, BOX])
    dicts = _load(path, str(example), add_target_box=True)
    assert dicts[0]["boxes"] == [[float(v) for v in b] for b in BOXES[1:] + BOXES[:1]]
    assert len(dicts[1]["boxes"]) == 3


@pytest.mark.parametrize("kind", ["choice", "box"])
def test_regions_from_a_detection_folder(example, tmp_path, kind):
    records = _lines(example / f"{kind}_val.jsonl")
    for r in records:
        del r["boxes"]
        r.pop("objects", None)
    path = _write(tmp_path / f"{kind}.jsonl", records)
    dicts = _load(path, str(example), detections=str(example / "detections"))
    expected = _lines(example / f"{kind}_val.jsonl")[0]["boxes"]
    if kind == "box":
        assert dicts[0]["boxes"] == [[float(v) for v in b] for b in expected]
    else:
        assert dicts[0]["objects"] == ["object"] * 3
    expected = f"{path}:1: no field 'boxes' and no detection file"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        _load(path, str(example), detections=str(tmp_path / "none"))


def test_config_key(example, tmp_path):
    """DATASETS.GENERIC: entries, options and the checks against the head."""
    from detectron2.data import MetadataCatalog

    from conftest import make_cfg
    from vlbert_d2.data import register_generic_from_cfg
    from vlbert_d2.data.datasets.generic import parse_generic_entry

    assert parse_generic_entry("a=x/y.jsonl,images=im,add_target_box=true") == \
        ("a", "x/y.jsonl", {"images": "im", "add_target_box": True})
    for bad in ("x/y.jsonl", "a=x.jsonl,colour=red", "a=x.jsonl,kind=vqa"):
        with pytest.raises(ValueError, match="DATASETS.GENERIC"):
            parse_generic_entry(bad)

    entries = [f"pytest_generic_tr={example}/choice_train.jsonl",
               f"pytest_generic_va={example}/choice_val.jsonl"]
    cfg = make_cfg(DATASETS__GENERIC=entries, DATASETS__TRAIN=("pytest_generic_tr",),
                   DATASETS__TEST=("pytest_generic_va",))
    assert register_generic_from_cfg(cfg) == ["pytest_generic_tr", "pytest_generic_va"]
    assert MetadataCatalog.get("pytest_generic_va").generic_kind == "choice"
    cfg.MODEL.VLBERT.VCR.NUM_CHOICES = 2
    with pytest.raises(ValueError, match="3 choices per record.*NUM_CHOICES 2"):
        register_generic_from_cfg(cfg)
    # A missing file (the training set, when evaluating elsewhere) takes the head's kind.
    cfg.MODEL.VLBERT.VCR.NUM_CHOICES = 4
    cfg.DATASETS.GENERIC = [f"pytest_generic_tr={tmp_path}/gone.jsonl"] + entries[1:]
    register_generic_from_cfg(cfg)
    assert MetadataCatalog.get("pytest_generic_tr").generic_kind == "choice"
    cfg.MODEL.VLBERT.HEAD = "VQAHead"
    with pytest.raises(ValueError, match="holds choice records, for MODEL.VLBERT.HEAD VCRHead"):
        register_generic_from_cfg(cfg)
