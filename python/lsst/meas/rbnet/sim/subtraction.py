# This file is part of meas_rbnet.
"""PSF matching, subtraction and decorrelation of simulated science/template pairs.

The ideal Alard-Lupton solution: the sharper image of each pair is convolved with the
kernel that turns its PSF into the other's (with a small width error, so very bright
stars leave faint residuals); the variance follows (``var_diff = var_sci + K^2 *
var_tmpl``). Where the survey's pipeline whitens its differences (`Conditions.decorrelate`:
Rubin's decorrelation, ZTF's ZOGY), the difference is filtered so its background noise is
white with the summed variance of the two images (Reiss & Lupton 2016). Everything here
works on batches of canvases in Fourier space (periodic canvases) and is cached on the
`Conditions` object. `lsst.meas.rbnet.sim.imaging.observe` uses it on noisy canvases.
"""

__all__ = [
    "frequencies",
    "rfft",
    "irfft",
    "kernel_fourier",
    "kernel_real",
    "kernel_sum_squares",
    "embed_kernels",
    "decorrelation_fourier",
    "template_noise_spectrum",
    "smoothing_groups",
    "smoothing_taps",
    "noiseless_difference",
    "difference_sky_sigma",
    "sky_sigma_of_difference",
]

import numpy as np
import scipy.fft
from scipy import ndimage

from .conditions import Conditions
from .psf import DoubleGaussianPsf, matching_kernel_fourier


def frequencies(shape):
    """Frequencies (cycles per pixel) of the rfft grid of canvases of ``shape``: ky (H,), kx (W//2+1,)."""
    return scipy.fft.fftfreq(shape[0]), scipy.fft.rfftfreq(shape[1])


def rfft(a):
    """2-d real FFT over the last two axes (one worker: the caller's processes share the cores)."""
    return scipy.fft.rfft2(a, axes=(-2, -1), workers=1)


def irfft(a, shape):
    """Inverse of `rfft` onto canvases of ``shape``."""
    return scipy.fft.irfft2(a, s=shape, axes=(-2, -1), workers=1)


def kernel_fourier(cond: Conditions, shape) -> np.ndarray:
    """Fourier transform of the PSF-matching kernel of each canvas (n, H, W//2+1),
    kept on the conditions object (it is needed several times per batch).
    """
    cache = cond.__dict__.setdefault("_kernel_cache", {})
    if tuple(shape) not in cache:
        cache[tuple(shape)] = _compute_kernel_fourier(cond, shape)
    return cache[tuple(shape)]


def _compute_kernel_fourier(cond: Conditions, shape) -> np.ndarray:
    # The kernel turns the PSF of the sharper image (the one convolved) into `psf_matched`,
    # with the kernel's width error.
    ky, kx = frequencies(shape)
    source = DoubleGaussianPsf.where(cond.convolve_science, cond.psf_science, cond.psf_template)
    target = cond.psf_matched.scaled(1 + cond.kernel_error, 1 + cond.kernel_error)
    return matching_kernel_fourier(target, source, ky, kx)


def noiseless_difference(science: np.ndarray, template: np.ndarray, cond: Conditions) -> np.ndarray:
    """Difference of noiseless canvases with the same PSF matching as `observe` (n, H, W) float32."""
    shape = science.shape[1:]
    kernel = kernel_fourier(cond, shape)
    mode = cond.convolve_science[:, None, None]
    s_hat = rfft(science)
    # Most labelled objects have nothing in the template: skip those transforms.
    has_t = np.flatnonzero(np.any(template != 0, axis=(1, 2)))
    d_hat = np.where(mode, kernel * s_hat, s_hat)
    if len(has_t):
        t_hat = rfft(template[has_t])
        d_hat[has_t] -= np.where(mode[has_t], t_hat, kernel[has_t] * t_hat)
    dec = np.flatnonzero(cond.decorrelate > 0)
    if len(dec):
        d_hat[dec] *= decorrelation_fourier(cond, shape)[dec]
    return irfft(d_hat, shape).astype(np.float32)


def decorrelation_fourier(cond: Conditions, shape) -> np.ndarray:
    """Fourier transform of the whitening filter of each canvas's difference (n, H, W//2+1),
    cached like the kernel. The difference's background noise power is P_s |K|^2 + P_t
    (science convolved) or P_s + P_t |K|^2 (template convolved), with P_s the science's
    white variance and P_t the template's spectrum (white, or smoothed as in
    `add_template_noise`); sqrt((var_s + var_t) / power) makes it flat at the summed
    variance (Reiss & Lupton 2016, as Rubin's pipeline decorrelates its differences).
    1 for canvases that are not decorrelated.
    """
    cache = cond.__dict__.setdefault("_kernel_cache", {})
    key = ("decorrelation", tuple(shape))
    if key not in cache:
        k2 = np.abs(kernel_fourier(cond, shape)) ** 2
        mode = cond.convolve_science[:, None, None]
        var_s = (cond.sky_sigma_science**2)[:, None, None]
        var_t = (cond.sky_sigma_template**2)[:, None, None]
        power_t = var_t * template_noise_spectrum(cond, shape)
        power = np.where(mode, var_s * k2 + power_t, var_s + power_t * k2)
        phi = np.sqrt((var_s + var_t) / power)
        phi[~(cond.decorrelate > 0)] = 1.0
        cache[key] = phi
    return cache[key]


def smoothing_groups(smoothing: np.ndarray):
    """``(level, canvases)`` pairs of the template noise smoothing that `add_template_noise`
    applies: ``smoothing`` (n,) rounded to 0.1 pixel, white (left out) under 0.05."""
    levels = np.round(smoothing, 1)
    for level in np.unique(levels[levels > 0.05]):
        yield level, np.flatnonzero(levels == level)


def smoothing_taps(level: float) -> np.ndarray:
    """The filter with which `add_template_noise` smooths the template's noise at ``level``
    (Gaussian sigma, pixels): the impulse response of its ``ndimage.gaussian_filter``, a
    centred float32 kernel."""
    unit = np.zeros((4 * int(np.ceil(4 * level)) + 1,) * 2, np.float32)
    unit[unit.shape[0] // 2, unit.shape[1] // 2] = 1.0
    return ndimage.gaussian_filter(unit, level, mode="constant")


def template_noise_spectrum(cond: Conditions, shape) -> np.ndarray:
    """Power spectrum of the template's noise per unit variance (n, H, W//2+1) on the rfft grid:
    1 for white noise; for the smoothing of `add_template_noise` (same levels and filter),
    the squared transfer of its filter, normalised by the filter's sum of squares so the
    per-pixel variance is kept.
    """
    out = np.ones((len(cond), shape[0], shape[1] // 2 + 1))
    for level, sel in smoothing_groups(cond.template_noise_smoothing):
        taps = smoothing_taps(level).astype(np.float64)
        transfer = np.abs(rfft(embed_kernels(taps[None], shape)[0])) ** 2
        out[sel] = transfer / (taps**2).sum()
    return out


def sky_sigma_of_difference(cond: Conditions, sum_k2: np.ndarray) -> np.ndarray:
    """Background noise per pixel of the difference (nJy, (n,)) given the kernels' sums of squares."""
    mode = cond.convolve_science
    var = np.where(
        mode,
        cond.sky_sigma_science**2 * sum_k2 + cond.sky_sigma_template**2,
        cond.sky_sigma_science**2 + cond.sky_sigma_template**2 * sum_k2,
    )
    # A decorrelated difference is white with the summed variance of the two images.
    var = np.where(cond.decorrelate > 0, cond.sky_sigma_science**2 + cond.sky_sigma_template**2, var)
    return np.sqrt(var)


def kernel_sum_squares(cond: Conditions) -> np.ndarray:
    """Sum of the squared PSF-matching kernel of each canvas, (n,)."""
    kernel = _kernel_small(cond)
    return (kernel.astype(np.float64) ** 2).sum(axis=(1, 2))


def difference_sky_sigma(cond: Conditions) -> np.ndarray:
    """Background noise per pixel of the difference image (nJy), (n,)."""
    return sky_sigma_of_difference(cond, kernel_sum_squares(cond))


def embed_kernels(small: np.ndarray, shape) -> np.ndarray:
    """Centred small kernels (n, k, k) placed on canvases of ``shape`` with their centre at
    pixel (0, 0), wrapped around, for FFT convolution.
    """
    n, ky, kx = small.shape
    out = np.zeros((n, *shape), np.float32)
    out[:, :ky, :kx] = small
    return np.roll(out, (-(ky // 2), -(kx // 2)), axis=(1, 2))


def _kernel_small(cond: Conditions) -> np.ndarray:
    # Real-space PSF-matching kernels on a small grid (n, k, k), centred (k odd), cached.
    cache = cond.__dict__.setdefault("_kernel_cache", {})
    if "small" not in cache:
        size = scipy.fft.next_fast_len(int(2 * np.ceil(np.max(cond.psf_matched.extent))) + 1)
        small = irfft(kernel_fourier(cond, (size, size)), (size, size))
        small = np.fft.fftshift(small, axes=(1, 2)).astype(np.float32)
        if size % 2 == 0:
            # Keep an odd, centred support.
            small = small[:, 1:, 1:]
        cache["small"] = small
    return cache["small"]


def kernel_real(cond: Conditions, shape):
    """Real-space PSF-matching kernels (n, k, k) and the Fourier transform of their squares on
    the canvas grid (for the variance).
    """
    small = _kernel_small(cond)
    if small.shape[1] > min(shape):
        # Kernels wider than the canvas (tiny canvases): fold them onto it.
        small = irfft(kernel_fourier(cond, shape), shape)
        small = np.fft.fftshift(small, axes=(1, 2)).astype(np.float32)
        if shape[0] % 2 == 0 or shape[1] % 2 == 0:
            small = small[:, 1 - shape[0] % 2 :, 1 - shape[1] % 2 :]
    return small, rfft(embed_kernels(small * small, shape))
