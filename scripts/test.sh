#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite.
#
# With no arguments: the suite in two parts. Most tests run on 2 pytest-xdist workers, one test
# file per worker (module fixtures such as one lifecycle run shared by several tests stay in one
# process); many of them wait on chain windows and processes rather than compute, so two workers
# overlap well on 2 cores. The network testbed (tests/testbed: namespaces, one OVS bridge, its own
# chain and IPFS swarm) then runs on its own.
# With arguments: one plain pytest run with them (e.g. `-m slow`, a path, `-k name`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
if [ "$#" -gt 0 ]; then
  exec "$PY" -m pytest "$@"
fi
start=$(date +%s)
status=0
"$PY" -m pytest -n "${COOPML_TEST_WORKERS:-2}" --dist loadfile --ignore=tests/testbed --durations=25 || status=$?
"$PY" -m pytest tests/testbed --durations=10 || status=$?
echo "test suite: $(( $(date +%s) - start )) s wall, exit $status"
exit "$status"
