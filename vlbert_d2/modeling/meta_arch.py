"""VL-BERT as a detectron2 meta-architecture: one model, many tasks (the head differs).

:class:`VLBERT` runs the fine-tuning tasks; :class:`VLBERTPretrain` extends it with what only
pre-training needs (as detectron2's ``PanopticFPN`` extends ``GeneralizedRCNN``). Which one a task
runs in is its row of :mod:`vlbert_d2.tasks` (``MODEL.META_ARCHITECTURE``).
"""
import logging
from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, ImageList

from ..checkpoint.detector import load_detector_weights
from ..tasks import task_of_head
from ..text.tokenizer import build_tokenizer
from ..utils.boxes import WHOLE_IMAGE
from .bert import build_bert
from .ddp import keep_alive
from .heads import build_vlbert_head
from .visual import RegionFeatureExtractor, VisualFusion
from .vl_bert import VisualLinguisticBert


@dataclass
class VLBertBatch:
    """The layout of a batch of B inputs, for the head (beside the transformer outputs).

    Heads get their targets one way: from ``inputs``, the mapper's dicts (``label``,
    ``object_classes``, ``answer_target``, ``region_labels``, ``mlm_labels``...); this holds only
    how those inputs are laid out in the transformer's outputs.

    Attributes:
        num_choices (list[int]): number of text sequences of each input (S = their sum).
        seq_to_input (LongTensor): (S,) index of the input each sequence belongs to.
        object_mask (LongTensor): (B, N) 1 for real RoI slots (input i's RoIs first, in order),
            0 for padding.
        inputs (list[dict]): the mapper's input dicts: the task's fields and targets.
        text_only (bool): the inputs have no image (pre-training's text corpus).
        word_embeddings (Tensor): (V, H) BERT's word-embedding matrix (tied MLM decoder).
    """

    num_choices: List[int]
    seq_to_input: torch.Tensor
    object_mask: torch.Tensor = None
    inputs: List[dict] = None
    text_only: bool = False
    word_embeddings: torch.Tensor = None


def _pad_stack(tensors, value=0):
    """Stack (K_i, L_i) tensors into (sum K_i, max L_i), padding on the right."""
    length = max(t.shape[-1] for t in tensors)
    return torch.cat([nn.functional.pad(t, (0, length - t.shape[-1]), value=value) for t in tensors])


@META_ARCH_REGISTRY.register()
class VLBERT(nn.Module):
    """VL-BERT (Su et al., ICLR 2020), end to end from pixels.

    Each input (a dict made by a task's dataset mapper) holds:

    * ``image``: (3, H, W) tensor in ``INPUT.FORMAT``; or, in precomputed-feature mode,
      ``features``: (N, C) RoI appearance features and ``image_size``: (H, W) of the image the
      boxes refer to;
    * ``boxes``: (N, 4) RoIs (x1, y1, x2, y2) in pixels of ``image``, RoI 0 being the whole image;
    * ``masks`` (optional): (N, M, M) soft instance masks of the RoIs in box coordinates;
    * ``input_ids``, ``token_type_ids``, ``text_mask``, ``text_tags``: (K, L) the K text
      sequences (e.g. one per answer choice); ``text_tags`` is the RoI whose visual feature a
      token carries (0: the whole image);
    * the task's targets, which only its head reads (e.g. ``label``: int and
      ``object_classes``: (N,) class of each RoI, -1 for the whole image, for VCR).

    Pre-training's inputs (masked RoIs, text-only inputs) are :class:`VLBERTPretrain`'s.
    """

    @configurable
    def __init__(self, *, region_extractor, fusion, vl_bert, head, pixel_mean, pixel_std, fixed_pad=(0, 0),
                 words_see_whole_image=True):
        super().__init__()
        self.fixed_pad = tuple(fixed_pad)
        self.words_see_whole_image = words_see_whole_image
        self.region_extractor = region_extractor
        self.fusion = fusion
        self.vl_bert = vl_bert
        self.head = head
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        task = task_of_head(cfg.MODEL.VLBERT.HEAD)
        if task is not None and not issubclass(cls, META_ARCH_REGISTRY.get(task.meta_architecture)):
            raise ValueError(f"MODEL.VLBERT.HEAD={task.head!r} (task {task.name!r}) runs in MODEL.META_ARCHITECTURE "
                             f"{task.meta_architecture!r}, not {cls.__name__!r} (vlbert_d2/tasks.py)")
        region_extractor = RegionFeatureExtractor(cfg)
        if cfg.MODEL.VLBERT.DETECTOR_WEIGHTS:
            load_detector_weights(region_extractor, cfg.MODEL.VLBERT.DETECTOR_WEIGHTS)
        elif not cfg.MODEL.WEIGHTS and cfg.MODEL.RESNETS.NORM == "FrozenBN":
            logging.getLogger(__name__).warning(
                "The visual trunk starts from random weights, and its BatchNorm (and the stages "
                "below MODEL.BACKBONE.FREEZE_AT) are frozen: set MODEL.VLBERT.DETECTOR_WEIGHTS (the "
                "Visual Genome detector of the paper) or MODEL.WEIGHTS.")
        bert = build_bert(cfg, vocab_size=len(build_tokenizer(cfg)))
        obj_init = cfg.MODEL.VLBERT.VISUAL_LN_INIT_OBJECT
        vl_bert = VisualLinguisticBert(bert, visual_ln_init=cfg.MODEL.VLBERT.VISUAL_LN_INIT,
                                       visual_ln_init_object=None if obj_init < 0 else obj_init,
                                       word_embedding_frozen=cfg.MODEL.VLBERT.WORD_EMBEDDING_FROZEN)
        fusion = VisualFusion(
            appearance_dim=region_extractor.out_channels,
            geometry_dim=cfg.MODEL.VLBERT.GEOMETRY_DIM,
            hidden_size=vl_bert.hidden_size,
            dropout=cfg.MODEL.VLBERT.FUSION_DROPOUT,
            wave_length=cfg.MODEL.VLBERT.GEOMETRY_WAVE_LENGTH,
        )
        head = build_vlbert_head(cfg, vl_bert.hidden_size)
        if cfg.MODEL.VLBERT.FEATURE_CACHE or cfg.MODEL.VLBERT.DETECTION_FEATURES:
            # Precomputed features: the CNN is not run, so it must not expect gradients (DDP).
            region_extractor.requires_grad_(False)
        return {"region_extractor": region_extractor, "fusion": fusion, "vl_bert": vl_bert,
                "head": head, "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
                "fixed_pad": cfg.MODEL.VLBERT.FIXED_PAD,
                "words_see_whole_image": cfg.MODEL.VLBERT.WORDS_SEE_WHOLE_IMAGE}

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs):
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        batch = ImageList.from_tensors(images, self.region_extractor.backbone.size_divisibility)
        short, long = self.fixed_pad
        if short > 0 and long > 0:
            # The official VCR canvas: (short, long) for landscape images, (long, short) for
            # portrait ones, zero (the mean colour) beyond the image.
            h = max(short if im.shape[-2] <= im.shape[-1] else long for im in images)
            w = max(long if im.shape[-2] <= im.shape[-1] else short for im in images)
            if h < batch.tensor.shape[-2] or w < batch.tensor.shape[-1]:
                raise ValueError(f"MODEL.VLBERT.FIXED_PAD {self.fixed_pad}: an image of the batch is "
                                 f"larger ({tuple(batch.tensor.shape[-2:])}); raise it or INPUT.MAX_SIZE_*")
            tensor = F.pad(batch.tensor, (0, w - batch.tensor.shape[-1], 0, h - batch.tensor.shape[-2]))
            batch = ImageList(tensor, batch.image_sizes)
        return batch

    def region_features(self, batched_inputs, boxes):
        """RoI appearance features, from the CNN or, in precomputed-feature mode, from the inputs.

        Returns:
            (Tensor (R, C), list[(height, width)]): features of all RoIs, and the size of the
            image each input's boxes refer to.
        """
        if all("features" in x for x in batched_inputs):
            features = torch.cat([x["features"] for x in batched_inputs]).to(self.device, torch.float32)
            return features, [tuple(x["image_size"]) for x in batched_inputs]
        if any("features" in x for x in batched_inputs):
            raise ValueError("a batch mixes inputs with and without precomputed features")
        images = self.preprocess_image(batched_inputs)
        masks = [x["masks"].to(self.device) if "masks" in x else None for x in batched_inputs]
        return self.region_extractor(images.tensor, [Boxes(b) for b in boxes], masks), images.image_sizes

    def pack_text(self, batched_inputs):
        """The text rows of every input, padded to one length on the model's device.

        Returns:
            dict with ``num_choices`` (list[int]), ``seq_to_input`` (S,), and (S, L)
            ``input_ids``, ``token_type_ids``, ``text_mask``, and ``text_tags`` when the inputs
            have them.
        """
        dev = self.device
        num_choices = [x["input_ids"].shape[0] for x in batched_inputs]
        packed = {"num_choices": num_choices,
                  "seq_to_input": torch.repeat_interleave(torch.arange(len(batched_inputs), device=dev),
                                                          torch.tensor(num_choices, device=dev))}
        for key in ("input_ids", "token_type_ids", "text_mask", "text_tags"):
            if all(key in x for x in batched_inputs):
                packed[key] = _pad_stack([x[key] for x in batched_inputs]).to(dev)
        return packed

    def object_tokens(self, batched_inputs, masked_slots, seq_to_input):
        """The token embedding of every RoI slot of every sequence, or None for [IMG] everywhere
        (:class:`VLBERTPretrain` puts a learned [MASK] on masked RoIs).

        Args:
            masked_slots (callable): ``masked_slots(key)`` -> (B, N) bool, the RoI slots whose
                input's ``key`` entry is True.
        """
        return None

    def encode(self, batched_inputs, output_attentions=False):
        """Run the visual side and the transformer over every text sequence of the batch.

        Returns:
            (VLBertOutput, VLBertBatch)
        """
        dev = self.device
        boxes = [x["boxes"].to(dev, torch.float32) for x in batched_inputs]
        appearance, image_sizes = self.region_features(batched_inputs, boxes)

        counts = [len(b) for b in boxes]
        roi_to_input = torch.repeat_interleave(torch.arange(len(boxes), device=dev),
                                               torch.tensor(counts, device=dev))
        sizes = torch.tensor(image_sizes, device=dev, dtype=torch.float32)[roi_to_input]
        rois = self.fusion(appearance, torch.cat(boxes), sizes)  # (R, H)

        # (B, N, H) RoI embeddings, padded, and their mask.
        B, N = len(boxes), max(counts)
        slot = torch.cat([torch.arange(c, device=dev) for c in counts])
        obj = rois.new_zeros((B, N, rois.shape[-1]))
        obj[roi_to_input, slot] = rois
        obj_mask = torch.zeros((B, N), dtype=torch.long, device=dev)
        obj_mask[roi_to_input, slot] = 1

        text = self.pack_text(batched_inputs)
        seq_to_input = text["seq_to_input"]
        obj_seq = obj[seq_to_input]  # (S, N, H)
        text_visual = torch.gather(
            obj_seq, 1, text["text_tags"][..., None].expand(-1, -1, obj_seq.shape[-1]))
        if not self.words_see_whole_image:
            # Only the words tagged to an object carry a visual feature (MODEL.VLBERT.
            # WORDS_SEE_WHOLE_IMAGE False, a deviation of the pipeline's tiny VCR config).
            text_visual = text_visual * (text["text_tags"] != WHOLE_IMAGE)[..., None].to(text_visual.dtype)

        def masked_slots(key):
            masked = torch.zeros((B, N), dtype=torch.bool, device=dev)
            masked[roi_to_input, slot] = torch.cat([
                x.get(key, torch.zeros(c, dtype=torch.bool)) for x, c in zip(batched_inputs, counts)]).to(dev)
            return masked

        outputs = self.vl_bert(text["input_ids"], text["token_type_ids"], text["text_mask"], text_visual,
                               obj_seq, obj_mask[seq_to_input], output_attentions=output_attentions,
                               object_tokens=self.object_tokens(batched_inputs, masked_slots, seq_to_input))
        batch = VLBertBatch(
            num_choices=text["num_choices"],
            seq_to_input=seq_to_input,
            object_mask=obj_mask,
            inputs=batched_inputs,
            word_embeddings=self.vl_bert.word_embeddings.weight,
        )
        return outputs, batch

    def run_head(self, outputs, batch, unused=()):
        """The head's losses (training) or per-input results. In training, BERT's pooler, which
        the VQA, RefCOCO+ and pre-training heads do not read (nor the VCR head with
        ``MODEL.VLBERT.VCR.POOLING mean``), and the ``unused`` parameters stay
        in the graph with a zero gradient (:func:`~vlbert_d2.modeling.ddp.keep_alive`)."""
        out = self.head(outputs, batch)
        if self.training and out:
            key = next(iter(out))
            out[key] = out[key] + keep_alive(outputs.pooled, *unused)
        return out

    def forward(self, batched_inputs):
        """
        Returns:
            dict[str, Tensor] of losses in training; in inference a list with, per input (in
            order), the head's result dict.
        """
        if any("boxes" not in x for x in batched_inputs):
            raise ValueError("inputs without 'boxes' (text only) are pre-training's: they need "
                             "MODEL.META_ARCHITECTURE 'VLBERTPretrain' with MODEL.VLBERT.PRETRAIN.TEXT_FRACTION > 0")
        return self.run_head(*self.encode(batched_inputs))


@META_ARCH_REGISTRY.register()
class VLBERTPretrain(VLBERT):
    """VL-BERT for pre-training (paper section 3.3; the "pretrain" task, ``PretrainHead``).

    Besides :class:`VLBERT`'s inputs:

    * ``mvrc_masked`` (N,) bool: the RoIs whose [IMG] token becomes the learned [MASK] one (and,
      with precomputed features, whose feature becomes a learned vector);
    * inputs without ``boxes`` are text only (pre-training's text corpus): they have no RoI
      (only the [END] element follows the words), and every word's visual feature embedding is
      one learned vector. A batch may mix both kinds; each kind goes through the transformer
      separately and the head sees each.

    Its parameters are :class:`VLBERT`'s and ``pretrain_embeddings`` (:class:`PretrainEmbeddings`),
    under the same state-dict keys as before the split.
    """

    @configurable
    def __init__(self, *, pretrain_embeddings, **kwargs):
        super().__init__(**kwargs)
        self.pretrain_embeddings = pretrain_embeddings

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        p = cfg.MODEL.VLBERT.PRETRAIN
        precomputed = bool(cfg.MODEL.VLBERT.FEATURE_CACHE or cfg.MODEL.VLBERT.DETECTION_FEATURES)
        ret["pretrain_embeddings"] = PretrainEmbeddings(
            ret["vl_bert"].hidden_size, ret["region_extractor"].out_channels, with_mask_token=p.WITH_MVRC,
            with_text_only=p.TEXT_FRACTION > 0, with_masked_feature=p.WITH_MVRC and precomputed,
            std=ret["vl_bert"].bert.config.initializer_range)
        return ret

    def region_features(self, batched_inputs, boxes):
        features, image_sizes = super().region_features(batched_inputs, boxes)
        pe = self.pretrain_embeddings
        if (pe.masked_feature is not None and all("features" in x for x in batched_inputs)
                and any("mvrc_masked" in x for x in batched_inputs)):
            # Masked RoIs' precomputed features are replaced by a learned vector (official).
            masked = torch.cat([x.get("mvrc_masked", torch.zeros(len(x["boxes"]), dtype=torch.bool))
                                for x in batched_inputs]).to(self.device)
            features = torch.where(masked[:, None], pe.masked_feature, features)
        return features, image_sizes

    def object_tokens(self, batched_inputs, masked_slots, seq_to_input):
        if self.pretrain_embeddings.mask_token is None:
            return None
        # torch.where keeps the [MASK] token in the graph even when nothing is masked (DDP).
        return torch.where(masked_slots("mvrc_masked")[..., None], self.pretrain_embeddings.mask_token,
                           self.vl_bert.img_embedding)[seq_to_input]

    def encode_text_only(self, batched_inputs, output_attentions=False):
        """The transformer over text-only inputs: every word's visual feature embedding is the
        learned ``pretrain_embeddings.text_only_visual``; there is no RoI, but the [END] element
        closes the sequence (segment C, position = text length + 1), as in the official
        multi-task pre-training, where text-only rows pass through the visual-linguistic
        embedding with an empty set of RoIs.

        Returns:
            (VLBertOutput, VLBertBatch)
        """
        pe = self.pretrain_embeddings
        if pe.text_only_visual is None:
            raise ValueError("inputs without 'boxes' (text only) need MODEL.VLBERT.PRETRAIN.TEXT_FRACTION > 0")
        dev = self.device
        text = self.pack_text(batched_inputs)
        input_ids, text_mask = text["input_ids"], text["text_mask"]
        text_visual = pe.text_only_visual.expand(*input_ids.shape, -1)
        # Zero RoIs (not None): the sequence is [text | END].
        no_objects = text_visual.new_zeros((input_ids.shape[0], 0, text_visual.shape[-1]))
        outputs = self.vl_bert(input_ids, text["token_type_ids"], text_mask, text_visual, no_objects,
                               text_mask.new_zeros((input_ids.shape[0], 0)),
                               output_attentions=output_attentions)
        batch = VLBertBatch(
            num_choices=text["num_choices"],
            seq_to_input=text["seq_to_input"],
            object_mask=torch.zeros((len(batched_inputs), 0), dtype=torch.long, device=dev),
            inputs=batched_inputs, text_only=True,
            word_embeddings=self.vl_bert.word_embeddings.weight,
        )
        return outputs, batch

    def forward(self, batched_inputs):
        """
        Returns:
            dict[str, Tensor] of losses in training (summed over the kinds of inputs); in
            inference a list with, per input (in order), the head's result dict.
        """
        text_only = [i for i, x in enumerate(batched_inputs) if "boxes" not in x]
        if not text_only:
            # No text-only input in this batch: the text-only vector stays in the graph (DDP).
            tov = self.pretrain_embeddings.text_only_visual
            return self.run_head(*self.encode(batched_inputs), unused=() if tov is None else (tov,))
        visual = [i for i, x in enumerate(batched_inputs) if "boxes" in x]
        results = []
        for group, encode in ((visual, self.encode), (text_only, self.encode_text_only)):
            if group:
                results.append((group, self.run_head(*encode([batched_inputs[i] for i in group]))))
        if self.training:
            losses = {}
            for _, group_losses in results:
                for k, v in group_losses.items():
                    losses[k] = losses[k] + v if k in losses else v
            return losses
        ordered = [None] * len(batched_inputs)
        for group, group_results in results:
            for i, r in zip(group, group_results):
                ordered[i] = r
        return ordered


class PretrainEmbeddings(nn.Module):
    """The learned input vectors that only pre-training uses (official names in brackets).

    Attributes:
        mask_token: (H,) token embedding of a masked RoI, instead of [IMG]
            (``object_mask_word_embedding``).
        text_only_visual: (H,) visual feature embedding of every word of a text-only input
            (``aux_text_visual_embedding``).
        masked_feature: (C,) appearance feature of a masked RoI in precomputed-feature mode,
            starting at zero (``object_mask_visual_embedding``).
    """

    def __init__(self, hidden_size, feature_dim, with_mask_token=True, with_text_only=True,
                 with_masked_feature=False, std=0.02):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(hidden_size) * std) if with_mask_token else None
        self.text_only_visual = nn.Parameter(torch.randn(hidden_size) * std) if with_text_only else None
        self.masked_feature = nn.Parameter(torch.zeros(feature_dim)) if with_masked_feature else None
