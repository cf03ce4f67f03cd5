"""VCR data: the official-format loader and its error messages, image metadata, the object-
reference tokenisation and the dataset mapper's model inputs."""
import copy
import json
import os

import cv2
import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from conftest import SYNTH_COUNTS, make_cfg
from vlbert_d2.data import SYNTHETIC_CLASSES, VCRDatasetMapper
from vlbert_d2.data.datasets import (
    VCR_CLASSES,
    VCRFormatError,
    load_vcr_jsonl,
    load_vcr_metadata,
    register_vcr,
)
from vlbert_d2.data.vcr_mapper import GENDER_NEUTRAL_NAMES, tokenize_vcr, truncate_q2a, truncate_qa2r

# --------------------------------------------------------------------------- a hand-made record
WIDTH, HEIGHT = 120, 80
OBJECTS = ["person", "person", "dog"]
BOXES = [[10.0, 10.0, 50.0, 50.0], [60.0, 20.0, 90.0, 60.0], [95.0, 5.0, 115.0, 75.0]]
TRIANGLE = [[30.0, 10.0], [50.0, 50.0], [10.0, 50.0]]  # object 0: a triangle in its box
SQUARE = [[60.0, 20.0], [90.0, 20.0], [90.0, 60.0], [60.0, 60.0]]  # object 1: fills its box
RECORD = {
    "movie": "m", "objects": OBJECTS,
    "img_fn": "m/img.jpg", "metadata_fn": "m/img.json",
    "question": ["is", [0, 1], "with", [2], "?"],
    "answer_choices": [["yes", "."], [[1], "is", "."], ["no", "."], [[2], "runs", "away", "."]],
    "rationale_choices": [["because", [0], "smiles", "."], ["it", "rains", "."],
                          [[2], "barks", "."], ["nothing", "."]],
    "answer_label": 1, "rationale_label": 3,
    "annot_id": "hand-0",
}


def _write_dataset(root, records=(RECORD,), meta_overrides=None):
    """Writes images, metadata and train.jsonl under ``root``; returns (jsonl, image_root)."""
    image_root = os.path.join(root, "vcr1images")
    os.makedirs(os.path.join(image_root, "m"), exist_ok=True)
    img = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
    cv2.imwrite(os.path.join(image_root, "m", "img.jpg"), img)
    meta = {"boxes": [b + [1.0] for b in BOXES], "segms": [[TRIANGLE], [SQUARE], []],
            "names": OBJECTS, "width": WIDTH, "height": HEIGHT}
    meta.update(meta_overrides or {})
    with open(os.path.join(image_root, "m", "img.json"), "w") as f:
        json.dump(meta, f)
    jsonl = os.path.join(root, "train.jsonl")
    with open(jsonl, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return jsonl, image_root


@pytest.fixture
def hand_dict(tmp_path):
    jsonl, image_root = _write_dataset(str(tmp_path))
    (d,) = load_vcr_jsonl(jsonl, image_root, VCR_CLASSES)
    return d


# --------------------------------------------------------------------------- loader
def test_load_jsonl_official_format(synthetic_root):
    jsonl = os.path.join(synthetic_root, "train.jsonl")
    image_root = os.path.join(synthetic_root, "vcr1images")
    dicts = load_vcr_jsonl(jsonl, image_root, list(SYNTHETIC_CLASSES))
    with open(jsonl) as f:
        lines = [json.loads(line) for line in f]
    assert len(dicts) == len(lines) == SYNTH_COUNTS["train"]
    for i, (d, rec) in enumerate(zip(dicts, lines), start=1):
        assert d["annot_id"] == d["image_id"] == rec["annot_id"]
        assert d["file_name"] == os.path.join(image_root, rec["img_fn"]) and os.path.isfile(d["file_name"])
        assert d["metadata_file"] == os.path.join(image_root, rec["metadata_fn"])
        assert d["objects"] == rec["objects"]
        assert [SYNTHETIC_CLASSES[c] for c in d["object_classes"]] == rec["objects"]
        for field in ("question", "answer_choices", "rationale_choices", "answer_label",
                      "rationale_label"):
            assert d[field] == rec[field]
        assert d["source"] == f"{jsonl}:{i}"


def test_load_test_split_without_labels(synthetic_root):
    dicts = load_vcr_jsonl(os.path.join(synthetic_root, "test.jsonl"),
                           os.path.join(synthetic_root, "vcr1images"), list(SYNTHETIC_CLASSES),
                           require_labels=False)
    assert len(dicts) == SYNTH_COUNTS["test"]
    assert all(d["answer_label"] is None and d["rationale_label"] is None for d in dicts)


def test_registered_dataset_split_metadata(synthetic_names, synthetic_dicts):
    meta = MetadataCatalog.get(synthetic_names["train"])
    assert meta.evaluator_type == "vcr" and meta.thing_classes == list(SYNTHETIC_CLASSES)
    assert meta.split == "train"
    assert len(synthetic_dicts["val"]) == SYNTH_COUNTS["val"]
    assert all(d["answer_label"] is None for d in synthetic_dicts["test"])  # test: labels optional


def _drop(field):
    def mutate(r):
        del r[field]
    return mutate


def _set(path, value):
    def mutate(r):
        target = r
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


# (id, mutation of the second record, exception type, substrings of the message besides file:2)
BAD_RECORDS = [
    ("missing-question", _drop("question"), VCRFormatError, ["question"]),
    ("missing-objects", _drop("objects"), VCRFormatError, ["objects"]),
    ("answer-object-out-of-range", _set(["answer_choices", 1], [[7], "is", "."]), VCRFormatError,
     ["answer_choices[1]", "7"]),
    ("rationale-object-out-of-range", _set(["rationale_choices", 2], [[-1]]), VCRFormatError,
     ["rationale_choices[2]"]),
    ("question-bad-token", _set(["question", 1], 3), VCRFormatError, ["question"]),
    ("question-empty-reference", _set(["question", 1], []), VCRFormatError, ["question"]),
    ("three-answers", _set(["answer_choices"], RECORD["answer_choices"][:3]), VCRFormatError,
     ["answer_choices", "3"]),
    ("five-rationales", _set(["rationale_choices"], RECORD["rationale_choices"] + [["x"]]),
     VCRFormatError, ["rationale_choices", "5"]),
    ("missing-image", _set(["img_fn"], "m/nope.jpg"), FileNotFoundError, ["img_fn", "nope.jpg"]),
    ("missing-metadata", _set(["metadata_fn"], "m/nope.json"), FileNotFoundError,
     ["metadata_fn", "nope.json"]),
    ("unknown-class", _set(["objects", 2], "unicorn"), VCRFormatError, ["objects[2]", "unicorn"]),
    ("answer-label-4", _set(["answer_label"], 4), VCRFormatError, ["answer_label", "4"]),
    ("rationale-label-negative", _set(["rationale_label"], -1), VCRFormatError, ["rationale_label"]),
    ("answer-label-string", _set(["answer_label"], "1"), VCRFormatError, ["answer_label"]),
    ("answer-label-bool", _set(["answer_label"], True), VCRFormatError, ["answer_label"]),
    ("question-bool-reference", _set(["question", 1], [True]), VCRFormatError, ["question"]),
    ("missing-answer-label", _drop("answer_label"), VCRFormatError, ["answer_label"]),
    ("missing-rationale-label", _drop("rationale_label"), VCRFormatError, ["rationale_label"]),
]


@pytest.mark.parametrize("mutate,exc,needles", [b[1:] for b in BAD_RECORDS],
                         ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_names_file_line_field(tmp_path, mutate, exc, needles):
    bad = copy.deepcopy(RECORD)
    bad["annot_id"] = "hand-1"
    mutate(bad)
    jsonl, image_root = _write_dataset(str(tmp_path), [RECORD, bad])
    with pytest.raises(exc) as info:
        load_vcr_jsonl(jsonl, image_root, VCR_CLASSES)
    msg = str(info.value)
    assert f"{jsonl}:2" in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_malformed_json_line(tmp_path):
    jsonl, image_root = _write_dataset(str(tmp_path), [RECORD, '{"question": ["a", '])
    with pytest.raises(VCRFormatError, match="malformed JSON") as info:
        load_vcr_jsonl(jsonl, image_root, VCR_CLASSES)
    assert f"{jsonl}:2" in str(info.value)
    jsonl, image_root = _write_dataset(str(tmp_path), [RECORD, "[1, 2]"])
    with pytest.raises(VCRFormatError, match=f"{jsonl}:2"):
        load_vcr_jsonl(jsonl, image_root, VCR_CLASSES)


def test_labels_optional_when_not_required(tmp_path):
    unlabelled = {k: v for k, v in RECORD.items() if not k.endswith("_label")}
    jsonl, image_root = _write_dataset(str(tmp_path), [unlabelled])
    (d,) = load_vcr_jsonl(jsonl, image_root, VCR_CLASSES, require_labels=False)
    assert d["answer_label"] is None and d["rationale_label"] is None
    # ... but a label that is present is still checked.
    jsonl, image_root = _write_dataset(str(tmp_path), [dict(unlabelled, answer_label=9)])
    with pytest.raises(VCRFormatError, match="answer_label"):
        load_vcr_jsonl(jsonl, image_root, VCR_CLASSES, require_labels=False)


def test_registered_dataset_with_missing_files(tmp_path):
    name = "pytest_vcr_missing_train"
    register_vcr(name, str(tmp_path / "nowhere"), "train")
    try:
        with pytest.raises(FileNotFoundError) as info:
            DatasetCatalog.get(name)
        msg = str(info.value)
        assert "datasets/README.md" in msg and name in msg
        assert os.path.join(str(tmp_path / "nowhere"), "train.jsonl") in msg
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# --------------------------------------------------------------------------- metadata
def _write_meta(tmp_path, text):
    path = str(tmp_path / "meta.json")
    with open(path, "w") as f:
        f.write(text)
    return path


def test_load_metadata(tmp_path):
    meta = {"boxes": [b + [0.9] for b in BOXES], "segms": [[TRIANGLE], [SQUARE], []],
            "width": WIDTH, "height": HEIGHT}
    m = load_vcr_metadata(_write_meta(tmp_path, json.dumps(meta)), 3, "x.jsonl:1")
    assert m["boxes"] == BOXES  # score dropped
    assert m["segms"][0] == [[v for point in TRIANGLE for v in point]]  # flat polygons
    assert m["segms"][2] == []
    assert (m["width"], m["height"]) == (WIDTH, HEIGHT)
    del meta["segms"]
    m = load_vcr_metadata(_write_meta(tmp_path, json.dumps(meta)), 3, "x.jsonl:1")
    assert m["segms"] == [[], [], []]


def test_metadata_box_count_mismatch(tmp_path):
    meta = {"boxes": [b + [1.0] for b in BOXES], "width": WIDTH, "height": HEIGHT}
    path = _write_meta(tmp_path, json.dumps(meta))
    with pytest.raises(VCRFormatError) as info:
        load_vcr_metadata(path, 4, "x.jsonl:7")
    msg = str(info.value)
    assert path in msg and "boxes" in msg and "x.jsonl:7" in msg


def test_metadata_malformed_json(tmp_path):
    path = _write_meta(tmp_path, '{"boxes": [')
    with pytest.raises(VCRFormatError, match="malformed JSON") as info:
        load_vcr_metadata(path, 3, "x.jsonl:7")
    assert path in str(info.value)


def test_metadata_missing_field_and_file(tmp_path):
    path = _write_meta(tmp_path, json.dumps({"boxes": [], "width": 3}))
    with pytest.raises(VCRFormatError, match="height") as info:
        load_vcr_metadata(path, 0, "x.jsonl:7")
    assert path in str(info.value)
    with pytest.raises(FileNotFoundError, match="metadata_fn"):
        load_vcr_metadata(str(tmp_path / "none.json"), 0, "x.jsonl:7")


# --------------------------------------------------------------------------- tokenisation
def test_tokenize_vcr_object_references():
    pieces, tags = tokenize_vcr([[0, 1]], OBJECTS, lambda w: [w.lower()])
    assert pieces == [GENDER_NEUTRAL_NAMES[0].lower(), "and", GENDER_NEUTRAL_NAMES[1].lower()]
    assert pieces == ["casey", "and", "riley"]
    assert tags == [1, 0, 2]
    # Three or more: "a and b and c", as the official loader (not "a , b and c").
    pieces, tags = tokenize_vcr(["is", [0, 1, 2], "happy", [2]], OBJECTS, lambda w: [w.lower()])
    assert pieces == ["is", "casey", "and", "riley", "and", "dog", "happy", "dog"]
    assert tags == [0, 1, 0, 2, 0, 3, 0, 3]


def test_tokenize_vcr_with_wordpieces(tokenizer):
    objects = ["dog", "person", "person", "umbrella"]
    pieces, tags = tokenize_vcr(["why", "is", [2], "holding", [3], "?"], objects, tokenizer.tokenize)
    umbrella = tokenizer.tokenize("umbrella")
    name = tokenizer.tokenize(GENDER_NEUTRAL_NAMES[2])  # person names follow the object index
    assert pieces == tokenizer.tokenize("why is") + name + tokenizer.tokenize("holding") + umbrella + ["?"]
    assert tags == [0, 0] + [3] * len(name) + [0] + [4] * len(umbrella) + [0]


def _seq(text, tag):
    return list(text), [tag] * len(text)


def test_truncate_q2a_official_rule():
    """Hand-computed with the official rule (vcr.py, seq_len 10): per answer in turn, cut the
    answer while it is longer than the question, else the question (also on equal lengths);
    the question stays cut for the later answers and is used in its final form by all."""
    q = _seq("abcdefgh", 1)
    answers = [_seq("wxyz", 2), _seq("01234567", 3)]
    # answer 0: 8+4 -> question 7, 6 (6+4 = 10 fits)
    # answer 1: 6+8 -> answer 7 (longer), answer 6, then 6 = 6: question 5, then answer 5
    q2, (a0, a1) = truncate_q2a(q, answers, 10)
    assert q2 == (list("abcde"), [1] * 5)
    assert a0 == (list("wxyz"), [2] * 4) and a1 == (list("01234"), [3] * 5)
    assert q == _seq("abcdefgh", 1) and answers[1] == _seq("01234567", 3)  # inputs untouched
    # Equal lengths: the question loses the piece (the old rule cut the answer).
    q2, (a0,) = truncate_q2a(_seq("abc", 1), [_seq("xyz", 2)], 5)
    assert (q2[0], a0[0]) == (list("ab"), list("xyz"))
    q2, (a0,) = truncate_q2a(_seq("ab", 1), [_seq("xyz", 2)], 5)
    assert (q2[0], a0[0]) == (list("ab"), list("xyz"))  # fits: nothing cut


def test_truncate_qa2r_official_rule():
    """Hand-computed with the official QA->R rule (seq_len 10): the rationale is cut while it is
    longer than question + answer, else the question down to one piece, then the answer."""
    q, a = _seq("qqqq", 1), _seq("aaa", 2)
    rationales = [_seq("rrrrrrrrrr", 3), _seq("ss", 4)]
    # rationale 0: 4+3+10 -> r 9, 8, 7; 7 = 4+3: q 3; r 6; q 2; r 5 (2+3+5 = 10)
    q2, a2, (r0, r1) = truncate_qa2r(q, a, rationales, 10)
    assert q2 == (list("qq"), [1] * 2) and a2 == (list("aaa"), [2] * 3)
    assert r0 == (list("rrrrr"), [3] * 5) and r1 == (list("ss"), [4] * 2)
    # The question keeps one piece, then the answer is cut: 3+2+3 in 4 -> q 2, q 1, a 1, r 2.
    q2, a2, (r0,) = truncate_qa2r(_seq("qqq", 1), _seq("aa", 2), [_seq("rrr", 3)], 4)
    assert (q2[0], a2[0], r0[0]) == (["q"], ["a"], ["r", "r"])


# --------------------------------------------------------------------------- mapper
def _segments(row_ids, row_types, row_mask, tok):
    """(A pieces, B pieces) of a mapped row, checking the [CLS] A [SEP] B [SEP] frame."""
    n = int(row_mask.sum())
    assert row_mask[:n].all() and not row_mask[n:].any()  # a prefix
    pieces = tok.convert_ids_to_tokens(row_ids[:n].tolist())
    assert pieces[0] == tok.cls_token and pieces[-1] == tok.sep_token
    assert pieces.count(tok.sep_token) == 2
    sep = pieces.index(tok.sep_token)
    assert row_types[:sep + 1].tolist() == [0] * (sep + 1)
    assert row_types[sep + 1:n].tolist() == [1] * (n - sep - 1)
    return pieces[1:sep], pieces[sep + 1:n - 1]


def _expected(tokens, tok):
    return tokenize_vcr(tokens, OBJECTS, tok.tokenize)


def test_mapper_q2a_inputs(tiny_cfg, hand_dict, tokenizer):
    out = VCRDatasetMapper(tiny_cfg, True)(hand_dict)
    K, L = out["input_ids"].shape
    assert K == 4
    for k in ("token_type_ids", "text_mask", "text_tags"):
        assert out[k].shape == (K, L) and out[k].dtype == torch.long
    assert out["label"] == 1 and out["annot_id"] == "hand-0"
    q_pieces, q_tags = _expected(RECORD["question"], tokenizer)
    assert q_pieces == ["is", "casey", "and", "riley", "with", "dog", "?"]
    for k in range(K):
        a, b = _segments(out["input_ids"][k], out["token_type_ids"][k], out["text_mask"][k], tokenizer)
        b_pieces, b_tags = _expected(RECORD["answer_choices"][k], tokenizer)
        assert a == q_pieces and b == b_pieces
        n = int(out["text_mask"][k].sum())
        assert out["text_tags"][k, :n].tolist() == [0] + q_tags + [0] + b_tags + [0]
    assert out["text_tags"].min() >= 0 and out["text_tags"].max() < len(out["boxes"])
    assert out["text_tags"].max() == 3  # the dog, RoI 3
    assert out["object_classes"].tolist() == [-1] + [VCR_CLASSES.index(o) for o in OBJECTS]


def test_mapper_image_boxes_masks(tiny_cfg, hand_dict):
    out = VCRDatasetMapper(tiny_cfg, False)(hand_dict)  # test size: short edge 80 -> 128
    scale = 128 / HEIGHT
    image = out["image"]
    assert image.shape == (3, 128, round(WIDTH * scale)) and image.dtype == torch.uint8
    assert (out["height"], out["width"]) == (HEIGHT, WIDTH)
    boxes = out["boxes"]
    assert boxes.shape == (4, 4)
    # The whole image: official [0, 0, w - 1, h - 1] = [0, 0, 119, 79], resized x1.6.
    assert image.shape[1:] == (128, 192)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 190.4, 126.4]))
    torch.testing.assert_close(boxes[1:], torch.tensor(BOXES) * scale)
    M = tiny_cfg.MODEL.VLBERT.POOLER_RESOLUTION
    masks = out["masks"]
    assert masks.shape == (4, M, M)
    assert (masks[0] == 1).all()  # the whole image is never masked
    tri = masks[1]
    assert tri.min() == 0 and tri.max() == 1
    assert tri[0, 0] == 0 and tri[0, -1] == 0 and tri[-1, M // 2] == 1  # apex at the top middle
    assert (masks[2] == 1).all()  # the square fills its box
    assert (masks[3] == 1).all()  # no polygon: the whole box


def test_mapper_without_masks(tiny_cfg, hand_dict):
    tiny_cfg.MODEL.VLBERT.USE_INSTANCE_MASKS = False
    assert "masks" not in VCRDatasetMapper(tiny_cfg, True)(hand_dict)


def test_mapper_truncation_keeps_cls_and_seps(tiny_cfg, hand_dict, tokenizer):
    tiny_cfg.INPUT.MAX_TEXT_LEN = 5  # word pieces, [CLS] and [SEP]s not counted (official)
    out = VCRDatasetMapper(tiny_cfg, True)(hand_dict)
    assert out["input_ids"].shape[1] <= 8
    # Worked by hand with the official rule: question "is casey and riley with dog ?" (7 pieces);
    # answer 0 "yes ." (2): the question is cut to 3; answer 1 "riley is ." (3 = 3): the
    # question to 2; answer 2 "no ." fits; answer 3 "dog runs away ." (4 > 2): the answer to 3.
    expected_b = [["yes", "."], ["riley", "is", "."], ["no", "."], ["dog", "runs", "away"]]
    expected_b_tags = [[0, 0], [2, 0, 0], [0, 0], [3, 0, 0]]
    for k in range(4):
        a, b = _segments(out["input_ids"][k], out["token_type_ids"][k], out["text_mask"][k], tokenizer)
        assert a == ["is", "casey"] and b == expected_b[k]
        n = int(out["text_mask"][k].sum())
        assert out["text_tags"][k, :n].tolist() == [0, 0, 1, 0] + expected_b_tags[k] + [0]


def test_mapper_qa2r_puts_correct_answer_in_sentence_a(tiny_cfg, hand_dict, tokenizer):
    tiny_cfg.MODEL.VLBERT.VCR.TASK = "QA2R"
    out = VCRDatasetMapper(tiny_cfg, True)(hand_dict)
    assert out["input_ids"].shape[0] == 4 and out["label"] == RECORD["rationale_label"]
    context = RECORD["question"] + RECORD["answer_choices"][RECORD["answer_label"]]
    for k in range(4):
        a, b = _segments(out["input_ids"][k], out["token_type_ids"][k], out["text_mask"][k], tokenizer)
        assert a == _expected(context, tokenizer)[0]
        assert b == _expected(RECORD["rationale_choices"][k], tokenizer)[0]


def test_mapper_qa2r_truncation_official(tiny_cfg, hand_dict, tokenizer):
    """Worked by hand with the official QA->R rule, seq_len 6: question "is casey and riley with
    dog ?" (7), answer 1 "riley is ." (3). Rationale 0 "because casey smiles ." (4, not longer
    than 7 + 3): the question is cut down to "is", then the answer to "riley is", then the
    rationale (4 > 1 + 2) to 3. Rationale 2 "dog bark ##s ." (4 > 3): cut to 3. The others fit."""
    tiny_cfg.MODEL.VLBERT.VCR.TASK = "QA2R"
    tiny_cfg.INPUT.MAX_TEXT_LEN = 6
    out = VCRDatasetMapper(tiny_cfg, True)(hand_dict)
    expected_b = [["because", "casey", "smiles"], ["it", "rains", "."], ["dog", "bark", "##s"], ["nothing", "."]]
    expected_b_tags = [[0, 1, 0], [0, 0, 0], [3, 0, 0], [0, 0]]
    for k in range(4):
        a, b = _segments(out["input_ids"][k], out["token_type_ids"][k], out["text_mask"][k], tokenizer)
        assert a == ["is", "riley", "is"] and b == expected_b[k]
        n = int(out["text_mask"][k].sum())
        assert out["text_tags"][k, :n].tolist() == [0, 0, 2, 0, 0] + expected_b_tags[k] + [0]


def test_mapper_qa2r_test_split_is_not_truncated(tiny_cfg, hand_dict, tokenizer):
    """The official loader truncates QA->R only when the answer is known (not on the test split)."""
    tiny_cfg.MODEL.VLBERT.VCR.TASK = "QA2R"
    tiny_cfg.INPUT.MAX_TEXT_LEN = 6
    out = VCRDatasetMapper(tiny_cfg, False)(dict(hand_dict, answer_label=None, rationale_label=None))
    row = 4 * 3 + 2  # answer 3 "dog runs away .", rationale 2 "dog barks ."
    a, b = _segments(out["input_ids"][row], out["token_type_ids"][row], out["text_mask"][row], tokenizer)
    assert a == ["is", "casey", "and", "riley", "with", "dog", "?", "dog", "runs", "away", "."]
    assert b == ["dog", "bark", "##s", "."]


def test_mapper_qa2r_without_answer_label_conditions_on_each_answer(tiny_cfg, hand_dict, tokenizer):
    tiny_cfg.MODEL.VLBERT.VCR.TASK = "QA2R"
    d = dict(hand_dict, answer_label=None, rationale_label=None)
    out = VCRDatasetMapper(tiny_cfg, False)(d)
    assert out["input_ids"].shape[0] == 16 and out["label"] == -1
    for i in range(4):
        for j in range(4):
            row = 4 * i + j
            a, b = _segments(out["input_ids"][row], out["token_type_ids"][row], out["text_mask"][row],
                             tokenizer)
            assert a == _expected(RECORD["question"] + RECORD["answer_choices"][i], tokenizer)[0]
            assert b == _expected(RECORD["rationale_choices"][j], tokenizer)[0]


@pytest.mark.parametrize("task,field", [("Q2A", "answer_label"), ("QA2R", "rationale_label")])
def test_mapper_training_record_without_label_raises(tiny_cfg, hand_dict, task, field):
    tiny_cfg.MODEL.VLBERT.VCR.TASK = task
    d = dict(hand_dict, **{field: None})
    with pytest.raises(ValueError, match=task) as info:
        VCRDatasetMapper(tiny_cfg, True)(d)
    assert hand_dict["source"] in str(info.value)
    assert VCRDatasetMapper(tiny_cfg, False)(d)["label"] == -1  # fine for inference


def test_mapper_image_size_disagreeing_with_metadata(tiny_cfg, tmp_path):
    jsonl, image_root = _write_dataset(str(tmp_path), meta_overrides={"width": WIDTH + 10})
    (d,) = load_vcr_jsonl(jsonl, image_root, VCR_CLASSES)
    with pytest.raises(ValueError) as info:
        VCRDatasetMapper(tiny_cfg, True)(d)
    msg = str(info.value)
    assert d["file_name"] in msg and d["metadata_file"] in msg


def test_mapper_invalid_task():
    cfg = make_cfg(MODEL__VLBERT__VCR__TASK="Q2AR")
    with pytest.raises(ValueError, match="Q2AR"):
        VCRDatasetMapper(cfg, True)


def test_vcr_class_names_are_written_without_spaces(tmp_path):
    # Official VCR writes the COCO classes without spaces: "diningtable", "cellphone", ...
    assert "diningtable" in VCR_CLASSES and "dining table" not in VCR_CLASSES and len(VCR_CLASSES) == 80
    record = dict(copy.deepcopy(RECORD), objects=["diningtable", "cellphone", "teddybear"])
    jsonl, image_root = _write_dataset(str(tmp_path), [record])
    (d,) = load_vcr_jsonl(jsonl, image_root, VCR_CLASSES)
    assert [VCR_CLASSES[c] for c in d["object_classes"]] == ["diningtable", "cellphone", "teddybear"]


def test_duplicate_annot_id_names_both_lines(tmp_path):
    jsonl, image_root = _write_dataset(str(tmp_path), [RECORD, RECORD])
    with pytest.raises(VCRFormatError, match=r"train\.jsonl:2: field 'annot_id'.*line 1"):
        load_vcr_jsonl(jsonl, image_root, VCR_CLASSES)


@pytest.mark.parametrize("boxes,needle", [
    ([[50.0, 10.0, 10.0, 50.0, 1.0]] + [b + [1.0] for b in BOXES[1:]], "boxes[0]"),  # x1 > x2
    ([b + [1.0] for b in BOXES[:2]] + [["a", 1, 2, 3]], "boxes[2]"),  # not numbers
    ([b + [1.0] for b in BOXES[:2]] + [[1.0, 2.0]], "boxes[2]"),  # too short
])
def test_metadata_bad_boxes_name_the_box(tmp_path, boxes, needle):
    path = _write_meta(tmp_path, json.dumps({"boxes": boxes, "width": WIDTH, "height": HEIGHT}))
    with pytest.raises(VCRFormatError) as info:
        load_vcr_metadata(path, 3, "x.jsonl:4")
    assert path in str(info.value) and needle in str(info.value) and "x.jsonl:4" in str(info.value)


def test_metadata_polygons(tmp_path, caplog):
    meta = {"boxes": [b + [1.0] for b in BOXES], "width": WIDTH, "height": HEIGHT,
            "segms": [[TRIANGLE, [[1.0, 1.0], [2.0, 2.0]]], [SQUARE], []]}
    m = load_vcr_metadata(_write_meta(tmp_path, json.dumps(meta)), 3, "x.jsonl:1")
    assert len(m["segms"][0]) == 1  # the 2-point polygon is skipped, and said so
    assert "skipped 1 polygon(s)" in caplog.text
    meta["segms"][1] = [[[60.0, 20.0, 1.0], [90.0, 20.0, 1.0], [90.0, 60.0, 1.0]]]
    with pytest.raises(VCRFormatError, match=r"segms\[1\]"):
        load_vcr_metadata(_write_meta(tmp_path, json.dumps(meta)), 3, "x.jsonl:1")
