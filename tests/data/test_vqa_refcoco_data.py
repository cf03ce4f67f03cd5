"""VQA v2 and RefCOCO+ loaders, detection files, mappers and their bad inputs, on files in the
official formats written by the synthetic generator (and edited copies of them)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from synthetic_vl import generate_refcoco, generate_vqa

from vlbert_d2.data.common import swap_left_right
from vlbert_d2.data.datasets.refcoco import RefCOCOFormatError, load_refcoco
from vlbert_d2.data.datasets.vqa import (VQAFormatError, build_answer_vocab, ensure_answer_vocab,
                                         load_vqa)
from vlbert_d2.data.detections import (DetectionFormatError, encode_detection, parse_detection,
                                       read_detection)
from vlbert_d2.utils.safe_pickle import UnsafePickleError

from conftest import make_cfg

DETS = "vgbua_res101_precomputed/trainval2014_resnet101_faster_rcnn_genome"


@pytest.fixture(scope="module")
def vqa_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vqa"))
    generate_vqa(root, counts={"train2014": 60, "val2014": 12, "test2015": 6}, seed=0)
    return root


@pytest.fixture(scope="module")
def ref_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("refcoco"))
    generate_refcoco(root, counts={"train": 20, "val": 8, "testA": 4, "testB": 4}, seed=0)
    return root


def _vqa_paths(root, subset="val2014"):
    return (os.path.join(root, "vqa", f"v2_OpenEnded_mscoco_{subset}_questions.json"),
            os.path.join(root, "vqa", f"v2_mscoco_{subset}_annotations.json"))


def _load(root, subset="val2014", questions=None, annotations=None, vocab=None):
    q, a = _vqa_paths(root, subset)
    return load_vqa(questions or q, annotations if annotations is not None else a,
                    os.path.join(root, subset), f"COCO_{subset}_", os.path.join(root, DETS), vocab)


# --- detection files ---

def test_detection_round_trip(tmp_path):
    boxes = np.array([[1, 2, 30, 40], [5, 5, 6, 9]], np.float32)
    feats = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    rec = encode_detection(7, 64, 48, boxes, features=feats, classes=np.eye(2, 5))
    path = str(tmp_path / "7.json")
    with open(path, "w") as f:
        json.dump(rec, f)
    out = read_detection(path)
    assert out["image_id"] == 7 and (out["image_w"], out["image_h"]) == (64, 48)
    np.testing.assert_array_equal(out["boxes"], boxes)
    np.testing.assert_array_equal(out["features"], feats)
    assert out["classes"].shape == (2, 5)


def test_detection_bad_inputs(tmp_path):
    rec = encode_detection(1, 10, 10, [[0, 0, 5, 5]])
    with pytest.raises(DetectionFormatError, match=r"x\.json: field 'boxes' has 4 float32 values, expected 2 x 4"):
        parse_detection(dict(rec, num_boxes=2), "x.json")
    with pytest.raises(DetectionFormatError, match="missing field 'image_h'"):
        parse_detection({k: v for k, v in rec.items() if k != "image_h"}, "x.json")
    with pytest.raises(DetectionFormatError, match="not valid base64"):
        parse_detection(dict(rec, boxes="@@@"), "x.json")
    with pytest.raises(DetectionFormatError, match="box 0"):
        parse_detection(encode_detection(1, 10, 10, [[5, 0, 1, 5]]), "x.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DetectionFormatError, match="bad.json: not valid JSON"):
        read_detection(str(bad))
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        read_detection(str(tmp_path / "nothing.json"))


# --- VQA ---

def test_vqa_loader(vqa_root):
    dicts = _load(vqa_root)
    assert len(dicts) >= 12
    d = dicts[0]
    assert os.path.isfile(d["file_name"]) and os.path.isfile(d["detection_file"])
    assert len(d["answers"]) == 10 and d["answer_type"] in ("yes/no", "number", "other")
    assert max(d["answer_scores"].values()) == 1.0  # the majority answer
    test = load_vqa(os.path.join(vqa_root, "vqa", "v2_OpenEnded_mscoco_test2015_questions.json"), None,
                    os.path.join(vqa_root, "test2015"), "COCO_test2015_", os.path.join(vqa_root, DETS), None)
    assert test and all("answers" not in t for t in test)


def test_vqa_question_without_annotation(vqa_root, tmp_path):
    q, a = _vqa_paths(vqa_root)
    anns = json.load(open(a))
    dropped = anns["annotations"].pop(3)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(anns))
    with pytest.raises(VQAFormatError, match=rf"questions\[\d+\]: question_id {dropped['question_id']} has no annotation"):
        _load(vqa_root, annotations=str(path))


def test_vqa_malformed(vqa_root, tmp_path):
    q, _ = _vqa_paths(vqa_root)
    data = json.load(open(q))
    data["questions"][2]["question_id"] = "x"
    path = tmp_path / "q.json"
    path.write_text(json.dumps(data))
    with pytest.raises(VQAFormatError, match=r"q\.json: questions\[2\]: field 'question_id' must be an integer"):
        _load(vqa_root, questions=str(path))
    path.write_text("[")
    with pytest.raises(VQAFormatError, match="malformed JSON"):
        _load(vqa_root, questions=str(path))


def test_vqa_answers_outside_vocabulary_are_counted(vqa_root, caplog):
    dicts = _load(vqa_root, vocab=["no such answer"])
    assert len(dicts) == len(_load(vqa_root))  # nothing dropped
    assert f"{len(dicts)} of {len(dicts)} questions have none of their answers" in caplog.text


def test_answer_vocab(vqa_root, tmp_path):
    _, train = _vqa_paths(vqa_root, "train2014")
    vocab = build_answer_vocab([train], min_count=3)
    assert "yes" in vocab and "no" in vocab and len(set(vocab)) == len(vocab)
    path = str(tmp_path / "answers.txt")
    assert ensure_answer_vocab(path, [train], min_count=3) == vocab
    assert open(path).read().split("\n")[0] == vocab[0]
    with open(path, "w") as f:  # an existing file is used as it is
        f.write("yes\nno\n")
    assert ensure_answer_vocab(path, [train]) == ["yes", "no"]


def _vqa_mapper(vocab, **kw):
    from vlbert_d2.data.vqa_mapper import VQADatasetMapper
    from vlbert_d2.modeling.bert import build_tokenizer

    cfg = make_cfg()
    return VQADatasetMapper(True, tokenizer=build_tokenizer(cfg), augmentations=[], image_format="BGR",
                            max_text_len=16, answer_vocab=vocab, **kw)


def test_vqa_mapper(vqa_root):
    d = _load(vqa_root)[0]
    vocab = sorted(d["answer_scores"]) + ["left", "right"]
    out = _vqa_mapper(vocab)(d)
    tok = _vqa_mapper(vocab).tokenizer
    pieces = tok.convert_ids_to_tokens(out["input_ids"][0].tolist())
    assert pieces[0] == "[CLS]" and pieces[-3:] == ["[SEP]", "[MASK]", "[SEP]"]
    assert pieces[out["answer_position"]] == "[MASK]"
    assert out["token_type_ids"][0].tolist()[-2:] == [1, 1] and out["token_type_ids"][0, 1] == 0
    det = read_detection(d["detection_file"])
    assert out["boxes"].shape == (len(det["boxes"]) + 1, 4)  # whole image first
    assert out["boxes"][0].tolist() == [0, 0, det["image_w"] - 1, det["image_h"] - 1]  # official
    for answer, score in d["answer_scores"].items():
        assert out["answer_target"][vocab.index(answer)] == pytest.approx(score)
    # Flipped: the text and the answers swap left and right.
    m = _vqa_mapper(vocab)
    target = m.target({"left": 1.0, "red": 0.3}, flipped=True)
    assert target[vocab.index("right")] == 1.0 and target[vocab.index("left")] == 0.0


def test_vqa_mapper_missing_image(vqa_root):
    d = dict(_load(vqa_root)[0], file_name="/nonexistent/COCO_val2014_000000000001.jpg")
    with pytest.raises(FileNotFoundError, match=r"question_id \d+\).*field 'image_id': image not found: /nonexistent"):
        _vqa_mapper(["yes"])(d)


def test_vqa_precomputed_features(vqa_root, tmp_path):
    d = _load(vqa_root)[0]
    det = read_detection(d["detection_file"])
    feats = np.arange(len(det["boxes"]) * 3, dtype=np.float32).reshape(-1, 3)
    path = str(tmp_path / "det.json")
    with open(path, "w") as f:
        json.dump(encode_detection(d["image_id"], det["image_w"], det["image_h"], det["boxes"], features=feats), f)
    out = _vqa_mapper(["yes"], detection_features=True)(dict(d, detection_file=path, file_name="/no/image.jpg"))
    assert "image" not in out and out["features"].shape == (len(feats) + 1, 3)
    np.testing.assert_allclose(out["features"][0], feats.mean(0))  # whole image: the mean
    with pytest.raises(ValueError, match="no field 'features'"):
        _vqa_mapper(["yes"], detection_features=True)(d)


def test_swap_left_right():
    assert swap_left_right("the Left ball, right of leftover") == "the Right ball, left of leftover"


# --- RefCOCO+ ---

def _ref_paths(root):
    return (os.path.join(root, "refcoco+", "refs(unc).p"), os.path.join(root, "refcoco+", "instances.json"),
            os.path.join(root, "train2014"))


def test_refcoco_loader(ref_root):
    refs, inst, images = _ref_paths(ref_root)
    dicts = load_refcoco(refs, inst, images, "val")
    assert dicts and all(os.path.isfile(d["file_name"]) for d in dicts)
    d = dicts[0]
    assert d["gt_box"] in d["boxes"] and isinstance(d["sentence"], str)
    det = load_refcoco(refs, inst, images, "val",
                       os.path.join(ref_root, "refcoco+", "proposal", "res101_coco_minus_refer_notime_dets.json"))
    assert len(det) == len(dicts) and det[0]["boxes"] != d["boxes"]
    with pytest.raises(ValueError, match="split must be one of"):
        load_refcoco(refs, inst, images, "test")


def test_refcoco_malicious_pickle_is_refused(ref_root, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "refs(unc).p"
    with open(path, "wb") as f:
        pickle.dump([Evil()], f, protocol=2)
    _, inst, images = _ref_paths(ref_root)
    with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p: refusing to load '(posix|os)\.system'"):
        load_refcoco(str(path), inst, images, "val")
    assert not marker.exists()


def test_refcoco_bad_inputs(ref_root, tmp_path):
    refs_path, inst, images = _ref_paths(ref_root)
    refs = pickle.load(open(refs_path, "rb"))
    i = next(k for k, r in enumerate(refs) if r["split"] == "val")
    bad = [dict(r) for r in refs]
    bad[i]["ann_id"] = 987654321
    path = tmp_path / "refs.p"
    with open(path, "wb") as f:
        pickle.dump(bad, f, protocol=2)
    with pytest.raises(RefCOCOFormatError, match=rf"refs\[{i}\] \(ref_id .*field 'ann_id': annotation 987654321"):
        load_refcoco(str(path), inst, images, "val")


def test_refcoco_mapper_labels_and_missing_image(ref_root):
    from vlbert_d2.data.refcoco_mapper import RefCOCODatasetMapper
    from vlbert_d2.modeling.bert import build_tokenizer

    refs, inst, images = _ref_paths(ref_root)
    d = load_refcoco(refs, inst, images, "val")[0]
    m = RefCOCODatasetMapper(True, tokenizer=build_tokenizer(make_cfg()), augmentations=[],
                             image_format="BGR", max_text_len=16)
    out = m(d)
    assert out["boxes"].shape == (len(d["boxes"]) + 1, 4)
    k = d["boxes"].index(d["gt_box"]) + 1
    assert out["region_labels"][k] == 1 and out["region_labels"][0] == 0  # whole image: negative
    assert out["region_labels"].sum() >= 1
    with pytest.raises(FileNotFoundError, match="image not found"):
        m(dict(d, file_name="/nonexistent.jpg"))


def test_refcoco_flip_swaps_text_and_boxes(ref_root):
    from detectron2.data import transforms as T

    from vlbert_d2.data.refcoco_mapper import RefCOCODatasetMapper
    from vlbert_d2.modeling.bert import build_tokenizer

    refs, inst, images = _ref_paths(ref_root)
    d = dict(load_refcoco(refs, inst, images, "val")[0], sentence="the left one")
    m = RefCOCODatasetMapper(True, tokenizer=build_tokenizer(make_cfg()),
                             augmentations=[T.RandomFlip(prob=1.0)], image_format="BGR", max_text_len=16)
    out = m(d)
    assert "right" in m.tokenizer.convert_ids_to_tokens(out["input_ids"][0].tolist())
    x1, _, x2, _ = d["gt_box"]
    k = d["boxes"].index(d["gt_box"]) + 1
    # Official flip: x -> W - 1 - x (pixel indices).
    assert out["boxes"][k, 0] == pytest.approx(d["width"] - 1 - x2) and out["region_labels"][k] == 1


def test_vqa_mapper_flip_swaps_question_boxes_and_answers(vqa_root):
    from detectron2.data import transforms as T

    from vlbert_d2.data.vqa_mapper import VQADatasetMapper
    from vlbert_d2.modeling.bert import build_tokenizer

    d = dict(_load(vqa_root)[0], question="is the ball on the left?", answer_scores={"left": 1.0})
    m = VQADatasetMapper(True, tokenizer=build_tokenizer(make_cfg()), augmentations=[T.RandomFlip(prob=1.0)],
                         image_format="BGR", max_text_len=16, answer_vocab=["left", "right", "<unk>"])
    out = m(d)
    pieces = m.tokenizer.convert_ids_to_tokens(out["input_ids"][0].tolist())
    assert "right" in pieces and "left" not in pieces
    assert out["answer_target"].tolist() == [0.0, 1.0, 0.0]
    det = read_detection(d["detection_file"])
    x1, _, x2, _ = det["boxes"][0].tolist()
    assert out["boxes"][1, 0] == pytest.approx(det["image_w"] - 1 - x2)  # official: W - 1 - x


def test_unknown_answer_keeps_its_row_and_is_never_predicted(tmp_path):
    from vlbert_d2.data.datasets.vqa import answer_rows, load_answer_vocab
    from vlbert_d2.evaluation import VQAEvaluator

    path = tmp_path / "answers_vqa.txt"
    path.write_text("yes\n<unk>\nTwo\nno\n")
    vocab = load_answer_vocab(str(path))
    assert vocab == ["yes", "<unk>", "Two", "no"]             # one row per line, file order
    assert answer_rows(vocab) == {"yes": 0, "2": 2, "no": 3}  # targets: normalised, no <unk>
    ev = VQAEvaluator("unused", vocab, distributed=False)
    ev.process([{"question_id": 5}], [{"scores": torch.tensor([0.1, 0.9, 0.2, 0.3])}])
    assert ev._predictions == {5: "no"}


def test_detection_sizes_must_be_positive():
    with pytest.raises(DetectionFormatError, match="'image_w' must be positive"):
        parse_detection(dict(encode_detection(1, 10, 10, [[0, 0, 5, 5]]), image_w=0), "x.json")


def test_inclusive_iou():
    from vlbert_d2.utils.boxes import inclusive_iou

    a, b = torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([[3.0, 0, 12, 9]])  # 10x10 pixels, 3 apart
    assert inclusive_iou(a, b)[0, 0] == pytest.approx(70 / 130)


def test_refcoco_detected_training_adds_ground_truth(ref_root):
    refs, inst, images = _ref_paths(ref_root)
    props = os.path.join(ref_root, "refcoco+", "proposal", "res101_coco_minus_refer_notime_dets.json")
    train = load_refcoco(refs, inst, images, "train", props)
    gt = load_refcoco(refs, inst, images, "train")
    for t, g in zip(train, gt):
        assert t["boxes"][-len(g["boxes"]):] == g["boxes"] and len(t["boxes"]) > len(g["boxes"])


def test_refcoco_annotation_of_another_image(ref_root, tmp_path):
    refs_path, inst, images = _ref_paths(ref_root)
    refs = pickle.load(open(refs_path, "rb"))
    i = next(k for k, r in enumerate(refs) if r["split"] == "val")
    other = next(r for r in refs if r["image_id"] != refs[i]["image_id"])
    bad = [dict(r) for r in refs]
    bad[i]["ann_id"] = other["ann_id"]
    path = tmp_path / "refs.p"
    with open(path, "wb") as f:
        pickle.dump(bad, f, protocol=2)
    with pytest.raises(RefCOCOFormatError, match="belongs to image"):
        load_refcoco(str(path), inst, images, "val")


@pytest.mark.parametrize("task", ["vqa", "refcoco"])
def test_training_step_gives_every_parameter_a_gradient(vqa_root, ref_root, task):
    """The VQA and RefCOCO+ heads do not read BERT's pooler; it still gets a (zero) gradient, so
    DistributedDataParallel training does not stop on an unused parameter."""
    from detectron2.modeling import build_model

    from vlbert_d2.config import finalize_vlbert_config
    from vlbert_d2.data.refcoco_mapper import RefCOCODatasetMapper
    from vlbert_d2.modeling.bert import build_tokenizer

    if task == "vqa":
        d = _load(vqa_root)[0]
        vocab = sorted(d["answer_scores"]) + ["left", "right"]
        vocab_file = os.path.join(vqa_root, "test_vocab.txt")
        with open(vocab_file, "w") as f:
            f.write("\n".join(vocab) + "\n")
        cfg = make_cfg(MODEL__VLBERT__HEAD="VQAHead", MODEL__VLBERT__VQA__ANSWER_VOCAB=vocab_file)
        inputs = [_vqa_mapper(vocab)(d)]
    else:
        refs, inst, images = _ref_paths(ref_root)
        d = load_refcoco(refs, inst, images, "val")[0]
        cfg = make_cfg(MODEL__VLBERT__HEAD="RefCOCOHead")
        inputs = [RefCOCODatasetMapper(True, tokenizer=build_tokenizer(cfg), augmentations=[],
                                       image_format="BGR", max_text_len=16)(d)]
    model = build_model(finalize_vlbert_config(cfg)).train()
    sum(model(inputs).values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.vl_bert.bert.pooler.dense.weight.grad.abs().sum() == 0


def test_detector_regions_as_refcoco_proposals(ref_root, tmp_path, caplog):
    """Per-image detection files (what tools/extract_regions.py writes) -> the MAttNet-layout
    proposals file that the "_det" datasets read: boxes as x, y, w, h, the degenerate ones left
    out and counted, every record's candidates exactly the image's detected boxes."""
    from vlbert_d2.data.datasets.refcoco import load_proposals, write_proposals
    from vlbert_d2.data.detections import write_detection

    refs, inst, images = _ref_paths(ref_root)
    val = load_refcoco(refs, inst, images, "val")
    ids = sorted({d["image_id"] for d in val})
    files = []
    for k, image_id in enumerate(ids):
        # Each image: its ground-truth boxes shifted by k pixels, and a box of zero width.
        boxes = [[x1 + k, y1, x2 + k, y2] for x1, y1, x2, y2 in next(d["boxes"] for d in val if d["image_id"] == image_id)]
        path = str(tmp_path / "regions" / f"{image_id}.json")
        write_detection(path, encode_detection(image_id, 192, 128, boxes + [[5, 5, 5, 9]]))
        files.append(path)
    out = str(tmp_path / "refcoco+" / "proposal" / "bua_regions_dets.json")
    written = write_proposals(files, out)
    assert written == {"images": len(ids), "boxes": sum(len(d) for d in [
        next(r["boxes"] for r in val if r["image_id"] == i) for i in ids]), "empty_boxes": len(ids),
        "images_without_box": []}
    assert f"left out {len(ids)} boxes of zero width or height" in caplog.text
    raw = json.load(open(out))
    first = next(r for r in raw if r["image_id"] == ids[0])
    x1, y1, x2, y2 = next(d["boxes"] for d in val if d["image_id"] == ids[0])[0]
    assert first["box"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    proposals = load_proposals(out)
    det = load_refcoco(refs, inst, images, "val", out)
    for d in det:
        k = ids.index(d["image_id"])
        gt = next(r["boxes"] for r in val if r["image_id"] == d["image_id"])
        np.testing.assert_allclose(d["boxes"], [[a + k, b, c + k, e] for a, b, c, e in gt], atol=1e-4)
        assert d["boxes"] == proposals[d["image_id"]]
    # A file of an image with only a degenerate box: counted, named; a non-integer id: refused.
    only = str(tmp_path / "regions" / "only.json")
    write_detection(only, encode_detection(ids[0], 192, 128, [[3, 3, 3, 3]]))
    assert write_proposals([only], out)["images_without_box"] == [ids[0]]
    named = str(tmp_path / "regions" / "named.json")
    write_detection(named, encode_detection("kite.jpg", 192, 128, [[3, 3, 9, 9]]))
    with pytest.raises(DetectionFormatError, match="named.json: field 'image_id' must be an integer"):
        write_proposals([named], out)
    broken = tmp_path / "regions" / "broken.json"
    broken.write_text('{"image_id": 1, "image_w": 4')
    with pytest.raises(DetectionFormatError, match="broken.json"):
        write_proposals([str(broken)], out)
