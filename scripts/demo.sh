#!/usr/bin/env bash
# README command 1 (make demo): train the tiny VL-BERT on the synthetic VCR data on CPU, then
# evaluate the saved checkpoint with --eval-only. Prints the wall time and peak memory of each.
# Extra arguments are config overrides for the training run (e.g. SOLVER.MAX_ITER 100).
# CONFIG and OUT choose another task's tiny config (make demo-vqa, make demo-refcoco).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
CONFIG=${CONFIG:-configs/quick_schedules/VLBERT-Tiny-SyntheticVCR.yaml}
OUT=${OUT:-output/tiny_synthetic_vcr}
$PY -m vlbert_d2.collect_env
echo "== training (a fresh run; tools/train_net.py --resume continues an interrupted one)"
$PY scripts/measure.py -- $PY tools/train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT" "$@"
echo "== --eval-only on the saved checkpoint"
$PY scripts/measure.py -- $PY tools/train_net.py --config-file "$CONFIG" --eval-only \
  MODEL.WEIGHTS "$OUT/model_final.pth" OUTPUT_DIR "$OUT/eval_only"
