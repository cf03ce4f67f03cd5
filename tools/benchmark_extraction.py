#!/usr/bin/env python
"""Speed of region extraction (the detector of tools/extract_regions.py) against the arithmetic it
needs, on this machine.

It prints:
  1. the arithmetic per image, from the layer shapes (projects/BottomUpAttention/bua/flops.py):
     GMACs and GFLOPs (1 MAC = 2 FLOPs) per stage (stem, res2-res4 of the trunk, RPN, res5 on
     the RoIs, class/box predictor, attribute head);
  2. this machine's measured fp32 rate (GFLOP/s) on the dominant shapes: every res5 convolution
     on a chunk of RoI maps, channels-last and NCHW, and a large matmul. The best of them is the
     "peak" (what this device's convolution / matmul kernels reach at these shapes);
  3. the bound = FLOPs / peak: no implementation at that rate takes less time per image (and,
     for reference, the time with res5 at the measured rate of each of its shapes);
  4. the measured seconds per image and images per second at each --batch-size, and
     measured / bound (the fast path of bua.RegionDetector; --compare-modules: also the modules'
     own, unfused forward, the path before the fast one existed);
  5. the time per stage at batch 1 (torch.profiler labels "bua.trunk", "bua.rpn", "bua.res5",
     "bua.select"), and on CUDA the peak memory.

The detector has random weights (or --weights), its frozen batch norms calibrated on the synthetic
image (bua.testing.calibrate_frozen_norms) so that activations stay sane and the RPN yields
--proposals RoIs (its POST_NMS_TOPK_TEST). Images are synthetic, --size W x H, each of a batch
different. Timing: --warmup calls, then --iters calls per batch size; the median is reported
(and the best). On a shared CPU, repeat it: the spread shows the noise.

    python tools/benchmark_extraction.py                                 # CPU, 2 threads, 640x480, 300 RoIs
    python tools/benchmark_extraction.py --device cuda --batch-size 1 4 8
    python tools/benchmark_extraction.py --compare-modules --iters 2     # also the unfused modules
    python tools/benchmark_extraction.py --size 320x240 --proposals 50 MODEL.RESNETS.DEPTH 50
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's own chatter (e.g. no GPU found)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "projects", "BottomUpAttention", "configs", "BUA-R101-C4-VG.yaml")
STAGES = ("bua.trunk", "bua.rpn", "bua.res5", "bua.select", "bua.box_head")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, help="detector config (default: %(default)s)")
    p.add_argument("--weights", default="none", help="detector weights (.pkl / .pth), or 'none': random weights "
                   "with calibrated norms (default: %(default)s; the values only change the RoIs the RPN keeps and the "
                   "regions selected)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s; cuda: timings synchronize, "
                   "peak memory reported)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--size", default="640x480", help="image size WxH before resizing (default: %(default)s; "
                   "the config resizes it, 640x480 -> 800x600)")
    p.add_argument("--proposals", type=int, default=300, help="RoIs per image, the RPN's POST_NMS_TOPK_TEST "
                   "(default: %(default)s, the config's)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 2], help="images per detector call, one "
                   "timing each (default: 1 2)")
    p.add_argument("--iters", type=int, default=3, help="timed calls per batch size (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default: %(default)s)")
    p.add_argument("--roi-chunk", type=int, default=None, help="RoIs per res5 pass (default: the detector's: "
                   "16 on a CPU, all of an image's on a GPU)")
    p.add_argument("--compare-modules", action="store_true", help="also time the modules' own forward "
                   "(RegionDetector(fast=False): unfused norms, NCHW, res5 on all RoIs at once) at batch 1")
    p.add_argument("--rate-seconds", type=float, default=0.5, help="time spent measuring each rate shape "
                   "(default: %(default)s)")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n @ n x n matmul rate "
                   "(default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="detector config overrides (KEY VALUE ...)")
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must be WxH, e.g. 640x480, got {args.size!r}")
    args.image_hw = (h, w)
    for name in ("threads", "proposals", "iters", "matmul_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if min(args.batch_size) < 1 or (args.roi_chunk is not None and args.roi_chunk < 1) or args.warmup < 0:
        p.error("--batch-size and --roi-chunk must be >= 1, --warmup >= 0")
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            p.error("--device cuda: CUDA is not available here")
    return args


def _sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _time(fn, device, min_seconds, min_reps=3):
    """Best seconds of one call of fn (after one warm-up), over >= min_reps calls / min_seconds."""
    fn()
    _sync(device)
    best, spent, reps = float("inf"), 0.0, 0
    while reps < min_reps or spent < min_seconds:
        t = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def measure_rates(layers, device, chunk, min_seconds=0.5, matmul_size=4096):
    """Measured fp32 GFLOP/s of each distinct res5 convolution shape on ``chunk`` RoI maps (both
    memory formats) and of a large matmul.

    Returns:
        list[dict]: name, gflop (per call), gflops (rate).
    """
    import torch
    import torch.nn.functional as F

    rates, seen = [], set()
    with torch.no_grad():
        for layer in layers:
            key = (layer.in_channels, layer.out_channels, layer.kernel, layer.dilation, layer.out_hw)
            if layer.stage != "res5" or key in seen:
                continue
            seen.add(key)
            h, w = layer.out_hw
            pad = layer.dilation * (layer.kernel // 2)
            macs = chunk * h * w * layer.out_channels * layer.in_channels * layer.kernel ** 2 // layer.groups
            for fmt, fmt_name in ((torch.channels_last, "NHWC"), (torch.contiguous_format, "NCHW")):
                x = torch.randn(chunk, layer.in_channels, h, w, device=device).contiguous(memory_format=fmt)
                wt = torch.randn(layer.out_channels, layer.in_channels // layer.groups, layer.kernel, layer.kernel,
                                 device=device).contiguous(memory_format=fmt)
                b = torch.randn(layer.out_channels, device=device)
                t = _time(lambda: F.conv2d(x, wt, b, 1, pad, layer.dilation, layer.groups), device, min_seconds)
                rates.append({"name": f"conv {layer.kernel}x{layer.kernel}"
                                      f"{' dil ' + str(layer.dilation) if layer.dilation > 1 else ''} "
                                      f"{layer.in_channels}->{layer.out_channels} on {chunk}x{h}x{w} {fmt_name}",
                              "gflop": 2 * macs / 1e9, "gflops": 2 * macs / t / 1e9})
        n = matmul_size
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        t = _time(lambda: a @ b, device, min_seconds)
        rates.append({"name": f"matmul {n}x{n} @ {n}x{n}", "gflop": 2 * n ** 3 / 1e9, "gflops": 2 * n ** 3 / t / 1e9})
    return rates


def synthetic_images(count, hw, seed):
    """(H, W, 3) uint8 BGR images: noise and a few flat rectangles, each different."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = hw
    out = []
    for _ in range(count):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for _ in range(6):
            y, x = int(rng.integers(0, h - h // 4)), int(rng.integers(0, w - w // 4))
            img[y:y + int(rng.integers(h // 10, h // 3)), x:x + int(rng.integers(w // 10, w // 3))] = rng.integers(
                0, 256, 3, dtype=np.uint8)
        out.append(img)
    return out


def build_detector(args):
    """The detector, with calibrated random weights unless --weights; --proposals RoIs."""
    import torch

    import bua
    from bua.testing import calibrate_frozen_norms

    opts = list(args.opts) + ["MODEL.RPN.POST_NMS_TOPK_TEST", str(args.proposals)]  # --proposals wins
    weights = "" if args.weights == "none" else args.weights
    torch.manual_seed(0)
    detector = bua.RegionDetector(bua.setup_detector_cfg(args.config_file, weights, opts, args.device),
                                  roi_chunk=args.roi_chunk)
    if not weights:
        # Calibrate on few RoIs (the modules' forward runs here, with hooks): statistics, not speed.
        rpn = detector.model.proposal_generator
        topk = rpn.post_nms_topk[False]
        rpn.post_nms_topk[False] = min(topk, 32)
        try:
            calibrate_frozen_norms(detector, synthetic_images(1, args.image_hw, seed=1))
        finally:
            rpn.post_nms_topk[False] = topk
    return detector


def time_detector(detector, images, iters, warmup, device):
    """Seconds per call of ``detector(images)``: list of the timed calls; CUDA peak memory."""
    import torch

    for _ in range(warmup):
        detector(images)
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        detector(images)
        _sync(device)
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else None
    return times, peak


def stage_times(detector, image, device):
    """Seconds per stage of one image (torch.profiler's CPU totals of the "bua.*" labels; on CUDA
    the device time of the kernels under them)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        detector([image])
        _sync(device)
    out = {}
    for e in prof.key_averages():
        if e.key in STAGES:
            dev = 0
            if device.startswith("cuda"):  # the kernels' time (older torch: cuda_time_total)
                dev = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            out[e.key] = max(out.get(e.key, 0), (dev or e.cpu_time_total) / 1e6)
    return out


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from bua.flops import extraction_layers, stage_totals, total_macs
    from bua.regions import DEFAULT_CPU_ROI_CHUNK

    device = args.device
    detector = build_detector(args)
    images = synthetic_images(max(args.batch_size), args.image_hw, seed=2)
    counts = []  # RoIs per image, as the RPN returns them (a hook on the RPN keeps the fast path)
    hook = detector.model.proposal_generator.register_forward_hook(lambda m, i, out: counts.append(len(out[0][0])))
    try:
        regions = detector(images[:1])[0]
    finally:
        hook.remove()
    num_rois = counts[0]
    layers = extraction_layers(detector.cfg, args.image_hw, num_proposals=num_rois, num_regions=len(regions))
    totals = stage_totals(layers)
    flops = 2 * total_macs(layers)
    report = {"device": _device_name(device), "threads": torch.get_num_threads(), "size": args.size,
              "resized_hw": list(_resized(detector, args.image_hw)), "proposals": num_rois, "regions": len(regions),
              "stages_gmacs": {k: v / 1e9 for k, v in totals.items()}, "gflop": flops / 1e9}
    print(f"device: {report['device']}, {report['threads']} threads, torch {torch.__version__}")
    print(f"image {args.size} -> input {report['resized_hw'][1]}x{report['resized_hw'][0]}, {num_rois} RoIs "
          f"(requested {args.proposals}), {len(regions)} regions kept")
    if num_rois < args.proposals:
        print(f"  note: the RPN gave {num_rois} RoIs after NMS, not {args.proposals}; the counts use {num_rois}")
    print("\narithmetic per image (bua/flops.py, from the layer shapes):")
    for stage, macs in totals.items():
        print(f"  {stage:14s} {macs / 1e9:9.2f} GMAC {2 * macs / 1e9:9.2f} GFLOP  {100 * macs / (flops / 2):5.1f}%")
    print(f"  {'total':14s} {flops / 2e9:9.2f} GMAC {flops / 1e9:9.2f} GFLOP")

    chunk = args.roi_chunk or (num_rois if device.startswith("cuda") else DEFAULT_CPU_ROI_CHUNK)
    rates = measure_rates(layers, device, chunk, args.rate_seconds, args.matmul_size)
    peak = max(r["gflops"] for r in rates)
    report["rates"] = rates
    report["peak_gflops"] = peak
    print(f"\nmeasured fp32 rate ({report['threads']} threads on the CPU)" if not device.startswith("cuda")
          else "\nmeasured fp32 rate (TF32 where torch allows it)")
    for r in rates:
        print(f"  {r['name']:48s} {r['gflops']:9.1f} GFLOP/s")
    bound = flops / (peak * 1e9)
    report["bound_s"] = bound
    print(f"  peak {peak:.1f} GFLOP/s -> bound {bound:.3f} s per image ({1 / bound:.2f} images/s)")
    # For reference: res5 at the best measured rate of each of its shapes, the rest at the peak.
    shape_bound = sum(2 * layer.macs / (_shape_rate(layer, rates, peak) * 1e9) for layer in layers)
    report["shape_bound_s"] = shape_bound
    print(f"  (res5 at the rate of each of its shapes, the rest at the peak: {shape_bound:.3f} s per image)")

    runs = []
    for bs in args.batch_size:
        times, mem = time_detector(detector, images[:bs], args.iters, args.warmup, device)
        runs.append(_run_record("fast", bs, times, mem, bound))
    if args.compare_modules:
        detector.fast = False
        try:
            times, mem = time_detector(detector, images[:1], args.iters, min(args.warmup, 1), device)
            runs.append(_run_record("modules", 1, times, mem, bound))
        finally:
            detector.fast = True
    report["runs"] = runs
    print("\nmeasured (median of --iters calls; best in brackets):")
    for r in runs:
        mem = f", peak memory {r['peak_memory_mb']:.0f} MB" if r["peak_memory_mb"] is not None else ""
        print(f"  {r['path']:7s} batch {r['batch']}: {r['s_per_image']:.3f} s/image [{r['best_s_per_image']:.3f}], "
              f"{r['images_per_s']:.3f} images/s, {r['ratio_to_bound']:.2f} x bound{mem}")

    stages = stage_times(detector, images[0], device)
    report["stage_s"] = stages
    print("\nper stage, one image (fast path, torch.profiler):")
    for k, v in stages.items():
        print(f"  {k:12s} {v:8.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwritten {args.json}")
    return report


def _shape_rate(layer, rates, peak):
    """Best measured GFLOP/s of a res5 layer's shape (either memory format); others: the peak."""
    if layer.stage != "res5":
        return peak
    dil = f" dil {layer.dilation}" if layer.dilation > 1 else ""
    name = f"conv {layer.kernel}x{layer.kernel}{dil} {layer.in_channels}->{layer.out_channels} on "
    return max((r["gflops"] for r in rates if r["name"].startswith(name)), default=peak)


def _run_record(path, bs, times, mem, bound):
    med = statistics.median(times)
    return {"path": path, "batch": bs, "times_s": times, "s_per_image": med / bs, "best_s_per_image": min(times) / bs,
            "images_per_s": bs / med, "ratio_to_bound": med / bs / bound,
            "peak_memory_mb": None if mem is None else mem / 2 ** 20}


def _resized(detector, hw):
    from bua.flops import resized_size

    return resized_size(*hw, detector.cfg.INPUT.MIN_SIZE_TEST, detector.cfg.INPUT.MAX_SIZE_TEST)


def _device_name(device):
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({os.cpu_count()} CPUs)"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
