# This file is part of meas_rbnet.
"""Evaluation and calibration glue of sequence-classifier training: the stratified split,
Platt scaling, the standardisation of latents, logits of a trained classifier and the
binary cross-entropy of logits.

`sequence.train` re-exports these names (the old import path).
"""

__all__ = ["predict_logits", "standardization", "stratified_split", "platt_scaling"]

import numpy as np
import torch

from ..training.metrics import roc_auc
from .data import collate, length_batches
from .latents import LatentSet


def stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(keep, held_out)`` of ``labels`` with ``fraction`` of each class held out."""
    labels = np.asarray(labels)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(fraction * len(idx)))
        n = min(max(n, 1), len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def platt_scaling(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` minimising the BCE of ``sigmoid(a * logits + b)``; ``a`` in [0.01, 100].

    Falls back to ``(1, 0)`` if the logits do not rank the classes better than chance.
    """
    from scipy.optimize import minimize

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if roc_auc(z, y.astype(np.int64)) <= 0.5:
        return 1.0, 0.0

    def nll(params):
        a, b = params
        t = a * z + b
        p = 1.0 / (1.0 + np.exp(-np.clip(t, -60, 60)))
        loss = np.mean(np.logaddexp(0.0, t) - y * t)
        grad = np.array([np.mean((p - y) * z), np.mean(p - y)])
        return loss, grad

    res = minimize(
        nll, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-2, 1e2), (-50.0, 50.0)]
    )
    a, b = (float(v) for v in res.x)
    return a, b


def standardization(latents: LatentSet, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale ``(D,)`` over all frames of the objects ``index``."""
    sub = latents.subset(index).values.astype(np.float64)
    mean = sub.mean(axis=0)
    scale = sub.std(axis=0)
    # A constant feature carries no information; a unit scale keeps it finite.
    scale = np.where(scale > 1e-8, scale, 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    latents: LatentSet,
    index: np.ndarray | None = None,
    batch_frames: int = 65536,
    max_batch: int = 256,
    device: str = "cpu",
) -> np.ndarray:
    """Logits ``(len(index),)`` float32 of full sequences, in the order of ``index``."""
    index = np.arange(latents.n_objects) if index is None else np.asarray(index, dtype=np.int64)
    out = np.empty(len(index), dtype=np.float32)
    if len(index) == 0:
        return out
    was_training = model.training
    model.eval()
    lengths = latents.lengths[index]
    for b in length_batches(lengths, batch_frames, max_batch):
        batch = collate(latents.values, latents.offsets, index[b], latents.times, device=device)
        out[b] = model(batch.x, batch.lengths, batch.dt).float().cpu().numpy()
    model.train(was_training)
    return out


def _bce(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))
