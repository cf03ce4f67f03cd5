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
``MODEL.VLBERT.PRETRAIN.TEXT_MAX_LEN`` word pieces.
"""
import logging
import os
import re

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


def load_text_corpus(files, min_words=64):
    """Read plain-text corpus files into samples of consecutive non-empty lines.

    Args:
        files (list[str]): UTF-8 text files, one passage per line.
        min_words (int): lines are joined until a sample has at least this many
            whitespace-separated words (the last sample of a file may have fewer).

    Returns:
        list[dict]: ``text`` and ``source`` (``file:first line``).
    """
    samples = []
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"text corpus file not found: {path}")
        parts, words, start = [], 0, None
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise PretrainFormatError(f"{path}:{lineno}: not UTF-8 text ({e})") from None
                if not line:
                    continue
                start = start or lineno
                parts.append(line)
                words += len(line.split())
                if words >= min_words:
                    samples.append({"text": " ".join(parts), "source": f"{path}:{start}"})
                    parts, words, start = [], 0, None
        if parts:
            samples.append({"text": " ".join(parts), "source": f"{path}:{start}"})
    return samples


def register_conceptual_captions(name, root, json_file):
    """Register a Conceptual Captions split (``json_file`` relative to ``root``)."""
    path = os.path.join(root, json_file)
    DatasetCatalog.register(name, lambda: load_conceptual_captions(path, root))
    MetadataCatalog.get(name).set(json_file=path, dataset_root=root, evaluator_type="pretrain",
                                  pretrain_kind="caption")


def register_text_corpus(name, root, files, min_words=64):
    """Register a text corpus (``files`` relative to ``root``)."""
    paths = [os.path.join(root, f) for f in files]
    DatasetCatalog.register(name, lambda: load_text_corpus(paths, min_words))
    MetadataCatalog.get(name).set(text_files=paths, dataset_root=root, evaluator_type="pretrain",
                                  pretrain_kind="text")
