"""VQA v2 and RefCOCO+ end to end through tools/train_net.py on generated official-format data:
a few training iterations, then --eval-only on the saved checkpoint gives the same metrics and
writes the submission files; plus the heads' losses and the linear-decay schedule."""
import json
import os

import pytest
import torch

from conftest import REPO
from conftest import copypaste_metrics, run

TINY_VQA = os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticVQA.yaml")
TINY_REF = os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticRefCOCO+.yaml")
COMMON = ["MODEL.VLBERT.NUM_LAYERS", "1", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "4",
          "SOLVER.WARMUP_ITERS", "1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from synthetic_vl import generate_refcoco, generate_vqa

    root = tmp_path_factory.mktemp("datasets")
    generate_vqa(str(root / "synthetic_vqa_geometry"), counts={"train2014": 60, "val2014": 6, "test2015": 4}, seed=2)
    generate_refcoco(str(root / "synthetic_refcoco_geometry"), counts={"train": 12, "val": 5, "testA": 2, "testB": 2}, seed=2)
    return root


def _train_and_eval(config, data_root, tmp_path, extra=()):
    out = tmp_path / "out"
    train = run(["--config-file", config] + COMMON + list(extra) +
                ["SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "3", "OUTPUT_DIR", str(out)], data_root)
    assert train.returncode == 0, train.stderr[-3000:]
    # The training's evaluation ran at TEST.IMS_PER_BATCH 8, this one at 1: the metrics (and so
    # every answer / box) must not depend on how the records were batched and padded.
    ev = run(["--config-file", config, "--eval-only", "TEST.IMS_PER_BATCH", "1"] + COMMON + list(extra) +
             ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval")], data_root)
    assert ev.returncode == 0, ev.stderr[-3000:]
    trained, evaluated = copypaste_metrics(train.stdout), copypaste_metrics(ev.stdout)
    assert evaluated == trained
    return out, tmp_path / "eval", evaluated


def test_vqa_train_then_eval_only(data_root, tmp_path):
    out, ev, metrics = _train_and_eval(TINY_VQA, data_root, tmp_path)
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in r for r in records)  # = loss_vqa, the only loss
    questions = json.loads((data_root / "synthetic_vqa_geometry" / "vqa" /
                            "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    assert metrics["num_predictions"] == len(questions)
    assert "yes/no" in metrics and "number" in metrics and "other" in metrics
    results = json.loads((ev / "inference" / "synthetic_vqa_geometry_val2014" /
                          "vqa_synthetic_vqa_geometry_val2014_results.json").read_text())
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions)
    vocab = (data_root / "synthetic_vqa_geometry" / "vqa" / "answers_vqa.txt").read_text().split()
    assert all(r["answer"] in vocab for r in results)
    # The reported accuracy is the official one of the written answers.
    from vlbert_d2.evaluation import vqa_metrics

    anns = json.loads((data_root / "synthetic_vqa_geometry" / "vqa" / "v2_mscoco_val2014_annotations.json").read_text())
    gts = {a["question_id"]: {"answers": [x["answer"] for x in a["answers"]], "answer_type": a["answer_type"]}
           for a in anns["annotations"]}
    assert metrics["accuracy"] == vqa_metrics({r["question_id"]: r["answer"] for r in results}, gts)["overall"]
    # The run keeps its vocabulary: the model can be rebuilt without the dataset.
    assert (out / "answers_vqa.txt").read_text().split() == vocab


def test_vqa_test_dev_submission(data_root, tmp_path):
    """On test-dev (no annotations) --eval-only writes the server's submission file."""
    out, _, _ = _train_and_eval(TINY_VQA, data_root, tmp_path)
    ev = run(["--config-file", TINY_VQA, "--eval-only"] + COMMON +
             ["MODEL.WEIGHTS", str(out / "model_final.pth"), "DATASETS.TEST", '("synthetic_vqa_geometry_test-dev2015",)',
              "OUTPUT_DIR", str(tmp_path / "dev")], data_root)
    assert ev.returncode == 0, ev.stderr[-3000:]
    sub = json.loads((tmp_path / "dev" / "inference" / "synthetic_vqa_geometry_test-dev2015" /
                      "vqa_synthetic_vqa_geometry_test-dev2015_results.json").read_text())
    dev = json.loads((data_root / "synthetic_vqa_geometry" / "vqa" /
                      "v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())["questions"]
    assert len(sub) == len(dev) and set(sub[0]) == {"question_id", "answer"}


def test_refcoco_train_then_eval_only(data_root, tmp_path):
    _, ev, metrics = _train_and_eval(TINY_REF, data_root, tmp_path,
                                     ["DATASETS.TEST", '("synthetic_refcoco+_geometry_val_det",)'])
    results = json.loads((ev / "inference" / "synthetic_refcoco+_geometry_val_det" /
                          "refcoco_synthetic_refcoco+_geometry_val_det_results.json").read_text())
    assert len(results) == metrics["num_predictions"] > 0
    assert set(results[0]) == {"ref_id", "sent_id", "box"} and len(results[0]["box"]) == 4
    # The reported accuracy is that of the written boxes against the referred objects.
    from detectron2.data import DatasetCatalog

    from vlbert_d2.data.datasets.refcoco import register_refcoco
    from vlbert_d2.utils.boxes import inclusive_iou

    name = "pytest_refcoco_val_det"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    register_refcoco(name, str(data_root / "synthetic_refcoco_geometry"), "val", detected=True)
    gt = {d["sent_id"]: d["gt_box"] for d in DatasetCatalog.get(name)}
    hits = [float(inclusive_iou(torch.tensor([[x, y, x + w, y + h]]), torch.tensor([gt[r["sent_id"]]]))[0, 0]) >= 0.5
            for r in results for x, y, w, h in [r["box"]]]
    assert metrics["accuracy"] == pytest.approx(100.0 * sum(hits) / len(hits), abs=1e-4)  # 4 decimals printed


def test_vqa_head_loss_is_bce_summed_over_answers():
    from types import SimpleNamespace

    from vlbert_d2.modeling.heads import VQAHead

    torch.manual_seed(0)
    head = VQAHead(hidden_size=8, num_answers=5, dropout=0.0).train()
    text = torch.randn(2, 6, 8)
    target = torch.tensor([[0, 1, 0.3, 0, 0], [1, 0, 0, 0, 0.6]])
    batch = SimpleNamespace(inputs=[{"answer_position": 3, "answer_target": target[0]},
                                    {"answer_position": 5, "answer_target": target[1]}])
    loss = head(SimpleNamespace(text=text), batch)["loss_vqa"]
    logits = head.classifier(head.transform(torch.stack([text[0, 3], text[1, 5]])))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) * 5
    assert torch.allclose(loss, expected)


def test_refcoco_head_ignores_padding():
    from types import SimpleNamespace

    from vlbert_d2.modeling.heads import RefCOCOHead

    torch.manual_seed(0)
    head = RefCOCOHead(hidden_size=8, dropout=0.0)
    objects = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    batch = SimpleNamespace(object_mask=mask, inputs=[{"region_labels": torch.tensor([0., 1, 0, 0])},
                                                      {"region_labels": torch.tensor([0., 1])}])
    loss = head.train()(SimpleNamespace(objects=objects), batch)["loss_ref"]
    logits = head.classifier(head.transform(objects)).squeeze(-1)
    valid = mask.bool()
    target = torch.tensor([[0., 1, 0, 0], [0, 1, 0, 0]])
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], target[valid]))
    results = head.eval()(SimpleNamespace(objects=objects), batch)
    assert len(results[1]["scores"]) == 2 and results[1]["index"] == int(logits[1, :2].argmax())


def test_warmup_linear_decay_schedule():
    from conftest import make_cfg

    from vlbert_d2.solver import build_lr_scheduler

    cfg = make_cfg(SOLVER__LR_SCHEDULER_NAME="WarmupLinearDecayLR", SOLVER__BASE_LR=1.0, SOLVER__MAX_ITER=10,
                   SOLVER__WARMUP_ITERS=2, SOLVER__WARMUP_FACTOR=0.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # Warm-up 0 -> 1 over 2 iterations, then linear decay to 0 at iteration 10.
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_vqa_transform_starts_from_bert_mlm_head(tmp_path):
    """A BERT checkpoint with an MLM head (BertForPreTraining layout, saved in the test)
    initialises the VQA head's transform, as in the official VQA model."""
    from transformers import BertConfig, BertForPreTraining

    from vlbert_d2.modeling.heads import VQAHead

    torch.manual_seed(0)
    bert = BertForPreTraining(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=16))
    bert.save_pretrained(str(tmp_path))
    head = VQAHead(hidden_size=8, num_answers=3, bert_name=str(tmp_path))
    t = bert.cls.predictions.transform
    assert torch.equal(head.transform[0].weight, t.dense.weight)
    assert torch.equal(head.transform[2].bias, t.LayerNorm.bias)
    # No MLM head in the checkpoint (MiniLM ships a plain BertModel): random, and said so.
    plain = VQAHead(hidden_size=8, num_answers=3, bert_name="")
    assert not torch.equal(plain.transform[0].weight, t.dense.weight)


@pytest.mark.parametrize("config, expected", [
    ("VLBERT-Base-VQA.yaml", os.path.join("coco", "vqa", "v2_OpenEnded_mscoco_train2014_questions.json")),
    ("VLBERT-Base-RefCOCO+.yaml", os.path.join("coco", "refcoco+", "refs(unc).p")),
])
def test_missing_data_names_the_files(tmp_path, config, expected):
    res = run(["--config-file", os.path.join(REPO, "configs", config), "OUTPUT_DIR", str(tmp_path / "o")],
              tmp_path)  # its log there, not in the repository
    assert res.returncode != 0
    assert os.path.join(str(tmp_path), expected) in res.stderr and "datasets/README.md" in res.stderr


def test_vqa_from_detection_file_features(data_root, tmp_path):
    """Precomputed-feature mode from the bottom-up-attention files: with base64 `features` in the
    detection JSON (256-d: the tiny trunk's width), training and --eval-only never read an image."""
    import shutil

    import numpy as np

    from vlbert_d2.data.detections import encode_detection, read_detection, write_detection

    root = tmp_path / "datasets"
    shutil.copytree(data_root / "synthetic_vqa_geometry", root / "synthetic_vqa_geometry",
                    ignore=shutil.ignore_patterns("*.jpg"))  # no images at all
    rng = np.random.default_rng(0)
    for path in (root / "synthetic_vqa_geometry").glob("vgbua_res101_precomputed/*/*.json"):
        det = read_detection(str(path))
        feats = rng.normal(size=(len(det["boxes"]), 256)).astype(np.float32)
        write_detection(str(path), encode_detection(det["image_id"], det["image_w"], det["image_h"],
                                                    det["boxes"], features=feats))
    extra = ["MODEL.VLBERT.DETECTION_FEATURES", "True"]
    out = tmp_path / "out"
    train = run(["--config-file", TINY_VQA] + COMMON + extra +
                ["SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "2", "OUTPUT_DIR", str(out)], root)
    assert train.returncode == 0, train.stderr[-3000:]
    ev = run(["--config-file", TINY_VQA, "--eval-only"] + COMMON + extra +
             ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval")], root)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert copypaste_metrics(ev.stdout) == copypaste_metrics(train.stdout)
