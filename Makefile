# README command 1: `make demo`  -- README command 2: `make test`
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test benchmark data clean

setup:
	bash scripts/setup_env.sh

data: setup
	$(PY) -m vlbert_d2.data.synthetic --root $${DETECTRON2_DATASETS:-datasets}/synthetic_vcr_size --seed 0 --question-types size

# Generate the synthetic VCR data if missing, train the tiny model on CPU, then evaluate the
# saved checkpoint with --eval-only.
demo: data
	bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q tests

benchmark: setup
	$(PY) tools/benchmark.py

clean:
	rm -rf output
