"""Shared fixtures. Tests use the real MNIST files fetched by scripts/setup.sh."""

import os

import pytest
import torch

# Two cores shared by the whole suite: keep torch from oversubscribing them. Under pytest-xdist each
# worker takes its share of the cores, at least one thread (scripts/test.sh: 3 workers on 2 cores,
# one thread each); two threads per worker would put four or more busy threads on two cores, and
# OpenMP's waiting threads spin, so the same tests cost more CPU.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(scope="session")
def mnist_train():
    from coopml.data import load_dataset
    return load_dataset("mnist", "train")


@pytest.fixture(scope="session")
def mnist_test():
    from coopml.data import load_dataset
    return load_dataset("mnist", "test")


# Scheduling. scripts/test.sh runs `-n 3 --dist loadfile --no-loadscope-reorder`: a worker takes
# whole files (module fixtures such as one lifecycle run shared by several tests stay in one
# process), one at a time in collection order. The longest files are collected first, longest
# first, so the short ones fill in around them at the end; a long file collected last would be the
# suite's tail while the other workers idle. (Without --no-loadscope-reorder xdist re-sorts the
# files by their number of tests and this order is lost. `--dist loadgroup` cannot split a file
# instead: xdist 3.8 sets `item._nodeid`, which pytest 9 no longer reads, so its groups are ignored.)
# Seconds per file: the main phase's `--durations` on the 2-core machine (see docs/performance.md,
# "The test command"); only the order matters.
LONGEST_FIRST = {
    "tests/sim/test_sim_case_studies.py": 170,
    "tests/cli/test_cli_deployment.py": 85,
    "tests/roles/test_roles_lifecycle.py": 80,
    "tests/roles/test_roles_processes.py": 72,
    "tests/chain/test_chain_adversarial.py": 70,
    "tests/roles/test_roles_adversarial.py": 65,
    "tests/he/test_ckks.py": 60,
    "tests/he/test_he_table5.py": 55,
    "tests/chain/test_chain_analysis.py": 55,
    "tests/storage/test_storage_ipfs.py": 55,
    "tests/roles/test_roles_recovery.py": 48,
    "tests/fusion/test_fusion_file.py": 45,
    "tests/test_static_checks.py": 45,
    "tests/roles/test_roles_adversarial_copies.py": 40,
    "tests/roles/test_roles_adversarial_liveness.py": 38,
    "tests/cli/test_cli_foundation.py": 38,
    "tests/chain/test_chain_lifecycle.py": 30,
    "tests/chain/test_chain_invariant.py": 30,
    "tests/fusion/test_fusion_metamodel.py": 20,
    "tests/chain/test_transactions.py": 20,
    "tests/roles/test_roles_adversarial_disputes.py": 18,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -LONGEST_FIRST.get(item.nodeid.split("::")[0], 0))   # stable: the rest keep order
