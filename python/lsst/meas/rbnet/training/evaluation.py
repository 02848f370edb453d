# This file is part of meas_rbnet.
"""Evaluation glue of the triplet training loop: logits of prepared stamps, recommended
thresholds and validation metrics.

`training.loop` re-exports these names (the old import path).
"""

__all__ = [
    "model_logits",
    "choose_thresholds",
]

from typing import Any

import numpy as np
import torch

from ..nn.triplet import dihedral_transforms
from . import metrics as M


@torch.no_grad()
def model_logits(
    model: torch.nn.Module,
    x: np.ndarray,
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    symmetric: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Logits of prepared stamps (model in eval mode, no gradients).

    Parameters
    ----------
    model : `torch.nn.Module`
        Returns ``(N,)`` logits.
    x : `numpy.ndarray`, shape ``(N, C, S, S)``
        Prepared stamps (float32 or float16).
    batch_size : `int`
    device : `torch.device` or `str`
    symmetric : `bool`
        Average the logits over the 8 rotations/flips of each stamp (as the
        scorer's symmetry averaging does).
    channels_last : `bool`

    Returns
    -------
    logits : `numpy.ndarray`, shape ``(N,)``, float64
    """
    from .data import _to_device

    was_training = model.training
    model.eval()
    device = torch.device(device)
    out = np.empty(len(x), dtype=np.float64)
    # On a GPU the logits stay there until the end (one synchronisation, not one per batch)
    # and the batch crosses once, before its rotations/flips are made.
    on_host = device.type == "cpu"
    parts = []
    try:
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            xb = _to_device(xb, device).float() if not on_host else xb.float()
            views = dihedral_transforms(xb) if symmetric else [xb]
            acc = None
            for v in views:
                if channels_last:
                    v = v.contiguous(memory_format=torch.channels_last)
                z = model(v).float()
                acc = z if acc is None else acc + z
            if on_host:
                out[start : start + len(xb)] = (acc / len(views)).numpy()
            else:
                parts.append(acc / len(views))
        if parts:
            out[:] = torch.cat(parts).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def choose_thresholds(
    probabilities,
    labels,
    *,
    snr=None,
    snr_min: float | None = 6.0,
    purity_targets=(0.95, 0.99),
    default: float = 0.5,
) -> list[dict[str, Any]]:
    """Recommended thresholds on calibrated probabilities, with their purity and completeness.

    Parameters
    ----------
    probabilities, labels : array-like, shape ``(N,)``
        Calibrated validation probabilities and labels.
    snr : array-like, shape ``(N,)``, optional
    snr_min : `float` or `None`
        Purity thresholds are chosen on sources with ``snr >= snr_min`` (when
        ``snr`` is given), and their purity/completeness are measured there.
    purity_targets : sequence of `float`
        Each gives a threshold named ``"purity<100 p>"`` (e.g. ``"purity99"``).
    default : `float`
        The ``"default"`` threshold: 0.5 on a calibrated probability is the
        decision "more likely real than not"; its purity and completeness are
        measured on all sources.

    Returns
    -------
    thresholds : `list` [`dict`]
        ``{"name", "threshold", "purity", "completeness"}`` entries. A purity
        that no threshold reaches gives threshold 1.0 with the measured values there.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    pur, comp = M.purity_completeness(p, y, default)
    out = [{"name": "default", "threshold": float(default), "purity": pur, "completeness": comp}]
    mask = None
    if snr is not None and snr_min is not None:
        mask = np.asarray(snr) >= snr_min
        if not np.any(mask & (y == 1)):
            mask = None
    for target in purity_targets:
        thr = M.threshold_for_purity(p, y, target, mask=mask)
        thr = min(thr, 1.0)
        pur, comp = M.purity_completeness(p, y, thr, mask=mask)
        name = f"purity{round(100 * target):d}"
        out.append({"name": name, "threshold": float(thr), "purity": pur, "completeness": comp})
    return out


def _evaluate_metrics(
    probs: np.ndarray, labels: np.ndarray, classes, snr, thresholds, snr_min
) -> dict[str, Any]:
    """Validation metrics as a JSON-serialisable dict (see `report.evaluate_scores`)."""
    from .report import evaluate_scores

    return evaluate_scores(
        probs,
        labels,
        classes=classes,
        snr=snr,
        thresholds={t["name"]: t["threshold"] for t in thresholds},
        snr_min=snr_min,
    )
