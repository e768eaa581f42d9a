"""Best-of timing, for the case studies' timing tables and the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from threadpoolctl import threadpool_limits


def best_time(fn: Callable[[], object], repeats: int = 3, *, warmup: bool = False,
              threads: int | None = None) -> tuple[float, float]:
    """(best wall, best CPU) seconds over `repeats` calls of `fn`, after one untimed call if
    `warmup` (first-call allocations, lazy inits). CPU time is what a shared machine's load does
    not inflate. `threads`: torch's threads AND the BLAS/OpenMP pools numpy calls into, for the
    timed calls only. A comparison must give both sides the same: torch.set_num_threads alone
    leaves numpy's OpenBLAS on every core, and an encrypted path timed on two threads against a
    plaintext one on one doubled its CPU ratio in the full case-study report."""
    if threads is None:
        return _best(fn, repeats, warmup)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            return _best(fn, repeats, warmup)
    finally:
        torch.set_num_threads(before)


def _best(fn: Callable[[], object], repeats: int, warmup: bool) -> tuple[float, float]:
    if warmup:
        fn()
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu
