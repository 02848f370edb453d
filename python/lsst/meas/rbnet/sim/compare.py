# This file is part of meas_rbnet.
"""Simple per-cutout statistics, to compare simulated triplets with real alert cutouts.

`cutout_statistics` measures, for each cutout of a set, the quantities a
person looks at when judging whether two sets of cutouts "look alike": the
background noise and sky level of each plane, the size of the central source,
how much of each plane is missing, whether the detection is positive or
negative, and how significant it is. `compare_statistics` puts the
distributions of two such tables side by side (``benchmarks/compare_sim_real.py``
uses them on the real development set and on the survey presets).

Numpy only: the functions take plain arrays, no Butler. The statistics are
simple and robust estimators, not photometry: both sets must go through the
same function for the comparison to mean anything.

Conventions: planes are ``(N, H, W)`` arrays of raw pixel values (any units,
NaN where there is no data); the source is expected at pixel
``(H // 2, W // 2)`` (row, column), which is the centre of an odd stamp and of
a Rubin 30x30 alert cutout (and of a simulated 31x31 stamp cropped to
``[:30, :30]``).
"""

__all__ = ["MAD_TO_SIGMA", "FWHM_PER_SIGMA", "cutout_statistics", "compare_statistics", "adaptive_moments"]

import warnings

import numpy as np
from astropy.table import Table

#: Standard deviation of a Gaussian per median absolute deviation.
MAD_TO_SIGMA: float = 1.4826

#: FWHM of a Gaussian per standard deviation, ``2 sqrt(2 ln 2)``.
FWHM_PER_SIGMA: float = 2.0 * np.sqrt(2.0 * np.log(2.0))

_PLANES = ("science", "template", "difference")


def _as_planes(science, template, difference):
    planes = []
    for name, plane in zip(_PLANES, (science, template, difference)):
        a = np.asarray(plane, dtype=np.float64)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"{name}: expected an (N, H, W) or (H, W) array, got shape {np.shape(plane)}.")
        planes.append(a)
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise ValueError(
            "science, template and difference must have the same shape, got "
            + ", ".join(f"{n} {p.shape}" for n, p in zip(_PLANES, planes))
            + "."
        )
    n, h, w = planes[0].shape
    if min(h, w) < 7:
        raise ValueError(f"cutouts must be at least 7x7 pixels, got {h}x{w}.")
    return planes


def _nan_percentile(values: np.ndarray, q, axis: int) -> np.ndarray:
    # np.nanpercentile warns on all-NaN rows; they are expected here (a fully missing plane).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(values, q, axis=axis)


def _robust_location_scale(values: np.ndarray, mask: np.ndarray):
    # Median and 1.4826 MAD per row of ``values`` (n, k) over ``mask`` and finite pixels.
    v = np.where(mask & np.isfinite(values), values, np.nan)
    median = _nan_percentile(v, 50, axis=1)
    mad = _nan_percentile(np.abs(v - median[:, None]), 50, axis=1)
    return median, MAD_TO_SIGMA * mad


def adaptive_moments(
    images: np.ndarray,
    *,
    centre=None,
    radius: float = 8.0,
    initial_sigma: float = 1.5,
    max_shift: float = 2.0,
    n_iter: int = 25,
):
    """Gaussian-weighted adaptive second moments of a source near a known position.

    The weight is a round Gaussian whose width and centre follow the source's
    (the HSM-style "adaptive moments"): for a Gaussian source of width
    ``sigma_s`` weighted by a Gaussian of width ``sigma_w`` the weighted
    moment is ``m = sigma_s^2 sigma_w^2 / (sigma_s^2 + sigma_w^2)``, which is
    inverted at each iteration (as a matrix, so the source may be elliptical);
    ``1/12 pixel^2`` per axis is then removed for the
    pixel's own width, so a pixel-integrated Gaussian of FWHM ``F`` measures
    ``F``. Missing (NaN) pixels have zero weight.

    Parameters
    ----------
    images : `numpy.ndarray`, (N, H, W)
        Background-subtracted images with a positive source near ``centre``.
    centre : `tuple` [`float`, `float`], optional
        (row, column) of the first guess; ``(H // 2, W // 2)`` by default.
    radius : `float`
        Only pixels within this distance (pixels) of ``centre`` are used.
    initial_sigma : `float`
        First weight sigma (pixels).
    max_shift : `float`
        The centroid may move at most this far (pixels) from ``centre``.
    n_iter : `int`
        Iterations.

    Returns
    -------
    sigma : `numpy.ndarray`, (N,)
        Source Gaussian sigma (pixels, root mean of the two axes' variances);
        NaN where the weighted flux is not positive or the moments do not
        converge to a resolved source.
    ellipticity : `numpy.ndarray`, (N,)
        ``|(Cxx - Cyy, 2 Cxy)| / (Cxx + Cyy)`` of the source's covariance ``C``
        (the weight and the pixel width removed). Pixelisation biases it for
        sources narrower than about 2 pixels FWHM (0.1 at 1.5 pixels).
    row, col : `numpy.ndarray`, (N,)
        Weighted centroid (pixels).
    """
    images = np.asarray(images, dtype=np.float64)
    n, h, w = images.shape
    cy, cx = (h // 2, w // 2) if centre is None else centre
    r = int(np.ceil(radius))
    y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 1)
    sub = images[:, y0:y1, x0:x1]
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    valid = inside[None] & np.isfinite(sub)
    data = np.where(valid, sub, 0.0)
    my = np.full(n, float(cy))
    mx = np.full(n, float(cx))
    sw2 = np.full(n, float(initial_sigma) ** 2)
    ok = np.ones(n, bool)
    mxx = myy = mxy = np.zeros(n)
    for _ in range(n_iter):
        dy = yy[None] - my[:, None, None]
        dx = xx[None] - mx[:, None, None]
        wgt = np.exp(-0.5 * (dx**2 + dy**2) / sw2[:, None, None]) * valid
        wi = wgt * data
        flux = wi.sum(axis=(1, 2))
        ok = flux > 0
        safe = np.where(ok, flux, 1.0)
        new_my = my + (wi * dy).sum(axis=(1, 2)) / safe
        new_mx = mx + (wi * dx).sum(axis=(1, 2)) / safe
        # Keep the centroid near the expected position: a neighbour must not capture it.
        shift = np.hypot(new_my - cy, new_mx - cx)
        scale = np.where(shift > max_shift, max_shift / np.maximum(shift, 1e-12), 1.0)
        my = np.where(ok, cy + (new_my - cy) * scale, my)
        mx = np.where(ok, cx + (new_mx - cx) * scale, mx)
        dy = yy[None] - my[:, None, None]
        dx = xx[None] - mx[:, None, None]
        mxx = (wi * dx**2).sum(axis=(1, 2)) / safe
        myy = (wi * dy**2).sum(axis=(1, 2)) / safe
        mxy = (wi * dx * dy).sum(axis=(1, 2)) / safe
        cxx, cyy, cxy, resolved = _deweight(mxx, myy, mxy, sw2, ok)
        s2 = 0.5 * (cxx + cyy)
        # An unresolved answer (the source wider than the weight can fit): widen the weight and retry.
        widest = (radius / 2.0) ** 2
        sw2 = np.where(resolved, np.clip(s2, 0.25, widest), np.minimum(sw2 * 1.5, widest))
    cxx, cyy, cxy, resolved = _deweight(mxx, myy, mxy, sw2, ok)
    # The pixel's own width (a unit box has variance 1/12 per axis).
    cxx, cyy = cxx - 1.0 / 12.0, cyy - 1.0 / 12.0
    s2 = 0.5 * (cxx + cyy)
    # The weight must have followed the source: a weight at its upper limit measured a blend, not a source.
    good = resolved & (cxx > 0) & (cyy > 0) & (sw2 < 0.99 * (radius / 2.0) ** 2)
    sigma = np.sqrt(np.where(good, s2, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        ellipticity = np.where(good, np.hypot(cxx - cyy, 2 * cxy) / (cxx + cyy), np.nan)
    return sigma, ellipticity, my, mx


def _deweight(mxx, myy, mxy, sw2, ok):
    # Covariance C of a Gaussian source whose moments weighted by a round Gaussian of variance sw2
    # are M: M^-1 = C^-1 + I / sw2. Returns C's components and whether C^-1 is positive definite.
    det = mxx * myy - mxy**2
    good = ok & (det > 0) & (mxx > 0)
    det = np.where(good, det, 1.0)
    ixx, iyy, ixy = myy / det - 1.0 / sw2, mxx / det - 1.0 / sw2, -mxy / det
    det_c = ixx * iyy - ixy**2
    # Positive definite with some margin: a source barely narrower than the weight is too noisy to invert.
    good &= (ixx > 0.05 / sw2) & (det_c > 0)
    det_c = np.where(good, det_c, 1.0)
    return (
        np.where(good, iyy / det_c, np.nan),
        np.where(good, ixx / det_c, np.nan),
        np.where(good, -ixy / det_c, np.nan),
        good,
    )


def _lag1_correlation(resid: np.ndarray, use: np.ndarray) -> np.ndarray:
    # Correlation of horizontally and vertically adjacent pixels of ``resid`` (n, h, w),
    # over pairs where both pixels are in ``use``.
    num = np.zeros(len(resid))
    cnt = np.zeros(len(resid))
    for a, b, ua, ub in (
        (resid[:, :, :-1], resid[:, :, 1:], use[:, :, :-1], use[:, :, 1:]),
        (resid[:, :-1, :], resid[:, 1:, :], use[:, :-1, :], use[:, 1:, :]),
    ):
        both = ua & ub
        num += np.where(both, a * b, 0.0).sum(axis=(1, 2))
        cnt += both.sum(axis=(1, 2))
    var_num = np.where(use, resid**2, 0.0).sum(axis=(1, 2))
    var_cnt = use.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (num / cnt) / (var_num / var_cnt)


def cutout_statistics(
    science,
    template,
    difference,
    *,
    exclude_radius: float | None = None,
    peak_radius: float = 2.0,
    fwhm_radius: float | None = None,
    min_fwhm_snr: float = 5.0,
    default_psf_fwhm: float = 3.0,
    peak_threshold: float = 5.0,
) -> Table:
    """Simple statistics of each cutout of a set of triplets.

    Parameters
    ----------
    science, template, difference : `numpy.ndarray`, (N, H, W) or (H, W)
        Raw pixel values in any units (NaN = no data), the source at
        ``(H // 2, W // 2)``. Note the argument order (science, template,
        difference), not the stamps' `~lsst.meas.rbnet.constants.CHANNEL_ORDER`.
    exclude_radius : `float`, optional
        Pixels closer than this to the centre are left out of the noise, sky
        and noise-correlation estimates (so the source does not inflate them);
        ``0.2 * min(H, W)`` by default (6 pixels for 30x30, 12.6 for 63x63).
    peak_radius : `float`
        The peaks are searched within this distance (pixels) of the centre.
    fwhm_radius : `float`, optional
        Radius (pixels) of the pixels used by the FWHM moments; ``min(H, W) / 4``
        by default.
    min_fwhm_snr : `float`
        The FWHM of a plane is NaN when its central peak is below this many
        noise sigma (the moments of a source lost in the noise mean nothing).
    default_psf_fwhm : `float`
        FWHM (pixels) of the Gaussian weight of the PSF-weighted difference flux
        when the science FWHM cannot be measured.
    peak_threshold : `float`
        Threshold (noise sigma) of the peaks counted by ``n_peaks_*``.

    Returns
    -------
    table : `astropy.table.Table`
        One row per cutout. For each plane ``P`` in science, template,
        difference: ``noise_P`` (1.4826 MAD of the pixels beyond
        ``exclude_radius``, plane units), ``sky_P`` (their median),
        ``nan_fraction_P`` (fraction of NaN pixels of the whole cutout) and
        ``noise_corr_P`` (correlation of adjacent pixels' residuals from the
        sky beyond ``exclude_radius``, pixels within 5 sigma: 0 for white
        noise, larger for resampled or coadded images). Then
        ``sky_over_noise_science`` and ``sky_over_noise_template`` (the sky
        level in units of the noise: 0 for background-subtracted cutouts),
        ``noise_ratio_template`` and ``noise_ratio_difference`` (noise of the
        plane over that of the science; unit free), ``fwhm_science`` and
        ``fwhm_difference`` (pixels, adaptive Gaussian moments of the central
        source after subtracting the sky, the difference taken with the sign
        of its detection; NaN when not measurable), ``ellipticity_science``,
        ``science_peak_snr`` and ``template_peak_snr`` (highest pixel above
        the sky within ``peak_radius`` of the centre, in noise sigma),
        ``difference_peak_snr`` (extreme pixel of the difference within
        ``peak_radius``, with the sign of the detection, in noise sigma, so
        positive for a clear detection of either sign),
        ``difference_psf_flux`` (PSF-weighted flux at the centre: a round
        Gaussian of the science FWHM, clipped to 1.5-8 pixels), its
        ``difference_psf_snr``, ``negative`` (bool: the PSF-weighted flux of the
        difference is negative), ``negative_science_minus_template`` (bool: the
        science, less its sky, is fainter than the template at the centre, PSF
        weighted: a fading source whatever the sign convention of the
        difference), ``any_nan`` (bool: some plane has NaN pixels), and
        ``n_peaks_P`` (number of local maxima above ``peak_threshold`` noise
        sigma beyond ``exclude_radius``: the field's stars and galaxies in the
        science and template, residuals of either sign in the difference;
        a measure of crowding and of how clean the subtraction is).
    """
    sci, tmp, dif = _as_planes(science, template, difference)
    n, h, w = sci.shape
    cy, cx = h // 2, w // 2
    if exclude_radius is None:
        exclude_radius = 0.2 * min(h, w)
    if fwhm_radius is None:
        fwhm_radius = min(h, w) / 4.0
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    outer = (r2 >= exclude_radius**2).ravel()
    if not outer.any():
        raise ValueError(f"exclude_radius {exclude_radius} leaves no pixels in a {h}x{w} cutout.")
    near = r2 <= peak_radius**2
    table = Table()
    sky, noise, resid = {}, {}, {}
    for name, plane in zip(_PLANES, (sci, tmp, dif)):
        flat = plane.reshape(n, -1)
        sky[name], noise[name] = _robust_location_scale(flat, outer[None, :])
        resid[name] = plane - sky[name][:, None, None]
        table[f"noise_{name}"] = noise[name]
        table[f"sky_{name}"] = sky[name]
        table[f"nan_fraction_{name}"] = np.isnan(flat).mean(axis=1)
        use = (
            outer.reshape(h, w)[None]
            & np.isfinite(resid[name])
            & (np.abs(resid[name]) < 5 * noise[name][:, None, None])
        )
        table[f"noise_corr_{name}"] = _lag1_correlation(np.nan_to_num(resid[name]), use)
    with np.errstate(invalid="ignore", divide="ignore"):
        table["sky_over_noise_science"] = sky["science"] / noise["science"]
        table["sky_over_noise_template"] = sky["template"] / noise["template"]
        table["noise_ratio_template"] = noise["template"] / noise["science"]
        table["noise_ratio_difference"] = noise["difference"] / noise["science"]

    def peak(name, sign=None):
        vals = resid[name][:, near]
        if sign is not None:
            vals = vals * sign[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return _nanmax(vals) / noise[name]

    science_snr = peak("science")
    table["science_peak_snr"] = science_snr
    table["template_peak_snr"] = peak("template")

    sig_s, ell_s, _, _ = adaptive_moments(resid["science"], radius=fwhm_radius)
    fwhm_s = np.where(science_snr >= min_fwhm_snr, FWHM_PER_SIGMA * sig_s, np.nan)
    table["fwhm_science"] = fwhm_s
    table["ellipticity_science"] = np.where(np.isfinite(fwhm_s), ell_s, np.nan)

    # PSF-weighted centre flux: a round Gaussian of about the seeing, centred on the cutout.
    weight_fwhm = np.clip(np.where(np.isfinite(fwhm_s), fwhm_s, default_psf_fwhm), 1.5, 8.0)
    wsig2 = (weight_fwhm / FWHM_PER_SIGMA) ** 2
    gauss = np.exp(-0.5 * r2[None] / wsig2[:, None, None])

    def psf_flux(image):
        valid = np.isfinite(image)
        wv = np.where(valid, gauss, 0.0)
        sum_w2 = (wv**2).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            f = (wv * np.where(valid, image, 0.0)).sum(axis=(1, 2)) / sum_w2
        # No valid pixel near the centre: no flux, rather than a division by zero.
        return np.where(sum_w2 > 0.1 * (gauss**2).sum(axis=(1, 2)), f, np.nan), sum_w2

    flux_d, sum_w2 = psf_flux(resid["difference"])
    with np.errstate(invalid="ignore", divide="ignore"):
        psf_snr = flux_d * np.sqrt(sum_w2) / noise["difference"]
    sign = np.where(flux_d < 0, -1.0, 1.0)
    table["difference_peak_snr"] = peak("difference", sign)
    sig_d, _, _, _ = adaptive_moments(resid["difference"] * sign[:, None, None], radius=fwhm_radius)
    table["fwhm_difference"] = np.where(
        table["difference_peak_snr"] >= min_fwhm_snr, FWHM_PER_SIGMA * sig_d, np.nan
    )
    table["difference_psf_flux"] = flux_d
    table["difference_psf_snr"] = psf_snr
    table["negative"] = np.isfinite(flux_d) & (flux_d < 0)
    flux_s, _ = psf_flux(resid["science"])
    flux_t, _ = psf_flux(resid["template"])
    table["negative_science_minus_template"] = np.isfinite(flux_s - flux_t) & (flux_s < flux_t)
    table["any_nan"] = np.isnan(sci).any(axis=(1, 2)) | np.isnan(tmp).any(axis=(1, 2)) | np.isnan(dif).any(
        axis=(1, 2)
    )
    far = outer.reshape(h, w)
    for name in _PLANES:
        # The difference's residuals count with either sign.
        with np.errstate(invalid="ignore", divide="ignore"):
            z = resid[name] / noise[name][:, None, None]
        z = np.abs(z) if name == "difference" else z
        table[f"n_peaks_{name}"] = _count_peaks(z, far, peak_threshold)
    return table


def _count_peaks(z: np.ndarray, region: np.ndarray, threshold: float) -> np.ndarray:
    # Local maxima (strictly above their 8 neighbours) of ``z`` (n, h, w) above ``threshold``
    # inside ``region`` (h, w), NaN never a peak.
    z = np.where(np.isfinite(z), z, -np.inf)
    padded = np.pad(z, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    h, w = z.shape[1:]
    is_peak = (z > threshold) & region[None]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                is_peak &= z > padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return is_peak.sum(axis=(1, 2))


def _nanmax(values: np.ndarray) -> np.ndarray:
    # Row-wise maximum ignoring NaN; NaN for an all-NaN row (without numpy's warning).
    filled = np.where(np.isnan(values), -np.inf, values)
    out = filled.max(axis=1)
    return np.where(np.isneginf(out), np.nan, out)


def compare_statistics(real_table: Table, sim_table: Table, *, names=("real", "sim")) -> Table:
    """Distributions of the statistics of two sets of cutouts, side by side.

    Parameters
    ----------
    real_table, sim_table : `astropy.table.Table`
        Outputs of `cutout_statistics` (any columns; those in both are compared).
    names : `tuple` [`str`, `str`]
        Prefixes of the two sets' columns.

    Returns
    -------
    table : `astropy.table.Table`
        One row per statistic (column common to both tables, in the order of
        ``real_table``): ``statistic``, ``kind`` (``"value"`` or ``"flag"``),
        and for each set ``<name>_n`` (finite values), ``<name>_p16``,
        ``<name>_median``, ``<name>_p84`` and ``<name>_mean``. For a flag
        (boolean) column the percentiles are NaN and the mean is the fraction
        of cutouts flagged. ``ratio_median`` is the second set's median over
        the first's (NaN when the first is 0 or either is NaN) and
        ``ratio_mean`` the same for the means.
    """
    a, b = names
    common = [c for c in real_table.colnames if c in sim_table.colnames]
    if not common:
        raise ValueError(
            "The two statistics tables have no column in common: "
            f"{real_table.colnames} vs {sim_table.colnames}."
        )
    rows = {k: [] for k in ("statistic", "kind")}
    for prefix in (a, b):
        for q in ("n", "p16", "median", "p84", "mean"):
            rows[f"{prefix}_{q}"] = []
    for col in common:
        is_flag = np.asarray(real_table[col]).dtype == bool and np.asarray(sim_table[col]).dtype == bool
        rows["statistic"].append(col)
        rows["kind"].append("flag" if is_flag else "value")
        for prefix, tab in ((a, real_table), (b, sim_table)):
            v = np.asarray(tab[col], dtype=np.float64)
            v = v[np.isfinite(v)]
            rows[f"{prefix}_n"].append(len(v))
            if len(v) and not is_flag:
                p16, p50, p84 = np.percentile(v, [16, 50, 84])
            else:
                p16 = p50 = p84 = np.nan
            rows[f"{prefix}_p16"].append(p16)
            rows[f"{prefix}_median"].append(p50)
            rows[f"{prefix}_p84"].append(p84)
            rows[f"{prefix}_mean"].append(float(v.mean()) if len(v) else np.nan)
    out = Table(rows)
    out["statistic"] = out["statistic"].astype(str)
    with np.errstate(invalid="ignore", divide="ignore"):
        for q in ("median", "mean"):
            num = np.asarray(out[f"{b}_{q}"], dtype=np.float64)
            den = np.asarray(out[f"{a}_{q}"], dtype=np.float64)
            out[f"ratio_{q}"] = np.where(den != 0, num / den, np.nan)
    return out
