"""Extracting the regions of many images into per-image detection files (resumable, sharded).

Used by ``tools/extract_regions.py``; see its ``--help``.
"""
import logging
import os
import re
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vlbert_d2.data.common import read_image
from vlbert_d2.utils.files import atomic_write, remove_stale_temporaries
from vlbert_d2.data.detections import DetectionFormatError, read_detection, write_detection

from .regions import detection_record

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FAILED_REPORT = "failed_images.tsv"

__all__ = ["ImageItem", "image_id_from_name", "list_folder_images", "items_from_dataset_dicts",
           "plan_outputs", "is_done", "shard", "extract_regions", "write_failure_report"]


@dataclass(frozen=True)
class ImageItem:
    """One image to extract: its file, its id (stored in the record) and its output file."""

    path: str
    image_id: object
    output: str = ""


def image_id_from_name(name):
    """The id of an image file: the number its name ends with (COCO
    ``COCO_train2014_000000000042.jpg`` -> 42, Visual Genome ``2345.jpg`` -> 2345, as the VQA
    loader names detection files ``{image_id}.json``), else the name without extension."""
    stem = os.path.splitext(os.path.basename(name))[0]
    m = re.search(r"(\d+)$", stem)
    return int(m.group(1)) if m else stem


def list_folder_images(folder, recursive=False):
    """Image files of ``folder`` (by extension), sorted by path relative to it.

    Returns:
        list[ImageItem]: ``image_id`` from :func:`image_id_from_name`, no output yet.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--input: not a folder: {folder}")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, f), folder))
        if not recursive:
            break
    return [ImageItem(os.path.join(folder, rel), image_id_from_name(rel)) for rel in sorted(found)]


def items_from_dataset_dicts(dicts):
    """One item per distinct ``file_name`` of detectron2 dataset dicts (a dataset may have several
    records per image), sorted by file name; the id is the dicts' ``image_id`` when present."""
    by_file = {}
    for d in dicts:
        if "file_name" not in d:
            raise ValueError(f"dataset record without 'file_name': {sorted(d)}")
        by_file.setdefault(d["file_name"], d.get("image_id", image_id_from_name(d["file_name"])))
    return [ImageItem(f, by_file[f]) for f in sorted(by_file)]


def plan_outputs(items, output_dir, naming="image_id", root=None):
    """Give every item its output file.

    Args:
        items (list[ImageItem]): the images.
        output_dir (str): where the files go.
        naming (str): "image_id": ``{image_id}.json`` (what the VQA loader reads); "stem": the
            image's path relative to ``root`` (its file name when ``root`` is None) with
            ``.json`` for its extension (what ``tools/demo.py --boxes <folder>`` reads).
        root (str or None): folder the "stem" names are relative to.

    Raises:
        ValueError: two images would write the same file (names the first two).
    """
    planned, seen = [], {}
    for item in items:
        if naming == "image_id":
            name = f"{item.image_id}.json"
        elif naming == "stem":
            rel = os.path.relpath(item.path, root) if root else os.path.basename(item.path)
            name = os.path.splitext(rel)[0] + ".json"
        else:
            raise ValueError(f"naming must be 'image_id' or 'stem', got {naming!r}")
        out = os.path.join(output_dir, name)
        if out in seen:
            raise ValueError(f"{seen[out]} and {item.path} would both be written to {out}; "
                             + ("use --file-names stem" if naming == "image_id" else "rename one"))
        seen[out] = item.path
        planned.append(ImageItem(item.path, item.image_id, out))
    return planned


def is_done(path):
    """Whether ``path`` is a complete, valid detection file (an interrupted run leaves none
    half-written, but a file may be damaged otherwise: it is then extracted again)."""
    if not os.path.isfile(path):
        return False
    try:
        read_detection(path)
        return True
    except (DetectionFormatError, OSError, ValueError) as e:
        logger.warning("%s is not a valid detection file (%s): extracting it again", path, e)
        return False


def shard(items, rank, world_size):
    """The items of process ``rank`` among ``world_size``: every ``world_size``-th, so that each
    process gets a similar mix and together they cover each item exactly once."""
    return items[rank::world_size]


class _Checks(Dataset):
    """Validates existing output files in data-loader workers (each is parsed in full)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i].output, is_done(self.items[i].output)


def _done_outputs(existing, num_workers, progress):
    """The output files among ``existing`` items' that are valid detection files."""
    if not existing:
        return set()
    loader = DataLoader(_Checks(existing), batch_size=16, num_workers=num_workers, collate_fn=_collate)
    done = set()
    with tqdm(total=len(existing), unit="file", desc="checking existing files", disable=not progress,
              dynamic_ncols=True) as bar:
        for batch in loader:
            done.update(path for path, ok in batch if ok)
            bar.update(len(batch))
    return done


class _Images(Dataset):
    """Reads the images in data-loader workers; an unreadable one yields its error, not a crash."""

    def __init__(self, items, image_format):
        self.items, self.image_format = items, image_format

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        try:
            image = read_image(item.path, self.image_format, item.path)
            if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
                raise ValueError(f"image of shape {image.shape}")
            return item, image, None
        except Exception as e:  # noqa: BLE001  (any decoding error: report it, go on)
            return item, None, _reason(e)


def _reason(e):
    return f"{type(e).__name__}: {e}".replace("\n", " ").replace("\t", " ")


def _collate(batch):
    return batch


def extract_regions(detector, items, batch_size=1, num_workers=0, with_features=False, rank=0,
                    world_size=1, progress=True):
    """Extract the regions of this process's share of ``items`` into their output files.

    Files that exist and read back as valid detection files are skipped, so an interrupted run
    resumes where it stopped (each file is written atomically: never half-written, never two
    records for one image). An image that cannot be read or gives no region is reported and
    skipped; it never stops the run.

    Args:
        detector (RegionDetector): the detector.
        items (list[ImageItem]): all images, with their outputs (:func:`plan_outputs`), in a
            deterministic order (every process must be given the same list).
        batch_size (int): images per forward pass.
        num_workers (int): data-loader processes reading the images.
        with_features (bool): store the pooled features too.
        rank, world_size (int): this process and their number (see :func:`shard`).
        progress (bool): show a progress bar (images, rate, ETA).

    Returns:
        dict: "total" (this process's images), "skipped" (already done), "written",
        "failed" (list of (path, reason)).
    """
    mine = shard(items, rank, world_size)
    # The temporary files of writes an interrupted run left behind (never under an output name).
    for folder in sorted({os.path.dirname(it.output) for it in mine}):
        remove_stale_temporaries(folder)
    done = _done_outputs([it for it in mine if os.path.isfile(it.output)], num_workers, progress)
    todo = [it for it in mine if it.output not in done]
    stats = {"total": len(mine), "skipped": len(mine) - len(todo), "written": 0, "failed": []}
    logger.info("rank %d/%d: %d images, %d already extracted, %d to do", rank, world_size, len(mine),
                stats["skipped"], len(todo))
    if not todo:
        return stats
    loader = DataLoader(_Images(todo, detector.input_format), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate)
    bar = tqdm(total=len(todo), unit="img", desc=f"regions (rank {rank})" if world_size > 1 else "regions",
               disable=not progress, dynamic_ncols=True)
    try:
        for batch in loader:
            for item, reason in [(it, r) for it, im, r in batch if im is None]:
                _fail(stats, item, reason)
            good = [(it, im) for it, im, r in batch if im is not None]
            for (item, image), regions in zip(good, _detect(detector, good, stats)):
                if regions is None:
                    continue
                if len(regions) == 0:
                    _fail(stats, item, "the detector found no region")
                    continue
                h, w = image.shape[:2]
                write_detection(item.output, detection_record(item.image_id, w, h, regions, with_features))
                stats["written"] += 1
            bar.update(len(batch))
            bar.set_postfix(failed=len(stats["failed"]), refresh=False)
    finally:
        bar.close()
    return stats


def _detect(detector, good, stats):
    """Regions per image of a batch; when the batch fails, image by image, so that one bad image
    (None in the result, reported) does not lose the others."""
    if not good:
        return []
    try:
        return detector([im for _, im in good], image_format=detector.input_format)
    except Exception as e:  # noqa: BLE001
        if len(good) == 1:
            _fail(stats, good[0][0], "detector failed: " + _reason(e))
            return [None]
        logger.warning("a batch failed (%s): running its images one by one", _reason(e))
        return [r for pair in good for r in _detect(detector, [pair], stats)]


def _fail(stats, item, reason):
    logger.warning("skipping %s: %s", item.path, reason)
    stats["failed"].append((item.path, reason))


def write_failure_report(output_dir, failed):
    """Write ``failed_images.tsv`` (``path<TAB>reason`` per line) in ``output_dir``, or remove
    the previous run's when nothing failed. Returns its path or None."""
    path = os.path.join(output_dir, FAILED_REPORT)
    if not failed:
        if os.path.exists(path):
            os.remove(path)
        return None
    with atomic_write(path, "w", encoding="utf-8") as f:
        for p, reason in sorted(failed):
            f.write(f"{p}\t{reason}\n")
    return path
