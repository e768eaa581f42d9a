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
