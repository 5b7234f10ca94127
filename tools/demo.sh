#!/usr/bin/env bash
# The embedded default, end to end on a 2-core CPU: set-up, synthetic CrowdHuman, train the
# tiny FCOS with Odam-Train, test it with Odam-NMS (AP50 / MR^-2 / JI / crowd recall), draw
# ODAM heat maps of its detections, compare NMS, Soft-NMS and Odam-NMS on it (the ODAM
# paper's Table 5), audit its explanations against Grad-CAM, D-RISE and VPS (pointing game,
# energy PG, compactness, ODI, deletion / insertion).
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

echo "== 1/6 synthetic CrowdHuman -> $DATA"
"$PY" tools/make_synthetic_crowdhuman.py --out "$DATA" --num-train 600 --num-val 100 --seed 0

echo "== 2/6 train $CONFIG (Odam-Train) -> $WORK/fcos_odam"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK/fcos_odam" --resume

echo "== 3/6 test the trained FCOS with Odam-NMS on the synthetic val set"
CKPT="$(cat "$WORK/fcos_odam/last_checkpoint")"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/fcos_odam/test"

echo "== 4/6 ODAM heat maps of every detection on 3 val images -> $WORK/fcos_odam/explain"
"$PY" tools/explain.py "$CONFIG" "$CKPT" "$DATA"/Images/syn0_val_00000[0-2].jpg \
    --out-dir "$WORK/fcos_odam/explain" --score-thr 0.25

echo "== 5/6 NMS vs Soft-NMS vs Odam-NMS on the trained FCOS (paper Table 5)"
"$PY" tools/compare_nms.py "$CONFIG" "$CKPT" --work-dir "$WORK/fcos_odam/compare_nms" \
    --out "$WORK/fcos_odam/compare_nms.json"

echo "== 6/6 explanation audit: ODAM vs Grad-CAM, D-RISE, VPS on correctly detected val objects"
# small budgets so that it takes minutes (paper: 5000 masks, all regions, 100 steps, 0.9 IoU:
# the tiny model's boxes rarely reach IoU 0.9)
"$PY" tools/audit.py "$CONFIG" "$CKPT" --methods odam gradcam drise vps --max-images 6 \
    --iou-thr 0.5 --deletion-steps 20 --drise-masks 200 --vps-regions 16 --vps-steps 4 \
    --out "$WORK/fcos_odam/audit.json"
