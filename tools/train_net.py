#!/usr/bin/env python
"""Train or evaluate VL-BERT with detectron2's trainer.

Examples:
    python tools/train_net.py --config-file configs/VLBERT-Base-VCR.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/VLBERT-Base-VCR.yaml --eval-only \\
        MODEL.WEIGHTS output/vlbert_base_vcr/model_final.pth
    python tools/train_net.py --config-file ... --resume     # continue from last_checkpoint
"""
import os

from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

from vlbert_d2 import add_vlbert_config
from vlbert_d2.checkpoint import VLBertCheckpointer
from vlbert_d2.data import build_vlbert_mapper, build_vlbert_train_loader, check_datasets
from vlbert_d2.data.vqa_mapper import prepare_answer_vocab
from vlbert_d2.evaluation import build_vlbert_evaluator
from vlbert_d2.solver import build_lr_scheduler, build_optimizer


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        # Same checkpointer, but a missing or unreadable MODEL.WEIGHTS is reported by name.
        self.checkpointer = VLBertCheckpointer(self.checkpointer.model, cfg.OUTPUT_DIR,
                                               **self.checkpointer.checkpointables)

    @classmethod
    def build_train_loader(cls, cfg):
        # detectron2's loader; DATALOADER.TRAIN_FRACTION and pre-training's caption/text mix.
        return build_vlbert_train_loader(cfg, build_vlbert_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_vlbert_mapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_vlbert_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)


def setup(args):
    cfg = get_cfg()
    add_vlbert_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    # Before building the model: a missing dataset should say so, not fail later on the way.
    check_datasets(cfg.DATASETS.TEST if args.eval_only else cfg.DATASETS.TRAIN + cfg.DATASETS.TEST)
    # VQA: the answer vocabulary (built once when missing) sizes the head; kept with the run.
    prepare_answer_vocab(cfg, None if args.eval_only else cfg.OUTPUT_DIR)
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
           dist_url=args.dist_url, args=(args,))
