#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite.
#
# With no arguments: the suite in two parts, run at the same time (docs/performance.md, "The test
# command": what dominates and why each long test is worth its time).
# - Most tests on 3 pytest-xdist workers, one test file per worker (module fixtures such as one
#   lifecycle run shared by several tests stay in one process), the longest files first
#   (tests/conftest.py orders them; --no-loadscope-reorder keeps that order, xdist would otherwise
#   start the files with the most tests first and the long ones last). Three workers on 2 cores
#   (torch uses one thread per worker): most of it computes (training, CKKS, fusion), but the
#   role scenarios and CLI deployments also wait on chain deadlines, subprocess start-up and
#   anvil, and a third worker fills those gaps (fresh-clone runs: 533 s with two, 489 s with three).
# - The network testbed (tests/testbed: namespaces, one OVS bridge, its own chain and IPFS swarm,
#   as root) alongside: it follows chain deadlines and 1 s blocks, and its nodes share no port,
#   file or process with the main part. Its output is printed after the main part's.
#   COOPML_TESTBED_AFTER=1 runs it afterwards instead, as before.
# With arguments: one plain pytest run with them (e.g. `-m slow`, a path, `-k name`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command_start=$(date +%s)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
if [ "$#" -gt 0 ]; then
  exec "$PY" -m pytest "$@"
fi
start=$(date +%s)
status=0
testbed=(tests/testbed --durations=10 -p no:cacheprovider)
tb_pid=""
if [ "${COOPML_TESTBED_AFTER:-0}" != 1 ]; then
  tb_log="$(mktemp)"
  "$PY" -m pytest "${testbed[@]}" >"$tb_log" 2>&1 &
  tb_pid=$!
  # interrupted: a background job of a script ignores SIGINT, so the testbed finishes and tears
  # its namespaces down on its own; do not leave it orphaned, wait for it
  trap '[ -z "$tb_pid" ] || wait "$tb_pid" || true' EXIT
fi
"$PY" -m pytest -n "${COOPML_TEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder --ignore=tests/testbed \
  --durations=25 || status=$?
echo "main part: $(( $(date +%s) - start )) s wall"
if [ -n "$tb_pid" ]; then
  tb_status=0
  wait "$tb_pid" || tb_status=$?
  tb_pid=""
  cat "$tb_log"
  rm -f "$tb_log"
  [ "$tb_status" = 0 ] || status=$tb_status
else
  "$PY" -m pytest "${testbed[@]}" || status=$?
fi
echo "test suite: $(( $(date +%s) - start )) s wall, exit $status"
echo "whole command (setup $(( start - command_start )) s + suite): $(( $(date +%s) - command_start )) s wall"
exit "$status"
