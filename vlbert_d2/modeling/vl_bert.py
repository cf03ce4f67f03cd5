"""The visual-linguistic embedding in front of BERT (paper section 3.2, Figure 1).

Every input element's embedding is the sum of four: token embedding, visual feature embedding,
segment embedding and sequence position embedding. Text elements carry a word piece and the
visual feature of the whole image (or, in VCR, of the RoI the word refers to); visual elements
carry the learned [IMG] token and the RoI's feature. All RoIs share one position, right after
the text; a learned [END] element closes the sequence at the next position. Position and segment
embeddings and the final LayerNorm are BERT's own (``BertEmbeddings`` adds them to
``inputs_embeds``), so for a text-only input the outputs are exactly BERT's.
"""
import contextlib
import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

VISUAL_SEGMENT = 2  # segment C of the paper: the visual elements and [END]
# Word-piece ids below this are BERT's special tokens ([PAD], [unused*], [UNK], [CLS], [SEP],
# [MASK]): with frozen word embeddings theirs stay trainable (the official NUM_SPECIAL_WORDS).
NUM_SPECIAL_WORDS = 1000


@contextlib.contextmanager
def eager_attention(bert, needed):
    """Run a block with BERT's eager attention when ``needed`` (attention maps asked for: PyTorch's
    fused scaled-dot-product attention does not return them), then put back the one it had."""
    current = bert.config._attn_implementation
    if not needed or current == "eager":
        yield
        return
    bert.set_attn_implementation("eager")
    try:
        yield
    finally:
        bert.set_attn_implementation(current)


@dataclass
class VLBertOutput:
    """Outputs of :class:`VisualLinguisticBert` for a batch of S sequences.

    The sequence layout is ``[text (L slots) | RoIs (N slots) | END]``; padded slots are masked
    out of attention, so the layout is equivalent to the official packed one.

    Attributes:
        text (Tensor): (S, L, H) outputs at the text slots.
        objects (Tensor or None): (S, N, H) outputs at the RoI slots.
        pooled (Tensor): (S, H) BERT's pooler on [CLS].
        attention_mask (Tensor): (S, L + N + 1) 1 for real elements.
        attentions (tuple[Tensor] or None): per layer (S, heads, T, T) when asked for.
    """

    text: torch.Tensor
    objects: Optional[torch.Tensor]
    pooled: torch.Tensor
    attention_mask: torch.Tensor
    attentions: Optional[tuple] = None


class VisualLinguisticBert(nn.Module):
    """BERT with VL-BERT's visual-linguistic input embedding."""

    def __init__(self, bert, visual_ln_init=0.0, visual_ln_init_object=None, word_embedding_frozen=False):
        """
        Args:
            bert (transformers.BertModel): with ``type_vocab_size >= 3``.
            visual_ln_init (float): initial weight of the two visual LayerNorms.
            visual_ln_init_object (float or None): of the object-side one, if different.
            word_embedding_frozen (bool): BERT's word embeddings are not trained, but for the
                special tokens' (ids below :data:`NUM_SPECIAL_WORDS`), which are looked up in a
                trainable copy, ``special_word_embeddings`` (the official option).
        """
        super().__init__()
        if bert.config.type_vocab_size < 3:
            raise ValueError("VL-BERT needs a third segment embedding for the visual elements")
        self.bert = bert
        hidden = bert.config.hidden_size
        std = bert.config.initializer_range
        eps = bert.config.layer_norm_eps
        # Learned token embeddings of the [IMG] (visual element) and [END] tokens.
        self.img_embedding = nn.Parameter(torch.randn(hidden) * std)
        self.end_embedding = nn.Parameter(torch.randn(hidden) * std)
        self.visual_ln_text = nn.LayerNorm(hidden, eps=eps)
        self.visual_ln_object = nn.LayerNorm(hidden, eps=eps)
        if visual_ln_init_object is None:
            visual_ln_init_object = visual_ln_init
        for ln, init in ((self.visual_ln_text, visual_ln_init), (self.visual_ln_object, visual_ln_init_object)):
            nn.init.constant_(ln.weight, init)
            nn.init.zeros_(ln.bias)
        self.special_word_embeddings = None
        if word_embedding_frozen:
            self.word_embeddings.requires_grad_(False)
            # A copy, not a new random table: nothing is drawn, so the option leaves the random
            # stream (the layers built after it, dropout) as it is without it.
            self.special_word_embeddings = nn.Embedding.from_pretrained(
                self.word_embeddings.weight[:NUM_SPECIAL_WORDS].detach().clone(), freeze=False)
        self._register_load_state_dict_pre_hook(self._special_words_of_checkpoint)

    def _special_words_of_checkpoint(self, state_dict, prefix, *args):
        """Checkpoints with and without frozen word embeddings load into either model.

        * Frozen here, none in the checkpoint (BERT's, a VL-BERT trained without the option): the
          copy starts from the checkpoint's table, which is what the model computed. (The
          official code copies BERT's rows at construction and keeps them when it loads a
          pre-trained VL-BERT: a deviation, so that fine-tuning starts from what was pre-trained.)
        * Not frozen here, a copy in the checkpoint: the copy's rows replace the table's first
          rows (the special tokens are what the checkpoint computed; nothing silently dropped).
        """
        words_key = prefix + "bert.embeddings.word_embeddings.weight"
        key = prefix + "special_word_embeddings.weight"
        words = state_dict.get(words_key)
        if self.special_word_embeddings is not None:
            if key not in state_dict and words is not None:
                state_dict[key] = words[:self.special_word_embeddings.num_embeddings].clone()
        elif key in state_dict:
            special = state_dict.pop(key)
            if words is None:
                raise KeyError(f"{key}: a checkpoint with the special tokens' copy of frozen word embeddings "
                               f"but no {words_key}; build the model with MODEL.VLBERT.WORD_EMBEDDING_FROZEN True")
            words = words.clone()
            words[:len(special)] = special
            state_dict[words_key] = words
            logging.getLogger(__name__).info(
                "%s: the checkpoint's frozen-word-embedding copy (%d special tokens) written into the "
                "word embeddings (this model trains them all: MODEL.VLBERT.WORD_EMBEDDING_FROZEN False)",
                key, len(special))

    @property
    def hidden_size(self):
        return self.bert.config.hidden_size

    @property
    def word_embeddings(self):
        return self.bert.embeddings.word_embeddings

    def embed_words(self, input_ids):
        """(S, L, H) word embeddings; with frozen ones, the special tokens' from their trainable copy."""
        embeds = self.word_embeddings(input_ids)
        special = self.special_word_embeddings
        if special is None:
            return embeds
        is_special = (input_ids < special.num_embeddings)[..., None]
        return torch.where(is_special, special(input_ids.clamp(max=special.num_embeddings - 1)), embeds)

    def forward(self, input_ids, token_type_ids, text_mask, text_visual=None,
                object_visual=None, object_mask=None, output_attentions=False, object_tokens=None):
        """
        Args:
            input_ids (LongTensor): (S, L) word-piece ids, [CLS] first, padded with anything.
            token_type_ids (LongTensor): (S, L) segment of each text token (0 = A, 1 = B).
            text_mask (Tensor): (S, L) 1 for real text tokens (a prefix of each row).
            text_visual (Tensor or None): (S, L, H) visual feature embedding of each text token.
            object_visual (Tensor or None): (S, N, H) visual feature embedding of the RoIs;
                None for a text-only input (then no [IMG] or [END] element is added).
            object_mask (Tensor or None): (S, N) 1 for real RoIs.
            output_attentions (bool): also return the attention maps.
            object_tokens (Tensor or None): (S, N, H) token embedding of each visual element
                (pre-training puts a learned [MASK] token on masked RoIs); None: [IMG] for all.

        Returns:
            VLBertOutput
        """
        S, L = input_ids.shape
        text_mask = text_mask.to(torch.long)
        embeds = self.embed_words(input_ids)
        if text_visual is not None:
            embeds = embeds + self.visual_ln_text(text_visual)
        positions = torch.arange(L, device=input_ids.device).expand(S, L)
        types = token_type_ids
        mask = text_mask
        N = 0
        if object_visual is not None:
            N = object_visual.shape[1]
            if object_mask is None:
                object_mask = object_visual.new_ones((S, N))
            object_mask = object_mask.to(torch.long)
            text_len = text_mask.sum(dim=1, keepdim=True)  # (S, 1)
            tokens = self.img_embedding if object_tokens is None else object_tokens
            obj = tokens + self.visual_ln_object(object_visual)
            end = self.end_embedding.expand(S, 1, -1)
            embeds = torch.cat([embeds, obj, end], dim=1)
            positions = torch.cat([positions, text_len.expand(S, N), text_len + 1], dim=1)
            types = torch.cat([types, types.new_full((S, N + 1), VISUAL_SEGMENT)], dim=1)
            mask = torch.cat([mask, object_mask, mask.new_ones((S, 1))], dim=1)
        with eager_attention(self.bert, output_attentions):
            out = self.bert(inputs_embeds=embeds, token_type_ids=types, position_ids=positions,
                            attention_mask=mask, output_attentions=output_attentions)
        seq = out.last_hidden_state
        return VLBertOutput(
            text=seq[:, :L],
            objects=seq[:, L:L + N] if object_visual is not None else None,
            pooled=out.pooler_output,
            attention_mask=mask,
            attentions=out.attentions if output_attentions else None,
        )
