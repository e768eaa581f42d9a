"""Shared fixtures. Tests use the real MNIST files fetched by scripts/setup.sh."""

import os

import pytest
import torch

# Two cores shared by the whole suite: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def mnist_train():
    from coopml.data import load_dataset
    return load_dataset("mnist", "train")


@pytest.fixture(scope="session")
def mnist_test():
    from coopml.data import load_dataset
    return load_dataset("mnist", "test")


# The longest test files, longest first (`--durations` of a CI run). With `--dist loadfile` a worker
# takes whole files in collection order, so a long file collected last is the suite's tail while
# the other worker idles; starting them first lets the short files fill in around them.
LONGEST_FIRST = (
    "tests/sim/test_sim_case_studies.py",
    "tests/roles/test_roles_adversarial.py",
    "tests/he/test_he_table5.py",
    "tests/roles/test_roles_processes.py",
    "tests/roles/test_roles_lifecycle.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))   # stable: the rest keep order
