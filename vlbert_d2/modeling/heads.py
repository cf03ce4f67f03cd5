"""Task heads on top of the shared VL-BERT.

Tasks differ only by their input formatting (data side) and their head and loss (here). A head
is registered in ``VLBERT_HEAD_REGISTRY`` and chosen by ``MODEL.VLBERT.HEAD``.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.utils.registry import Registry

VLBERT_HEAD_REGISTRY = Registry("VLBERT_HEAD")
VLBERT_HEAD_REGISTRY.__doc__ = """
Task heads of VL-BERT. A head is called as ``head(outputs, batch)`` where ``outputs`` is a
:class:`VLBertOutput` over all sequences of the batch and ``batch`` a :class:`VLBertBatch`; it
returns a dict of losses in training and a list of per-input results in inference.
"""


def build_vlbert_head(cfg, hidden_size, appearance_dim):
    return VLBERT_HEAD_REGISTRY.get(cfg.MODEL.VLBERT.HEAD)(cfg, hidden_size, appearance_dim)


@VLBERT_HEAD_REGISTRY.register()
class VCRHead(nn.Module):
    """Multiple choice (VCR): one logit per candidate from the pooled [CLS] output.

    Optionally adds the auxiliary RoI classification loss (the official ``cnn_loss_reg``) on
    the RoIs' appearance features.
    """

    @configurable
    def __init__(self, *, hidden_size, dropout=0.1, loss="bce", num_object_classes=0,
                 appearance_dim=0, roi_cls_loss_weight=0.0):
        """
        Args:
            hidden_size (int): H.
            dropout (float): dropout before the classifier.
            loss (str): "bce" (sigmoid BCE per choice, official) or "ce" (softmax over choices).
            num_object_classes (int): classes of the auxiliary RoI classifier (0: none).
            appearance_dim (int): dimension of the appearance features it reads.
            roi_cls_loss_weight (float): weight of that loss.
        """
        super().__init__()
        if loss not in ("bce", "ce"):
            raise ValueError(f"MODEL.VLBERT.VCR.LOSS must be 'bce' or 'ce', got {loss!r}")
        self.loss = loss
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, 1))
        self.roi_cls_loss_weight = roi_cls_loss_weight
        self.roi_classifier = None
        if roi_cls_loss_weight > 0 and num_object_classes > 0:
            self.roi_classifier = nn.Linear(appearance_dim, num_object_classes)

    @classmethod
    def from_config(cls, cfg, hidden_size, appearance_dim):
        from detectron2.data import MetadataCatalog

        classes = 0
        for name in cfg.DATASETS.TRAIN:
            classes = max(classes, len(MetadataCatalog.get(name).get("thing_classes", [])))
        v = cfg.MODEL.VLBERT.VCR
        return {"hidden_size": hidden_size, "dropout": v.CLASSIFIER_DROPOUT, "loss": v.LOSS,
                "num_object_classes": classes, "appearance_dim": appearance_dim,
                "roi_cls_loss_weight": v.ROI_CLS_LOSS_WEIGHT}

    def forward(self, outputs, batch):
        """
        Args:
            outputs (VLBertOutput): over S = sum of the choices of every input.
            batch (VLBertBatch): with ``seq_to_input``, ``labels`` and appearance features.

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
            # Official scaling: mean over all choices times the number of choices.
            loss = F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]
        else:
            loss = F.cross_entropy(logits, labels)
        losses = {"loss_vcr": loss}
        if self.roi_classifier is not None:
            keep = batch.object_classes >= 0
            if keep.any():
                roi_logits = self.roi_classifier(batch.appearance[keep])
                losses["loss_roi_cls"] = self.roi_cls_loss_weight * F.cross_entropy(
                    roi_logits, batch.object_classes[keep])
            else:
                losses["loss_roi_cls"] = logits.sum() * 0.0
        return losses
