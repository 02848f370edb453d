# This file is part of meas_rbnet.
"""The baseline the sequence model must beat: single-visit scores aggregated per object.

Each visit's triplet is scored on its own (`lsst.meas.rbnet.scoring.score_triplets`)
and an object's score is a statistic of its visits' scores: the maximum (an object
is real if any visit looks real), the mean, or the median.
"""

__all__ = ["AGGREGATIONS", "aggregate_scores"]

import numpy as np

#: Per-object statistics of the visit scores.
AGGREGATIONS: tuple[str, ...] = ("max", "mean", "median", "min")


def aggregate_scores(
    scores: np.ndarray, offsets: np.ndarray, how: str | tuple[str, ...] = ("max", "mean")
) -> dict[str, np.ndarray]:
    """Per-object statistics of per-visit scores.

    Parameters
    ----------
    scores : `numpy.ndarray`
        ``(sum T_i,)`` visit scores, objects concatenated in order. NaN scores
        (unscorable visits) are ignored.
    offsets : `numpy.ndarray`
        ``(n_objects + 1,)``; object ``i`` has scores ``offsets[i]:offsets[i + 1]``.
    how : `str` or `tuple` [`str`, ...]
        Statistics from `AGGREGATIONS`.

    Returns
    -------
    aggregated : `dict` [`str`, `numpy.ndarray`]
        ``(n_objects,)`` float32 per statistic; NaN for an object with no finite score.
    """
    names = (how,) if isinstance(how, str) else tuple(how)
    bad = [h for h in names if h not in AGGREGATIONS]
    if bad:
        raise ValueError(f"Unknown aggregation(s) {bad}; expected {AGGREGATIONS}.")
    scores = np.asarray(scores, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    if scores.ndim != 1 or offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(scores):
        raise ValueError(f"aggregate_scores: offsets must run from 0 to len(scores) = {len(scores)}.")
    if np.any(np.diff(offsets) < 0):
        raise ValueError("aggregate_scores: offsets must be non-decreasing.")
    n = len(offsets) - 1
    obj = np.repeat(np.arange(n), np.diff(offsets))
    finite = np.isfinite(scores)
    count = np.bincount(obj[finite], minlength=n)
    out: dict[str, np.ndarray] = {}
    for h in names:
        if h == "mean":
            s = np.bincount(obj[finite], weights=scores[finite], minlength=n)
            res = np.where(count > 0, s / np.maximum(count, 1), np.nan)
        elif h in ("max", "min"):
            fill = -np.inf if h == "max" else np.inf
            vals = np.where(finite, scores, fill)
            res = np.full(n, fill)
            ufunc = np.maximum if h == "max" else np.minimum
            ufunc.at(res, obj, vals)
            res = np.where(count > 0, res, np.nan)
        else:
            res = np.full(n, np.nan)
            for i in np.flatnonzero(count):
                v = scores[offsets[i] : offsets[i + 1]]
                res[i] = np.median(v[np.isfinite(v)])
        out[h] = res.astype(np.float32)
    return out
