"""Task heads on top of the shared VL-BERT.

Tasks differ only by their input formatting (data side) and their head and loss (here). A head
is registered in ``VLBERT_HEAD_REGISTRY`` under the name its task's row of
:mod:`vlbert_d2.tasks` gives, and chosen by ``MODEL.VLBERT.HEAD``. Every head reads its targets
from the mapper's input dicts, ``batch.inputs``.
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.utils.registry import Registry

from ..text.tokenizer import build_tokenizer
from .bert import load_pretrained_tensors
from .ddp import keep_alive

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
    """Multiple choice (VCR): one logit per candidate from the pooled [CLS] output (or, with
    ``pooling="mean"``, a deviation of the pipeline's tiny VCR config, from the mean of the text
    outputs).

    As the official VCR model (``ResNetVLBERT`` of ``vcr/modules``, configs ``cfgs/vcr/*``):

    * ``classifier`` = the official ``final_mlp`` of ``CLASSIFIER_TYPE "1fc"`` (Dropout, then
      Linear(H, 1)), Xavier-uniform weight and zero bias;
    * ``roi_classifier`` = the official ``cnn_loss_reg`` (``CNN_LOSS_TOP``): the masked-RoI
      classification transform (dense + GELU, no LayerNorm), Dropout, Linear(H, C + 1), its
      linear layers initialised like BERT (normal, std 0.02, zero bias). It classifies VL-BERT's
      output at every real RoI slot of every choice's sequence (the whole image included, as
      background 0) into the object classes + background; cross-entropy averaged over all those
      slots, weighted by ``roi_cls_loss_weight`` (official ``CNN_LOSS_WEIGHT``). Fine-tuning from
      a pre-trained model starts its transform from the pre-trained masked-RoI transform
      (``HEADS_FROM_PRETRAINING``; the official configs' ``PARTIAL_PRETRAIN_PREFIX_CHANGES``).
    """

    @configurable
    def __init__(self, *, hidden_size, dropout=0.1, loss="bce", num_object_classes=0,
                 roi_cls_loss_weight=0.0, roi_cls_dropout=0.0, std=0.02, pooling="cls"):
        """
        Args:
            hidden_size (int): H.
            dropout (float): dropout before the classifier.
            loss (str): "bce" (sigmoid BCE per choice, official) or "ce" (softmax over choices).
            num_object_classes (int): object classes of the RoI classifier, background not
                counted (0: no RoI classification; ``MODEL.VLBERT.VCR.NUM_OBJECT_CLASSES``). VCR:
                the 80 COCO classes (official: 81 rows).
            roi_cls_loss_weight (float): weight of that loss (0: none).
            roi_cls_dropout (float): dropout between the RoI transform and the RoI classifier
                (official ``CNN_REG_DROPOUT``, 0 in every official config).
            std (float): initialisation of the RoI layers (BERT's initializer_range).
            pooling (str): what the classifier reads: "cls" (BERT's pooler on [CLS], official)
                or "mean" (the mean of the text outputs; ``MODEL.VLBERT.VCR.POOLING``).
        """
        super().__init__()
        if loss not in ("bce", "ce"):
            raise ValueError(f"MODEL.VLBERT.VCR.LOSS must be 'bce' or 'ce', got {loss!r}")
        if num_object_classes < 0 and roi_cls_loss_weight > 0:
            raise ValueError("MODEL.VLBERT.VCR.NUM_OBJECT_CLASSES is -1 (not filled): call "
                             "vlbert_d2.config.finalize_vlbert_config(cfg) before the config is frozen "
                             "(it counts the classes of DATASETS.TRAIN), or set it (VCR: 80)")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"MODEL.VLBERT.VCR.POOLING must be 'cls' or 'mean', got {pooling!r}")
        self.loss = loss
        self.pooling = pooling
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, 1))
        _init_linears(self.classifier)
        self.roi_cls_loss_weight = roi_cls_loss_weight
        self.roi_classifier = None
        if roi_cls_loss_weight > 0 and num_object_classes > 0:
            self.roi_classifier = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.GELU(),  # the MVRC transform
                nn.Dropout(roi_cls_dropout),
                nn.Linear(hidden_size, num_object_classes + 1),  # + background (index 0)
            )
            for m in self.roi_classifier.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=std)
                    nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, hidden_size):
        v = cfg.MODEL.VLBERT.VCR
        return {"hidden_size": hidden_size, "dropout": v.CLASSIFIER_DROPOUT, "loss": v.LOSS,
                "num_object_classes": v.NUM_OBJECT_CLASSES, "roi_cls_loss_weight": v.ROI_CLS_LOSS_WEIGHT,
                "roi_cls_dropout": v.CNN_REG_DROPOUT, "pooling": v.POOLING}

    def forward(self, outputs, batch):
        """
        Args:
            outputs (VLBertOutput): over S = sum of the choices of every input.
            batch (VLBertBatch): with ``num_choices``, ``seq_to_input``, ``object_mask`` and
                ``inputs``, whose ``label`` (int) and ``object_classes`` ((N,) class of each
                RoI, -1 for the whole image; optional) are the targets.

        Returns:
            dict[str, Tensor] of losses in training; else a list, per input, of
            ``{"scores": (K,) probabilities, "logits": (K,)}``.
        """
        logits = self.classifier(self._pooled(outputs)).squeeze(-1)  # (S,)
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
        labels = torch.tensor([int(x.get("label", -1)) for x in batch.inputs], device=logits.device)
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

    def _pooled(self, outputs):
        """(S, H) what the classifier reads: BERT's pooler on [CLS], or the mean of the real
        text outputs."""
        if self.pooling == "cls":
            return outputs.pooled
        L = outputs.text.shape[1]
        mask = outputs.attention_mask[:, :L, None].to(outputs.text.dtype)
        return (outputs.text * mask).sum(1) / mask.sum(1)

    def _roi_loss(self, outputs, batch):
        # Targets per sequence (the official ``objects[box_mask]`` repeated over the choices):
        # class + 1 for objects, 0 (background) for the whole image, ignored for padding and
        # for RoIs without a class.
        classes = _object_classes(batch)[batch.seq_to_input]  # (S, N)
        target = torch.where(classes >= -1, classes + 1, torch.full_like(classes, -100))
        logits = self.roi_classifier(outputs.objects)  # (S, N, C + 1)
        if (target >= 0).any():
            return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
        return keep_alive(logits)  # no classified RoI: a zero that keeps the classifier (DDP)


def _object_classes(batch):
    """(B, N) class of every RoI slot from the inputs' ``object_classes``: -1 for the whole image
    (background), -100 for padding and for inputs that give no classes."""
    mask = batch.object_mask.bool()
    classes = torch.full(mask.shape, -100, dtype=torch.long, device=mask.device)
    counts = mask.sum(1).tolist()
    classes[mask] = torch.cat([
        x["object_classes"] if "object_classes" in x else torch.full((c,), -100, dtype=torch.long)
        for x, c in zip(batch.inputs, counts)]).to(mask.device)
    return classes


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
        v = cfg.MODEL.VLBERT.VQA
        if v.NUM_ANSWERS <= 0:
            raise ValueError("MODEL.VLBERT.VQA.NUM_ANSWERS is 0 (not filled): call "
                             "vlbert_d2.config.finalize_vlbert_config(cfg) before freezing the config "
                             "(it reads the answer vocabulary, MODEL.VLBERT.VQA.ANSWER_VOCAB or the datasets')")
        return {"hidden_size": hidden_size, "num_answers": v.NUM_ANSWERS, "dropout": v.CLASSIFIER_DROPOUT,
                "bert_name": cfg.MODEL.VLBERT.BERT_NAME}

    def _init_transform_from_mlm(self, bert_name):
        """As the official VQA model: the transform starts from BERT's MLM-head transform
        (``cls.predictions.transform``), whether ``bert_name`` is a hub name, a cached one or a
        local directory. A BERT without an MLM head leaves it random, with a warning."""
        if not bert_name:
            logger.info("VQA head: no BERT checkpoint (MODEL.VLBERT.BERT_NAME empty); the transform "
                        "starts from random weights")
            return
        mlm = load_pretrained_tensors(bert_name, "cls.predictions.transform.")
        mapping = {"dense.weight": "0.weight", "dense.bias": "0.bias",
                   "LayerNorm.weight": "2.weight", "LayerNorm.bias": "2.bias"}
        if not mlm:
            logger.warning("VQA head: the BERT checkpoint %s has no MLM head (cls.predictions."
                           "transform): the head's transform starts from random weights, unlike "
                           "the official VQA model", bert_name)
            return
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


def _padded_rows(batch, key, width, device):
    """(B, N, width): each input's (N_i, width) ``key`` rows, zero-padded to the batch's N RoIs."""
    out = torch.zeros((*batch.object_mask.shape, width), device=device)
    for i, x in enumerate(batch.inputs):
        out[i, : len(x[key])] = x[key].to(device)
    return out


def _soft_ce(logits, targets, where, counts, name, training):
    """Soft cross-entropy of (M, C) logits against (M, C) distributions, averaged over the M rows;
    in evaluation each input's ``{name}_correct`` / ``{name}_total`` (argmax against argmax) for
    the rows ``where`` (B, N) selects.

    The log-softmax runs in fp32 whatever the logits' dtype: CPU autocast (bf16) leaves
    ``log_softmax`` in the input's precision, unlike CUDA's, which runs it in fp32 as it does
    ``cross_entropy`` (both autocasts do that one)."""
    loss = -(targets * F.log_softmax(logits.float(), -1)).sum(-1).mean()
    if not training:
        hits = _hits_per_row(logits.argmax(-1) == targets.argmax(-1), where)
        for c, h, n in zip(counts, hits, where.sum(1).tolist()):
            c[f"{name}_correct"], c[f"{name}_total"] = h, n
    return loss


def _pad_labels(rows, value):
    """(1, L_i) label rows -> (S, max L) padded with ``value``."""
    length = max(r.shape[-1] for r in rows)
    return torch.cat([F.pad(r, (0, length - r.shape[-1]), value=value) for r in rows])


def _hits_per_row(hits, where):
    """(M,) bool hits at the True entries of the (S, X) ``where`` -> list of S counts."""
    row = where.nonzero()[:, 0]
    per_row = torch.zeros(len(where), dtype=torch.long, device=hits.device)
    return per_row.index_add_(0, row, hits.to(torch.long)).tolist()


@VLBERT_HEAD_REGISTRY.register()
class PretrainHead(nn.Module):
    """Pre-training (paper section 3.3): masked language modelling with visual clues (and plain
    MLM on text-only inputs), masked RoI classification with linguistic clues, and, off by
    default, sentence-image relationship prediction.

    * MLM: BERT's prediction head: transform (dense, GELU, LayerNorm) and a decoder tied to the
      word embeddings plus a bias; transform and bias start from BERT's ``cls.predictions`` when
      the BERT checkpoint has them. Cross-entropy, averaged over the masked word pieces.
    * Masked RoI classification: the official transform (dense, GELU) and a linear classifier
      over the detector's classes; soft cross-entropy against the detector's class distribution,
      averaged over the chosen RoIs.
    * Relationship: a linear 2-way classifier on the pooled [CLS] output.

    Losses: ``loss_mlm`` (captions), ``loss_mlm_text`` (text corpus), ``loss_mvrc``, ``loss_rel``.
    """

    @configurable
    def __init__(self, *, hidden_size, vocab_size, num_region_classes=1601, num_region_attributes=0,
                 with_mlm=True, with_mvrc=True, with_rel=False, bert_name="", layer_norm_eps=1e-12, std=0.02):
        """
        Args:
            hidden_size (int): H.
            vocab_size (int): V, rows of the word-embedding matrix the decoder is tied to.
            num_region_classes (int): classes of masked RoI classification (1601 for VG).
            num_region_attributes (int): > 0: the masked RoIs also predict the detector's
                attribute distribution of this width (not in the paper); 0: off.
            with_mlm, with_mvrc, with_rel (bool): which tasks.
            bert_name (str): BERT checkpoint whose ``cls.predictions`` starts the MLM head.
            layer_norm_eps (float): of the MLM transform's LayerNorm.
            std (float): initialisation of the new linear layers (BERT's initializer_range).
        """
        super().__init__()
        self.with_mlm, self.with_mvrc, self.with_rel = with_mlm, with_mvrc, with_rel
        if with_mlm:
            self.mlm_transform = _prediction_transform(hidden_size, layer_norm_eps)
            self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
        if with_mvrc:
            self.mvrc_transform = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU())
            self.mvrc_classifier = nn.Linear(hidden_size, num_region_classes)
            if num_region_attributes:
                self.mvrc_attr_classifier = nn.Linear(hidden_size, num_region_attributes)
        if with_rel:
            self.rel_classifier = nn.Linear(hidden_size, 2)
        for m in self.modules():  # BERT's initialisation (official init_weights)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
        if with_mlm and bert_name:
            self._init_mlm_from_bert(bert_name)

    @classmethod
    def from_config(cls, cfg, hidden_size):
        p = cfg.MODEL.VLBERT.PRETRAIN
        return {"hidden_size": hidden_size, "vocab_size": len(build_tokenizer(cfg)),
                "num_region_classes": p.NUM_REGION_CLASSES, "num_region_attributes": p.NUM_REGION_ATTRIBUTES,
                "with_mlm": p.WITH_MLM,
                "with_mvrc": p.WITH_MVRC, "with_rel": p.WITH_REL,
                "bert_name": cfg.MODEL.VLBERT.BERT_NAME}

    def _init_mlm_from_bert(self, bert_name):
        """As the official pre-training model: the MLM transform and bias start from BERT's
        ``cls.predictions``, whether ``bert_name`` is a hub name, a cached one or a local
        directory. A BERT without an MLM head leaves them random, with a warning."""
        mlm = load_pretrained_tensors(bert_name, "cls.predictions.")
        mapping = {"transform.dense.weight": "0.weight", "transform.dense.bias": "0.bias",
                   "transform.LayerNorm.weight": "2.weight", "transform.LayerNorm.bias": "2.bias"}
        if not all(k in mlm for k in mapping):
            logger.warning("MLM head: the BERT checkpoint %s has no MLM head (cls.predictions): it "
                           "starts from random weights, unlike the official pre-training", bert_name)
            return
        self.mlm_transform.load_state_dict({mapping[k]: mlm[k] for k in mapping})
        if "bias" in mlm:
            if mlm["bias"].shape != self.mlm_bias.shape:
                raise ValueError(f"{bert_name}: cls.predictions.bias has shape {tuple(mlm['bias'].shape)}, "
                                 f"the vocabulary has {self.mlm_bias.numel()} tokens")
            self.mlm_bias.data.copy_(mlm["bias"])
        else:
            logger.warning("MLM head: %s has no cls.predictions.bias; the bias starts at zero", bert_name)
        logger.info("MLM head initialised from %s's cls.predictions", bert_name)

    def mlm_logits(self, hidden, word_embeddings):
        """(M, H) outputs -> (M, V) scores over the vocabulary (decoder tied to the embeddings)."""
        return F.linear(self.mlm_transform(hidden), word_embeddings, self.mlm_bias)

    def forward(self, outputs, batch):
        """
        Returns:
            dict of losses in training; else per input a dict of counts: ``mlm_correct``,
            ``mlm_total`` (and ``mvrc_correct``, ``mvrc_total``, ``rel_correct`` for captions)
            and ``kind`` ("caption" or "text").
        """
        dev = outputs.text.device
        losses, counts = {}, [{"kind": "text" if batch.text_only else "caption"} for _ in batch.inputs]
        if self.with_mlm:
            labels = _pad_labels([x["mlm_labels"] for x in batch.inputs], -1).to(dev)  # (S, L)
            labels = labels[:, : outputs.text.shape[1]]
            where = labels >= 0
            if where.any():
                logits = self.mlm_logits(outputs.text[where], batch.word_embeddings)  # (M, V)
                loss = F.cross_entropy(logits, labels[where])
                if not self.training:
                    hits = _hits_per_row(logits.argmax(-1) == labels[where], where)
                    for c, h, n in zip(counts, hits, where.sum(1).tolist()):
                        c["mlm_correct"], c["mlm_total"] = h, n
            else:
                # Nothing masked: a zero loss that keeps the head in the graph (DDP).
                loss = keep_alive(self.mlm_logits(outputs.text[:1, 0], batch.word_embeddings))
                for c in counts:
                    c["mlm_correct"], c["mlm_total"] = 0, 0
            losses["loss_mlm_text" if batch.text_only else "loss_mlm"] = loss
        if not batch.text_only and self.with_mvrc:
            targets = _padded_rows(batch, "mvrc_targets", self.mvrc_classifier.out_features, dev)
            chosen = targets.sum(-1) > 0  # (B, N)
            if chosen.any():
                hidden = self.mvrc_transform(outputs.objects[chosen])
                loss = _soft_ce(self.mvrc_classifier(hidden), targets[chosen], chosen, counts, "mvrc", self.training)
            else:
                hidden = self.mvrc_transform(outputs.objects[:1, 0])
                loss = keep_alive(self.mvrc_classifier(hidden))
                for c in counts:
                    c["mvrc_correct"], c["mvrc_total"] = 0, 0
            losses["loss_mvrc"] = loss
            if hasattr(self, "mvrc_attr_classifier"):
                if any("mvrc_attr_targets" not in x for x in batch.inputs):
                    raise ValueError("MODEL.VLBERT.PRETRAIN.NUM_REGION_ATTRIBUTES needs caption inputs with "
                                     "'mvrc_attr_targets' (the detection files' attribute distributions)")
                logits = self.mvrc_attr_classifier(hidden)
                if chosen.any():
                    attr = _padded_rows(batch, "mvrc_attr_targets", logits.shape[-1], dev)
                    losses["loss_mvrc_attr"] = _soft_ce(logits, attr[chosen], chosen, counts, "mvrc_attr",
                                                        self.training)
                else:
                    losses["loss_mvrc_attr"] = keep_alive(logits)
                    for c in counts:
                        c["mvrc_attr_correct"], c["mvrc_attr_total"] = 0, 0
        if not batch.text_only and self.with_rel:
            if any("rel_label" not in x for x in batch.inputs):
                raise ValueError("MODEL.VLBERT.PRETRAIN.WITH_REL needs inputs with 'rel_label'")
            logits = self.rel_classifier(outputs.pooled)
            target = torch.tensor([x["rel_label"] for x in batch.inputs], device=dev)
            losses["loss_rel"] = F.cross_entropy(logits, target)
            for c, hit in zip(counts, (logits.argmax(-1) == target).tolist()):
                c["rel_correct"] = int(hit)
        return losses if self.training else counts
