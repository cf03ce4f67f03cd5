"""bua: the bottom-up-attention region detector (Visual Genome Faster R-CNN) for vlbert_d2.

A project on top of the vlbert_d2 library (registered detectron2 components; it reads weights
through the library's safe checkpointer), so the library must be installed first. `make setup`
(scripts/setup_env.sh) installs both, editable:

    pip install --no-build-isolation -e .                              # the library
    pip install --no-build-isolation -e projects/BottomUpAttention     # this project
"""
from setuptools import setup

setup(
    name="bua",
    version="0.1.0",
    description="The bottom-up-attention region detector (R101-C4, Visual Genome 1600 classes, "
                "400 attributes) as registered detectron2 components, for vlbert_d2",
    packages=["bua"],
    python_requires=">=3.9",
    install_requires=["vlbert_d2"],
)
