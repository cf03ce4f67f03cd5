"""vlbert_d2: VL-BERT as a detectron2 extension.

torch/torchvision and detectron2 are installed by `make setup` (scripts/setup_env.sh), not
listed here: pip would otherwise fetch a multi-GB torch build, and detectron2 is not on PyPI.
"""
from setuptools import find_packages, setup

setup(
    name="vlbert_d2",
    version="0.1.0",
    description="VL-BERT (Su et al., ICLR 2020) as a detectron2 extension",
    packages=find_packages(include=["vlbert_d2", "vlbert_d2.*"]),
    python_requires=">=3.9",
    install_requires=[
        "transformers>=4.40",
        "fvcore>=0.1.5,<0.1.6",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "numpy",
        # detectron2 v0.6 uses PIL.Image.LINEAR, which Pillow 10 removed.
        "Pillow>=7.1,<10",
        "tqdm",
    ],
    # ruff: the lint that make test (and so CI) runs first (ruff.toml).
    extras_require={"dev": ["pytest>=7", "pytest-xdist>=3", "ruff>=0.17,<0.18"]},
)
