# This file is part of meas_rbnet.
"""A series of detector-sized visits of the same field: the data a sequence pipeline sees.

The pointing is fixed (so artifacts at a fixed pixel also sit at a fixed sky
position), the static field and the template are the same in every visit
(one coadd, observed once), and each visit has its own seeing, sky, time and
unlabelled artifacts (cosmic rays differ from visit to visit). Objects behave
as described in `lsst.meas.rbnet.sim.sequences` (their pieces are shared through
`lsst.meas.rbnet.sim.objects`); every visit's source table
lists every object (forced measurements), with its stable ``diaObjectId``.
"""

__all__ = ["simulate_visit_series"]

import numpy as np

from .artifacts import add_background_artifacts
from .conditions import with_templates
from .detector import (
    BAND_FILTERS,
    SimulatedVisit,
    SkyModel,
    draw_pointing,
    local_size,
    make_wcs,
    place_apart,
    source_table,
    to_visit,
    visit_metadata,
)
from .imaging import add_template_noise, render_models, sample_conditions
from .objects import draw_objects, object_components, rubin_cadence
from .scene import Scene
from .stamps import class_counts


def simulate_visit_series(
    n_visits: int,
    seed: int,
    shape=(512, 512),
    n_objects: int = 100,
    *,
    real_fraction: float = 0.5,
    class_fractions: dict | None = None,
    fwhm_range=(1.5, 6.0),
    snr_range=(3.0, 1000.0),
    first_visit: int | None = None,
    detector: int = 0,
    band: str = "r",
    pixel_scale: float = 0.2,
    ra: float | None = None,
    dec: float | None = None,
    rotation: float | None = None,
    start_mjd: float = 61041.0,
    density_factor: float = 1.0,
    background_artifacts: bool = True,
    min_separation: float = 30.0,
    template_coverage: float = 0.0,
) -> list[SimulatedVisit]:
    """Simulate ``n_visits`` visits of one detector observing the same objects.

    Parameters
    ----------
    n_visits : `int`
    seed : `int`
        The same arguments give identical output.
    shape : `tuple` [`int`, `int`]
        Detector (height, width), pixels.
    n_objects : `int`
        Labelled objects (rows of every visit's source table).
    real_fraction, class_fractions, fwhm_range, snr_range
        As for `lsst.meas.rbnet.sim.sequences.simulate_sequences` (S/N is each
        object's peak S/N).
    first_visit : `int`, optional
        Visit id of the first visit (then +1 per visit); ``2026010100000 + 1000 * seed`` by default.
    detector, band, pixel_scale, ra, dec, rotation
        As for `lsst.meas.rbnet.sim.visit.simulate_visit` (one pointing for all visits).
    start_mjd : `float`
        The series starts within a year after this MJD.
    density_factor, background_artifacts, min_separation, template_coverage
        As for `lsst.meas.rbnet.sim.visit.simulate_visit`.

    Returns
    -------
    visits : `list` [`SimulatedVisit`]
        In time order. Source tables add ``diaObjectId`` (int64, stable),
        ``kind`` and ``present`` (the object's signal is in this visit).
    """
    if n_visits < 1:
        raise ValueError(f"n_visits must be >= 1, got {n_visits}.")
    if band not in BAND_FILTERS:
        raise ValueError(f"band must be one of {sorted(BAND_FILTERS)}, got {band!r}.")
    height, width = int(shape[0]), int(shape[1])
    rng = np.random.default_rng([seed, 0x5E1E5])
    ra, dec, rotation = draw_pointing(rng, ra, dec, rotation)
    first_visit = 2026010100000 + 1000 * seed if first_visit is None else int(first_visit)
    wcs = make_wcs((height, width), pixel_scale, ra, dec, rotation)

    # Per-visit conditions with one template for the whole series.
    cond_v = sample_conditions(rng, n_visits, fwhm_range=fwhm_range)
    tmpl = sample_conditions(rng, 1, fwhm_range=fwhm_range)
    idx = np.zeros(n_visits, int)
    cond_v = with_templates(cond_v, tmpl, idx)
    times = rubin_cadence(rng, n_visits, start_mjd + rng.uniform(0, 365))

    counts = class_counts(n_objects, class_fractions, real_fraction)
    classes = rng.permutation(np.repeat(np.array(list(counts), dtype="U32"), list(counts.values())))
    size = local_size(cond_v)
    objs = draw_objects(rng, classes, size, size // 2, [times] * n_objects, snr_range)
    frame_visit = np.tile(np.arange(n_visits), n_objects)
    cond_f = cond_v.take(frame_visit)
    static_local = Scene()
    parts = object_components(
        rng,
        objs,
        [times] * n_objects,
        np.full(n_objects, n_visits),
        cond_f,
        (size, size),
        snr_range,
        static_local,
    )

    fwhm_max = float(np.max(np.concatenate([cond_v.psf_science.fwhm, cond_v.psf_template.fwhm])))
    sky = SkyModel.build(rng, tmpl, (height, width), pixel_scale, density_factor, False, fwhm_max=fwhm_max)
    margin = sky.margin
    # Detector positions: whole-pixel shifts of the local positions (keeps pixel-level artifacts on pixels).
    px, py = place_apart(rng, n_objects, height, width, min_separation, border=3.0)
    dx = np.round(px + margin - objs.x)
    dy = np.round(py + margin - objs.y)
    p = objs.params
    for i in np.flatnonzero(classes == "edge"):
        side, b = p["side"][i], p["boundary"][i]
        chip = (margin, margin + width - 1, margin, margin + height - 1)[side]
        if side < 2:
            dx[i] = chip - b
        else:
            dy[i] = chip - b
    gx = objs.x + dx
    gy = objs.y + dy
    static = Scene()
    static.extend(sky.scene)
    static.extend(
        static_local.replicate(np.arange(n_objects), dx=dx, dy=dy, new_canvas=np.zeros(n_objects, int))
    )
    _, tmpl_model, *_ = render_models(static, tmpl, sky.canvas_shape, with_artifacts=False)
    template = add_template_noise(tmpl_model, tmpl, rng)
    del tmpl_model
    covered = sky.template_covered(rng, template_coverage)

    noise = parts["noise"]
    visits = []
    object_ids = np.arange(1, n_objects + 1, dtype=np.int64) + np.int64(seed) * 10_000_000
    for v in range(n_visits):
        frames = np.arange(n_objects) * n_visits + v
        scene = Scene()
        scene.extend(static)
        # Frame f = object i, visit v: move its components to the detector canvas.
        mapping = np.full(n_objects * n_visits, -1)
        mapping[frames] = np.arange(n_objects)
        scene.extend(parts["per_frame"].replicate(frames, dx=dx, dy=dy, new_canvas=np.zeros(n_objects, int)))
        if background_artifacts:
            add_background_artifacts(scene, rng, 1, *sky.canvas_shape, cond_v.sky_sigma_science[v : v + 1])
        noise_objects = None
        if noise is not None and np.isin(noise["canvas"], frames).any():
            rows = np.flatnonzero(np.isin(noise["canvas"], frames))
            obj_of_row = mapping[noise["canvas"][rows]]
            keys = noise["keys"].take_objects(rows)
            keys = keys.replicate(
                noise["canvas"][rows],
                dx=dx[obj_of_row],
                dy=dy[obj_of_row],
                new_canvas=np.zeros(len(rows), int),
            )
            noise_objects = {
                "keys": keys,
                "canvas": np.zeros(len(rows), int),
                "x": gx[obj_of_row],
                "y": gy[obj_of_row],
                "snr": noise["snr"][rows],
                "unit": noise["unit"][rows],
            }
        cond1 = cond_v.take([v])
        obs = sky.observe(
            scene, cond1, rng, template_covered=covered, template=template, noise_objects=noise_objects
        )
        meta = visit_metadata(
            cond1,
            obs,
            visit=first_visit + v,
            detector=detector,
            mjd=float(times[v]),
            band=band,
            pixel_scale=pixel_scale,
            wcs=wcs,
            seed=seed,
        )
        snr_signed = parts["frame_snr"][frames]
        area = cond1.psf_difference.effective_area()[0]
        truth_flux = snr_signed * obs.sky_sigma_difference[0] * np.sqrt(area)
        truth_x = gx - margin
        truth_y = gy - margin
        snr = np.abs(snr_signed)
        table = source_table(rng, obs, cond1, meta, classes, truth_x, truth_y, snr, truth_flux)
        table.add_column(object_ids, name="diaObjectId", index=1)
        table.add_column(objs.kinds.astype(str), name="kind", index=table.colnames.index("source_class") + 1)
        table["present"] = parts["present"][frames]
        visits.append(to_visit(obs, cond1, table, meta))
    return visits
