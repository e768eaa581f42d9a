"""What an idle agent costs: CPU-seconds of one waiting process over S seconds (default 60)
while nothing happens on the contract, against a node that seals a block every second.

- poll-0.3s: the old agent loop: every 0.3 s drain the event cursor and read the chain clock;
- wait_for_activity: `EventCursor.wait_for_activity(timeout)` (back-off 0.2 s -> 2 s, one
  eth_blockNumber per wake-up, one eth_getLogs per new block).

The node's own CPU over the same window is printed too (it mines the empty blocks).

    .venv/bin/python benchmarks/bench_idle_wait.py              # 60 s per case
    .venv/bin/python benchmarks/bench_idle_wait.py --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from coopml.chain import Chain, deploy
from coopml.chain.processes import anvil_binary, start_anvil, start_embedded_node

WAITER = textwrap.dedent("""
    import json, resource, sys, time
    from coopml.chain import Chain, EventCursor
    url, address, mode, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    chain = Chain.rpc(url)
    cursor = EventCursor(chain, address, from_block=chain.block_number())
    start_cpu = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    wakeups = 0
    while time.monotonic() - t0 < seconds:
        if mode == "poll":
            cursor.drain(lambda ev: None)
            chain.now()
            time.sleep(0.3)
        else:
            cursor.wait_for_activity(seconds - (time.monotonic() - t0))
        wakeups += 1
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (end.ru_utime - start_cpu.ru_utime) + (end.ru_stime - start_cpu.ru_stime)
    print(json.dumps({"cpu": cpu, "loops": wakeups, "seconds": time.monotonic() - t0}))
""")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    nodes = [("embedded node --block-time 1", lambda: start_embedded_node(block_time=1))]
    if anvil_binary() is not None:
        nodes.append(("anvil --block-time 1", lambda: start_anvil(block_time=1)))
    rows = []
    for name, start in nodes:
        node = start()
        try:
            chain = Chain.rpc(node.url)
            coop = deploy(chain, chain.dev_accounts()[0])
            for mode in ("poll", "wait"):
                node_cpu0 = proc_cpu(node.pid)
                out = subprocess.run([sys.executable, "-c", WAITER, node.url, coop.address, mode, str(args.seconds)],
                                     check=False, capture_output=True, text=True, timeout=args.seconds + 120)
                if out.returncode != 0:
                    raise SystemExit(out.stderr)
                node_cpu = proc_cpu(node.pid) - node_cpu0
                r = json.loads(out.stdout.strip().splitlines()[-1])
                label = "poll-0.3s (old loop)" if mode == "poll" else "wait_for_activity"
                rows.append((name, label, r["cpu"], r["loops"], node_cpu, r["seconds"]))
                print(f"  {name:<30} {label:<22} waiter {r['cpu']:6.2f} CPU-s ({r['loops']} loops), "
                      f"node {node_cpu:6.2f} CPU-s over {r['seconds']:.0f} s", flush=True)
        finally:
            node.stop()
    load = os.getloadavg()
    print(f"\nIdle waiter for {args.seconds:g} s against a node sealing a block per second "
          f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores):")
    for name, label, cpu, loops, node_cpu, secs in rows:
        print(f"  {name:<30} {label:<22} {cpu / secs * 100:5.2f} % of a core (waiter), "
              f"{node_cpu / secs * 100:5.2f} % (node)")


if __name__ == "__main__":
    main()
