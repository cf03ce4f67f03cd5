"""Parity with the official VL-BERT implementation (github jackroos/VL-BERT), on golden outputs
that its own code produced (``tools/official_parity/make_golden.py``; the data and how it was made:
``tests/fixtures/official_golden/README.md``). The official code is not needed here.

For each task (VCR Q->A with the RoI classification head, VQA, RefCOCO+, pre-training) the test
rebuilds the official model's state dict from the key list and the seed (the fill rule of
``tools/official_parity/golden_spec.py``), converts it with
``vlbert_d2.checkpoint.convert_official_state_dict`` (what ``tools/convert_vlbert_checkpoint.py``
runs), builds this project's model from the task's shipped config + the same small sizes, and
runs it in eval mode on the inputs the official model received. Outputs must agree within 1e-5
relative (max abs difference / max abs value, fp32).

The data mappers are bypassed: the model gets the official model's own inputs (the normalised
image's pixels, the boxes, the instance masks, and the token ids / segments / RoI tags / masks
that the official model built, taken at the entrance of its transformer). Pre-training's masked
RoIs are painted with the project's ``mask_region_pixels``. Where the project's head does not
return raw logits in eval mode, they are read from the head's own layers: VQA's and RefCOCO+'s
classifier output (forward hook), the VCR RoI classifier, the MLM and masked-RoI logits of every
position (head layers applied to ``VLBERT.encode`` / ``encode_text_only`` outputs). Losses are
compared in training mode with every dropout set to 0 (the official ones in eval mode).

Images: the model gets the raw BGR pixels and normalises them itself (pixel mean, std 1); the
batch is zero-padded to its largest image in normalised space, as both implementations batch.
(The official VCR loader also pads every image to a fixed 600x1200 canvas, ``FixPadding``, which
changes the RoI features near the bottom/right image border; that data-side step is not covered.)

Intermediate tensors (RoI features after res5, the fused visual embeddings, the transformer's
embedding output and each layer at the real positions of the first sequence) are compared as
well, so that a failure names the first component that differs.
"""
import json
import os
import sys

import pytest
import torch

from conftest import REPO

GOLDEN = os.path.join(REPO, "tests", "fixtures", "official_golden")
sys.path.insert(0, os.path.join(REPO, "tools", "official_parity"))
import golden_spec as spec  # noqa: E402

RTOL = 1e-5
TASKS = ["vcr", "vqa", "refcoco", "pretrain"]
CONFIGS = {"vcr": "VLBERT-Base-VCR.yaml", "vqa": "VLBERT-Base-VQA.yaml",
           "refcoco": "VLBERT-Base-RefCOCO+.yaml", "pretrain": "VLBERT-Base-Pretrain.yaml"}
# Project parameters the official model of a task does not have (with_pooler: false in the
# official VQA, RefCOCO+ and pre-training configs; none of those heads reads the pooler).
NOT_IN_OFFICIAL = {
    "vcr": set(),
    "vqa": {"vl_bert.bert.pooler.dense.weight", "vl_bert.bert.pooler.dense.bias"},
    "refcoco": {"vl_bert.bert.pooler.dense.weight", "vl_bert.bert.pooler.dense.bias"},
    "pretrain": {"vl_bert.bert.pooler.dense.weight", "vl_bert.bert.pooler.dense.bias"},
}


def _golden(task):
    return torch.load(os.path.join(GOLDEN, f"{task}.pt"), weights_only=True)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("official_parity")
    os.makedirs(root / "vocab")
    spec.write_vocab(str(root / "vocab" / "vocab.txt"))
    answers = root / "answers.txt"
    answers.write_text("\n".join(f"answer{i}" for i in range(spec.NUM_ANSWERS)) + "\n")
    return {"vocab": str(root / "vocab"), "answers": str(answers)}


def project_cfg(task, assets):
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config
    from vlbert_d2.config import finalize_vlbert_config

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", CONFIGS[task]))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", spec.RESNET_DEPTH,
        "MODEL.VLBERT.BERT_NAME", "",
        "MODEL.VLBERT.TOKENIZER", assets["vocab"],
        "MODEL.VLBERT.HIDDEN_SIZE", spec.HIDDEN_SIZE,
        "MODEL.VLBERT.NUM_LAYERS", spec.NUM_LAYERS,
        "MODEL.VLBERT.NUM_HEADS", spec.NUM_HEADS,
        "MODEL.VLBERT.INTERMEDIATE_SIZE", spec.INTERMEDIATE_SIZE,
        # The pooler (official RoIAlign), resolution, dilation and geometry size are the shipped
        # configs' own: the comparison checks them too. The golden inputs were padded to the
        # batch's largest image on both sides (the official VCR canvas is tested on its own,
        # test_official_settings.py).
        "MODEL.VLBERT.FIXED_PAD", (0, 0),
        "MODEL.VLBERT.DETECTOR_WEIGHTS", "",
        # Dropout off everywhere, so that the training-mode losses are deterministic (eval-mode
        # outputs do not depend on it).
        "MODEL.VLBERT.HIDDEN_DROPOUT", 0.0,
        "MODEL.VLBERT.ATTENTION_DROPOUT", 0.0,
        "MODEL.VLBERT.FUSION_DROPOUT", 0.0,
        "MODEL.VLBERT.VCR.CLASSIFIER_DROPOUT", 0.0,
        "MODEL.VLBERT.VQA.CLASSIFIER_DROPOUT", 0.0,
        "MODEL.VLBERT.REFCOCO.CLASSIFIER_DROPOUT", 0.0,
        "MODEL.VLBERT.VQA.ANSWER_VOCAB", assets["answers"],
        "MODEL.VLBERT.PRETRAIN.NUM_REGION_CLASSES", spec.NUM_REGION_CLASSES,
    ])
    return finalize_vlbert_config(cfg)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class Capture:
    """Forward hooks on the project model's components (the last call of each is kept)."""

    def __init__(self, model):
        self.store = {}
        self.handles = []
        mods = {"appearance": model.region_extractor, "fused": model.fusion,
                "embeddings": model.vl_bert.bert.embeddings}
        for i, layer in enumerate(model.vl_bert.bert.encoder.layer):
            mods[f"layer{i}"] = layer
        head = model.head
        if hasattr(head, "classifier"):
            mods["head_classifier"] = head.classifier
        for name, m in mods.items():
            self.handles.append(m.register_forward_hook(self._hook(name)))
        self.handles.append(model.vl_bert.register_forward_hook(self._vl_output))

    def _hook(self, name):
        def hook(module, args, out):
            self.store[name] = _first(out).detach().clone()
        return hook

    def _vl_output(self, module, args, out):
        self.store["vl_output"] = out  # VLBertOutput

    def close(self):
        for h in self.handles:
            h.remove()


def _real_row0(seq, attention_mask):
    """(S, T, H) in the project's [text | RoI slots | END] layout -> (real elements of row 0, H),
    in the official packed order (text, RoIs, [END])."""
    return seq[0][attention_mask[0].bool()]


def _per_seq_rois(t, object_mask, seq_to_input):
    """(S, N, C) -> (sum over sequences of their real RoIs, C), sequence-major."""
    return torch.cat([t[s][object_mask[int(seq_to_input[s])].bool()] for s in range(t.shape[0])])


class TaskRun:
    """Everything a task's tests compare: {name: (project tensor or an error string, golden)}."""

    def __init__(self, task, assets):
        from detectron2.modeling import build_model

        from vlbert_d2.checkpoint import convert_official_state_dict

        self.task = task
        self.golden = _golden(task)
        layout = spec.read_keys(os.path.join(GOLDEN, "official_keys.txt"), task)
        official = spec.fill_state_dict(layout, spec.SEEDS[task])
        torch.manual_seed(0)
        self.model = build_model(project_cfg(task, assets)).eval()
        shapes = {k: v.shape for k, v in self.model.state_dict().items()}
        self.converted, self.report = convert_official_state_dict(official, shapes)
        self.missing, self.unexpected = self.model.load_state_dict(self.converted, strict=False)
        self.results = {}
        images = torch.load(os.path.join(GOLDEN, "images.pt"), weights_only=True)
        self.images = [i.to(torch.float32) for i in images["images_bgr"]]
        self.boxes = images["boxes"]
        getattr(self, f"_run_{task}")()

    # --- helpers -------------------------------------------------------------------------
    def forward_captured(self, inputs):
        """The model's eval forward on ``inputs`` with its intermediate tensors captured."""
        cap = Capture(self.model)
        with torch.no_grad():
            results = self.model(inputs)
        cap.close()
        return cap, results

    def put(self, name, actual):
        self.results[name] = (actual, self.golden["outputs"].get(name, self.golden["intermediates"].get(name)))

    def put_intermediates(self, cap, attention_mask):
        g = self.golden["intermediates"]
        self.put("fused", cap.store["fused"])
        if "appearance" in g:
            self.put("appearance", cap.store["appearance"])
        for name in ("embeddings", "layer0", "layer1"):
            self.put(name, _real_row0(cap.store[name], attention_mask))

    def text_fields(self, b):
        """Input b's text sequences as the official transformer received them: (K, L) tensors
        (VCR: K = 4 choices; else K = 1)."""
        t = self.golden["text"]
        sl = b if t["input_ids"].dim() == 3 else slice(b, b + 1)
        return {k: t[k][sl] for k in ("input_ids", "token_type_ids", "text_mask", "text_tags")}

    # --- tasks ---------------------------------------------------------------------------
    def _run_vcr(self):
        g = self.golden["inputs"]
        inputs = []
        for b, boxes in enumerate(self.boxes):
            n = len(boxes)
            x = {"image": self.images[b], "boxes": boxes, "masks": g["masks"][b, :n],
                 # official class indices count the background as 0; here the whole image is -1
                 "object_classes": g["boxes"][b, :n, 5].long() - 1,
                 "label": int(g["answer_label"][b])}
            x.update(self.text_fields(b))
            inputs.append(x)
        cap, results = self.forward_captured(inputs)
        outputs = cap.store["vl_output"]
        self.put("vcr_logits", torch.stack([r["logits"] for r in results]))
        roi_classifier = getattr(self.model.head, "roi_classifier", None)
        if roi_classifier is None:
            self.results["roi_cls_logits"] = ("the VCR head has no RoI classifier (roi_classifier)",
                                              self.golden["outputs"]["roi_cls_logits"])
        else:
            with torch.no_grad():
                logits = roi_classifier(outputs.objects)  # (S, N, 81), S = 4 choices per input
            counts = [len(x["boxes"]) for x in inputs for _ in range(x["input_ids"].shape[0])]
            self.put("roi_cls_logits", torch.cat([logits[s, :n] for s, n in enumerate(counts)]))
        self.put_intermediates(cap, outputs.attention_mask)
        self.train_losses(inputs, {"loss_vcr": "loss_vcr", "loss_roi_cls": "loss_roi_cls"})

    def _run_vqa(self):
        g = self.golden["inputs"]
        t = self.golden["text"]
        inputs = []
        for b, boxes in enumerate(self.boxes):
            x = {"image": self.images[b], "boxes": boxes, "answer_position": int(t["answer_position"][b]),
                 "answer_target": g["label"][b]}
            x.update(self.text_fields(b))
            inputs.append(x)
        cap, _ = self.forward_captured(inputs)
        self.put("answer_logits", cap.store["head_classifier"])
        self.put_intermediates(cap, cap.store["vl_output"].attention_mask)
        self.train_losses(inputs, {"loss_vqa": "loss_vqa"})

    def _run_refcoco(self):
        g = self.golden["inputs"]
        inputs = []
        for b, boxes in enumerate(self.boxes):
            x = {"image": self.images[b], "boxes": boxes, "region_labels": g["label"][b, : len(boxes)]}
            x.update(self.text_fields(b))
            inputs.append(x)
        cap, _ = self.forward_captured(inputs)
        logits = cap.store["head_classifier"][..., 0]  # (B, N)
        self.put("roi_logits", torch.cat([logits[b, : len(x["boxes"])] for b, x in enumerate(inputs)]))
        self.put_intermediates(cap, cap.store["vl_output"].attention_mask)
        self.train_losses(inputs, {"loss_ref": "loss_ref"})

    def _run_pretrain(self):
        from vlbert_d2.data.pretrain_mapper import mask_region_pixels

        g = self.golden["inputs"]
        C = spec.NUM_REGION_CLASSES
        captions, texts = [], []
        for b, boxes in enumerate(self.boxes):
            n = len(boxes)
            masked = (g["mvrc_ops"][b, :n] == 1)
            x = {"image": mask_region_pixels(self.images[b], boxes, masked.tolist(), spec.PIXEL_MEAN),
                 "boxes": boxes, "mvrc_masked": masked, "mlm_labels": g["mlm_labels"][b:b + 1],
                 "mvrc_targets": g["mvrc_labels"][b, :n, :C]}
            x.update(self.text_fields(b))
            captions.append(x)
        for b in range(g["aux_text"].shape[0]):
            ids = g["aux_text"][b]
            L = int((ids > 0).sum())
            texts.append({"input_ids": ids[None, :L], "token_type_ids": torch.zeros((1, L), dtype=torch.long),
                          "text_mask": torch.ones((1, L), dtype=torch.long),
                          "mlm_labels": g["aux_mlm_labels"][b:b + 1, :L]})
        head = self.model.head
        cap = Capture(self.model)
        with torch.no_grad():
            outputs, batch = self.model.encode(captions)
            mlm = head.mlm_logits(outputs.text, batch.word_embeddings)
            mvrc = head.mvrc_classifier(head.mvrc_transform(outputs.objects))
        cap.close()
        self.put("mlm_logits_caption", mlm[outputs.attention_mask[:, : mlm.shape[1]].bool()])
        self.put("mvrc_logits", _per_seq_rois(mvrc, batch.object_mask, batch.seq_to_input))
        self.put_intermediates(cap, outputs.attention_mask)
        cap = Capture(self.model)
        with torch.no_grad():
            outputs_t, batch_t = self.model.encode_text_only(texts)
            mlm_t = head.mlm_logits(outputs_t.text, batch_t.word_embeddings)
        cap.close()
        text_mask = outputs_t.attention_mask[:, : mlm_t.shape[1]] > 0
        self.put("mlm_logits_text_only", mlm_t[text_mask])
        self.put("text_only_embeddings", _real_row0(cap.store["embeddings"], outputs_t.attention_mask))
        self.put("text_only_layer1", _real_row0(cap.store["layer1"], outputs_t.attention_mask))
        self.train_losses(captions + texts, {"loss_mlm": "loss_mlm", "loss_mlm_text": "loss_mlm_text",
                                             "loss_mvrc": "loss_mvrc"})

    def train_losses(self, inputs, names):
        self.model.train()
        try:
            losses = self.model(inputs)
        except Exception as e:  # reported by the loss tests
            for ours in names:
                self.results[ours] = (f"training forward failed: {type(e).__name__}: {e}", self.golden["outputs"][names[ours]])
            return
        finally:
            self.model.eval()
        for ours, theirs in names.items():
            if ours in losses:
                self.results[ours] = (losses[ours].detach(), self.golden["outputs"][theirs])
            else:
                self.results[ours] = (f"no '{ours}' among the losses {sorted(losses)}", self.golden["outputs"][theirs])

    # --- reporting -------------------------------------------------------------------------
    def compare(self, name):
        actual, expected = self.results[name]
        if isinstance(actual, str):
            return None, actual
        if tuple(actual.shape) != tuple(expected.shape):
            return None, f"shape {tuple(actual.shape)}, official {tuple(expected.shape)}"
        return spec.rel_err(actual, expected), ""

    def table(self):
        lines = []
        for name in self.results:
            err, why = self.compare(name)
            lines.append(f"  {name:22s} " + (f"rel err {err:.2e}" if err is not None else why))
        return f"{self.task}: project vs official\n" + "\n".join(lines)


_RUNS = {}


@pytest.fixture
def run(assets, request):
    task = request.param
    if task not in _RUNS:
        _RUNS[task] = TaskRun(task, assets)
    return _RUNS[task]


def _manifest():
    with open(os.path.join(GOLDEN, "manifest.json")) as f:
        return json.load(f)


OUTPUTS = [(t, name) for t in TASKS for name in _manifest()["tasks"][t]["outputs"] if not name.startswith("loss")]
LOSSES = [(t, name) for t in TASKS for name in _manifest()["tasks"][t]["outputs"] if name.startswith("loss")]
COMPONENTS = [(t, name) for t in TASKS for name in
              (["fused", "embeddings", "layer0", "layer1"] + (["appearance"] if t == "refcoco" else [])
               + (["text_only_embeddings", "text_only_layer1"] if t == "pretrain" else []))]


@pytest.mark.parametrize("run", TASKS, indirect=True)
def test_conversion_fills_the_model(run):
    """Every official key is used and every project parameter comes from the checkpoint."""
    allowed = NOT_IN_OFFICIAL[run.task]
    problems = []
    if run.report.unmapped:
        problems.append(f"official keys the converter left unmapped: {run.report.unmapped}")
    if run.unexpected:
        problems.append(f"converted keys the model does not have: {run.unexpected}")
    missing = sorted(set(run.missing) - allowed)
    if missing:
        problems.append(f"model parameters the converted checkpoint does not fill: {missing}")
    assert not problems, f"{run.task}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("run,name", OUTPUTS, indirect=["run"])
def test_outputs_match_official(run, name):
    err, why = run.compare(name)
    assert err is not None and err <= RTOL, f"{name}: {why or f'rel err {err:.2e} > {RTOL}'}\n{run.table()}"


@pytest.mark.parametrize("run,name", LOSSES, indirect=["run"])
def test_losses_match_official(run, name):
    err, why = run.compare(name)
    assert err is not None and err <= RTOL, f"{name}: {why or f'rel err {err:.2e} > {RTOL}'}\n{run.table()}"


@pytest.mark.parametrize("run,name", COMPONENTS, indirect=["run"])
def test_components_match_official(run, name):
    """Intermediate tensors, to name the first component that differs when an output does."""
    err, why = run.compare(name)
    assert err is not None and err <= RTOL, f"{name}: {why or f'rel err {err:.2e} > {RTOL}'}\n{run.table()}"


def test_golden_data_is_small_and_complete():
    total = sum(os.path.getsize(os.path.join(GOLDEN, f)) for f in os.listdir(GOLDEN))
    assert total < 400_000, f"golden data is {total} bytes"
    manifest = _manifest()
    assert sorted(manifest["tasks"]) == sorted(TASKS)
    for task in TASKS:
        layout = spec.read_keys(os.path.join(GOLDEN, "official_keys.txt"), task)
        assert len(layout) > 400, (task, len(layout))


@pytest.mark.parametrize("run", ["vqa"], indirect=True)
def test_converter_tool_and_model_weights_load_the_official_model(run, assets, tmp_path):
    """The documented path: an official checkpoint file (``{"state_dict": {"module.<key>": ..}}``)
    -> ``tools/convert_vlbert_checkpoint.py IN OUT --config-file CFG`` -> ``MODEL.WEIGHTS``
    (``VLBertCheckpointer``, as tools/train_net.py loads it) gives the very model whose outputs
    equal the official ones above."""
    import importlib.util

    from detectron2.modeling import build_model

    from vlbert_d2.checkpoint import VLBertCheckpointer

    layout = spec.read_keys(os.path.join(GOLDEN, "official_keys.txt"), run.task)
    official = spec.fill_state_dict(layout, spec.SEEDS[run.task])
    torch.save({"state_dict": {"module." + k: v for k, v in official.items()}}, tmp_path / "official.model")
    cfg = project_cfg(run.task, assets)
    (tmp_path / "cfg.yaml").write_text(cfg.dump())
    tool = importlib.util.spec_from_file_location("convert_vlbert_checkpoint",
                                                  os.path.join(REPO, "tools", "convert_vlbert_checkpoint.py"))
    mod = importlib.util.module_from_spec(tool)
    tool.loader.exec_module(mod)
    mod.main([str(tmp_path / "official.model"), str(tmp_path / "converted.pth"),
              "--config-file", str(tmp_path / "cfg.yaml")])
    model = build_model(cfg).eval()
    VLBertCheckpointer(model).load(str(tmp_path / "converted.pth"))
    theirs = run.model.state_dict()
    ours = model.state_dict()
    differ = [k for k in theirs if k not in NOT_IN_OFFICIAL[run.task] and not torch.equal(ours[k], theirs[k])]
    assert not differ, f"parameters that differ from the converted official model: {differ}"
