#!/usr/bin/env bash
# The embedded default, end to end on a 2-core CPU: set-up, synthetic CrowdHuman, train the
# tiny FCOS, test it (AP50 / MR^-2 / JI), draw ODAM heat maps of its detections, compare NMS,
# Soft-NMS and Odam-NMS on it (the ODAM paper's Table 5). Idempotent: data and a finished training are kept
# (an interrupted one resumes from its last complete checkpoint).
#   bash tools/demo.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
PY=.venv/bin/python
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
DATA=data/synthetic_crowdhuman          # = data_root of configs/*_synthetic.py
WORK="${DEMO_WORK_DIR:-work_dirs/demo}"
CONFIG=configs/fcos_tiny_fpn_synthetic.py

echo "== 1/5 synthetic CrowdHuman -> $DATA"
"$PY" tools/make_synthetic_crowdhuman.py --out "$DATA" --num-train 600 --num-val 100 --seed 0

echo "== 2/5 train $CONFIG -> $WORK/fcos"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK/fcos" --resume

echo "== 3/5 test the trained FCOS on the synthetic val set"
CKPT="$(cat "$WORK/fcos/last_checkpoint")"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK/fcos/test"

echo "== 4/5 ODAM heat maps of every detection on 3 val images -> $WORK/fcos/explain"
"$PY" tools/explain.py "$CONFIG" "$CKPT" "$DATA"/Images/syn0_val_00000[0-2].jpg \
    --out-dir "$WORK/fcos/explain" --score-thr 0.25

echo "== 5/5 NMS vs Soft-NMS vs Odam-NMS on the trained FCOS (paper Table 5)"
"$PY" tools/compare_nms.py "$CONFIG" "$CKPT" --work-dir "$WORK/fcos/compare_nms" \
    --out "$WORK/fcos/compare_nms.json"
