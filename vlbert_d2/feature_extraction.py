"""Extract RoI appearance features with the model's own trunk into a feature cache."""
import logging

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from detectron2.data.build import trivial_batch_collator

from .data.feature_cache import FeatureCacheWriter

logger = logging.getLogger(__name__)


def extract_region_features(model, dataset_dicts, mapper, cache_dir, batch_size=4, num_workers=2,
                            flush_every=256, max_images=None, progress=True):
    """Write the RoI features of every image of ``dataset_dicts`` to ``cache_dir``.

    Images are keyed by ``img_fn``; those already in the cache are skipped, so an interrupted
    run is resumed by running it again (a shard is saved every ``flush_every`` images).

    Args:
        model (VLBERT): its ``region_extractor`` computes the features (in eval mode).
        dataset_dicts (list[dict]): dataset dicts (several may share an image).
        mapper (callable): an end-to-end (image-reading) inference mapper of the task.
        cache_dir (str): the cache directory (created or resumed).
        batch_size, num_workers (int): of the image-loading DataLoader.
        flush_every (int): images per shard.
        max_images (int or None): stop after this many new images (for tests and trials).
        progress (bool): a progress bar with ETA (tqdm) on stderr.

    Returns:
        dict: "extracted" (new images), "skipped" (already in the cache), "total" (images).
    """
    writer = FeatureCacheWriter(cache_dir, model.region_extractor.out_channels)
    unique = {}
    for d in dataset_dicts:
        unique.setdefault(d["img_fn"], d)
    todo = [d for key, d in sorted(unique.items()) if key not in writer]
    skipped = len(unique) - len(todo)
    if max_images is not None:
        todo = todo[:max_images]
    logger.info("%d images, %d already in %s, extracting %d", len(unique), skipped, cache_dir, len(todo))
    loader = DataLoader(_Mapped(todo, mapper), batch_size=batch_size, num_workers=num_workers,
                        shuffle=False, collate_fn=trivial_batch_collator)
    was_training = model.training
    model.eval()
    done = 0
    with torch.no_grad():
        for batch in tqdm(loader, total=len(loader), desc="extracting", unit="batch", disable=not progress):
            boxes = [x["boxes"].to(model.device, torch.float32) for x in batch]
            features, sizes = model.region_features(batch, boxes)
            for x, f, b, size in zip(batch, features.split([len(b) for b in boxes]), boxes, sizes):
                writer.add(x["img_fn"], f.cpu().numpy(), b.cpu().numpy(), size)
                done += 1
                if done % flush_every == 0:
                    writer.flush()
    writer.flush()
    model.train(was_training)
    return {"extracted": done, "skipped": skipped, "total": len(unique)}


class _Mapped(torch.utils.data.Dataset):
    """The mapped inputs of the images to extract, each with its cache key."""

    def __init__(self, dicts, mapper):
        self.dicts, self.mapper = dicts, mapper

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        out = self.mapper(self.dicts[i])
        out["img_fn"] = self.dicts[i]["img_fn"]
        return out
