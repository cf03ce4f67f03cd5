"""Task heads on top of the shared VL-BERT.

Tasks differ only by their input formatting (data side) and their head and loss (here). A head
is registered in ``VLBERT_HEAD_REGISTRY`` and chosen by ``MODEL.VLBERT.HEAD``.
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.utils.registry import Registry

logger = logging.getLogger(__name__)

VLBERT_HEAD_REGISTRY = Registry("VLBERT_HEAD")
VLBERT_HEAD_REGISTRY.__doc__ = """
Task heads of VL-BERT. A head is called as ``head(outputs, batch)`` where ``outputs`` is a
:class:`VLBertOutput` over all sequences of the batch and ``batch`` a :class:`VLBertBatch`; it
returns a dict of losses in training and a list of per-input results in inference.
"""


def build_vlbert_head(cfg, hidden_size):
    return VLBERT_HEAD_REGISTRY.get(cfg.MODEL.VLBERT.HEAD)(cfg, hidden_size)


@VLBERT_HEAD_REGISTRY.register()
class VCRHead(nn.Module):
    """Multiple choice (VCR): one logit per candidate from the pooled [CLS] output.

    Optionally adds the RoI classification loss of the official VCR fine-tuning: VL-BERT's output
    at each RoI slot goes through a transform (dense, GELU, LayerNorm) and a linear classifier
    over the object classes plus background; the whole-image RoI is background.
    """

    @configurable
    def __init__(self, *, hidden_size, dropout=0.1, loss="bce", num_object_classes=0,
                 roi_cls_loss_weight=0.0, layer_norm_eps=1e-12):
        """
        Args:
            hidden_size (int): H.
            dropout (float): dropout before the classifier.
            loss (str): "bce" (sigmoid BCE per choice, official) or "ce" (softmax over choices).
            num_object_classes (int): object classes of the RoI classifier, background not
                counted (0: no RoI classification).
            roi_cls_loss_weight (float): weight of that loss (0: none).
            layer_norm_eps (float): of the RoI transform's LayerNorm (BERT's).
        """
        super().__init__()
        if loss not in ("bce", "ce"):
            raise ValueError(f"MODEL.VLBERT.VCR.LOSS must be 'bce' or 'ce', got {loss!r}")
        self.loss = loss
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, 1))
        self.roi_cls_loss_weight = roi_cls_loss_weight
        self.roi_classifier = None
        if roi_cls_loss_weight > 0 and num_object_classes > 0:
            self.roi_classifier = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.GELU(),
                nn.LayerNorm(hidden_size, eps=layer_norm_eps),
                nn.Linear(hidden_size, num_object_classes + 1),  # + background (index 0)
            )

    @classmethod
    def from_config(cls, cfg, hidden_size):
        from detectron2.data import MetadataCatalog

        classes = 0
        for name in cfg.DATASETS.TRAIN:
            classes = max(classes, len(MetadataCatalog.get(name).get("thing_classes", [])))
        v = cfg.MODEL.VLBERT.VCR
        return {"hidden_size": hidden_size, "dropout": v.CLASSIFIER_DROPOUT, "loss": v.LOSS,
                "num_object_classes": classes, "roi_cls_loss_weight": v.ROI_CLS_LOSS_WEIGHT}

    def forward(self, outputs, batch):
        """
        Args:
            outputs (VLBertOutput): over S = sum of the choices of every input.
            batch (VLBertBatch): with ``num_choices``, ``labels``, ``seq_to_input`` and
                ``object_classes``.

        Returns:
            dict[str, Tensor] of losses in training; else a list, per input, of
            ``{"scores": (K,) probabilities, "logits": (K,)}``.
        """
        logits = self.classifier(outputs.pooled).squeeze(-1)  # (S,)
        per_input = list(logits.split(batch.num_choices))
        if not self.training:
            results = []
            for x in per_input:
                probs = x.sigmoid() if self.loss == "bce" else x.softmax(-1)
                results.append({"logits": x.detach(), "scores": probs.detach()})
            return results
        if any(n != batch.num_choices[0] for n in batch.num_choices):
            raise ValueError("all inputs of a training batch must have the same number of choices")
        logits = torch.stack(per_input)  # (B, K)
        labels = batch.labels
        if (labels < 0).any():
            raise ValueError("training inputs need a label (answer_label / rationale_label)")
        if self.loss == "bce":
            target = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:
            loss = F.cross_entropy(logits, labels)
        losses = {"loss_vcr": loss}
        if self.roi_classifier is not None:
            losses["loss_roi_cls"] = self.roi_cls_loss_weight * self._roi_loss(outputs, batch)
        return losses

    def _roi_loss(self, outputs, batch):
        # Targets per sequence: class + 1 for objects, 0 (background) for the whole image,
        # ignored for padding and for RoIs without a class.
        classes = batch.object_classes[batch.seq_to_input]  # (S, N)
        target = torch.where(classes >= -1, classes + 1, torch.full_like(classes, -100))
        logits = self.roi_classifier(outputs.objects)  # (S, N, C + 1)
        if (target >= 0).any():
            return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
        # Keep the classifier in the graph (DistributedDataParallel expects every parameter
        # to receive a gradient on every rank).
        return logits.sum() * 0.0


def _init_linears(module):
    """The official initialisation of the task heads' layers: Xavier-uniform weights, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def _prediction_transform(hidden_size, layer_norm_eps=1e-12):
    """BERT's prediction-head transform (dense, GELU, LayerNorm), as used by the MLM head."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(),
                         nn.LayerNorm(hidden_size, eps=layer_norm_eps))


@VLBERT_HEAD_REGISTRY.register()
class VQAHead(nn.Module):
    """VQA: the output at the [MASK] answer slot goes through an MLM-style transform and a
    linear classifier over the answer vocabulary; sigmoid BCE against the soft VQA scores."""

    @configurable
    def __init__(self, *, hidden_size, num_answers, dropout=0.1, bert_name=""):
        """
        Args:
            hidden_size (int): H.
            num_answers (int): A, the answer vocabulary's size.
            dropout (float): between the transform and the classifier.
            bert_name (str): BERT checkpoint whose MLM-head transform initialises the
                transform (official); empty or without an MLM head: random.
        """
        super().__init__()
        self.transform = _prediction_transform(hidden_size)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, num_answers))
        _init_linears(self)
        self._init_transform_from_mlm(bert_name)

    @classmethod
    def from_config(cls, cfg, hidden_size):
        from ..data.vqa_mapper import vocab_for_cfg

        return {"hidden_size": hidden_size, "num_answers": len(vocab_for_cfg(cfg)),
                "dropout": cfg.MODEL.VLBERT.VQA.CLASSIFIER_DROPOUT,
                "bert_name": cfg.MODEL.VLBERT.BERT_NAME}

    def _init_transform_from_mlm(self, bert_name):
        """As the official VQA model: the transform starts from BERT's MLM-head transform
        (``cls.predictions.transform``) when the BERT checkpoint has one."""
        from .bert import load_pretrained_tensors

        mlm = load_pretrained_tensors(bert_name, "cls.predictions.transform.") if bert_name else {}
        if not mlm:
            logger.info("VQA head: %s has no MLM head (cls.predictions.transform); its transform "
                        "starts from random weights", bert_name or "a random BERT")
            return
        mapping = {"dense.weight": "0.weight", "dense.bias": "0.bias",
                   "LayerNorm.weight": "2.weight", "LayerNorm.bias": "2.bias"}
        missing = [k for k in mapping if k not in mlm]
        if missing:
            raise ValueError(f"{bert_name}: cls.predictions.transform lacks {missing}")
        self.transform.load_state_dict({mapping[k]: mlm[k] for k in mapping})
        logger.info("VQA head: transform initialised from %s's cls.predictions.transform", bert_name)

    def forward(self, outputs, batch):
        """
        Returns:
            ``{"loss_vqa"}`` in training; else per input ``{"scores": (A,) sigmoid scores}``.
        """
        positions = torch.tensor([x["answer_position"] for x in batch.inputs], device=outputs.text.device)
        slot = outputs.text[torch.arange(len(positions), device=positions.device), positions]  # (B, H)
        logits = self.classifier(self.transform(slot))  # (B, A)
        if not self.training:
            return [{"scores": s} for s in logits.sigmoid().detach()]
        if any("answer_target" not in x for x in batch.inputs):
            raise ValueError("VQA training inputs need 'answer_target' (the soft answer scores)")
        target = torch.stack([x["answer_target"] for x in batch.inputs]).to(logits)
        # Summed over the answers, averaged over the batch: the official loss (BCE mean x A).
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(logits)
        return {"loss_vqa": loss}


@VLBERT_HEAD_REGISTRY.register()
class RefCOCOHead(nn.Module):
    """Referring expressions: each RoI's output goes through an MVRC-style transform and a
    linear scorer; sigmoid BCE against "IoU with the referred box > 0.5"; the prediction is the
    best-scoring RoI."""

    @configurable
    def __init__(self, *, hidden_size, dropout=0.1):
        super().__init__()
        # The official masked-RoI-classification (MVRC) transform: dense and GELU, no LayerNorm.
        self.transform = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, 1))
        _init_linears(self)

    @classmethod
    def from_config(cls, cfg, hidden_size):
        return {"hidden_size": hidden_size, "dropout": cfg.MODEL.VLBERT.REFCOCO.CLASSIFIER_DROPOUT}

    def forward(self, outputs, batch):
        """
        Returns:
            ``{"loss_ref"}`` in training; else per input ``{"scores": (N_i,) per RoI,
            "index": int}`` (the chosen RoI; 0 is the whole image).
        """
        logits = self.classifier(self.transform(outputs.objects)).squeeze(-1)  # (B, N)
        valid = batch.object_mask.bool()
        if not self.training:
            results = []
            for row, ok in zip(logits.detach(), valid):
                scores = row[ok]
                results.append({"scores": scores.sigmoid(), "index": int(scores.argmax())})
            return results
        if any("region_labels" not in x for x in batch.inputs):
            raise ValueError("RefCOCO+ training inputs need 'region_labels'")
        target = torch.zeros_like(logits)
        for i, x in enumerate(batch.inputs):
            target[i, : len(x["region_labels"])] = x["region_labels"].to(target)
        return {"loss_ref": F.binary_cross_entropy_with_logits(logits[valid], target[valid])}
