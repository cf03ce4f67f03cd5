"""Training data loaders: resumable ones (:mod:`.resumable_loader`), a fixed training subset,
and pre-training's 1:1 mix of captions and text in every batch."""
import logging

import numpy as np

from detectron2.data import MetadataCatalog, get_detection_dataset_dicts
from detectron2.utils import comm

from ..tasks import task_of_head
from ..utils.seeding import derive_seed
from .resumable_loader import ResumableTrainLoader

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
        loaders (list[ResumableTrainLoader]): infinite loaders of lists of dicts.
    """

    def __init__(self, loaders):
        self.loaders = loaders

    def state_dict(self):
        return {"parts": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state):
        for loader, part in zip(self.loaders, state["parts"]):
            loader.load_state_dict(part)

    def describe_last_batch(self, limit=16):
        return "; ".join(loader.describe_last_batch(limit) for loader in self.loaders)

    def __iter__(self):
        for batches in zip(*self.loaders):
            yield [x for batch in batches for x in batch]


def _dataset(cfg, names, fraction, seed, what):
    """The records of the datasets ``names`` (a ``fraction`` of them, chosen by ``seed``), each
    dataset's checked before iteration 0 (:func:`~.validation.check_dataset_records`)."""
    from .validation import check_dataset_records

    # Loaded per name, so that the check's messages and bad-records files name the dataset. The
    # share is chosen first, over all the records as before, so that only the records trained
    # on are checked and the choice does not depend on which records are bad.
    per_name = [get_detection_dataset_dicts([name], filter_empty=False) for name in names]
    chosen = set(subset_fraction(range(sum(map(len, per_name))), fraction, seed, what))
    dicts, start = [], 0
    for name, records in zip(names, per_name):
        kept = [d for i, d in enumerate(records, start) if i in chosen]
        start += len(records)
        dicts += check_dataset_records(cfg, name, kept, is_train=True)
    return dicts


def training_seed(cfg):
    """``SEED``, or when it is negative one random seed shared by all processes (a resumed run
    takes the one its checkpoint saved)."""
    return cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()


def build_vlbert_train_loader(cfg, mapper, seed=None):
    """A :class:`ResumableTrainLoader` over ``DATASETS.TRAIN`` (a ``DATALOADER.TRAIN_FRACTION``
    share of it); for pre-training, text-only datasets fill ``MODEL.VLBERT.PRETRAIN.TEXT_FRACTION``
    of every batch (paper: 128 captions + 128 text samples), in a :class:`MixedBatchLoader`.

    Args:
        seed (int or None): the data order's seed; None: :func:`training_seed`.
    """
    names = list(cfg.DATASETS.TRAIN)
    seed = training_seed(cfg) if seed is None else seed
    fraction, subset_seed = cfg.DATALOADER.TRAIN_FRACTION, max(cfg.SEED, 0)
    workers, grouping = cfg.DATALOADER.NUM_WORKERS, cfg.DATALOADER.ASPECT_RATIO_GROUPING
    task = task_of_head(cfg.MODEL.VLBERT.HEAD)
    if task is None or not task.mixed_text_batches:
        return ResumableTrainLoader(_dataset(cfg, names, fraction, subset_seed, "training set"), mapper,
                                    cfg.SOLVER.IMS_PER_BATCH, seed, grouping, workers)
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
        loaders.append(ResumableTrainLoader(
            _dataset(cfg, group, fraction, subset_seed, f"{kind} datasets"), mapper, batch,
            derive_seed(seed, len(loaders)),
            # Text samples have no image size to group by; captions are grouped as usual.
            grouping and kind == "caption", workers))
    if not loaders:
        raise ValueError("pre-training needs at least one dataset in DATASETS.TRAIN")
    return loaders[0] if len(loaders) == 1 else MixedBatchLoader(loaders)
