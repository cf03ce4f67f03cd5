"""What the official-parity golden data is made of, shared by ``make_golden.py`` (which runs the
official VL-BERT code) and ``tests/fidelity/test_official_parity.py`` (which does not need it).

Nothing here imports the official code or this project's library: only torch.

The fill rule
-------------
Every tensor of an official model's ``state_dict()`` gets a value from one ``torch.Generator``
seeded with the task's seed (``SEEDS``), visiting the keys in sorted (Python string) order:

* integer tensors (BatchNorm's ``num_batches_tracked``): 0, nothing drawn;
* a key whose tensor is the same storage as an earlier key in sorted order (the official model
  keeps res5 twice, ``image_feature_extractor.head.0.*`` = ``roi_head_feature_extractor.*``, and ties
  the MLM decoder to the word embeddings): a copy of that key's value, nothing drawn;
* every other tensor: ``z = torch.randn(shape, generator=g)``, then

  - ``*running_var``: ``exp(0.2 z)`` (positive),
  - 1-D ``*weight`` (BatchNorm and LayerNorm scales, including the two visual LayerNorms that the
    official code starts at 0): ``1 + 0.1 z``,
  - other 1-D tensors (biases, ``running_mean``, the MLM bias): ``0.1 z``,
  - tensors of 2 or more dimensions (conv and linear weights, embedding tables):
    ``z / sqrt(fan_in)`` with ``fan_in = prod(shape[1:])`` (N(0, 1/fan_in): keeps the random
    ResNet-50's activations finite and the transformer's attention far from uniform).

The key list of each task (``official_keys.txt``: key, shape, dtype, the tasks that have it and the
key it repeats) is enough to rebuild the exact state dict: ``fill_state_dict(layout, seed)``.
"""
import math

import torch

# One seed per task for the fill rule, and one for the inputs.
SEEDS = {"vcr": 1001, "vqa": 1002, "refcoco": 1003, "pretrain": 1004}
INPUT_SEED = 2020

# The small sizes both implementations are built with.
HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 4
INTERMEDIATE_SIZE = 128
RESNET_DEPTH = 50
NUM_ANSWERS = 16  # VQA answer vocabulary (official DATASET.ANSWER_VOCAB_SIZE)
NUM_REGION_CLASSES = 101  # pre-training's masked RoI classes (official visual_region_classes)
NUM_VCR_CLASSES = 81  # VCR RoI classes: background + 80 COCO classes (fixed in the official code)
PIXEL_MEAN = (102.9801, 115.9465, 122.7717)  # BGR, official PIXEL_MEANS (std 1)

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103


def vocab_tokens():
    """A 128-token WordPiece vocabulary laid out like bert-base-uncased's first lines
    ([PAD] 0, [unused0..98], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), then 24 words."""
    words = ["a", "the", "man", "woman", "dog", "cat", "is", "on", "in", "red", "blue", "left",
             "right", "what", "color", "holding", "why", "because", "table", "car", "sitting",
             "near", "##s", "."]
    return ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words


def write_vocab(path):
    with open(path, "w") as f:
        f.write("\n".join(vocab_tokens()) + "\n")


def _value(key, shape, z):
    if key.endswith("running_var"):
        return torch.exp(0.2 * z)
    if len(shape) == 1:
        return 1.0 + 0.1 * z if key.endswith("weight") else 0.1 * z
    if len(shape) == 0:
        return 0.1 * z
    fan_in = math.prod(shape[1:])
    return z / math.sqrt(fan_in)


def fill_state_dict(layout, seed):
    """The state dict the fill rule gives.

    Args:
        layout (list[(key, shape tuple, dtype str, alias or None)]): one task's official keys.
        seed (int): the task's seed.

    Returns:
        dict[str, Tensor]
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape, dtype, alias in sorted(layout, key=lambda x: x[0]):
        if alias is not None:
            out[key] = out[alias].clone()
        elif dtype.startswith("int") or dtype == "bool":
            out[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
        else:
            z = torch.randn(shape, generator=g, dtype=torch.float32)
            out[key] = _value(key, shape, z).to(getattr(torch, dtype))
    return out


def read_keys(path, task):
    """[(key, shape, dtype, alias)] of ``task`` from ``official_keys.txt``.

    Line format: ``key<TAB>d0,d1,..<TAB>dtype<TAB>task,task,..<TAB>alias or -``.
    """
    layout = []
    with open(path) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            key, shape, dtype, tasks, alias = line.rstrip("\n").split("\t")
            if task not in tasks.split(","):
                continue
            dims = tuple(int(d) for d in shape.split(",")) if shape else ()
            layout.append((key, dims, dtype, None if alias == "-" else alias))
    return layout


def rel_err(actual, expected):
    """max |actual - expected| / max |expected| (the scale of the whole tensor, so entries near
    zero do not blow the ratio up)."""
    actual = actual.detach().double()
    expected = expected.detach().double()
    if actual.shape != expected.shape:
        raise ValueError(f"shape {tuple(actual.shape)} vs expected {tuple(expected.shape)}")
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)
