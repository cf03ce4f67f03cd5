"""Crash-safe, exact resume: a real SIGKILL of a training process, then ``--resume``, ends with
the weights of an uninterrupted run, bit for bit; checkpoints are written atomically and a
damaged ``last_checkpoint`` falls back to the newest whole checkpoint."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY_YAML
from conftest import TRAIN_NET

# Dropout on (the tiny config's default), so the random draws matter; 12 iterations of 2.
COMMON = ["MODEL.VLBERT.NUM_LAYERS", "1", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "12",
          "SOLVER.STEPS", "(8,)", "SOLVER.WARMUP_ITERS", "2", "TEST.EVAL_PERIOD", "0",
          "SOLVER.CHECKPOINT_PERIOD", "3", "SEED", "7"]


def _env(root):
    return dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1")


def _train(root, out, *extra, resume=False, workers=0):
    args = [sys.executable, TRAIN_NET, "--config-file", TINY_YAML] + (["--resume"] if resume else [])
    args += COMMON + ["DATALOADER.NUM_WORKERS", str(workers), "OUTPUT_DIR", str(out), *extra]
    res = subprocess.run(args, cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from synthetic_vl import generate_vcr

    root = tmp_path_factory.mktemp("datasets")
    generate_vcr(str(root / "synthetic_vcr_size"), counts={"train": 10, "val": 4, "test": 2},
                 seed=3, question_types=("size",))
    return root


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _train(data_root, out)
    return out


def test_sigkill_then_resume_ends_with_the_same_weights(data_root, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    # The killed run maps its data in 2 worker processes, the resumed one in this process:
    # the data order and augmentations must not depend on it.
    child = subprocess.Popen([sys.executable, TRAIN_NET, "--config-file", TINY_YAML] + COMMON +
                             ["DATALOADER.NUM_WORKERS", "2", "OUTPUT_DIR", str(out)],
                             cwd=REPO, env=_env(data_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "model_0000005.pth").exists():  # two checkpoints in (iterations 2 and 5)
        assert child.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "model_final.pth").exists(), "killed too late to test a resume"

    res = _train(data_root, out, resume=True)
    log = res.stdout + res.stderr
    start = int(log.split("Starting training from iteration ")[1].split()[0])
    # From model_0000002 when the kill fell between renaming model_0000005.pth and last_checkpoint.
    assert start in (3, 6, 9), start
    reference, resumed = _weights(uninterrupted / "model_final.pth"), _weights(out / "model_final.pth")
    assert reference.keys() == resumed.keys()
    different = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_without_the_exact_state_differs(data_root, uninterrupted, tmp_path):
    """The check above can fail: resuming with another seed for the data and the dropout ends
    elsewhere (so equal weights above are not an accident of a model that does not train)."""
    out = tmp_path / "other"
    _train(data_root, out, "SOLVER.MAX_ITER", "6")
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    ckpt["trainer"]["hooks"]["ExactResume"]["seed"] = 8
    ckpt["trainer"]["hooks"]["ExactResume"]["data"]["seed"] = 8
    torch.save(ckpt, out / "model_final.pth")
    _train(data_root, out, resume=True)
    reference, resumed = _weights(uninterrupted / "model_final.pth"), _weights(out / "model_final.pth")
    assert any(not torch.equal(reference[k], resumed[k]) for k in reference)


def test_empty_last_checkpoint_falls_back_to_the_newest_whole_one(data_root, uninterrupted, tmp_path):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(uninterrupted, out)
    os.remove(out / "model_final.pth")
    (out / "last_checkpoint").write_text("")
    # The newest periodic checkpoint was cut short (as by a crash in a non-atomic write).
    newest = out / "model_0000011.pth"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    for f in ("metrics.json",):
        os.remove(out / f)
    res = _train(data_root, out, resume=True)
    log = res.stdout + res.stderr
    assert "is empty: resuming from the newest readable checkpoint" in log
    assert "model_0000008.pth" in log and "skipping" in log and "model_0000011.pth" in log
    assert "Starting training from iteration 9" in log
    reference, resumed = _weights(uninterrupted / "model_final.pth"), _weights(out / "model_final.pth")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


_WRITER = r"""
import sys, torch
from vlbert_d2.checkpoint import SafeCheckpointer
model = torch.nn.Linear(4096, 4096)  # 64 MiB: a write takes long enough to be interrupted
ckpt = SafeCheckpointer(model, sys.argv[1], save_to_disk=True)
for i in range(1000):
    with torch.no_grad():
        model.bias.fill_(i)
    ckpt.save(f"model_{i:07d}")
"""


def test_sigkill_while_a_checkpoint_is_written_leaves_no_partial_file(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Wait until a second write is under way (a temporary file beside a finished checkpoint).
    while not ((tmp_path / "model_0000001.pth").exists()
               and any(".tmp." in p.name for p in tmp_path.iterdir())):
        assert child.poll() is None, child.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    checkpoints = sorted(tmp_path.glob("model_*.pth"))
    assert checkpoints
    for path in checkpoints:  # every file under a checkpoint name is whole
        state = torch.load(path, weights_only=True)["model"]
        assert state["bias"][0].item() == int(path.stem.split("_")[1])
    from vlbert_d2.checkpoint import SafeCheckpointer

    partial = [p.name for p in tmp_path.iterdir() if ".tmp." in p.name]
    assert partial  # the kill left the interrupted write's temporary file ...
    last = SafeCheckpointer(torch.nn.Linear(4096, 4096), str(tmp_path), save_to_disk=True).get_checkpoint_file()
    # last_checkpoint is renamed after the checkpoint: it names the newest or the one before.
    assert last in (str(checkpoints[-1]), str(checkpoints[-2]) if len(checkpoints) > 1 else None)
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]  # ... which the next run removes


def test_a_non_finite_loss_names_the_records_of_the_batch(tiny_cfg, synthetic_dicts, tmp_path):
    from detectron2.utils.events import EventStorage

    from vlbert_d2.engine import VLBertTrainer

    cfg = tiny_cfg.clone()
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(tmp_path),
                         "DATALOADER.CHECK_CACHE_DIR", str(tmp_path / "cache")])
    trainer = VLBertTrainer(cfg)
    seen = []

    def nan_loss(batch):  # the model's loss turns NaN; remember which records it was given
        seen.extend(d["annot_id"] for d in batch)
        return {"loss_vcr": torch.tensor(float("nan"), requires_grad=True)}

    trainer._trainer.model.forward = nan_loss
    with EventStorage(0), pytest.raises(FloatingPointError) as e:
        trainer.iter = 0
        trainer.run_step()
    sources = {d["annot_id"]: d["source"] for d in synthetic_dicts["train"]}
    assert len(seen) == 2
    assert "Records of this batch: " + ", ".join(f"{sources[a]} (rank 0)" for a in seen) in str(e.value)
