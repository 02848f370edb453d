# This file is part of meas_rbnet.
"""Detector-sized simulated visits: science, template and difference images with a source table.

A visit is one canvas holding the whole detector plus a margin (the template
is fetched with a border, as Rubin's ``GetTemplateTask`` does, so the
PSF-matched template is valid up to the detector edge). Labelled objects of
every class are placed on it with a minimum separation; each is scaled to its
target S/N on a small canvas of its own, then everything is rendered and
observed together by `lsst.meas.rbnet.sim.imaging.observe`. The data types and
the pieces shared with a series of visits live in `lsst.meas.rbnet.sim.detector`
(re-exported here).
"""

__all__ = [
    "BAND_FILTERS",
    "SimImage",
    "VisitMetadata",
    "SimulatedVisit",
    "simulate_visit",
    "make_wcs",
    "source_ids",
    "scale_labelled",
    "add_visit_objects",
]

import numpy as np

from .detector import (
    BAND_FILTERS,
    SimImage,
    SimulatedVisit,
    SkyModel,
    VisitMetadata,
    draw_pointing,
    local_size,
    make_wcs,
    place_apart,
    source_ids,
    source_table,
    to_visit,
    visit_metadata,
)
from .imaging import (
    Conditions,
    difference_sky_sigma,
    measure_objects,
    sample_conditions,
)
from .labelled import CONDITIONED, add_labelled, amplitude_factors, sample_noise_snr, sample_snr
from .scene import Scene
from .stamps import class_counts


def _positions(rng, classes, height, width, min_separation):
    # Chip coordinates of the labelled objects; edge objects sit 0-6 pixels inside a chip edge.
    n = len(classes)
    x, y = place_apart(rng, n, height, width, min_separation, border=3.0)
    side = rng.integers(0, 4, n)
    depth = rng.uniform(0.0, 6.0, n)
    boundary = np.select([side == 0, side == 1, side == 2], [0, width - 1, 0], height - 1).astype(float)
    edge = classes == "edge"
    x = np.where(edge & (side == 0), depth, x)
    x = np.where(edge & (side == 1), width - 1 - depth, x)
    y = np.where(edge & (side == 2), depth, y)
    y = np.where(edge & (side == 3), height - 1 - depth, y)
    return x, y, {"side": side, "boundary": boundary}


def scale_labelled(
    rng,
    labelled: Scene,
    noise_scene: Scene,
    classes,
    info,
    cond1: Conditions,
    snr_range,
    target_snr=None,
    leader=None,
):
    """Scale the labelled objects of one canvas to their target S/N.

    Each object is measured alone on a small canvas of its own with the
    canvas' conditions ``cond1`` (length 1). Objects that lie on another
    object's artifact (several detections along one satellite trail, ghost
    or bad column) have no components of their own: ``leader[j]`` names the
    object whose components they share, they are measured on a copy of them
    and take the leader's amplitude.

    Returns
    -------
    snr, flux : `numpy.ndarray`
        True |S/N| and signed PSF flux of each object in the difference.
    noise_objects : `dict` or `None`
        For `lsst.meas.rbnet.sim.imaging.observe` (objects on canvas 0).
    """
    k = len(classes)
    leader = np.arange(k) if leader is None else np.asarray(leader)
    tx, ty = info["x"], info["y"]
    size = local_size(cond1)
    shift_x = size // 2 - np.floor(tx + 0.5)
    shift_y = size // 2 - np.floor(ty + 0.5)
    cond_k = cond1.take(np.zeros(k, int))
    measured = Scene()
    measured.extend(labelled.select(lambda t: t["obj"] >= 0))
    followers = np.flatnonzero(leader != np.arange(k))
    for j in followers:
        copy = labelled.select(lambda t, lead=leader[j]: t["obj"] == lead)
        for table in copy.tables().values():
            table["obj"][:] = j
        measured.extend(copy)
    local = measured.relocate(np.arange(k), shift_x, shift_y)
    unit_snr, unit_flux, unit_peak = measure_objects(
        local, cond_k, (size, size), np.arange(k), tx + shift_x, ty + shift_y
    )
    mode = info["mode"]
    target = sample_snr(rng, k, snr_range) if target_snr is None else np.asarray(target_snr, dtype=float)
    factor = amplitude_factors(classes, mode, unit_snr, unit_peak, np.full(k, cond1.saturation[0]), target)
    factor = factor[leader]
    labelled.scale_objects(factor)
    snr = np.abs(unit_snr) * factor
    flux = unit_flux * factor
    noise_rows = np.flatnonzero(mode == CONDITIONED)
    noise_objects = None
    if len(noise_rows):
        bumps = noise_scene.take_objects(noise_rows)
        kn = len(noise_rows)
        local = bumps.relocate(np.arange(kn), shift_x[noise_rows], shift_y[noise_rows])
        unit, _, _ = measure_objects(
            local,
            cond1.take(np.zeros(kn, int)),
            (size, size),
            np.arange(kn),
            tx[noise_rows] + shift_x[noise_rows],
            ty[noise_rows] + shift_y[noise_rows],
            search_radius=0.0,
        )
        if target_snr is None:
            noise_snr = sample_noise_snr(rng, kn, snr_range)
        else:
            noise_snr = np.abs(np.asarray(target_snr, dtype=float)[noise_rows])
        noise_snr = noise_snr * info["snr_sign"][noise_rows]
        noise_objects = {
            "keys": bumps,
            "canvas": np.zeros(kn, int),
            "x": tx[noise_rows],
            "y": ty[noise_rows],
            "snr": noise_snr,
            "unit": unit,
        }
        snr[noise_rows] = np.abs(noise_snr)
        area = cond1.psf_difference.effective_area()[0]
        flux[noise_rows] = noise_snr * difference_sky_sigma(cond1)[0] * np.sqrt(area)
    return snr, flux, noise_objects


#: Artifact classes whose detections share one physical artifact in a visit, and how
#: many detections one artifact carries at most.
_SHARED = {"satellite_trail": 10, "ghost": 5, "bad_column": 5}


def add_visit_objects(
    rng,
    labelled: Scene,
    noise_scene: Scene,
    classes,
    x,
    y,
    cond1: Conditions,
    canvas_shape,
    edge_geometry,
    chip_box,
):
    """Add labelled objects to a detector canvas; detections of a class in `_SHARED` share artifacts.

    Parameters
    ----------
    x, y : `numpy.ndarray`
        Proposed canvas positions; followers are moved onto their leader's artifact.
    chip_box : `tuple` [`float`, `float`, `float`, `float`]
        ``(x0, y0, x1, y1)`` canvas coordinates of the detector's first and last pixels.

    Returns
    -------
    info : `dict`
        As `lsst.meas.rbnet.sim.labelled.add_labelled`, for every object.
    leader : `numpy.ndarray` of `int`
    """
    classes = np.asarray(classes)
    k = len(classes)
    leader = np.arange(k)
    for name, per in _SHARED.items():
        members = np.flatnonzero(classes == name)
        if len(members) <= 1:
            continue
        n_groups = int(np.ceil(len(members) / per))
        groups = np.array_split(rng.permutation(members), n_groups)
        for g in groups:
            leader[g] = g[0]
    leads = np.flatnonzero(leader == np.arange(k))
    sub_geometry = {key: np.asarray(v)[leads] for key, v in edge_geometry.items()}
    info_lead = add_labelled(
        labelled,
        noise_scene,
        rng,
        classes[leads],
        np.zeros(len(leads), int),
        x[leads],
        y[leads],
        cond1,
        obj=leads,
        canvas_height=canvas_shape[0],
        edge_geometry=sub_geometry,
    )
    info = {key: np.zeros(k, dtype=np.asarray(v).dtype) for key, v in info_lead.items()}
    for key, v in info_lead.items():
        info[key][leads] = v
    info["x"] = np.array(x, dtype=float)
    info["y"] = np.array(y, dtype=float)
    info["x"][leads] = info_lead["x"]
    info["y"][leads] = info_lead["y"]
    followers = np.flatnonzero(leader != np.arange(k))
    info["snr_sign"][followers] = 1.0
    x0, y0, x1, y1 = chip_box
    tables = labelled.tables()
    for j in followers:
        lead = leader[j]
        name = classes[j]
        if name == "satellite_trail":
            t = tables["streak"]
            row = np.flatnonzero(t["obj"] == lead)[0]
            u = np.array([np.cos(t["theta"][row]), np.sin(t["theta"][row])])
            # A point of the trail inside the detector.
            for _ in range(50):
                s = rng.uniform(-1.5, 1.5) * max(x1 - x0, y1 - y0)
                px, py = t["x"][row] + s * u[0], t["y"][row] + s * u[1]
                if x0 <= px <= x1 and y0 <= py <= y1:
                    break
            else:
                px, py = t["x"][row], t["y"][row]
        elif name == "ghost":
            t = tables["ghost"]
            row = np.flatnonzero(t["obj"] == lead)[0]
            for _ in range(50):
                r = rng.uniform(t["r_in"][row], t["r_out"][row])
                phi = rng.uniform(0, 2 * np.pi)
                px, py = t["x"][row] + r * np.cos(phi), t["y"][row] + r * np.sin(phi)
                if x0 <= px <= x1 and y0 <= py <= y1:
                    break
            else:
                px, py = info["x"][lead], info["y"][lead]
        else:
            t = tables["column"]
            rows = np.flatnonzero(t["obj"] == lead)
            # The shared column runs over the whole detector.
            t["y0"][rows] = -1e6
            t["y1"][rows] = 1e6
            t["decay"][rows] = 0.0
            px, py = t["x"][rows[0]], rng.uniform(y0, y1)
        info["x"][j], info["y"][j] = px, py
    return info, leader


def simulate_visit(
    seed: int,
    shape=(1024, 1024),
    *,
    n_sources: int = 300,
    real_fraction: float = 0.5,
    class_fractions: dict | None = None,
    fwhm_science: float | None = None,
    fwhm_template: float | None = None,
    fwhm_range=(1.5, 6.0),
    snr_range=(3.0, 1000.0),
    visit: int | None = None,
    detector: int = 0,
    mjd: float | None = None,
    band: str = "r",
    pixel_scale: float = 0.2,
    ra: float | None = None,
    dec: float | None = None,
    rotation: float | None = None,
    template_coverage: float = 0.0,
    density_factor: float = 1.0,
    background_artifacts: bool = True,
    min_separation: float = 25.0,
) -> SimulatedVisit:
    """Simulate one detector of one visit.

    Parameters
    ----------
    seed : `int`
        Seed; the same arguments give identical output.
    shape : `tuple` [`int`, `int`]
        Detector (height, width) in pixels (4096 x 4096 for an LSSTCam science detector).
    n_sources : `int`
        Number of labelled objects (table rows).
    real_fraction, class_fractions
        Class mix, as for `lsst.meas.rbnet.sim.stamps.simulate_stamps`.
    fwhm_science, fwhm_template : `float`, optional
        Seeing FWHM (pixels); drawn from ``fwhm_range`` by default.
    snr_range : `tuple` [`float`, `float`]
        Range of the true PSF-optimal S/N of the labelled objects.
    visit, detector : `int`
        Data ID values; ``visit`` defaults to ``2026010100000 + seed``.
    mjd : `float`, optional
        Mid-exposure MJD; drawn in 2026 by default.
    band : `str`
        One of `BAND_FILTERS`.
    pixel_scale : `float`
        Arcseconds per pixel.
    ra, dec, rotation : `float`, optional
        Pointing of the detector centre and rotation (degrees); drawn by default.
    template_coverage : `float`
        Fraction of the detector where the template has no data (NO_DATA in the
        template and the difference), cut off by a straight line.
    density_factor : `float`
        Multiplies the density of field stars and galaxies.
    background_artifacts : `bool`
        Add unlabelled cosmic rays, hot pixels, bad columns, satellites and
        ghosts at their natural rates.
    min_separation : `float`
        Minimum distance between labelled objects (pixels) when it fits.
    """
    if band not in BAND_FILTERS:
        raise ValueError(f"band must be one of {sorted(BAND_FILTERS)}, got {band!r}.")
    height, width = (int(shape[0]), int(shape[1]))
    if height < 32 or width < 32:
        raise ValueError(f"shape must be at least 32 x 32 pixels, got {shape}.")
    if not 0 <= template_coverage <= 1:
        raise ValueError(f"template_coverage must be in [0, 1], got {template_coverage}.")
    rng = np.random.default_rng([seed, 0x71517])
    visit = 2026010100000 + seed if visit is None else int(visit)
    mjd = float(61041.0 + rng.uniform(0, 365)) if mjd is None else float(mjd)
    ra, dec, rotation = draw_pointing(rng, ra, dec, rotation)
    cond = sample_conditions(
        rng, 1, fwhm_range=fwhm_range, fwhm_science=fwhm_science, fwhm_template=fwhm_template
    )

    counts = class_counts(n_sources, class_fractions, real_fraction)
    classes = rng.permutation(np.repeat(np.array(list(counts), dtype="U32"), list(counts.values())))
    x, y, edge_geometry = _positions(rng, classes, height, width, min_separation)
    sky = SkyModel.build(rng, cond, (height, width), pixel_scale, density_factor, background_artifacts)
    margin = sky.margin
    edge_geometry["boundary"] = edge_geometry["boundary"] + margin
    labelled = Scene()
    noise_scene = Scene()
    chip_box = (margin + 2.0, margin + 2.0, margin + width - 3.0, margin + height - 3.0)
    info, leader = add_visit_objects(
        rng,
        labelled,
        noise_scene,
        classes,
        x + margin,
        y + margin,
        cond,
        sky.canvas_shape,
        edge_geometry,
        chip_box,
    )
    snr, flux, noise_objects = scale_labelled(
        rng, labelled, noise_scene, classes, info, cond, snr_range, leader=leader
    )
    covered = sky.template_covered(rng, template_coverage)
    scene = Scene()
    scene.extend(sky.scene)
    scene.extend(labelled)
    obs = sky.observe(scene, cond, rng, template_covered=covered, noise_objects=noise_objects)
    truth_x = info["x"] - margin
    truth_y = info["y"] - margin
    metadata = visit_metadata(
        cond,
        obs,
        visit=visit,
        detector=detector,
        mjd=mjd,
        band=band,
        pixel_scale=pixel_scale,
        wcs=make_wcs((height, width), pixel_scale, ra, dec, rotation),
        seed=seed,
    )
    sources = source_table(rng, obs, cond, metadata, classes, truth_x, truth_y, snr, flux)
    sources["host_flux"] = info["host_flux"]
    sources["host_flux"].unit = "nJy"
    return to_visit(obs, cond, sources, metadata)
