"""Training the bottom-up-attention detector (projects/BottomUpAttention): the attribute loss on a
hand-computed case, the ground-truth class feeding the attribute head in training, the synthetic
detection dataset (projects/SyntheticVL) read with its attribute ids and mapped onto the targets,
the attribute evaluator on a hand-made case, losses that decrease on a fixed batch, and the
trainer end to end (train, evaluate box AP and attribute accuracy, resume). Tiny sizes, CPU."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

import bua  # noqa: E402
from bua.training import BottomUpTrainer, setup_training_cfg  # noqa: E402

CONFIG = os.path.join(REPO, "projects", "BottomUpAttention", "configs", "BUA-Tiny-Synthetic.yaml")
PREFIX = "pytest_synthetic_detection"
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["ball", "box", "kite"]


# --- the loss ---

def test_attribute_loss_hand_computed():
    # 3 columns: attributes 0 and 1, then "no attribute".
    logits = torch.tensor([[0.0, 0.0, 0.0],              # attribute 0: -ln(1/3)
                           [0.0, math.log(2), 0.0],      # attributes {0, 1}: (-ln(1/4) - ln(1/2)) / 2
                           [0.0, 0.0, math.log(2)]])     # none: the "no attribute" column, -ln(1/2)
    gt = torch.tensor([[0, -1], [0, 1], [-1, -1]])
    expected = (math.log(3) + (math.log(4) + math.log(2)) / 2 + math.log(2)) / 3
    assert bua.attribute_loss(logits, gt).item() == pytest.approx(expected, rel=1e-6)
    # The padding does not count: one column less gives the same loss.
    assert bua.attribute_loss(logits[:1], gt[:1, :1]).item() == pytest.approx(math.log(3), rel=1e-6)
    # No RoI: 0, still connected to the graph.
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = bua.attribute_loss(empty, torch.zeros(0, 1, dtype=torch.int64))
    assert loss.item() == 0.0 and loss.requires_grad


def test_pad_attributes():
    assert bua.pad_attributes([[2], [], [0, 5]]).tolist() == [[2, -1], [-1, -1], [0, 5]]
    assert bua.pad_attributes([]).shape == (0, 1)


def test_attribute_losses_use_the_ground_truth_class_of_foreground_rois():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    head = bua.AttributeFastRCNNOutputLayers(
        ShapeSpec(channels=8), box2box_transform=Box2BoxTransform((10, 10, 5, 5)), num_classes=3,
        num_attributes=4, attribute_embed_dim=4, attribute_fc_dim=6, attribute_loss_weight=0.5)
    x = torch.randn(5, 8)
    # image 1: RoIs of classes 2, background (3), 0; image 2: no object (no gt_attributes), 2 RoIs.
    a = Instances((10, 10), proposal_boxes=Boxes(torch.zeros(3, 4)), gt_classes=torch.tensor([2, 3, 0]),
                  gt_attributes=torch.tensor([[1, 3], [0, -1], [-1, -1]]))
    b = Instances((10, 10), proposal_boxes=Boxes(torch.zeros(2, 4)), gt_classes=torch.tensor([3, 3]))
    loss = head.attribute_losses(x, [a, b])["loss_attr"]
    expected = 0.5 * bua.attribute_loss(head.attribute_logits(x[[0, 2]], torch.tensor([2, 0])),
                                        torch.tensor([[1, 3], [-1, -1]]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Another class embedded gives another loss: the ground-truth class is the one used.
    other = 0.5 * bua.attribute_loss(head.attribute_logits(x[[0, 2]], torch.tensor([1, 1])),
                                     torch.tensor([[1, 3], [-1, -1]]))
    assert other.item() != pytest.approx(expected.item(), rel=1e-4)


# --- the dataset ---

@pytest.fixture(scope="module")
def detection_root(tmp_path_factory):
    from synthetic_vl import generate_detection

    # <datasets root>/synthetic_detection, the layout the tool registers from $DETECTRON2_DATASETS
    root = str(tmp_path_factory.mktemp("datasets") / "synthetic_detection")
    generate_detection(root, counts={"train": 8, "val": 4}, seed=0)
    return root


@pytest.fixture(scope="module")
def names(detection_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for split in ("train", "val"):
        name = f"{PREFIX}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    bua.register_synthetic_detection(detection_root, prefix=PREFIX)
    return {split: f"{PREFIX}_{split}" for split in ("train", "val")}


def test_generated_json_and_determinism(detection_root, tmp_path):
    from synthetic_vl import generate_detection, is_complete_detection

    with open(os.path.join(detection_root, "annotations", "instances_val.json")) as f:
        data = json.load(f)
    assert [c["name"] for c in data["categories"]] == SHAPES
    assert [a["name"] for a in data["attributes"]] == COLORS and [a["id"] for a in data["attributes"]] == [1, 2, 3, 4, 5, 6]
    assert len(data["images"]) == 4 and all(1 <= len(a["attribute_ids"]) == 1 for a in data["annotations"])
    assert all(os.path.isfile(os.path.join(detection_root, "val", im["file_name"])) for im in data["images"])
    assert is_complete_detection(detection_root)
    # Same seed, same bytes (val alone: its stream does not depend on the train count).
    again = str(tmp_path / "again")
    generate_detection(again, counts={"train": 1, "val": 4}, seed=0)
    for path in ("annotations/instances_val.json", "val/" + data["images"][0]["file_name"]):
        with open(os.path.join(detection_root, path), "rb") as f, open(os.path.join(again, path), "rb") as g:
            assert f.read() == g.read()


def test_cli_detection_format(tmp_path, capsys):
    from synthetic_vl import main

    root = str(tmp_path / "det")
    main(["--format", "detection", "--root", root, "--counts", "train=2", "val=1"])
    assert "wrote 2 detection train images" in capsys.readouterr().out
    main(["--format", "detection", "--root", root, "--counts", "train=2", "val=1"])
    assert "already complete" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--format", "detection", "--root", root, "--question-types", "color"])


def test_loader_and_mapper_carry_the_attributes(names, detection_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts = DatasetCatalog.get(names["val"])
    meta = MetadataCatalog.get(names["val"])
    assert meta.attribute_classes == COLORS and meta.thing_classes == SHAPES
    with open(os.path.join(detection_root, "annotations", "instances_val.json")) as f:
        raw = json.load(f)["annotations"]
    # Per image, in the file's order: the ids 1..6 of the JSON as contiguous 0..5, as category ids.
    for d in dicts:
        mine = [a for a in raw if a["image_id"] == d["image_id"]]
        assert [a["attribute_ids"] for a in d["annotations"]] == [[i - 1 for i in a["attribute_ids"]] for a in mine]
        assert [a["category_id"] for a in d["annotations"]] == [a["category_id"] - 1 for a in mine]

    cfg = setup_training_cfg(CONFIG, ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192"])
    mapper = bua.AttributeDatasetMapper(cfg, is_train=True)
    for d in dicts:
        out = mapper(d)["instances"]
        assert out.gt_attributes.tolist() == [a["attribute_ids"] for a in d["annotations"]]
        assert out.gt_classes.tolist() == [a["category_id"] for a in d["annotations"]]


# --- the evaluator ---

def test_attribute_evaluator_hand_made():
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode, Boxes, Instances

    name = "pytest_attribute_eval"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    annos = [{"bbox": [0, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "attribute_ids": [1]},
             {"bbox": [20, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "attribute_ids": [2]},
             {"bbox": [40, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "attribute_ids": [3]},
             {"bbox": [60, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "attribute_ids": []}]
    DatasetCatalog.register(name, lambda: [{"image_id": 7, "height": 20, "width": 80, "annotations": annos}])
    MetadataCatalog.get(name).set(attribute_classes=["a", "b", "c", "d"])
    regions = Instances((20, 80))
    regions.pred_boxes = Boxes(torch.tensor([[0.0, 0, 10, 10],     # object 1, score 0.9, attribute 1: right
                                             [1.0, 0, 11, 10],     # object 1 too, lower score, attribute 0
                                             [20.0, 0, 30, 10],    # object 2, score 0.4, attribute 0: wrong
                                             [21.0, 0, 31, 10],    # object 2, score 0.3, attribute 2 (right, lower)
                                             [44.0, 0, 54, 10]]))  # IoU 6/14 < 0.5 with object 3: unmatched
    regions.scores = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.99])
    regions.attr_classes = torch.tensor([1, 0, 0, 2, 3])
    evaluator = bua.AttributeEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([{"image_id": 7}], [{"instances": regions}])
    result = evaluator.evaluate()["attributes"]
    # 3 objects with attributes (the 4th has none: not scored), 2 matched, 1 of them right.
    assert result["matched"] == pytest.approx(200 / 3)
    assert result["accuracy"] == pytest.approx(50.0)
    assert result["accuracy_all"] == pytest.approx(100 / 3)


# --- training ---

def _tiny_opts(names, output_dir=""):
    """The tiny config shrunk further: native image size, 16 RoIs per image, 2 images a batch."""
    return ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
            "INPUT.MAX_SIZE_TEST", "192", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
            "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
            "DATASETS.TRAIN", f"('{names['train']}',)", "DATASETS.TEST", f"('{names['val']}',)",
            "OUTPUT_DIR", output_dir]


def test_losses_decrease_on_a_fixed_batch(names):
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    cfg = setup_training_cfg(CONFIG, _tiny_opts(names) + ["INPUT.RANDOM_FLIP", "none"])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    mapper = bua.AttributeDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get(names["train"])[:2]]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = []
    with EventStorage():
        for _ in range(25):
            losses = model(batch)
            assert set(losses) == {"loss_cls", "loss_box_reg", "loss_attr", "loss_rpn_cls", "loss_rpn_loc"}
            history.append({k: v.item() for k, v in losses.items()})
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    first, last = history[0], history[-1]
    for key in ("loss_cls", "loss_attr", "loss_rpn_cls"):
        assert last[key] < 0.7 * first[key], (key, first[key], last[key])
    assert sum(last.values()) < 0.7 * sum(first.values())
    # From scratch the attribute logits start near uniform: weight * ln 7.
    assert first["loss_attr"] == pytest.approx(cfg.MODEL.BUA.ATTRIBUTE_LOSS_WEIGHT * math.log(7), rel=0.1)


def test_trainer_trains_evaluates_and_resumes(names, tmp_path):
    out = str(tmp_path / "run")
    cfg = setup_training_cfg(CONFIG, _tiny_opts(names, out) + ["SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1",
                                                               "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "2"])
    trainer = BottomUpTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results
    assert {"AP", "AP50"} <= set(results["bbox"]) and {"accuracy", "matched"} <= set(results["attributes"])
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    assert state["iteration"] == 2 and "optimizer" in state["trainer"]["_trainer"]
    # --resume: the iteration and the optimizer come back; nothing left to train.
    again = BottomUpTrainer(cfg)
    again.resume_or_load(resume=True)
    assert again.start_iter == 3
    assert again.checkpointer.resumed_from.endswith("model_final.pth")


def test_train_detector_tool(detection_root, tmp_path):
    """The command line: train 2 iterations on the synthetic datasets it registers from
    $DETECTRON2_DATASETS, then --eval-only --resume from the run's last checkpoint."""
    tool = os.path.join(REPO, "projects", "BottomUpAttention", "train_detector.py")
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.dirname(detection_root), OMP_NUM_THREADS="1")
    names = {"train": "synthetic_detection_train", "val": "synthetic_detection_val"}
    opts = _tiny_opts(names, str(tmp_path / "run")) + ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
                                                        "SOLVER.WARMUP_ITERS", "1"]
    for extra in ([], ["--eval-only", "--resume"]):
        done = subprocess.run([sys.executable, tool, "--config-file", CONFIG, *extra, *opts], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "copypaste: AP,AP50" in done.stdout + done.stderr
        assert "copypaste: accuracy,matched,accuracy_all" in done.stdout + done.stderr
    assert os.path.isfile(tmp_path / "run" / "model_final.pth")
