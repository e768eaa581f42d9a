"""Best-of timing, for the case studies' timing tables and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeats: int = 3, *, warmup: bool = False) -> tuple[float, float]:
    """(best wall, best CPU) seconds over `repeats` calls of `fn`, after one untimed call if
    `warmup` (first-call allocations, lazy inits). CPU time is what a shared machine's load does
    not inflate."""
    if warmup:
        fn()
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu
