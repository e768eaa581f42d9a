"""Storage throughput: put/get of a 50 MiB model on each backend (MB/s, 1 MB = 10^6 bytes).

Run: .venv/bin/python benchmarks/bench_storage.py [--mib 50] [--repeats 3]
Backends: LocalStore (embedded) and KuboStore on a js-ipfs daemon (loopback), CIDv0 and CIDv1;
plus a get on a second daemon that must fetch every block from the first over bitswap.
Every get verifies each block against its CID; sha-256 alone is printed as the ceiling.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from coopml.storage import KuboStore, LocalStore, Store
from coopml.storage.daemon import start_daemon


def model_bytes(mib: int) -> bytes:
    """A safetensors file of random float32 weights, the shape of what contributors upload."""
    rng = np.random.default_rng(0)
    n = mib * 1024 * 1024 // 4 // 2
    return save({"conv.weight": rng.standard_normal(n, dtype=np.float32),
                 "fc.weight": rng.standard_normal(n, dtype=np.float32)})


def rate(fn: Callable[[], object], size: int, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return size / best / 1e6, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = model_bytes(args.mib)
    size = len(data)
    print(f"model: {size / 2**20:.1f} MiB safetensors; best of {args.repeats} (median time in brackets)")
    sha, _ = rate(lambda: hashlib.sha256(data).digest(), size, args.repeats)
    print(f"{'sha-256 of the bytes (ceiling)':<40}{sha:>9.1f} MB/s")
    print(f"{'backend':<26}{'cid':<5}{'put MB/s':>12}{'get MB/s':>22}")

    def row(name: str, store: Store, version: int) -> str:
        put, put_t = rate(lambda: store.put(data, cid_version=version), size, args.repeats)
        cid = store.put(data, cid_version=version)
        assert store.get(cid) == data
        get, get_t = rate(lambda: store.get(cid), size, args.repeats)
        print(f"{name:<26}v{version:<4}{put:>8.1f} ({put_t:.2f}s){get:>11.1f} ({get_t:.2f}s)", flush=True)
        return cid

    with tempfile.TemporaryDirectory() as tmp:
        for version in (0, 1):
            row("LocalStore", LocalStore(Path(tmp, f"local{version}")), version)
        first = start_daemon(Path(tmp, "ipfs-a"))
        second = start_daemon(Path(tmp, "ipfs-b"))
        try:
            for version in (0, 1):
                cid = row("KuboStore (js-ipfs 0.66)", KuboStore(first.api_url), version)
            second.connect(first)
            remote = KuboStore(second.api_url, timeout=120)
            for label in ("first fetch after connect", "warm connection"):
                other = data + label.encode()  # new content each time: nothing cached on `second`
                cid = KuboStore(first.api_url).put(other, cid_version=1)
                t0 = time.perf_counter()
                assert remote.get(cid) == other
                elapsed = time.perf_counter() - t0
                print(f"{'KuboStore, other peer':<26}v1   {'':>20}{size / elapsed / 1e6:>11.1f} ({elapsed:.2f}s, "
                      f"bitswap, {label})", flush=True)
        finally:
            first.stop()
            second.stop()


if __name__ == "__main__":
    main()
