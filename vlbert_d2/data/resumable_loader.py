"""A training loader whose data order and augmentations are a pure function of the seed, so that
a run resumed after a crash sees exactly the batches an uninterrupted run would have seen.

detectron2's training loader restarts its shuffle on ``--resume``, draws augmentations from
per-worker generators (so they depend on the number of workers and of processes), and forms
aspect-ratio batches per process. Here instead:

* **The plan** (:class:`BatchPlan`) lists global batches without reading any data: position
  ``p`` of an infinite stream is record ``perm_e[p mod n]`` of epoch ``e = p // n``, each epoch's
  permutation seeded by ``(seed, e)``; with aspect-ratio grouping, records go to two buckets
  (landscape / portrait) and a bucket holding ``SOLVER.IMS_PER_BATCH`` records is a batch. Its
  whole state is the next position and the positions waiting in the buckets.
* **Mapping** runs in the loader's workers: each worker replays the plan and maps the share of
  its batches that belongs to this process, every record under generators seeded by
  ``(seed, p)``, so a record's augmentation (flip, masking) does not depend on which worker or
  process maps it, nor on what ran before.
* **The state** after each batch is what :meth:`ResumableTrainLoader.state_dict` returns; it goes
  into every checkpoint, and :meth:`~ResumableTrainLoader.load_state_dict` continues from it.

Process ``r`` of ``world`` trains on slice ``r`` of every global batch, so ``k`` processes at
``IMS_PER_BATCH / k`` each see the records that one process at ``IMS_PER_BATCH`` sees.
"""
import copy
import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from ..utils.seeding import derive_seed, seeded_rngs

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


def _aspect_groups(dicts):
    """Bucket of each record (0: wider than tall, 1: not), or None when records have no size."""
    if not all("width" in d and "height" in d for d in dicts):
        return None
    return np.array([0 if d["width"] > d["height"] else 1 for d in dicts], dtype=np.int8)


class BatchPlan:
    """The sequence of global batches, as ``[(position, record index), ...]`` lists.

    Args:
        size (int): number of records.
        batch_size (int): records per global batch.
        seed (int): seeds the epochs' permutations.
        groups (array or None): aspect-ratio bucket of each record; None: no grouping.
        shuffle (bool): permute each epoch (else dataset order).
    """

    def __init__(self, size, batch_size, seed, groups=None, shuffle=True):
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.groups, self.shuffle = groups, shuffle
        self._epoch, self._order = None, None

    def index(self, position):
        epoch, k = divmod(position, self.size)
        if epoch != self._epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
                self._order = torch.randperm(self.size, generator=g).numpy()
            else:
                self._order = np.arange(self.size)
            self._epoch = epoch
        return int(self._order[k])

    @staticmethod
    def initial_state():
        return {"next": 0, "buckets": [[], []]}

    def batches(self, state):
        """Yield ``(batch, state_after)`` from ``state`` on, forever; ``state_after`` is where
        the plan stands once ``batch`` is taken (a plain dict, safe to keep)."""
        p = state["next"]
        buckets = [list(b) for b in state["buckets"]]
        while True:
            idx = self.index(p)
            bucket = buckets[0 if self.groups is None else int(self.groups[idx])]
            bucket.append(p)
            p += 1
            if len(bucket) == self.batch_size:
                batch = [(q, self.index(q)) for q in bucket]
                bucket.clear()
                yield batch, {"next": p, "buckets": [list(b) for b in buckets]}


def _identity(x):
    return x


class _MappedBatches(IterableDataset):
    """This process's slice of each planned batch, mapped; DataLoader worker ``w`` of ``W``
    maps batches ``w, w + W, ...`` (the loader returns them in order)."""

    def __init__(self, dataset, mapper, plan, state, lo, hi):
        self.dataset, self.mapper, self.plan, self.state = dataset, mapper, plan, state
        self.lo, self.hi = lo, hi

    def map_one(self, position, index):
        record = self.dataset[index]
        with seeded_rngs(derive_seed(self.plan.seed, 1 << 40, position)):
            out = self.mapper(record)
        if out is None:  # detectron2 mappers may skip a record; here nothing is dropped silently
            raise ValueError(f"the dataset mapper returned None for record {index} "
                             f"({record.get('source', record.get('image_id', '?'))})")
        return out

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for b, (batch, _) in enumerate(self.plan.batches(self.state)):
            if b % workers == worker:
                yield [self.map_one(p, i) for p, i in batch[self.lo:self.hi]]


class ResumableTrainLoader:
    """An infinite iterable of this process's training batches (lists of mapped dicts) whose
    position can be saved and restored.

    Args:
        dicts (list[dict]): the training records.
        mapper (callable): record -> model input.
        total_batch_size (int): records per iteration over all processes.
        seed (int): the data order and augmentations follow from it (and nothing else).
        aspect_ratio_grouping (bool): batch landscape and portrait images apart (records need
            "width" and "height"; without them, no grouping).
        num_workers (int): DataLoader worker processes (0: map in this process).
    """

    def __init__(self, dicts, mapper, total_batch_size, seed, aspect_ratio_grouping=True, num_workers=0):
        world, rank = comm.get_world_size(), comm.get_rank()
        if total_batch_size <= 0 or total_batch_size % world:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={total_batch_size} cannot be shared evenly by "
                             f"{world} processes")
        self._per_rank = per_rank = total_batch_size // world
        self._lo, self._hi = rank * per_rank, (rank + 1) * per_rank
        groups = _aspect_groups(dicts) if aspect_ratio_grouping else None
        self.plan = BatchPlan(len(dicts), total_batch_size, seed, groups)
        # Serialised, so that the worker processes share its pages instead of copying them (no
        # list of dicts is kept beside it).
        self.dataset = DatasetFromList(dicts, copy=True, serialize=True)
        self.mapper, self.num_workers = mapper, num_workers
        self._state = BatchPlan.initial_state()
        self.last_batch = []  # (position, record index) of the last global batch

    @property
    def seed(self):
        return self.plan.seed

    def state_dict(self):
        """Where the data stream stands after the last batch handed out."""
        return {"version": _STATE_VERSION, "seed": self.plan.seed, "size": self.plan.size,
                "batch_size": self.plan.batch_size, "grouping": self.plan.groups is not None,
                **copy.deepcopy(self._state)}

    def load_state_dict(self, state):
        """Continue after the batch at which ``state`` was saved (before iterating)."""
        same = (state.get("version") == _STATE_VERSION and state.get("size") == self.plan.size
                and state.get("batch_size") == self.plan.batch_size
                and state.get("grouping") == (self.plan.groups is not None))
        self.plan.seed = int(state["seed"])
        if same:
            self._state = {"next": int(state["next"]), "buckets": [list(b) for b in state["buckets"]]}
        else:
            # The data or the batch changed since the checkpoint: the exact order cannot be
            # recovered; continue the same seed's stream after the records already used.
            logger.warning("The training set or batch size differs from the checkpoint's (records "
                           "%s -> %d, batch %s -> %d): the data order is not resumed exactly",
                           state.get("size"), self.plan.size, state.get("batch_size"), self.plan.batch_size)
            self._state = {"next": int(state.get("next", 0)), "buckets": [[], []]}

    def describe_last_batch(self, limit=16):
        """The records of the last global batch (every process's share, by rank), for error
        messages: a non-finite loss is detected on the main process after averaging."""
        names = []
        for k, (p, i) in enumerate(self.last_batch[:limit]):
            d = self.dataset[i]
            name = d.get("source") or d.get("annot_id") or d.get("question_id") or d.get("file_name")
            names.append(f"{name or f'record {i}'} (rank {k // self._per_rank})")
        more = len(self.last_batch) - limit
        return ", ".join(names) + (f" (+{more} more)" if more > 0 else "")

    def __iter__(self):
        start = copy.deepcopy(self._state)
        mapped = _MappedBatches(self.dataset, self.mapper, self.plan, start, self._lo, self._hi)
        loader = DataLoader(mapped, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                            persistent_workers=False)
        # Starting the loader draws from torch's global generator; keep training's draws intact.
        with seeded_rngs(0):
            batches = iter(loader)
        for (planned, state), batch in zip(self.plan.batches(start), batches):
            self._state = state
            self.last_batch = planned
            yield batch
