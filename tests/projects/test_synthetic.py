"""Tests for the synthetic VCR-format scene generator (projects/SyntheticVL: synthetic_vl)."""
import collections
import glob
import json
import os

import cv2
import numpy as np
import pytest
import synthetic_vl as synthetic
from synthetic_vl import PALETTE, ensure_synthetic_vcr, generate_vcr

SMALL = {"train": 12, "val": 4, "test": 4}
REQUIRED = {"movie", "objects", "img_fn", "metadata_fn", "question", "answer_choices",
            "rationale_choices", "annot_id", "img_id", "question_number", "question_orig"}


def _load(root, split):
    with open(os.path.join(root, f"{split}.jsonl")) as f:
        return [json.loads(line) for line in f]


def _meta(root, rec):
    with open(os.path.join(root, "vcr1images", rec["metadata_fn"])) as f:
        return json.load(f)


def _image(root, rec):
    return cv2.imread(os.path.join(root, "vcr1images", rec["img_fn"]), cv2.IMREAD_COLOR)


def _refs(tokens):
    return [k for t in tokens if not isinstance(t, str) for k in t]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vcr"))
    counts = generate_vcr(root, counts={"train": 400, "val": 300, "test": 30}, seed=0)
    return root, counts


def test_deterministic(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    generate_vcr(a, counts=SMALL, seed=3)
    generate_vcr(b, counts=SMALL, seed=3)
    generate_vcr(c, counts=SMALL, seed=4)
    for split in SMALL:
        fa = open(os.path.join(a, f"{split}.jsonl"), "rb").read()
        assert fa == open(os.path.join(b, f"{split}.jsonl"), "rb").read()
        assert fa != open(os.path.join(c, f"{split}.jsonl"), "rb").read()
    for rec in _load(a, "train")[:5]:
        path = os.path.join("vcr1images", rec["img_fn"])
        ia = open(os.path.join(a, path), "rb").read()
        assert ia == open(os.path.join(b, path), "rb").read()
        assert ia != open(os.path.join(c, path), "rb").read()


def test_format(dataset):
    root, counts = dataset
    for split, n in counts.items():
        records = _load(root, split)
        assert len(records) == n
        assert len({r["annot_id"] for r in records}) == n
        for rec in records:
            assert REQUIRED <= rec.keys()
            labelled = split != "test"
            for key in ("answer_label", "rationale_label", "answer_orig", "rationale_orig"):
                assert (key in rec) == labelled
            if labelled:
                assert rec["answer_label"] in range(4) and rec["rationale_label"] in range(4)
            assert len(rec["answer_choices"]) == 4 and len(rec["rationale_choices"]) == 4
            num = len(rec["objects"])
            assert 3 <= num <= 5
            for tokens in [rec["question"], *rec["answer_choices"], *rec["rationale_choices"]]:
                assert all(isinstance(t, str) or isinstance(t, list) for t in tokens)
                assert all(0 <= k < num for k in _refs(tokens))

            meta = _meta(root, rec)
            assert meta["names"] == rec["objects"]
            assert len(meta["boxes"]) == len(meta["segms"]) == num
            w, h = meta["width"], meta["height"]
            img = _image(root, rec)
            assert img is not None and img.shape == (h, w, 3)
            for box, segm in zip(meta["boxes"], meta["segms"]):
                x1, y1, x2, y2, score = box
                assert score == 1.0 and 0 <= x1 < x2 <= w - 1 and 0 <= y1 < y2 <= h - 1
                for poly in segm:
                    pts = np.asarray(poly)
                    assert pts.ndim == 2 and pts.shape[1] == 2 and len(pts) >= 3
                    assert (pts[:, 0] >= x1 - 1).all() and (pts[:, 0] <= x2 + 1).all()
                    assert (pts[:, 1] >= y1 - 1).all() and (pts[:, 1] <= y2 + 1).all()


def _mean_color(img, segm):
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(p)).astype(np.int32) for p in segm], 1)
    return img[mask.astype(bool)].mean(axis=0)


def test_image_encodes_answer(dataset):
    root, _ = dataset
    seen = collections.Counter()
    for rec in _load(root, "train") + _load(root, "val"):
        meta = _meta(root, rec)
        q, label = rec["question"], rec["answer_label"]
        if q[:2] == ["what", "color"]:
            i = q[3][0]
            mean = _mean_color(_image(root, rec), meta["segms"][i])
            colors = [a[2] for a in rec["answer_choices"]]
            dists = [np.linalg.norm(mean - np.array(PALETTE[c])) for c in colors]
            assert int(np.argmin(dists)) == label
        elif q[:2] == ["where", "is"]:
            x1, y1, x2, y2, _ = meta["boxes"][q[2][0]]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            vert, horiz = rec["answer_choices"][label]
            assert (cy < meta["height"] / 2) == (vert == "top")
            assert (cx < meta["width"] / 2) == (horiz == "left")
            assert min(abs(cx - meta["width"] / 2), abs(cy - meta["height"] / 2)) >= 8
        else:
            assert q == ["which", "object", "is", "the", "biggest", "?"]
            sides = sorted(b[2] - b[0] for b in meta["boxes"])
            assert len(sides) == 4 and min(np.diff(sides)) >= 6
            biggest = rec["answer_choices"][label][0][0]
            assert meta["boxes"][biggest][2] - meta["boxes"][biggest][0] == sides[-1]
        seen[q[0]] += 1
    assert set(seen) == {"what", "where", "which"}


def _as_text(tokens, objects):
    # Class names only: exactly what a text-only model could see.
    return " ".join(t if isinstance(t, str) else " ".join(objects[k] for k in t) for t in tokens)


def _key(rec, task):
    choices = rec["answer_choices"] if task == "answer" else rec["rationale_choices"]
    parts = [rec["question"]] + ([] if task == "answer" else
                                 [rec["answer_choices"][rec["answer_label"]]]) + choices
    return " | ".join(_as_text(p, rec["objects"]) for p in parts)


@pytest.mark.parametrize("task", ["answer", "rationale"])
def test_text_only_model_at_chance(dataset, task):
    root, _ = dataset
    train, val = _load(root, "train"), _load(root, "val")
    label = f"{task}_label"
    dist = collections.Counter(r[label] for r in train)
    assert all(0.15 <= dist[k] / len(train) <= 0.35 for k in range(4)), dist
    by_key = collections.defaultdict(collections.Counter)
    for r in train:
        by_key[_key(r, task)][r[label]] += 1
    fallback = dist.most_common(1)[0][0]
    predict = [by_key[_key(r, task)].most_common(1)[0][0] if _key(r, task) in by_key
               else fallback for r in val]
    acc = np.mean([p == r[label] for p, r in zip(predict, val)])
    assert acc < 0.4, acc


def test_ensure_synthetic_vcr(tmp_path):
    root = str(tmp_path / "vcr")
    assert ensure_synthetic_vcr(root, counts=SMALL)
    assert not ensure_synthetic_vcr(root, counts=SMALL)
    os.remove(os.path.join(root, synthetic.MARKER))
    assert ensure_synthetic_vcr(root, counts=SMALL)
    os.remove(os.path.join(root, "val.jsonl"))
    assert ensure_synthetic_vcr(root, counts=SMALL)
    assert not ensure_synthetic_vcr(root, counts=SMALL)


def test_cli(tmp_path, capsys):
    root = str(tmp_path / "cli")
    synthetic.main(["--root", root, "--train", "3", "--val", "2", "--test", "1"])
    assert "wrote 3 records" in capsys.readouterr().out
    assert len(_load(root, "val")) == 2
    synthetic.main(["--root", root, "--train", "3", "--val", "2", "--test", "1"])
    assert "already complete" in capsys.readouterr().out


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "python -m synthetic_vl" in out
    assert all(f in out for f in ("vcr", "vqa", "refcoco+", "captions"))


def _imports(folder):
    """(file, module imported, names) for every import under ``folder``; relative ones resolved
    to the package of the file."""
    import ast

    found = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, os.path.dirname(folder))
        package = os.path.dirname(rel).replace(os.sep, ".")
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(rel, a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = node.module or ""
                if node.level:
                    module = f"{base}.{module}" if module else base
                found.append((rel, module, [a.name for a in node.names]))
    return found


def test_the_library_does_not_import_the_project_and_has_its_class_names():
    """projects/SyntheticVL sits on top of vlbert_d2: the library registers the synthetic datasets
    with the object classes as data, which must be those the generator draws."""
    import vlbert_d2
    from vlbert_d2.data import SYNTHETIC_CLASSES

    library = os.path.dirname(vlbert_d2.__file__)
    assert [(f, m) for f, m, _ in _imports(library) if m.split(".")[0] == "synthetic_vl"] == []
    assert tuple(SYNTHETIC_CLASSES) == synthetic.SHAPES


def test_the_project_modules_share_only_public_names():
    project = os.path.dirname(synthetic.__file__)
    private = [(f, m, n) for f, m, names in _imports(project) if m.startswith("synthetic_vl")
               for n in names if n.startswith("_")]
    assert private == []


def test_objects_caption_names_every_object_in_its_place(tmp_path, capsys):
    """The "objects" caption type (make demo-pipeline's pre-training), on a hand-made scene:
    every object with its colour, shape and quadrant, left to right; drawn only when asked."""
    from synthetic_vl.captions import CAPTION_TYPES, _sentence

    objects = [{"box": [150, 90, 170, 110], "color": "orange", "name": "ball", "size": 20},
               {"box": [4, 6, 30, 32], "color": "red", "name": "kite", "size": 26},
               {"box": [60, 80, 90, 110], "color": "blue", "name": "box", "size": 30}]
    assert _sentence("objects", objects, 192, 128) == (
        "there is a red kite at the top left, a blue box at the bottom left and an orange ball at the "
        "bottom right.")
    assert _sentence("objects", objects[:1], 192, 128) == "there is an orange ball at the bottom right."
    assert "objects" not in CAPTION_TYPES  # the default captions stay as they were
    root = str(tmp_path / "captions")
    synthetic.main(["--format", "captions", "--root", root, "--counts", "train=2", "val=1",
                    "--question-types", "objects", "biggest"])
    for line in open(os.path.join(root, "train_frcnn.json")):
        caption = " ".join(json.loads(line)["caption"])
        assert caption.startswith("there is ") and " at the " in caption and "the biggest object is" in caption
    with pytest.raises(SystemExit):
        synthetic.main(["--format", "vqa", "--root", str(tmp_path / "vqa"), "--question-types", "objects"])
    assert "not a vqa type" in capsys.readouterr().err
