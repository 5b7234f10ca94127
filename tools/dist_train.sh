#!/usr/bin/env bash
# Distributed training with torchrun (NCCL on GPUs, gloo on CPU):
#   bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and PORT) on every node.
set -euo pipefail
CONFIG=$1
GPUS=$2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
PYTHONPATH="$ROOT:${PYTHONPATH:-}" "$PY" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$GPUS" "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"
