#!/usr/bin/env python
"""Extract RoI features with a model's visual trunk into a feature cache (precomputed mode).

    python tools/extract_features.py --config-file configs/VLBERT-Base-VCR.yaml \\
        --datasets vcr_train vcr_val --output datasets/vcr/features_r101 \\
        MODEL.VLBERT.DETECTOR_WEIGHTS path/to/faster_rcnn_from_caffe.pkl
    python tools/train_net.py --config-file configs/VLBERT-Base-VCR.yaml \\
        MODEL.VLBERT.FEATURE_CACHE datasets/vcr/features_r101

Resumable: images already in the cache are skipped, so rerun the same command after an
interruption. Progress bar with ETA; images are read by --num-workers data-loader workers.
The features are those the model's trunk computes from its weights (MODEL.WEIGHTS,
MODEL.VLBERT.DETECTOR_WEIGHTS): train from the cache with the same trunk weights frozen.
"""
import argparse
import logging

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from vlbert_d2 import add_vlbert_config
from vlbert_d2.checkpoint import VLBertCheckpointer
from vlbert_d2.config import finalize_vlbert_config
from vlbert_d2.data import build_vlbert_mapper, check_datasets
from vlbert_d2.feature_extraction import extract_region_features
from vlbert_d2.utils.malloc import tune_malloc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--datasets", nargs="+", required=True, help="registered dataset names")
    parser.add_argument("--output", required=True, help="feature cache directory (created or resumed)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--flush-every", type=int, default=256, help="images per saved shard")
    parser.add_argument("--max-images", type=int, default=None, help="stop after this many new images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = parser.parse_args(argv)
    setup_logger(name="vlbert_d2")
    setup_logger(name="detectron2")
    tune_malloc()  # freed tensors reused, not page-faulted in again (vlbert_d2/utils/malloc.py)

    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.VLBERT.FEATURE_CACHE = ""  # extraction reads images
    check_datasets(args.datasets)
    finalize_vlbert_config(cfg)  # the sizes the model is built with, as training works them out
    cfg.freeze()
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        VLBertCheckpointer(model).load(cfg.MODEL.WEIGHTS)  # never runs code from the file
    mapper = build_vlbert_mapper(cfg, is_train=False)
    dicts = [d for name in args.datasets for d in DatasetCatalog.get(name)]
    stats = extract_region_features(model, dicts, mapper, args.output, args.batch_size,
                                    args.num_workers, args.flush_every, args.max_images,
                                    progress=not args.no_progress)
    logging.getLogger("vlbert_d2").info(
        "%s: %d images extracted, %d were already there, %d in the datasets", args.output,
        stats["extracted"], stats["skipped"], stats["total"])
    print(stats)


if __name__ == "__main__":
    main()
