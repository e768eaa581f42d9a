"""What each testbed preset's links really deliver (needs root, as the testbed does).

    .venv/bin/python benchmarks/bench_testbed_links.py [--presets pi lan ci] [--seconds 5] [--switch auto]

For every preset it builds a three-host testbed (no chain, no IPFS), then measures between two
hosts: ping round trip (min / avg over 30 pings) and iperf3 throughput both ways, and prints them
next to the preset's targets. A node-to-node path crosses two links, so the one-way delay target
is 2 x the per-link delay and the round-trip target 4 x. Everything is torn down afterwards.
About 20 s per preset.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from coopml.testbed.measure import iperf, ping
from coopml.testbed.presets import get_preset
from coopml.testbed.topology import Testbed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["pi", "lan", "ci"])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--switch", default="auto")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"on {os.cpu_count()} cores")
    print(f"{'preset':7} {'switch':13} {'rate target':>12} {'up':>8} {'down':>8} {'one-way target':>15} "
          f"{'rtt min':>8} {'rtt avg':>8} {'one way':>8}")
    for name in args.presets:
        preset = get_preset(name)
        with tempfile.TemporaryDirectory(prefix=f"tb-bench-{name}-") as tmp:
            tb = Testbed.build(Path(tmp), preset, [("a", "contributor"), ("b", "verifier")], switch=args.switch,
                               log=lambda m: None)
            try:
                time.sleep(0.5)
                p = ping(tb, "a", "b", count=30, interval=0.1)
                up = iperf(tb, "a", "b", seconds=args.seconds)
                down = iperf(tb, "a", "b", seconds=args.seconds, reverse=True)
                kind = tb.state.switch_kind or "?"
            finally:
                tb.down()
        rate = f"{preset.link.rate_mbit:g} Mbit/s" if preset.link.rate_mbit else "unshaped"
        print(f"{name:7} {kind:13} {rate:>12} {up:8.2f} {down:8.2f} {2 * preset.link.delay_ms:12.1f} ms "
              f"{p['rtt_min_ms']:8.2f} {p['rtt_avg_ms']:8.2f} {p['one_way_ms']:8.2f}")
        if preset.link.rate_mbit:
            print(f"        throughput / target: up {up / preset.link.rate_mbit:.3f}, "
                  f"down {down / preset.link.rate_mbit:.3f}")


if __name__ == "__main__":
    main()
