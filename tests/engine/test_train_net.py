"""End to end through tools/train_net.py: a few training iterations on generated data, then
--eval-only on the saved checkpoint; and the command-line errors a user meets first."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY_YAML, copypaste_metrics, run



@pytest.fixture(scope="module")
def size_data(tmp_path_factory):
    from synthetic_vl import generate_vcr

    root = tmp_path_factory.mktemp("datasets")
    generate_vcr(str(root / "synthetic_vcr_size"), counts={"train": 24, "val": 8, "test": 4},
                 seed=1, question_types=("size",))
    return root


def test_train_then_eval_only_gives_the_same_metrics(size_data, tmp_path):
    out = tmp_path / "out"
    common = ["MODEL.VLBERT.NUM_LAYERS", "1", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "4"]
    train = run(["--config-file", TINY_YAML] + common + ["SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", "1",
                          "TEST.EVAL_PERIOD", "3", "OUTPUT_DIR", str(out)], size_data)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    # The record check reports what it checked, on the console and in the run's log.
    summary = "Record check: dataset 'synthetic_vcr_size_train': 24 records checked"
    assert summary in train.stdout + train.stderr and summary in (out / "log.txt").read_text()
    # The allocator settings (vlbert_d2/utils/malloc.py; tests/test_malloc.py: what they change).
    assert "malloc: M_MMAP_THRESHOLD 1024 MB, M_TRIM_THRESHOLD 1024 MB, M_TOP_PAD 64 MB" in train.stdout + train.stderr
    trained = copypaste_metrics(train.stdout)
    assert trained["num_labelled"] == 8.0 and 0.0 <= trained["Q2A"] <= 100.0
    # metrics.json has the training losses and the final evaluation (detectron2's writers).
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("loss_vcr" in r for r in records)
    assert any(abs(r.get("vcr/Q2A", -1) - trained["Q2A"]) < 1e-6 for r in records)
    assert list(out.glob("events.out.tfevents.*")), "no tensorboard event file"

    # The training's evaluation ran at TEST.IMS_PER_BATCH 8, this one at 1: same metrics.
    ev = run(["--config-file", TINY_YAML, "--eval-only"] + common + ["TEST.IMS_PER_BATCH", "1",
                                                                     "MODEL.WEIGHTS", str(out / "model_final.pth"),
                       "OUTPUT_DIR", str(tmp_path / "eval")], size_data)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert copypaste_metrics(ev.stdout) == trained
    preds = json.loads((tmp_path / "eval" / "inference" / "synthetic_vcr_size_val" /
                        "vcr_Q2A_predictions.json").read_text())
    assert len(preds) == 8 and all(len(p["scores"]) == 4 for p in preds.values())


def test_missing_vcr_data_names_the_files_and_the_readme(tmp_path):
    res = run(["--config-file", os.path.join(REPO, "configs", "VLBERT-Base-VCR.yaml"),
               "OUTPUT_DIR", str(tmp_path / "o")], tmp_path)  # its log there, not in the repository
    assert res.returncode != 0
    assert os.path.join(str(tmp_path), "vcr", "train.jsonl") in res.stderr
    assert os.path.join(str(tmp_path), "vcr", "val.jsonl") in res.stderr
    assert "datasets/README.md" in res.stderr


def test_eval_only_needs_weights(size_data, tmp_path):
    res = run(["--config-file", TINY_YAML, "--eval-only", "OUTPUT_DIR", str(tmp_path / "o")], size_data)
    assert res.returncode != 0 and "MODEL.WEIGHTS" in res.stderr


def test_eval_only_with_unreadable_checkpoint_names_it(size_data, tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    res = run(["--config-file", TINY_YAML, "--eval-only", "MODEL.WEIGHTS", str(bad),
               "MODEL.VLBERT.NUM_LAYERS", "1", "OUTPUT_DIR", str(tmp_path / "o")], size_data)
    assert res.returncode != 0
    assert f"cannot read checkpoint {bad}" in res.stderr


def test_resume_continues_from_the_last_checkpoint(size_data, tmp_path):
    out = tmp_path / "out"
    common = ["MODEL.VLBERT.NUM_LAYERS", "1", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
              "SOLVER.STEPS", "(100,)", "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "0",
              "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out)]
    first = run(["--config-file", TINY_YAML] + common + ["SOLVER.MAX_ITER", "2"], size_data)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    second = run(["--config-file", TINY_YAML, "--resume"] + common + ["SOLVER.MAX_ITER", "4"], size_data)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "Starting training from iteration 2" in log
    iters = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]
    # A restart from scratch would log iterations 1-2 twice.
    assert iters == sorted(set(iters)) and max(iters) == 4


def test_eval_only_resume_without_checkpoint_refuses(size_data, tmp_path):
    res = run(["--config-file", TINY_YAML, "--eval-only", "--resume", "OUTPUT_DIR", str(tmp_path / "empty")], size_data)
    assert res.returncode != 0 and "no checkpoint in" in res.stderr


def test_precomputed_features_through_the_tools(size_data, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, DETECTRON2_DATASETS=str(size_data), OMP_NUM_THREADS="1")
    small = ["MODEL.VLBERT.NUM_LAYERS", "1"]
    ext = subprocess.run([sys.executable, os.path.join(REPO, "tools", "extract_features.py"),
                          "--config-file", TINY_YAML, "--datasets", "synthetic_vcr_size_train",
                          "synthetic_vcr_size_val", "--output", str(cache), "--num-workers", "1"] + small,
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ext.returncode == 0, ext.stderr[-3000:]
    assert "'extracted': 32" in ext.stdout  # 24 train + 8 val images
    assert "malloc: M_MMAP_THRESHOLD 1024 MB" in ext.stdout + ext.stderr
    out = tmp_path / "out"
    common = small + ["MODEL.VLBERT.FEATURE_CACHE", str(cache), "DATALOADER.NUM_WORKERS", "0",
                      "SOLVER.IMS_PER_BATCH", "4"]
    train = run(["--config-file", TINY_YAML] + common + ["SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)",
                "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "3", "OUTPUT_DIR", str(out)], size_data)
    assert train.returncode == 0, train.stderr[-3000:]
    ev = run(["--config-file", TINY_YAML, "--eval-only"] + common +
             ["MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval")], size_data)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert copypaste_metrics(ev.stdout) == copypaste_metrics(train.stdout)
