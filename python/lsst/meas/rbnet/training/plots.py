# This file is part of meas_rbnet.
"""Evaluation plots as PNG files (matplotlib, Agg backend: no display needed).

Each function takes arrays, writes one PNG and returns its path.
"""

__all__ = [
    "RocLine",
    "draw_roc",
    "plot_roc",
    "plot_reliability",
    "plot_score_histograms",
    "plot_history",
    "plot_gallery",
    "make_evaluation_plots",
    "BAD_COLOR",
    "ModelScores",
]

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from . import metrics as M


#: What `plot_roc` and `plot_reliability` compare: model name -> ``(scores, labels)``, ``(N,)`` each
#: (probabilities for `plot_reliability`).
type ModelScores = Mapping[str, tuple[np.ndarray, np.ndarray]]


#: Colour of missing pixels (NaN) and of panels without data in galleries (the simulator
#: gallery's dark red).
BAD_COLOR = "#7a1f1f"


def _figure(figsize=(6.0, 4.5), layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot) keeps no global state, needs no display and is safe in threads.
    # Grids of many panels use fixed margins: constrained layout costs seconds there.
    return Figure(figsize=figsize, layout=layout)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through a temporary file: an interrupted run leaves the old plot, not half a PNG.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path


@dataclasses.dataclass(frozen=True)
class RocLine:
    """One curve of a ROC plot (see `draw_roc`).

    Attributes
    ----------
    fpr, tpr : `numpy.ndarray`
        False- and true-positive rates, the same shape.
    label : `str`, optional
        Legend entry.
    band : `tuple` [`numpy.ndarray`, `numpy.ndarray`], optional
        Low and high true-positive rate of a shaded band (e.g. +/- 1 std over folds).
    lw : `float`, optional
        Line width (matplotlib's default when None).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    label: str | None = None
    band: tuple[np.ndarray, np.ndarray] | None = None
    lw: float | None = None


def draw_roc(
    ax,
    lines: Sequence[RocLine],
    *,
    title: str,
    xlabel: str = "false positive rate (bogus scored real)",
    ylabel: str = "true positive rate (completeness)",
    log_fpr: bool = False,
    limits: bool = True,
    chance: Mapping | None = None,
    grid: bool = True,
    legend: Mapping | None = None,
) -> None:
    """Draw ROC curves on a matplotlib ``Axes``: the one ROC plotter of the package.

    `plot_roc` (triplet evaluation), `lsst.meas.rbnet.sequence.cv.plot_roc` (sequence
    cross-validation) and `lsst.meas.rbnet.tasks.train.training_figures` all draw through it.

    Parameters
    ----------
    ax : `matplotlib.axes.Axes`
        Where to draw.
    lines : sequence of `RocLine`
        The curves, in legend order.
    title, xlabel, ylabel : `str`
        Axis texts.
    log_fpr : `bool`
        Logarithmic false-positive axis from 1e-4 (rates below 1e-5 are drawn at 1e-5
        so that the start of the curve stays on the plot); linear from 0 to 1 otherwise.
    limits : `bool`
        Set the axis limits (otherwise matplotlib's autoscaling).
    chance : `dict`, optional
        Line style of the chance diagonal; no diagonal when None.
    grid : `bool`
        Draw a light grid.
    legend : `dict`, optional
        Keyword arguments of the legend (``loc="lower right"`` by default); a legend is
        drawn only when some line has a label.
    """
    for line in lines:
        fpr = np.maximum(line.fpr, 1e-5) if log_fpr else line.fpr
        kw = {} if line.lw is None else {"lw": line.lw}
        (drawn,) = ax.plot(fpr, line.tpr, label=line.label, **kw)
        if line.band is not None:
            ax.fill_between(fpr, line.band[0], line.band[1], color=drawn.get_color(), alpha=0.15)
    if chance is not None:
        ax.plot([0, 1], [0, 1], **chance)
    if log_fpr:
        ax.set_xscale("log")
    if limits:
        ax.set_xlim(1e-4 if log_fpr else 0, 1)
        ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if grid:
        ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**(legend if legend is not None else {"loc": "lower right"}))


def plot_roc(curves: ModelScores, path: str | os.PathLike, *, mask=None, title: str = "ROC") -> Path:
    """ROC curves of several models on one plot (log false-positive rate).

    Parameters
    ----------
    curves : `ModelScores`
        Model name -> ``(scores, labels)``.
    path : path-like
        PNG to write.
    mask : array-like of `bool`, optional
        Use only these sources (the same for every model).
    """
    fig = _figure()
    lines = []
    for name, (scores, labels) in curves.items():
        s, y = np.asarray(scores), np.asarray(labels)
        if mask is not None:
            s, y = s[mask], y[mask]
        fpr, tpr, _ = M.roc_curve(s, y)
        lines.append(RocLine(fpr, tpr, f"{name} (AUC {M.roc_auc(s, y):.4f})"))
    draw_roc(fig.add_subplot(), lines, title=title, log_fpr=True)
    return _save(fig, path)


def plot_reliability(
    models: ModelScores, path: str | os.PathLike, *, n_bins: int = 15, title: str = "Reliability diagram"
) -> Path:
    """Observed real fraction against predicted probability (calibration), with counts.

    Parameters
    ----------
    models : `ModelScores`
        Model name -> ``(probabilities, labels)``.
    """
    fig = _figure((6.0, 6.0))
    ax, axh = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfect")
    for name, (p, y) in models.items():
        mean_p, frac, counts = M.reliability_curve(p, y, n_bins)
        ece = M.expected_calibration_error(p, y, n_bins)
        ok = counts > 0
        ax.plot(mean_p[ok], frac[ok], marker="o", ms=4, label=f"{name} (ECE {ece:.4f})")
        axh.hist(np.asarray(p), bins=np.linspace(0, 1, n_bins + 1), histtype="step", label=name)
    ax.set_ylabel("fraction real")
    # The x axis is shared with the histogram below; the label is there too for readers of this panel.
    ax.set_xlabel("predicted probability of real (mean in bin)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    axh.set_yscale("log")
    axh.set_xlabel("predicted probability of real")
    axh.set_ylabel("sources")
    return _save(fig, path)


def plot_score_histograms(
    probabilities,
    classes,
    path: str | os.PathLike,
    *,
    threshold: float = 0.5,
    title: str = "Scores per class",
) -> Path:
    """Histogram of the scores of each class (one row of panels per class).

    Parameters
    ----------
    probabilities : array-like, shape ``(N,)``
    classes : array-like of `str`, shape ``(N,)``
    threshold : `float`
        Drawn as a vertical line.
    """
    p = np.asarray(probabilities)
    c = np.asarray(classes).astype(str)
    names = M._ordered_class_names(np.unique(c))
    ncol = 3
    nrow = int(np.ceil(len(names) / ncol))
    fig = _figure((3.2 * ncol, 1.9 * nrow + 0.4), layout=None)
    height = 1.9 * nrow + 0.4
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.5 / height, top=1 - 0.6 / height, hspace=0.45, wspace=0.2)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True)).ravel()
    bins = np.linspace(0, 1, 41)
    for ax, name in zip(axes, names):
        s = p[c == name]
        ax.hist(s, bins=bins, color="tab:green" if name.startswith("real") else "tab:red")
        ax.axvline(threshold, color="k", lw=0.8)
        above = np.mean(s >= threshold) if s.size else float("nan")
        ax.set_title(f"{name} (n={s.size}, {above:.1%} >= {threshold:.2g})", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.supxlabel("reliability (calibrated probability of real)", fontsize=9)
    fig.supylabel("sources", fontsize=9, x=0.005)
    return _save(fig, path)


def plot_history(history: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Training and validation loss, and validation AUC, per epoch."""
    fig = _figure((7.0, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["train_loss"] for h in history], marker="o", label="train")
    ax1.plot(ep, [h["val_loss"] for h in history], marker="o", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    # Floor at 1e-6 so a perfect validation AUC stays on the log axis.
    ax2.plot(ep, [max(1 - h["val_auc"], 1e-6) for h in history], marker="o")
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("1 - validation AUC")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_gallery(
    stamps: np.ndarray,
    titles: Sequence[str],
    path: str | os.PathLike,
    *,
    channel_names: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Stamps in a grid: one row per source, one column per channel.

    Parameters
    ----------
    stamps : `numpy.ndarray`, shape ``(N, C, S, S)``
        Prepared (or raw) stamps; each panel is scaled on its own.
    titles : sequence of `str`, length ``N``
        Row labels (e.g. class and score).
    channel_names : sequence of `str`, optional

    Notes
    -----
    Missing data are drawn as such, never as black: NaN pixels (raw stamps) are red
    (`BAD_COLOR`, as in the simulator gallery), and a panel without information (no
    finite pixel, or every pixel the same value, as a fully masked channel is after
    preparation, where it holds only the fill value) is red with the words "no data".
    """
    x = np.asarray(stamps, dtype=np.float32)
    n, c = x.shape[:2]
    height = 1.5 * max(n, 1) + 0.5
    fig = _figure((1.5 * c + 1.8, height), layout=None)
    fig.subplots_adjust(left=1.7 / (1.5 * c + 1.8), right=0.98, bottom=0.3 / height, top=1 - 0.7 / height,
                        hspace=0.08, wspace=0.05)
    if n == 0:
        fig.suptitle(title + " (none)")
        return _save(fig, path)
    axes = np.asarray(fig.subplots(n, c, squeeze=False))
    import matplotlib

    cmap = matplotlib.colormaps["gray"].with_extremes(bad=BAD_COLOR)
    for i in range(n):
        for j in range(c):
            ax = axes[i, j]
            img = x[i, j]
            finite = np.isfinite(img)
            empty = not finite.any() or float(np.nanmax(img)) == float(np.nanmin(img))
            if empty:
                ax.imshow(np.full(img.shape, np.nan), origin="lower", cmap=cmap)
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=8,
                        color="white")  # fmt: skip
            else:
                lo, hi = np.percentile(img[finite], (1, 99.5))
                ax.imshow(img, origin="lower", cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and channel_names is not None:
                ax.set_title(channel_names[j], fontsize=8)
        axes[i, 0].set_ylabel(titles[i], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, y=1 - 0.12 / height)
    S = x.shape[-1]
    fig.supxlabel(f"{S}x{S}-pixel stamps (x right, y up); red: no data", fontsize=7, y=0.02 / height)
    return _save(fig, path)


def make_evaluation_plots(
    outdir: str | os.PathLike,
    probabilities: Mapping[str, np.ndarray],
    labels,
    *,
    classes=None,
    snr=None,
    snr_min: float = 6.0,
    threshold: float = 0.5,
    history: Sequence[Mapping] | None = None,
    prefix: str = "",
) -> list[Path]:
    """The standard set of plots for one evaluation.

    Parameters
    ----------
    outdir : path-like
        Directory for the PNGs (created).
    probabilities : `dict` [`str`, `numpy.ndarray`]
        Model name -> calibrated probabilities ``(N,)``; the first model is the
        main one (score histograms are made for it).
    labels, classes, snr : array-like, shape ``(N,)``
    snr_min : `float`
        An extra ROC plot is made for ``snr >= snr_min`` when ``snr`` is given.
    threshold : `float`
        Default threshold drawn on the histograms.
    history : sequence of `dict`, optional
        Training history (adds a loss-curve plot).
    prefix : `str`
        Prefix of the file names.

    Returns
    -------
    paths : `list` [`pathlib.Path`]
    """
    outdir = Path(outdir)
    y = np.asarray(labels)
    paths = [plot_roc({k: (v, y) for k, v in probabilities.items()}, outdir / f"{prefix}roc.png")]
    if snr is not None:
        m = np.asarray(snr) >= snr_min
        ym = y[m]
        if ym.size and ym.min() != ym.max():
            paths.append(
                plot_roc(
                    {k: (v, y) for k, v in probabilities.items()},
                    outdir / f"{prefix}roc_snr{snr_min:g}.png",
                    mask=m,
                    title=f"ROC, SNR >= {snr_min:g}",
                )
            )
    models = {k: (v, y) for k, v in probabilities.items()}
    paths.append(plot_reliability(models, outdir / f"{prefix}reliability.png"))
    main = next(iter(probabilities))
    if classes is not None:
        paths.append(
            plot_score_histograms(
                probabilities[main], classes, outdir / f"{prefix}scores_per_class.png", threshold=threshold,
                title=f"{main} scores per class",
            )
        )
    if history:
        paths.append(plot_history(history, outdir / f"{prefix}history.png"))
    return paths
