#!/usr/bin/env bash
# The embedded default, end to end on a 2-core CPU in about 7-10 minutes: set-up, synthetic
# CrowdHuman, train the tiny FCOS with Odam-Train (second order, after a warm-up of 4
# epochs), draw ODAM heat maps of its detections, compare NMS, Soft-NMS and Odam-NMS on it
# (the ODAM paper's Table 5: AP50 / MR^-2 / JI / crowd recall), then audit its
# explanations: ODAM against Grad-CAM, D-RISE and VPS (pointing game, energy PG,
# compactness, ODI, deletion / insertion).
# Shorter than the full runs of docs/results.md: the training reads the first 300 of the
# 600 train images (same 12-epoch schedule, seed 0) and skips its end-of-training validation
# (step 4 evaluates the model); the audit uses the small budgets of the config's audit hook.
# Idempotent: data and a finished training are kept (an interrupted one resumes from its
# last complete checkpoint).
#   bash tools/demo.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
PY=.venv/bin/python
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
DATA=data/synthetic_crowdhuman          # = data_root of configs/*_synthetic.py
WORK="${DEMO_WORK_DIR:-work_dirs/demo}"
CONFIG=configs/fcos_odam_tiny_fpn_synthetic.py

echo "== 1/5 synthetic CrowdHuman -> $DATA"
"$PY" tools/make_synthetic_crowdhuman.py --out "$DATA" --num-train 600 --num-val 100 --seed 0

echo "== 2/5 train $CONFIG (second-order Odam-Train from epoch 5, 300 images, 12 epochs) -> $WORK/fcos_odam"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK/fcos_odam" --resume \
    --cfg-options train_dataloader.dataset.indices=300 train_cfg.val_begin=13 randomness.seed=0
CKPT="$(cat "$WORK/fcos_odam/last_checkpoint")"

echo "== 3/5 ODAM heat maps of every detection on 3 val images -> $WORK/fcos_odam/explain"
"$PY" tools/explain.py "$CONFIG" "$CKPT" "$DATA"/Images/syn0_val_00000[0-2].jpg \
    --out-dir "$WORK/fcos_odam/explain" --score-thr 0.25

echo "== 4/5 NMS vs Soft-NMS vs Odam-NMS on the trained FCOS (paper Table 5)"
"$PY" tools/compare_nms.py "$CONFIG" "$CKPT" --work-dir "$WORK/fcos_odam/compare_nms" \
    --out "$WORK/fcos_odam/compare_nms.json"

echo "== 5/5 the explanation audit (the config's audit hook budgets) -> $WORK/fcos_odam/audit"
"$PY" tools/audit.py "$CONFIG" "$CKPT" --out-dir "$WORK/fcos_odam/audit" --hook-settings
