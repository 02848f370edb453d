# This file is part of meas_rbnet.
"""Rendering primitives: PSF-convolved light on batches of canvases.

A *canvas batch* is a float array ``(n, H, W)``: one canvas per simulated
example (a small scene around one labelled object) or a single detector-sized
canvas. Every primitive takes per-component arrays with a ``canvas`` index, so
the same code renders 100,000 training scenes or one 4k x 4k detector.

Two renderers share the PSF model of `lsst.meas.rbnet.sim.psf`:

- `render_points`: unresolved sources, exactly pixel-integrated, on local
  patches (separable outer products of 1-D profiles).
- `render_fourier`: resolved or trailed sources (Sersic galaxies, trailed
  point sources) evaluated analytically in Fourier space on a local grid,
  multiplied by the PSF and pixel response, and transformed back. Convolution
  is therefore exact and costs one small FFT per object.
"""

__all__ = [
    "add_patches",
    "render_points",
    "render_fourier",
    "sersic_fourier",
    "SHAPE_TRAIL",
    "fourier_grid_size",
]

import functools

import numpy as np
import scipy.fft
from scipy.special import gammaincinv, j0

from .psf import DoubleGaussianPsf

#: ``shape`` code of a trailed point source (a line segment convolved with the PSF).
SHAPE_TRAIL: int = 0

#: Sersic profiles are truncated at this many half-light radii (smoothly).
_SERSIC_TRUNCATION = 8.0

#: PSFs with a core sigma below this (pixels) are undersampled enough to need aliases.
_ALIAS_SIGMA = 1.1


def add_patches(canvas: np.ndarray, index: np.ndarray, y0: np.ndarray, x0: np.ndarray, patches) -> None:
    """Add square patches to canvases in place, clipping at canvas borders.

    Parameters
    ----------
    canvas : `numpy.ndarray`, (n, H, W)
        Canvases, modified in place.
    index : `numpy.ndarray` of `int`, (m,)
        Canvas of each patch.
    y0, x0 : `numpy.ndarray` of `int`, (m,)
        Canvas row and column of each patch's first pixel.
    patches : `numpy.ndarray`, (m, Ly, Lx)
    """
    _, height, width = canvas.shape
    ly, lx = patches.shape[1:]
    ya = np.maximum(y0, 0)
    yb = np.minimum(y0 + ly, height)
    xa = np.maximum(x0, 0)
    xb = np.minimum(x0 + lx, width)
    keep = np.flatnonzero((ya < yb) & (xa < xb))
    for i, b, a0, a1, c0, c1, py, px in zip(
        keep, index[keep], ya[keep], yb[keep], xa[keep], xb[keep], y0[keep], x0[keep]
    ):
        canvas[b, a0:a1, c0:c1] += patches[i, a0 - py : a1 - py, c0 - px : c1 - px]


def _group_sizes(sizes: np.ndarray, allowed) -> np.ndarray:
    # Round each requested size up to the next allowed value so that objects can
    # be rendered in a few batches of equal patch size.
    allowed = np.asarray(allowed)
    pos = np.searchsorted(allowed, sizes)
    return allowed[np.minimum(pos, len(allowed) - 1)]


def render_points(
    canvas: np.ndarray,
    index: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    psf: DoubleGaussianPsf,
    *,
    chunk: int = 4096,
) -> None:
    """Add PSF-shaped point sources to canvases in place.

    Parameters
    ----------
    canvas : `numpy.ndarray`, (n, H, W)
    index : `numpy.ndarray` of `int`, (m,)
        Canvas of each source.
    x, y : `numpy.ndarray`, (m,)
        Centres in canvas pixel coordinates (LSST convention).
    flux : `numpy.ndarray`, (m,)
        Total flux (canvas units, e.g. nJy).
    psf : `DoubleGaussianPsf`
        One PSF per source (length m).
    """
    index = np.asarray(index)
    flux = np.asarray(flux, dtype=float)
    keep = np.flatnonzero(flux != 0)
    if len(keep) == 0:
        return
    x = np.asarray(x, dtype=float)[keep]
    y = np.asarray(y, dtype=float)[keep]
    index, flux, psf = index[keep], flux[keep], psf.take(keep)
    half = _group_sizes(np.ceil(psf.extent).astype(int), (4, 6, 8, 11, 15, 20, 26, 34, 44, 56, 70))
    for h in np.unique(half):
        for start in range(0, int(np.sum(half == h)), chunk):
            sel = np.flatnonzero(half == h)[start : start + chunk]
            ix = np.floor(x[sel] + 0.5).astype(int)
            iy = np.floor(y[sel] + 0.5).astype(int)
            grid = np.arange(-h, h + 1, dtype=float)
            dx = grid[None, :] + (ix - x[sel])[:, None]
            dy = grid[None, :] + (iy - y[sel])[:, None]
            cx, cy, wx, wy = psf.take(sel).profiles_1d(dx, dy)
            f = flux[sel][:, None]
            patches = np.einsum("my,mx->myx", cy, cx * f) + np.einsum("my,mx->myx", wy, wx * f)
            add_patches(canvas, index[sel], iy - h, ix - h, patches.astype(canvas.dtype, copy=False))


@functools.lru_cache(maxsize=8)
def _sersic_table(n_index: float):
    # Hankel transform of a circular Sersic profile of unit half-light radius and unit
    # flux, tabulated against the radial frequency kappa (cycles per half-light radius).
    b = gammaincinv(2 * n_index, 0.5)
    t = np.concatenate([[0.0], np.geomspace(1e-7, _SERSIC_TRUNCATION, 30000)])
    taper = np.clip((_SERSIC_TRUNCATION - t) / (0.25 * _SERSIC_TRUNCATION), 0.0, 1.0) ** 2
    profile = np.exp(-b * (t ** (1.0 / n_index) - 1.0)) * taper
    kappa = np.concatenate([[0.0], np.geomspace(1e-3, 200.0, 700)])
    weights = np.zeros_like(t)
    dt = np.diff(t)
    weights[:-1] += 0.5 * dt
    weights[1:] += 0.5 * dt
    ft = np.empty_like(kappa)
    for start in range(0, len(kappa), 50):
        k = kappa[start : start + 50, None]
        ft[start : start + 50] = (j0(2 * np.pi * k * t[None, :]) * (profile * t * weights)[None, :]).sum(1)
    ft /= ft[0]
    return kappa, ft


def sersic_fourier(n_index: float, kappa: np.ndarray) -> np.ndarray:
    """Fourier transform of a unit-flux circular Sersic profile.

    Parameters
    ----------
    n_index : `float`
        Sersic index (1: exponential disc, 4: de Vaucouleurs bulge).
    kappa : `numpy.ndarray`
        Radial frequency in cycles per half-light radius.

    Returns
    -------
    ft : `numpy.ndarray`
        Same shape as ``kappa``; 1 at ``kappa = 0``, 0 beyond the table.
    """
    table_k, table_ft = _sersic_table(float(n_index))
    return np.interp(kappa, table_k, table_ft, right=0.0)


def fourier_grid_size(shape, r_e, q, length, psf: DoubleGaussianPsf) -> np.ndarray:
    """Side of the local FFT grid that holds an object without visible wrap-around (pixels)."""
    shape = np.asarray(shape)
    major = np.where(shape == SHAPE_TRAIL, 0.5 * np.asarray(length), 0.0)
    sersic = np.where(shape == 1, 6.0, _SERSIC_TRUNCATION) * np.asarray(r_e) / np.sqrt(np.asarray(q))
    major = np.where(shape == SHAPE_TRAIL, major, sersic)
    need = 2 * (major + 0.75 * psf.extent) + 4
    return _group_sizes(np.ceil(need).astype(int), (16, 24, 32, 48, 64, 96, 128, 192, 256))


def render_fourier(
    canvas: np.ndarray,
    index: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    psf: DoubleGaussianPsf,
    *,
    shape: np.ndarray,
    r_e: np.ndarray,
    q: np.ndarray,
    theta: np.ndarray,
    length: np.ndarray,
    chunk_pixels: int = 2**22,
) -> None:
    """Add PSF-convolved extended or trailed sources to canvases in place.

    Parameters
    ----------
    canvas : `numpy.ndarray`, (n, H, W)
    index : `numpy.ndarray` of `int`, (m,)
        Canvas of each object.
    x, y : `numpy.ndarray`, (m,)
        Centres (canvas pixels).
    flux : `numpy.ndarray`, (m,)
        Total flux.
    psf : `DoubleGaussianPsf`
        One PSF per object.
    shape : `numpy.ndarray` of `int`, (m,)
        `SHAPE_TRAIL` for a trailed point source, else the Sersic index (1 or 4).
    r_e : `numpy.ndarray`, (m,)
        Half-light radius (pixels, geometric mean of the axes) for Sersic shapes.
    q : `numpy.ndarray`, (m,)
        Axis ratio (minor/major, 0 < q <= 1).
    theta : `numpy.ndarray`, (m,)
        Position angle of the major axis or trail, radians from the +x axis towards +y.
    length : `numpy.ndarray`, (m,)
        Trail length (pixels) for `SHAPE_TRAIL`.
    """
    flux = np.asarray(flux, dtype=float)
    keep = np.flatnonzero(flux != 0)
    if len(keep) == 0:
        return
    index = np.asarray(index)[keep]
    x = np.asarray(x, dtype=float)[keep]
    y = np.asarray(y, dtype=float)[keep]
    flux = flux[keep]
    psf = psf.take(keep)
    shape = np.asarray(shape)[keep]
    r_e, q, theta, length = (_take(a, keep, len(flux)) for a in (r_e, q, theta, length))
    size = fourier_grid_size(shape, r_e, q, length, psf)
    # Undersampled PSFs alias: the DFT of the sampled image is the sum of the continuous
    # transform over integer frequency shifts, so include the first aliases for them.
    aliased = np.minimum(psf.sigma_x, psf.sigma_y) < _ALIAS_SIGMA
    for g in np.unique(size):
        ky = scipy.fft.fftfreq(g)
        kx = scipy.fft.rfftfreq(g)
        for alias in (False, True):
            members = np.flatnonzero((size == g) & (aliased == alias))
            shifts = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)] if alias else [(0, 0)]
            step = max(1, chunk_pixels // (g * g * len(shifts)))
            for start in range(0, len(members), step):
                sel = members[start : start + step]
                ix = np.floor(x[sel] + 0.5).astype(int)
                iy = np.floor(y[sel] + 0.5).astype(int)
                half = g // 2
                # Object centre in local-grid coordinates.
                u = x[sel] - (ix - half)
                v = y[sel] - (iy - half)
                sub_psf = psf.take(sel)
                ft = 0.0
                for my, mx in shifts:
                    kys, kxs = ky + my, kx + mx
                    term = sub_psf.fourier(kys, kxs) * (np.sinc(kys)[:, None] * np.sinc(kxs)[None, :])[None]
                    term = term * _shape_fourier(shape[sel], r_e[sel], q[sel], theta[sel], length[sel], kys, kxs)
                    phase = np.exp(-2j * np.pi * v[:, None] * kys[None, :])[:, :, None] * np.exp(
                        -2j * np.pi * u[:, None] * kxs[None, :]
                    )[:, None, :]
                    ft = ft + term * phase
                ft = ft * flux[sel][:, None, None]
                patches = scipy.fft.irfft2(ft, s=(g, g), axes=(-2, -1), workers=1)
                add_patches(canvas, index[sel], iy - half, ix - half, patches.astype(canvas.dtype, copy=False))


def _take(a, keep, m):
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return np.full(m, float(a))
    return a[keep]


def _shape_fourier(shape, r_e, q, theta, length, ky, kx) -> np.ndarray:
    # Fourier transform of the unconvolved light distribution of each object, (m, Gy, Gx).
    c = np.cos(theta)[:, None, None]
    s = np.sin(theta)[:, None, None]
    kxx = kx[None, None, :]
    kyy = ky[None, :, None]
    k_along = kxx * c + kyy * s
    k_across = -kxx * s + kyy * c
    out = np.empty((len(shape), len(ky), len(kx)))
    trail = shape == SHAPE_TRAIL
    if np.any(trail):
        out[trail] = np.sinc(length[trail][:, None, None] * k_along[trail])
    for n_index in np.unique(shape[~trail]):
        sel = shape == n_index
        qq = q[sel][:, None, None]
        kappa = r_e[sel][:, None, None] * np.sqrt(k_along[sel] ** 2 / qq + qq * k_across[sel] ** 2)
        out[sel] = sersic_fourier(float(n_index), kappa)
    return out
