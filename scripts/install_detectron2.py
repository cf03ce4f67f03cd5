#!/usr/bin/env python
"""Install detectron2 v0.6 into the running Python environment.

Three ways, chosen by ``--build`` (or the ``VLBERT_D2_DETECTRON2`` environment variable):

* ``auto`` (default): keep a detectron2 that already imports (for example a user's own
  compiled build); otherwise install the Python-only build below.
* ``pypi``: the Python-only build. detectron2 is not on PyPI; the source release
  ``pb1-detectron2==0.6`` carries the v0.6 Python sources but not the C++/CUDA sources, so its
  own ``setup.py`` cannot build. We install its ``detectron2`` package as it is, plus a
  placeholder ``detectron2/_C.py`` whose every attribute raises :class:`CompiledOpUnavailable`
  naming the op. VL-BERT uses none of the compiled-only ops (rotated boxes, deformable
  convolution, the fast COCO evaluation); ROIAlign and NMS come from torchvision.
* ``github``: the official way, building the v0.6 tag from GitHub with its compiled extension
  (needs access to GitHub and a C++ compiler, plus CUDA for GPU ops).

The script is idempotent: running it again with detectron2 importable does nothing.
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST_REQUIREMENT = "pb1-detectron2==0.6"
GITHUB_REQUIREMENT = "git+https://github.com/facebookresearch/detectron2.git@v0.6"

# detectron2 v0.6's own runtime requirements (its setup.py), less the ones only its caffe2
# export and code formatter use (future, pydot, black==21.4b2). Pillow is held below 10
# because detectron2 v0.6 uses PIL.Image.LINEAR, which Pillow 10 removed.
RUNTIME_REQUIREMENTS = [
    "Pillow>=7.1,<10",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

PLACEHOLDER_C = '''\
"""Placeholder for detectron2's compiled extension ``detectron2._C``.

This detectron2 is the Python-only build that vlbert_d2 installs from the PyPI source release
pb1-detectron2==0.6, which ships no C++/CUDA sources. Importing this module works (detectron2
imports it at module level); using any of its ops raises CompiledOpUnavailable.
"""

PYTHON_ONLY_BUILD = True
PLACEHOLDER_VERSION = %d


# Introspection helpers that detectron2's collect_env calls: they describe the build, no op.
def get_compiler_version():
    return "none (Python-only build, no compiled extension)"


def get_cuda_version():
    return "none (Python-only build, no compiled extension)"


def has_cuda():
    return False


class CompiledOpUnavailable(RuntimeError):
    """A compiled-only detectron2 op was used in the Python-only build."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise CompiledOpUnavailable(
        f"detectron2 op '_C.{name}' needs detectron2's compiled extension, which this "
        "Python-only build (from the PyPI source release pb1-detectron2==0.6) does not have. "
        "Install the compiled build instead: `VLBERT_D2_DETECTRON2=github make setup` "
        "(needs GitHub access and a C++ compiler), or build detectron2 v0.6 from source."
    )
'''

PLACEHOLDER_VERSION = 2  # bump when PLACEHOLDER_C changes, so `auto` reinstalls

SETUP_PY = '''\
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6+pythononly",
    description="detectron2 v0.6 Python sources (from pb1-detectron2==0.6) without the "
    "compiled extension; installed by vlbert_d2's scripts/install_detectron2.py",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
    include_package_data=True,
    python_requires=">=3.6",
    install_requires=%r,
)
'''


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def detectron2_imports():
    """Whether ``import detectron2.modeling`` works, checked in a fresh interpreter.

    Returns:
        None if it fails, else the placeholder version of a Python-only build (0 for a
        compiled build).
    """
    code = ("import detectron2, detectron2.modeling, detectron2._C as C; "
            "print(getattr(C, 'PLACEHOLDER_VERSION', 0) if getattr(C, 'PYTHON_ONLY_BUILD', False) else 0); "
            "print(detectron2.__version__, detectron2.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    version, where = proc.stdout.strip().split("\n", 1)
    print("detectron2 importable:", where)
    return int(version)


def install_python_only(workdir):
    # pip fetches the source release by name from the package index. Its metadata step runs
    # the release's setup.py, which imports torch: hence no build isolation (torch is here).
    pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
        "-d", workdir, SDIST_REQUIREMENT)
    archives = glob.glob(os.path.join(workdir, "pb1*detectron2-0.6.tar.gz"))
    if not archives:
        raise SystemExit(f"pip did not download {SDIST_REQUIREMENT} into {workdir}")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(workdir, filter="data")
    src = os.path.join(workdir, "pb1-detectron2-0.6", "detectron2")
    stage = os.path.join(workdir, "stage")
    shutil.copytree(src, os.path.join(stage, "detectron2"), symlinks=False)
    with open(os.path.join(stage, "detectron2", "_C.py"), "w") as f:
        f.write(PLACEHOLDER_C % PLACEHOLDER_VERSION)
    with open(os.path.join(stage, "setup.py"), "w") as f:
        f.write(SETUP_PY % (RUNTIME_REQUIREMENTS,))
    pip("install", "--no-build-isolation", stage)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", choices=["auto", "pypi", "github"],
                        default=os.environ.get("VLBERT_D2_DETECTRON2", "auto"),
                        help="which detectron2 build to install (default: %(default)s)")
    args = parser.parse_args()

    found = detectron2_imports()
    if args.build == "auto" and found is not None and found in (0, PLACEHOLDER_VERSION):
        return
    if found:
        print(f"updating the Python-only detectron2 build (placeholder version {found} -> {PLACEHOLDER_VERSION})")
    if args.build == "github":
        pip("install", "--no-build-isolation", GITHUB_REQUIREMENT)
    else:
        with tempfile.TemporaryDirectory(prefix="detectron2-src-") as workdir:
            install_python_only(workdir)
    if detectron2_imports() is None:
        raise SystemExit("detectron2 was installed but `import detectron2.modeling` fails; "
                         "see the traceback above")


if __name__ == "__main__":
    main()
