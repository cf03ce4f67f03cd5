"""Training the detector with detectron2's trainer: class, box and attribute losses.

:class:`BottomUpTrainer` is detectron2's ``DefaultTrainer`` with

* the training loader mapping the objects' attributes onto the targets
  (:class:`bua.data.AttributeDatasetMapper`);
* box AP by detectron2's ``COCOEvaluator`` plus, on datasets with attributes, the attribute
  accuracy of :class:`bua.evaluation.AttributeEvaluator`;
* checkpoints read safely and written atomically (:class:`bua.BottomUpCheckpointer`, which also
  starts from the public ``.pkl`` weights), and the optimizer state kept in them so that
  ``--resume`` continues with it.

``projects/BottomUpAttention/train_detector.py`` is the command line.
"""
import os
import weakref

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from vlbert_d2.engine.trainer import SavesOptimizerState

from .checkpoint import BottomUpCheckpointer
from .config import add_bottom_up_config
from .data import AttributeDatasetMapper, register_synthetic_detection
from .evaluation import AttributeEvaluator


__all__ = ["BottomUpTrainer", "setup_training_cfg"]


def setup_training_cfg(config_file, opts=()):
    """The detector's config for training: :func:`add_bottom_up_config` keys, ``config_file``
    and ``opts`` (a list of ``KEY VALUE``) merged; not frozen. Registers the synthetic detection
    datasets (``synthetic_detection_{train,val}``) first."""
    register_synthetic_detection()
    cfg = add_bottom_up_config(get_cfg())
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


class BottomUpTrainer(SavesOptimizerState, DefaultTrainer):
    """detectron2's ``DefaultTrainer`` for the bottom-up-attention detector (see the module)."""

    def build_hooks(self):
        # Called at the end of DefaultTrainer.__init__, before the hooks (the periodic
        # checkpointer among them) take the checkpointer: swap in the safe one first.
        self.checkpointer = BottomUpCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                                 trainer=weakref.proxy(self))
        return super().build_hooks()

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=AttributeDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Box AP (COCOEvaluator, boxes only) and, when the dataset has attributes and the model
        an attribute head, the attribute accuracy."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # use_fast_impl False: pycocotools (this detectron2 build may lack the compiled COCOeval).
        evaluators = [COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=False)]
        has_attributes = MetadataCatalog.get(dataset_name).get("has_attributes", False)
        if cfg.MODEL.BUA.ATTRIBUTE_ON and has_attributes:
            evaluators.append(AttributeEvaluator(dataset_name))
        return DatasetEvaluators(evaluators)

