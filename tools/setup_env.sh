#!/usr/bin/env bash
# Idempotent set-up: .venv with torch 2.13.0, mmcv 2.1.0 (compiled ops), mmengine 0.10.7,
# mmdet 3.3.0, pycocotools, numpy and odamtrain (editable). Takes seconds when already done.
#
#   source tools/setup_env.sh      # or: bash tools/setup_env.sh
#
# Environment: PYTHON (interpreter for the venv, default python3.11 or python3),
# ODAMTRAIN_VENV (default <repo>/.venv), ODAMTRAIN_WHEELS (prebuilt wheels folder, default
# <repo>/../shared/wheels; used when it exists, otherwise mmcv is built from source).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ODAMTRAIN_VENV:-$ROOT/.venv}"
WHEELS="${ODAMTRAIN_WHEELS:-$ROOT/../shared/wheels}"
PY_BOOT="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP="$VENV/.odamtrain-setup"
log() { echo "[setup] $*" >&2; }

fingerprint() {
  cat "$ROOT/requirements.txt" "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$ROOT/tools/setup_env.sh" \
    2>/dev/null | sha1sum | cut -d' ' -f1
}

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV with $PY_BOOT"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ] \
   && "$PY" -c "import torch, mmcv.ops, mmengine, mmdet, odamtrain" 2>/dev/null; then
  log "environment up to date ($VENV)"
  exit 0
fi

# 1. torch: keep an existing torch, else 2.13.0.
if "$PY" -c "import torch" 2>/dev/null; then
  log "keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  log "installing torch 2.13.0"
  "${PIP[@]}" install -q "torch==2.13.0"
fi

# 2. mmcv 2.1.0 with compiled ops, built against the installed torch.
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  log "mmcv 2.1.0 with ops present"
elif [ -d "$WHEELS" ] && ls "$WHEELS"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
  log "installing mmcv 2.1.0 from $WHEELS"
  "${PIP[@]}" install -q --find-links "$WHEELS" "mmcv==2.1.0"
else
  log "building mmcv 2.1.0 from source against torch (about 20 min on 2 cores)"
  # torch 2.13 needs setuptools >= 77 while mmcv's build needs < 70: pin only for this step.
  "${PIP[@]}" install -q "setuptools<70" wheel ninja
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "${PIP[@]}" install --no-build-isolation "mmcv==2.1.0"
  "${PIP[@]}" install -q "setuptools>=77.0.3,<81"
fi
"$PY" -c "import mmcv.ops" || { log "mmcv.ops failed to import"; exit 1; }

# 3. The rest, then odamtrain itself (editable).
"${PIP[@]}" install -q -r "$ROOT/requirements.txt"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c "import torch, mmcv.ops, mmengine, mmdet, odamtrain"
fingerprint > "$STAMP"
log "ready: $("$PY" -c 'import torch, mmcv, mmengine, mmdet; print("torch", torch.__version__, "mmcv", mmcv.__version__, "mmengine", mmengine.__version__, "mmdet", mmdet.__version__)')"
