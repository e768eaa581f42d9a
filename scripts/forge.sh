#!/usr/bin/env bash
# Foundry invariant suite (contracts/forge/): a handler drives every CoopML action with bounded
# inputs and a reference model; the invariants check solvency, credits, burns, honest
# verifiers and refunds after every call. Offline, against the pinned npm solc
# (tools/solc-native), without forge-std.
#   scripts/forge.sh            # = ci: 256 runs x depth 100 (about a minute)
#   scripts/forge.sh deep       # 10,000 runs x depth 100 (long: run it with nice -n 10)
#   scripts/forge.sh ci --fuzz-seed 7 -vvv    # extra args go to `forge test`
#   FORGE=/path/to/forge scripts/forge.sh
# forge is npm @foundry-rs/forge-linux-amd64 1.7.1 (the Foundry release of the pinned anvil).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${1:-ci}"
shift || true
case "$PROFILE" in
  ci|deep|default) ;;
  *) echo "usage: scripts/forge.sh [ci|deep] [forge test args...]" >&2; exit 2 ;;
esac
find_forge() {
  for c in "${FORGE:-}" "$ROOT/node_modules/.bin/forge" ; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return; fi
  done
  command -v forge || true
}
FG="$(find_forge)"
if [ -z "$FG" ]; then
  echo "forge not found: npm install @foundry-rs/forge-linux-amd64@1.7.1 (or set FORGE)" >&2
  exit 2
fi
[ -d "$ROOT/node_modules/solc" ] || { echo "npm solc missing in $ROOT/node_modules (run scripts/setup.sh)" >&2; exit 2; }
cd "$ROOT"
echo "forge: $("$FG" --version | head -1); profile $PROFILE"
start=$(date +%s)
FOUNDRY_PROFILE="$PROFILE" "$FG" test --offline --match-path 'contracts/forge/*.t.sol' "$@"
echo "forge $PROFILE profile: $(( $(date +%s) - start )) s wall"
