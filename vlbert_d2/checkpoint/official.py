"""Conversion of the official VL-BERT checkpoints (jackroos/VL-BERT) to this project's names.

The official files are ``torch.save``d dicts whose ``state_dict`` was saved under
DistributedDataParallel (keys may start with ``module.``), possibly in float16 (apex O2). Their
layout (``../shared/official-keys/`` in the project's design documents):

* ``image_feature_extractor.backbone.*``: torchvision-named ResNet (``conv1``/``bn1``,
  ``layerN.i.convK``/``bnK``/``downsample.{0,1}``) up to ``layer3`` (res4), caffe style;
* ``image_feature_extractor.roi_head_feature_extractor.{0,1,2}``: res5, stored a second time as
  ``image_feature_extractor.head.0.{0,1,2}`` (the same weights);
* ``image_feature_extractor.obj_downsample.1``: the fusion Linear([geometry | appearance]);
* ``object_linguistic_embeddings`` ([IMG]), ``vlbert.end_embedding`` ([END]),
  ``vlbert.{word,position,token_type}_embeddings``, ``vlbert.embedding_LayerNorm``,
  ``vlbert.visual_ln_{text,object}``, ``vlbert.encoder.*`` (BERT names);
* fine-tuned VCR models wrap the encoder as ``vlbert._module.*`` and add a pooler,
  ``final_mlp.1`` (one logit per choice) and the RoI classifier ``cnn_loss_reg`` (``.0.dense``:
  the masked-RoI transform, ``.2``: Linear(H, 81)), which map to ``VCRHead``'s ``classifier``
  and ``roi_classifier``;
* fine-tuned VQA and RefCOCO+ models add ``final_mlp.{0,2}`` (a transform and a classifier);
* pre-trained models add the heads ``vlbert.mlm_head.*`` (transform and bias; the decoder
  ``vlbert.mlm_head.predictions.decoder.weight`` is tied to the word embeddings),
  ``vlbert.mvrc_head.*`` and the inputs ``object_mask_word_embedding`` (masked RoI token),
  ``aux_text_visual_embedding`` (text-only visual feature) and, precomputed variants,
  ``object_mask_visual_embedding``: they map to ``PretrainHead``/``PretrainEmbeddings`` for a
  pre-training model; for a VQA (RefCOCO+, VCR) model the MLM (masked-RoI) transform starts the
  head (VCR: its RoI classifier), as the official fine-tuning configs'
  ``PARTIAL_PRETRAIN_PREFIX_CHANGES`` do.

Keys this project has no place for (e.g. ``cnn_loss_reg`` for a VCR model built without the RoI
classification loss, the pre-training heads when converting for a fine-tuning model) are
reported as unmapped: the converter never drops a key silently.
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (inconsistent duplicates, shape mismatch)."""


@dataclass
class ConversionReport:
    """What happened to every key of the official state dict.

    Attributes:
        mapped: official key -> this project's key.
        duplicates: official keys equal to another mapped key (res5 stored twice, the tied
            MLM decoder), checked equal and not stored twice.
        ignored: official keys with no meaning here (BatchNorm step counters of frozen BN).
        unmapped: official keys this project has no parameter for.
    """

    mapped: Dict[str, str] = field(default_factory=dict)
    duplicates: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    unmapped: List[str] = field(default_factory=list)

    def summary(self):
        return (f"{len(self.mapped)} mapped, {len(self.duplicates)} duplicates checked and "
                f"skipped, {len(self.ignored)} ignored (BatchNorm counters), "
                f"{len(self.unmapped)} unmapped")


def _resnet_block_param(rest):
    """torchvision Bottleneck parameter name -> detectron2 BottleneckBlock name."""
    m = re.fullmatch(r"conv([123])\.weight", rest)
    if m:
        return f"conv{m.group(1)}.weight"
    m = re.fullmatch(r"bn([123])\.(weight|bias|running_mean|running_var)", rest)
    if m:
        return f"conv{m.group(1)}.norm.{m.group(2)}"
    if rest == "downsample.0.weight":
        return "shortcut.weight"
    m = re.fullmatch(r"downsample\.1\.(weight|bias|running_mean|running_var)", rest)
    if m:
        return f"shortcut.norm.{m.group(1)}"
    return None


_FE = r"image_feature_extractor\."
# (official key pattern, function of the match -> this project's key or None)
_RULES: List[Tuple[str, object]] = [
    (_FE + r"backbone\.conv1\.weight", lambda m: "region_extractor.backbone.stem.conv1.weight"),
    (_FE + r"backbone\.bn1\.(weight|bias|running_mean|running_var)",
     lambda m: f"region_extractor.backbone.stem.conv1.norm.{m.group(1)}"),
    (_FE + r"backbone\.layer([123])\.(\d+)\.(.+)",
     lambda m: _prefixed(f"region_extractor.backbone.res{int(m.group(1)) + 1}.{m.group(2)}.", m.group(3))),
    (_FE + r"roi_head_feature_extractor\.(\d+)\.(.+)",
     lambda m: _prefixed(f"region_extractor.res5.{m.group(1)}.", m.group(2))),
    (_FE + r"obj_downsample\.1\.(weight|bias)", lambda m: f"fusion.linear.{m.group(1)}"),
    (r"object_linguistic_embeddings\.weight", lambda m: "vl_bert.img_embedding"),
    (r"vlbert\.end_embedding\.weight", lambda m: "vl_bert.end_embedding"),
    (r"vlbert\.(word|position|token_type)_embeddings\.weight",
     lambda m: f"vl_bert.bert.embeddings.{m.group(1)}_embeddings.weight"),
    # Only in checkpoints trained with word_embedding_frozen (MODEL.VLBERT.WORD_EMBEDDING_FROZEN).
    (r"vlbert\.special_word_embeddings\.weight", lambda m: _SPECIAL_WORDS),
    (r"vlbert\.embedding_LayerNorm\.(weight|bias)", lambda m: f"vl_bert.bert.embeddings.LayerNorm.{m.group(1)}"),
    (r"vlbert\.visual_ln_(text|object)\.(weight|bias)", lambda m: f"vl_bert.visual_ln_{m.group(1)}.{m.group(2)}"),
    (r"vlbert\.encoder\.(.+)", lambda m: f"vl_bert.bert.encoder.{m.group(1)}"),
    (r"vlbert\.pooler\.dense\.(weight|bias)", lambda m: f"vl_bert.bert.pooler.dense.{m.group(1)}"),
    # VCR: final_mlp = (Dropout, Linear(H, 1)).
    (r"final_mlp\.1\.(weight|bias)", lambda m: f"head.classifier.1.{m.group(1)}"),
    # VQA ("mlm" classifier): final_mlp = (BertPredictionHeadTransform, Dropout, Linear(H, A));
    # RefCOCO+ ("mvrc"): final_mlp = (MVRC transform: dense + GELU, Dropout, Linear(H, 1)).
    (r"final_mlp\.0\.dense\.(weight|bias)", lambda m: f"head.transform.0.{m.group(1)}"),
    (r"final_mlp\.0\.LayerNorm\.(weight|bias)", lambda m: f"head.transform.2.{m.group(1)}"),
    (r"final_mlp\.2\.(weight|bias)", lambda m: f"head.classifier.1.{m.group(1)}"),
]
# Official keys that repeat another official key's tensor: (pattern, the key it repeats).
_DUPLICATES = [
    (_FE + r"head\.0\.(\d+)\.(.+)",
     lambda m: f"image_feature_extractor.roi_head_feature_extractor.{m.group(1)}.{m.group(2)}"),
    (r"vlbert\.mlm_head\.predictions\.decoder\.weight", lambda m: "vlbert.word_embeddings.weight"),
]
_SPECIAL_WORDS = "vl_bert.special_word_embeddings.weight"
# (1, H) embedding tables that are (H,) vectors here.
_VECTORS = {"vl_bert.img_embedding", "vl_bert.end_embedding", "pretrain_embeddings.mask_token",
            "pretrain_embeddings.text_only_visual", "pretrain_embeddings.masked_feature"}


def _prefixed(prefix, rest):
    name = _resnet_block_param(rest)
    return None if name is None else prefix + name


def _normalise_key(key):
    if key.startswith("module."):
        key = key[len("module."):]
    return key.replace("vlbert._module.", "vlbert.")


def convert_official_state_dict(state_dict, expected_shapes=None):
    """Convert an official VL-BERT state dict.

    Args:
        state_dict (dict[str, Tensor]): ``torch.load(path, weights_only=True)["state_dict"]`` of an official
            checkpoint (pre-trained or fine-tuned, end-to-end; keys with or without ``module.``).
        expected_shapes (dict[str, torch.Size] or None): this project's model's shapes; when
            given, every converted tensor must exist there with the same shape.

    Returns:
        (dict[str, Tensor], ConversionReport): float32 tensors under this project's names.

    Raises:
        ConversionError: a duplicate that differs from its original, two official keys mapping
            to the same name, or a shape mismatch (all such problems are listed at once).
    """
    source = {}
    for key, value in state_dict.items():
        norm = _normalise_key(key)
        if norm in source:
            raise ConversionError(f"keys '{key}' and another one both normalise to '{norm}'")
        source[norm] = value
    rules = (_RULES + _roi_classifier_rules(expected_shapes) + _head_from_pretraining_rules(source, expected_shapes)
             + _pretraining_rules(expected_shapes))
    report = ConversionReport()
    out, problems = {}, []
    for key, value in source.items():
        dup = _match(_DUPLICATES, key)
        if dup is not None:
            original = source.get(dup)
            if original is None or original.shape != value.shape or not torch.equal(original, value):
                problems.append(f"'{key}' should repeat '{dup}' but differs from it (or it is missing)")
            report.duplicates.append(key)
            continue
        if key.endswith("num_batches_tracked"):
            report.ignored.append(key)
            continue
        target = _match(rules, key)
        if target is None:
            report.unmapped.append(key)
            continue
        if target in out:
            problems.append(f"two official keys map to '{target}'")
        tensor = value.detach().to(torch.float32) if value.is_floating_point() else value.detach()
        if target in _VECTORS:
            tensor = tensor.reshape(-1)
        out[target] = tensor.contiguous()
        report.mapped[key] = target
    if expected_shapes is not None:
        for official, target in report.mapped.items():
            if target == _SPECIAL_WORDS and target not in expected_shapes:
                continue  # the model trains every word embedding: folded into them on loading (vl_bert.py)
            if target not in expected_shapes:
                problems.append(f"'{official}' -> '{target}': no such parameter in the model")
            elif tuple(expected_shapes[target]) != tuple(out[target].shape):
                problems.append(f"'{official}' -> '{target}': shape {tuple(out[target].shape)} "
                                f"but the model has {tuple(expected_shapes[target])}")
    if problems:
        raise ConversionError("cannot convert the checkpoint:\n  " + "\n  ".join(problems))
    return out, report


# VCR's RoI classifier: official cnn_loss_reg = (MVRC transform: dense + GELU, Dropout,
# Linear(H, 81)); here roi_classifier = (Linear, GELU, Dropout, Linear).
_ROI_CLASSIFIER_RULES = [
    (r"cnn_loss_reg\.0\.dense\.(weight|bias)", lambda m: f"head.roi_classifier.0.{m.group(1)}"),
    (r"cnn_loss_reg\.2\.(weight|bias)", lambda m: f"head.roi_classifier.3.{m.group(1)}"),
]


def _roi_classifier_rules(expected_shapes):
    """A fine-tuned VCR checkpoint's ``cnn_loss_reg`` maps to ``VCRHead.roi_classifier`` when
    the model has one (or when no model is given); for a VCR model built without the RoI
    classification loss it is reported as unmapped."""
    if expected_shapes is None or "head.roi_classifier.0.weight" in expected_shapes:
        return _ROI_CLASSIFIER_RULES
    return []


def _head_from_pretraining_rules(source, expected_shapes):
    """Where the official fine-tuning starts a task head from a pre-training head, so does the
    conversion of a pre-trained checkpoint for that task's model: the VQA transform from the MLM
    head's transform, the RefCOCO+ transform and VCR's RoI-classifier transform from the
    masked-RoI-classification transform (the official configs' PARTIAL_PRETRAIN_PREFIX_CHANGES:
    ``mlm_head.predictions.transform->final_mlp.0``, ``mvrc_head.transform->final_mlp.0``,
    ``mvrc_head.transform->cnn_loss_reg.0``). Only for a model with such a head (known from
    ``expected_shapes``) and a checkpoint without a fine-tuned head (no ``final_mlp`` or
    ``cnn_loss_reg``)."""
    if expected_shapes is None or any(k.startswith(("final_mlp.", "cnn_loss_reg.")) for k in source):
        return []
    if "head.roi_classifier.0.weight" in expected_shapes:  # VCR: dense, GELU (+ its own Linear)
        return [(r"vlbert\.mvrc_head\.transform\.dense\.(weight|bias)",
                 lambda m: f"head.roi_classifier.0.{m.group(1)}")]
    if "head.transform.2.weight" in expected_shapes:  # VQA: dense, GELU, LayerNorm
        return [(r"vlbert\.mlm_head\.predictions\.transform\.dense\.(weight|bias)",
                 lambda m: f"head.transform.0.{m.group(1)}"),
                (r"vlbert\.mlm_head\.predictions\.transform\.LayerNorm\.(weight|bias)",
                 lambda m: f"head.transform.2.{m.group(1)}")]
    if "head.transform.0.weight" in expected_shapes:  # RefCOCO+: dense, GELU
        return [(r"vlbert\.mvrc_head\.transform\.dense\.(weight|bias)",
                 lambda m: f"head.transform.0.{m.group(1)}")]
    return []


# The pre-training heads and inputs (PretrainHead / PretrainEmbeddings); the MLM decoder is
# tied to the word embeddings, so its official copy is a checked duplicate.
_PRETRAINING_RULES = [
    (r"vlbert\.mlm_head\.predictions\.transform\.dense\.(weight|bias)", lambda m: f"head.mlm_transform.0.{m.group(1)}"),
    (r"vlbert\.mlm_head\.predictions\.transform\.LayerNorm\.(weight|bias)",
     lambda m: f"head.mlm_transform.2.{m.group(1)}"),
    (r"vlbert\.mlm_head\.predictions\.bias", lambda m: "head.mlm_bias"),
    (r"vlbert\.mvrc_head\.transform\.dense\.(weight|bias)", lambda m: f"head.mvrc_transform.0.{m.group(1)}"),
    (r"vlbert\.mvrc_head\.region_cls_pred\.(weight|bias)", lambda m: f"head.mvrc_classifier.{m.group(1)}"),
    # (sic: the official attribute is "relationsip_head")
    (r"vlbert\.relationsip_head\.caption_image_relationship\.(weight|bias)",
     lambda m: f"head.rel_classifier.{m.group(1)}"),
    (r"object_mask_word_embedding\.weight", lambda m: "pretrain_embeddings.mask_token"),
    (r"aux_text_visual_embedding\.weight", lambda m: "pretrain_embeddings.text_only_visual"),
    (r"object_mask_visual_embedding\.weight", lambda m: "pretrain_embeddings.masked_feature"),
]


def _pretraining_rules(expected_shapes):
    """The pre-training heads map for a pre-training model (``PretrainHead``), or when no model
    is given; for a fine-tuning model they are reported as unmapped (only their transforms
    start task heads, see :func:`_head_from_pretraining_rules`)."""
    if expected_shapes is None or "head.mlm_transform.0.weight" in expected_shapes \
            or "head.mvrc_transform.0.weight" in expected_shapes:
        return _PRETRAINING_RULES
    return []


def _match(rules, key):
    for pattern, make in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return make(m)
    return None
