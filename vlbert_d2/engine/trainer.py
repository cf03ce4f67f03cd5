"""The training loop of ``tools/train_net.py``: detectron2's ``DefaultTrainer`` with exact resume.

What it changes, and why:

* the training loader is a :class:`~vlbert_d2.data.resumable_loader.ResumableTrainLoader`, whose
  position goes into every checkpoint;
* before every iteration the global generators (dropout) are seeded by ``(seed, iteration,
  rank)``, so no random state has to be saved and a resumed run draws what an uninterrupted one
  draws: after a SIGKILL, ``--resume`` ends with the same weights, bit for bit on CPU;
* checkpoints are read safely and written atomically (:class:`~vlbert_d2.checkpoint.VLBertCheckpointer`);
* on CPU, several processes train with DistributedDataParallel over gloo (see
  :mod:`vlbert_d2.engine.launch`);
* a non-finite loss names the records of the batch;
* ``SOLVER.AMP``: fp16 or bf16 mixed precision, on CUDA or (bf16) the CPU (:mod:`.amp`).
"""
import logging
import os
import weakref

import torch

from torch.nn.parallel import DistributedDataParallel

from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.hooks import HookBase
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import VLBertCheckpointer
from ..config import finalize_vlbert_config
from ..data import build_vlbert_mapper, build_vlbert_train_loader
from ..data.build import training_seed
from ..data.test_loader import build_vlbert_test_loader
from ..data.validation import check_dataset_records
from ..evaluation import build_vlbert_evaluator
from ..solver import build_lr_scheduler, build_optimizer
from ..utils.seeding import derive_seed, seed_global_rngs
from .amp import AutocastInference, MixedPrecisionTrainer, amp_settings

logger = logging.getLogger(__name__)


class ExactResume(HookBase):
    """Seeds the global generators before each iteration from ``(seed, iteration, rank)`` and
    keeps the seed and the data loader's position in the checkpoints (as a hook state, which
    detectron2's checkpointer saves with the trainer)."""

    def __init__(self, seed, data_loader):
        self.seed, self.data_loader = seed, data_loader

    def before_step(self):
        seed_global_rngs(derive_seed(self.seed, self.trainer.iter, comm.get_rank()))

    def state_dict(self):
        return {"seed": self.seed, "data": self.data_loader.state_dict()}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])
        self.data_loader.load_state_dict(state["data"])


def create_ddp_model(model):
    """DistributedDataParallel when there are several processes; on CPU without device ids
    (detectron2's helper always passes the local GPU)."""
    if comm.get_world_size() == 1:
        return model
    on_cpu = next(model.parameters()).device.type == "cpu"
    return DistributedDataParallel(model, device_ids=None if on_cpu else [comm.get_local_rank()],
                                   broadcast_buffers=False)


class SavesOptimizerState:
    """A ``DefaultTrainer`` mixin: the DefaultTrainer of the detectron2 v0.6 build installed here
    saves the iteration and the hooks' states but not the optimizer's (momentum, Adam moments,
    the fp16 loss scale), so a resume would restart them. Also used by the detector's trainer
    (projects/BottomUpAttention/bua/training.py)."""

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint (written by an older version) has no optimizer state: it "
                           "starts afresh, and the run will not match an uninterrupted one")


class VLBertTrainer(SavesOptimizerState, DefaultTrainer):
    """``DefaultTrainer`` with VL-BERT's loaders, evaluators, optimizers and exact resume."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        # The sizes worked out from the datasets (tools/train_net.py has filled them already).
        cfg = finalize_vlbert_config(cfg)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler" or cfg.DATALOADER.REPEAT_THRESHOLD:
            # The resumable loader plans its own order; say so rather than ignore the keys.
            raise ValueError("DATALOADER.SAMPLER_TRAIN / REPEAT_THRESHOLD are not supported: VL-BERT's "
                             "training loader shuffles every epoch (vlbert_d2/data/resumable_loader.py)")
        self.seed = training_seed(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self.train_loader = build_vlbert_train_loader(cfg, build_vlbert_mapper(cfg, is_train=True), self.seed)
        # The evaluation datasets too are checked before iteration 0 (not at the first
        # evaluation, hours in); the evaluations then find the results in the cache.
        for name in cfg.DATASETS.TEST:
            check_dataset_records(cfg, name, DatasetCatalog.get(name), is_train=False)
        model = create_ddp_model(model)
        amp = amp_settings(cfg)  # (device type, dtype) or None; checked before any work
        if amp:
            logger.info("Mixed precision: %s autocast on %s%s", amp[1], amp[0],
                        ", dynamic loss scaling" if amp[1] is torch.float16 else "")
            self._trainer = MixedPrecisionTrainer(model, self.train_loader, optimizer, *amp)
        else:
            self._trainer = SimpleTrainer(model, self.train_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = VLBertCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self.register_hooks([ExactResume(self.seed, self.train_loader)] + self.build_hooks())

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "ExactResume" not in state_dict.get("hooks", {}):
            logger.warning("The checkpoint (written by an older version) lacks the data position and seed "
                           "(the data order restarts): the run will not match an uninterrupted one")

    def resume_or_load(self, resume=True):
        """As detectron2's, but the iteration counter moves on only when a checkpoint's training
        state was actually loaded (a resume that found no readable checkpoint starts at 0)."""
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if self.checkpointer.resumed_from:
            self.start_iter = self.iter + 1

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            raise FloatingPointError(f"{e}\nRecords of this batch: "
                                     f"{self.train_loader.describe_last_batch()}") from None

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation, under autocast when ``SOLVER.AMP.ENABLED`` and
        ``SOLVER.AMP.EVAL`` (the outputs are handed to the evaluators in fp32)."""
        amp = amp_settings(cfg)
        if amp and cfg.SOLVER.AMP.EVAL:
            model = AutocastInference(model, *amp)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_model(cls, cfg):
        """The model of the config, its sizes filled first (:func:`~vlbert_d2.config.finalize_vlbert_config`)."""
        return super().build_model(finalize_vlbert_config(cfg))

    @classmethod
    def build_train_loader(cls, cfg):
        return build_vlbert_train_loader(cfg, build_vlbert_mapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # Every record is checked before the evaluation starts (DATALOADER.BAD_RECORDS).
        return build_vlbert_test_loader(cfg, dataset_name, build_vlbert_mapper(cfg, is_train=False))

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

