"""vlbert_d2: VL-BERT (Su et al., ICLR 2020) as a detectron2 extension.

Importing the package registers the ``VLBERT`` meta-architecture and the datasets.
"""
from . import data, modeling  # noqa: F401  (registration)
from .config import add_vlbert_config, finalize_vlbert_config

__version__ = "0.1.0"
__all__ = ["add_vlbert_config", "finalize_vlbert_config", "data", "modeling"]
