"""Timing for the Table VIII comparisons: both sides on the same threads."""

import torch
from threadpoolctl import threadpool_info

from coopml.sim.timing import best_time


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_best_time_limits_torch_and_numpy_blas_alike_and_restores_them():
    """torch.set_num_threads alone left numpy's OpenBLAS on every core: an encrypted path (numpy
    GEMMs) timed on two threads against a float32 torch model on one doubled its CPU ratio."""
    seen: list[tuple[int, list[int]]] = []
    torch_before, blas_before = torch.get_num_threads(), _blas_threads()
    assert blas_before                                   # numpy's OpenBLAS is visible to threadpoolctl
    wall, cpu = best_time(lambda: seen.append((torch.get_num_threads(), _blas_threads())), 3,
                          warmup=True, threads=1)
    assert seen == [(1, [1] * len(blas_before))] * 4     # warm-up and every timed call
    assert wall >= 0 and cpu >= 0
    assert (torch.get_num_threads(), _blas_threads()) == (torch_before, blas_before)
    seen.clear()
    best_time(lambda: seen.append((torch.get_num_threads(), _blas_threads())), 1)     # no limit asked: none set
    assert seen == [(torch_before, blas_before)]
