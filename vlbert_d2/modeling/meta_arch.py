"""VL-BERT as a detectron2 meta-architecture: one model, many tasks (the head differs)."""
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
from ..text.tokenizer import build_tokenizer
from .bert import build_bert
from .heads import build_vlbert_head
from .visual import RegionFeatureExtractor, VisualFusion
from .vl_bert import VisualLinguisticBert


@dataclass
class VLBertBatch:
    """What a head may need besides the transformer outputs, for a batch of B inputs.

    Attributes:
        num_choices (list[int]): number of text sequences of each input (S = their sum).
        seq_to_input (LongTensor): (S,) index of the input each sequence belongs to.
        labels (LongTensor): (B,) the input's label, -1 when unknown.
        object_classes (LongTensor): (B, N) class of every RoI slot: -1 for the whole image
            (background), -100 for padding and for inputs that give no classes.
        object_mask (LongTensor): (B, N) 1 for real RoI slots, 0 for padding.
        inputs (list[dict]): the mapper's input dicts, for task-specific fields (targets).
        text_only (bool): the inputs have no image (pre-training's text corpus).
        word_embeddings (Tensor): (V, H) BERT's word-embedding matrix (tied MLM decoder).
    """

    num_choices: List[int]
    seq_to_input: torch.Tensor
    labels: torch.Tensor
    object_classes: torch.Tensor
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
    * ``object_classes`` (optional): (N,) class of each RoI, -1 for the whole image;
    * ``input_ids``, ``token_type_ids``, ``text_mask``, ``text_tags``: (K, L) the K text
      sequences (e.g. one per answer choice); ``text_tags`` is the RoI whose visual feature a
      token carries (0: the whole image);
    * ``label`` (optional): int;
    * pre-training: ``mvrc_masked`` (N,) bool, the RoIs whose [IMG] token becomes the learned
      [MASK] one (and, with precomputed features, whose feature becomes a learned vector).

    Inputs without ``boxes`` are text only (pre-training's text corpus): they have no RoI
    (only the [END] element follows the words), and every word's visual feature embedding is one
    learned vector. A batch may mix both kinds; each kind goes through the transformer
    separately and the head sees each.
    """

    @configurable
    def __init__(self, *, region_extractor, fusion, vl_bert, head, pixel_mean, pixel_std,
                 pretrain_embeddings=None, fixed_pad=(0, 0)):
        super().__init__()
        self.fixed_pad = tuple(fixed_pad)
        self.region_extractor = region_extractor
        self.fusion = fusion
        self.vl_bert = vl_bert
        self.head = head
        self.pretrain_embeddings = pretrain_embeddings
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
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
                                       visual_ln_init_object=None if obj_init < 0 else obj_init)
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
        pretrain_embeddings = None
        if cfg.MODEL.VLBERT.HEAD == "PretrainHead":
            p = cfg.MODEL.VLBERT.PRETRAIN
            precomputed = bool(cfg.MODEL.VLBERT.FEATURE_CACHE or cfg.MODEL.VLBERT.DETECTION_FEATURES)
            pretrain_embeddings = PretrainEmbeddings(
                vl_bert.hidden_size, region_extractor.out_channels, with_mask_token=p.WITH_MVRC,
                with_text_only=p.TEXT_FRACTION > 0, with_masked_feature=p.WITH_MVRC and precomputed,
                std=vl_bert.bert.config.initializer_range)
        return {"region_extractor": region_extractor, "fusion": fusion, "vl_bert": vl_bert,
                "head": head, "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
                "pretrain_embeddings": pretrain_embeddings, "fixed_pad": cfg.MODEL.VLBERT.FIXED_PAD}

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
            pe = self.pretrain_embeddings
            if pe is not None and pe.masked_feature is not None and any("mvrc_masked" in x for x in batched_inputs):
                # Masked RoIs' precomputed features are replaced by a learned vector (official).
                masked = torch.cat([x.get("mvrc_masked", torch.zeros(len(x["boxes"]), dtype=torch.bool))
                                    for x in batched_inputs]).to(self.device)
                features = torch.where(masked[:, None], pe.masked_feature, features)
            return features, [tuple(x["image_size"]) for x in batched_inputs]
        if any("features" in x for x in batched_inputs):
            raise ValueError("a batch mixes inputs with and without precomputed features")
        images = self.preprocess_image(batched_inputs)
        masks = [x["masks"].to(self.device) if "masks" in x else None for x in batched_inputs]
        return self.region_extractor(images.tensor, [Boxes(b) for b in boxes], masks), images.image_sizes

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

        num_choices = [x["input_ids"].shape[0] for x in batched_inputs]
        seq_to_input = torch.repeat_interleave(torch.arange(B, device=dev),
                                               torch.tensor(num_choices, device=dev))
        input_ids = _pad_stack([x["input_ids"] for x in batched_inputs]).to(dev)
        token_type_ids = _pad_stack([x["token_type_ids"] for x in batched_inputs]).to(dev)
        text_mask = _pad_stack([x["text_mask"] for x in batched_inputs]).to(dev)
        text_tags = _pad_stack([x["text_tags"] for x in batched_inputs]).to(dev)
        obj_seq = obj[seq_to_input]  # (S, N, H)
        text_visual = torch.gather(
            obj_seq, 1, text_tags[..., None].expand(-1, -1, obj_seq.shape[-1]))

        object_tokens = None
        if self.pretrain_embeddings is not None and self.pretrain_embeddings.mask_token is not None:
            masked = torch.zeros((B, N), dtype=torch.bool, device=dev)
            masked[roi_to_input, slot] = torch.cat([
                x.get("mvrc_masked", torch.zeros(c, dtype=torch.bool)) for x, c in zip(batched_inputs, counts)]).to(dev)
            # torch.where keeps the [MASK] token in the graph even when nothing is masked (DDP).
            object_tokens = torch.where(masked[..., None], self.pretrain_embeddings.mask_token,
                                        self.vl_bert.img_embedding)[seq_to_input]
        outputs = self.vl_bert(input_ids, token_type_ids, text_mask, text_visual,
                               obj_seq, obj_mask[seq_to_input], output_attentions=output_attentions,
                               object_tokens=object_tokens)
        object_classes = torch.full((B, N), -100, dtype=torch.long, device=dev)
        object_classes[roi_to_input, slot] = torch.cat([
            x["object_classes"] if "object_classes" in x else torch.full((c,), -100, dtype=torch.long)
            for x, c in zip(batched_inputs, counts)]).to(dev)
        batch = VLBertBatch(
            num_choices=num_choices,
            seq_to_input=seq_to_input,
            labels=torch.tensor([int(x.get("label", -1)) for x in batched_inputs], device=dev),
            object_classes=object_classes,
            object_mask=obj_mask,
            inputs=batched_inputs,
            word_embeddings=self.vl_bert.word_embeddings.weight,
        )
        return outputs, batch

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
        if pe is None or pe.text_only_visual is None:
            raise ValueError("inputs without 'boxes' (text only) need MODEL.VLBERT.HEAD 'PretrainHead' "
                             "with MODEL.VLBERT.PRETRAIN.TEXT_FRACTION > 0")
        dev = self.device
        num_choices = [x["input_ids"].shape[0] for x in batched_inputs]
        B = len(batched_inputs)
        input_ids = _pad_stack([x["input_ids"] for x in batched_inputs]).to(dev)
        token_type_ids = _pad_stack([x["token_type_ids"] for x in batched_inputs]).to(dev)
        text_mask = _pad_stack([x["text_mask"] for x in batched_inputs]).to(dev)
        text_visual = pe.text_only_visual.expand(*input_ids.shape, -1)
        # Zero RoIs (not None): the sequence is [text | END].
        no_objects = text_visual.new_zeros((input_ids.shape[0], 0, text_visual.shape[-1]))
        outputs = self.vl_bert(input_ids, token_type_ids, text_mask, text_visual, no_objects,
                               text_mask.new_zeros((input_ids.shape[0], 0)),
                               output_attentions=output_attentions)
        batch = VLBertBatch(
            num_choices=num_choices,
            seq_to_input=torch.repeat_interleave(torch.arange(B, device=dev), torch.tensor(num_choices, device=dev)),
            labels=torch.tensor([int(x.get("label", -1)) for x in batched_inputs], device=dev),
            object_classes=torch.zeros((B, 0), dtype=torch.long, device=dev),
            object_mask=torch.zeros((B, 0), dtype=torch.long, device=dev),
            inputs=batched_inputs, text_only=True,
            word_embeddings=self.vl_bert.word_embeddings.weight,
        )
        return outputs, batch

    def _run_head(self, outputs, batch):
        out = self.head(outputs, batch)
        if self.training and out:
            # Heads that do not read BERT's pooler (VQA, RefCOCO+, pre-training) keep it in the
            # graph with a zero gradient: DistributedDataParallel expects one for every parameter.
            key = next(iter(out))
            out[key] = out[key] + 0.0 * outputs.pooled.sum()
        return out

    def forward(self, batched_inputs):
        """
        Returns:
            dict[str, Tensor] of losses in training (summed over the kinds of inputs); in
            inference a list with, per input (in order), the head's result dict.
        """
        text_only = [i for i, x in enumerate(batched_inputs) if "boxes" not in x]
        if not text_only:
            out = self._run_head(*self.encode(batched_inputs))
            pe = self.pretrain_embeddings
            if self.training and pe is not None and pe.text_only_visual is not None and out:
                # No text-only input in this batch: keep the vector in the graph with a zero
                # gradient (DistributedDataParallel expects every parameter to get one).
                key = next(iter(out))
                out[key] = out[key] + 0.0 * pe.text_only_visual.sum()
            return out
        visual = [i for i, x in enumerate(batched_inputs) if "boxes" in x]
        results = []
        for group, encode in ((visual, self.encode), (text_only, self.encode_text_only)):
            if group:
                results.append((group, self._run_head(*encode([batched_inputs[i] for i in group]))))
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
