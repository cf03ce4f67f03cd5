"""Training: the trainer behind ``tools/train_net.py`` and a launcher that also runs several
processes on CPU; inference: :class:`VLBertPredictor`, a trained model answering for one image
with one call (behind ``tools/demo.py``). It sits above data, modeling and evaluation and is
imported by the tools."""
from .launch import launch, wants_cpu
from .predictor import PredictorInputError, VLBertPredictor
from .trainer import ExactResume, VLBertTrainer

__all__ = ["ExactResume", "VLBertTrainer", "launch", "wants_cpu", "VLBertPredictor", "PredictorInputError"]
