# This file is part of meas_rbnet.
"""Labelled triplet stamps for training and tests, fast.

Each example is a small scene of its own: a labelled object at the stamp
centre, a random static field around it (stars and galaxies from the same
number counts as the detector-sized simulator), unlabelled artifacts at their
natural rates, its own seeing, sky and template depth. The scene is rendered
on a canvas larger than the stamp (so PSF matching and neighbours' light are
right at the stamp borders), observed with `lsst.meas.rbnet.sim.imaging.observe`
and cropped. Thousands of examples are processed per numpy call.
"""

__all__ = ["StampSet", "simulate_stamps", "class_counts"]

import dataclasses

import numpy as np
import scipy.fft
from astropy.table import Table

from ..constants import ARTIFACT_CLASSES, BOGUS, CHANNEL_ORDER, MASK_PLANES, REAL, REAL_CLASSES
from .artifacts import add_background_artifacts
from .imaging import measure_objects, observe, sample_conditions
from .labelled import CONDITIONED, add_labelled, amplitude_factors, sample_noise_snr, sample_snr
from .scene import Scene, add_cutout_fields
from .surveys import SurveyPreset, get_survey, sample_survey_conditions

#: Examples simulated per numpy batch. Part of the random stream: changing it changes the output.
_CHUNK = 256

#: Fraction of ``edge`` examples whose chip boundary makes a corner.
_CORNER_FRACTION = 0.15


@dataclasses.dataclass
class StampSet:
    """Simulated labelled triplets.

    Attributes
    ----------
    stamps : `numpy.ndarray`, (n, 3, S, S) float32
        Pixel values in nJy, channels in `CHANNEL_ORDER` (difference, science,
        template); NaN where the pixel is NO_DATA (off the chip, no template).
    masks : `numpy.ndarray`, (n, 3, S, S) int32, or `None`
        Mask planes (bits of `MASK_PLANES`) of each channel.
    table : `astropy.table.Table`
        One row per stamp with the truth (see `simulate_stamps`).
    variances : `numpy.ndarray`, (n, 3, S, S) float32, or `None`
        Variance planes (nJy^2), when asked for.
    """

    stamps: np.ndarray
    masks: np.ndarray | None
    table: Table
    variances: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.table)

    def crop(self, size: int) -> None:
        """Crop every plane to ``[:size, :size]`` in place (an even alert cutout size).

        Simulate one pixel larger than an even ``size`` (Rubin's 30x30) and crop:
        the source stays at pixel ``(size // 2, size // 2)``, as in the survey's cutouts.
        """
        for name in ("stamps", "masks", "variances"):
            plane = getattr(self, name)
            if plane is not None:
                setattr(self, name, np.ascontiguousarray(plane[:, :, :size, :size]))
        self.table.meta["stamp_size"] = size

    def __iter__(self):
        # Allows ``stamps, masks, table = simulate_stamps(...)``.
        return iter((self.stamps, self.masks, self.table))


def class_counts(n: int, class_fractions: dict | None = None, real_fraction: float = 0.5) -> dict[str, int]:
    """Number of examples of each class (largest-remainder rounding of the fractions).

    Parameters
    ----------
    n : `int`
    class_fractions : `dict` [`str`, `float`], optional
        Relative weight of each class (missing classes get none); by default
        ``real_fraction`` is shared equally by `REAL_CLASSES` and the rest by
        `ARTIFACT_CLASSES`.
    real_fraction : `float`
        Used only without ``class_fractions``.
    """
    if class_fractions is None:
        if not 0 <= real_fraction <= 1:
            raise ValueError(f"real_fraction must be in [0, 1], got {real_fraction}.")
        weights = {c: real_fraction / len(REAL_CLASSES) for c in REAL_CLASSES}
        weights.update({c: (1 - real_fraction) / len(ARTIFACT_CLASSES) for c in ARTIFACT_CLASSES})
    else:
        unknown = set(class_fractions) - set(REAL_CLASSES) - set(ARTIFACT_CLASSES)
        if unknown:
            raise ValueError(
                f"class_fractions has unknown classes {sorted(unknown)}; expected names from "
                f"{REAL_CLASSES + ARTIFACT_CLASSES}."
            )
        if any(v < 0 for v in class_fractions.values()) or sum(class_fractions.values()) <= 0:
            raise ValueError("class_fractions must be non-negative with a positive sum.")
        weights = {c: float(class_fractions.get(c, 0.0)) for c in REAL_CLASSES + ARTIFACT_CLASSES}
    names = list(weights)
    p = np.array([weights[c] for c in names]) / sum(weights.values())
    raw = p * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return dict(zip(names, counts.tolist()))


def _edge_geometry(rng, classes, tx, ty, size, stamp_size, edge_fraction):
    # Chip boundaries for ``edge`` objects (the detection 0-6 pixels inside the chip)
    # and for a fraction of other objects (part of the stamp off the chip).
    m = len(classes)
    is_edge = classes == "edge"
    near = is_edge | (rng.random(m) < edge_fraction)
    side = rng.integers(0, 4, m)
    depth = np.where(is_edge, rng.uniform(0.0, 6.0, m), rng.uniform(2.0, stamp_size / 2 - 1, m))
    coord = np.where(side < 2, tx, ty)
    boundary = np.where(side % 2 == 0, np.floor(coord + 0.5 - depth), np.floor(coord + 0.5 + depth))
    on_chip = None
    if near.any():
        on_chip = np.ones((m, size, size), bool)
        grid = np.arange(size)
        corner = near & (rng.random(m) < _CORNER_FRACTION)
        side2 = np.where(side < 2, 2 + rng.integers(0, 2, m), rng.integers(0, 2, m))
        depth2 = rng.uniform(2.0, stamp_size / 2 - 1, m)
        coord2 = np.where(side2 < 2, tx, ty)
        boundary2 = np.where(side2 % 2 == 0, np.floor(coord2 + 0.5 - depth2), np.floor(coord2 + 0.5 + depth2))
        for sides, bounds, use in ((side, boundary, near), (side2, boundary2, corner)):
            for s in range(4):
                sel = np.flatnonzero(use & (sides == s))
                if not len(sel):
                    continue
                b = bounds[sel][:, None]
                off = (grid[None, :] < b) if s % 2 == 0 else (grid[None, :] > b)
                if s < 2:
                    on_chip[sel] &= ~off[:, None, :]
                else:
                    on_chip[sel] &= ~off[:, :, None]
    return {"side": side, "boundary": boundary}, on_chip, near


def _template_coverage(rng, m, size, centre, stamp_size, fraction):
    # Stamps whose template lacks data beyond a random line (sometimes everywhere).
    lacking = rng.random(m) < fraction
    if not lacking.any():
        return None, lacking
    covered = np.ones((m, size, size), bool)
    grid = np.arange(size) - centre
    for i in np.flatnonzero(lacking):
        if rng.random() < 0.3:
            covered[i] = False
            continue
        phi = rng.uniform(0, 2 * np.pi)
        s = rng.uniform(-0.5, 0.5) * stamp_size
        covered[i] = (grid[None, :] * np.cos(phi) + grid[:, None] * np.sin(phi)) < s
    return covered, lacking


def simulate_stamps(
    n: int,
    stamp_size: int = 51,
    seed: int = 0,
    *,
    class_fractions: dict | None = None,
    real_fraction: float = 0.5,
    fwhm_range=(1.5, 6.0),
    snr_range=(3.0, 1000.0),
    edge_fraction: float = 0.03,
    no_template_fraction: float = 0.0,
    pixel_scale: float = 0.2,
    with_masks: bool = True,
    with_variance: bool = False,
    id_offset: int = 0,
    progress=None,
    survey: str | SurveyPreset | None = None,
    nan_block_fraction: float | None = None,
) -> StampSet:
    """Simulate ``n`` labelled triplet stamps.

    Parameters
    ----------
    n : `int`
        Number of stamps.
    stamp_size : `int`
        Side of the stamps (pixels, odd).
    seed : `int`
        Seed of the random stream; the same arguments give identical output.
    class_fractions : `dict` [`str`, `float`], optional
        Relative weight of each class of `REAL_CLASSES` and `ARTIFACT_CLASSES`
        (classes not named get none). Overrides ``real_fraction``.
    real_fraction : `float`
        Fraction of real examples, shared equally by the real classes (the rest
        equally by the artifact classes).
    fwhm_range : `tuple` [`float`, `float`]
        Seeing FWHM range (pixels) of science and template images.
    snr_range : `tuple` [`float`, `float`]
        Range of the PSF-optimal S/N of the labelled objects in the difference image.
    edge_fraction : `float`
        Fraction of non-``edge`` examples placed near a chip boundary (part of the stamp off the chip).
    no_template_fraction : `float`
        Fraction of examples whose template lacks data over part or all of the stamp.
    pixel_scale : `float`
        Arcseconds per pixel (sets galaxy sizes and source densities).
    with_masks, with_variance : `bool`
        Return mask / variance planes.
    id_offset : `int`
        First ``id``.
    progress : callable, optional
        Called as ``progress(done, n)`` after each batch.
    survey : `str` or `SurveyPreset`, optional
        A survey preset (``"rubin"``, ``"ztf"``, ``"decam"``; see
        `lsst.meas.rbnet.sim.surveys`): its pixel scale, seeing, noise, template
        depth and noise correlation, saturation, subtraction quality, sky left in
        the cutouts, units, edge and missing-pixel rates and its convention for
        negative detections replace ``fwhm_range``, ``pixel_scale`` and
        ``edge_fraction``. ``stamp_size`` stays the caller's (the preset's alert
        cutout size is ``SurveyPreset.cutout_size``). Without a preset the
        conditions are the broad "generic" ones (Rubin-like pixels, nJy,
        background-subtracted).
    nan_block_fraction : `float`, optional
        Fraction of stamps given a block of missing (NaN, NO_DATA) pixels: a
        chip gap or masked band across all three planes, or a masked rectangle
        in the science or template (and so in the difference). Default: the
        preset's, or 0.04 without one.

    Returns
    -------
    stamp_set : `StampSet`
        ``table`` columns: ``id`` (int64), ``label`` (int8, 1 real / 0 bogus),
        ``source_class``, ``snr`` (float64, the true PSF-optimal |S/N| of the
        object in the difference against its background noise), ``flux`` (nJy,
        signed PSF flux of the object in the noiseless difference),
        ``fwhm_science``, ``fwhm_template`` (pixels), ``x_offset``, ``y_offset``
        (true detection position minus the centre pixel, pixels), ``sky_noise``
        (science background noise per pixel, nJy), ``sky_noise_template``,
        ``sky_noise_difference`` (nJy), ``off_chip_fraction``,
        ``template_missing_fraction``, ``near_edge`` (bool), ``convolved_science``
        (bool: the template was the sharper image), ``host_flux`` (nJy),
        ``detection_sign`` (int8, +1 / -1: a positive or negative detection in
        the difference), ``nan_block`` (bool: a block of missing pixels was cut),
        ``sky_level`` (background left in the science cutout, survey units).
        ``table.meta`` records ``survey``, ``pixel_scale`` and ``units``.
    """
    if not isinstance(stamp_size, (int, np.integer)) or stamp_size < 3 or stamp_size % 2 != 1:
        raise ValueError(f"stamp_size must be an odd integer >= 3, got {stamp_size!r}.")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    preset = None if survey is None else get_survey(survey)
    if preset is not None:
        fwhm_range = preset.fwhm_range
        pixel_scale = preset.pixel_scale
        edge_fraction = preset.edge_fraction
    if nan_block_fraction is None:
        nan_block_fraction = preset.nan_block_fraction if preset is not None else 0.04
    if not 0 <= nan_block_fraction <= 1:
        raise ValueError(f"nan_block_fraction must be in [0, 1], got {nan_block_fraction}.")
    counts = class_counts(n, class_fractions, real_fraction)
    order_rng = np.random.default_rng([seed, 0x5EED])
    classes_all = order_rng.permutation(np.repeat(np.array(list(counts), dtype="U32"), list(counts.values())))

    stamps = np.empty((n, 3, stamp_size, stamp_size), np.float32)
    masks = np.empty((n, 3, stamp_size, stamp_size), np.int32) if with_masks else None
    variances = np.empty((n, 3, stamp_size, stamp_size), np.float32) if with_variance else None
    settings = _ChunkSettings(
        stamp_size, fwhm_range, snr_range, edge_fraction, no_template_fraction, pixel_scale, preset
    )
    columns = {
        name: []
        for name in (
            "snr",
            "flux",
            "fwhm_science",
            "fwhm_template",
            "x_offset",
            "y_offset",
            "sky_noise",
            "sky_noise_template",
            "sky_noise_difference",
            "off_chip_fraction",
            "template_missing_fraction",
            "near_edge",
            "convolved_science",
            "host_flux",
            "detection_sign",
            "nan_block",
            "sky_level",
        )
    }
    for chunk_index, start in enumerate(range(0, n, _CHUNK)):
        classes = classes_all[start : start + _CHUNK]
        rng = np.random.default_rng([seed, chunk_index])
        obs, truth = _simulate_chunk(rng, classes, settings)
        stop = start + len(classes)
        chunk = np.stack([obs.difference, obs.science, obs.template], axis=1)
        chunk_masks = np.stack([obs.mask_difference, obs.mask_science, obs.mask_template], axis=1)
        chunk_var = (
            np.stack([obs.variance_difference, obs.variance_science, obs.variance_template], axis=1)
            if variances is not None
            else None
        )
        truth["nan_block"] = _cut_nan_blocks(rng, chunk, chunk_masks, chunk_var, nan_block_fraction)
        truth["sky_level"] = _present(rng, chunk, chunk_masks, chunk_var, truth["detection_sign"], preset)
        stamps[start:stop] = chunk
        if masks is not None:
            masks[start:stop] = chunk_masks
        if variances is not None:
            variances[start:stop] = chunk_var
        for name in columns:
            columns[name].append(truth[name])
        if progress is not None:
            progress(stop, n)
    table = Table()
    table["id"] = np.arange(id_offset, id_offset + n, dtype=np.int64)
    is_real = np.isin(classes_all, list(REAL_CLASSES))
    table["label"] = np.where(is_real, REAL, BOGUS).astype(np.int8)
    table["source_class"] = classes_all.astype(str)
    for name, parts in columns.items():
        table[name] = np.concatenate(parts) if parts else np.zeros(0)
    units = preset.units if preset is not None else "nJy"
    if preset is not None and preset.nJy_per_unit != 1.0:
        for name in ("flux", "host_flux", "sky_noise", "sky_noise_template", "sky_noise_difference"):
            table[name] = table[name] / preset.nJy_per_unit
    table["detection_sign"] = table["detection_sign"].astype(np.int8)
    table["nan_block"] = table["nan_block"].astype(bool)
    table["snr"].description = "True PSF-optimal |S/N| of the object in the difference image"
    table["flux"].description = "PSF flux of the object in the noiseless difference image (signed)"
    table["flux"].unit = units
    for name in ("sky_noise", "sky_noise_template", "sky_noise_difference", "host_flux", "sky_level"):
        table[name].unit = units
    for name in ("fwhm_science", "fwhm_template", "x_offset", "y_offset"):
        table[name].unit = "pix"
    table.meta.update(
        {
            "channels": list(CHANNEL_ORDER),
            "stamp_size": stamp_size,
            "seed": seed,
            "pixel_scale": pixel_scale,
            "units": units,
            "survey": preset.name if preset is not None else "generic",
        }
    )
    return StampSet(stamps=stamps, masks=masks, table=table, variances=variances)


@dataclasses.dataclass(frozen=True)
class _ChunkSettings:
    # What every batch of `simulate_stamps` shares: the stamp side and the settings of the draws
    # (with a preset, its ``fwhm_range``, ``edge_fraction`` and ``pixel_scale``).
    stamp_size: int
    fwhm_range: tuple
    snr_range: tuple
    edge_fraction: float
    no_template_fraction: float
    pixel_scale: float
    preset: SurveyPreset | None

    @property
    def size(self) -> int:
        # Side of the canvas the stamp is cropped from: room for PSF matching and neighbours' light.
        margin = int(np.ceil(1.5 * self.fwhm_range[1])) + 2
        return scipy.fft.next_fast_len(self.stamp_size + 2 * margin, real=True)

    @property
    def y0(self) -> int:
        # First row (and column) of the crop.
        return (self.size - self.stamp_size) // 2

    @property
    def centre(self) -> int:
        # The stamp's centre pixel on the canvas.
        return self.y0 + self.stamp_size // 2

    @property
    def crop(self) -> tuple[int, int, int, int]:
        # The stamp's region of the canvas, as `observe` takes it: (y0, x0, height, width).
        return (self.y0, self.y0, self.stamp_size, self.stamp_size)


def _simulate_chunk(rng, classes, settings: _ChunkSettings):
    stamp_size, size, centre = settings.stamp_size, settings.size, settings.centre
    snr_range, preset = settings.snr_range, settings.preset
    m = len(classes)
    shape = (size, size)
    if preset is None:
        cond = sample_conditions(rng, m, fwhm_range=settings.fwhm_range)
    else:
        cond = sample_survey_conditions(rng, m, preset)
    # Detection positions: the centre pixel plus a sub-pixel offset.
    tx = centre + rng.uniform(-0.5, 0.5, m)
    ty = centre + rng.uniform(-0.5, 0.5, m)
    edge_geometry, on_chip, near = _edge_geometry(
        rng, classes, tx, ty, size, stamp_size, settings.edge_fraction
    )
    covered, lacking = _template_coverage(rng, m, size, centre, stamp_size, settings.no_template_fraction)

    scene = Scene()
    add_cutout_fields(scene, rng, m, size, settings.pixel_scale)
    add_background_artifacts(scene, rng, m, size, size, cond.sky_sigma_science)
    keys_and_companions = Scene()
    noise_keys = Scene()
    canvas = np.arange(m)
    info = add_labelled(
        keys_and_companions,
        noise_keys,
        rng,
        classes,
        canvas,
        tx,
        ty,
        cond,
        canvas_height=size,
        edge_geometry=edge_geometry,
    )
    tx, ty = info["x"], info["y"]

    # Scale each labelled object to its target S/N.
    keys = keys_and_companions.select(lambda t: t["obj"] >= 0)
    unit_snr, unit_flux, unit_peak = measure_objects(keys, cond, shape, canvas, tx, ty)
    mode = info["mode"]
    factor = amplitude_factors(
        classes, mode, unit_snr, unit_peak, cond.saturation, sample_snr(rng, m, snr_range)
    )
    keys_and_companions.scale_objects(factor)
    scene.extend(keys_and_companions)
    snr = np.abs(unit_snr) * factor
    flux = unit_flux * factor

    noise_rows = np.flatnonzero(mode == CONDITIONED)
    noise_objects = _noise_objects(
        rng, noise_keys, noise_rows, cond, shape, tx, ty, info["snr_sign"], snr_range
    )
    if noise_objects is not None:
        snr[noise_rows] = np.abs(noise_objects["snr"])

    obs = observe(
        scene,
        cond,
        shape,
        rng,
        crop=settings.crop,
        on_chip=on_chip,
        template_covered=covered,
        noise_objects=noise_objects,
    )
    if len(noise_rows):
        # PSF flux of a fluctuation of |S/N| = snr: snr * sigma / sqrt(sum P^2).
        area = cond.psf_difference.take(noise_rows).effective_area()
        flux[noise_rows] = noise_objects["snr"] * obs.sky_sigma_difference[noise_rows] * np.sqrt(area)

    nan_s = np.isnan(obs.science).mean(axis=(1, 2))
    nan_t = np.isnan(obs.template).mean(axis=(1, 2))
    truth = {
        "snr": snr,
        "flux": flux,
        "fwhm_science": cond.psf_science.fwhm,
        "fwhm_template": cond.psf_template.fwhm,
        "x_offset": tx - centre,
        "y_offset": ty - centre,
        "sky_noise": cond.sky_sigma_science,
        "sky_noise_template": cond.sky_sigma_template,
        "sky_noise_difference": obs.sky_sigma_difference,
        "off_chip_fraction": nan_s,
        "template_missing_fraction": np.clip(nan_t - nan_s, 0, 1),
        "near_edge": near,
        "convolved_science": cond.convolve_science,
        "host_flux": info["host_flux"],
        "detection_sign": np.where(info["snr_sign"] < 0, -1, 1),
    }
    return obs, truth


def _noise_objects(rng, noise_keys, rows, cond, shape, tx, ty, snr_sign, snr_range):
    # The noise fluctuations of the labelled objects ``rows`` (each on its own canvas), in the
    # form `observe` conditions the noise with; None when there are none. Their S/N is drawn
    # here, with the sign of their detection.
    if not len(rows):
        return None
    noise_snr = sample_noise_snr(rng, len(rows), snr_range) * snr_sign[rows]
    bumps = noise_keys.take_objects(rows)
    unit, _, _ = measure_objects(bumps, cond, shape, rows, tx[rows], ty[rows], search_radius=0.0)
    return {"keys": bumps, "canvas": rows, "x": tx[rows], "y": ty[rows], "snr": noise_snr, "unit": unit}


def _cut_nan_blocks(rng, stamps, masks, variances, fraction):
    # Blocks of missing pixels, as real cutouts have them: a band across every plane
    # (chip gap, masked amplifier region; sometimes over the source), or a rectangle
    # missing in the science or the template, and so in the difference. In place;
    # returns which stamps were cut (m,) bool.
    # Blocks keep off the central 5x5 pixels: a detection whose own pixels are
    # missing is not made by a pipeline (saturated cores and chip edges, which
    # are, come from their own classes).
    m, _, h, w = stamps.shape
    cut = rng.random(m) < fraction
    centre = np.zeros((h, w), bool)
    centre[h // 2 - 2 : h // 2 + 3, w // 2 - 2 : w // 2 + 3] = True
    for i in np.flatnonzero(cut):
        block = np.zeros((h, w), bool)
        if rng.random() < 0.6:
            width = int(rng.integers(2, max(3, h // 3)))
            start = int(rng.integers(0, h - width))
            if start <= h // 2 + 2 and start + width >= h // 2 - 2:
                start = (h // 2 + 3) if rng.random() < 0.5 else max(0, h // 2 - 2 - width)
            if rng.random() < 0.5:
                block[start : start + width, :] = True
            else:
                block[:, start : start + width] = True
            planes = [0, 1, 2]
        else:
            bh, bw = (int(rng.integers(3, max(4, s // 2))) for s in (h, w))
            y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            block[y0 : y0 + bh, x0 : x0 + bw] = True
            planes = [0, 1] if rng.random() < 0.5 else [0, 2]
        block &= ~centre
        for c in planes:
            stamps[i, c][block] = np.nan
            if variances is not None:
                variances[i, c][block] = np.nan
            masks[i, c][block] = 1 << MASK_PLANES["NO_DATA"]
    return cut


def _present(rng, stamps, masks, variances, detection_sign, preset):
    # The survey's presentation of its cutouts: the sky left in the science and
    # template planes, and the sign of negative detections. In place; returns the
    # science sky level (m,).
    m = len(stamps)
    if preset is None:
        return np.zeros(m)
    if preset.saturated_as_nan and masks is not None:
        # Saturated pixels (and their bleed trails) are blanked in every plane.
        sat = (masks[:, 1] & (1 << MASK_PLANES["SAT"])) != 0
        if sat.any():
            stamps[np.broadcast_to(sat[:, None], stamps.shape)] = np.nan
            for c in range(3):
                masks[:, c][sat] |= 1 << MASK_PLANES["NO_DATA"]
    if preset.nJy_per_unit != 1.0:
        stamps /= np.float32(preset.nJy_per_unit)
        if variances is not None:
            variances /= np.float32(preset.nJy_per_unit**2)
    lo, hi = preset.sky_level_range
    sky = np.zeros(m) if hi <= 0 else np.exp(rng.uniform(np.log(max(lo, 1e-3)), np.log(hi), m))
    if hi > 0:
        # The template's own background, close to the science one (ZTF scales its references).
        sky_t = sky * np.exp(rng.normal(0, 0.1, m))
        stamps[:, 1] += sky[:, None, None].astype(np.float32)
        stamps[:, 2] += sky_t[:, None, None].astype(np.float32)
    if preset.negative_difference_flipped:
        negative = detection_sign < 0
        stamps[negative, 0] *= -1
    return sky
