#!/usr/bin/env bash
# Set up (idempotent) and run the main job. Extra args go to `coopml demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/coopml" demo "$@"
