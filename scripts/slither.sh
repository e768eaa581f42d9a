#!/usr/bin/env bash
# Static analysis of contracts/CoopML.sol with Slither, offline, against the pinned npm solc
# (tools/solc-native makes solcjs answer like native solc; Slither runs it in --standard-json mode
# on a directory holding only the production contract, so test fixtures and the forge suite are
# not analysed). Every detector that still fires is triaged in docs/chain.md ("Slither"); the
# script fails if a detector outside that triaged set appears, or if Slither itself fails.
#   scripts/slither.sh            # summary + check against the triaged set
#   SLITHER=/path/to/slither scripts/slither.sh
# Slither is PyPI slither-analyzer 0.11.6 in its own venv (it conflicts with the web3 pin).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRIAGED="timestamp weak-prng low-level-calls"   # docs/chain.md says why each is accepted

find_slither() {
  for c in "${SLITHER:-}" "${COOPML_SLITHER_VENV:-$ROOT/.cache/slither-venv}/bin/slither" ; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return; fi
  done
  command -v slither || true
}
SL="$(find_slither)"
if [ -z "$SL" ]; then
  echo "slither not found: bash scripts/setup.sh (scripts/setup.d/30-analysis.sh installs slither-analyzer 0.11.6) (or set SLITHER)" >&2
  exit 2
fi
[ -d "$ROOT/node_modules/solc" ] || { echo "npm solc missing in $ROOT/node_modules (run scripts/setup.sh)" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/coopml-slither.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src"
cp "$ROOT/contracts/CoopML.sol" "$WORK/src/CoopML.sol"
cd "$WORK"
set +e
"$SL" src --solc "$ROOT/tools/solc-native" --solc-standard-json --json "$WORK/report.json" \
  > "$WORK/slither.log" 2>&1
status=$?
set -e
if [ ! -s "$WORK/report.json" ]; then
  cat "$WORK/slither.log" >&2
  echo "slither failed (exit $status) without a report" >&2
  exit 2
fi
python3 - "$WORK/report.json" "$TRIAGED" <<'PY'
import json, sys
from collections import Counter
report = json.load(open(sys.argv[1]))
triaged = set(sys.argv[2].split())
if not report.get("success", False):
    sys.exit(f"slither error: {report.get('error')}")
found = report.get("results", {}).get("detectors", [])
counts = Counter(d["check"] for d in found)
print(f"slither: {len(found)} finding(s) in contracts/CoopML.sol")
for check, n in sorted(counts.items()):
    impact = next(d["impact"] for d in found if d["check"] == check)
    print(f"  {check:<20} {n:>3}  impact={impact:<13} {'triaged (docs/chain.md)' if check in triaged else 'NEW: fix or triage'}")
new = set(counts) - triaged
if new:
    for d in found:
        if d["check"] in new:
            print("\n" + d["description"].strip())
    sys.exit(f"untriaged slither findings: {', '.join(sorted(new))}")
print("every finding is triaged in docs/chain.md")
PY
