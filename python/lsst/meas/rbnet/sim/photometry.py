# This file is part of meas_rbnet.
"""PSF photometry on image batches: the matched filter and forced PSF fluxes.

Moved out of `lsst.meas.rbnet.sim.imaging` (which re-exports both names) so the
instrument model stays under about 600 lines.
"""

__all__ = ["psf_matched_filter", "psf_photometry"]

import numpy as np

from .psf import DoubleGaussianPsf


def psf_matched_filter(images, canvas, x, y, psf: DoubleGaussianPsf, sigma, *, search_radius: float = 0.0):
    """PSF-optimal flux and S/N of the signal near ``(x, y)``, in real space.

    The statistic is ``M = sum_p P(p - c) D(p)`` with ``P`` the pixel-integrated
    PSF centred at ``c``: the maximum-likelihood PSF flux is ``M / sum P^2`` and
    its S/N against background noise ``sigma`` is ``M / (sigma sqrt(sum P^2))``.
    With ``search_radius > 0`` the centre ``c`` also moves by whole pixels up to
    that distance and the lag with the largest ``|S/N|`` is kept (how a
    detection lands on the strongest part of an artifact).

    Parameters
    ----------
    images : `numpy.ndarray`, (n, H, W)
        Canvases (NaN is treated as 0).
    canvas : `numpy.ndarray` of `int`, (k,)
    x, y : `numpy.ndarray`, (k,)
        Centres (pixels).
    psf : `DoubleGaussianPsf`
        PSF per row (length k).
    sigma : `numpy.ndarray`, (k,)
        Background noise per pixel.

    Returns
    -------
    snr, flux, dx, dy : `numpy.ndarray`, (k,)
        Signed S/N and PSF flux at the chosen centre, and its integer lag.
    """
    canvas = np.asarray(canvas)
    k = len(canvas)
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    half = int(np.ceil(min(np.max(psf.extent) * 0.7, 40))) if k else 0
    r = int(np.floor(search_radius))
    lags = [
        (dy, dx)
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
        if dy * dy + dx * dx <= search_radius**2 + 1e-9
    ]
    size = 2 * half + 1
    ix = np.floor(x + 0.5).astype(int)
    iy = np.floor(y + 0.5).astype(int)
    grid = np.arange(-half, half + 1, dtype=float)
    cx, cy, wx, wy = psf.profiles_1d(grid[None, :] + (ix - x)[:, None], grid[None, :] + (iy - y)[:, None])
    kernel = np.einsum("ky,kx->kyx", cy, cx) + np.einsum("ky,kx->kyx", wy, wx)
    sum_p2 = (kernel**2).sum(axis=(1, 2))
    # Patches of the image large enough for every lag.
    pad = half + r
    n, height, width = images.shape
    oy = np.arange(-pad, pad + 1)
    rows = iy[:, None] + oy[None, :]
    cols = ix[:, None] + oy[None, :]
    valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    patch = images[
        canvas[:, None, None],
        np.clip(rows, 0, height - 1)[:, :, None],
        np.clip(cols, 0, width - 1)[:, None, :],
    ]
    patch = np.where(valid & np.isfinite(patch), patch, 0.0).astype(np.float64)
    best = np.zeros(k)
    best_lag = np.zeros((k, 2), int)
    for dy, dx in lags:
        m = np.einsum("kyx,kyx->k", kernel, patch[:, r + dy : r + dy + size, r + dx : r + dx + size])
        better = np.abs(m) > np.abs(best)
        best = np.where(better, m, best)
        best_lag[better] = (dy, dx)
    sigma = np.asarray(sigma, dtype=float)
    return best / (sigma * np.sqrt(sum_p2)), best / sum_p2, best_lag[:, 1], best_lag[:, 0]


def psf_photometry(image: np.ndarray, variance: np.ndarray, x, y, psf: DoubleGaussianPsf):
    """Inverse-variance weighted PSF fluxes at fixed positions (forced photometry).

    Parameters
    ----------
    image, variance : `numpy.ndarray`, (H, W)
        Pixels (nJy) and variance (nJy^2); NaN pixels are ignored.
    x, y : `numpy.ndarray`, (k,)
        Positions (pixels).
    psf : `DoubleGaussianPsf`
        PSF per position (length k).

    Returns
    -------
    flux, flux_err : `numpy.ndarray`, (k,)
        ``sum(P D / V) / sum(P^2 / V)`` and ``1 / sqrt(sum(P^2 / V))``; NaN
        when no valid pixel overlaps the PSF.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    k = len(x)
    if k == 0:
        return np.zeros(0), np.zeros(0)
    half = int(np.ceil(min(np.max(psf.extent) * 0.7, 40)))
    grid = np.arange(-half, half + 1)
    ix = np.floor(x + 0.5).astype(int)
    iy = np.floor(y + 0.5).astype(int)
    cx, cy, wx, wy = psf.profiles_1d(grid[None, :] + (ix - x)[:, None], grid[None, :] + (iy - y)[:, None])
    kernel = np.einsum("ky,kx->kyx", cy, cx) + np.einsum("ky,kx->kyx", wy, wx)
    height, width = image.shape
    rows = iy[:, None] + grid[None, :]
    cols = ix[:, None] + grid[None, :]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    r = np.clip(rows, 0, height - 1)[:, :, None]
    c = np.clip(cols, 0, width - 1)[:, None, :]
    data = image[r, c].astype(np.float64)
    var = variance[r, c].astype(np.float64)
    ok = inside & np.isfinite(data) & np.isfinite(var) & (var > 0)
    w = np.where(ok, kernel / np.where(ok, var, 1.0), 0.0)
    norm = (w * kernel).sum(axis=(1, 2))
    flux = (w * np.where(ok, data, 0.0)).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, flux / norm, np.nan), np.where(norm > 0, 1 / np.sqrt(norm), np.nan)
