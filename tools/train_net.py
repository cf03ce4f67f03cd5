#!/usr/bin/env python
"""Train or evaluate VL-BERT with detectron2's trainer.

Examples:
    python tools/train_net.py --config-file configs/VLBERT-Base-VCR.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/VLBERT-Base-VCR.yaml --eval-only \\
        MODEL.WEIGHTS output/vlbert_base_vcr/model_final.pth
    python tools/train_net.py --config-file ... --resume     # continue from last_checkpoint
    python tools/train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)

--resume continues from OUTPUT_DIR's last checkpoint (or, when last_checkpoint is missing or
damaged, the newest whole model_*.pth) with the same data order and random draws: the run ends
with the weights an uninterrupted one would have. Without a GPU (or with MODEL.DEVICE cpu),
--num-gpus N runs N processes on CPU with DistributedDataParallel over gloo.
"""
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vlbert_d2 import add_vlbert_config
from vlbert_d2.checkpoint import VLBertCheckpointer
from vlbert_d2.config import finalize_vlbert_config
from vlbert_d2.data import check_datasets, register_generic_from_cfg
from vlbert_d2.engine import VLBertTrainer as Trainer
from vlbert_d2.engine import launch, wants_cpu
from vlbert_d2.utils.malloc import tune_malloc


def setup(args):
    cfg = get_cfg()
    add_vlbert_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    # The library's own messages (record checks and what they skipped or clipped, vocabularies,
    # loaded weights) go to the console and OUTPUT_DIR/log.txt with detectron2's.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vlbert_d2", abbrev_name="vlbert_d2")
    register_generic_from_cfg(cfg)  # DATASETS.GENERIC: your own JSON-lines datasets
    # Before anything is built: a missing dataset should say so, not fail later on the way.
    check_datasets(cfg.DATASETS.TEST if args.eval_only else cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    # The sizes worked out from the datasets, filled before the config is frozen (VQA: the answer
    # vocabulary, built once when missing and kept with the run; VCR: the object classes).
    finalize_vlbert_config(cfg, None if args.eval_only else cfg.OUTPUT_DIR)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    tune_malloc()  # freed tensors reused, not page-faulted in again (vlbert_d2/utils/malloc.py)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS and not args.resume:
            raise SystemExit("--eval-only needs the weights to evaluate: add MODEL.WEIGHTS "
                             "path/to/model.pth (or --resume to use OUTPUT_DIR's last checkpoint)")
        model = Trainer.build_model(cfg)
        checkpointer = VLBertCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if args.resume and not checkpointer.has_checkpoint() and not cfg.MODEL.WEIGHTS:
            raise SystemExit(f"--eval-only --resume: no checkpoint in {cfg.OUTPUT_DIR} and no MODEL.WEIGHTS")
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser(epilog=__doc__).parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,), cpu=wants_cpu(args.opts, args.config_file))
