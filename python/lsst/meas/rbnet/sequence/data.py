# This file is part of meas_rbnet.
"""Batches of variable-length sequences without padding everything to the longest.

Objects are grouped into *length buckets*: sorted by length (with a little noise
when training, so batches differ between epochs) and cut into batches whose padded
size ``B * T_max`` stays under a frame budget. A batch of short sequences is
therefore wide and short, a batch of long ones narrow and long, and the padding
is a few percent of the frames. The recurrent models then pack the batch
(`torch.nn.utils.rnn.pack_padded_sequence`), so padded steps cost nothing.

`collate` builds the padded tensors of one batch with vectorised indexing and can
shorten long sequences for training (``max_len``): ``"subsample"`` keeps a random,
time-ordered subset of the visits spanning the whole light curve (the time feature
is recomputed from the kept visits, so the model sees a sparser cadence), and
``"window"`` keeps a random contiguous run of visits.
"""

__all__ = ["Batch", "length_batches", "collate", "CROPS"]

import dataclasses

import numpy as np
import torch

#: Ways to shorten a training sequence to ``max_len`` visits.
CROPS: tuple[str, ...] = ("subsample", "window")


@dataclasses.dataclass
class Batch:
    """Padded tensors of one batch.

    Attributes
    ----------
    x : `torch.Tensor`
        ``(B, T, D)`` float32 latents, zero beyond each length.
    lengths : `torch.Tensor`
        ``(B,)`` int64.
    dt : `torch.Tensor`
        ``(B, T)`` float32 days since the previous kept visit (0 first and beyond the length).
    index : `numpy.ndarray`
        ``(B,)`` int64 object indices of the batch rows.
    """

    x: torch.Tensor
    lengths: torch.Tensor
    dt: torch.Tensor
    index: np.ndarray


def length_batches(
    lengths: np.ndarray,
    max_frames: int = 32768,
    max_batch: int = 64,
    shuffle: bool = False,
    rng: np.random.Generator | None = None,
    max_len: int | None = None,
) -> list[np.ndarray]:
    """Split objects into length-bucketed batches.

    Parameters
    ----------
    lengths : `numpy.ndarray`
        ``(N,)`` sequence lengths.
    max_frames : `int`
        Budget of padded frames per batch, ``B * T_max`` (a single sequence longer
        than the budget gets a batch of its own).
    max_batch : `int`
        Most sequences per batch.
    shuffle : `bool`
        Jitter the sort by length and shuffle the batch order (training).
    rng : `numpy.random.Generator`, optional
        Random generator for ``shuffle``.
    max_len : `int`, optional
        Lengths are taken as ``min(length, max_len)`` (sequences cropped in `collate`).

    Returns
    -------
    batches : `list` [`numpy.ndarray`]
        Object indices of each batch; every object exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if max_len:
        lengths = np.minimum(lengths, max_len)
    rng = rng if rng is not None else np.random.default_rng()
    key = lengths.astype(np.float64)
    if shuffle:
        # Multiplicative jitter: neighbours in length swap, so batches change every epoch.
        key = key * np.exp(rng.normal(0, 0.1, len(key)))
    order = np.argsort(key, kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        t_max = lengths[order[start]]
        while end < len(order) and end - start < max_batch:
            t_new = max(t_max, lengths[order[end]])
            if t_new * (end - start + 1) > max_frames:
                break
            t_max = t_new
            end += 1
        batches.append(order[start:end])
        start = end
    if shuffle:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def _positions(length: int, max_len: int | None, crop: str, rng: np.random.Generator | None) -> np.ndarray:
    if not max_len or length <= max_len:
        return np.arange(length)
    if crop == "window":
        start = int(rng.integers(0, length - max_len + 1))
        return np.arange(start, start + max_len)
    return np.sort(rng.choice(length, size=max_len, replace=False))


def collate(
    values: np.ndarray,
    offsets: np.ndarray,
    index: np.ndarray,
    times: np.ndarray | None = None,
    max_len: int | None = None,
    crop: str = "subsample",
    rng: np.random.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Batch:
    """Padded tensors of the objects ``index``.

    Parameters
    ----------
    values : `numpy.ndarray`
        ``(sum T_i, D)`` float32 latents of all objects.
    offsets : `numpy.ndarray`
        ``(N + 1,)`` object boundaries in ``values``.
    index : `numpy.ndarray`
        ``(B,)`` objects of the batch.
    times : `numpy.ndarray`, optional
        ``(sum T_i,)`` visit times (days); without them ``dt`` is 0.
    max_len : `int`, optional
        Shorten longer sequences to this many visits (training only).
    crop : `str`
        One of `CROPS`.
    rng : `numpy.random.Generator`, optional
        Needed when ``max_len`` shortens anything.
    device : `str` or `torch.device`
        Where the tensors go.
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}.")
    index = np.asarray(index, dtype=np.int64)
    if max_len and rng is None:
        rng = np.random.default_rng()
    starts = offsets[index]
    full = offsets[index + 1] - starts
    pos = [_positions(int(n), max_len, crop, rng) for n in full]
    lengths = np.array([len(p) for p in pos], dtype=np.int64)
    b, t = len(index), int(lengths.max())
    rows = np.zeros((b, t), dtype=np.int64)
    mask = np.arange(t)[None, :] < lengths[:, None]
    rows[mask] = np.concatenate([s + p for s, p in zip(starts, pos)])
    x = values[rows]
    x[~mask] = 0.0
    if times is not None:
        tt = times[rows]
        dt = np.zeros((b, t), dtype=np.float32)
        dt[:, 1:] = np.diff(tt, axis=1)
        dt[~mask] = 0.0
        np.maximum(dt, 0.0, out=dt)
    else:
        dt = np.zeros((b, t), dtype=np.float32)
    return Batch(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device),
        lengths=torch.from_numpy(lengths),
        dt=torch.from_numpy(dt).to(device),
        index=index,
    )
