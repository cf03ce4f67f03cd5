"""Training: the trainer behind ``tools/train_net.py`` and a launcher that also runs several
processes on CPU. It sits above data, modeling and evaluation and is imported by the tools."""
from .launch import launch, wants_cpu
from .trainer import ExactResume, VLBertTrainer

__all__ = ["ExactResume", "VLBertTrainer", "launch", "wants_cpu"]
