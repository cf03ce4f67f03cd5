"""A compact, memory-mapped cache of region features (precomputed-feature mode).

Layout of a cache directory::

    index.json                     {"dim": C, "shards": [name, ...],
                                    "items": {key: [shard, offset, count, height, width]}}
    shard-00000.features.npy       (R_0, C) float32, RoI appearance features
    shard-00000.boxes.npy          (R_0, 4) float32, the RoIs (x1, y1, x2, y2) they were pooled from
    ...

A key is an image's path relative to its dataset's image root (VCR's ``img_fn``); boxes and
(height, width) are in the resized image the features were computed on, so the geometry
embedding sees exactly what the end-to-end model saw. Shards are written whole, then the index:
an interrupted extraction loses at most the unsaved shard, and a rerun skips every key of the
index (no duplicates, nothing lost).
"""
import json
import os

import numpy as np
import torch

from ..utils.files import atomic_write

INDEX = "index.json"


class FeatureCacheError(KeyError):
    """A key missing from a cache, or a damaged cache; the message names the directory."""

    def __str__(self):  # KeyError quotes its message; this one is a sentence
        return str(self.args[0])


class FeatureCache:
    """Read access to a cache directory (shards are memory-mapped on first use)."""

    def __init__(self, directory):
        self.directory = directory
        path = os.path.join(directory, INDEX)
        try:
            with open(path, encoding="utf-8") as f:
                index = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no feature cache at {directory} (missing {INDEX}); make one "
                                    "with tools/extract_features.py") from None
        except json.JSONDecodeError as e:
            raise FeatureCacheError(f"{path}: malformed JSON ({e})") from None
        self.dim = index["dim"]
        self.shards = index["shards"]
        self.items = index["items"]
        self._arrays = {}

    def __contains__(self, key):
        return key in self.items

    def __len__(self):
        return len(self.items)

    def _shard(self, i):
        if i not in self._arrays:
            base = os.path.join(self.directory, self.shards[i])
            arrays = []
            for path in (base + ".features.npy", base + ".boxes.npy"):
                try:  # numbers only: an array of Python objects (a pickle) is refused, not run
                    arrays.append(np.load(path, mmap_mode="r", allow_pickle=False))
                except (OSError, ValueError) as e:
                    raise FeatureCacheError(f"{path}: cannot read it as a feature shard: {e}") from None
            self._arrays[i] = tuple(arrays)
        return self._arrays[i]

    def get(self, key):
        """Returns (features (N, C) Tensor, boxes (N, 4) Tensor, (height, width))."""
        if key not in self.items:
            raise FeatureCacheError(f"feature cache {self.directory} has no entry for '{key}' "
                                    f"({len(self.items)} entries): extract this dataset's features "
                                    "with tools/extract_features.py")
        shard, offset, count, height, width = self.items[key]
        features, boxes = self._shard(shard)
        return (torch.from_numpy(np.array(features[offset:offset + count])),
                torch.from_numpy(np.array(boxes[offset:offset + count])), (height, width))

    def __getstate__(self):  # data-loader workers re-open the memory maps themselves
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state


class FeatureCacheWriter:
    """Appends shards to a cache directory, resuming an existing one."""

    def __init__(self, directory, dim):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, INDEX)
        if os.path.exists(path):
            existing = FeatureCache(directory)
            if existing.dim != dim:
                raise FeatureCacheError(f"{directory} holds {existing.dim}-d features, not {dim}-d")
            self.shards, self.items = existing.shards, existing.items
        else:
            self.shards, self.items = [], {}
        self.dim = dim
        self._pending = []  # (key, features, boxes, (h, w))

    def __contains__(self, key):
        return key in self.items or any(p[0] == key for p in self._pending)

    def add(self, key, features, boxes, image_size):
        self._pending.append((key, np.asarray(features, np.float32), np.asarray(boxes, np.float32),
                              (int(image_size[0]), int(image_size[1]))))

    def flush(self):
        """Write the pending entries as one shard, then the index (atomically)."""
        if not self._pending:
            return
        name = f"shard-{len(self.shards):05d}"
        base = os.path.join(self.directory, name)
        np.save(base + ".features.tmp.npy", np.concatenate([p[1] for p in self._pending]))
        np.save(base + ".boxes.tmp.npy", np.concatenate([p[2] for p in self._pending]))
        os.replace(base + ".features.tmp.npy", base + ".features.npy")
        os.replace(base + ".boxes.tmp.npy", base + ".boxes.npy")
        shard, offset = len(self.shards), 0
        self.shards.append(name)
        for key, features, _, (h, w) in self._pending:
            self.items[key] = [shard, offset, len(features), h, w]
            offset += len(features)
        self._pending = []
        with atomic_write(os.path.join(self.directory, INDEX), "w", encoding="utf-8") as f:
            json.dump({"dim": self.dim, "shards": self.shards, "items": self.items}, f)
