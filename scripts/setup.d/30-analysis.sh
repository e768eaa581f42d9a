#!/usr/bin/env bash
# Contract analysis tools: Foundry forge comes from npm (package.json); Slither (PyPI
# slither-analyzer) lives in a venv of its own because its dependencies conflict with coopml's web3
# pin. Used by scripts/slither.sh and tests/chain/test_chain_analysis.py. Idempotent.
set -euo pipefail
: "${ROOT:?}"
SLITHER_VERSION=0.11.6
SLITHER_VENV="${COOPML_SLITHER_VENV:-$ROOT/.cache/slither-venv}"
PY="${COOPML_PYTHON:-python3.11}"
# shellcheck source=scripts/pyinstall.sh
. "$ROOT/scripts/pyinstall.sh"
# it must also run: a venv moved to another path keeps the old path in its scripts' #! lines
if [ -x "$SLITHER_VENV/bin/slither" ] && [ "$(cat "$SLITHER_VENV/.coopml-version" 2>/dev/null)" = "$SLITHER_VERSION" ] \
   && "$SLITHER_VENV/bin/slither" --version >/dev/null 2>&1; then
  exit 0
fi
echo "[30-analysis] installing slither-analyzer $SLITHER_VERSION into $SLITHER_VENV"
make_venv "$PY" "$SLITHER_VENV"
py_install "$SLITHER_VENV/bin/python" "slither-analyzer==$SLITHER_VERSION"
echo "$SLITHER_VERSION" > "$SLITHER_VENV/.coopml-version"
