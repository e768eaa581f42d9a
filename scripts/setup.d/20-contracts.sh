#!/usr/bin/env bash
# Recompile contracts/*.sol with the pinned npm solc into a temp dir and compare with the
# artifacts committed in src/coopml/chain/artifacts (the package uses those, so it runs without
# node). A mismatch is reported here and fails tests/chain/test_chain_artifacts.py in CI.
set -euo pipefail
: "${ROOT:?}" "${VENV:?}"
cd "$ROOT"
if ! command -v node >/dev/null || [ ! -d node_modules/solc ]; then
  echo "[20-contracts] node or npm solc missing; skipping the contract compile check"
  exit 0
fi
if "$VENV/bin/python" -c "import sys; from coopml.chain.artifacts import main; sys.exit(main())"; then
  :
else
  echo "[20-contracts] WARNING: committed contract artifacts are stale (see message above)" >&2
fi
