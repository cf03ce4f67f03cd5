#!/usr/bin/env python
"""Golden outputs of the official VL-BERT code (github jackroos/VL-BERT), for
``tests/fidelity/test_official_parity.py``.

Runs the official implementation from a user's own clone (nothing of it is copied into this
project), at small sizes on CPU, and writes small test data: the official state-dict keys and
shapes, the seeds and fill rule (``golden_spec.py``), the inputs, and the outputs and a few
intermediate tensors. No weights are written: the test rebuilds the same tensors from the key
list and the seeds.

    git clone https://github.com/jackroos/VL-BERT /tmp/VL-BERT   # or any checkout of it
    .venv/bin/python tools/official_parity/make_golden.py --official-repo /tmp/VL-BERT \\
        --output tests/fixtures/official_golden

Needs only torch and torchvision (the project's virtualenv has them) and PyYAML. The official
code's other imports are replaced, inside this process only, by stand-ins:

* ``easydict``: the installed package if there is one, else a minimal stand-in (dict with
  attribute access that converts nested dicts, as easydict does);
* ``boto3``, ``botocore``, ``requests`` (imported by its file-download helpers, never called
  here) and its RoBERTa tokenizer (``common.nlp.roberta``, unused with BERT): empty modules;
* its compiled RoIAlign (``common.lib.roi_pooling.C_ROIPooling``, the maskrcnn-benchmark kernel):
  ``torchvision.ops.roi_align(..., sampling_ratio=1, aligned=False)``, the same legacy kernel
  (no half-pixel offset).

Models: the official VCR (Q->A, RoI classification on top: ``cnn_loss_reg``), VQA, RefCOCO+ and
pre-training (MLM with visual clues + masked RoI classification, and the text-only MLM input)
modules, built from the task's ``config.py`` defaults + ``cfgs/<task>/base_*.yaml`` + small sizes
(``golden_spec``: hidden 64, 2 layers, 4 heads, intermediate 128, ResNet-50, a 128-token
vocabulary; VQA is run end to end, ``IMAGE_FEAT_PRECOMPUTED False``, like the other three).
The official constructors read a BERT directory (vocabulary, and for VQA/pre-training the MLM
head's weights) and an ImageNet ResNet file; both are written to a temporary directory from
random values, and then every tensor of the model is overwritten by the fill rule.

Inputs: two noise images (BGR uint8, 72x100 and 60x84) with 4 and 3 RoIs (RoI 0 = the whole image
``[0, 0, w-1, h-1]``, official convention), token ids from the 128-token vocabulary. The models run
in eval mode (dropout off, BatchNorm frozen). VCR's RoI-classification logits are only computed by
the official ``train_forward``, which is therefore called on the eval-mode model (its losses are
recorded as well); the logits are read with a forward hook on ``cnn_loss_reg``.
"""
import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import golden_spec as spec  # noqa: E402

TASK_YAML = {
    "vcr": "cfgs/vcr/base_q2a_4x16G_fp32.yaml",
    "vqa": "cfgs/vqa/base_4x16G_fp32.yaml",
    "refcoco": "cfgs/refcoco/base_gt_boxes_4x16G.yaml",
    "pretrain": "cfgs/pretrain/base_e2e_16x16G_fp16.yaml",
}
TASK_MODULE = {
    "vcr": ("vcr.modules.resnet_vlbert_for_vcr", "ResNetVLBERT"),
    "vqa": ("vqa.modules.resnet_vlbert_for_vqa", "ResNetVLBERT"),
    "refcoco": ("refcoco.modules.resnet_vlbert_for_refcoco", "ResNetVLBERT"),
    "pretrain": ("pretrain.modules.resnet_vlbert_for_pretraining_multitask",
                 "ResNetVLBERTForPretrainingMultitask"),
}


# --------------------------------------------------------------------------------------------
# Stand-ins for the official code's unavailable imports (this process only)
# --------------------------------------------------------------------------------------------
class _EasyDict(dict):
    """Minimal easydict.EasyDict: attribute access; nested dicts (also in lists) converted."""

    def __init__(self, d=None, **kwargs):
        super().__init__()
        d = dict(d or {}, **kwargs)
        for k, v in d.items():
            setattr(self, k, v)

    def __setattr__(self, name, value):
        if isinstance(value, (list, tuple)):
            value = [type(self)(x) if isinstance(x, dict) else x for x in value]
        elif isinstance(value, dict) and not isinstance(value, type(self)):
            value = type(self)(value)
        super().__setattr__(name, value)
        super().__setitem__(name, value)

    __setitem__ = __setattr__


def _roi_align_forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    from torchvision.ops import roi_align

    return roi_align(input, rois, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned=False)


def _unavailable(name):
    def f(*args, **kwargs):
        raise RuntimeError(f"{name} is not available in make_golden.py's stand-in")
    return f


def install_stand_ins():
    try:
        import easydict  # noqa: F401
    except ImportError:
        sys.modules["easydict"] = types.SimpleNamespace(EasyDict=_EasyDict)
    for name in ("boto3", "requests", "botocore"):
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except ImportError:
                sys.modules[name] = types.ModuleType(name)
    if "botocore.exceptions" not in sys.modules:
        try:
            importlib.import_module("botocore.exceptions")
        except ImportError:
            mod = types.ModuleType("botocore.exceptions")
            mod.ClientError = type("ClientError", (Exception,), {})
            sys.modules["botocore.exceptions"] = mod
    roberta = types.ModuleType("common.nlp.roberta")
    roberta.RobertaTokenizer = type("RobertaTokenizer", (), {"from_pretrained": _unavailable("RobertaTokenizer")})
    sys.modules["common.nlp.roberta"] = roberta
    roi = types.ModuleType("common.lib.roi_pooling.C_ROIPooling")
    roi.roi_align_forward = _roi_align_forward
    roi.roi_align_backward = _unavailable("roi_align_backward")
    roi.roi_pool_forward = _unavailable("roi_pool_forward")
    roi.roi_pool_backward = _unavailable("roi_pool_backward")
    sys.modules["common.lib.roi_pooling.C_ROIPooling"] = roi


# --------------------------------------------------------------------------------------------
# Official configs and models
# --------------------------------------------------------------------------------------------
def official_config(repo, task, workdir):
    """The task's config.py defaults + its base yaml + the small sizes."""
    import yaml

    path = os.path.join(repo, task, "function", "config.py")
    spec_ = importlib.util.spec_from_file_location(f"_official_{task}_config", path)
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    # update_config calls yaml.load(f) without a Loader, which PyYAML >= 6 refuses.
    mod.yaml = types.SimpleNamespace(load=yaml.safe_load)
    mod.update_config(os.path.join(repo, TASK_YAML[task]))
    c = mod.config
    n = c.NETWORK
    n.IMAGE_NUM_LAYERS = spec.RESNET_DEPTH
    n.IMAGE_PRETRAINED = os.path.join(workdir, "resnet50")
    n.IMAGE_PRETRAINED_EPOCH = 0
    n.IMAGE_FEAT_PRECOMPUTED = False
    n.IMAGE_FINAL_DIM = spec.HIDDEN_SIZE
    n.BERT_MODEL_NAME = os.path.join(workdir, "bert")
    n.BERT_PRETRAINED = ""
    n.PARTIAL_PRETRAIN = ""
    v = n.VLBERT
    v.hidden_size = v.visual_size = spec.HIDDEN_SIZE
    v.num_hidden_layers = spec.NUM_LAYERS
    v.num_attention_heads = spec.NUM_HEADS
    v.intermediate_size = spec.INTERMEDIATE_SIZE
    v.vocab_size = len(spec.vocab_tokens())
    if task == "vqa":
        c.DATASET.ANSWER_VOCAB_SIZE = spec.NUM_ANSWERS
    if task == "pretrain":
        v.visual_region_classes = spec.NUM_REGION_CLASSES
    return c


def write_official_side_files(repo, workdir):
    """The BERT directory (vocab.txt, pytorch_model.bin with an MLM head) and the ResNet-50 file
    the official constructors read; their values are overwritten by the fill rule later."""
    from common.backbone.resnet.resnet import resnet50
    from common.visual_linguistic_bert import VisualLinguisticBert
    from external.pytorch_pretrained_bert.modeling import BertPredictionHeadTransform

    os.makedirs(os.path.join(workdir, "bert"), exist_ok=True)
    spec.write_vocab(os.path.join(workdir, "bert", "vocab.txt"))
    cfg = official_config(repo, "vcr", workdir).NETWORK.VLBERT
    vlb = VisualLinguisticBert(cfg)
    sd = {}
    for k, v in vlb.encoder.state_dict().items():
        sd["bert.encoder." + k] = v
    for k, v in vlb.embedding_LayerNorm.state_dict().items():
        sd["bert.embeddings.LayerNorm." + k] = v
    for name in ("word", "position"):
        sd[f"bert.embeddings.{name}_embeddings.weight"] = getattr(vlb, f"{name}_embeddings").weight
    sd["bert.embeddings.token_type_embeddings.weight"] = vlb.token_type_embeddings.weight[:2]
    for k, v in vlb.pooler.state_dict().items():
        sd["bert.pooler." + k] = v
    for k, v in BertPredictionHeadTransform(cfg).state_dict().items():
        sd["cls.predictions.transform." + k] = v
    sd["cls.predictions.bias"] = torch.zeros(cfg.vocab_size)
    sd["cls.predictions.decoder.weight"] = vlb.word_embeddings.weight
    torch.save({k: v.detach().clone() for k, v in sd.items()}, os.path.join(workdir, "bert", "pytorch_model.bin"))
    net = resnet50(pretrained=False, expose_stages=[5], stride_in_1x1=True)
    torch.save(net.state_dict(), os.path.join(workdir, "resnet50-0000.model"))


def official_layout(model):
    """[(key, shape, dtype, alias)] of a model's state dict; alias: the first key in sorted order
    whose tensor is the same storage (tied or repeated modules)."""
    sd = model.state_dict(keep_vars=True)
    seen = {}
    layout = []
    for key in sorted(sd):
        t = sd[key]
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        alias = seen.get(ident)
        if alias is None:
            seen[ident] = key
        layout.append((key, tuple(t.shape), str(t.dtype).replace("torch.", ""), alias))
    return layout


def build_official(repo, task, workdir):
    c = official_config(repo, task, workdir)
    module, cls = TASK_MODULE[task]
    model = getattr(importlib.import_module(module), cls)(c)
    layout = official_layout(model)
    sd = spec.fill_state_dict(layout, spec.SEEDS[task])
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model, layout, c


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
IMAGE_SIZES = [(72, 100), (60, 84)]  # (H, W)
BOXES = [
    [[0.0, 0.0, 99.0, 71.0], [10.3, 8.7, 60.2, 50.9], [40.5, 20.25, 95.0, 70.0], [5.0, 30.6, 30.4, 68.2]],
    [[0.0, 0.0, 83.0, 59.0], [12.2, 5.5, 70.8, 40.1], [30.0, 25.3, 80.6, 58.0]],
]
WORDS = list(range(104, 128))


def make_images(g):
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in IMAGE_SIZES]


def normalised(img):
    """(3, H, W) uint8 BGR -> float32 minus the official pixel mean (std 1), as the official
    ``Normalize`` (to_bgr255) gives and this project's ``preprocess_image`` computes."""
    return img.to(torch.float32) - torch.tensor(spec.PIXEL_MEAN, dtype=torch.float32).view(3, 1, 1)


def batch_images(imgs):
    """Zero-padded (in normalised space) batch, as the official collator's clip_pad_images."""
    H = max(i.shape[1] for i in imgs)
    W = max(i.shape[2] for i in imgs)
    out = torch.zeros((len(imgs), 3, H, W))
    for b, i in enumerate(imgs):
        out[b, :, : i.shape[1], : i.shape[2]] = i
    return out


def im_info():
    return torch.tensor([[w, h, 1.0, 1.0] for h, w in IMAGE_SIZES])


def padded_boxes(extra_cols=None, pad=-2.0):
    n = max(len(b) for b in BOXES)
    cols = 4 + (0 if extra_cols is None else extra_cols[0].shape[1])
    out = torch.full((len(BOXES), n, cols), pad)
    for b, boxes in enumerate(BOXES):
        t = torch.tensor(boxes)
        if extra_cols is not None:
            t = torch.cat([t, extra_cols[b]], 1)
        out[b, : len(boxes)] = t
    return out


def rand_words(g, n):
    return [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g)]


def pad_2d(rows, pad):
    L = max(len(r) for r in rows)
    return torch.tensor([list(r) + [pad] * (L - len(r)) for r in rows], dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Recording intermediate tensors of the official model
# --------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self, model, vlbert):
        self.store = {}
        self.handles = []
        fe = model.image_feature_extractor
        self.handles.append(fe.register_forward_hook(self._fe))
        self.handles.append(vlbert.embedding_LayerNorm.register_forward_hook(self._save("embeddings")))
        for i, layer in enumerate(vlbert.encoder.layer):
            self.handles.append(layer.register_forward_hook(self._save(f"layer{i}")))
        self.handles.append(vlbert.register_forward_pre_hook(self._vl_inputs, with_kwargs=True))

    def _fe(self, module, args, out):
        self.store["appearance"] = out["obj_reps_raw"].detach().clone()
        self.store["fused"] = out["obj_reps"].detach().clone()

    def _save(self, name):
        def hook(module, args, out):
            self.store[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return hook

    def _vl_inputs(self, module, args, kwargs):
        names = ["text_input_ids", "text_token_type_ids", "text_visual_embeddings", "text_mask",
                 "object_vl_embeddings", "object_mask"]
        for n, a in zip(names, args):
            self.store["vl_" + n] = a.detach().clone()

    def close(self):
        for h in self.handles:
            h.remove()


def packed_row0(rec, text_mask):
    """Embeddings and each layer's output of sequence 0 at its real positions: the official
    layout packs them first (text, RoIs, [END]), padding after."""
    text_mask = text_mask.reshape(-1, text_mask.shape[-1])
    obj_mask = rec["vl_object_mask"].reshape(-1, rec["vl_object_mask"].shape[-1])
    length = int(text_mask[0].sum()) + int(obj_mask[0].sum()) + 1
    names = ["embeddings"] + [f"layer{i}" for i in range(spec.NUM_LAYERS)]
    return {k: rec[k][0, :length].clone() for k in names}


def real_rois(t, counts):
    """(B, N, C) padded per-image RoI tensor -> (sum N_b, C)."""
    return torch.cat([t[b, :n] for b, n in enumerate(counts)])


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------
COUNTS = [len(b) for b in BOXES]


def run_vcr(model, g, images):
    classes = [torch.tensor([0.0, 1.0, 17.0, 57.0]), torch.tensor([0.0, 3.0, 1.0])]  # official: 0 = background
    masks = []
    for b, n in enumerate(COUNTS):
        m = (torch.rand((n, 14, 14), generator=g) > 0.3).float()
        m[0] = 1.0  # whole image
        masks.append(m)
    extra = [torch.stack([torch.ones(n), classes[b]], 1) for b, n in enumerate(COUNTS)]  # (score, class)
    boxes = padded_boxes(extra, pad=-1.0)
    mask_t = torch.full((2, max(COUNTS), 14, 14), -1.0)
    for b, m in enumerate(masks):
        mask_t[b, : len(m)] = m

    def tokens(n):
        ids = rand_words(g, n)
        tags = [int(t) if torch.rand((), generator=g) < 0.4 else 0
                for t in torch.randint(1, 4, (n,), generator=g)]
        return ids, tags

    q_lens, a_lens = [5, 3], [[4, 2, 6, 3], [3, 5, 2, 4]]
    questions, answers = [], []
    for b in range(2):
        ids, tags = tokens(q_lens[b])
        tags = [min(t, COUNTS[b] - 1) for t in tags]
        questions.append([(i, t, k) for k, (i, t) in enumerate(zip(ids, tags))])
        choices = []
        for n in a_lens[b]:
            ids, tags = tokens(n)
            tags = [min(t, COUNTS[b] - 1) for t in tags]
            choices.append([(i, t, k) for k, (i, t) in enumerate(zip(ids, tags))])
        answers.append(choices)
    Lq = max(q_lens)
    La = max(max(a) for a in a_lens)
    question = torch.full((2, Lq, 3), -2, dtype=torch.long)
    answer_choices = torch.full((2, 4, La, 3), -2, dtype=torch.long)
    for b in range(2):
        question[b, : q_lens[b]] = torch.tensor(questions[b])
        for k in range(4):
            answer_choices[b, k, : a_lens[b][k]] = torch.tensor(answers[b][k])
    answer_label = torch.tensor([2, 0])
    info = im_info()

    prepared = {}
    original = model.prepare_text_from_qa

    def recording(*args):
        out = original(*args)
        prepared.update(zip(["input_ids", "token_type_ids", "text_tags", "text_mask"], out))
        return out

    model.prepare_text_from_qa = recording
    cnn = {}
    hook = model.cnn_loss_reg.register_forward_hook(lambda m, a, o: cnn.update(logits=o.detach().clone()))
    rec = Recorder(model, model.vlbert._module)
    image = batch_images([normalised(i) for i in images])
    with torch.no_grad():
        outputs, _ = model.train_forward(image, boxes, mask_t, question, None, answer_choices, None,
                                         answer_label, info)
        inf = model.inference_forward(image, boxes, mask_t, question, None, answer_choices, None, info)
    hook.remove()
    rec.close()
    del model.prepare_text_from_qa
    assert torch.equal(inf["label_logits"], outputs["label_logits"])
    inputs = {"boxes": boxes, "masks": mask_t, "question": question, "answer_choices": answer_choices,
              "answer_label": answer_label, "im_info": info}
    text = {k: v.to(torch.long) for k, v in prepared.items()}
    out = {"vcr_logits": outputs["label_logits"],            # (B, 4)
           "roi_cls_logits": cnn["logits"],                  # (sum over b, k of N_b, 81), b-k-n order
           "loss_vcr": outputs["ans_loss"].reshape(()),
           "loss_roi_cls": outputs["cnn_regularization_loss"].reshape(())}
    inter = packed_row0(rec.store, rec.store["vl_text_mask"])
    inter["fused"] = real_rois(rec.store["fused"], COUNTS)
    return inputs, text, out, inter


def run_vqa(model, g, images):
    q = [rand_words(g, 5), rand_words(g, 3)]
    question = pad_2d(q, spec.PAD)
    boxes = padded_boxes()
    info = im_info()
    label = torch.rand((2, spec.NUM_ANSWERS), generator=g) * (torch.rand((2, spec.NUM_ANSWERS), generator=g) < 0.2)
    prepared = {}
    original = model.prepare_text_from_qa

    def recording(*args):
        out = original(*args)
        prepared.update(zip(["input_ids", "token_type_ids", "text_tags", "text_mask", "answer_position"], out))
        return out

    model.prepare_text_from_qa = recording
    rec = Recorder(model, model.vlbert)
    image = batch_images([normalised(i) for i in images])
    with torch.no_grad():
        outputs = model.inference_forward(image, boxes, info, question)
        train_out, _ = model.train_forward(image, boxes, info, question, label)
    rec.close()
    del model.prepare_text_from_qa
    inputs = {"boxes": boxes, "question": question, "im_info": info, "label": label}
    text = {k: v.to(torch.long) for k, v in prepared.items()}
    out = {"answer_logits": outputs["label_logits"], "loss_vqa": train_out["ans_loss"].reshape(())}
    inter = packed_row0(rec.store, rec.store["vl_text_mask"])
    inter["fused"] = real_rois(rec.store["fused"], COUNTS)
    return inputs, text, out, inter


def run_refcoco(model, g, images):
    expression = pad_2d([rand_words(g, 4), rand_words(g, 6)], spec.PAD)
    boxes = padded_boxes()
    info = im_info()
    label = torch.zeros((2, max(COUNTS)))
    label[0, 2] = label[1, 1] = 1.0
    rec = Recorder(model, model.vlbert)
    image = batch_images([normalised(i) for i in images])
    with torch.no_grad():
        outputs = model.inference_forward(image, boxes, info, expression)
        train_out, _ = model.train_forward(image, boxes, info, expression, label)
    rec.close()
    store = rec.store
    text = {"input_ids": store["vl_text_input_ids"].long(), "token_type_ids": store["vl_text_token_type_ids"].long(),
            "text_mask": store["vl_text_mask"].long(),
            "text_tags": torch.zeros_like(store["vl_text_input_ids"]).long()}
    inputs = {"boxes": boxes, "expression": expression, "im_info": info, "label": label}
    out = {"roi_logits": real_rois(outputs["label_logits"][..., None], COUNTS)[:, 0],  # (sum N_b,)
           "loss_ref": train_out["cls_loss"].reshape(())}
    inter = packed_row0(store, store["vl_text_mask"])
    inter["fused"] = real_rois(store["fused"], COUNTS)
    inter["appearance"] = real_rois(store["appearance"], COUNTS)
    return inputs, text, out, inter


def run_pretrain(model, g, images):
    # Captions: [CLS] words [SEP], some words replaced by [MASK] (label = the original word).
    captions, caption_labels = [], []
    for n, masked_at in ((6, (2, 5)), (4, (1,))):
        words = rand_words(g, n)
        ids = [spec.CLS] + words + [spec.SEP]
        labels = [-1] * len(ids)
        for p in masked_at:
            labels[p] = ids[p]
            ids[p] = spec.MASK
        captions.append(ids)
        caption_labels.append(labels)
    text = pad_2d(captions, spec.PAD)
    mlm_labels = pad_2d(caption_labels, -1)
    # Text-only corpus samples (official: word pieces only, no [CLS]/[SEP]).
    aux_rows, aux_labels = [], []
    for n, masked_at in ((7, (0, 4)), (5, (3,))):
        ids = rand_words(g, n)
        labels = [-1] * n
        for p in masked_at:
            labels[p] = ids[p]
            ids[p] = spec.MASK
        aux_rows.append(ids)
        aux_labels.append(labels)
    aux_text = pad_2d(aux_rows, spec.PAD)
    aux_mlm_labels = pad_2d(aux_labels, -1)
    mvrc_ops = torch.tensor([[0, 1, 0, 1], [0, 0, 1, -1]])  # -1: padding slot (never read)
    C = spec.NUM_REGION_CLASSES
    mvrc_labels = torch.zeros((2, max(COUNTS), C))
    for b in range(2):
        for n in range(COUNTS[b]):
            if mvrc_ops[b, n] == 1:
                mvrc_labels[b, n] = torch.softmax(3 * torch.randn(C, generator=g), 0)
    boxes = padded_boxes()
    info = im_info()
    # Masked RoIs' pixels are zeroed in the normalised image (official dataset code).
    normed = []
    for b, img in enumerate(images):
        x = normalised(img)
        for box, op in zip(BOXES[b], mvrc_ops[b].tolist()):
            if op == 1:
                x1, y1, x2, y2 = box
                x[:, int(y1):int(y2) + 1, int(x1):int(x2) + 1] = 0
        normed.append(x)
    rec = Recorder(model, model.vlbert)
    with torch.no_grad():
        outputs, _ = model(batch_images(normed), boxes, info, text, torch.ones(2, dtype=torch.long),
                           mlm_labels, mvrc_ops.clamp(min=0), mvrc_labels, aux_text, aux_mlm_labels)
    rec.close()
    store = rec.store
    inputs = {"boxes": boxes, "im_info": info, "text": text, "mlm_labels": mlm_labels,
              "mvrc_ops": mvrc_ops, "mvrc_labels": mvrc_labels, "aux_text": aux_text,
              "aux_mlm_labels": aux_mlm_labels}
    text_in = {"input_ids": text, "token_type_ids": torch.zeros_like(text), "text_mask": (text > 0).long(),
               "text_tags": torch.zeros_like(text)}
    # MLM logits at the real text positions of each row (captions, then text-only rows).
    cap_mask = text > 0
    aux_mask = aux_text > 0
    Lc, La = text.shape[1], aux_text.shape[1]
    out = {"mlm_logits_caption": outputs["mlm_logits_wvc"][:, :Lc][cap_mask],   # (sum L_b, V)
           "mlm_logits_text_only": outputs["mlm_logits_aux"][:, :La][aux_mask],  # (sum L_b, V)
           "mvrc_logits": real_rois(outputs["mvrc_logits"], COUNTS),             # (sum N_b, C)
           "loss_mlm": outputs["mlm_loss_wvc"].reshape(()),
           "loss_mlm_text": outputs["mlm_loss_aux"].reshape(()),
           "loss_mvrc": outputs["mvrc_loss"].reshape(())}
    inter = packed_row0(store, store["vl_text_mask"])
    # The first text-only row of the combined batch (row 2): its words and [END].
    t = int(aux_mask[0].sum())
    inter["text_only_layer1"] = store["layer1"][2, : t + 1].clone()
    inter["text_only_embeddings"] = store["embeddings"][2, : t + 1].clone()
    inter["fused"] = real_rois(store["fused"], COUNTS)
    return inputs, text_in, out, inter


RUNNERS = {"vcr": run_vcr, "vqa": run_vqa, "refcoco": run_refcoco, "pretrain": run_pretrain}


def official_commit(repo):
    """The checkout's commit, or None when ``repo`` is not a git checkout (e.g. an export)."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out[1] if os.path.realpath(out[0]) == os.path.realpath(repo) else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", required=True, help="a checkout of github.com/jackroos/VL-BERT")
    parser.add_argument("--output", required=True, help="folder to write (e.g. tests/fixtures/official_golden)")
    parser.add_argument("--tasks", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    parser.add_argument("--official-commit", help="the official commit to record when --official-repo is "
                        "not a git checkout (e.g. a `git archive` export)")
    args = parser.parse_args(argv)

    repo = os.path.abspath(args.official_repo)
    if not os.path.isfile(os.path.join(repo, "common", "visual_linguistic_bert.py")):
        raise SystemExit(f"{repo}: not a checkout of the official VL-BERT (no common/visual_linguistic_bert.py)")
    torch.set_num_threads(1)
    sys.path.insert(0, repo)
    install_stand_ins()
    os.makedirs(args.output, exist_ok=True)
    g = torch.Generator().manual_seed(spec.INPUT_SEED)
    images = make_images(g)
    torch.save({"images_bgr": images, "boxes": [torch.tensor(b) for b in BOXES]},
               os.path.join(args.output, "images.pt"))
    layouts = {}
    manifest = {"official_repository": "https://github.com/jackroos/VL-BERT",
                "official_commit": official_commit(repo) or args.official_commit or "unknown",
                "seeds": spec.SEEDS, "input_seed": spec.INPUT_SEED,
                "fill_rule": "tools/official_parity/golden_spec.py (fill_state_dict)",
                "sizes": {"hidden": spec.HIDDEN_SIZE, "layers": spec.NUM_LAYERS, "heads": spec.NUM_HEADS,
                          "intermediate": spec.INTERMEDIATE_SIZE, "resnet": spec.RESNET_DEPTH,
                          "vocab": len(spec.vocab_tokens()), "answers": spec.NUM_ANSWERS,
                          "region_classes": spec.NUM_REGION_CLASSES},
                "tasks": {}}
    with tempfile.TemporaryDirectory() as workdir:
        write_official_side_files(repo, workdir)
        for task in args.tasks:
            model, layout, cfg = build_official(repo, task, workdir)
            layouts[task] = layout
            generator = torch.Generator().manual_seed(spec.INPUT_SEED + 1)
            inputs, text, outputs, inter = RUNNERS[task](model, generator, images)
            torch.save({"inputs": inputs, "text": text, "outputs": outputs, "intermediates": inter},
                       os.path.join(args.output, f"{task}.pt"))
            manifest["tasks"][task] = {
                "official_module": ".".join(TASK_MODULE[task]), "official_yaml": TASK_YAML[task],
                "outputs": {k: list(v.shape) for k, v in outputs.items()},
                "official_config": {"IMAGE_FEAT_PRECOMPUTED": bool(cfg.NETWORK.IMAGE_FEAT_PRECOMPUTED),
                                    "CLASSIFIER_TYPE": cfg.NETWORK.get("CLASSIFIER_TYPE"),
                                    "with_pooler": bool(cfg.NETWORK.VLBERT.with_pooler)}}
            print(f"{task}: {len(layout)} keys; " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items()))
    write_keys(os.path.join(args.output, "official_keys.txt"), layouts)
    with open(os.path.join(args.output, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    print(f"wrote {args.output}")


def write_keys(path, layouts):
    merged = {}
    for task, layout in layouts.items():
        for key, shape, dtype, alias in layout:
            entry = merged.setdefault((key, shape, dtype, alias), [])
            entry.append(task)
    with open(path, "w") as f:
        f.write("# key\tshape\tdtype\ttasks\talias (the earlier key whose tensor it repeats, or -)\n")
        for (key, shape, dtype, alias), tasks in sorted(merged.items(), key=lambda x: (x[0][0], x[1])):
            f.write(f"{key}\t{','.join(map(str, shape))}\t{dtype}\t{','.join(tasks)}\t{alias or '-'}\n")


if __name__ == "__main__":
    main()
