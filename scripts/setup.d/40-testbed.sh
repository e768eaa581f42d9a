#!/usr/bin/env bash
# Network testbed (coopml.testbed, docs/testbed.md): the Debian tools it drives (Open vSwitch,
# iproute2/tc, ethtool, iperf3, ping) and the os-ken SDN controller in a venv of its own (os-ken's
# dependencies conflict with coopml's pins; the controller runs as a separate process from it).
# Idempotent. Without root it only says so: the testbed and its tests need root and skip without it.
set -euo pipefail
: "${ROOT:?}"
OSKEN_VERSION=4.2.2
OSKEN_VENV="${COOPML_OSKEN_VENV:-$ROOT/.cache/osken-venv}"
PY="${COOPML_PYTHON:-python3.11}"
# shellcheck source=scripts/pyinstall.sh
. "$ROOT/scripts/pyinstall.sh"
say() { echo "[40-testbed] $*"; }

if [ "$(id -u)" != 0 ]; then
  say "not root: skipping (the network testbed needs root; tests/testbed will skip)"
  exit 0
fi

# 1. Debian packages, only those whose command is missing
need=()
for pair in ovs-vswitchd:openvswitch-switch ovs-ofctl:openvswitch-switch iperf3:iperf3 ethtool:ethtool \
            ip:iproute2 tc:iproute2 ss:iproute2 ping:iputils-ping; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  if command -v apt-get >/dev/null; then
    say "installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; } \
      || say "WARNING: could not install ${need[*]}; the testbed falls back or its tests skip"
  else
    say "WARNING: no apt-get; install ${need[*]} yourself"
  fi
fi

# 2. os-ken in its own venv (a failure is reported, not fatal: the testbed then falls back to a
#    Linux bridge and the testbed tests skip, saying why)
osken_ok() {
  "$OSKEN_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('os-ken') != '$OSKEN_VERSION')" \
    >/dev/null 2>&1 && "$OSKEN_VENV/bin/python" -c "import os_ken.base.app_manager, os_ken.ofproto.ofproto_v1_3" \
    >/dev/null 2>&1
}
if ! osken_ok; then
  say "installing os-ken==$OSKEN_VERSION into $OSKEN_VENV"
  { [ -x "$OSKEN_VENV/bin/python" ] || make_venv "$PY" "$OSKEN_VENV"; } \
    && py_install "$OSKEN_VENV/bin/python" "os-ken==$OSKEN_VERSION" || true
  osken_ok || say "WARNING: os-ken is not usable in $OSKEN_VENV: the testbed will fall back to a Linux bridge"
fi
if osken_ok && command -v ovs-vswitchd >/dev/null && command -v iperf3 >/dev/null; then
  say "ready: $(ovs-vswitchd --version | head -1), $(iperf3 --version | head -1 | cut -d' ' -f1-2), os-ken $OSKEN_VERSION ($OSKEN_VENV)"
fi
