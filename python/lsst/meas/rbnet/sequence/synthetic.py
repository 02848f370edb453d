# This file is part of meas_rbnet.
"""Synthetic stand-ins for development, tests and benchmarks of the sequence model.

`make_synthetic_latents` imitates the labelled ZTF set of the RB_ZTF paper *after*
the VAE: 2,230 objects (1,080 real, 1,150 artifacts), sequence lengths 5-1,100 with a
median near 430, latent width 36, visit times with a survey-like cadence (nights,
seasonal gaps, a few visits per night). Real and bogus objects differ only subtly:

- every object has a static appearance vector and per-visit observing conditions
  (seeing, sky) projected into the latent space, drawn from the same distributions
  for both classes, plus correlated noise;
- real objects vary *smoothly in time* along a "flux" direction (periodic variables
  aliased by the cadence, damped random walks, one-off transients), and show a few
  artifact-like frames at a low rate (cosmic rays happen to real objects too);
- artifacts vary along the flux direction *incoherently* (a new value every visit
  or every night), show artifact-direction excursions at a higher rate, and some
  switch between two states (a bad column or ghost present in part of the visits);
- a fraction of labels are flipped (experts disagree too).

No single frame decides the class; the order and timing of the visits matter, so
the set rewards sequence models without being trivially separable.

`make_synthetic_frames` makes small ``(T, C, F, F)`` frame sequences (a Gaussian
source, noise and, for artifacts, a streak or hot column in some frames) for tests of
the VAE and of the frame-to-score path when the simulator is not wanted.
"""

__all__ = ["make_synthetic_latents", "make_synthetic_frames", "SyntheticFrames"]

import dataclasses

import numpy as np
from scipy.signal import lfilter

from ..constants import BOGUS, REAL
from .latents import LatentSet


def _lengths(rng: np.random.Generator, n: int, lo: int, hi: int, median: float) -> np.ndarray:
    # Mostly long light curves with a tail of short ones, like the paper's Fig. 2.
    short = rng.random(n) < 0.12
    long_len = np.exp(rng.normal(np.log(median * 1.13), 0.55, n))
    short_len = rng.uniform(lo, 120, n)
    out = np.where(short, short_len, long_len)
    return np.clip(np.round(out), lo, hi).astype(np.int64)


def _times(rng: np.random.Generator, t: int) -> np.ndarray:
    """Visit times (days) with nights, several visits per night and seasonal gaps."""
    span = rng.uniform(400, 1600)
    n_nights = max(1, int(np.ceil(t / rng.uniform(1.0, 2.5))))
    season = 365.25
    visible = rng.uniform(0.55, 0.75) * season
    phase0 = rng.uniform(0, season)
    nights = []
    while len(nights) < n_nights:
        cand = np.floor(rng.uniform(0, span, 2 * n_nights))
        ok = ((cand + phase0) % season) < visible
        nights.extend(np.unique(cand[ok]).tolist())
    nights = np.sort(rng.choice(np.unique(nights), size=min(n_nights, len(np.unique(nights))), replace=False))
    night_of = np.sort(rng.choice(len(nights), size=t, replace=True))
    times = nights[night_of] + rng.uniform(0.1, 0.35, t)
    return np.sort(times)


def make_synthetic_latents(
    n_objects: int = 2230,
    latent_dim: int = 36,
    seed: int = 0,
    real_fraction: float = 1080 / 2230,
    length_range: tuple[int, int] = (5, 1100),
    median_length: float = 430.0,
    label_noise: float = 0.05,
    difficulty: float = 1.0,
    with_logvar: bool = False,
) -> LatentSet:
    """A labelled set of latent sequences standing in for VAE-encoded ZTF objects.

    Parameters
    ----------
    n_objects : `int`
        Number of objects.
    latent_dim : `int`
        Latent width ``D`` (>= 8).
    seed : `int`
        Random seed; the same seed gives the same set.
    real_fraction : `float`
        Fraction of real objects (1,080 of 2,230 in the paper).
    length_range : `tuple` [`int`, `int`]
        Smallest and largest number of visits.
    median_length : `float`
        Approximate median number of visits.
    label_noise : `float`
        Fraction of labels flipped.
    difficulty : `float`
        Scales the noise against the class signal (1: the default; larger is harder).
    with_logvar : `bool`
        Append ``D`` log-variance columns (width ``2 D``, means first), like the
        saved RB_ZTF embeddings.

    Returns
    -------
    latents : `LatentSet`
        Labels follow `lsst.meas.rbnet.constants` (1 = real); times in days.
    """
    if latent_dim < 8:
        raise ValueError(f"latent_dim must be >= 8, got {latent_dim}.")
    rng = np.random.default_rng(seed)
    d = latent_dim
    lengths = _lengths(rng, n_objects, length_range[0], length_range[1], median_length)
    is_real = rng.random(n_objects) < real_fraction

    # Shared directions of the latent space (same for every object).
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    u_flux = basis[:, 0]
    cond = basis[:, 1:4]  # seeing, sky, airmass-like conditions
    art = basis[:, 4:8]  # artifact directions (streak, column, ghost, hot pixel)
    mix = rng.normal(size=(d, d)) * 0.15 + np.eye(d)  # a non-orthogonal "VAE" mixing

    seqs, times_all = [], []
    for i in range(n_objects):
        t = int(lengths[i])
        tm = _times(rng, t)
        static = rng.normal(0, 1.0, d)
        c = rng.normal(0, 1.0, (t, 3))
        # Correlated noise (AR(1) in visit order): neighbouring frames look alike.
        rho = rng.uniform(0.2, 0.6)
        e = lfilter([1.0], [1.0, -rho], rng.normal(0, 0.45 * difficulty, (t, d)), axis=0)
        # Appearance: artifacts often look a little different in every frame (a ghost, a
        # diffraction spike, a bad column nearby); real objects are sometimes on a host galaxy.
        # Both classes share most of these distributions, so the mean frame alone is a weak clue.
        if not is_real[i] and rng.random() < 0.55:
            w = np.abs(rng.normal(0, 1, 4))
            static += rng.uniform(0.4, 1.2) / difficulty * art @ (w / np.linalg.norm(w))
        if rng.random() < (0.3 if is_real[i] else 0.15):
            static += rng.uniform(0.3, 1.0) * basis[:, 8]
        x = static + c @ cond.T + e
        amp = abs(rng.normal(0.0, 1.0)) * 0.9 + 0.3
        if is_real[i]:
            kind = rng.choice(3, p=[0.45, 0.35, 0.2])
            if kind == 0:  # periodic variable, aliased by the cadence
                period = np.exp(rng.uniform(np.log(0.3), np.log(400.0)))
                f = np.sin(2 * np.pi * tm / period + rng.uniform(0, 2 * np.pi))
            elif kind == 1:  # damped random walk in time (AGN-like)
                tau = rng.uniform(30, 300)
                f = np.zeros(t)
                for k in range(1, t):
                    a = np.exp(-(tm[k] - tm[k - 1]) / tau)
                    f[k] = a * f[k - 1] + np.sqrt(1 - a * a) * rng.normal()
            else:  # one-off transient: fast rise, slow decline
                t0 = rng.uniform(tm[0], tm[-1])
                dtt = tm - t0
                f = np.where(dtt > 0, np.exp(-dtt / rng.uniform(10, 80)), np.exp(dtt / 3.0)) * 2 - 0.3
            x += np.outer(amp * f, u_flux)
            rate = rng.uniform(0.0, 0.03)
        else:
            kind = rng.choice(3, p=[0.4, 0.3, 0.3])
            if kind == 0:  # spurious flux: independent every visit
                f = rng.normal(0, 1.0, t)
            elif kind == 1:  # spurious flux: per night (same conditions within a night)
                night = np.floor(tm).astype(np.int64)
                _, inv = np.unique(night, return_inverse=True)
                f = rng.normal(0, 1.0, inv.max() + 1)[inv]
            else:  # two states: artifact present in a contiguous part of the visits
                f = rng.normal(0, 0.5, t)
                on = np.zeros(t, bool)
                a0 = rng.integers(0, t)
                on[a0 : a0 + max(1, int(rng.uniform(0.1, 0.5) * t))] = True
                x[on] += 0.6 * art[:, rng.integers(0, 4)]
            x += np.outer(amp * f, u_flux)
            rate = rng.uniform(0.01, 0.08)
        # Artifact-direction excursions in single frames.
        hits = rng.random(t) < rate
        if hits.any():
            which = rng.integers(0, 4, hits.sum())
            x[hits] += art[:, which].T * rng.uniform(0.8, 2.5, (hits.sum(), 1))
        seqs.append((x @ mix.T).astype(np.float32))
        times_all.append(tm)

    labels = np.where(is_real, REAL, BOGUS).astype(np.int8)
    flip = rng.random(n_objects) < label_noise
    labels[flip] = 1 - labels[flip]
    if with_logvar:
        seqs = [np.concatenate([s, rng.normal(-3.0, 0.2, s.shape).astype(np.float32)], axis=1) for s in seqs]
    ids = np.array([f"syn{i:06d}" for i in range(n_objects)])
    return LatentSet.from_sequences(ids, seqs, labels, times_all)


@dataclasses.dataclass
class SyntheticFrames:
    """Frame sequences of several objects, concatenated.

    Attributes
    ----------
    frames : `numpy.ndarray`
        ``(sum T_i, C, F, F)`` float32.
    offsets : `numpy.ndarray`
        ``(n_objects + 1,)`` int64; object ``i`` has frames ``offsets[i]:offsets[i+1]``.
    times : `numpy.ndarray`
        ``(sum T_i,)`` float64 days.
    labels : `numpy.ndarray`
        ``(n_objects,)`` int8, 1 = real.
    object_ids : `numpy.ndarray`
        ``(n_objects,)`` str.
    """

    frames: np.ndarray
    offsets: np.ndarray
    times: np.ndarray
    labels: np.ndarray
    object_ids: np.ndarray


def make_synthetic_frames(
    n_objects: int = 20,
    n_visits: tuple[int, int] = (3, 12),
    frame_size: int = 28,
    channels: int = 1,
    seed: int = 0,
) -> SyntheticFrames:
    """Small frame sequences: real sources vary smoothly, artifacts get streaks and hot columns.

    Every object is a centred Gaussian source (of its own width in each visit)
    seen at random times in [0, 200), with Gaussian noise of sigma 0.3 in each
    channel. A real object's flux is a sinusoid of time; an artifact's is drawn
    anew each visit, and each of its frames gets a hot column or a streak.

    Parameters
    ----------
    n_objects : `int`
        Number of objects (about half real).
    n_visits : `tuple` [`int`, `int`]
        Inclusive range of visits per object.
    frame_size : `int`
        Frame side ``F`` (pixels).
    channels : `int`
        Channels ``C`` (the same scene plus independent noise in each).
    seed : `int`
        Random seed.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:frame_size, :frame_size] - (frame_size - 1) / 2.0
    frames, times, offsets = [], [], [0]
    labels = (np.arange(n_objects) % 2 == 0).astype(np.int8)  # REAL on even indices
    rng.shuffle(labels)
    for i in range(n_objects):
        t = int(rng.integers(n_visits[0], n_visits[1] + 1))
        tm = np.sort(rng.uniform(0, 200, t))
        sigma = rng.uniform(1.2, 2.0, t)
        if labels[i] == REAL:
            flux = 3.0 + 2.0 * np.sin(tm / rng.uniform(5, 50))
        else:
            flux = rng.uniform(0.5, 5.0, t)
        img = flux[:, None, None] * np.exp(-(xx**2 + yy**2)[None] / (2 * sigma[:, None, None] ** 2))
        if labels[i] == BOGUS:
            for k in range(t):
                if rng.random() < 0.5:
                    col = rng.integers(0, frame_size)
                    img[k, :, col] += rng.uniform(2, 5)
                else:
                    ang = rng.uniform(0, np.pi)
                    dist = np.abs(np.cos(ang) * xx + np.sin(ang) * yy - rng.uniform(-5, 5))
                    img[k] += 3.0 * np.exp(-(dist**2) / 2)
        stack = np.repeat(img[:, None], channels, axis=1) + rng.normal(
            0, 0.3, (t, channels, frame_size, frame_size)
        )
        frames.append(stack.astype(np.float32))
        times.append(tm)
        offsets.append(offsets[-1] + t)
    return SyntheticFrames(
        frames=np.concatenate(frames),
        offsets=np.asarray(offsets, dtype=np.int64),
        times=np.concatenate(times),
        labels=labels,
        object_ids=np.array([f"frm{i:04d}" for i in range(n_objects)]),
    )
