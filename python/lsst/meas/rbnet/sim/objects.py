# This file is part of meas_rbnet.
"""Objects that behave in time: the pieces shared by cutout sequences
(`lsst.meas.rbnet.sim.sequences`) and detector-sized visit series (`lsst.meas.rbnet.sim.series`).

Each object has a *kind* (`KINDS`, described in `lsst.meas.rbnet.sim.sequences`);
`rubin_cadence` draws its visit times, `draw_objects` its parameters and
`object_components` its components in every visit, scaled to their target S/N,
on canvases of their own.
"""

__all__ = [
    "KINDS",
    "BEHAVIOUR",
    "rubin_cadence",
    "Objects",
    "draw_objects",
    "object_components",
]

import dataclasses

import numpy as np

from ..constants import ARTIFACT_CLASSES
from . import artifacts
from .imaging import difference_sky_sigma, measure_objects
from .labelled import psf_peak_fraction, sample_noise_snr, sample_snr, saturation_excess
from .scene import Scene, add_galaxy

#: Kinds of behaviour of each class (a class with several kinds draws one at random).
KINDS: dict[str, tuple[str, ...]] = {
    "real_new": ("transient",),
    "real_on_galaxy": ("transient_on_galaxy", "agn"),
    "real_brighter": ("periodic_variable",),
    "real_fainter": ("eclipsing_binary",),
    "real_moving": ("proper_motion",),
    "cosmic_ray": ("once",),
    "satellite_trail": ("once",),
    "noise": ("once",),
    "hot_pixel": ("fixed_pixel",),
    "bad_column": ("fixed_pixel",),
    "ghost": ("fixed_pixel",),
    "edge": ("fixed_pixel",),
    "dipole": ("every_visit",),
    "bright_star_residual": ("every_visit",),
    "saturated_star": ("every_visit",),
}

#: Alias: the behaviour of each artifact class.
BEHAVIOUR = {c: KINDS[c][0] for c in ARTIFACT_CLASSES}


def rubin_cadence(rng: np.random.Generator, n: int, start: float) -> np.ndarray:
    """Sorted MJDs of ``n`` visits: same-night pairs, gaps of days, ~200-day seasons."""
    gaps = np.where(rng.random(n) < 0.3, rng.uniform(0.015, 0.05, n), rng.exponential(4.0, n) + 0.5)
    gaps[0] = 0.0
    times = start + np.cumsum(gaps)
    # Seasons: observable for 200 days out of 365.
    season = np.floor((times - start) / 200.0)
    return np.sort(times + season * 165.0)


@dataclasses.dataclass
class Objects:
    """Per-object parameters of a batch (arrays of length n_objects)."""

    classes: np.ndarray
    kinds: np.ndarray
    x: np.ndarray  # position on the object's canvas (pixels)
    y: np.ndarray
    target: np.ndarray  # peak |S/N| (reference visit)
    params: dict  # kind-specific arrays


def _light_curve(kind, p, i, t):
    # Difference flux (in units of the peak amplitude) of object i at times t.
    if kind in ("transient", "transient_on_galaxy"):
        dt = t - p["t0"][i]
        shape = np.exp(-np.clip(dt, -50 * p["rise"][i], None) / p["decline"][i]) / (
            1 + np.exp(-np.clip(dt / p["rise"][i], -50, 50))
        )
        grid = np.linspace(-5 * p["rise"][i], 5 * p["decline"][i], 2001)
        peak = np.max(np.exp(-grid / p["decline"][i]) / (1 + np.exp(-grid / p["rise"][i])))
        return shape / peak
    if kind == "periodic_variable":
        phase = np.mod((t - p["t0"][i]) / p["period"][i], 1.0)
        if p["sawtooth"][i]:
            # RR Lyrae-like: fast rise, slow decline, zero mean.
            value = np.where(phase < 0.15, phase / 0.15, 1 - (phase - 0.15) / 0.85)
            return 2 * value - 1
        return np.sin(2 * np.pi * phase)
    if kind == "eclipsing_binary":
        phase = np.mod((t - p["t0"][i]) / p["period"][i], 1.0)
        width = p["width"][i]
        primary = np.exp(-0.5 * (np.minimum(phase, 1 - phase) / (0.35 * width)) ** 2)
        secondary = p["secondary"][i] * np.exp(-0.5 * ((phase - 0.5) / (0.35 * width)) ** 2)
        return -(primary + secondary)
    if kind == "agn":
        return p["drw"][i]
    raise ValueError(kind)


def draw_objects(rng, classes, size, centre, times_by_object, snr_range):
    """Draw the kind, position, target S/N and kind-specific parameters of each object.

    Parameters
    ----------
    rng : `numpy.random.Generator`
    classes : `numpy.ndarray` of `str`
        Class of each object.
    size : `int`
        Side of each object's canvas (pixels).
    centre : `int`
        Pixel near which each object sits on its canvas.
    times_by_object : `list` [`numpy.ndarray`]
        MJDs of each object's visits.
    snr_range : `tuple` [`float`, `float`]

    Returns
    -------
    objects : `Objects`
    """
    n = len(classes)
    kinds = np.array([KINDS[c][rng.integers(len(KINDS[c]))] for c in classes], dtype="U32")
    x = centre + rng.uniform(-0.5, 0.5, n)
    y = centre + rng.uniform(-0.5, 0.5, n)
    x = np.where(np.isin(classes, ["hot_pixel", "bad_column"]), np.floor(x + 0.5), x)
    y = np.where(classes == "hot_pixel", np.floor(y + 0.5), y)
    target = sample_snr(rng, n, snr_range)
    target = np.where(classes == "ghost", np.minimum(target, 60.0), target)
    first = np.array([t[0] for t in times_by_object])
    last = np.array([t[-1] for t in times_by_object])
    p = {
        "t0": rng.uniform(first - 20.0, np.maximum(last, first + 1.0)),
        "rise": np.exp(rng.uniform(np.log(2.0), np.log(20.0), n)),
        "decline": np.exp(rng.uniform(np.log(15.0), np.log(100.0), n)),
        "period": np.where(
            kinds == "eclipsing_binary",
            np.exp(rng.uniform(np.log(0.5), np.log(10.0), n)),
            np.exp(rng.uniform(np.log(0.2), np.log(50.0), n)),
        ),
        "sawtooth": rng.random(n) < 0.5,
        "width": rng.uniform(0.04, 0.12, n),
        "secondary": rng.uniform(0.0, 0.6, n),
        # Template (mean) flux of variables in units of their amplitude.
        "base": np.exp(rng.uniform(np.log(1.2), np.log(10.0), n)),
        "mu": np.exp(rng.uniform(np.log(0.5), np.log(5.0), n)) / 365.25,  # pixels per day
        "mu_angle": rng.uniform(0, 2 * np.pi, n),
        "t_ref": first - rng.uniform(100.0, 1000.0, n),
        "presence": rng.uniform(0.3, 1.0, n),
        "side": rng.integers(0, 4, n),
        "depth": rng.uniform(0.0, 6.0, n),
        "over": saturation_excess(rng, n),
        "dcr_angle": rng.uniform(0, 2 * np.pi, n),
    }
    drw = []
    for i, t in enumerate(times_by_object):
        tau = np.exp(rng.uniform(np.log(30.0), np.log(400.0)))
        value = np.empty(len(t))
        value[0] = rng.normal()
        for j in range(1, len(t)):
            a = np.exp(-(t[j] - t[j - 1]) / tau)
            value[j] = a * value[j - 1] + np.sqrt(1 - a * a) * rng.normal()
        drw.append(value / max(np.max(np.abs(value)), 1e-9))
    p["drw"] = drw
    return Objects(classes, kinds, x, y, target, p)


def _presence(rng, objs: Objects, times_by_object):
    # Which visits show each object's signal.
    out = []
    for i, t in enumerate(times_by_object):
        n = len(t)
        kind = objs.kinds[i]
        if kind == "once":
            present = np.zeros(n, bool)
            present[rng.integers(n)] = True
            if n > 1 and rng.random() < 0.1:
                present[rng.integers(n)] = True
        elif kind == "fixed_pixel":
            present = rng.random(n) < objs.params["presence"][i]
            present[rng.integers(n)] = True
        else:
            present = np.ones(n, bool)
        out.append(present)
    return out


def object_components(rng, objs, times_by_object, n_visits, cond, shape, snr_range, static):
    """Components of every object in every visit, scaled, on canvases of their own.

    Visit ``v`` of object ``i`` is "frame" ``first_frame[i] + v``, a canvas of
    ``shape`` whose conditions are ``cond[frame]``; object ``i`` sits at
    ``(objs.x[i], objs.y[i])`` on each of its frames. ``static`` (canvases =
    objects) receives what does not change between visits (host galaxies,
    template fluxes, stars near ghosts).

    Returns
    -------
    parts : `dict`
        ``per_frame`` (`Scene`, science side, ``obj`` = frame), ``present``,
        ``frame_snr`` (true signed S/N per frame), ``noise`` (frames, sign,
        unit response, target S/N of noise fluctuations, or `None`),
        ``edges`` (list of (frames, side, boundary) of chip edges) and
        ``first_frame``.
    """
    size = shape[0]
    n_obj = len(objs.classes)
    frame_obj = np.repeat(np.arange(n_obj), n_visits)
    n_frames = len(frame_obj)
    present = np.concatenate(_presence(rng, objs, times_by_object))
    first_frame = np.concatenate([[0], np.cumsum(n_visits)[:-1]]).astype(int)
    ref_cond = cond.take(first_frame)
    # Flux of a point source at S/N 1 in each object's first visit.
    unit_flux = difference_sky_sigma(ref_cond) * np.sqrt(ref_cond.psf_difference.effective_area())
    per_frame = Scene()  # science side of each visit, obj = frame index
    template_keys = Scene()  # template side of the object, for measuring only (obj = frame index)
    noise_frames, noise_sign = [], []
    p = objs.params
    frames_of = [np.arange(first_frame[i], first_frame[i] + n_visits[i]) for i in range(n_obj)]
    scale_by_frame = np.zeros(n_obj, bool)  # True: each appearance scaled on its own
    measure_scale = np.zeros(n_obj, bool)  # True: scale from a measurement of the first present frame
    for i in range(n_obj):
        kind, cls = objs.kinds[i], objs.classes[i]
        f = frames_of[i]
        t = times_by_object[i]
        xi, yi = objs.x[i], objs.y[i]
        if kind in ("transient", "transient_on_galaxy", "periodic_variable", "eclipsing_binary", "agn"):
            amp = objs.target[i] * unit_flux[i]
            lc = _light_curve(kind, p, i, t)
            per_frame.add("point", f, obj=f, x=xi, y=yi, flux_s=amp * lc, flux_t=0.0)
            if kind in ("periodic_variable", "eclipsing_binary", "agn"):
                base = p["base"][i] * amp
                static.add("point", i, x=xi, y=yi, flux_s=base, flux_t=base)
            if kind in ("transient_on_galaxy", "agn"):
                r_e = np.exp(rng.uniform(np.log(1.5), np.log(10.0)))
                host = (
                    np.exp(rng.uniform(np.log(20.0), np.log(2000.0)))
                    * ref_cond.sky_sigma_science[i]
                    * np.sqrt(4 * np.pi * r_e**2)
                )
                off = 0.0 if kind == "agn" else r_e * abs(rng.normal(0, 0.8))
                phi = rng.uniform(0, 2 * np.pi)
                add_galaxy(static, rng, [i], xi - off * np.cos(phi), yi - off * np.sin(phi), host, r_e)
            present[f] = np.abs(lc) > 1e-3
        elif kind == "proper_motion":
            # Unit flux, scaled so that the first visit's dipole reaches the target S/N.
            measure_scale[i] = True
            dt = t - p["t_ref"][i]
            ux, uy = np.cos(p["mu_angle"][i]), np.sin(p["mu_angle"][i])
            per_frame.add(
                "point",
                f,
                obj=f,
                x=xi + p["mu"][i] * dt * ux,
                y=yi + p["mu"][i] * dt * uy,
                flux_s=1.0,
                flux_t=0.0,
            )
            static.add("point", i, obj=i, x=xi, y=yi, flux_s=0.0, flux_t=1.0)
            template_keys.add("point", f, obj=f, x=xi, y=yi, flux_s=0.0, flux_t=1.0)
        elif cls in ("dipole", "bright_star_residual", "saturated_star"):
            shift = np.zeros(len(f))
            eps_x = np.zeros(len(f))
            eps_y = np.zeros(len(f))
            if cls == "dipole":
                # Differential chromatic refraction: along the parallactic angle, amplitude with airmass.
                shift = rng.uniform(0.1, 0.8, len(f))
                angle = p["dcr_angle"][i] + rng.normal(0, 0.5, len(f))
            else:
                angle = np.zeros(len(f))
            if cls == "bright_star_residual":
                eps = rng.uniform(0.02, 0.1, len(f)) * rng.choice([-1.0, 1.0], len(f))
                aniso = rng.uniform(-0.05, 0.05, len(f))
                eps_x, eps_y = eps + aniso, eps - aniso
            star = 1.0
            if cls == "saturated_star":
                star = (
                    p["over"][i] * ref_cond.saturation[i] / psf_peak_fraction(ref_cond, [i], [xi], [yi])[0]
                )
            else:
                measure_scale[i] = True
            per_frame.add(
                "point",
                f,
                obj=f,
                x=xi + shift * np.cos(angle),
                y=yi + shift * np.sin(angle),
                flux_s=star,
                flux_t=0.0,
                psf_fx=1 + eps_x,
                psf_fy=1 + eps_y,
            )
            static.add("point", i, obj=i, x=xi, y=yi, flux_s=0.0, flux_t=star)
            template_keys.add("point", f, obj=f, x=xi, y=yi, flux_s=0.0, flux_t=star)
        elif cls in ("hot_pixel", "bad_column", "ghost", "edge"):
            measure_scale[i] = True
            one = Scene()
            if cls == "hot_pixel":
                artifacts.add_hot_pixel(one, rng, [0], xi, yi, obj=0, template_probability=0.0)
            elif cls == "bad_column":
                artifacts.add_bad_column(one, rng, [0], xi, yi, size, obj=0)
            elif cls == "ghost":
                artifacts.add_ghost(one, rng, [0], xi, yi, obj=0)
                g = one.tables()["ghost"]
                # The bright star whose reflection makes the ghost, a little beyond it.
                r = g["r_out"][0] + rng.uniform(5.0, 40.0)
                phi = rng.uniform(0, 2 * np.pi)
                bright = 300 * ref_cond.sky_sigma_science[i] * np.exp(rng.uniform(0, np.log(30)))
                static.add(
                    "point",
                    i,
                    x=g["x"][0] + r * np.cos(phi),
                    y=g["y"][0] + r * np.sin(phi),
                    flux_s=bright,
                    flux_t=bright,
                )
            else:
                side, depth = p["side"][i], p["depth"][i]
                coord = xi if side < 2 else yi
                boundary = np.floor(coord + 0.5 - depth) if side % 2 == 0 else np.floor(coord + 0.5 + depth)
                p.setdefault("boundary", np.zeros(n_obj))[i] = boundary
                artifacts.add_edge_glow(one, rng, [0], side, boundary, yi if side < 2 else xi, obj=0)
            fp = f[present[f]]
            per_frame.extend(one.replicate(np.zeros(len(fp), int), obj=fp, new_canvas=fp))
        elif kind == "once":
            fp = f[present[f]]
            scale_by_frame[i] = True
            if cls == "cosmic_ray":
                artifacts.add_cosmic_ray(per_frame, rng, fp, xi, yi, obj=fp)
            elif cls == "satellite_trail":
                artifacts.add_satellite_trail(per_frame, rng, fp, xi, yi, obj=fp)
            else:
                noise_frames.extend(fp.tolist())
                noise_sign.extend(np.where(rng.random(len(fp)) < 0.75, 1.0, -1.0).tolist())
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(kind)

    # Amplitudes of artifacts and misbehaving stars: from the S/N of the first present frame.
    first_present = np.array([f[present[f]][0] if present[f].any() else f[0] for f in frames_of])
    need = np.flatnonzero(measure_scale | scale_by_frame)
    if len(need):
        frames_needed = np.concatenate(
            [frames_of[i][present[frames_of[i]]] if scale_by_frame[i] else [first_present[i]] for i in need]
        ).astype(int)
        keys = Scene()
        keys.extend(per_frame.select(lambda tb: np.isin(tb["obj"], frames_needed)))
        keys.extend(template_keys.select(lambda tb: np.isin(tb["obj"], frames_needed)))
        fo = frame_obj[frames_needed]
        unit, _, _ = measure_objects(keys, cond, shape, frames_needed, objs.x[fo], objs.y[fo])
        frame_factor = np.ones(n_frames)
        target = np.where(
            np.isin(objs.classes[fo], ["ghost"]),
            np.minimum(sample_snr(rng, len(fo), snr_range), 60.0),
            sample_snr(rng, len(fo), snr_range),
        )
        target = np.where(scale_by_frame[fo], target, objs.target[fo])
        factor = target / np.maximum(np.abs(unit), 1e-12)
        frame_factor[frames_needed] = factor
        obj_factor = np.ones(n_obj)
        obj_factor[need] = frame_factor[first_present[need]]
        per_frame_factor = np.where(scale_by_frame[frame_obj], frame_factor, obj_factor[frame_obj])
        per_frame.scale_objects(per_frame_factor)
        template_keys.scale_objects(per_frame_factor)
        # The template side of the misbehaving stars scales with them.
        st = static.tables()["point"]
        sel = st["obj"] >= 0
        st["flux_t"][sel] *= obj_factor[st["obj"][sel]]
    static.tables()["point"]["obj"][:] = -1

    static.tables()["point"]["obj"][:] = -1
    edges = []
    for i in np.flatnonzero(objs.classes == "edge"):
        fp = frames_of[i][present[frames_of[i]]]
        edges.append((fp, p["side"][i], p["boundary"][i]))
    noise = None
    if noise_frames:
        nf = np.array(noise_frames, int)
        bumps = Scene()
        fo = frame_obj[nf]
        bumps.add("point", nf, obj=np.arange(len(nf)), x=objs.x[fo], y=objs.y[fo], flux_s=1.0, flux_t=0.0)
        unit, _, _ = measure_objects(bumps, cond, shape, nf, objs.x[fo], objs.y[fo], search_radius=0.0)
        noise = {
            "keys": bumps,
            "canvas": nf,
            "x": objs.x[fo],
            "y": objs.y[fo],
            "snr": sample_noise_snr(rng, len(nf), snr_range) * np.array(noise_sign),
            "unit": unit,
        }
    # True S/N of each object in each frame.
    frame_snr = np.zeros(n_frames)
    keys = Scene()
    keys.extend(per_frame.select(lambda tb: tb["obj"] >= 0))
    keys.extend(template_keys)
    measured = np.unique(np.concatenate([tb["obj"] for tb in keys.tables().values()])).astype(int)
    if len(measured):
        fo = frame_obj[measured]
        snr, _, _ = measure_objects(keys, cond, shape, measured, objs.x[fo], objs.y[fo])
        frame_snr[measured] = snr
    if noise is not None:
        frame_snr[noise["canvas"]] = noise["snr"]
    return {
        "per_frame": per_frame,
        "present": present,
        "frame_snr": frame_snr,
        "noise": noise,
        "edges": edges,
        "first_frame": first_frame,
        "frame_obj": frame_obj,
    }
