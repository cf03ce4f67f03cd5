"""VLBertPredictor on the tiny VQA, RefCOCO+ and VCR models (random weights saved in the test):
the outputs' keys and shapes; the VQA scores and answers equal what the ``--eval-only`` path
computes (dataset record -> evaluation mapper -> model -> VQAEvaluator) on the same image,
regions and question, and RefCOCO+'s what its evaluation mapper and the model give;
``attention=True`` returns maps of the model's shapes and the same scores; bad inputs are
named."""
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO

CONFIGS = {"vqa": os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticVQA.yaml"),
           "vcr": os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticVCR.yaml"),
           "refcoco": os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticRefCOCO+.yaml")}
BOXES = [[10, 10, 50, 50], [70, 20, 100, 60], [110, 40, 150, 90]]
# With <unk>, which keeps its classifier row but is never an answer (the official vocabulary).
VOCAB = ["2", "3", "<unk>", "left", "right"]
NUM_LAYERS, NUM_HEADS = 2, 12  # the tiny configs: 2 layers of MiniLM (12 heads)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 160 x 96 PNG (lossless: every reader decodes the same pixels) with 3 coloured boxes."""
    d = tmp_path_factory.mktemp("predictor")
    img = np.full((96, 160, 3), 240, np.uint8)
    for (x1, y1, x2, y2), c in zip(BOXES, [(0, 0, 220), (0, 200, 0), (220, 0, 0)]):
        cv2.rectangle(img, (x1, y1), (x2, y2), c, -1)
    cv2.imwrite(str(d / "scene.png"), img)
    return d


def _cfg(task, **keys):
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(CONFIGS[task])
    cfg.DATALOADER.NUM_WORKERS = 0
    for key, value in keys.items():
        cfg.merge_from_list([key, value])
    return cfg


def _checkpoint(task, folder, **keys):
    """A random-weight tiny model saved as ``folder/model_final.pth``, with the VQA answer list
    beside it as a training run leaves it; <unk>'s row gets the highest bias."""
    from detectron2.modeling import build_model

    from vlbert_d2.config import finalize_vlbert_config

    os.makedirs(folder, exist_ok=True)
    vocab = os.path.join(folder, "answers_vqa.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    cfg = _cfg(task, **keys)
    cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB = vocab
    cfg = finalize_vlbert_config(cfg)  # as tools/train_net.py: the sizes the model is built with
    torch.manual_seed(0)
    model = build_model(cfg)
    if task == "vqa":
        with torch.no_grad():
            model.head.classifier[1].bias[VOCAB.index("<unk>")] = 50.0
    path = os.path.join(folder, "model_final.pth")
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def predictors(scene):
    """{task: VLBertPredictor} over the saved tiny models (the VQA one finds its answer list
    beside the weights: the config names no vocabulary and no readable dataset)."""
    from vlbert_d2.engine import VLBertPredictor

    out = {}
    for task in CONFIGS:
        weights = _checkpoint(task, str(scene / task))
        out[task] = VLBertPredictor(_cfg(task, **{"MODEL.WEIGHTS": weights}))
    return out


def _image(scene):
    return cv2.imread(str(scene / "scene.png"))


# --- outputs per task ---

def test_vqa_answer_and_top_k(predictors, scene):
    p = predictors["vqa"]
    assert p.task == "vqa" and list(p.answer_vocab) == VOCAB
    assert p.cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB == str(scene / "vqa" / "answers_vqa.txt")
    out = p(_image(scene), question="which side has more objects?", boxes=BOXES)
    assert out["task"] == "vqa" and out["question"] == "which side has more objects?"
    assert out["scores"].shape == (len(VOCAB),) and out["scores"].dtype == torch.float32
    assert out["boxes"].shape == (3, 4) and out["boxes"].dtype == np.float32 and out["detections"] is None
    assert out["scores"].argmax() == VOCAB.index("<unk>")  # its bias: yet never the answer nor listed
    assert out["answer"] in ("2", "3", "left", "right") and out["answer"] == out["top_k"][0][0]
    by_score = sorted(set(VOCAB) - {"<unk>"}, key=lambda a: -float(out["scores"][VOCAB.index(a)]))
    assert [a for a, _ in out["top_k"]] == by_score
    assert all(s == pytest.approx(float(out["scores"][VOCAB.index(a)])) for a, s in out["top_k"])
    assert len(p(_image(scene), question="q?", boxes=BOXES, top_k=2)["top_k"]) == 2
    assert "attention" not in out


def test_refcoco_referred_box(predictors, scene):
    out = predictors["refcoco"](_image(scene), expression="the left-most one", boxes=BOXES)
    assert out["task"] == "refcoco" and out["scores"].shape == (4,)  # the whole image, then the 3 boxes
    assert out["index"] == int(out["scores"].argmax())
    if out["index"] == 0:
        assert out["region"] is None and out["box"] == [0.0, 0.0, 159.0, 95.0]
    else:
        assert out["region"] == out["index"] - 1 and out["box"] == [float(v) for v in BOXES[out["region"]]]


def test_vcr_chosen_answer(predictors, scene):
    choices = ["[0]", "[1]", "the [2]", "[0,2]"]
    out = predictors["vcr"](_image(scene), question="which object is the biggest ?", choices=choices,
                            objects=["box", "ball", "kite"], boxes=BOXES)
    assert out["task"] == "vcr" and out["scores"].shape == (4,) and out["choices"] == choices
    assert out["answer"] == int(out["scores"].argmax()) and out["choice"] == choices[out["answer"]]
    assert out["mentioned"] == [[0], [1], [2], [0, 2]][out["answer"]]
    # The objects default to "object"; pre-tokenised VCR sentences are taken as they are.
    same = predictors["vcr"](_image(scene), question=["which", "object", "is", "the", "biggest", "?"],
                             choices=[[[0]], [[1]], ["the", [2]], [[0, 2]]], boxes=BOXES,
                             objects=["box", "ball", "kite"])
    assert torch.equal(same["scores"], out["scores"])
    assert predictors["vcr"](_image(scene), question="which ?", choices=choices, boxes=BOXES)["scores"].shape == (4,)


# --- the same scores as the evaluation ---

def test_vqa_scores_equal_the_eval_only_path(predictors, scene, tmp_path):
    """Two questions as a registered VQA dataset through what ``tools/train_net.py --eval-only``
    runs (VLBertTrainer.test: the checked test loader, the evaluation mapper, the model, the
    VQAEvaluator); the predictor, given the same image and the detection file's boxes, gives
    the same scores and answers."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vlbert_d2.checkpoint import VLBertCheckpointer
    from vlbert_d2.data.detections import encode_detection, write_detection
    from vlbert_d2.engine import VLBertTrainer

    image = str(scene / "scene.png")
    detection = str(tmp_path / "7.json")
    boxes = np.array([[10.5, 10, 50, 50.25], [70, 20, 100, 60], [110, 40, 150, 90], [0, 0, 159, 95]], np.float32)
    write_detection(detection, encode_detection(7, 160, 96, boxes))
    questions = {1: "how many objects are there?", 2: "which side has more objects?"}
    records = [{"question_id": q, "image_id": 7, "question": text, "file_name": image, "detection_file": detection,
                "source": f"test (question_id {q})"} for q, text in questions.items()]
    name = "pytest_predictor_vqa"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in records])
    MetadataCatalog.get(name).set(evaluator_type="vqa")

    predictor = predictors["vqa"]
    cfg = predictor.cfg.clone()  # the tiny config with the answer list found beside the weights
    cfg.defrost()
    cfg.DATASETS.TEST = (name,)
    cfg.OUTPUT_DIR = str(tmp_path / "eval")
    # One record per batch, as the predictor: then the scores are equal bit for bit (batched,
    # padding changes the float sums: tests/evaluation/test_batched_eval.py, within 1e-5).
    cfg.TEST.IMS_PER_BATCH = 1
    model = VLBertTrainer.build_model(cfg)  # as tools/train_net.py --eval-only
    VLBertCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.extend(zip(args[0], output)))
    VLBertTrainer.test(cfg, model)
    with open(os.path.join(cfg.OUTPUT_DIR, "inference", name, f"vqa_{name}_results.json")) as f:
        answers = {r["question_id"]: r["answer"] for r in json.load(f)}

    assert len(seen) == 2
    for x, output in seen:
        q = int(x["question_id"])
        # The path or the array: the same pixels (PNG).
        out = predictor(image if q == 1 else _image(scene), question=questions[q], boxes=boxes)
        assert torch.equal(out["scores"], output["scores"]), (out["scores"], output["scores"])
        assert out["answer"] == answers[q] != "<unk>"


def test_refcoco_scores_equal_the_evaluation_mapper(predictors, scene):
    from vlbert_d2.data import build_vlbert_mapper

    predictor = predictors["refcoco"]
    record = {"file_name": str(scene / "scene.png"), "width": 160, "height": 96, "boxes": BOXES,
              "gt_box": BOXES[1], "ref_id": 1, "sent_id": 1, "image_id": 1, "source": "test",
              "sentence": "the green one"}
    x = build_vlbert_mapper(predictor.cfg, is_train=False)(record)
    with torch.no_grad():
        expected = predictor.model([x])[0]
    out = predictor(_image(scene), expression="the green one", boxes=BOXES)
    assert torch.equal(out["scores"], expected["scores"]) and out["index"] == expected["index"]


def test_vqa_precomputed_features_from_the_detector(scene, tmp_path):
    """A VQA model on the detection files' features (MODEL.VLBERT.DETECTION_FEATURES) reads the
    detector's pooled features as its mapper reads a detection file holding them."""
    from detectron2.structures import Boxes, Instances

    from vlbert_d2.data import build_vlbert_mapper
    from vlbert_d2.data.detections import encode_detection, write_detection
    from vlbert_d2.engine import PredictorInputError, VLBertPredictor

    keys = {"MODEL.VLBERT.DETECTION_FEATURES": True}
    weights = _checkpoint("vqa", str(tmp_path), **keys)
    predictor = VLBertPredictor(_cfg("vqa", **keys, **{"MODEL.WEIGHTS": weights}))
    dim = predictor.model.region_extractor.out_channels
    boxes = np.array(BOXES, np.float32)
    features = np.random.default_rng(0).random((3, dim), dtype=np.float32)

    def detector(images, image_format="BGR"):
        assert len(images) == 1 and images[0].shape == (96, 160, 3) and image_format == "BGR"
        regions = Instances(images[0].shape[:2], pred_boxes=Boxes(torch.from_numpy(boxes)))
        regions.features = torch.from_numpy(features)
        return [regions]

    predictor.detector = detector
    out = predictor(_image(scene), question="how many?")
    assert isinstance(out["detections"], Instances) and np.array_equal(out["boxes"], boxes)
    write_detection(str(tmp_path / "1.json"), encode_detection(1, 160, 96, boxes, features=features))
    x = build_vlbert_mapper(predictor.cfg, is_train=False)(
        {"question_id": 1, "image_id": 1, "question": "how many?", "file_name": str(scene / "scene.png"),
         "detection_file": str(tmp_path / "1.json"), "source": "test"})
    with torch.no_grad():
        assert torch.equal(out["scores"], predictor.model([x])[0]["scores"])
    with pytest.raises(PredictorInputError, match="DETECTION_FEATURES"):
        predictor(_image(scene), question="how many?", boxes=BOXES)


# --- attention ---

@pytest.mark.parametrize("task, text, sequences", [
    ("vqa", {"question": "how many objects are there?"}, 1),
    ("refcoco", {"expression": "the left-most one"}, 1),
    ("vcr", {"question": "is [0] bigger than [1] ?", "choices": ["yes", "no", "[2] is", "[0,2]"]}, 4),
])
def test_attention_maps(task, text, sequences, predictors, scene):
    predictor = predictors[task]
    plain = predictor(_image(scene), boxes=BOXES, **text)
    out = predictor(_image(scene), boxes=BOXES, attention=True, **text)
    assert torch.allclose(out["scores"], plain["scores"], atol=1e-5)  # the same answer either way
    att = out["attention"]
    assert len(att["layers"]) == NUM_LAYERS
    tokens = att["tokens"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert att["sequence"] == (out["answer"] if task == "vcr" else 0)
    for layer in att["layers"]:
        S, A, T, T2 = layer.shape
        assert (S, A) == (sequences, NUM_HEADS) and T == T2
        assert T >= len(tokens) + len(BOXES) + 1 + 1  # text slots, the RoIs (whole image first), [END]
        if sequences == 1:
            assert T == len(tokens) + len(BOXES) + 2
        assert torch.allclose(layer.sum(-1)[att["sequence"], :, :len(tokens)], torch.ones(A, len(tokens)), atol=1e-4)
    assert att["text_to_region"].shape == (NUM_LAYERS, len(tokens), len(BOXES) + 1, NUM_HEADS)
    last = att["layers"][-1][att["sequence"]]
    slots = last.shape[-1] - len(BOXES) - 2
    assert torch.equal(att["text_to_region"][-1], last[:, :len(tokens), slots:slots + 4].permute(1, 2, 0))


def test_attention_is_drawn(predictors, scene):
    from vlbert_d2.utils.visualization import draw_answer, draw_attention, resize_for_drawing

    out = predictors["vcr"](_image(scene), question="which ?", choices=["[0]", "[1,2]"], boxes=BOXES, attention=True)
    rgb, shown = resize_for_drawing(_image(scene)[:, :, ::-1], out["boxes"], 320, 1600)
    answer = draw_answer(rgb, shown, out)
    assert answer.shape == rgb.shape and np.abs(answer.astype(int) - rgb).mean() > 1.0
    lines, heat = draw_attention(rgb, shown, out["attention"], -1, heads=[0, 3])
    assert lines.shape[1] == rgb.shape[1] and heat.std() > 10
    with pytest.raises(IndexError, match="the model has 2 layers, got 2"):
        draw_attention(rgb, shown, out["attention"], 2)
    with pytest.raises(IndexError, match="the model has 12 heads, got 12"):
        draw_attention(rgb, shown, out["attention"], 0, heads=[12])


# --- regions ---

def test_regions_from_a_detector_or_the_whole_image(predictors, scene):
    from detectron2.structures import Boxes, Instances

    from vlbert_d2.engine import PredictorInputError

    predictor = predictors["vqa"]
    with pytest.raises(PredictorInputError, match="no regions: give boxes="):
        predictor(_image(scene), question="q?")
    calls = []

    def detector(images, image_format="BGR"):
        calls.append(images[0].flags["C_CONTIGUOUS"])
        return [Instances((96, 160), pred_boxes=Boxes(torch.tensor(BOXES, dtype=torch.float32)))]

    predictor.detector = detector
    try:
        bgr_view = cv2.cvtColor(_image(scene), cv2.COLOR_BGR2RGB)[:, :, ::-1]  # BGR, negative strides
        found = predictor(bgr_view, question="how many?")
        given = predictor(_image(scene), question="how many?", boxes=np.array(BOXES))  # boxes win
    finally:
        predictor.detector = None
    assert calls == [True] and isinstance(found["detections"], Instances)
    assert torch.equal(found["scores"], given["scores"])
    # [] is the whole image alone; a grayscale image is read as three equal channels.
    alone = predictor(_image(scene), question="how many?", boxes=[])
    assert alone["boxes"].shape == (0, 4) and alone["scores"].shape == (len(VOCAB),)
    gray = predictor(cv2.cvtColor(_image(scene), cv2.COLOR_BGR2GRAY), question="how many?", boxes=BOXES)
    assert gray["scores"].shape == (len(VOCAB),)


# --- bad inputs: named ---

@pytest.mark.parametrize("task, kwargs, argument, message", [
    ("vqa", {"expression": "the left one"}, "question", "a VQA model needs question="),
    ("vqa", {"question": "q?", "choices": ["a"]}, "choices", "takes question=, not choices="),
    ("refcoco", {"question": "q?"}, "expression", "a RefCOCO+ model needs expression="),
    ("vcr", {"question": "q?"}, "choices", "a VCR Q2A model needs question= and choices="),
    ("vcr", {"question": "q?", "choices": "[0]"}, "choices", "a non-empty list"),
    ("vcr", {"question": "is [3] big ?", "choices": ["yes"]}, "question",
     "region 3 does not exist (there are 3 regions)"),
    ("vcr", {"question": "q?", "choices": ["[a]"]}, "choices", "'[a]' is not a region reference"),
    ("vcr", {"question": "q?", "choices": ["yes"], "objects": ["a", "b"]}, "objects", "2 names for 3 regions"),
    ("refcoco", {"expression": "it", "objects": ["a", "b", "c"]}, "objects", "region names are for VCR models"),
    ("vqa", {"question": "q?", "boxes": [[1, 2, 3]]}, "boxes", "got shape (1, 3)"),
    ("vqa", {"question": "q?", "boxes": [[1, 2, 3, float("nan")]]}, "boxes", "finite"),
    ("vqa", {"question": "q?", "boxes": [[5, 2, 3, 4]]}, "boxes", "x1 <= x2"),
])
def test_bad_inputs_are_named(task, kwargs, argument, message, predictors, scene):
    from vlbert_d2.engine import PredictorInputError

    kwargs = {"boxes": BOXES, **kwargs}
    with pytest.raises(PredictorInputError, match=re.escape(message)) as e:
        predictors[task](_image(scene), **kwargs)
    assert e.value.argument == argument


def test_bad_images_are_named(predictors, scene, tmp_path):
    from vlbert_d2.engine import PredictorInputError

    with pytest.raises(PredictorInputError, match=r"image: expected a \(H, W, 3\) uint8 BGR array"):
        predictors["vqa"](np.zeros((4, 4, 3), np.float32), question="q?", boxes=BOXES)
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.png"):
        predictors["vqa"](str(tmp_path / "missing.png"), question="q?", boxes=BOXES)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(OSError, match="cannot read image .*text.png"):
        predictors["vqa"](tmp_path / "text.png", question="q?", boxes=BOXES)


def test_parse_vcr_text():
    from vlbert_d2.engine import PredictorInputError
    from vlbert_d2.engine.predictor import parse_vcr_text

    assert parse_vcr_text("is [0,2] near [1] ?", 3) == ["is", [0, 2], "near", [1], "?"]
    assert parse_vcr_text(["is", [0, 2], "[]"], 3) == ["is", [0, 2], "[]"]
    with pytest.raises(PredictorInputError, match="region 3 does not exist"):
        parse_vcr_text("[3]", 3, "choices")
    with pytest.raises(PredictorInputError, match="not a region reference"):
        parse_vcr_text("[a]", 3, "choices")


def test_weights_errors_are_kept(scene, tmp_path):
    from vlbert_d2.checkpoint import CheckpointError
    from vlbert_d2.engine import VLBertPredictor

    with pytest.raises(CheckpointError, match="checkpoint not found"):
        VLBertPredictor(_cfg("refcoco", **{"MODEL.WEIGHTS": str(tmp_path / "missing.pth")}))
    with pytest.raises(ValueError, match="not MODEL.VLBERT.HEAD='PretrainHead'"):
        VLBertPredictor(_cfg("refcoco", **{"MODEL.VLBERT.HEAD": "PretrainHead"}))
