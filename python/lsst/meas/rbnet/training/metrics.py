# This file is part of meas_rbnet.
"""Classification and calibration metrics as plain numpy functions on arrays.

Conventions
-----------
- ``scores`` are real-valued, higher means "more likely real"; calibrated
  probabilities in [0, 1] where a function says so (ECE, reliability curve).
- ``labels`` are ``1`` (real) / ``0`` (bogus), see `lsst.meas.rbnet.constants`.
- A source is *selected* (predicted real) when ``score >= threshold``.
- Purity is ``TP / (TP + FP)`` over the selected sources (1 by convention when
  nothing is selected: an empty selection holds no contaminant); completeness is
  ``TP / (TP + FN)`` over the real sources.

Nothing here imports torch, so these functions work on any scores (the CNN,
the logistic baseline, another package's output).
"""

__all__ = [
    "roc_auc",
    "roc_curve",
    "accuracy",
    "f1",
    "purity_completeness",
    "purity_completeness_curve",
    "threshold_for_purity",
    "completeness_at_purity",
    "expected_calibration_error",
    "reliability_curve",
    "log_loss",
    "brier_score",
    "confusion_matrix",
    "class_fractions",
]

import numpy as np

from ..constants import ALL_CLASSES, REAL_CLASSES


def _check(scores, labels, mask=None, name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten ``(scores, labels)``; apply an optional boolean mask."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"{name} and labels must be 1-D arrays, got shapes {s.shape} and {y.shape}.")
    if s.shape != y.shape:
        raise ValueError(f"{name} ({s.shape[0]}) and labels ({y.shape[0]}) differ in length.")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 (bogus) or 1 (real).")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contain NaN or infinite values; drop unscored sources first.")
    y = y.astype(np.int64)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != s.shape:
            raise ValueError(f"mask ({m.shape}) and {name} ({s.shape}) differ in shape.")
        s, y = s[m], y[m]
    return s, y


def _require_both_classes(y: np.ndarray, what: str) -> None:
    if y.size == 0 or y.min() == y.max():
        counts = np.bincount(y, minlength=2)
        raise ValueError(f"{what} needs both real (1) and bogus (0) examples; got {counts[1]} real, {counts[0]} bogus.")


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (probability a random real outscores a random bogus).

    Ties count one half (the Mann-Whitney U statistic with mid-ranks).

    Parameters
    ----------
    scores : array-like, shape ``(N,)``
    labels : array-like, shape ``(N,)``, 0/1

    Returns
    -------
    auc : `float` in [0, 1].
    """
    s, y = _check(scores, labels)
    _require_both_classes(y, "roc_auc")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # Mid-ranks: every member of a group of ties gets the mean of the group's ranks.
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    ends = np.r_[starts[1:], s.size]
    mid = (starts + ends + 1) / 2.0  # 1-based mean rank of each tie group
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(mid, ends - starts)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _sorted_counts(s: np.ndarray, y: np.ndarray):
    """Distinct thresholds (descending) and cumulative TP/FP counts at ``score >= threshold``."""
    order = np.argsort(-s, kind="mergesort")
    s_desc = s[order]
    y_desc = y[order]
    # Last index of each tie group: a threshold includes the whole group.
    last = np.r_[np.flatnonzero(np.diff(s_desc)), s.size - 1]
    tp = np.cumsum(y_desc)[last]
    fp = (last + 1) - tp
    return s_desc[last], tp, fp


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score.

    Returns
    -------
    fpr, tpr : `numpy.ndarray`, shape ``(K + 1,)``
        False and true positive rates, starting at (0, 0) (threshold +inf).
    thresholds : `numpy.ndarray`, shape ``(K + 1,)``
        Decreasing thresholds; the first is ``+inf``.
    """
    s, y = _check(scores, labels)
    _require_both_classes(y, "roc_curve")
    thr, tp, fp = _sorted_counts(s, y)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    return (
        np.r_[0.0, fp / n_neg],
        np.r_[0.0, tp / n_pos],
        np.r_[np.inf, thr],
    )


def accuracy(scores, labels, threshold: float = 0.5) -> float:
    """Fraction of sources whose ``score >= threshold`` agrees with the label."""
    s, y = _check(scores, labels)
    if y.size == 0:
        raise ValueError("accuracy of an empty set is undefined.")
    return float(np.mean((s >= threshold) == (y == 1)))


def f1(scores, labels, threshold: float = 0.5) -> float:
    """F1 score (harmonic mean of purity and completeness) of the real class."""
    s, y = _check(scores, labels)
    pred = s >= threshold
    tp = np.sum(pred & (y == 1))
    fp = np.sum(pred & (y == 0))
    fn = np.sum(~pred & (y == 1))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def purity_completeness(scores, labels, threshold: float, mask=None) -> tuple[float, float]:
    """Purity and completeness of the selection ``score >= threshold``.

    Parameters
    ----------
    scores, labels : array-like, shape ``(N,)``
    threshold : `float`
    mask : array-like of `bool`, shape ``(N,)``, optional
        Evaluate only these sources (e.g. ``snr >= 6``).

    Returns
    -------
    purity, completeness : `float`
        Purity is 1 when nothing is selected; completeness is NaN when there is
        no real source.
    """
    s, y = _check(scores, labels, mask)
    pred = s >= threshold
    tp = np.sum(pred & (y == 1))
    n_sel = np.sum(pred)
    n_pos = np.sum(y == 1)
    purity = float(tp / n_sel) if n_sel else 1.0
    completeness = float(tp / n_pos) if n_pos else float("nan")
    return purity, completeness


def purity_completeness_curve(scores, labels, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Purity and completeness at every distinct threshold.

    Returns
    -------
    thresholds : `numpy.ndarray`, shape ``(K,)``
        Distinct scores in decreasing order.
    purity, completeness : `numpy.ndarray`, shape ``(K,)``
    """
    s, y = _check(scores, labels, mask)
    if not np.any(y == 1):
        raise ValueError("purity_completeness_curve needs at least one real (1) source.")
    thr, tp, fp = _sorted_counts(s, y)
    return thr, tp / (tp + fp), tp / y.sum()


def threshold_for_purity(scores, labels, purity: float, mask=None) -> float:
    """Threshold giving the largest completeness with ``purity >= target``.

    Purity is not monotonic in the threshold. Among the selections that reach
    the target purity, take those with the largest completeness, and of them
    the one with the highest threshold (it selects the fewest bogus sources).
    The threshold returned lies halfway between the lowest selected score and
    the next lower score, so the same selection is made with a margin on
    either side.

    Parameters
    ----------
    scores, labels : array-like, shape ``(N,)``
    purity : `float` in (0, 1]
        Target purity.
    mask : array-like of `bool`, optional
        Use only these sources (e.g. ``snr >= 6``).

    Returns
    -------
    threshold : `float`
        ``+inf`` if no threshold reaches the target (then nothing is selected).
    """
    if not 0 < purity <= 1:
        raise ValueError(f"purity must be in (0, 1], got {purity}.")
    thr, pur, comp = purity_completeness_curve(scores, labels, mask)
    # A tiny tolerance so that exactly-representable purities (e.g. 99/100) are reached.
    ok = pur >= purity - 1e-12
    if not np.any(ok):
        return float("inf")
    best = comp[ok].max()
    # Thresholds decrease along the curve: the first index reaching `best` is the highest threshold.
    i = int(np.flatnonzero(ok & (comp >= best))[0])
    if i + 1 < thr.size:
        return float(0.5 * (thr[i] + thr[i + 1]))
    return float(thr[i])


def completeness_at_purity(scores, labels, purity: float, mask=None) -> float:
    """Largest completeness reachable with ``purity >= target`` (0 if unreachable).

    Parameters
    ----------
    scores, labels : array-like, shape ``(N,)``
    purity : `float` in (0, 1]
    mask : array-like of `bool`, optional
        E.g. ``snr >= 6`` for "completeness at SNR >= 6 for purity 99%".
    """
    if not 0 < purity <= 1:
        raise ValueError(f"purity must be in (0, 1], got {purity}.")
    _, pur, comp = purity_completeness_curve(scores, labels, mask)
    ok = pur >= purity - 1e-12
    return float(comp[ok].max()) if np.any(ok) else 0.0


def _check_probabilities(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = _check(probs, labels, name="probabilities")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1].")
    return p, y


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        edges = np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
        return np.unique(edges)
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}.")


def reliability_curve(
    probs, labels, n_bins: int = 15, strategy: str = "uniform"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean predicted probability and observed real fraction per probability bin.

    Parameters
    ----------
    probs : array-like, shape ``(N,)``
        Calibrated probabilities of being real.
    labels : array-like, shape ``(N,)``
    n_bins : `int`
    strategy : {"uniform", "quantile"}
        Equal-width bins on [0, 1] or bins holding equal numbers of sources.

    Returns
    -------
    mean_predicted, fraction_real : `numpy.ndarray`, shape ``(B,)``
        NaN for empty bins.
    counts : `numpy.ndarray` of `int`, shape ``(B,)``
    """
    p, y = _check_probabilities(probs, labels)
    edges = _bin_edges(p, n_bins, strategy)
    # Bins are [e_i, e_{i+1}) except the last, which includes 1.
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, edges.size - 2)
    nb = edges.size - 1
    counts = np.bincount(idx, minlength=nb)
    sum_p = np.bincount(idx, weights=p, minlength=nb)
    sum_y = np.bincount(idx, weights=y, minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sum_p / counts, sum_y / counts, counts


def expected_calibration_error(probs, labels, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Expected calibration error: ``sum_b (n_b / N) |mean(p)_b - mean(y)_b|``.

    Parameters
    ----------
    probs : array-like, shape ``(N,)``
        Probabilities of being real, in [0, 1].
    labels : array-like, shape ``(N,)``
    n_bins : `int`
        Number of bins (15 equal-width bins by default, the common choice).
    strategy : {"uniform", "quantile"}
    """
    p, y = _check_probabilities(probs, labels)
    if p.size == 0:
        raise ValueError("expected_calibration_error of an empty set is undefined.")
    mean_p, frac, counts = reliability_curve(p, y, n_bins, strategy)
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(mean_p[used] - frac[used])) / p.size)


def log_loss(probs, labels, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of the labels (natural log)."""
    p, y = _check_probabilities(probs, labels)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def brier_score(probs, labels) -> float:
    """Mean squared difference between probability and label."""
    p, y = _check_probabilities(probs, labels)
    return float(np.mean((p - y) ** 2))


def _ordered_class_names(names) -> list[str]:
    """Known classes in their canonical order, unknown names after, sorted."""
    present = set(names)
    canonical = list(REAL_CLASSES) + [c for c in ALL_CLASSES if c not in REAL_CLASSES]
    known = [c for c in canonical if c in present]
    return known + sorted(present - set(known))


def confusion_matrix(
    scores, labels, threshold: float = 0.5, classes=None
) -> tuple[list[str], np.ndarray]:
    """Counts of predicted bogus / predicted real per true class.

    Parameters
    ----------
    scores, labels : array-like, shape ``(N,)``
    threshold : `float`
        Sources with ``score >= threshold`` are predicted real.
    classes : array-like of `str`, shape ``(N,)``, optional
        Fine class of each source (e.g. ``"cosmic_ray"``, ``"real_new"``). Without
        it, the rows are ``["bogus", "real"]``.

    Returns
    -------
    names : `list` [`str`]
        Row names: real classes first, then artifact classes.
    counts : `numpy.ndarray` of `int`, shape ``(len(names), 2)``
        Column 0 = predicted bogus, column 1 = predicted real.
    """
    s, y = _check(scores, labels)
    pred = (s >= threshold).astype(np.int64)
    if classes is None:
        names = ["bogus", "real"]
        rows = y
    else:
        c = np.asarray(classes).astype(str)
        if c.shape != s.shape:
            raise ValueError(f"classes ({c.shape}) and scores ({s.shape}) differ in shape.")
        names = _ordered_class_names(np.unique(c))
        lookup = {n: i for i, n in enumerate(names)}
        rows = np.array([lookup[v] for v in c], dtype=np.int64)
    counts = np.zeros((len(names), 2), dtype=np.int64)
    np.add.at(counts, (rows, pred), 1)
    return names, counts


def class_fractions(scores, labels, classes, threshold: float = 0.5, mask=None) -> dict[str, dict]:
    """Per-class fraction of sources selected as real at a threshold.

    For a real class this is its completeness; for an artifact class it is the
    fraction of that artifact that leaks into the real selection.

    Parameters
    ----------
    scores, labels : array-like, shape ``(N,)``
    classes : array-like of `str`, shape ``(N,)``
    threshold : `float`
    mask : array-like of `bool`, optional
        Restrict to these sources (e.g. ``snr >= 6``).

    Returns
    -------
    fractions : `dict` [`str`, `dict`]
        ``{class: {"label": 0|1, "n": int, "n_above": int, "fraction_above": float,
        "mean_score": float}}``; ``"completeness"`` is added for real classes and
        ``"leak"`` for artifact classes (both equal ``fraction_above``).
    """
    s, y = _check(scores, labels)
    c = np.asarray(classes).astype(str)
    if c.shape != s.shape:
        raise ValueError(f"classes ({c.shape}) and scores ({s.shape}) differ in shape.")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        s, y, c = s[m], y[m], c[m]
    out: dict[str, dict] = {}
    for name in _ordered_class_names(np.unique(c)):
        sel = c == name
        lab = int(np.round(y[sel].mean()))
        n_above = int(np.sum(s[sel] >= threshold))
        frac = n_above / int(sel.sum())
        entry = {
            "label": lab,
            "n": int(sel.sum()),
            "n_above": n_above,
            "fraction_above": float(frac),
            "mean_score": float(s[sel].mean()),
        }
        entry["completeness" if lab == 1 else "leak"] = float(frac)
        out[name] = entry
    return out

