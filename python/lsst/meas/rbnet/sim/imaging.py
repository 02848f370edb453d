# This file is part of meas_rbnet.
"""From a scene to science, template and difference images: the instrument and the pipeline.

`observe` renders a `Scene` on a batch of canvases and does what the camera and
Rubin's image differencing do to it:

1. render the noiseless science and template (different PSFs; the template
   may be misregistered by a few hundredths of a pixel),
2. add noise with a per-pixel variance (sky + source Poisson + read noise; the
   template is a deeper coadd), record the variance planes,
3. saturate and bleed the science image,
4. PSF-match: convolve the sharper image with the kernel that turns its PSF
   into the other's (the ideal Alard-Lupton solution, with a small width
   error so very bright stars leave faint residuals), subtract, and propagate
   the variance (``var_diff = var_sci + K^2 * var_tmpl``); where the survey
   whitens its differences, decorrelate (`lsst.meas.rbnet.sim.subtraction`),
5. set the mask planes a pipeline sets (SAT, SUSPECT, BAD, CR, STREAK, EDGE,
   NO_DATA, DETECTED, DETECTED_NEGATIVE).

`measure_objects` gives the PSF-optimal signal-to-noise ratio of labelled
objects in the noiseless difference, which sets their amplitudes.

`Conditions` and `sample_conditions` live in `lsst.meas.rbnet.sim.conditions`,
`psf_matched_filter` and `psf_photometry` in `lsst.meas.rbnet.sim.photometry`,
`noiseless_difference`, `difference_sky_sigma` and `kernel_sum_squares` in
`lsst.meas.rbnet.sim.subtraction`; they are re-exported here.
"""

__all__ = [
    "Conditions",
    "sample_conditions",
    "Observation",
    "observe",
    "render_models",
    "noiseless_difference",
    "difference_sky_sigma",
    "kernel_sum_squares",
    "psf_matched_filter",
    "measure_objects",
    "psf_photometry",
    "add_template_noise",
    "local_canvas_size",
    "DETECTION_THRESHOLD",
]

import dataclasses

import numpy as np
import scipy.fft
from scipy import ndimage

from ..constants import MASK_BIT
from .artifacts import render_artifacts, saturate
from .conditions import Conditions, sample_conditions
from .photometry import psf_matched_filter, psf_photometry
from .psf import DoubleGaussianPsf
from .render import add_patches, render_fourier, render_points, render_spikes
from .scene import Scene
from .subtraction import (
    decorrelation_fourier,
    difference_sky_sigma,
    embed_kernels,
    irfft,
    kernel_fourier,
    kernel_real,
    kernel_sum_squares,
    noiseless_difference,
    rfft,
    sky_sigma_of_difference,
    smoothing_groups,
    smoothing_taps,
)

#: Detection threshold of the simulated pipeline (PSF-smoothed S/N).
DETECTION_THRESHOLD: float = 5.0


def render_models(
    scene: Scene,
    cond: Conditions,
    shape: tuple[int, int],
    *,
    with_artifacts: bool = True,
    with_template: bool = True,
):
    """Noiseless science and template canvases of a scene.

    ``with_template=False`` leaves the template canvases empty (when a
    template observed once is reused).

    Returns
    -------
    science, template : `numpy.ndarray`, (n, H, W) float32
        nJy, background-subtracted.
    mask_science, mask_template, mask_difference : `numpy.ndarray`, (n, H, W) int32
        Mask bits set by the artifacts (BAD, CR on the science or template,
        STREAK on the difference).
    """
    n = len(cond)
    height, width = shape
    science = np.zeros((n, height, width), np.float32)
    template = np.zeros((n, height, width), np.float32)
    masks = [np.zeros((n, height, width), np.int32) for _ in range(3)]
    tables = scene.tables()
    t = tables["point"]
    if len(t["canvas"]):
        b = t["canvas"]
        psf_s = cond.psf_science.take(b).scaled(t["psf_fx"], t["psf_fy"]).convolved(t["size_x"], t["size_y"])
        psf_t = cond.psf_template.take(b).convolved(t["size_x"], t["size_y"])
        render_points(science, b, t["x"], t["y"], t["flux_s"], psf_s)
        # Stars near or above the full well show the spider's diffraction spikes.
        peak = t["flux_s"] / (2 * np.pi * psf_s.sigma_x * psf_s.sigma_y)
        bright = np.flatnonzero(peak > 0.3 * cond.saturation[b])
        if len(bright):
            render_spikes(
                science,
                b[bright],
                t["x"][bright],
                t["y"][bright],
                t["flux_s"][bright],
                psf_s.take(bright),
                cond.spike_angle[b[bright]],
            )
        render_points(
            template,
            b,
            t["x"] + t["dx_t"] + cond.template_dx[b],
            t["y"] + t["dy_t"] + cond.template_dy[b],
            t["flux_t"] if with_template else np.zeros(len(b)),
            psf_t,
        )
    t = tables["extended"]
    if len(t["canvas"]):
        b = t["canvas"]
        shape_cols = dict(shape=t["shape"], r_e=t["r_e"], q=t["q"], theta=t["theta"], length=t["length"])
        positions = [
            (t["x"], t["y"]),
            (t["x"] + t["dx_t"] + cond.template_dx[b], t["y"] + t["dy_t"] + cond.template_dy[b]),
        ]
        render_fourier(
            [science, template],
            b,
            positions,
            [t["flux_s"], t["flux_t"] if with_template else np.zeros(len(b))],
            [cond.psf_science.take(b), cond.psf_template.take(b)],
            **shape_cols,
        )
    if with_artifacts:
        render_artifacts(tables, science, template, *masks, cond.psf_science)
    return (science, template, *masks)


def measure_objects(keys: Scene, cond: Conditions, shape, canvas, x, y, *, search_radius=2.0):
    """PSF-optimal S/N of labelled objects alone in the noiseless difference.

    Parameters
    ----------
    keys : `Scene`
        Components of the labelled objects only (one object per canvas of ``cond``).
    cond : `Conditions`
        Conditions of the canvases.
    shape : `tuple` [`int`, `int`]
        Canvas shape.
    canvas, x, y : `numpy.ndarray`, (k,)
        Canvas and detection position of each object.

    Returns
    -------
    snr, flux : `numpy.ndarray`, (k,)
        Signed PSF-optimal S/N against the difference's background noise, and PSF flux (nJy).
    peak : `numpy.ndarray`, (k,)
        Largest science pixel value of the object (for saturation checks).
    """
    canvas = np.asarray(canvas)
    used, local = np.unique(canvas, return_inverse=True)
    if len(used) < len(cond):
        cond = cond.take(used)
        keys = keys.select(lambda t: np.isin(t["canvas"], used))
        for table in keys.tables().values():
            table["canvas"] = np.searchsorted(used, table["canvas"])
        canvas = local
    science, template, *_ = render_models(keys, cond, shape)
    diff = noiseless_difference(science, template, cond)
    sigma = difference_sky_sigma(cond)
    snr, flux, _, _ = psf_matched_filter(
        diff, canvas, x, y, cond.psf_difference.take(canvas), sigma[canvas], search_radius=search_radius
    )
    peak = science.reshape(len(cond), -1).max(axis=1)[canvas]
    return snr, flux, peak


@dataclasses.dataclass
class Observation:
    """Science, template and difference canvases with variance and mask planes.

    Images are float32 nJy (NaN where NO_DATA), variances float32 nJy^2, masks
    int32 with bits from `lsst.meas.rbnet.constants.MASK_PLANES`; all (n, H, W).
    ``sky_sigma_difference`` is the background noise per pixel of each
    difference canvas (nJy, (n,)).
    """

    science: np.ndarray
    template: np.ndarray
    difference: np.ndarray
    variance_science: np.ndarray
    variance_template: np.ndarray
    variance_difference: np.ndarray
    mask_science: np.ndarray
    mask_template: np.ndarray
    mask_difference: np.ndarray
    sky_sigma_difference: np.ndarray


def _box_any(mask: np.ndarray, r: int, axis: int) -> np.ndarray:
    # True where any element within +-r along ``axis`` is True: ORs of shifted copies,
    # doubling the reach each step (log2(r) passes).
    out = mask.copy()
    covered = 0
    n = mask.shape[axis]
    while covered < r:
        step = min(covered + 1, r - covered)
        if step >= n:
            step = n - 1
            covered = r
        src = out.copy()
        fwd = [slice(None)] * mask.ndim
        bwd = [slice(None)] * mask.ndim
        fwd[axis], bwd[axis] = slice(step, None), slice(None, n - step)
        out[tuple(fwd)] |= src[tuple(bwd)]
        out[tuple(bwd)] |= src[tuple(fwd)]
        covered += step
    return out


def _grow(mask: np.ndarray, radius: np.ndarray) -> np.ndarray:
    # Grow footprints by a square of half-side ``radius`` (per canvas), as footprint
    # growing does around detections.
    out = mask.copy()
    for r in np.unique(radius):
        if r <= 0:
            continue
        sel = np.flatnonzero(radius == r)
        sub = mask[sel]
        if not sub.any():
            continue
        out[sel] = _box_any(_box_any(sub, int(r), 1), int(r), 2)
    return out


def _detect(
    image: np.ndarray, psf: DoubleGaussianPsf, sigma: np.ndarray, bin_width: float = 0.1
) -> np.ndarray:
    # S/N map of each canvas smoothed with a Gaussian of the PSF's width, as the
    # pipeline's detection step does: separable, periodic (the canvases are), with
    # canvases of similar PSF width (within ``bin_width`` pixels) filtered together.
    width = np.sqrt(psf.sigma**2 * (1 + 3 * psf.wing_fraction))
    key = np.round(width / bin_width).astype(int)
    out = np.empty(image.shape, np.float32)
    for k in np.unique(key):
        sel = np.flatnonzero(key == k)
        w = max(k * bin_width, 0.3)
        radius = int(np.ceil(3.5 * w))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / w) ** 2)
        taps /= taps.sum()
        smoothed = ndimage.correlate1d(image[sel], taps.astype(np.float32), axis=1, mode="wrap")
        smoothed = ndimage.correlate1d(smoothed, taps.astype(np.float32), axis=2, mode="wrap")
        # Noise of the smoothed image: sigma * sqrt(sum of squared 2-D weights).
        norm = sigma[sel] * float((taps**2).sum())
        out[sel] = smoothed / norm[:, None, None].astype(np.float32)
    return out


def _edge_band(on_chip: np.ndarray, width: np.ndarray) -> np.ndarray:
    # On-chip pixels within ``width`` pixels (chessboard distance) of off-chip pixels.
    band = np.zeros_like(on_chip)
    for b in np.flatnonzero(~on_chip.all(axis=(1, 2))):
        w = int(width[b])
        off = ~on_chip[b : b + 1]
        band[b] = on_chip[b] & _box_any(_box_any(off, w, 1), w, 2)[0]
    return band


def add_template_noise(template_model: np.ndarray, cond: Conditions, rng: np.random.Generator):
    """Noisy template canvases and their variance from noiseless ones (nJy, nJy^2), (n, H, W) float32."""
    var_t = np.clip(template_model, 0, None) * cond.gain_template[:, None, None].astype(np.float32) + (
        cond.sky_sigma_template**2
    )[:, None, None].astype(np.float32)
    noise = rng.standard_normal(template_model.shape, dtype=np.float32)
    # Correlated noise of a warped coadd: smooth the white noise and restore its per-pixel
    # variance (the variance plane stays the per-pixel variance).
    for level, sel in smoothing_groups(cond.template_noise_smoothing):
        smoothed = ndimage.gaussian_filter(noise[sel], sigma=(0, level, level), mode="wrap")
        gain = np.sqrt((smoothing_taps(level) ** 2).sum())
        noise[sel] = smoothed / gain
    return template_model + np.sqrt(var_t) * noise, var_t


def observe(
    scene: Scene,
    cond: Conditions,
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    crop: tuple[int, int, int, int] | None = None,
    on_chip: np.ndarray | None = None,
    template_covered: np.ndarray | None = None,
    noise_objects: dict | None = None,
    template: tuple[np.ndarray, np.ndarray] | None = None,
    detection_threshold: float = DETECTION_THRESHOLD,
) -> Observation:
    """Render, add noise, saturate, PSF-match, subtract and mask.

    Parameters
    ----------
    scene : `Scene`
        Everything on the canvases (labelled objects already scaled).
    cond : `Conditions`
        One entry per canvas.
    shape : `tuple` [`int`, `int`]
        Canvas shape (H, W).
    rng : `numpy.random.Generator`
    crop : `tuple` [`int`, `int`, `int`, `int`], optional
        ``(y0, x0, height, width)`` of the region returned; the margin around it
        lets the PSF-matching convolution and the neighbours' light be right.
    on_chip : `numpy.ndarray` of `bool`, (n, H, W), optional
        Pixels on the detector; others are NO_DATA (NaN) in every image.
    template_covered : `numpy.ndarray` of `bool`, (n, H, W), optional
        Pixels where the template has data.
    noise_objects : `dict`, optional
        Noise-fluctuation objects: ``keys`` (a `Scene` with a unit PSF bump per
        object, ``obj`` numbering the rows), and arrays ``canvas``, ``x``, ``y``,
        ``snr`` (target matched-filter S/N) and ``unit`` (S/N of the unit bump,
        from `measure_objects`); the noise is conditioned to reach ``snr`` at
        ``(x, y)``.
    template : `tuple` [`numpy.ndarray`, `numpy.ndarray`], optional
        A template already observed, ``(image, variance)`` canvases (n, H, W):
        the same coadd reused for many visits. The scene's template side is then
        ignored.
    detection_threshold : `float`
        S/N of the DETECTED planes.
    """
    science_model, template_model, mask_s, mask_t, mask_d = render_models(
        scene, cond, shape, with_template=template is None
    )
    # Noise: sky + read noise and the sources' Poisson noise (Gaussian at these counts).
    var_s = np.clip(science_model, 0, None) * cond.gain_science[:, None, None].astype(np.float32) + (
        cond.sky_sigma_science**2
    )[:, None, None].astype(np.float32)
    science = science_model + np.sqrt(var_s) * rng.standard_normal(science_model.shape, dtype=np.float32)
    del science_model
    if template is None:
        template, var_t = add_template_noise(template_model, cond, rng)
    else:
        template, var_t = (np.array(a, dtype=np.float32) for a in template)
    del template_model
    saturate(science, cond.saturation, mask_s, rng)

    # PSF matching and subtraction.
    kernel_hat = kernel_fourier(cond, shape)
    kernel, k2_hat = kernel_real(cond, shape)
    sum_k2 = (kernel.astype(np.float64) ** 2).sum(axis=(1, 2))
    mode = cond.convolve_science
    if template_covered is not None and not template_covered.all():
        template_in = np.where(template_covered, template, 0.0).astype(np.float32)
        var_t_in = np.where(template_covered, var_t, 0.0).astype(np.float32)
    else:
        template_covered = None
        template_in, var_t_in = template, var_t
    matched = irfft(rfft(_select(mode, science, template_in)) * kernel_hat, shape)
    difference = _select(mode, matched - template_in, science - matched).astype(np.float32, copy=False)
    del matched
    # A decorrelated difference is white: its variance plane is the plain sum of the two
    # images', and the kernel-convolved variance is only needed for the others.
    dec = cond.decorrelate > 0
    if dec.all():
        var_d = (var_s + var_t_in).astype(np.float32, copy=False)
    else:
        matched_var = irfft(rfft(_select(mode, var_s, var_t_in)) * k2_hat, shape)
        var_d = _select(mode, matched_var + var_t, var_s + matched_var).astype(np.float32, copy=False)
        del matched_var
        var_d[dec] = var_s[dec] + var_t_in[dec]
    if dec.any():
        # Whiten the difference.
        sel = np.flatnonzero(dec)
        difference[sel] = irfft(rfft(difference[sel]) * decorrelation_fourier(cond, shape)[sel], shape)
    sigma_d = sky_sigma_of_difference(cond, sum_k2)

    # Pixels whose matched template used missing template data are not valid.
    diff_invalid = None
    if template_covered is not None:
        reach = irfft(
            rfft((~template_covered).astype(np.float32)) * rfft(embed_kernels(np.abs(kernel), shape)), shape
        )
        diff_invalid = ~template_covered | (np.where(mode[:, None, None], 0.0, reach) > 1e-3)

    if noise_objects is not None and len(noise_objects["canvas"]):
        _condition_noise(noise_objects, cond, shape, science, template, difference, sigma_d)

    # Detection planes (positive on every image, negative on the difference).
    det = _detect(science, cond.psf_science, cond.sky_sigma_science)
    grow_s = np.ceil(2.4 * cond.psf_science.sigma).astype(int)
    _set(mask_s, _grow(det > detection_threshold, grow_s), "DETECTED")
    det = _detect(template_in, cond.psf_template, cond.sky_sigma_template)
    grow_t = np.ceil(2.4 * cond.psf_template.sigma).astype(int)
    _set(mask_t, _grow(det > detection_threshold, grow_t), "DETECTED")
    psf_d = cond.psf_difference
    det = _detect(
        difference if diff_invalid is None else np.where(diff_invalid, 0, difference), psf_d, sigma_d
    )
    grow_d = np.ceil(2.4 * psf_d.sigma).astype(int)
    _set(mask_d, _grow(det > detection_threshold, grow_d), "DETECTED")
    _set(mask_d, _grow(det < -detection_threshold, grow_d), "DETECTED_NEGATIVE")
    del det
    band = None
    if on_chip is not None and not on_chip.all():
        band = _edge_band(on_chip, np.ceil(1.5 * cond.psf_science.fwhm).astype(int))

    images = [science, template, difference, var_s, var_t, var_d]
    masks = [mask_s, mask_t, mask_d]
    extra = [template_covered, diff_invalid, on_chip, band]
    if crop is not None:
        y0, x0, h, w = crop
        images = [a[:, y0 : y0 + h, x0 : x0 + w] for a in images]
        masks = [a[:, y0 : y0 + h, x0 : x0 + w] for a in masks]
        extra = [None if a is None else a[:, y0 : y0 + h, x0 : x0 + w] for a in extra]
    mask_s, mask_t, mask_d = masks
    covered, diff_invalid, on_chip, band = extra
    # The difference inherits the bad-pixel planes of both inputs.
    inherit = ~(MASK_BIT["DETECTED"] | MASK_BIT["DETECTED_NEGATIVE"])
    mask_d |= (mask_s | mask_t) & inherit
    if covered is not None:
        _set(mask_t, ~covered, "NO_DATA")
        _set(mask_d, diff_invalid, "NO_DATA")
    if on_chip is not None:
        off = ~on_chip
        for m in masks:
            m[off] = MASK_BIT["NO_DATA"]
            _set(m, band, "EDGE")
    for i, m in enumerate(masks):
        nodata = (m & MASK_BIT["NO_DATA"]) != 0
        if nodata.any():
            images[i][nodata] = np.nan
            images[i + 3][nodata] = np.nan
    return Observation(*images[:3], *images[3:], *masks, sky_sigma_difference=sigma_d)


def _select(mode: np.ndarray, a, b):
    # Per-canvas choice between two arrays, without a copy when every canvas agrees.
    if mode.all():
        return a
    if not mode.any():
        return b
    return np.where(mode[:, None, None], a, b)


def _set(mask: np.ndarray, where: np.ndarray, plane: str) -> None:
    np.bitwise_or(mask, MASK_BIT[plane], out=mask, where=where)


def local_canvas_size(cond: Conditions, minimum: int = 64) -> int:
    """Side of a canvas large enough to measure or render one object alone under ``cond`` (pixels)."""
    reach = 0.7 * float(np.max(cond.psf_matched.extent)) + 2.5 * float(
        np.max(np.concatenate([cond.psf_science.fwhm, cond.psf_template.fwhm]))
    )
    return scipy.fft.next_fast_len(max(minimum, int(2 * reach) + 8), real=True)


def _condition_noise(objects, cond, shape, science, template, difference, sigma_d):
    # Constrained realisation: add the conditional mean of the noise given that the
    # difference's matched filter reaches the target S/N at the object (for white
    # noise it is a PSF-shaped bump), keeping the realised fluctuations around it.
    # The bump is made on a small canvas of its own and added in place.
    canvas = np.asarray(objects["canvas"])
    k = len(canvas)
    x = np.asarray(objects["x"], dtype=float)
    y = np.asarray(objects["y"], dtype=float)
    psf_d = cond.psf_difference.take(canvas)
    now, _, _, _ = psf_matched_filter(difference, canvas, x, y, psf_d, sigma_d[canvas])
    unit = np.asarray(objects["unit"], dtype=float)
    amp = (np.asarray(objects["snr"], dtype=float) - now) / np.where(unit == 0, np.inf, unit)
    sub = cond.take(canvas)
    size = local_canvas_size(sub)
    shift_x = size // 2 - np.floor(x + 0.5)
    shift_y = size // 2 - np.floor(y + 0.5)
    keys = objects["keys"].relocate(np.arange(k), shift_x, shift_y)
    keys.scale_objects(amp)
    sci_b, tmpl_b, *_ = render_models(keys, sub, (size, size), with_artifacts=False)
    diff_b = noiseless_difference(sci_b, tmpl_b, sub)
    x0 = (-shift_x).astype(int)
    y0 = (-shift_y).astype(int)
    add_patches(science, canvas, y0, x0, sci_b)
    add_patches(template, canvas, y0, x0, tmpl_b)
    add_patches(difference, canvas, y0, x0, diff_b)
