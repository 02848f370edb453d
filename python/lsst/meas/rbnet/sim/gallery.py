# This file is part of meas_rbnet.
"""Plots of simulated examples: a gallery of every class and a full-visit preview."""

__all__ = ["make_gallery", "plot_triplets", "make_visit_preview", "asinh_stretch"]

import numpy as np

from ..constants import ARTIFACT_CLASSES, CHANNEL_ORDER, REAL_CLASSES


def _robust_sigma(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0
    mad = np.median(np.abs(values - np.median(values)))
    return float(1.4826 * mad) if mad > 0 else float(np.std(values) or 1.0)


def asinh_stretch(image: np.ndarray, *, symmetric: bool = False, softening: float = 2.0):
    """Noise-scaled asinh stretch for display.

    Parameters
    ----------
    image : `numpy.ndarray`, (H, W)
    symmetric : `bool`
        Centre the colour scale on zero (difference images: negative is dark).
    softening : `float`
        Linear range of the stretch in units of the noise sigma.

    Returns
    -------
    stretched : `numpy.ndarray`
        Values in about [0, 1]; NaN stays NaN.
    """
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.full(image.shape, np.nan)
    sigma = _robust_sigma(finite)
    median = 0.0 if symmetric else float(np.median(finite))
    scaled = np.arcsinh((image - median) / (softening * sigma))
    h, w = image.shape
    core = scaled[h // 4 : h - h // 4, w // 4 : w - w // 4]
    core = core[np.isfinite(core)]
    top = max(float(np.max(np.abs(core))) if core.size else 1.0, np.arcsinh(5.0 / softening))
    if symmetric:
        return 0.5 + 0.5 * scaled / top
    low = np.arcsinh(-2.0 / softening)
    return (scaled - low) / (top - low)


def plot_triplets(axes_rows, stamps, titles=None, channel_names=CHANNEL_ORDER):
    """Draw triplets on rows of axes.

    Parameters
    ----------
    axes_rows : sequence of sequences of `matplotlib.axes.Axes`
        ``len(stamps)`` groups of ``len(channel_names)`` axes.
    stamps : `numpy.ndarray`, (n, C, H, W)
    titles : sequence of `str`, optional
        Title over the first panel of each triplet.
    """
    import matplotlib

    cmap = matplotlib.colormaps["gray"].copy()
    cmap.set_bad("#7a1f1f")
    for i, axes in enumerate(axes_rows):
        for c, ax in enumerate(axes):
            img = stamps[i, c]
            sym = channel_names[c] == "difference"
            ax.imshow(
                asinh_stretch(img, symmetric=sym),
                cmap=cmap,
                vmin=0,
                vmax=1,
                origin="lower",
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
        if titles is not None:
            axes[0].set_title(titles[i], fontsize=7, loc="left", pad=2)


def make_gallery(
    path, seed: int = 0, n_per_class: int = 4, *, stamp_size: int = 51, dpi: int = 110, survey=None
):
    """Write a PNG with one row per class and ``n_per_class`` triplets per row.

    Each triplet shows difference (symmetric stretch: negative is dark),
    science and template, all with a noise-scaled asinh stretch; NaN
    (NO_DATA) pixels are dark red. Examples are picked to span the S/N range
    of their class.

    Parameters
    ----------
    path : `str` or path-like
        Output PNG.
    seed : `int`
    n_per_class : `int`
    stamp_size : `int`
        Stamp side (pixels); with a ``survey`` it may be even (simulated one
        pixel larger and cropped to ``[:S, :S]``, as the survey's cutouts are).
    dpi : `int`
    survey : `str`, optional
        A survey preset of `lsst.meas.rbnet.sim.surveys` (its units, sky and
        conventions are shown as the survey's cutouts have them).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .stamps import simulate_stamps

    classes = list(REAL_CLASSES) + list(ARTIFACT_CLASSES)
    pool = 4 * n_per_class
    size = stamp_size + 1 - stamp_size % 2 if survey is not None else stamp_size
    extra = {"edge_fraction": 0.0} if survey is None else {"survey": survey}
    result = simulate_stamps(pool * len(classes), size, seed, class_fractions={c: 1.0 for c in classes}, **extra)
    if size != stamp_size:
        result.crop(stamp_size)
    table = result.table
    rows = len(classes)
    cols = n_per_class * 3
    width_in = cols * 0.95 + 1.4
    height_in = rows * 1.05 + 0.9
    fig = plt.figure(figsize=(width_in, height_in))
    grid = fig.add_gridspec(
        rows,
        n_per_class,
        left=1.3 / width_in,
        right=0.995,
        top=1 - 0.75 / height_in,
        bottom=0.01,
        wspace=0.08,
        hspace=0.3,
    )
    for r, name in enumerate(classes):
        idx = np.flatnonzero(table["source_class"] == name)
        # Span the S/N range: quantiles of the class' S/N, preferring detectable ones.
        order = idx[np.argsort(table["snr"][idx])]
        detectable = order[table["snr"][order] >= 5.0]
        choose = detectable if len(detectable) >= n_per_class else order
        picks = choose[np.linspace(0, len(choose) - 1, n_per_class).round().astype(int)]
        for k, i in enumerate(picks):
            sub = grid[r, k].subgridspec(1, 3, wspace=0.03)
            axes = [fig.add_subplot(sub[0, c]) for c in range(3)]
            plot_triplets([axes], result.stamps[i : i + 1], titles=[f"S/N {table['snr'][i]:.1f}"])
            if r == 0:
                for ax, ch in zip(axes, ("diff", "sci", "tmpl")):
                    ax.text(0.5, 1.35, ch, transform=ax.transAxes, ha="center", va="bottom", fontsize=7)
            if k == 0:
                label = "real" if name in REAL_CLASSES else "bogus"
                axes[0].text(
                    -0.12,
                    0.5,
                    f"{name}\n({label})",
                    transform=axes[0].transAxes,
                    ha="right",
                    va="center",
                    fontsize=8,
                )
    fig.suptitle(
        f"lsst.meas.rbnet simulated triplets: difference (negative dark), science, template; "
        f"seed {seed}, {stamp_size}x{stamp_size} px, noise-scaled asinh stretch, NaN dark red",
        fontsize=9,
        y=1 - 0.12 / height_in,
        va="top",
    )
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def make_visit_preview(visit, path, *, dpi: int = 100, max_pixels: int = 1024):
    """Write a PNG of one simulated visit: science, template and difference with the labelled sources marked.

    Parameters
    ----------
    visit : `lsst.meas.rbnet.sim.detector.SimulatedVisit`
    path : `str` or path-like
    max_pixels : `int`
        Images larger than this are shown as a ``max_pixels`` square crop of the lower-left corner.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = [visit.science.image, visit.template.image, visit.difference.image]
    names = ["science", "template", "difference"]
    h, w = images[0].shape
    ch, cw = min(h, max_pixels), min(w, max_pixels)
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.4))
    cmap = matplotlib.colormaps["gray"].copy()
    cmap.set_bad("#7a1f1f")
    src = visit.sources
    inside = (src["x"] < cw) & (src["y"] < ch)
    for ax, img, name in zip(axes, images, names):
        crop = img[:ch, :cw]
        ax.imshow(
            asinh_stretch(crop, symmetric=name == "difference"),
            cmap=cmap,
            vmin=0,
            vmax=1,
            origin="lower",
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    real = inside & (src["label"] == 1)
    ax = axes[2]
    ax.scatter(src["x"][real], src["y"][real], s=80, facecolors="none", edgecolors="#3ad13a", linewidths=0.8)
    ax.scatter(
        src["x"][inside & ~real],
        src["y"][inside & ~real],
        s=80,
        facecolors="none",
        edgecolors="#ff6a3d",
        linewidths=0.8,
    )
    fig.suptitle(
        f"visit {visit.metadata.visit} detector {visit.metadata.detector} "
        f"(FWHM sci {visit.metadata.fwhm_science:.2f}, tmpl {visit.metadata.fwhm_template:.2f} px); "
        "green: real, orange: bogus",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
