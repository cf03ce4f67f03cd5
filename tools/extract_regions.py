#!/usr/bin/env python
"""Detect the regions of images with the bottom-up-attention detector and write, per image, the
detection JSON that the VL-BERT loaders read (vlbert_d2/data/detections.py): image_id, image_w,
image_h, num_boxes, boxes (N x 4, pixels), classes (N x 1601 class distribution, background in
column 0) and, with --features, features (N x 2048 pooled res5).

    # VQA v2 (COCO train2014 images): 10 to 100 regions of confidence >= 0.5 (VL-BERT, section 4.1),
    # in the layout the vqa_* datasets read (COCO_train2014_000000000042.jpg -> 42.json)
    python tools/extract_regions.py --input datasets/coco/train2014 \
        --output datasets/coco/vgbua_res101_precomputed/trainval2014_resnet101_faster_rcnn_genome \
        --weights path/to/faster_rcnn_from_caffe_attr.pkl --features
    # a registered detectron2 dataset, 36 regions per image, 4 GPUs, 4 images per batch
    python tools/extract_regions.py --dataset coco_2014_val --output out/coco_val_36 \
        --weights path/to/faster_rcnn_from_caffe_attr.pkl --num-boxes 36 --num-gpus 4 --batch-size 4

Files are named {image_id}.json (--file-names image_id: the number an image's name ends with, as
COCO_train2014_000000000042.jpg -> 42.json, which the VQA loader reads; a dataset's own image_id)
or <image name>.json (--file-names stem, which tools/demo.py --boxes <folder> reads).

Resumable: rerun the same command after an interruption; images whose file exists and reads back
as a valid detection file are skipped (files are written atomically), so none is lost or written
twice. Images that cannot be read (or where the detector fails) are reported, listed in
<output>/failed_images.tsv and skipped; they never stop the run. The order is deterministic
(sorted paths); with several GPUs each process takes every n-th image.
"""
import argparse
import logging
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from detectron2.engine import launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from bua import RegionDetector, setup_detector_cfg  # noqa: E402
from bua.extraction import (extract_regions, items_from_dataset_dicts, list_folder_images,  # noqa: E402
                            plan_outputs, write_failure_report)
from vlbert_d2.utils.malloc import tune_malloc  # noqa: E402

DEFAULT_CONFIG = os.path.join(REPO, "projects", "BottomUpAttention", "configs", "BUA-R101-C4-VG.yaml")
logger = logging.getLogger("extract_regions")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("images (one of)")
    src.add_argument("--input", help="a folder of images (.jpg .jpeg .png .bmp .gif .tif .tiff .webp)")
    src.add_argument("--dataset", nargs="+", help="registered detectron2 dataset name(s) (their file_name and "
                     "image_id; the vlbert_d2 datasets are registered on import)")
    src.add_argument("--recursive", action="store_true", help="with --input: also the images of its subfolders")
    p.add_argument("--output", required=True, help="folder of the per-image detection files (created or resumed)")
    p.add_argument("--config-file", default=DEFAULT_CONFIG, help="detector config (default: %(default)s)")
    p.add_argument("--weights", default=None, help="detector weights: faster_rcnn_from_caffe_attr.pkl (or "
                   "faster_rcnn_from_caffe.pkl with MODEL.BUA.ATTRIBUTE_ON False) or a detectron2 .pth "
                   "(required unless the config sets MODEL.WEIGHTS; 'none': random weights, for tests)")
    sel = p.add_argument_group("regions per image")
    sel.add_argument("--min-boxes", type=int, default=None, help="at least this many (default: config, 10)")
    sel.add_argument("--max-boxes", type=int, default=None, help="at most this many (default: config, 100)")
    sel.add_argument("--score-thresh", type=float, default=None,
                     help="keep the regions with confidence >= this (default: config, 0.5)")
    sel.add_argument("--num-boxes", type=int, default=None,
                     help="a fixed count instead (e.g. 36): the N most confident regions")
    p.add_argument("--features", action="store_true", help="also store the pooled features (N x 2048)")
    p.add_argument("--file-names", choices=["image_id", "stem"], default="image_id",
                   help="output file names (default: %(default)s; see above)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=2, help="image-reading processes (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    dist = p.add_argument_group("several GPUs (detectron2's launch; CUDA only)")
    dist.add_argument("--num-gpus", type=int, default=1, help="processes per machine, one GPU each")
    dist.add_argument("--num-machines", type=int, default=1)
    dist.add_argument("--machine-rank", type=int, default=0)
    dist.add_argument("--dist-url", default="auto", help="e.g. tcp://host:port for several machines")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="detector config overrides (KEY VALUE ...)")
    args = p.parse_args(argv)
    if (args.input is None) == (args.dataset is None):
        p.error("give one of --input (a folder) and --dataset (registered dataset names)")
    if args.num_boxes is not None and (args.min_boxes is not None or args.max_boxes is not None):
        p.error("--num-boxes is a fixed count: do not combine it with --min-boxes/--max-boxes")
    for name in ("num_boxes", "min_boxes", "max_boxes", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.num_workers < 0:
        p.error("--num-workers must be >= 0")
    return args


def selection_opts(args):
    """Config overrides of the region selection given by the command line."""
    opts = []
    if args.num_boxes is not None:
        opts += ["MODEL.BUA.MIN_BOXES", str(args.num_boxes), "MODEL.BUA.MAX_BOXES", str(args.num_boxes)]
    if args.min_boxes is not None:
        opts += ["MODEL.BUA.MIN_BOXES", str(args.min_boxes)]
    if args.max_boxes is not None:
        opts += ["MODEL.BUA.MAX_BOXES", str(args.max_boxes)]
    if args.score_thresh is not None:
        opts += ["MODEL.BUA.SCORE_THRESH", str(args.score_thresh)]
    return opts


def list_items(args):
    """All images with their output files, in a deterministic order."""
    if args.input is not None:
        items = list_folder_images(args.input, recursive=args.recursive)
        root = args.input
    else:
        from detectron2.data import DatasetCatalog

        import vlbert_d2  # noqa: F401  (registers the vlbert_d2 datasets)

        unknown = [n for n in args.dataset if n not in DatasetCatalog.list()]
        if unknown:
            raise SystemExit(f"--dataset: not registered: {', '.join(unknown)}")
        items = items_from_dataset_dicts([d for n in args.dataset for d in DatasetCatalog.get(n)])
        root = os.path.commonpath([os.path.dirname(os.path.abspath(i.path)) for i in items]) if items else None
    try:
        return plan_outputs(items, args.output, args.file_names, root=root)
    except ValueError as e:
        raise SystemExit(f"--file-names {args.file_names}: {e}") from None


def worker(args):
    """One process: its share of the images (all of them when alone)."""
    tune_malloc()  # freed tensors reused, not page-faulted in again (vlbert_d2/utils/malloc.py)
    rank, world = comm.get_rank(), comm.get_world_size()
    setup_logger(name="bua", distributed_rank=rank)
    setup_logger(name="extract_regions", distributed_rank=rank)
    weights = "" if args.weights == "none" else args.weights
    if weights and not os.path.isfile(weights):
        raise SystemExit(f"--weights: file not found: {weights}")
    try:
        cfg = setup_detector_cfg(args.config_file, weights, args.opts + selection_opts(args), args.device)
        if args.weights is None and not cfg.MODEL.WEIGHTS:
            raise SystemExit("give the detector weights: --weights faster_rcnn_from_caffe_attr.pkl "
                             "(--weights none: random weights, for tests)")
        detector = RegionDetector(cfg)
    except ValueError as e:  # bad selection bounds, weights of another shape, ...
        raise SystemExit(f"detector: {e}") from None
    items = list_items(args)
    os.makedirs(args.output, exist_ok=True)
    stats = extract_regions(detector, items, args.batch_size, args.num_workers, args.features, rank, world,
                            progress=not args.no_progress and comm.is_main_process())
    all_stats = comm.gather(stats, dst=0) if world > 1 else [stats]
    if not comm.is_main_process():
        return None
    total = {k: sum(s[k] for s in all_stats) for k in ("total", "skipped", "written")}
    failed = [f for s in all_stats for f in s["failed"]]
    report = write_failure_report(args.output, failed)
    logger.info("%s: %d images; %d written, %d already there, %d failed%s", args.output, total["total"],
                total["written"], total["skipped"], len(failed), f" (listed in {report})" if report else "")
    summary = {**total, "failed": len(failed), "failed_report": report}
    print(summary)
    return summary


def main(argv=None):
    args = parse_args(argv)
    if args.num_gpus > 1 or args.num_machines > 1:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--num-gpus/--num-machines need CUDA (detectron2's launch); none is available")
        return launch(worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                      dist_url=args.dist_url, args=(args,))
    return worker(args)


if __name__ == "__main__":
    main()
