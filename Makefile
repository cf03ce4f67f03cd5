# README command 1: `make demo`  -- README command 2: `make test`
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo demo-vqa demo-refcoco demo-pretrain ablation-pretrain test lint benchmark data data-vqa data-refcoco data-captions clean

setup:
	bash scripts/setup_env.sh

data: setup
	$(PY) -m synthetic_vl --root $${DETECTRON2_DATASETS:-datasets}/synthetic_vcr_size --seed 0 --question-types size

# Generate the synthetic VCR data if missing, train the tiny model on CPU, then evaluate the
# saved checkpoint with --eval-only.
demo: data
	bash scripts/demo.sh

data-vqa: setup
	$(PY) -m synthetic_vl --format vqa --root $${DETECTRON2_DATASETS:-datasets}/synthetic_vqa_geometry --seed 0 --question-types count morethan moreside

data-refcoco: setup
	$(PY) -m synthetic_vl --format refcoco+ --root $${DETECTRON2_DATASETS:-datasets}/synthetic_refcoco_geometry --seed 0 --question-types biggest smallest leftmost rightmost

# The same for VQA v2 and RefCOCO+ (synthetic data in the official layouts).
demo-vqa: data-vqa
	CONFIG=configs/quick_schedules/VLBERT-Tiny-SyntheticVQA.yaml OUT=output/tiny_synthetic_vqa bash scripts/demo.sh

demo-refcoco: data-refcoco
	CONFIG="configs/quick_schedules/VLBERT-Tiny-SyntheticRefCOCO+.yaml" OUT="output/tiny_synthetic_refcoco+" bash scripts/demo.sh

data-captions: setup
	$(PY) -m synthetic_vl --format captions --root $${DETECTRON2_DATASETS:-datasets}/synthetic_captions --seed 0

# Pre-training on the synthetic captions + text corpus (then --eval-only on the checkpoint).
demo-pretrain: data-captions
	CONFIG=configs/quick_schedules/VLBERT-Tiny-SyntheticPretrain.yaml OUT=output/tiny_synthetic_pretrain bash scripts/demo.sh

# The paper's whole pipeline in miniature (projects/SyntheticVL/pipeline.py; README: Measured):
# train the bottom-up-attention detector on the synthetic scenes, extract its regions, then
# VL-BERT on them: VQA on its features, RefCOCO+ and VCR from the pixels with its trunk,
# pre-training against its class distributions. Resumable. After the detector, two tasks at a
# time on one thread each (--jobs 2).
.PHONY: demo-pipeline ablation-pipeline
demo-pipeline: setup
	$(PY) projects/SyntheticVL/pipeline.py --jobs 2

# The pre-training ablation on the pipeline's regions (needs make demo-pipeline's output):
# fine-tuning from the pre-trained model vs from BERT only, 5 seeds, per question type.
ablation-pipeline: setup
	$(PY) projects/SyntheticVL/pipeline_ablation.py

# The miniature of the paper's pre-training ablation (README: Measured), about 45 minutes.
# The synthetic data (data*) and this study: projects/SyntheticVL (package synthetic_vl).
ablation-pretrain: data-captions data-vqa
	OMP_NUM_THREADS=1 $(PY) projects/SyntheticVL/pretrain_ablation.py --seeds 0 1 2

# The lint (ruff.toml), then the suite: TEST_WORKERS pytest-xdist processes, each test file's
# tests in one of them (their module fixtures are built once); the tests run torch on one thread.
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

lint: setup
	$(VENV)/bin/ruff check .

benchmark: setup
	$(PY) tools/benchmark.py

clean:
	rm -rf output
