"""The synthetic link-power stand-in for Case Study IV: seeded, balanced, shaped as documented."""

import numpy as np
import pytest
import torch

from coopml.data import FADING_INPUT, dataset_info, fading_sets
from coopml.data.fading import RSSI_OFFSET_DBM, RSSI_STEP_DB, SAMPLES, generate, load_split
from coopml.errors import DataError


def test_generation_is_seeded_balanced_and_shaped():
    a, b, c = generate(400, seed=3), generate(400, seed=3), generate(400, seed=4)
    assert a.images.shape == (400, 1, SAMPLES) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.labels.sum() == 200                                          # exactly balanced
    dbm = a.images[:, 0].astype(float) * RSSI_STEP_DB + RSSI_OFFSET_DBM
    assert -110 < dbm.mean() < -60                                        # a link budget, above the floor
    spread = dbm.max(axis=1) - dbm.min(axis=1)
    # deep fades show in the readings: fading windows swing more on average (but not always)
    assert spread[a.labels == 1].mean() > spread[a.labels == 0].mean() + 3
    assert (spread[a.labels == 1] < np.median(spread[a.labels == 0])).any()


def test_sets_follow_the_paper_split():
    sets = fading_sets(scale=0.01)
    assert [s.name for s in sets] == ["contributor1", "contributor2", "contributor3", "verifiers"]
    assert all(len(s.train) == 100 and len(s.test) == 10 for s in sets)
    assert not np.array_equal(sets[0].train.images, sets[1].train.images)     # own streams
    with pytest.raises(DataError, match="scale"):
        fading_sets(scale=0)
    with pytest.raises(DataError, match="even"):
        generate(3, seed=0)


def test_spec_and_registry():
    """The windows carry FADING_INPUT: models see [N, 1, 1, SAMPLES] floats = bytes / 255, 2 classes.
    The public registry's "fading" entry is `load_split` (not called here for a real split: it
    generates 44,000 windows)."""
    d = generate(10, seed=1)
    assert d.spec == FADING_INPUT and d.num_classes == 2 and FADING_INPUT.shape == (1, 1, SAMPLES)
    x, _ = d.tensors()
    assert x.shape == (10, 1, 1, SAMPLES) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(d.images).float().div_(255.0).unsqueeze(1))
    assert dataset_info("fading").loader is load_split
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        load_split("dev")
