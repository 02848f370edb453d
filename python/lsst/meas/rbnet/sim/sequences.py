# This file is part of meas_rbnet.
"""The same objects over many visits: cutout sequences and detector-sized visit series.

Every object has a *kind* that says how it behaves in time:

Real (label 1)
    ``transient`` (``real_new``) and ``transient_on_galaxy``
    (``real_on_galaxy``): a supernova-like light curve, rising over 2-20 days
    and fading over 15-100 days, absent from the template.
    ``agn`` (``real_on_galaxy``): a nucleus varying as a damped random walk
    around its template flux (positive and negative differences).
    ``periodic_variable`` (``real_brighter``): a pulsating star (sinusoidal or
    saw-tooth, periods 0.2-50 days) around its template flux.
    ``eclipsing_binary`` (``real_fainter``): a star whose flux dips (negative
    differences) during eclipses lasting 4-12% of its 0.5-10 day period.
    ``proper_motion`` (``real_moving``): a nearby star moving 0.5-5 pixels per
    year away from its template position: a dipole growing with time.
Bogus (label 0)
    ``once`` (``cosmic_ray``, ``satellite_trail``, ``noise``): in one visit
    (rarely two), nothing in the others.
    ``fixed_pixel`` (``hot_pixel``, ``bad_column``, ``ghost`` near a bright
    star, ``edge``): at the same place in a fraction of the visits (those taken
    with the same pointing).
    ``every_visit`` (``dipole`` from differential chromatic refraction of a
    bright star, ``bright_star_residual``, ``saturated_star``): the same star
    misbehaving differently in every visit.

The template of each object is observed once and reused in every visit (one
coadd), while seeing, sky and the PSF-matching kernel change from visit to
visit. Visit times follow a Rubin-like cadence: same-night pairs, gaps of a
few days, and seasons.
"""

__all__ = [
    "SequenceSet",
    "simulate_sequences",
    "simulate_visit_series",
    "KINDS",
    "BEHAVIOUR",
    "rubin_cadence",
]

import dataclasses

import numpy as np
import scipy.fft

from ..constants import ARTIFACT_CLASSES, BOGUS, CHANNEL_ORDER, REAL, REAL_CLASSES
from . import artifacts
from .imaging import (
    Conditions,
    add_template_noise,
    difference_sky_sigma,
    measure_objects,
    observe,
    render_models,
    sample_conditions,
)
from .labelled import _psf_peak_fraction, _saturation_excess, sample_noise_snr, sample_snr
from .scene import Scene, add_field, add_galaxy
from .stamps import class_counts

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

#: Frames simulated per numpy batch (objects are never split across batches).
_FRAMES_PER_BATCH = 768


@dataclasses.dataclass
class SequenceSet:
    """Multi-visit cutout sequences of many objects, stored flat.

    Object ``i`` owns frames ``offsets[i]:offsets[i + 1]``.

    Attributes
    ----------
    frames : `numpy.ndarray`, (N_frames, C, F, F) float32
        Raw pixel values (nJy) in ``channels`` order; NaN where NO_DATA.
    offsets : `numpy.ndarray`, (n + 1,) int64
    times : `numpy.ndarray`, (N_frames,) float64
        MJD of each frame, sorted within each object.
    label : `numpy.ndarray`, (n,) int8
    source_class : `numpy.ndarray`, (n,) str
    kind : `numpy.ndarray`, (n,) str
        Behaviour in time (see the module docstring).
    object_id : `numpy.ndarray`, (n,) int64
    channels : `tuple` [`str`, ...]
    frame_snr : `numpy.ndarray`, (N_frames,) float64
        True signed PSF-optimal S/N of the object in each frame's difference (0 when absent).
    frame_fwhm : `numpy.ndarray`, (N_frames,) float64
        Science seeing FWHM of each frame (pixels).
    frame_present : `numpy.ndarray`, (N_frames,) bool
        Whether the object's signal (source flux or artifact) is in the frame.
    masks : `numpy.ndarray`, (N_frames, C, F, F) int32, or `None`
    """

    frames: np.ndarray
    offsets: np.ndarray
    times: np.ndarray
    label: np.ndarray
    source_class: np.ndarray
    kind: np.ndarray
    object_id: np.ndarray
    channels: tuple
    frame_snr: np.ndarray
    frame_fwhm: np.ndarray
    frame_present: np.ndarray
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_visits(self) -> np.ndarray:
        """Number of frames of each object, (n,)."""
        return np.diff(self.offsets)

    def sequence(self, i: int):
        """``(frames, times)`` of object ``i``: ``(T, C, F, F)`` and ``(T,)``."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.frames[a:b], self.times[a:b]

    def save(self, path) -> str:
        """Write a compressed ``.npz`` readable with ``np.load(allow_pickle=False)``."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        arrays["channels"] = np.array(self.channels, dtype="U16")
        arrays["source_class"] = np.asarray(self.source_class, dtype="U32")
        arrays["kind"] = np.asarray(self.kind, dtype="U32")
        if arrays["masks"] is None:
            del arrays["masks"]
        np.savez_compressed(path, **arrays)
        return str(path)

    @classmethod
    def load(cls, path) -> "SequenceSet":
        """Read a file written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(arrays) - {"masks"}
        if missing:
            raise ValueError(f"{path}: not a sequence file, missing {sorted(missing)}.")
        arrays["channels"] = tuple(str(c) for c in arrays["channels"])
        return cls(**{k: v for k, v in arrays.items() if k in names})


def rubin_cadence(rng: np.random.Generator, n: int, start: float) -> np.ndarray:
    """Sorted MJDs of ``n`` visits: same-night pairs, gaps of days, ~200-day seasons."""
    gaps = np.where(rng.random(n) < 0.3, rng.uniform(0.015, 0.05, n), rng.exponential(4.0, n) + 0.5)
    gaps[0] = 0.0
    times = start + np.cumsum(gaps)
    # Seasons: observable for 200 days out of 365.
    season = np.floor((times - start) / 200.0)
    return np.sort(times + season * 165.0)


@dataclasses.dataclass
class _Objects:
    # Per-object parameters of a batch (arrays of length n_objects).
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


def _draw_objects(rng, classes, size, centre, times_by_object, snr_range):
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
        "over": _saturation_excess(rng, n),
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
    return _Objects(classes, kinds, x, y, target, p)


def _presence(rng, objs: _Objects, times_by_object):
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


def _object_components(rng, objs, times_by_object, n_visits, cond, shape, snr_range, static):
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
                    p["over"][i] * ref_cond.saturation[i] / _psf_peak_fraction(ref_cond, [i], [xi], [yi])[0]
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


def _simulate_batch(
    rng, classes, n_visits, frame_size, fwhm_range, snr_range, with_masks, pixel_scale, start_mjd
):
    n_obj = len(classes)
    margin = int(np.ceil(1.5 * fwhm_range[1])) + 2
    size = scipy.fft.next_fast_len(frame_size + 2 * margin, real=True)
    y0 = (size - frame_size) // 2
    centre = y0 + frame_size // 2
    shape = (size, size)
    times_by_object = [rubin_cadence(rng, int(t), start_mjd + rng.uniform(0, 365)) for t in n_visits]
    frame_obj = np.repeat(np.arange(n_obj), n_visits)
    n_frames = len(frame_obj)
    times = np.concatenate(times_by_object)
    objs = _draw_objects(rng, classes, size, centre, times_by_object, snr_range)

    # Conditions: seeing and sky per visit; one template per object.
    cond_v = sample_conditions(rng, n_frames, fwhm_range=fwhm_range)
    cond_o = sample_conditions(rng, n_obj, fwhm_range=fwhm_range)
    cond = Conditions(
        psf_science=cond_v.psf_science,
        psf_template=cond_o.psf_template.take(frame_obj),
        sky_sigma_science=cond_v.sky_sigma_science,
        sky_sigma_template=cond_o.sky_sigma_template[frame_obj],
        gain_science=cond_v.gain_science,
        gain_template=cond_o.gain_template[frame_obj],
        saturation=cond_v.saturation,
        kernel_error=cond_v.kernel_error,
        template_dx=cond_o.template_dx[frame_obj],
        template_dy=cond_o.template_dy[frame_obj],
        spike_angle=cond_v.spike_angle,
    )

    static = Scene()  # on object canvases: both sides; the template side makes the template
    add_field(
        static,
        rng,
        n_obj,
        size,
        size,
        pixel_scale=pixel_scale,
        density_factor=np.exp(rng.uniform(np.log(0.3), np.log(3.0), n_obj)),
    )
    parts = _object_components(rng, objs, times_by_object, n_visits, cond, shape, snr_range, static)
    present = parts["present"]
    per_frame = parts["per_frame"]
    first_frame = parts["first_frame"]

    # One template per object, reused by every visit.
    cond_obj = cond.take(first_frame)
    _, tmpl_model, *_ = render_models(static, cond_obj, shape, with_artifacts=False)
    tmpl_img, tmpl_var = add_template_noise(tmpl_model, cond_obj, rng)
    del tmpl_model

    scene = static.replicate(frame_obj)
    scene.extend(per_frame)
    on_chip = None
    if len(parts["edges"]):
        on_chip = np.ones((n_frames, size, size), bool)
        grid = np.arange(size)
        for fp, side, b in parts["edges"]:
            off = (grid < b) if side % 2 == 0 else (grid > b)
            if side < 2:
                on_chip[fp] &= ~off[None, None, :]
            else:
                on_chip[fp] &= ~off[None, :, None]
    noise_objects = parts["noise"]
    obs = observe(
        scene,
        cond,
        shape,
        rng,
        crop=(y0, y0, frame_size, frame_size),
        on_chip=on_chip,
        template=(tmpl_img[frame_obj], tmpl_var[frame_obj]),
        noise_objects=noise_objects,
    )

    frame_snr = parts["frame_snr"]
    out = {
        "frames": np.stack([obs.difference, obs.science, obs.template], axis=1),
        "masks": (
            np.stack([obs.mask_difference, obs.mask_science, obs.mask_template], axis=1)
            if with_masks
            else None
        ),
        "times": times,
        "kind": objs.kinds,
        "frame_snr": frame_snr,
        "frame_fwhm": cond.psf_science.fwhm,
        "frame_present": present,
    }
    return out


def simulate_sequences(
    n_objects: int,
    seed: int = 0,
    *,
    frame_size: int = 28,
    n_visits=(1, 100),
    channels=CHANNEL_ORDER,
    real_fraction: float = 0.5,
    class_fractions: dict | None = None,
    fwhm_range=(1.5, 6.0),
    snr_range=(3.0, 1000.0),
    pixel_scale: float = 0.2,
    with_masks: bool = False,
    start_mjd: float = 61041.0,
    progress=None,
) -> SequenceSet:
    """Simulate cutout sequences of ``n_objects`` objects over many visits.

    Parameters
    ----------
    n_objects : `int`
    seed : `int`
        The same arguments give identical output.
    frame_size : `int`
        Side of each frame (pixels); the object sits at pixel ``frame_size // 2``
        plus a fixed sub-pixel offset.
    n_visits : `tuple` [`int`, `int`]
        Inclusive range of the number of visits per object (drawn uniformly).
    channels : sequence of `str`
        Channels to keep, a subsequence of `CHANNEL_ORDER`.
    real_fraction, class_fractions
        Class mix, as for `lsst.meas.rbnet.sim.stamps.simulate_stamps`.
    fwhm_range, snr_range
        Seeing range (pixels) and range of the peak S/N of the objects.
    pixel_scale : `float`
    with_masks : `bool`
        Keep mask planes (memory: as much as the frames).
    start_mjd : `float`
        Surveys start within a year after this date.
    progress : callable, optional
        ``progress(done_objects, n_objects)``.
    """
    channels = tuple(channels)
    unknown = [c for c in channels if c not in CHANNEL_ORDER]
    if unknown or not channels:
        raise ValueError(f"channels must be names from {CHANNEL_ORDER}, got {channels}.")
    lo, hi = (int(n_visits[0]), int(n_visits[1]))
    if not 1 <= lo <= hi:
        raise ValueError(f"n_visits must satisfy 1 <= lo <= hi, got {n_visits}.")
    if frame_size < 3:
        raise ValueError(f"frame_size must be >= 3, got {frame_size}.")
    counts = class_counts(n_objects, class_fractions, real_fraction)
    order_rng = np.random.default_rng([seed, 0x5E0])
    classes = order_rng.permutation(np.repeat(np.array(list(counts), dtype="U32"), list(counts.values())))
    visits = order_rng.integers(lo, hi + 1, n_objects)
    pick = [CHANNEL_ORDER.index(c) for c in channels]
    parts = []
    start = 0
    batch = 0
    while start < n_objects:
        stop = start + 1
        while stop < n_objects and visits[start : stop + 1].sum() <= _FRAMES_PER_BATCH:
            stop += 1
        rng = np.random.default_rng([seed, batch])
        out = _simulate_batch(
            rng,
            classes[start:stop],
            visits[start:stop],
            frame_size,
            fwhm_range,
            snr_range,
            with_masks,
            pixel_scale,
            start_mjd,
        )
        out["frames"] = out["frames"][:, pick]
        if out["masks"] is not None:
            out["masks"] = out["masks"][:, pick]
        parts.append(out)
        start = stop
        batch += 1
        if progress is not None:
            progress(start, n_objects)
    offsets = np.concatenate([[0], np.cumsum(visits)]).astype(np.int64)
    cat = {
        k: (np.concatenate([p[k] for p in parts]) if parts and parts[0][k] is not None else None)
        for k in ("frames", "masks", "times", "kind", "frame_snr", "frame_fwhm", "frame_present")
    }
    if not parts:
        cat["frames"] = np.zeros((0, len(channels), frame_size, frame_size), np.float32)
        for k in ("times", "frame_snr", "frame_fwhm"):
            cat[k] = np.zeros(0)
        cat["frame_present"] = np.zeros(0, bool)
        cat["kind"] = np.zeros(0, "U32")
    return SequenceSet(
        frames=cat["frames"],
        offsets=offsets,
        times=cat["times"],
        label=np.where(np.isin(classes, list(REAL_CLASSES)), REAL, BOGUS).astype(np.int8),
        source_class=classes.astype(str),
        kind=cat["kind"],
        object_id=np.arange(1, n_objects + 1, dtype=np.int64) + np.int64(seed) * 10_000_000,
        channels=channels,
        frame_snr=cat["frame_snr"],
        frame_fwhm=cat["frame_fwhm"],
        frame_present=cat["frame_present"],
        masks=cat["masks"],
    )


def simulate_visit_series(*args, **kwargs):
    """Detector-sized visits of the same objects; see `lsst.meas.rbnet.sim.series.simulate_visit_series`."""
    from .series import simulate_visit_series as impl

    return impl(*args, **kwargs)
