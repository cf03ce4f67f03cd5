# README command 1: `make demo`  -- README command 2: `make test`
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo demo-vqa demo-refcoco test benchmark data data-vqa data-refcoco clean

setup:
	bash scripts/setup_env.sh

data: setup
	$(PY) -m vlbert_d2.data.synthetic --root $${DETECTRON2_DATASETS:-datasets}/synthetic_vcr_size --seed 0 --question-types size

# Generate the synthetic VCR data if missing, train the tiny model on CPU, then evaluate the
# saved checkpoint with --eval-only.
demo: data
	bash scripts/demo.sh

data-vqa: setup
	$(PY) -m vlbert_d2.data.synthetic --format vqa --root $${DETECTRON2_DATASETS:-datasets}/synthetic_vqa_geometry --seed 0 --question-types count morethan moreside

data-refcoco: setup
	$(PY) -m vlbert_d2.data.synthetic --format refcoco+ --root $${DETECTRON2_DATASETS:-datasets}/synthetic_refcoco_geometry --seed 0 --question-types biggest smallest leftmost rightmost

# The same for VQA v2 and RefCOCO+ (synthetic data in the official layouts).
demo-vqa: data-vqa
	CONFIG=configs/quick_schedules/VLBERT-Tiny-SyntheticVQA.yaml OUT=output/tiny_synthetic_vqa bash scripts/demo.sh

demo-refcoco: data-refcoco
	CONFIG="configs/quick_schedules/VLBERT-Tiny-SyntheticRefCOCO+.yaml" OUT="output/tiny_synthetic_refcoco+" bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q tests

benchmark: setup
	$(PY) tools/benchmark.py

clean:
	rm -rf output
