"""Table V with real MNIST, real training, real encryption -> bytes -> decryption, real fusion.

CI runs a reduced version (4 epochs, half-size shards, 1000 test images, 2 augmented copies in the
fusion instead of 8); the full one is marked slow.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "bench_he", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_he.py")
bench_he = importlib.util.module_from_spec(_spec)
sys.modules["bench_he"] = bench_he          # dataclasses look their module up
_spec.loader.exec_module(bench_he)


def _check(t, tol_p7: float, tol_meta: float) -> None:
    for row in t.private:
        assert row["original"] > 0.8
        assert abs(row[1 << 7] - row["original"]) <= tol_p7, row          # p = 2^7: within 1 point
        assert row[1 << 5] >= row["original"] - 0.05, row                # p = 2^5: coarser, still close
        assert row["verifier 128"] >= row["original"] - 0.02, row        # verifier path agrees
    for row in t.meta:
        assert abs(row[1 << 7] - row["original"]) <= tol_meta, row      # fusion retrains: a bit noisier
    assert t.meta[-1]["original"] > t.meta[0]["original"]               # fusing more models helps


@pytest.fixture
def one_thread():
    """Deterministic float results (and fair to the other engineers' jobs on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_table5_reduced(one_thread):
    # 2 augmented copies instead of 8: the nine MetaModel fits were ~90 % of the time (docs/performance.md)
    t = bench_he.table5(epochs=4, n_test=1000, fusion_epochs=10, scale=0.5, augment_copies=2, verbose=False)
    bench_he.print_table5(t)
    _check(t, tol_p7=0.01, tol_meta=0.02)


@pytest.mark.slow
def test_table5_full(one_thread):
    t = bench_he.table5(epochs=30, verbose=False)
    bench_he.print_table5(t)
    _check(t, tol_p7=0.01, tol_meta=0.01)
    assert t.meta[-1]["original"] > 0.85   # paper: 0.958; see docs/he.md for the gap (fusion/training settings)
