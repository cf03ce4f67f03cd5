"""Training data loaders: detectron2's, plus a fixed training subset and pre-training's 1:1
mix of captions and text in every batch."""
import logging

import numpy as np

from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def subset_fraction(dicts, fraction, seed, what="training set"):
    """A fixed random share of ``dicts`` (its order kept), chosen by ``seed`` only."""
    if not 0 < fraction <= 1:
        raise ValueError(f"DATALOADER.TRAIN_FRACTION must be in (0, 1], got {fraction}")
    if fraction == 1:
        return dicts
    count = max(1, int(round(len(dicts) * fraction)))
    keep = np.sort(np.random.default_rng(seed).permutation(len(dicts))[:count])
    logger.info("DATALOADER.TRAIN_FRACTION=%g: training on %d of the %d records of the %s",
                fraction, count, len(dicts), what)
    return [dicts[i] for i in keep]


class MixedBatchLoader:
    """Concatenates one batch of each loader into every batch (pre-training: captions + text).

    Args:
        loaders (list[iterable]): infinite loaders of lists of dicts.
    """

    def __init__(self, loaders):
        self.loaders = loaders

    def __iter__(self):
        for batches in zip(*self.loaders):
            yield [x for batch in batches for x in batch]


def _dataset(names, fraction, seed, what):
    dicts = get_detection_dataset_dicts(names, filter_empty=False)
    return subset_fraction(dicts, fraction, seed, what)


def build_vlbert_train_loader(cfg, mapper):
    """detectron2's training loader over ``DATASETS.TRAIN`` (a ``DATALOADER.TRAIN_FRACTION``
    share of it); for pre-training, text-only datasets fill ``MODEL.VLBERT.PRETRAIN.TEXT_FRACTION``
    of every batch (paper: 128 captions + 128 text samples)."""
    names = list(cfg.DATASETS.TRAIN)
    fraction, seed = cfg.DATALOADER.TRAIN_FRACTION, max(cfg.SEED, 0)
    if cfg.MODEL.VLBERT.HEAD != "PretrainHead":
        return build_detection_train_loader(cfg, mapper=mapper,
                                            dataset=_dataset(names, fraction, seed, "training set"))
    text = [n for n in names if MetadataCatalog.get(n).get("pretrain_kind", None) == "text"]
    captions = [n for n in names if n not in text]
    total = cfg.SOLVER.IMS_PER_BATCH
    text_batch = int(round(total * cfg.MODEL.VLBERT.PRETRAIN.TEXT_FRACTION)) if text else 0
    if text and cfg.MODEL.VLBERT.PRETRAIN.TEXT_FRACTION <= 0:
        raise ValueError(f"DATASETS.TRAIN has text-only datasets {text} but "
                         "MODEL.VLBERT.PRETRAIN.TEXT_FRACTION is 0")
    world = comm.get_world_size()
    parts = [(captions, total - text_batch, "caption"), (text, text_batch, "text")]
    loaders = []
    for group, batch, kind in parts:
        if not group:
            continue
        if batch < world or batch % world:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={total} with MODEL.VLBERT.PRETRAIN.TEXT_FRACTION="
                             f"{cfg.MODEL.VLBERT.PRETRAIN.TEXT_FRACTION} gives {batch} {kind} samples "
                             f"per batch, which {world} processes cannot share evenly")
        logger.info("Pre-training batches: %d %s samples from %s", batch, kind, group)
        loaders.append(build_detection_train_loader(
            cfg, mapper=mapper, dataset=_dataset(group, fraction, seed, f"{kind} datasets"),
            total_batch_size=batch,
            # Text samples have no image size to group by; captions are grouped as usual.
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING and kind == "caption"))
    if not loaders:
        raise ValueError("pre-training needs at least one dataset in DATASETS.TRAIN")
    return loaders[0] if len(loaders) == 1 else MixedBatchLoader(loaders)
