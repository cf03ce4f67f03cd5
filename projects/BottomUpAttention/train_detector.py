#!/usr/bin/env python
"""Train or evaluate the bottom-up-attention detector (class, box and attribute losses) with
detectron2's trainer, as detectron2's tools/train_net.py.

Examples:
    # the tiny detector on the synthetic scenes, from scratch on a CPU (a few minutes)
    python -m synthetic_vl --format detection --root datasets/synthetic_detection --seed 0
    python projects/BottomUpAttention/train_detector.py \\
        --config-file projects/BottomUpAttention/configs/BUA-Tiny-Synthetic.yaml
    # evaluate (box AP, attribute accuracy)
    python projects/BottomUpAttention/train_detector.py \\
        --config-file projects/BottomUpAttention/configs/BUA-Tiny-Synthetic.yaml --eval-only \\
        MODEL.WEIGHTS output/bua_tiny_synthetic/model_final.pth
    python projects/BottomUpAttention/train_detector.py --config-file ... --resume   # continue

Datasets: any registered detection dataset; those with attributes are COCO instances JSON files
with an "attributes" table and per-annotation "attribute_ids" (bua.data.register_attribute_coco).
The synthetic ones, synthetic_detection_{train,val}, are registered under
$DETECTRON2_DATASETS/synthetic_detection (default ./datasets).
"""
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from bua import BottomUpCheckpointer
from bua.training import BottomUpTrainer, setup_training_cfg
from vlbert_d2.utils.malloc import tune_malloc


def setup(args):
    cfg = setup_training_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="bua", abbrev_name="bua")
    return cfg


def main(args):
    tune_malloc()  # freed tensors reused, not page-faulted in again (vlbert_d2/utils/malloc.py)
    cfg = setup(args)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS and not args.resume:
            raise SystemExit("--eval-only needs the weights to evaluate: add MODEL.WEIGHTS "
                             "path/to/model.pth (or --resume to use OUTPUT_DIR's last checkpoint)")
        model = BottomUpTrainer.build_model(cfg)
        BottomUpCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                           resume=args.resume)
        res = BottomUpTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = BottomUpTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser(epilog=__doc__).parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
