"""Building BERT from the config (hub name, directory or package), and reading tensors of a BERT
checkpoint. The tokenizer: :mod:`vlbert_d2.text.tokenizer`."""
import logging

from transformers import BertConfig, BertModel

# The tokenizer and the resolution of pretrained names live in the text layer (the data mappers
# use them too); re-exported here, where they used to be.
from ..text.tokenizer import (PACKAGE_PREFIX, PretrainedNotFoundError, build_tokenizer,  # noqa: F401
                              from_pretrained, resolve_pretrained)

logger = logging.getLogger(__name__)


def build_bert(cfg, vocab_size):
    """BERT with three segment embeddings (A, B and the visual segment C).

    Loaded from ``MODEL.VLBERT.BERT_NAME`` when set, else randomly initialised from the
    ``MODEL.VLBERT`` architecture keys. A loaded BERT has two segment rows; the third one
    (visual segment) is new and initialised like BERT initialises embeddings.

    Args:
        cfg: the config.
        vocab_size (int): vocabulary size of the tokenizer (for a randomly initialised BERT).

    Returns:
        transformers.BertModel with pooler and the attention of ``MODEL.VLBERT.ATTENTION_IMPL``
        (the model switches to the eager one when attention maps are asked for).
    """
    c = cfg.MODEL.VLBERT
    if c.ATTENTION_IMPL not in ("sdpa", "eager"):
        raise ValueError(f"MODEL.VLBERT.ATTENTION_IMPL must be 'sdpa' or 'eager', got {c.ATTENTION_IMPL!r}")
    if c.BERT_NAME:
        kwargs = {"attn_implementation": c.ATTENTION_IMPL}
        if c.NUM_LAYERS > 0:
            depth = from_pretrained(BertConfig, c.BERT_NAME).num_hidden_layers
            if c.NUM_LAYERS > depth:
                raise ValueError(f"MODEL.VLBERT.NUM_LAYERS={c.NUM_LAYERS} but {c.BERT_NAME} has only "
                                 f"{depth} layers (0 keeps them all)")
            kwargs["num_hidden_layers"] = c.NUM_LAYERS
        bert = from_pretrained(BertModel, c.BERT_NAME, **kwargs)
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
    config._attn_implementation = c.ATTENTION_IMPL
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
        model, info = from_pretrained(BertForPreTraining, name, output_loading_info=True)
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
