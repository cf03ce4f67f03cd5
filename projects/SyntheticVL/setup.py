"""synthetic_vl: synthetic VCR / VQA v2 / RefCOCO+ / caption datasets for vlbert_d2.

A project on top of the vlbert_d2 library (it writes the library's detection-file format), so
the library must be installed first. `make setup` (scripts/setup_env.sh) installs both, editable:

    pip install --no-build-isolation -e .                      # the library, at the repository root
    pip install --no-build-isolation -e projects/SyntheticVL   # this project
"""
from setuptools import setup

setup(
    name="synthetic_vl",
    version="0.1.0",
    description="Deterministic synthetic vision-and-language datasets in the official layouts "
                "(VCR, VQA v2, RefCOCO+, Conceptual Captions) for vlbert_d2",
    packages=["synthetic_vl"],
    python_requires=">=3.9",
    install_requires=["vlbert_d2", "numpy", "opencv-python-headless"],
)
