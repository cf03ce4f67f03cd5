"""The VLBERT meta-architecture end to end on the tiny config: losses, gradients, freezing,
inference outputs, the res5 head's geometry and the VCR head's losses."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from vlbert_d2.data import VCRDatasetMapper
from vlbert_d2.modeling import VLBERT
from vlbert_d2.modeling.heads import VCRHead


def _map(cfg, dicts, is_train):
    mapper = VCRDatasetMapper(cfg, is_train)
    return [mapper(d) for d in dicts]


def _build(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def _grad_norm(param):
    return 0.0 if param.grad is None else param.grad.abs().sum().item()


@pytest.fixture
def train_inputs(tiny_cfg, synthetic_dicts):
    inputs = _map(tiny_cfg, synthetic_dicts["train"][:3], True)
    # A batch whose inputs have different numbers of RoIs exercises the RoI padding.
    assert len({len(x["boxes"]) for x in inputs}) > 1
    return inputs


def test_build_model_is_vlbert(tiny_cfg):
    model = _build(tiny_cfg)
    assert isinstance(model, VLBERT)
    assert len(model.vl_bert.bert.encoder.layer) == 1
    assert model.vl_bert.bert.config.type_vocab_size == 3
    # Visual LayerNorms start at zero (official), so the text side is BERT's at initialisation.
    assert torch.count_nonzero(model.vl_bert.visual_ln_text.weight) == 0
    assert torch.count_nonzero(model.vl_bert.visual_ln_object.weight) == 0
    assert model.region_extractor.backbone.output_shape()["res4"].stride == 16
    assert model.fusion.linear.in_features == 256 + model.region_extractor.out_channels
    assert model.fusion.linear.out_features == 384
    # The RoI classifier covers the training dataset's classes (ball, box, kite).
    assert model.head.roi_classifier[-1].out_features == 3 + 1  # the classes + background


def test_training_forward_and_gradients(tiny_cfg, train_inputs):
    model = _build(tiny_cfg)
    model.train()
    losses = model(train_inputs)
    assert set(losses) == {"loss_vcr", "loss_roi_cls"}
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v) and v.item() > 0
    sum(losses.values()).backward()
    r = model.region_extractor
    # The zero-initialised visual LayerNorms gate the visual path: at initialisation no gradient
    # reaches the fusion layer or the CNN (see test_gradients_through_the_transformer_path).
    for p in (model.fusion.linear.weight, r.res5[-1].conv3.weight, r.backbone.stem.conv1.weight):
        assert _grad_norm(p) == 0
    grads = {
        "word embeddings": model.vl_bert.word_embeddings.weight,
        "VCR classifier": model.head.classifier[1].weight,
        "RoI classifier": model.head.roi_classifier[-1].weight,
        # Zero-init LayerNorms receive gradient, so the visual features are let in by training.
        "visual LN (text)": model.vl_bert.visual_ln_text.weight,
        "visual LN (objects)": model.vl_bert.visual_ln_object.weight,
        "[IMG] embedding": model.vl_bert.img_embedding,
        "[END] embedding": model.vl_bert.end_embedding,
    }
    for name, p in grads.items():
        assert _grad_norm(p) > 0, f"no gradient reaches the {name}"


def test_gradients_through_the_transformer_path(tiny_cfg, train_inputs):
    # With open visual LayerNorms and no RoI classification loss, the only path to the CNN is
    # through the fusion layer and the transformer.
    tiny_cfg.MODEL.VLBERT.VISUAL_LN_INIT = 1.0
    tiny_cfg.MODEL.VLBERT.VCR.ROI_CLS_LOSS_WEIGHT = 0.0
    model = _build(tiny_cfg)
    assert model.head.roi_classifier is None
    model.train()
    losses = model(train_inputs)
    assert set(losses) == {"loss_vcr"} and torch.isfinite(losses["loss_vcr"])
    losses["loss_vcr"].backward()
    r = model.region_extractor
    for name, p in {"fusion linear": model.fusion.linear.weight,
                    "res5": r.res5[0].conv2.weight,
                    "backbone stem": r.backbone.stem.conv1.weight,
                    "word embeddings": model.vl_bert.word_embeddings.weight,
                    "VCR classifier": model.head.classifier[1].weight}.items():
        assert _grad_norm(p) > 0, f"no gradient reaches the {name}"


def test_official_freezing(tiny_cfg, train_inputs):
    tiny_cfg.MODEL.VLBERT.VISUAL_LN_INIT = 1.0  # let gradients reach the CNN at all
    tiny_cfg.MODEL.BACKBONE.FREEZE_AT = 2
    tiny_cfg.MODEL.RESNETS.NORM = "FrozenBN"
    model = _build(tiny_cfg)
    backbone = model.region_extractor.backbone
    for stage in (backbone.stem, backbone.res2):
        params = list(stage.parameters())
        assert params and not any(p.requires_grad for p in params)
    for stage in (backbone.res3, backbone.res4, model.region_extractor.res5):
        assert all(p.requires_grad for p in stage.parameters())
    # All BatchNorm frozen, the res5 head's included.
    region = model.region_extractor
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in region.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in region.res5.modules()) >= 9
    model.train()
    losses = model(train_inputs)
    sum(losses.values()).backward()
    assert backbone.stem.conv1.weight.grad is None and backbone.res2[0].conv1.weight.grad is None
    assert _grad_norm(backbone.res3[0].conv1.weight) > 0


@pytest.mark.parametrize("dilation", [2, 3])
def test_res5_head_keeps_roi_resolution(tiny_cfg, dilation):
    tiny_cfg.MODEL.VLBERT.RES5_DILATION = dilation
    model = _build(tiny_cfg).eval()
    res5 = model.region_extractor.res5
    assert len(res5) == 3
    for block in res5:
        for conv in (block.conv1, block.conv2, block.conv3) + ((block.shortcut,) if block.shortcut else ()):
            assert conv.stride == (1, 1)
        assert block.conv2.kernel_size == (3, 3)
        assert block.conv2.dilation == (dilation, dilation)
        assert block.conv2.padding == (dilation, dilation)
    m = tiny_cfg.MODEL.VLBERT.POOLER_RESOLUTION
    x = torch.randn(2, res5[0].in_channels, m, m)
    with torch.no_grad():
        assert res5(x).shape == (2, model.region_extractor.out_channels, m, m)


def test_eval_forward_scores(tiny_cfg, synthetic_dicts):
    model = _build(tiny_cfg).eval()
    inputs = _map(tiny_cfg, synthetic_dicts["val"][:3], False)
    with torch.no_grad():
        outputs = model(inputs)
    assert isinstance(outputs, list) and len(outputs) == 3
    for out in outputs:
        assert out["scores"].shape == (4,)
        assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
        torch.testing.assert_close(out["scores"], out["logits"].sigmoid())  # "bce": per choice
    # Deterministic in eval mode (dropout off, BN in inference mode).
    with torch.no_grad():
        again = model(inputs)
    torch.testing.assert_close(again[0]["scores"], outputs[0]["scores"])


def test_batching_does_not_change_scores(tiny_cfg, train_inputs):
    # Inputs of one batch have different numbers of RoIs and text lengths; the padded RoI and
    # text slots must be masked out, so an input scores the same alone or batched.
    tiny_cfg.MODEL.VLBERT.VISUAL_LN_INIT = 1.0  # RoIs with distinct embeddings
    model = _build(tiny_cfg).eval()
    with torch.no_grad():
        batched = model(train_inputs)
        alone = [model([x])[0] for x in train_inputs]
    for b, a in zip(batched, alone):
        torch.testing.assert_close(b["logits"], a["logits"], rtol=1e-4, atol=1e-5)


def test_qa2r_on_unlabelled_test_record_gives_16_scores(tiny_cfg, synthetic_dicts):
    tiny_cfg.MODEL.VLBERT.VCR.TASK = "QA2R"
    test_dicts = synthetic_dicts["test"][:2]
    assert all(d["answer_label"] is None for d in test_dicts)
    inputs = _map(tiny_cfg, test_dicts, False)
    assert [x["input_ids"].shape[0] for x in inputs] == [16, 16]
    assert all(x["label"] == -1 for x in inputs)
    model = _build(tiny_cfg).eval()
    with torch.no_grad():
        outputs = model(inputs)
    assert [o["scores"].shape for o in outputs] == [(16,), (16,)]
    assert all(((o["scores"] >= 0) & (o["scores"] <= 1)).all() for o in outputs)


def test_ce_loss_end_to_end(tiny_cfg, train_inputs):
    tiny_cfg.MODEL.VLBERT.VCR.LOSS = "ce"
    model = _build(tiny_cfg)
    model.train()
    losses = model(train_inputs)
    assert torch.isfinite(losses["loss_vcr"])
    losses["loss_vcr"].backward()
    assert _grad_norm(model.head.classifier[1].weight) > 0
    model.eval()
    with torch.no_grad():
        out = model(train_inputs[:1])[0]
    torch.testing.assert_close(out["scores"].sum(), torch.tensor(1.0))  # softmax over choices


def _text_visual_of(model, inputs):
    """The text-side visual feature (before its LayerNorm) that the model gives the transformer."""
    seen = {}
    hook = model.vl_bert.register_forward_pre_hook(lambda m, args: seen.update(text_visual=args[3]))
    try:
        with torch.no_grad():
            out = model(inputs)
    finally:
        hook.remove()
    return seen["text_visual"], out


def test_words_that_name_no_object_can_go_without_the_whole_image(tiny_cfg, synthetic_dicts):
    # MODEL.VLBERT.WORDS_SEE_WHOLE_IMAGE False (the pipeline's tiny VCR config's deviation): a
    # word tagged to an object keeps that object's feature, every other word carries zeros.
    tiny_cfg.MODEL.VLBERT.VISUAL_LN_INIT = 1.0  # the text side's visual feature counts from the start
    inputs = _map(tiny_cfg, synthetic_dicts["val"][:2], False)
    official, out_official = _text_visual_of(_build(tiny_cfg).eval(), inputs)
    tiny_cfg.MODEL.VLBERT.WORDS_SEE_WHOLE_IMAGE = False
    tags_only, out_tags_only = _text_visual_of(_build(tiny_cfg).eval(), inputs)
    tags = torch.cat([x["text_tags"] for x in inputs])
    real = torch.cat([x["text_mask"] for x in inputs]).bool()
    tagged, untagged = real & (tags > 0), real & (tags == 0)
    assert tagged.any() and untagged.any()  # the records name objects ([ball1]) and plain words
    torch.testing.assert_close(tags_only[tagged], official[tagged])
    assert official[untagged].abs().sum() > 0  # officially: the whole image's feature
    assert tags_only[untagged].abs().sum() == 0
    assert not torch.allclose(out_tags_only[0]["logits"], out_official[0]["logits"])


def test_vcr_pooling_mean_from_the_config(tiny_cfg, synthetic_dicts):
    # MODEL.VLBERT.VCR.POOLING mean reaches the head: the logits are the classifier on the mean of
    # the real text outputs, not on BERT's pooler.
    tiny_cfg.MODEL.VLBERT.VCR.POOLING = "mean"
    model = _build(tiny_cfg).eval()
    inputs = _map(tiny_cfg, synthetic_dicts["val"][:2], False)
    with torch.no_grad():
        outputs, _ = model.encode(inputs)
        results = model(inputs)
        real = model.pack_text(inputs)["text_mask"].float()  # (S, L): 1 for real text tokens
        mean = (outputs.text * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        expected = model.head.classifier(mean).squeeze(-1)
        on_cls = model.head.classifier(outputs.pooled).squeeze(-1)
    logits = torch.cat([r["logits"] for r in results])
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, on_cls)


def test_vcr_head_mean_pooling_by_hand():
    # Two sequences of H = 2; the second has a padded text slot (100s) that must not count.
    text = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]],
                         [[2.0, 2.0], [0.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1]])  # 3 text slots, then one RoI
    outputs = SimpleNamespace(text=text, attention_mask=mask, pooled=torch.zeros(2, 2))
    batch = SimpleNamespace(num_choices=[2], inputs=[{"label": 0}])
    head = VCRHead(hidden_size=2, dropout=0.0, loss="ce", pooling="mean").eval()
    with torch.no_grad():
        head.classifier[1].weight.copy_(torch.tensor([[1.0, 10.0]]))
        head.classifier[1].bias.fill_(0.5)
        logits = head(outputs, batch)[0]["logits"]
    # means (3, 2) and (1, 3): 3 + 20 + 0.5 and 1 + 30 + 0.5
    torch.testing.assert_close(logits, torch.tensor([23.5, 31.5]))
    with pytest.raises(ValueError, match="'max'"):
        VCRHead(hidden_size=2, pooling="max")


def test_invalid_loss_name_raises(tiny_cfg):
    tiny_cfg.MODEL.VLBERT.VCR.LOSS = "hinge"
    with pytest.raises(ValueError, match="hinge"):
        build_model(tiny_cfg)


# --------------------------------------------------------------------------- VCR head alone
def _head_inputs(logit_rows, labels):
    """VLBertOutput/VLBertBatch stand-ins whose pooled output makes the head's logits known."""
    pooled = torch.tensor(logit_rows, dtype=torch.float32).reshape(-1, 1)
    outputs = SimpleNamespace(pooled=pooled)
    batch = SimpleNamespace(num_choices=[4] * (len(logit_rows) // 4), inputs=[{"label": y} for y in labels],
                            object_mask=torch.ones((len(labels), 1), dtype=torch.long))
    return outputs, batch


def _identity_head(loss):
    head = VCRHead(hidden_size=1, dropout=0.0, loss=loss)
    with torch.no_grad():
        head.classifier[1].weight.fill_(1.0)
        head.classifier[1].bias.zero_()
    return head


def test_vcr_head_losses_match_definitions():
    logits = [0.5, -1.0, 2.0, 0.0, 1.0, 1.5, -0.5, 0.3]
    labels = [2, 1]
    outputs, batch = _head_inputs(logits, labels)
    x = torch.tensor(logits).view(2, 4)
    bce = _identity_head("bce").train()(outputs, batch)["loss_vcr"]
    target = F.one_hot(torch.tensor(labels), 4).float()
    # Official: the mean of the per-choice binary cross-entropies.
    torch.testing.assert_close(bce, F.binary_cross_entropy_with_logits(x, target))
    ce = _identity_head("ce").train()(outputs, batch)["loss_vcr"]
    torch.testing.assert_close(ce, F.cross_entropy(x, torch.tensor(labels)))
    with torch.no_grad():
        res = _identity_head("ce").eval()(outputs, batch)
    torch.testing.assert_close(res[1]["scores"], x[1].softmax(-1))


def test_vcr_head_rejects_bad_training_batches():
    head = _identity_head("bce").train()
    with pytest.raises(ValueError, match="label"):
        head(*_head_inputs([0.0] * 4, [-1]))
    outputs, batch = _head_inputs([0.0] * 8, [0, 0])
    batch.num_choices = [3, 5]
    with pytest.raises(ValueError, match="same number of choices"):
        head(outputs, batch)
    with pytest.raises(ValueError, match="'hinge'"):
        VCRHead(hidden_size=4, loss="hinge")


def test_roi_classification_targets_and_ddp_safe_zero_loss():
    head = VCRHead(hidden_size=4, dropout=0.0, num_object_classes=3, roi_cls_loss_weight=1.0).train()
    objects = torch.randn(2, 3, 4)  # 2 sequences (one input, 2 choices), 3 RoI slots
    outputs = SimpleNamespace(pooled=torch.randn(2, 4), objects=objects)
    # RoI 0: whole image (-1 -> background 0), RoI 1: class 2 (-> 3), slot 2: padding.
    batch = SimpleNamespace(num_choices=[2], inputs=[{"label": 1, "object_classes": torch.tensor([-1, 2])}],
                            seq_to_input=torch.tensor([0, 0]), object_mask=torch.tensor([[1, 1, 0]]))
    loss = head(outputs, batch)["loss_roi_cls"]
    logits = head.roi_classifier(objects[:, :2]).reshape(-1, 4)
    expected = F.cross_entropy(logits, torch.tensor([0, 3, 0, 3]))
    torch.testing.assert_close(loss, expected)
    # No classified RoI: a zero loss that still reaches every classifier parameter.
    batch.inputs = [{"label": 1}]  # no object classes
    zero = head(outputs, batch)["loss_roi_cls"]
    assert zero.item() == 0.0
    zero.backward()
    assert all(p.grad is not None for p in head.roi_classifier.parameters())


def test_fused_attention_by_default_equals_eager_and_still_gives_attention_maps(tiny_cfg, synthetic_dicts):
    """MODEL.VLBERT.ATTENTION_IMPL: PyTorch's scaled-dot-product attention by default, the same
    outputs as transformers' eager attention within float tolerance; attention maps asked for are
    computed with the eager one, and the model goes back to the fused one afterwards."""
    import copy

    from vlbert_d2.data import build_vlbert_mapper
    from vlbert_d2.modeling import VLBERT

    assert tiny_cfg.MODEL.VLBERT.ATTENTION_IMPL == "sdpa"
    torch.manual_seed(0)
    model = VLBERT(tiny_cfg).eval()
    assert model.vl_bert.bert.config._attn_implementation == "sdpa"
    eager = copy.deepcopy(model)
    eager.vl_bert.bert.set_attn_implementation("eager")
    mapper = build_vlbert_mapper(tiny_cfg, is_train=False)
    batch = [mapper(d) for d in synthetic_dicts["val"][:3]]
    with torch.no_grad():
        fused, reference = model(batch), eager(batch)
        for a, b in zip(fused, reference):
            torch.testing.assert_close(a["logits"], b["logits"], rtol=1e-5, atol=1e-6)
        out = model.encode(batch, output_attentions=True)
    attentions = out[0].attentions if isinstance(out, tuple) else out.attentions
    assert attentions is not None and len(attentions) == tiny_cfg.MODEL.VLBERT.NUM_LAYERS
    assert model.vl_bert.bert.config._attn_implementation == "sdpa"


def test_word_embedding_frozen_from_the_config(tiny_cfg, synthetic_dicts):
    # MODEL.VLBERT.WORD_EMBEDDING_FROZEN (official word_embedding_frozen): the unfrozen model's
    # weights give the same answers (the special tokens' copy is exact); a training step gives a
    # gradient to the copy's rows of the tokens it saw ([CLS], [SEP]) only and moves no row of the
    # frozen table, which the optimizer does not hold.
    from vlbert_d2.solver import build_optimizer

    inputs = _map(tiny_cfg, synthetic_dicts["val"][:2], False)
    trainable = _build(tiny_cfg).eval()
    tiny_cfg.MODEL.VLBERT.WORD_EMBEDDING_FROZEN = True
    model = _build(tiny_cfg).eval()
    model.load_state_dict(trainable.state_dict(), strict=True)
    with torch.no_grad():
        expected = torch.cat([r["logits"] for r in trainable(inputs)])
        torch.testing.assert_close(torch.cat([r["logits"] for r in model(inputs)]), expected)
    table = model.vl_bert.word_embeddings.weight
    before = table.detach().clone()
    optimizer = build_optimizer(tiny_cfg, model)
    assert all(p is not table for group in optimizer.param_groups for p in group["params"])
    model.train()
    sum(model(_map(tiny_cfg, synthetic_dicts["train"][:2], True)).values()).backward()
    optimizer.step()
    torch.testing.assert_close(table, before, rtol=0, atol=0)
    assert table.grad is None
    seen = model.vl_bert.special_word_embeddings.weight.grad.abs().sum(dim=1) > 0
    tok = VCRDatasetMapper(tiny_cfg, True).tokenizer
    assert seen[tok.cls_token_id] and seen[tok.sep_token_id]
    assert not seen[tok.mask_token_id] and not seen[tok.pad_token_id]  # VCR feeds no [MASK]; padding is masked
