"""Measure what the emulated links really deliver: ping (round trip) and iperf3 (throughput
both ways) between two hosts, and per-host traffic from interface counters over time."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from coopml.testbed.errors import TestbedError
from coopml.testbed.netns import require_tools, sh
from coopml.testbed.topology import Testbed

IPERF_PORT = 5201


def ping(tb: Testbed, src: str, dst: str, count: int = 20, interval: float = 0.2) -> dict[str, float]:
    require_tools("ping")
    out = sh(["ping", "-q", "-n", "-c", str(count), "-i", str(interval), tb.host(dst).ip], netns=tb.host(src).netns,
             timeout=count * interval + 30).stdout
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", out)
    loss = re.search(r"([\d.]+)% packet loss", out)
    if not m:
        raise TestbedError(f"ping {src} -> {dst}: no round-trip summary in {out[-300:]!r}")
    mn, avg, mx, mdev = (float(x) for x in m.groups())
    return {"rtt_min_ms": mn, "rtt_avg_ms": avg, "rtt_max_ms": mx, "rtt_mdev_ms": mdev,
            "one_way_ms": round(mn / 2, 2), "loss_pct": float(loss.group(1)) if loss else 0.0}


def iperf(tb: Testbed, client: str, server: str, seconds: float = 4.0, reverse: bool = False) -> float:
    """Throughput client -> server (server -> client with reverse) in Mbit/s, as the receiver saw it."""
    require_tools("iperf3")
    srv = tb.host(server)
    log = tb.run_dir / "logs" / "iperf3-server.log"
    popen = tb.spawn(server, f"iperf3-{server}", ["iperf3", "-s", "-1", "-B", srv.ip, "-p", str(IPERF_PORT)], log=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            r = sh(["ss", "-ltn", f"sport = :{IPERF_PORT}"], netns=srv.netns, check=False)
            if srv.ip in r.stdout:
                break
            if time.monotonic() > deadline:
                raise TestbedError(f"iperf3 server on {server} did not listen; see {log}")
            time.sleep(0.1)
        cmd = ["iperf3", "-c", srv.ip, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J"] + (["-R"] if reverse else [])
        out = sh(cmd, netns=tb.host(client).netns, timeout=seconds + 30).stdout
        data = json.loads(out)
        return round(float(data["end"]["sum_received"]["bits_per_second"]) / 1e6, 2)
    finally:
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def measure_path(tb: Testbed, a: str, b: str) -> dict[str, Any]:
    """ping a -> b, iperf3 a -> b and b -> a (each crosses a's link and b's link)."""
    result: dict[str, Any] = {"path": f"{a} <-> {b}"}
    result.update(ping(tb, a, b))
    result["up_mbit"] = iperf(tb, a, b)
    result["down_mbit"] = iperf(tb, a, b, reverse=True)
    return result


class CounterSampler:
    """Reads every host's link counters every `interval` s (in a thread) into a time series."""

    def __init__(self, tb: Testbed, interval: float = 1.0) -> None:
        self.tb = tb
        self.interval = interval
        self.samples: list[tuple[float, dict[str, dict[str, int]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="counters", daemon=True)

    def start(self) -> CounterSampler:
        self.samples.append((time.time(), self.tb.counters()))
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append((time.time(), self.tb.counters()))
            except TestbedError:
                return

    def stop(self) -> dict[str, dict[str, int]]:
        self._stop.set()
        self._thread.join(timeout=5)
        last = self.tb.counters()
        self.samples.append((time.time(), last))
        return last

    def at(self, t: float) -> dict[str, dict[str, int]]:
        """Counters at time t (the last sample at or before t)."""
        best = self.samples[0][1]
        for ts, c in self.samples:
            if ts > t:
                break
            best = c
        return best

    def between(self, host: str, t0: float, t1: float) -> tuple[int, int]:
        """(sent, received) bytes of `host` between t0 and t1 (sample resolution)."""
        a, b = self.at(t0)[host], self.at(t1)[host]
        return b["sent_bytes"] - a["sent_bytes"], b["recv_bytes"] - a["recv_bytes"]

    def write_csv(self, path: Path) -> None:
        hosts = sorted(self.samples[0][1]) if self.samples else []
        lines = ["t," + ",".join(f"{h}_sent,{h}_recv" for h in hosts)]
        t0 = self.samples[0][0] if self.samples else 0.0
        for ts, c in self.samples:
            lines.append(f"{ts - t0:.2f}," + ",".join(f"{c[h]['sent_bytes']},{c[h]['recv_bytes']}" for h in hosts))
        path.write_text("\n".join(lines) + "\n")


def delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {h: {k: after[h][k] - before[h][k] for k in after[h]} for h in after}


Matrix = dict[str, dict[str, dict[str, int]]]


def matrix_delta(after: Matrix | None, before: Matrix | None) -> Matrix | None:
    if after is None or before is None:
        return None
    return {a: {b: {k: v[k] - before[a][b][k] for k in v} for b, v in row.items()} for a, row in after.items()}


def split_by_peer(matrix: Matrix | None, host: str, groups: dict[str, str]) -> dict[str, dict[str, int]] | None:
    """Bytes `host` sent to / received from each group of peers (groups: host -> group name)."""
    if matrix is None:
        return None
    out: dict[str, dict[str, int]] = {}
    for peer, group in groups.items():
        if peer == host:
            continue
        g = out.setdefault(group, {"sent_bytes": 0, "recv_bytes": 0})
        g["sent_bytes"] += matrix[host][peer]["bytes"]
        g["recv_bytes"] += matrix[peer][host]["bytes"]
    return out
