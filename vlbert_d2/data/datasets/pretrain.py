"""Pre-training data (paper section 3.3, appendix A.2): Conceptual Captions and a text corpus.

Conceptual Captions, in the layout of the official preparation under ``root``::

    train_frcnn.json, val_frcnn.json      # JSON lines: {"image": ..., "caption": ..., "frcnn": ...}
    train_image.zip  (or train_image/)    # images; "image" is "train_image.zip@/<name>.jpg"
    train_frcnn.zip  (or train_frcnn/)    # one bottom-up-attention detection JSON per image

``image`` and ``frcnn`` are relative to ``root`` and may name a member of an uncompressed zip
archive (``name.zip@/inner/path``); when that archive is absent but the folder it was extracted
to exists (``name/inner/path``, an archive split as ``name.0.zip`` ... extracted into one
``name/``), the folder is read instead, as the official "non-zip mode". ``caption`` is a string
or a list of words (the official files store lists).

Text corpus (BooksCorpus and English Wikipedia in the paper): plain UTF-8 files, one passage per
line. Consecutive lines are joined until a sample has ``min_words`` words (as the official
``GeneralCorpus`` joins the following lines up to 64 tokens); the mapper then keeps at most
``MODEL.VLBERT.PRETRAIN.TEXT_MAX_LEN`` word pieces. The corpus is not read into memory (the
official ``GeneralCorpus`` holds every line in every process): a cached, memory-mapped index of
where each sample starts is all a process holds (:class:`TextCorpus`), and an evaluation reads
a fixed, bounded sample of it (``MODEL.VLBERT.PRETRAIN.TEXT_EVAL_SAMPLES``).
"""
import bisect
import hashlib
import logging
import os
import re
from array import array

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.files import ZIP_SEPARATOR, iter_json_lines

logger = logging.getLogger(__name__)

CAPTION_FIELDS = ("image", "caption", "frcnn")


class PretrainFormatError(ValueError):
    """A malformed pre-training record; the message names the file, the line and the field."""


def resolve_zip_or_folder(root, relpath):
    """``root/relpath`` when it names a zip member whose archive exists, else the folder it was
    extracted to (``a.zip@/x`` -> ``a/x``; ``a.3.zip@/x`` -> ``a/x``)."""
    path = os.path.join(root, relpath)
    if ZIP_SEPARATOR not in relpath:
        return path
    archive, inner = relpath.split(ZIP_SEPARATOR, 1)
    if os.path.isfile(os.path.join(root, archive + ".zip")):
        return path
    folder = re.sub(r"\.\d+$", "", archive)
    return os.path.join(root, folder, inner.lstrip("/"))


def load_conceptual_captions(json_file, root):
    """Read a Conceptual Captions JSON-lines file.

    Returns:
        list[dict]: per line, ``file_name``, ``detection_file`` (absolute; zip members as
        ``archive.zip@/inner``), ``caption`` (str), ``image_id`` (the line index) and ``source``
        (``file:line`` for error messages).

    Raises:
        PretrainFormatError: on a line that is not a JSON object with the three fields.
    """
    records = []
    resolved = {}  # archive prefix -> resolution, so a 3M-line file costs 3M string ops, not stats
    for source, rec in iter_json_lines(json_file, PretrainFormatError, CAPTION_FIELDS, skip_blank=True):
        caption = rec["caption"]
        if isinstance(caption, list) and all(isinstance(w, str) for w in caption):
            caption = " ".join(caption)
        if not isinstance(caption, str) or not caption.strip():
            raise PretrainFormatError(f"{source}: field 'caption' must be a non-empty string or "
                                      f"list of words, got {rec['caption']!r}")
        paths = {}
        for key in ("image", "frcnn"):
            rel = rec[key]
            if not isinstance(rel, str) or not rel:
                raise PretrainFormatError(f"{source}: field '{key}' must be a path, got {rel!r}")
            prefix = rel.split(ZIP_SEPARATOR, 1)[0] if ZIP_SEPARATOR in rel else None
            if prefix is None:
                paths[key] = os.path.join(root, rel)
            else:
                if prefix not in resolved:
                    resolved[prefix] = os.path.isfile(os.path.join(root, prefix + ".zip"))
                paths[key] = os.path.join(root, rel) if resolved[prefix] else resolve_zip_or_folder(root, rel)
        records.append({"file_name": paths["image"], "detection_file": paths["frcnn"],
                        "caption": caption, "image_id": len(records), "source": source})
    return records


INDEX_VERSION = 1


def index_cache_dir():
    """Where corpus indices are cached: ``$XDG_CACHE_HOME/vlbert_d2/text_index`` (default
    ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vlbert_d2", "text_index")


def _scan_corpus(path, min_words):
    """One pass over a corpus file: the byte offset and line number where each sample starts.

    A sample is a run of consecutive non-empty lines holding at least ``min_words``
    whitespace-separated words (the file's last sample may hold fewer).

    Returns:
        np.ndarray int64 (M, 2): (byte offset, line number) of each sample's first line.
    """
    starts = array("q")
    offset, words, open_sample = 0, 0, False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise PretrainFormatError(f"{path}:{lineno}: not UTF-8 text ({e})") from None
            if line:
                if not open_sample:
                    starts.extend((offset, lineno))
                    open_sample, words = True, 0
                words += len(line.split())
                if words >= min_words:
                    open_sample = False
            offset += len(raw)
    return np.frombuffer(starts, dtype=np.int64).reshape(-1, 2).copy() if starts else np.zeros((0, 2), np.int64)


def corpus_index(path, min_words):
    """The sample index of a corpus file (see :func:`_scan_corpus`), read memory-mapped from the
    cache (:func:`index_cache_dir`), built there on first use. The cache key is the file's
    absolute path, size and modification time and ``min_words``; where the cache cannot be
    written the index stays in memory (16 bytes per sample)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text corpus file not found: {path}")
    st = os.stat(path)
    key = hashlib.sha256(f"{INDEX_VERSION}\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0"
                         f"{min_words}".encode()).hexdigest()[:32]
    cached = os.path.join(index_cache_dir(), f"{os.path.basename(path)}.{key}.npy")
    if os.path.isfile(cached):
        try:
            return np.load(cached, mmap_mode="r")
        except (OSError, ValueError):  # a damaged cache entry: rebuild it
            pass
    logger.info("Indexing the text corpus %s (once; cached in %s)", path, index_cache_dir())
    index = _scan_corpus(path, min_words)
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = f"{cached}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, index)
        os.replace(tmp, cached)
        return np.load(cached, mmap_mode="r")
    except OSError as e:
        logger.warning("Could not cache the index of %s in %s (%s): it stays in memory", path, cached, e)
        return index


def read_corpus_sample(d):
    """The text of a corpus record made by :class:`TextCorpus`: its lines, stripped, blank ones
    dropped, joined by spaces."""
    with open(d["text_file"], "rb") as f:
        f.seek(d["text_offset"])
        data = f.read(d["text_bytes"])
    try:
        lines = [raw.decode("utf-8").strip() for raw in data.split(b"\n")]
    except UnicodeDecodeError as e:  # the file changed since it was indexed
        raise PretrainFormatError(f"{d['source']}: not UTF-8 text ({e}); was the file modified "
                                  "during the run?") from None
    return " ".join(line for line in lines if line)


class TextCorpus(torch.utils.data.Dataset):
    """Plain-text corpus files as a lazy dataset: the text stays on disk.

    Only a memory-mapped index of where each sample starts (:func:`corpus_index`) is opened;
    record ``i`` is a small dict that points into the file (``text_file``, ``text_offset``,
    ``text_bytes``, and ``source`` = ``file:first line``), read by :func:`read_corpus_sample`
    (the pre-training mapper does) when it is used.

    Args:
        files (list[str]): UTF-8 text files, one passage per line.
        min_words (int): lines are joined until a sample has at least this many words.
        indices (array or None): the samples kept, as indices into all of them (None: all).
    """

    def __init__(self, files, min_words=64, indices=None):
        self.files, self.min_words = list(files), min_words
        self._open()
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def _open(self):
        self._index = [corpus_index(p, self.min_words) for p in self.files]
        self._sizes = [os.path.getsize(p) for p in self.files]
        self._ends = np.cumsum([len(x) for x in self._index]).tolist()

    def __getstate__(self):  # pickled (spawned workers): the files, not the index
        return {"files": self.files, "min_words": self.min_words, "indices": self.indices}

    def __setstate__(self, state):
        self.files, self.min_words, self.indices = state["files"], state["min_words"], state["indices"]
        self._open()

    @property
    def num_samples(self):
        """Samples in the files (``len(self)`` counts those kept)."""
        return self._ends[-1] if self._ends else 0

    def __len__(self):
        return self.num_samples if self.indices is None else len(self.indices)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} of a corpus of {len(self)}")
        i = i % len(self)
        k = int(i if self.indices is None else self.indices[i])
        f = bisect.bisect_right(self._ends, k)
        index = self._index[f]
        j = k - (self._ends[f - 1] if f else 0)
        start, line = int(index[j, 0]), int(index[j, 1])
        end = int(index[j + 1, 0]) if j + 1 < len(index) else self._sizes[f]
        return {"text_file": self.files[f], "text_offset": start, "text_bytes": end - start,
                "source": f"{self.files[f]}:{line}"}

    def sample(self, count):
        """A fixed subset of at most ``count`` samples, evenly spread over the corpus (sample
        ``(2k + 1) * N // (2 * count)`` for ``k < count``): the same whenever the files are."""
        n = len(self)
        if count <= 0 or count >= n:
            return self
        picks = (np.arange(count, dtype=np.int64) * 2 + 1) * n // (2 * count)
        subset = object.__new__(TextCorpus)
        subset.__dict__.update(self.__dict__)  # shares the opened index
        subset.indices = picks if self.indices is None else self.indices[picks]
        return subset


def load_text_corpus(files, min_words=64):
    """Plain-text corpus files as a lazy :class:`TextCorpus` of samples of consecutive non-empty
    lines (each holding at least ``min_words`` whitespace-separated words; the last sample of a
    file may have fewer). Invalid UTF-8 is found here (the file is indexed once and cached).

    Raises:
        FileNotFoundError, PretrainFormatError (naming the file and line).
    """
    return TextCorpus(files, min_words)


def register_conceptual_captions(name, root, json_file):
    """Register a Conceptual Captions split (``json_file`` relative to ``root``)."""
    path = os.path.join(root, json_file)
    DatasetCatalog.register(name, lambda: load_conceptual_captions(path, root))
    MetadataCatalog.get(name).set(json_file=path, dataset_root=root, evaluator_type="pretrain",
                                  pretrain_kind="caption")


def register_text_corpus(name, root, files, min_words=64):
    """Register a text corpus (``files`` relative to ``root``): a lazy :class:`TextCorpus`
    (evaluation reads a fixed sample of it: ``vlbert_d2.data.test_loader``)."""
    paths = [os.path.join(root, f) for f in files]

    def load():
        return load_text_corpus(paths, min_words)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(text_files=paths, dataset_root=root, evaluator_type="pretrain",
                                  pretrain_kind="text")
