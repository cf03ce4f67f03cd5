#!/usr/bin/env python
"""Check every record of one or more registered datasets, as training does before iteration 0.

Each record goes through the task's own dataset mapper (the one MODEL.VLBERT.HEAD selects), so
a missing or unreadable image, detection file or zip member, a wrong image size, a bad box
(zero-area, inverted, outside the image, non-finite), a non-finite feature or class
distribution is found now, named by file:line and field, instead of when training reaches
it. Boxes partly outside their image are counted (the mappers clip them). Results are cached
per record (DATALOADER.CHECK_CACHE_DIR), so a second run over unchanged data is immediate.

Examples:
    python tools/check_dataset.py --config-file configs/VLBERT-Base-VCR.yaml --dataset vcr_train
    python tools/check_dataset.py --config-file configs/VLBERT-Base-VQA.yaml \\
        --dataset vqa_train2014 --dataset vqa_val2014 DATALOADER.NUM_WORKERS 8
    python tools/check_dataset.py --config-file configs/VLBERT-Base-VCR.yaml   # its TRAIN + TEST

Exit status: 0 when every record is good, 1 when a record is bad or a dataset cannot be
loaded, 2 on a usage error.
"""
import argparse
import sys

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger

from vlbert_d2 import add_vlbert_config
from vlbert_d2.config import finalize_vlbert_config
from vlbert_d2.data import check_datasets, register_generic_from_cfg
from vlbert_d2.data.validation import MAX_LISTED, check_records, format_bad_records, write_bad_records
from vlbert_d2.tasks import ANSWERS, task_of_head


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE",
                   help="the config training uses (its task's mapper checks the records)")
    p.add_argument("--dataset", action="append", metavar="NAME",
                   help="a registered dataset to check (repeat for several); default: the "
                        "config's DATASETS.TRAIN and DATASETS.TEST")
    p.add_argument("--list", type=int, default=MAX_LISTED, metavar="N",
                   help="bad records printed per dataset (default: %(default)s)")
    p.add_argument("--output-dir", metavar="DIR",
                   help="also write every bad record to DIR/bad_records_<dataset>.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. DATALOADER.NUM_WORKERS 8 (processes doing the check)")
    return p.parse_args(argv)


def setup(args):
    cfg = add_vlbert_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_generic_from_cfg(cfg)  # DATASETS.GENERIC: your own JSON-lines datasets, as train_net does
    names = list(args.dataset or list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    if args.dataset:
        # The datasets a VQA mapper takes its answer vocabulary from: the checked ones, so that
        # the config's own datasets need not be present (the vocabulary cannot make a record bad).
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(names), ()
    cfg.freeze()
    return cfg, names


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="vlbert_d2", abbrev_name="vlbert_d2")
    cfg, names = setup(args)
    if not names:
        print("no dataset to check: give --dataset NAME (or a config with DATASETS.TRAIN/TEST)", file=sys.stderr)
        return 2
    try:
        # The config as training completes it (the VQA mapper needs the answer vocabulary:
        # built when missing, as training does).
        cfg = finalize_vlbert_config(cfg)
    except Exception as e:
        task = task_of_head(cfg.MODEL.VLBERT.HEAD)
        answers = task is not None and task.label_space == ANSWERS
        what = "no VQA answer vocabulary" if answers else "cannot complete the config"
        print(f"ERROR: {what}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    failed, total, bad_total = [], 0, 0
    for name in names:
        if name not in DatasetCatalog.list():
            print(f"ERROR: dataset '{name}' is not registered (see vlbert_d2/data/__init__.py)", file=sys.stderr)
            failed.append(name)
            continue
        try:
            check_datasets([name])
            dicts = DatasetCatalog.get(name)
        except Exception as e:  # a missing file, or a reader refusing the dataset (named)
            print(f"ERROR: dataset '{name}' cannot be loaded: {type(e).__name__}: {e}")
            failed.append(name)
            continue
        # A training dataset is checked with the training form of its mapper (labels and
        # answers required), as tools/train_net.py does; the others with the evaluation form.
        report = check_records(cfg, name, dicts, progress=not args.no_progress,
                               is_train=name in cfg.DATASETS.TRAIN)
        total += report.checked
        bad_total += len(report.bad)
        print(report.summary())
        if report.bad:
            failed.append(name)
            print(format_bad_records(report, max(args.list, 0)))
            if args.output_dir:
                print(f"  all {len(report.bad)} bad records: {write_bad_records(report, args.output_dir)}")
    print(f"{len(names)} datasets, {total} records checked, {bad_total} bad"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
