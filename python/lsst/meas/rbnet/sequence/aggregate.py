# This file is part of meas_rbnet.
"""The baseline the sequence model must beat: single-visit scores aggregated per object.

Each visit's triplet is scored on its own (`lsst.meas.rbnet.scoring.score_triplets`)
and an object's score is a statistic of its visits' scores: the maximum (an object
is real if any visit looks real), the mean, or the median.

The sequence model can also read the visit scores themselves, one feature per frame
beside the frame's latent vector (`visit_score_features`), and so learn a better
combination than any fixed statistic.
"""

__all__ = ["AGGREGATIONS", "FRAME_FEATURES", "aggregate_scores", "visit_score_features"]

import numpy as np

#: Per-object statistics of the visit scores.
AGGREGATIONS: tuple[str, ...] = ("max", "mean", "median", "min")

#: Per-frame features a sequence package may read beside the latents (its
#: ``extra["frame_features"]``): ``"visit_logit"``, the logit of the frame's
#: single-visit reliability, clipped to [-LOGIT_CLIP, LOGIT_CLIP], and
#: ``"visit_scored"``, 1 where the visit has a finite score, else 0 (the logit is then 0).
FRAME_FEATURES: tuple[str, ...] = ("visit_logit", "visit_scored")

#: Bound of the visit-logit feature (a probability of 1 - 1e-4 at most).
LOGIT_CLIP = 9.2


def visit_score_features(scores: np.ndarray, names: tuple[str, ...] = FRAME_FEATURES) -> np.ndarray:
    """Per-frame features of single-visit reliabilities, for the sequence classifier.

    Parameters
    ----------
    scores : `numpy.ndarray`
        ``(N,)`` single-visit ``P(real)`` of each frame; NaN where the visit was not
        scored.
    names : `tuple` [`str`, ...]
        Features from `FRAME_FEATURES`, in column order.

    Returns
    -------
    features : `numpy.ndarray`
        ``(N, len(names))`` float32.

    Raises
    ------
    ValueError
        For an unknown feature name, scores that are not 1-D, or finite scores
        outside [0, 1].
    """
    bad = [n for n in names if n not in FRAME_FEATURES]
    if bad:
        raise ValueError(f"Unknown frame feature(s) {bad}; expected names from {FRAME_FEATURES}.")
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"Visit scores must be 1-D (one per frame), got shape {p.shape}.")
    finite = np.isfinite(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError("Visit scores must be probabilities in [0, 1] (or NaN where not scored).")
    q = np.clip(np.where(finite, p, 0.5), 1e-12, 1 - 1e-12)
    logit = np.clip(np.log(q) - np.log1p(-q), -LOGIT_CLIP, LOGIT_CLIP)
    cols = {"visit_logit": np.where(finite, logit, 0.0), "visit_scored": finite.astype(np.float64)}
    return np.stack([cols[n] for n in names], axis=1).astype(np.float32)


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
