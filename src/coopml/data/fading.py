"""A documented synthetic stand-in for Case Study IV's link-power data (paper section V-E).

The paper detects a fading channel from link-power data in NASA Glenn Research Center's Link
Power database, which is not public. This module generates the same kind of data from standard
channel models, seeded and reproducible, so that the case study (its splits, its models, its
encryption interface) can be run end to end. It is a stand-in for the *task*, not for the
database: absolute accuracies are not comparable with the paper's, comparisons made on it (with
vs without encryption, private models vs MetaModel) are.

One example is a window of ``SAMPLES = 64`` received-power readings of one link, as a receiver's
power meter (RSSI) reports them. Each window draws its own link conditions:

- mean received power P0 ~ U[-95, -65] dBm (a link budget: 5 to 35 dB above the noise floor);
- log-normal shadowing: S_t in dB, a Gauss-Markov process (Gudmundson 1991) with standard deviation
  sigma_S ~ U[2, 6] dB and sample-to-sample correlation rho ~ U[0.95, 0.995];
- small-scale fading h_t: Rician with K-factor K ~ 10^(U[-10, 20] / 10) (K = 0.1 is practically
  Rayleigh, K = 100 a strong line of sight), a line-of-sight ray with a random Doppler angle plus a
  diffuse part from Clarke's model as a sum of M = 16 sinusoids with random phases and angles
  (autocorrelation ~ J0(2 pi nu tau)), normalised maximum Doppler nu = f_D T_s log-uniform in
  [0.005, 0.1] (from barely moving to about 6 fade cycles per window); E|h|^2 = 1;
- the measurement: each reading averages |r|^2 over B = 16 probe symbols, r = sqrt(P0 S_t) h_t x + n,
  x from commpy's 16-QAM constellation (unit mean power: a data-aided meter also sees the symbols'
  power spread), n complex Gaussian with the noise floor N0 = -100 dBm per symbol; the reading in
  dBm is quantised to 0.5 dB, as RSSI registers are, and stored as a byte, v = round((P + 130) / 0.5)
  clipped to 0..255 (-130 .. -2.5 dBm).

Labelling rule ("fading" = 1): the small-scale power gain |h_t|^2 drops at least 10 dB below its
mean (|h_t|^2 < 0.1) at least once in the window, i.e. the link goes through a deep fade; else 0.
The label is a property of the channel, not of the noisy readings: a detector sees the fade only
through shadowing, the noise floor (which masks fades on weak links), symbol power spread and
quantisation, so it cannot be perfect. Classes are balanced exactly (candidates are drawn in
fixed-size batches and accepted per class until each has its quota).

Why it is a fair stand-in: same input modality (a window of link-power readings), same decision
(is the link fading), channel components that are the textbook models for exactly this (Rician /
Rayleigh fading with Clarke's Doppler spectrum, log-normal shadowing, a receiver noise floor), and
the paper's split sizes. What it cannot reproduce: the NASA database's real impairments and label
definition, hence its absolute accuracies.

Splits (paper V-E): 4 sets of 10,000 training and 1,000 test windows; sets 1-3 are the three
computing contributors' local data, set 4 the verifiers'. The registry's "fading" dataset is
those sets concatenated: "train" = 4 x 10,000, "test" = 4 x 1,000 (set i is the i-th block).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from coopml.data.datasets import Dataset
from coopml.data.spec import InputSpec, Scale
from coopml.errors import DataError

SAMPLES = 64                  # readings per window
SYMBOLS = 16                  # probe symbols averaged per reading
SINUSOIDS = 16                # Clarke sum-of-sinusoids components
NOISE_FLOOR_DBM = -100.0
RSSI_OFFSET_DBM = -130.0      # byte 0
RSSI_STEP_DB = 0.5
DEEP_FADE = 0.1               # |h|^2 below -10 dB of its mean
SETS = 4
TRAIN_PER_SET = 10_000
TEST_PER_SET = 1_000
SEED = 20190              # the dataset's fixed seed (registry)
_BATCH = 512                  # candidates per draw: fixes the random stream, whatever the quota

FADING_INPUT = InputSpec(shape=(1, 1, SAMPLES), dtype="uint8", classes=("not-fading", "fading"),
                         preprocessing=(Scale(divide_by=255.0),))
"""One window as models see it: a 1 x SAMPLES single-channel image of RSSI bytes, divided by 255;
label 0 = not fading, 1 = fading. (Stored windows are [N, 1, SAMPLES], the spec's [N, H, W] form.)"""


@dataclass(frozen=True)
class FadingSet:
    """One of the paper's four sets: a party's training and (local) test windows."""

    name: str
    train: Dataset
    test: Dataset


def _constellation() -> np.ndarray:
    from commpy.modulation import QAMModem  # (imported on use: slow import)

    c = np.asarray(QAMModem(16).constellation, dtype=np.complex128)
    return c / np.sqrt(np.mean(np.abs(c) ** 2))


def _candidates(rng: np.random.Generator, n: int, const: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """n windows: (bytes (n, SAMPLES) uint8, labels (n,) int64)."""
    t = np.arange(SAMPLES, dtype=np.float64)
    p0_dbm = rng.uniform(-95.0, -65.0, size=(n, 1))
    k = 10.0 ** (rng.uniform(-10.0, 20.0, size=(n, 1)) / 10.0)
    nu = np.exp(rng.uniform(np.log(0.005), np.log(0.1), size=(n, 1)))
    # Clarke: diffuse part as a sum of sinusoids with random arrival angles and phases
    offset = rng.uniform(0.0, 1.0, size=(n, 1, 1))                     # arrival angles evenly spread,
    alpha = 2 * np.pi * (np.arange(SINUSOIDS)[None, None, :] + offset) / SINUSOIDS   # random rotation
    phi = rng.uniform(-np.pi, np.pi, size=(n, 1, SINUSOIDS))
    diffuse = np.exp(1j * (2 * np.pi * nu[..., None] * t[None, :, None] * np.cos(alpha) + phi)).sum(-1)
    diffuse /= np.sqrt(SINUSOIDS)
    los_angle = rng.uniform(-np.pi, np.pi, size=(n, 1))
    los_phase = rng.uniform(-np.pi, np.pi, size=(n, 1))
    los = np.exp(1j * (2 * np.pi * nu * t[None, :] * np.cos(los_angle) + los_phase))
    h = np.sqrt(k / (k + 1)) * los + np.sqrt(1 / (k + 1)) * diffuse     # (n, SAMPLES), E|h|^2 = 1
    # Gauss-Markov log-normal shadowing
    sigma = rng.uniform(2.0, 6.0, size=(n, 1))
    rho = rng.uniform(0.95, 0.995, size=(n, 1))
    z = rng.standard_normal((n, SAMPLES))
    shadow = np.empty((n, SAMPLES))
    shadow[:, 0] = sigma[:, 0] * z[:, 0]
    for i in range(1, SAMPLES):
        shadow[:, i] = rho[:, 0] * shadow[:, i - 1] + sigma[:, 0] * np.sqrt(1 - rho[:, 0] ** 2) * z[:, i]
    amp = np.sqrt(10.0 ** ((p0_dbm + shadow) / 10.0)) * h                 # sqrt(mW) * fading
    x = const[rng.integers(0, len(const), size=(n, SAMPLES, SYMBOLS))]
    n0 = 10.0 ** (NOISE_FLOOR_DBM / 10.0)
    noise = np.sqrt(n0 / 2) * (rng.standard_normal((n, SAMPLES, SYMBOLS))
                               + 1j * rng.standard_normal((n, SAMPLES, SYMBOLS)))
    power = np.mean(np.abs(amp[..., None] * x + noise) ** 2, axis=-1)     # mW per reading
    dbm = 10.0 * np.log10(power)
    v = np.clip(np.round((dbm - RSSI_OFFSET_DBM) / RSSI_STEP_DB), 0, 255).astype(np.uint8)
    labels = ((np.abs(h) ** 2).min(axis=1) < DEEP_FADE).astype(np.int64)
    return v, labels


def generate(n: int, seed: int) -> Dataset:
    """n windows, exactly half of each class, deterministic in (n, seed); `images` are (n, 1, SAMPLES)
    bytes (one row of readings, so models see a 1 x SAMPLES image), labels 0 = not fading, 1 = fading."""
    if n < 2 or n % 2:
        raise DataError(f"fading: the number of windows must be even and >= 2, got {n}")
    rng = np.random.default_rng(seed)
    const = _constellation()
    quota = {0: n // 2, 1: n // 2}
    xs, ys = [], []
    while quota[0] or quota[1]:
        v, lab = _candidates(rng, _BATCH, const)
        for c in (0, 1):
            idx = np.flatnonzero(lab == c)[:quota[c]]
            quota[c] -= len(idx)
            xs.append(v[idx])
            ys.append(lab[idx])
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    order = rng.permutation(n)
    return Dataset(x[order][:, None, :], y[order], FADING_INPUT)


@lru_cache(maxsize=2)
def load_split(split: str) -> Dataset:
    """The registry's "fading" dataset (coopml.data.load_dataset("fading", split)):
    'train' = 4 x 10,000 windows, 'test' = 4 x 1,000; generated once per process."""
    if split not in ("train", "test"):
        raise DataError(f"fading: split must be 'train' or 'test', not {split!r}")
    sets = fading_sets()
    parts = [s.train if split == "train" else s.test for s in sets]
    return Dataset(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                   FADING_INPUT)


def fading_sets(scale: float = 1.0, seed: int = SEED) -> list[FadingSet]:
    """The paper's four sets (contributor1..3, verifiers), each `scale` x (10,000 train, 1,000 test).

    Every set and split has its own random stream, so a reduced run (scale < 1) draws its windows
    from the same generator with the same seeds (not a subset of the full sets)."""
    if not 0 < scale <= 1:
        raise DataError(f"fading: scale must be in (0, 1], got {scale}")
    names = ("contributor1", "contributor2", "contributor3", "verifiers")
    out = []
    for i, name in enumerate(names):
        n_train = max(2, 2 * round(TRAIN_PER_SET * scale / 2))
        n_test = max(2, 2 * round(TEST_PER_SET * scale / 2))
        out.append(FadingSet(name, generate(n_train, seed * 100 + 2 * i),
                             generate(n_test, seed * 100 + 2 * i + 1)))
    return out
