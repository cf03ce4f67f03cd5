"""Per-record checks before iteration 0: fail fast, never silently.

A bad record (a missing or corrupt image, detection file or zip member, an inverted box, a NaN
feature) used to surface only when the sampler reached it: a clear error, but at iteration 201
after minutes of training, with no checkpoint. Here every record of a dataset is checked before
training or evaluation starts:

- the task's own dataset mapper (the training form for training datasets, under seeded
  generators, the evaluation form otherwise) runs once on the record, so the check covers
  exactly what training or evaluation would fail on (the readers it calls refuse
  non-finite values, zero-area boxes, wrong sizes, with the file, line and field named);
- the record's boxes are compared with its image's size: a box with no area left inside the
  image is a bad record; one partly outside is clipped by the mapper, and counted here so that
  the clipping is logged instead of silent.

The work runs in ``DATALOADER.NUM_WORKERS`` processes (0 or 1: in the calling one) with a
progress bar; in a distributed run every process checks its share of the records and the results
are gathered, so that all processes keep the same records; and each good record is cached on
disk under a key made of the record's content and the (path, size, mtime) of every file it
names, so a second run over unchanged data starts at once (only the bad records, if any, are
checked again).
``DATALOADER.BAD_RECORDS`` decides what bad records do: "error" (stop, listing them) or "skip"
(drop them, count them, write their list to ``OUTPUT_DIR``). ``tools/check_dataset.py`` runs
the same check alone.
"""
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import sqlite3
import time

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from ..utils.files import ZIP_SEPARATOR, atomic_write, split_zip_path
from ..utils.records import note_skipped
from ..utils.seeding import seeded_rngs
from .datasets.vcr import load_vcr_metadata
from .detections import read_detection

logger = logging.getLogger(__name__)

# Part of every cache key: bump it when what the check does changes, so that results cached by
# an older version are computed again.
CHECK_VERSION = 1
POLICIES = ("error", "skip")
MAX_LISTED = 20  # bad records listed in an error message (the file holds them all)
_CACHE_FILE = "record_checks.sqlite3"


class BadRecordsError(ValueError):
    """Bad records found under ``DATALOADER.BAD_RECORDS = "error"``; the message lists them."""


class BadBoxError(ValueError):
    """A box with no area inside its image; the message names the file and the field."""


@dataclasses.dataclass
class BadRecord:
    """One record that failed its check.

    Attributes:
        index (int): position of the record in the checked list.
        record (str): where the record comes from (its ``source``: "file.jsonl:LINE", ...).
        field (str): the field (or file-naming key) at fault, "" when the error names none.
        file (str): the file at fault, "" when the error names none.
        error (str): the exception's type.
        message (str): the exception's message.
    """
    index: int
    record: str
    field: str
    file: str
    error: str
    message: str

    def line(self):
        field = f" [{self.field}]" if self.field else ""
        return f"{self.record}{field}: {self.error}: {self.message}"


@dataclasses.dataclass
class RecordCheckReport:
    """What :func:`check_records` found in one dataset.

    Attributes:
        dataset (str): the dataset's name.
        checked (int): records checked.
        cache_hits (int): records whose result came from the cache (not mapped again).
        bad (list[BadRecord]): the bad records, in dataset order.
        clipped_boxes (int): boxes partly outside their image (clipped to it by the mappers).
        clipped_records (int): records with at least one such box.
        seconds (float): wall time of the check.
    """
    dataset: str
    checked: int = 0
    cache_hits: int = 0
    bad: list = dataclasses.field(default_factory=list)
    clipped_boxes: int = 0
    clipped_records: int = 0
    seconds: float = 0.0

    def summary(self):
        return (f"dataset '{self.dataset}': {self.checked} records checked ({self.cache_hits} from the "
                f"cache) in {self.seconds:.1f} s: {len(self.bad)} bad, {self.clipped_boxes} boxes clipped "
                f"to the image in {self.clipped_records} records")


# ---------------------------------------------------------------------------------------------
# The check of one record


def _path_values(d):
    """(key, value) of the record's top-level strings that name files: paths (plain or
    ``archive.zip@/member``), whether or not they exist (so that a file appearing later
    changes the record's cache key). ``source`` says where the record itself was read."""
    for key, value in d.items():
        if key != "source" and isinstance(value, str) and (
                ZIP_SEPARATOR in value or os.sep in value or os.path.isfile(value)):
            yield key, value


def _record_boxes(d, read_vcr_metadata):
    """The record's boxes in pixels of its original image, with that image's size.

    Yields:
        (file or record naming them, field, (N, 4) array, width, height)
    """
    if "metadata_file" in d and "objects" in d:  # VCR
        if read_vcr_metadata:
            meta = load_vcr_metadata(d["metadata_file"], len(d["objects"]), d.get("source", "?"))
            yield d["metadata_file"], "boxes", meta["boxes"], meta["width"], meta["height"]
    elif "detection_file" in d:  # VQA, pre-training captions
        det = read_detection(d["detection_file"])
        yield d["detection_file"], "boxes", det["boxes"], det["image_w"], det["image_h"]
    elif "gt_box" in d and "boxes" in d:  # RefCOCO+: boxes from instances.json / the proposals
        where = d.get("source", "?")
        yield where, "boxes", d["boxes"], d["width"], d["height"]
        if d["gt_box"] not in d["boxes"]:  # else checked (and counted) once, among the candidates
            yield where, "gt_box", [d["gt_box"]], d["width"], d["height"]


def _check_boxes(d, read_vcr_metadata):
    """Number of the record's boxes partly outside their image.

    Raises:
        BadBoxError: a box of zero (or negative) area, or none left once clipped to the image.
    """
    clipped = 0
    for where, field, boxes, w, h in _record_boxes(d, read_vcr_metadata):
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        c = b.copy()
        c[:, 0::2] = c[:, 0::2].clip(0, w)
        c[:, 1::2] = c[:, 1::2].clip(0, h)
        for i in range(len(b)):
            name = f"{field}[{i}]" if field == "boxes" else field
            if not (b[i, 0] < b[i, 2] and b[i, 1] < b[i, 3]):
                raise BadBoxError(f"{where}: field '{name}' is {b[i].tolist()}: not a finite box with "
                                  "x1 < x2 and y1 < y2 (zero-area or inverted)")
            if not (c[i, 0] < c[i, 2] and c[i, 1] < c[i, 3]):
                raise BadBoxError(f"{where}: field '{name}' is {b[i].tolist()}: no part of it lies "
                                  f"inside the {w}x{h} image")
        clipped += int((c != b).any(axis=1).sum())
    return clipped


_FIELD = re.compile(r"\bfields? '([^']+)'")


def _describe(error, d):
    """(field, file) that an error from checking ``d`` is about, "" where it names none."""
    message = str(error)
    named = [(message.find(v), k, v) for k, v in _path_values(d) if v in message]
    key, path = (min(named)[1], min(named)[2]) if named else ("", "")
    if not path:  # e.g. a VCR metadata file, named by its path at the start of the message
        head = message.split(": ", 1)[0]
        path = head if os.sep in head else ""
    m = _FIELD.search(message)
    return (m.group(1) if m else key), path


class _RecordChecker:
    """Callable: record -> {"error": [field, file, type, message] or None, "clipped": int}."""

    def __init__(self, cfg, is_train):
        from . import build_vlbert_mapper  # the package imports this module

        cfg = cfg.clone()
        cfg.defrost()
        # The sentence-image relationship task only swaps captions (it cannot fail on a record),
        # and building it would load every caption of the datasets in every worker.
        cfg.MODEL.VLBERT.PRETRAIN.WITH_REL = False
        # The training form checks what only training needs (labels, answers); its random
        # choices (flip, masking) are drawn from generators seeded per record, see __call__.
        self.mapper = build_vlbert_mapper(cfg, is_train=is_train)
        # With a feature cache the VCR mapper never reads the images' metadata: nor does the check.
        self.read_vcr_metadata = not cfg.MODEL.VLBERT.FEATURE_CACHE

    def __call__(self, d):
        try:
            with seeded_rngs(0):
                self.mapper(d)
            return {"error": None, "clipped": _check_boxes(d, self.read_vcr_metadata)}
        except Exception as e:  # any failure of the mapper is what the check is for
            field, path = _describe(e, d)
            return {"error": [field, path, type(e).__name__, str(e) or type(e).__name__], "clipped": 0}


_WORKER_CHECKER = None


def _init_worker(cfg, is_train):
    global _WORKER_CHECKER
    torch.set_num_threads(1)  # the processes share the cores
    _WORKER_CHECKER = _RecordChecker(cfg, is_train)


def _check_in_worker(d):
    return _WORKER_CHECKER(d)


def _map_records(cfg, is_train, records, workers, progress, what):
    """Yield (position, result) for every record, in order, checked in ``workers`` processes
    (0 or 1: in this one)."""
    from tqdm import tqdm

    bar = tqdm(total=len(records), desc=f"Checking {what}", unit="record", mininterval=0.5,
               disable=not progress or not records)
    done = 0
    try:
        # One worker process would do the same work as this one, plus its start-up.
        workers = min(workers, len(records))
        if workers > 1:
            # fork: the workers inherit the registered datasets (test-registered ones too) and
            # build their mapper from the config, as the data loader's workers do.
            context = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            chunk = max(1, min(32, len(records) // (4 * workers)))
            try:
                with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                            initargs=(cfg, is_train)) as pool:
                    for result in pool.map(_check_in_worker, records, chunksize=chunk):
                        yield done, result
                        done += 1
                        bar.update(1)
            except concurrent.futures.process.BrokenProcessPool:
                # A worker died (its mapper could not be built, or it was killed): go on in this
                # process, where a failure to build the mapper raises its own clear error.
                logger.warning("A record-check worker process died; checking the remaining %d records "
                               "in the main process", len(records) - done)
        if done < len(records):
            # Each record is mapped under seeded generators that are put back afterwards:
            # checking in process does not change the training's draws.
            checker = _RecordChecker(cfg, is_train)
            for d in records[done:]:
                yield done, checker(d)
                done += 1
                bar.update(1)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# The cache


def cache_dir(cfg):
    """``DATALOADER.CHECK_CACHE_DIR``, else ``$VLBERT_D2_CACHE/record_checks``, else
    ``$XDG_CACHE_HOME/vlbert_d2/record_checks`` (default ``~/.cache/vlbert_d2/record_checks``)."""
    if cfg.DATALOADER.CHECK_CACHE_DIR:
        return os.path.expanduser(cfg.DATALOADER.CHECK_CACHE_DIR)
    if os.environ.get("VLBERT_D2_CACHE"):
        return os.path.join(os.path.expanduser(os.environ["VLBERT_D2_CACHE"]), "record_checks")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vlbert_d2", "record_checks")


def _stat(path, memo):
    """(size, mtime_ns) of a file, of a zip member's archive (with the member's name, which is
    part of ``path``), or None when missing; memoised (many records share an archive)."""
    archive, _ = split_zip_path(path)
    target = archive or path
    if target not in memo:
        try:
            st = os.stat(target)
            memo[target] = (st.st_size, st.st_mtime_ns)
        except OSError:
            memo[target] = None
    return memo[target]


def _fingerprint(cfg, is_train):
    """What, beside the record and its files, decides a check's result: this module's version,
    the mapper's form, the input and model keys it is built from, and the feature cache it reads."""
    parts = [str(CHECK_VERSION), str(is_train), cfg.MODEL.VLBERT.HEAD, cfg.INPUT.dump(), cfg.MODEL.VLBERT.dump()]
    if cfg.MODEL.VLBERT.FEATURE_CACHE:
        parts.append(repr(_stat(os.path.join(cfg.MODEL.VLBERT.FEATURE_CACHE, "index.json"), {})))
    return hashlib.sha256("\0".join(parts).encode()).digest()


def _record_key(d, fingerprint, memo):
    h = hashlib.sha256(fingerprint)
    try:
        content = json.dumps(d, sort_keys=True, default=repr)
    except TypeError:  # keys of mixed types cannot be sorted
        content = repr(d)
    h.update(content.encode())
    for _, path in _path_values(d):
        h.update(repr((path, _stat(path, memo))).encode())
    return h.hexdigest()


class _ResultCache:
    """Check results by record key in an SQLite file; a cache that cannot be opened or written
    only costs time (it is reported once and not used)."""

    def __init__(self, directory):
        self.db = None
        try:
            os.makedirs(directory, exist_ok=True)
            self.db = sqlite3.connect(os.path.join(directory, _CACHE_FILE), timeout=60)
            self.db.execute("CREATE TABLE IF NOT EXISTS checks (key TEXT PRIMARY KEY, result TEXT)")
            self.db.commit()
        except (OSError, sqlite3.Error) as e:
            self._disable(f"cannot use the record-check cache in {directory} ({e}); checking without it")

    def _disable(self, message):
        logger.warning(message)
        if self.db is not None:
            self.db.close()
        self.db = None

    def get_many(self, keys):
        out = {}
        if self.db is None:
            return out
        keys = list(keys)
        try:
            for i in range(0, len(keys), 500):
                batch = keys[i:i + 500]
                rows = self.db.execute(f"SELECT key, result FROM checks WHERE key IN ({','.join('?' * len(batch))})",
                                       batch)
                out.update((k, json.loads(r)) for k, r in rows)
        except (sqlite3.Error, ValueError) as e:
            self._disable(f"the record-check cache is unreadable ({e}); checking without it")
            return {}
        return out

    def put_many(self, items):
        if self.db is None or not items:
            return
        try:
            self.db.executemany("INSERT OR REPLACE INTO checks VALUES (?, ?)",
                                [(k, json.dumps(r)) for k, r in items])
            self.db.commit()
        except sqlite3.Error as e:
            self._disable(f"cannot write the record-check cache ({e}); going on without it")

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None


# ---------------------------------------------------------------------------------------------
# Checking a dataset


def check_records(cfg, dataset_name, dicts, progress=True, is_train=False):
    """Check every record of a dataset (see the module docstring); nothing is dropped or raised.

    In a distributed run every process must call it with the same records: each checks its
    share of those the cache does not know, and the results are gathered.

    Args:
        cfg (CfgNode): the config the task's mapper is built from; ``DATALOADER.NUM_WORKERS``
            processes do the work (0 or 1: this one), ``DATALOADER.CHECK_CACHE_DIR`` caches it.
        dataset_name (str): for messages.
        dicts (list[dict]): the dataset's records.
        progress (bool): show a progress bar (on the main process).
        is_train (bool): check with the training form of the mapper.

    Returns:
        RecordCheckReport
    """
    start = time.perf_counter()
    report = RecordCheckReport(dataset_name, checked=len(dicts))
    fingerprint, memo = _fingerprint(cfg, is_train), {}
    keys = [_record_key(d, fingerprint, memo) for d in dicts]
    cache = _ResultCache(cache_dir(cfg))
    try:
        known = cache.get_many(set(keys))
        results = [known.get(k) for k in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        rank, world = comm.get_rank(), comm.get_world_size()
        if world > 1:
            # The processes read the cache at slightly different moments (while others write
            # it): share out the union of what any of them still has to check.
            todo = sorted(set().union(*comm.all_gather(todo)))
        report.cache_hits = len(dicts) - len(todo)
        if todo:
            logger.info("Checking %d records of '%s' (%d known from the cache %s) in %d processes",
                        len(todo), dataset_name, report.cache_hits, cache_dir(cfg),
                        max(1, min(cfg.DATALOADER.NUM_WORKERS, len(todo))))
        mine, pending, failure = todo[rank::world], [], None
        try:
            for position, result in _map_records(cfg, is_train, [dicts[i] for i in mine],
                                                 cfg.DATALOADER.NUM_WORKERS, progress and rank == 0, dataset_name):
                i = mine[position]
                results[i] = result
                # Only good results are kept: a failure may be transient or fixed without
                # changing the file's size or mtime (a permission, a mount), and bad records
                # are few.
                if result["error"] is None:
                    pending.append((keys[i], result))
                if len(pending) >= 1000:  # an interrupted check keeps what it has done
                    cache.put_many(pending)
                    pending = []
            cache.put_many(pending)
        except Exception as e:  # reported after the gather, so that no process waits forever
            failure = e
        if world > 1:
            parts = comm.all_gather((None if failure else [(i, results[i]) for i in mine],
                                     repr(failure) if failure else None))
            if failure is None and any(f for _, f in parts):
                raise RuntimeError(f"the record check of '{dataset_name}' failed in another process: "
                                   + next(f for _, f in parts if f))
            if failure is None:
                for part, _ in parts:
                    for i, result in part:
                        results[i] = result
        if failure is not None:
            raise failure
    finally:
        cache.close()
    for i, (d, result) in enumerate(zip(dicts, results)):
        if result["error"] is not None:
            field, path, error, message = result["error"]
            report.bad.append(BadRecord(i, str(d.get("source", f"{dataset_name}[{i}]")), field, path, error, message))
        elif result["clipped"]:
            report.clipped_boxes += result["clipped"]
            report.clipped_records += 1
    report.seconds = time.perf_counter() - start
    return report


def _file_name(dataset_name):
    return "bad_records_" + re.sub(r"[^\w.+-]", "_", dataset_name) + ".jsonl"


def write_bad_records(report, output_dir):
    """Write every bad record of ``report`` as JSON lines to
    ``output_dir/bad_records_<dataset>.jsonl``; returns the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, _file_name(report.dataset))
    with atomic_write(path, "w", encoding="utf-8") as f:
        for bad in report.bad:
            f.write(json.dumps(dict(dataclasses.asdict(bad), dataset=report.dataset)) + "\n")
    return path


def format_bad_records(report, limit=MAX_LISTED):
    """The first ``limit`` bad records, one per line."""
    lines = [f"  {bad.line()}" for bad in report.bad[:limit]]
    if len(report.bad) > limit:
        lines.append(f"  ... and {len(report.bad) - limit} more")
    return "\n".join(lines)


def apply_policy(report, dicts, policy, output_dir=None, is_train=True):
    """Log a check's findings and apply ``DATALOADER.BAD_RECORDS`` to them.

    Returns:
        list[dict]: the records to use.

    Raises:
        BadRecordsError: bad records under the "error" policy, or no record left under "skip".
    """
    if policy not in POLICIES:
        raise ValueError(f"DATALOADER.BAD_RECORDS must be one of {POLICIES}, got {policy!r}")
    name, when = report.dataset, "training" if is_train else "evaluation"
    logger.info("Record check: %s", report.summary())
    if report.clipped_boxes:
        logger.warning("%s: %d boxes lie partly outside their image, in %d of %d records; they are "
                       "clipped to the image", name, report.clipped_boxes, report.clipped_records, report.checked)
    if not report.bad:
        return dicts
    path = None
    if output_dir and comm.is_main_process():
        try:
            path = write_bad_records(report, output_dir)
        except OSError as e:
            logger.warning("cannot write the list of bad records to %s: %s", output_dir, e)
    where = f"; all of them in {path}" if path else ""
    if policy == "error" or len(report.bad) == len(dicts):
        reason = ("" if policy == "error" else
                  " DATALOADER.BAD_RECORDS is 'skip' but no record would be left.")
        raise BadRecordsError(
            f"{len(report.bad)} of {report.checked} records of dataset '{name}' are bad, found before "
            f"{when} started.{reason} The first of them{where}:\n{format_bad_records(report)}\n"
            "Fix or remove these records, or set DATALOADER.BAD_RECORDS skip to leave them out.")
    logger.warning("%s: skipped %d bad records of %d (DATALOADER.BAD_RECORDS='skip')%s; the first: %s",
                   name, len(report.bad), report.checked, where, report.bad[0].line())
    bad = {b.index for b in report.bad}
    return [d for i, d in enumerate(dicts) if i not in bad]


def check_dataset_records(cfg, dataset_name, dicts, is_train, output_dir=None):
    """Check a dataset's records before training (``is_train``) or evaluation, and return the
    records to use under ``DATALOADER.BAD_RECORDS`` (all of them when
    ``DATALOADER.CHECK_RECORDS`` is off).

    In a distributed run each process checks a share of the records and the results are
    gathered, so that every process keeps the same records. Records left out ("skip") are noted
    for the evaluators (:func:`vlbert_d2.utils.records.skipped_records`).

    Args:
        cfg (CfgNode): the run's config.
        dataset_name (str): a registered dataset (messages and the bad-records file name it).
        dicts (list[dict]): its records.
        is_train (bool): for messages.
        output_dir (str or None): where the list of bad records is written; None: OUTPUT_DIR.

    Raises:
        BadRecordsError: see :func:`apply_policy`.
    """
    if not cfg.DATALOADER.CHECK_RECORDS:
        return dicts
    policy = cfg.DATALOADER.BAD_RECORDS
    if policy not in POLICIES:
        raise ValueError(f"DATALOADER.BAD_RECORDS must be one of {POLICIES}, got {policy!r}")
    if MetadataCatalog.get(dataset_name).get("pretrain_kind", None) == "text":
        # Text-corpus samples name no file and hold no number: their reader has checked them.
        return dicts
    report = check_records(cfg, dataset_name, dicts, is_train=is_train)
    kept = apply_policy(report, dicts, policy, cfg.OUTPUT_DIR if output_dir is None else output_dir, is_train)
    note_skipped(dataset_name, [dicts[b.index] for b in report.bad] if len(kept) < len(dicts) else [])
    return kept
