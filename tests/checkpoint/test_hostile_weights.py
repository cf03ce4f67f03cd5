"""No code runs from a weights file, whatever the entry point: a pickle whose loading would
create a marker file (``os.system("touch ...")``), saved as ``.pkl`` or inside a ``torch.save``
``.pth``, is refused with an error naming the file, and the marker never appears."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, TINY_YAML
from conftest import run


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_pkl(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": _RunsACommand(marker)}, "__author__": "x"}, f)
    return path


def _hostile_pth(path, marker):
    torch.save({"model": {"w": _RunsACommand(marker)}, "state_dict": _RunsACommand(marker)}, path)
    return path


def test_the_hostile_files_do_run_code_when_unpickled(tmp_path):
    """The oracle: plain unpickling (what detectron2's .pkl branch does) runs the command."""
    marker = tmp_path / "ran"
    with open(_hostile_pkl(tmp_path / "x.pkl", marker), "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    torch.load(_hostile_pth(tmp_path / "x.pth", marker), weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from synthetic_vl import generate_vcr

    root = tmp_path_factory.mktemp("datasets")
    generate_vcr(str(root / "synthetic_vcr_size"), counts={"train": 4, "val": 2, "test": 2}, seed=2,
                 question_types=("size",))
    return root


@pytest.mark.parametrize("kind", ["pkl", "pth"])
def test_model_weights_in_train_net(kind, data_root, tmp_path):
    marker = tmp_path / "ran"
    weights = (_hostile_pkl if kind == "pkl" else _hostile_pth)(tmp_path / f"evil.{kind}", marker)
    res = run(["--config-file", TINY_YAML, "--eval-only", "MODEL.WEIGHTS", str(weights),
               "MODEL.VLBERT.NUM_LAYERS", "1", "OUTPUT_DIR", str(tmp_path / "o")], data_root)
    assert res.returncode != 0
    assert not marker.exists()
    assert str(weights) in res.stderr and ("refusing to load" in res.stderr or "weights_only" in res.stderr)


def test_last_checkpoint_naming_a_pkl_with_resume(data_root, tmp_path):
    marker, out = tmp_path / "ran", tmp_path / "out"
    out.mkdir()
    _hostile_pkl(out / "model_0000009.pkl", marker)
    (out / "last_checkpoint").write_text("model_0000009.pkl")
    res = run(["--config-file", TINY_YAML, "--resume", "MODEL.VLBERT.NUM_LAYERS", "1", "SOLVER.MAX_ITER", "2",
               "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(out)], data_root)
    assert res.returncode != 0
    assert not marker.exists()
    assert f"{out / 'model_0000009.pkl'}: refusing to load 'posix.system'" in res.stderr


def test_demo_weights(tmp_path):
    import cv2

    marker = tmp_path / "ran"
    weights = _hostile_pkl(tmp_path / "evil.pkl", marker)
    cv2.imwrite(str(tmp_path / "img.jpg"), np.full((64, 96, 3), 128, np.uint8))
    (tmp_path / "boxes.json").write_text(json.dumps([[4, 4, 40, 40]]))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, os.path.join(REPO, "tools", "demo.py"), "--config-file", TINY_YAML,
                          "--weights", str(weights), "--input", str(tmp_path / "img.jpg"),
                          "--boxes", str(tmp_path / "boxes.json"), "--question", "which object is the biggest ?",
                          "--choices", "[0]", "[0]", "[0]", "[0]", "--objects", "ball",
                          "--output", str(tmp_path / "out")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert not marker.exists()
    assert str(weights) in res.stderr


def test_official_checkpoint_converter(tmp_path):
    marker = tmp_path / "ran"
    src = _hostile_pth(tmp_path / "vl-bert-base-e2e.model", marker)
    res = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_vlbert_checkpoint.py"),
                          str(src), str(tmp_path / "out.pth")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert not marker.exists() and not (tmp_path / "out.pth").exists()
    assert str(src) in res.stderr


@pytest.mark.parametrize("kind", ["pkl", "pth", "pyth"])
def test_checkpointers_of_the_library_and_the_detector_project(kind, tmp_path):
    from bua import BottomUpCheckpointer

    from vlbert_d2.checkpoint import CheckpointError, VLBertCheckpointer

    marker = tmp_path / "ran"
    path = (_hostile_pkl if kind == "pkl" else _hostile_pth)(tmp_path / f"evil.{kind}", marker)
    for checkpointer in (VLBertCheckpointer, BottomUpCheckpointer):
        with pytest.raises(Exception) as e:
            checkpointer(torch.nn.Linear(2, 2)).load(str(path))
        assert str(path) in str(e.value)
        assert not marker.exists()
    with pytest.raises(CheckpointError):
        VLBertCheckpointer(torch.nn.Linear(2, 2)).load(str(path))


def test_detector_weights_of_the_trunk(tmp_path):
    from vlbert_d2.checkpoint import UnsafePickleError, load_weights_pickle

    marker = tmp_path / "ran"
    path = _hostile_pkl(tmp_path / "faster_rcnn_from_caffe_attr.pkl", marker)
    with pytest.raises(UnsafePickleError, match=str(path)):
        load_weights_pickle(str(path))
    assert not marker.exists()


def test_feature_cache_shard_holding_objects(tmp_path):
    from vlbert_d2.data.feature_cache import FeatureCache, FeatureCacheError

    marker = tmp_path / "ran"
    np.save(tmp_path / "shard0.features.npy", np.array([_RunsACommand(marker)], dtype=object), allow_pickle=True)
    np.save(tmp_path / "shard0.boxes.npy", np.zeros((1, 4), np.float32))
    (tmp_path / "index.json").write_text(json.dumps({"dim": 4, "shards": ["shard0"], "items": {"k": [0, 0, 1, 8, 8]}}))
    with pytest.raises(FeatureCacheError, match="shard0.features.npy"):
        FeatureCache(str(tmp_path)).get("k")
    assert not marker.exists()
