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
    "render_spikes",
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

#: Sides of the local FFT grids (fast sizes).
_GRID_SIZES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

#: Half-light radius of an exponential disc in units of its scale length.
_EXP_RE_PER_H = float(gammaincinv(2.0, 0.5))

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
    floor: float = 1e-2,
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
    floor : `float`
        Each source is drawn out to where its wing falls below this value
        (canvas units: 0.01 nJy is far below any sky noise), at most to where
        it holds 1e-5 of the flux.
    """
    index = np.asarray(index)
    flux = np.asarray(flux, dtype=float)
    keep = np.flatnonzero(flux != 0)
    if len(keep) == 0:
        return
    x = np.asarray(x, dtype=float)[keep]
    y = np.asarray(y, dtype=float)[keep]
    index, flux, psf = index[keep], flux[keep], psf.take(keep)
    wing_sigma = psf.wing_ratio * np.maximum(psf.sigma_x, psf.sigma_y)
    peak_wing = np.abs(flux) * np.maximum(psf.wing_fraction, 1e-3) / (2 * np.pi * wing_sigma**2)
    reach = wing_sigma * np.sqrt(2 * np.log(np.maximum(peak_wing / floor, 1.0)))
    reach = np.clip(reach, 3 * np.maximum(psf.sigma_x, psf.sigma_y), psf.extent)
    half = _group_sizes(np.ceil(reach).astype(int), (4, 6, 8, 11, 15, 20, 26, 34, 44, 56, 70))
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
    t = np.concatenate([[0.0], np.geomspace(1e-7, _SERSIC_TRUNCATION, 12000)])
    taper = np.clip((_SERSIC_TRUNCATION - t) / (0.25 * _SERSIC_TRUNCATION), 0.0, 1.0) ** 2
    profile = np.exp(-b * (t ** (1.0 / n_index) - 1.0)) * taper
    kappa = np.concatenate([[0.0], np.geomspace(1e-3, 200.0, 400)])
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


def fourier_grid_size(
    shape, r_e, q, length, psf: DoubleGaussianPsf, flux=None, floor: float = 0.5
) -> np.ndarray:
    """Side of the local FFT grid that holds an object without visible wrap-around (pixels).

    The grid holds the profile along the major axis out to where its surface
    brightness falls below ``floor`` (canvas units per pixel; 0.5 nJy is a
    twentieth of the faintest sky noise simulated), at most 6 (Sersic 1) or 8
    (Sersic 4) half-light radii, or the trail, plus the PSF out to where it
    carries about 1e-4 of the light. Light beyond wraps around, spread thinly
    over the far side of the grid, below ``floor``.
    """
    shape = np.asarray(shape)
    r_e = np.maximum(np.asarray(r_e, dtype=float), 1e-3)
    q = np.asarray(q, dtype=float)
    if flux is None:
        radius = np.where(shape == 1, 6.0, 8.0)
    else:
        flux = np.abs(np.asarray(flux, dtype=float))
        with np.errstate(divide="ignore"):
            # Exponential: I(r) = F / (2 pi h^2) exp(-r / h), h = r_e / 1.678.
            h = r_e / _EXP_RE_PER_H
            exp_r = np.log(np.maximum(flux / (2 * np.pi * h**2 * floor), 1.0)) / _EXP_RE_PER_H
            # de Vaucouleurs: I(r) = I_e exp(-7.67 ((r / r_e)^(1/4) - 1)), I_e = F / (22.7 r_e^2).
            dev_r = (1 + np.log(np.maximum(flux / (22.7 * r_e**2 * floor), 1.0)) / 7.67) ** 4
        radius = np.clip(np.where(shape == 1, exp_r, dev_r), 1.5, np.where(shape == 1, 6.0, 8.0))
    sersic = radius * r_e / np.sqrt(q)
    major = np.where(shape == SHAPE_TRAIL, 0.5 * np.asarray(length), sersic)
    need = 2 * (major + 3.0 * psf.wing_ratio * np.maximum(psf.sigma_x, psf.sigma_y)) + 2
    return _group_sizes(np.ceil(need).astype(int), _GRID_SIZES)


def render_fourier(
    canvases,
    index: np.ndarray,
    positions,
    fluxes,
    psfs,
    *,
    shape: np.ndarray,
    r_e: np.ndarray,
    q: np.ndarray,
    theta: np.ndarray,
    length: np.ndarray,
    chunk_pixels: int = 2**21,
) -> None:
    """Add PSF-convolved extended or trailed sources to one or more canvas batches in place.

    The same objects are usually rendered in the science and the template
    canvases (different PSFs, fluxes and positions); their shape transform is
    computed once for all of them.

    Parameters
    ----------
    canvases : sequence of `numpy.ndarray`, each (n, H, W)
        Canvas batches (e.g. ``[science, template]``), modified in place.
    index : `numpy.ndarray` of `int`, (m,)
        Canvas of each object.
    positions : sequence of ``(x, y)`` pairs of `numpy.ndarray`, (m,)
        Centres (canvas pixels) in each canvas batch.
    fluxes : sequence of `numpy.ndarray`, (m,)
        Total flux in each canvas batch.
    psfs : sequence of `DoubleGaussianPsf`
        One PSF per object, for each canvas batch.
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
    index = np.asarray(index)
    m = len(index)
    fluxes = [np.broadcast_to(np.asarray(f, dtype=float), (m,)) for f in fluxes]
    keep = np.flatnonzero(np.any([f != 0 for f in fluxes], axis=0)) if m else np.zeros(0, int)
    if len(keep) == 0:
        return
    index = index[keep]
    positions = [(np.asarray(x, dtype=float)[keep], np.asarray(y, dtype=float)[keep]) for x, y in positions]
    fluxes = [f[keep] for f in fluxes]
    psfs = [p.take(keep) for p in psfs]
    shape = np.asarray(shape)[keep]
    r_e, q, theta, length = (_take(a, keep, len(keep)) for a in (r_e, q, theta, length))
    widest = DoubleGaussianPsf(
        *(
            np.max([getattr(p, f) for p in psfs], axis=0)
            for f in ("sigma_x", "sigma_y", "wing_fraction", "wing_ratio")
        )
    )
    size = fourier_grid_size(shape, r_e, q, length, widest, flux=np.max(np.abs(fluxes), axis=0))
    # A grid larger than the canvases buys nothing: the outer light it would hold falls
    # off the canvas anyway (on small canvases it wraps around, faint and spread thin).
    height, width = canvases[0].shape[1:]
    size = np.minimum(size, _group_sizes(np.array([max(height, width)]), _GRID_SIZES)[0])
    # Undersampled PSFs alias: the DFT of the sampled image is the sum of the continuous
    # transform over integer frequency shifts. Only compact shapes have power there.
    sharpest = np.min([np.minimum(p.sigma_x, p.sigma_y) for p in psfs], axis=0)
    compact = (shape == SHAPE_TRAIL) | (r_e < 1.0)
    aliased = compact & (sharpest < _ALIAS_SIGMA)
    for g in np.unique(size):
        ky = scipy.fft.fftfreq(g)
        kx = scipy.fft.rfftfreq(g)
        half = g // 2
        for alias in (False, True):
            members = np.flatnonzero((size == g) & (aliased == alias))
            shifts = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)] if alias else [(0, 0)]
            step = max(1, chunk_pixels // (g * g * len(shifts)))
            for start in range(0, len(members), step):
                sel = members[start : start + step]
                fts = [0.0] * len(canvases)
                anchors = []
                for x, y in positions:
                    ix = np.floor(x[sel] + 0.5).astype(int)
                    iy = np.floor(y[sel] + 0.5).astype(int)
                    # Object centre in local-grid coordinates.
                    anchors.append((ix, iy, x[sel] - (ix - half), y[sel] - (iy - half)))
                for my, mx in shifts:
                    kys, kxs = ky + my, kx + mx
                    common = _shape_fourier(shape[sel], r_e[sel], q[sel], theta[sel], length[sel], kys, kxs)
                    for j, (psf, flux, (_, _, u, v)) in enumerate(zip(psfs, fluxes, anchors)):
                        if not np.any(flux[sel]):
                            continue
                        fts[j] = fts[j] + common * _psf_phase_fourier(
                            psf.take(sel), u, v, flux[sel], kys, kxs
                        )
                for canvas, ft, (ix, iy, _, _) in zip(canvases, fts, anchors):
                    if np.isscalar(ft):
                        continue
                    patches = scipy.fft.irfft2(ft, s=(g, g), axes=(-2, -1), workers=1)
                    add_patches(
                        canvas, index[sel], iy - half, ix - half, patches.astype(canvas.dtype, copy=False)
                    )


def _psf_phase_fourier(psf: DoubleGaussianPsf, u, v, flux, ky, kx) -> np.ndarray:
    # PSF x pixel response x sub-pixel phase x flux, (m, Gy, Gx) complex64. Every factor
    # is separable in (ky, kx), so this is two outer products of 1-D arrays.
    c = -2.0 * np.pi**2
    b2 = (psf.wing_ratio**2)[:, None]
    sinc_y = np.sinc(ky)[None, :]
    sinc_x = np.sinc(kx)[None, :]
    phase_y = np.exp(-2j * np.pi * v[:, None] * ky[None, :]) * sinc_y
    phase_x = np.exp(-2j * np.pi * u[:, None] * kx[None, :]) * (sinc_x * flux[:, None])
    gy = np.exp(c * (psf.sigma_y**2)[:, None] * ky[None, :] ** 2)
    gx = np.exp(c * (psf.sigma_x**2)[:, None] * kx[None, :] ** 2)
    f = psf.wing_fraction[:, None]
    core_y = (gy * phase_y).astype(np.complex64)
    core_x = ((1 - f) * gx * phase_x).astype(np.complex64)
    wing_y = (gy**b2 * phase_y).astype(np.complex64)
    wing_x = (f * gx**b2 * phase_x).astype(np.complex64)
    return core_y[:, :, None] * core_x[:, None, :] + wing_y[:, :, None] * wing_x[:, None, :]


def _take(a, keep, m):
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return np.full(m, float(a))
    return a[keep]


def _shape_fourier(shape, r_e, q, theta, length, ky, kx) -> np.ndarray:
    # Fourier transform of the unconvolved light distribution of each object, (m, Gy, Gx).
    c = np.cos(theta)[:, None, None].astype(np.float32)
    s = np.sin(theta)[:, None, None].astype(np.float32)
    kxx = kx[None, None, :].astype(np.float32)
    kyy = ky[None, :, None].astype(np.float32)
    k_along = kxx * c + kyy * s
    k_across = -kxx * s + kyy * c
    out = np.empty((len(shape), len(ky), len(kx)), np.float32)
    trail = shape == SHAPE_TRAIL
    if np.any(trail):
        out[trail] = np.sinc(length[trail][:, None, None] * k_along[trail])
    for n_index in np.unique(shape[~trail]):
        sel = shape == n_index
        qq = q[sel][:, None, None].astype(np.float32)
        kappa2 = (r_e[sel][:, None, None] ** 2).astype(np.float32) * (
            k_along[sel] ** 2 / qq + qq * k_across[sel] ** 2
        )
        if n_index == 1:
            # Exponential disc: analytic, (1 + (2 pi k h)^2)^(-3/2) with scale length h = r_e / 1.678.
            base = np.float32(1.0) + np.float32((2 * np.pi / _EXP_RE_PER_H) ** 2) * kappa2
            out[sel] = 1.0 / (base * np.sqrt(base))
        else:
            out[sel] = sersic_fourier(float(n_index), np.sqrt(kappa2))
    return out


#: Fraction of a star's flux scattered into each diffraction spike, per pixel of radius squared.
SPIKE_STRENGTH: float = 5e-3


def render_spikes(
    canvas: np.ndarray,
    index: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    psf: DoubleGaussianPsf,
    angle: np.ndarray,
    *,
    floor: float = 1.0,
    max_radius: float = 300.0,
) -> None:
    """Add the four diffraction spikes of the telescope spider around bright stars, in place.

    A straight vane scatters light along a line through the star whose surface
    brightness falls as ``1 / r^2``; across the line the profile is the PSF
    core. Spikes start two core sigmas from the centre and are drawn out to
    where they fall below ``floor`` (canvas units).

    Parameters
    ----------
    canvas : `numpy.ndarray`, (n, H, W)
    index, x, y, flux : `numpy.ndarray`, (m,)
        Canvas, centre and flux of each bright star.
    psf : `DoubleGaussianPsf`
        PSF of each star (length m).
    angle : `numpy.ndarray`, (m,)
        Angle of the first spike (radians); the others follow at right angles.
    """
    _, height, width = canvas.shape
    for i in range(len(index)):
        sigma = float(np.sqrt(psf.sigma_x[i] * psf.sigma_y[i] + 1.0 / 12.0))
        amplitude = flux[i] * SPIKE_STRENGTH / (np.sqrt(2 * np.pi) * sigma)
        reach = min(np.sqrt(max(amplitude / floor, 0.0)), max_radius)
        r0 = 2.0 * sigma
        if reach <= r0:
            continue
        x0, x1 = int(max(np.floor(x[i] - reach), 0)), int(min(np.ceil(x[i] + reach) + 1, width))
        y0, y1 = int(max(np.floor(y[i] - reach), 0)), int(min(np.ceil(y[i] + reach) + 1, height))
        if x0 >= x1 or y0 >= y1:
            continue
        dx = np.arange(x0, x1)[None, :] - x[i]
        dy = np.arange(y0, y1)[:, None] - y[i]
        c, s = np.cos(angle[i]), np.sin(angle[i])
        value = 0.0
        for u, v in ((dx * c + dy * s, -dx * s + dy * c), (-dx * s + dy * c, dx * c + dy * s)):
            # u along the spike, v across it.
            r = np.maximum(np.abs(u), r0)
            value = value + np.exp(-0.5 * (v / sigma) ** 2) / r**2 * (np.abs(u) < reach)
        canvas[index[i], y0:y1, x0:x1] += (amplitude * value).astype(canvas.dtype)
