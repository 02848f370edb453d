# This file is part of meas_rbnet.
"""Labelled objects: one recipe per class of `REAL_CLASSES` and `ARTIFACT_CLASSES`.

`add_labelled` puts one object of a given class at each requested position
(the position a detection would have). Amplitudes are in units that
`lsst.meas.rbnet.sim.imaging.measure_objects` later scales so that each
object reaches its target signal-to-noise ratio in the difference image;
saturated stars are made with a fixed flux instead, and noise fluctuations are
made by conditioning the noise itself. The same recipes serve the stamp
simulator, the detector-sized visits and the multi-visit sequences.

Real classes
    ``real_new``: a point source absent from the template.
    ``real_brighter`` / ``real_fainter``: a star present in the template that
    brightened / faded (negative in the difference; sometimes vanished).
    ``real_on_galaxy``: a point source on a host galaxy (offset from the nucleus
    by up to about two half-light radii, sometimes nuclear).
    ``real_moving``: a slowly moving solar-system object, trailed by 1.5-10
    pixels in the science exposure and absent from the template.
Artifact classes
    See `lsst.meas.rbnet.sim.artifacts`; ``dipole`` is a constant star or compact
    galaxy whose template position is off (misregistration or differential
    chromatic refraction); ``bright_star_residual`` a constant bright star whose
    science PSF differs from what the matching kernel assumed, or (half of them)
    whose template flux scale is off by 1-5%; ``saturated_star``
    a star above the full well; ``noise`` a fluctuation of the noise reaching the
    target S/N.

Label policy (doc/label-policy.md): real means the flux on the sky changed at
the position, however clean the subtraction; bogus means nothing changed. The
subtraction imperfections of a star (its template offset from misregistration
and chromatic refraction, `star_template_offsets`, its PSF mismatch,
`star_psf_mismatch`, and its template flux scale, `star_flux_scales`) are drawn
from the same distributions for the variable stars of ``real_brighter`` /
``real_fainter`` as for the constant stars of ``dipole`` and
``bright_star_residual``, so a variable star often carries the
same dipole or ring residual as an artifact, on top of its net change of flux.
The artifacts are conditioned on a residual large enough to be detected (a
constant star with a perfect subtraction leaves nothing to detect); the
variable stars are not.
"""

__all__ = [
    "add_labelled",
    "amplitude_factors",
    "sample_snr",
    "sample_noise_snr",
    "SCALED",
    "FIXED",
    "CONDITIONED",
    "SNR_CAP",
    "SNAP_X",
    "SNAP_Y",
    "star_template_offsets",
    "star_psf_mismatch",
    "star_flux_scales",
    "saturation_excess",
    "psf_peak_fraction",
]

import numpy as np

from ..constants import ARTIFACT_CLASSES, REAL_CLASSES
from . import artifacts
from .imaging import Conditions
from .render import SHAPE_TRAIL
from .scene import Scene, add_galaxy

#: How an object's amplitude is set: scaled to a target S/N, fixed by the recipe,
#: or by conditioning the noise.
SCALED, FIXED, CONDITIONED = 0, 1, 2

#: Largest target S/N of classes that are faint by nature.
SNR_CAP: dict[str, float] = {"ghost": 80.0, "edge": 300.0, "bad_column": 500.0}

#: Classes whose detection sits on a pixel centre along x (columns) / y.
SNAP_X = frozenset({"hot_pixel", "bad_column"})
SNAP_Y = frozenset({"hot_pixel"})


#: Classes whose key component is a star-like source that must stay below the full well.
_STARLIKE = frozenset(
    {
        "real_new",
        "real_brighter",
        "real_fainter",
        "real_on_galaxy",
        "real_moving",
        "dipole",
        "bright_star_residual",
    }
)


def sample_snr(rng: np.random.Generator, n: int, snr_range=(3.0, 1000.0)) -> np.ndarray:
    """Target S/N: half log-uniform over ``snr_range``, half concentrated near the 5-sigma threshold."""
    lo, hi = snr_range
    if not 0 < lo <= hi:
        raise ValueError(f"snr_range must satisfy 0 < lo <= hi, got {snr_range}.")
    wide = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    near = np.exp(rng.normal(np.log(7.0), 0.45, n))
    out = np.where(rng.random(n) < 0.5, wide, near)
    bad = (out < lo) | (out > hi)
    out[bad] = wide[bad]
    return out


#: Share of noise detections drawn from a heavier tail than the Gaussian one, and the
#: largest factor (log-uniform from 1) by which such a detection exceeds its Gaussian S/N.
#: Off by default: a share of 0.3 was tried for the default model and did not bring its
#: scores on real alerts closer to the surveys' (doc/default-model.md).
NOISE_HEAVY_TAIL_FRACTION: float = 0.0
NOISE_HEAVY_TAIL_MAX: float = 1.6


def sample_noise_snr(rng: np.random.Generator, n: int, snr_range=(3.0, 1000.0)) -> np.ndarray:
    """|S/N| of noise fluctuations: the Gaussian tail above the lower S/N bound or above 5."""
    floor = np.where(rng.random(n) < 0.5, snr_range[0], max(snr_range[0], 5.0))
    snr = np.sqrt(floor**2 - 2 * np.log(rng.random(n)))
    if NOISE_HEAVY_TAIL_FRACTION > 0:
        # Real difference images are not Gaussian (correlated noise of the matching
        # kernel, noise of faint template sources, weak unflagged artifacts): a share of
        # their noise detections stand further above the threshold than a Gaussian tail.
        heavy = rng.random(n) < NOISE_HEAVY_TAIL_FRACTION
        excess = np.exp(rng.uniform(0.0, np.log(NOISE_HEAVY_TAIL_MAX), n))
        snr = np.where(heavy, snr * excess, snr)
    return snr


def amplitude_factors(classes, mode, unit_snr, unit_peak, saturation, target):
    """Amplitude multipliers that bring each labelled object to its target S/N.

    Parameters
    ----------
    classes : `numpy.ndarray` of `str`, (m,)
    mode : `numpy.ndarray` of `int`, (m,)
        `SCALED`, `FIXED` or `CONDITIONED` (from `add_labelled`).
    unit_snr, unit_peak : `numpy.ndarray`, (m,)
        S/N and brightest science pixel of each object at its recipe amplitude
        (from `lsst.meas.rbnet.sim.imaging.measure_objects`).
    saturation : `numpy.ndarray`, (m,)
        Full-well level of the object's science image (nJy above background).
    target : `numpy.ndarray`, (m,)
        Target |S/N| (capped per class by `SNR_CAP`).

    Returns
    -------
    factor : `numpy.ndarray`, (m,)
        1 for `FIXED`, 0 for `CONDITIONED` objects (the noise does it). Star-like
        objects are kept below 80% of the full well (their S/N is then lower).
    """
    classes = np.asarray(classes)
    target = np.array(target, dtype=float)
    for name, cap in SNR_CAP.items():
        sel = classes == name
        target[sel] = np.minimum(target[sel], cap)
    factor = np.ones(len(classes))
    scaled = mode == SCALED
    factor[scaled] = target[scaled] / np.maximum(np.abs(unit_snr[scaled]), 1e-12)
    limit = 0.8 * np.asarray(saturation) / np.maximum(unit_peak, 1e-12)
    capped = scaled & np.isin(classes, list(_STARLIKE)) & (factor > limit)
    factor[capped] = limit[capped]
    factor[mode == CONDITIONED] = 0.0
    return factor


#: Fraction of stars whose template position is visibly off (misregistration or
#: chromatic refraction large enough to leave a dipole), and the range of that offset (pixels).
POOR_REGISTRATION_FRACTION: float = 0.5
POOR_REGISTRATION_RANGE: tuple[float, float] = (0.1, 1.0)
#: Sigma of the template offset of well-registered stars (pixels, per axis).
GOOD_REGISTRATION_SIGMA: float = 0.03
#: Fraction of stars whose science PSF differs visibly from the matching kernel's
#: assumption, and the range of that fractional width error.
PSF_MISMATCH_FRACTION: float = 0.35
PSF_MISMATCH_RANGE: tuple[float, float] = (0.03, 0.12)


#: Flux of a variable star in its fainter state over its change of flux (log-uniform
#: range): ``real_brighter`` stars are ``base`` in the template and ``base + 1`` in the
#: science image, ``real_fainter`` the other way round (a ratio of 40 is a 0.03 mag change).
#: Narrower ranges (most alerts of a survey come from changes of 0.1 mag or more) were
#: tried for the default model and did not measurably change its scores on real alerts
#: (doc/default-model.md).
VARIABLE_BRIGHTER_BASE: tuple[float, float] = (0.3, 40.0)
VARIABLE_FAINTER_BASE: tuple[float, float] = (0.2, 20.0)
#: Fraction of fading sources that are gone from the science image (base 0).
VARIABLE_FADED_OUT_FRACTION: float = 0.25

#: Sigma of the star-to-star error of the template's flux scale against the science
#: image (zero point, colour term, aperture correction): a property of the subtraction,
#: drawn for every labelled star, constant or variable (0 turns it off: no draws).
STAR_FLUX_SCALE_SIGMA: float = 0.01
#: Share of ``bright_star_residual`` stars whose detected residual is a flux-scale error
#: (a PSF-shaped residual of either sign on the star, bogus by the label policy however
#: much it looks like a small change of a variable star) instead of a PSF mismatch, and
#: the log-uniform range of that error. Both were added for sim2.1 (doc/default-model.md):
#: without them every PSF-shaped residual on a star was a variable star.
FLUX_SCALE_RESIDUAL_FRACTION: float = 0.5
FLUX_SCALE_RESIDUAL_RANGE: tuple[float, float] = (0.01, 0.05)


def star_flux_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """Template flux scale (1 + error) of ``n`` stars; all ones when the error is off."""
    if STAR_FLUX_SCALE_SIGMA <= 0:
        return np.ones(n)
    return 1.0 + rng.normal(0.0, STAR_FLUX_SCALE_SIGMA, n)


def star_template_offsets(rng: np.random.Generator, n: int, *, detectable: bool = False):
    """Template position minus science position of ``n`` stars (pixels).

    Misregistration and differential chromatic refraction: a property of the
    subtraction and of the star's colour, not of whether the star varies. The
    same distribution serves constant and variable stars; ``detectable=True``
    draws from its visibly-offset branch only (the residual of a constant star is
    detected only then).

    Returns
    -------
    dx, dy : `numpy.ndarray`, (n,)
    """
    poor = np.ones(n, bool) if detectable else rng.random(n) < POOR_REGISTRATION_FRACTION
    lo, hi = POOR_REGISTRATION_RANGE
    shift = np.where(
        poor,
        np.exp(rng.uniform(np.log(lo), np.log(hi), n)),
        np.abs(rng.normal(0.0, GOOD_REGISTRATION_SIGMA * np.sqrt(2), n)),
    )
    phi = rng.uniform(0, 2 * np.pi, n)
    return shift * np.cos(phi), shift * np.sin(phi)


def star_psf_mismatch(rng: np.random.Generator, n: int, *, detectable: bool = False):
    """Science PSF scale factors (x, y) of ``n`` stars relative to what the matching assumed.

    Mostly a width error, sometimes an ellipticity error (a quadrupole residual).
    ``detectable=True`` draws from the mismatched branch only.

    Returns
    -------
    fx, fy : `numpy.ndarray`, (n,)
    """
    bad = np.ones(n, bool) if detectable else rng.random(n) < PSF_MISMATCH_FRACTION
    eps = rng.uniform(*PSF_MISMATCH_RANGE, n) * rng.choice([-1.0, 1.0], n)
    aniso = np.where(rng.random(n) < 0.35, rng.uniform(-0.08, 0.08, n), 0.0)
    eps = np.where(bad, eps, 0.0)
    aniso = np.where(bad, aniso, 0.0)
    return 1 + eps + aniso, 1 + eps - aniso


def saturation_excess(rng: np.random.Generator, n: int) -> np.ndarray:
    """Peak over full well of ``n`` saturated stars.

    Star counts make most of them barely saturated (dN/dF ~ F^-1.6 above the
    saturation flux), a few by a factor of hundreds.
    """
    u = rng.random(n)
    lo, hi, a = 1.3, 500.0, 0.6
    return (lo**-a - u * (lo**-a - hi**-a)) ** (-1 / a)


def psf_peak_fraction(cond: Conditions, canvas, x, y) -> np.ndarray:
    """Fraction of a point source's flux in its brightest pixel (science PSF of ``canvas`` at ``x, y``)."""
    psf = cond.psf_science.take(canvas)
    dx = (np.floor(np.asarray(x) + 0.5) - x)[:, None]
    dy = (np.floor(np.asarray(y) + 0.5) - y)[:, None]
    cx, cy, wx, wy = psf.profiles_1d(dx, dy)
    return (cx * cy + wx * wy)[:, 0]


def add_labelled(
    scene: Scene,
    noise_scene: Scene,
    rng: np.random.Generator,
    classes,
    canvas,
    x,
    y,
    cond: Conditions,
    *,
    obj=None,
    canvas_height: int,
    edge_geometry: dict | None = None,
) -> dict:
    """Add one labelled object per row.

    Parameters
    ----------
    scene : `Scene`
        Receives the objects' components (``obj`` set) and any unlabelled
        companions (host galaxies, stars at chip edges; ``obj = -1``).
    noise_scene : `Scene`
        Receives the unit PSF bumps of ``noise`` objects.
    rng : `numpy.random.Generator`
    classes : sequence of `str`, (m,)
        Class of each object.
    canvas : `numpy.ndarray` of `int`, (m,)
    x, y : `numpy.ndarray`, (m,)
        Detection positions (canvas pixels).
    cond : `Conditions`
        Conditions of the canvases (indexed by ``canvas``).
    obj : `numpy.ndarray` of `int`, (m,), optional
        Object indices; ``arange(m)`` by default.
    canvas_height : `int`
        Height of the canvases (bad columns span at most this).
    edge_geometry : `dict`, optional
        For ``edge`` objects: arrays ``side`` and ``boundary`` (see
        `lsst.meas.rbnet.sim.artifacts.add_edge_glow`), aligned with the rows.

    Returns
    -------
    info : `dict` [`str`, `numpy.ndarray`]
        ``mode`` (`SCALED`, `FIXED` or `CONDITIONED`), ``x`` and ``y`` (the
        detection position, snapped to a pixel centre for pixel-level
        artifacts), ``snr_sign`` (+1 or -1: the sign of the S/N the object
        should have), ``fixed_flux`` (nJy, saturated stars), ``host_flux``
        (nJy, 0 without a host).
    """
    classes = np.asarray(classes)
    m = len(classes)
    canvas = np.asarray(canvas, dtype=np.int64)
    obj = np.arange(m) if obj is None else np.asarray(obj, dtype=np.int64)
    x = np.array(x, dtype=float)
    y = np.array(y, dtype=float)
    unknown = set(classes) - set(REAL_CLASSES) - set(ARTIFACT_CLASSES)
    if unknown:
        raise ValueError(
            f"Unknown source classes {sorted(unknown)}; expected names from "
            f"{REAL_CLASSES + ARTIFACT_CLASSES}."
        )
    snap_x = np.isin(classes, list(SNAP_X))
    snap_y = np.isin(classes, list(SNAP_Y))
    x[snap_x] = np.floor(x[snap_x] + 0.5)
    y[snap_y] = np.floor(y[snap_y] + 0.5)
    info = {
        "mode": np.full(m, SCALED),
        "x": x,
        "y": y,
        "snr_sign": np.ones(m),
        "fixed_flux": np.zeros(m),
        "host_flux": np.zeros(m),
    }

    def rows(name):
        return np.flatnonzero(classes == name)

    def component(kind, sel, target=scene, **columns):
        # One component of ``kind`` for each object of ``sel``, at the object's position.
        target.add(kind, canvas[sel], obj=obj[sel], x=x[sel], y=y[sel], **columns)

    def point(sel, flux_s, flux_t, **extra):
        component("point", sel, flux_s=flux_s, flux_t=flux_t, **extra)

    sel = rows("real_new")
    point(sel, 1.0, 0.0)

    # Variable stars: the star is in the template and changed; its subtraction is as
    # imperfect as any constant star's (same offsets, same PSF mismatch).
    sel = rows("real_brighter")
    base = np.exp(rng.uniform(*np.log(VARIABLE_BRIGHTER_BASE), len(sel)))
    dx, dy = star_template_offsets(rng, len(sel))
    fx, fy = star_psf_mismatch(rng, len(sel))
    point(sel, base + 1.0, base * star_flux_scales(rng, len(sel)), dx_t=dx, dy_t=dy, psf_fx=fx, psf_fy=fy)

    sel = rows("real_fainter")
    base = np.where(
        rng.random(len(sel)) < VARIABLE_FADED_OUT_FRACTION,
        0.0,
        np.exp(rng.uniform(*np.log(VARIABLE_FAINTER_BASE), len(sel))),
    )
    dx, dy = star_template_offsets(rng, len(sel))
    fx, fy = star_psf_mismatch(rng, len(sel))
    point(sel, base, (base + 1.0) * star_flux_scales(rng, len(sel)), dx_t=dx, dy_t=dy, psf_fx=fx, psf_fy=fy)
    info["snr_sign"][sel] = -1.0

    sel = rows("real_on_galaxy")
    if len(sel):
        k = len(sel)
        r_e = np.exp(rng.uniform(np.log(1.5), np.log(12.0), k))
        psf_sigma = cond.psf_science.sigma[canvas[sel]]
        host_snr = np.exp(rng.uniform(np.log(20.0), np.log(2000.0), k))
        host_flux = (
            host_snr * cond.sky_sigma_science[canvas[sel]] * np.sqrt(4 * np.pi * (r_e**2 + psf_sigma**2))
        )
        nuclear = rng.random(k) < 0.15
        r_off = np.where(nuclear, rng.uniform(0, 0.3, k), r_e * np.abs(rng.normal(0, 0.8, k)))
        phi = rng.uniform(0, 2 * np.pi, k)
        # The host is subtracted as imperfectly as any galaxy of the image.
        hdx, hdy = star_template_offsets(rng, k)
        add_galaxy(
            scene,
            rng,
            canvas[sel],
            x[sel] - r_off * np.cos(phi),
            y[sel] - r_off * np.sin(phi),
            host_flux,
            r_e,
            dx_t=hdx,
            dy_t=hdy,
        )
        info["host_flux"][sel] = host_flux
        point(sel, 1.0, 0.0)

    sel = rows("real_moving")
    component(
        "extended",
        sel,
        flux_s=1.0,
        flux_t=0.0,
        shape=SHAPE_TRAIL,
        r_e=0.0,
        q=1.0,
        theta=rng.uniform(0, np.pi, len(sel)),
        length=rng.uniform(1.5, 10.0, len(sel)),
    )

    sel = rows("cosmic_ray")
    artifacts.add_cosmic_ray(scene, rng, canvas[sel], x[sel], y[sel], obj=obj[sel])

    sel = rows("hot_pixel")
    artifacts.add_hot_pixel(scene, rng, canvas[sel], x[sel], y[sel], obj=obj[sel])

    sel = rows("bad_column")
    artifacts.add_bad_column(scene, rng, canvas[sel], x[sel], y[sel], canvas_height, obj=obj[sel])

    sel = rows("saturated_star")
    if len(sel):
        over = saturation_excess(rng, len(sel))
        flux = over * cond.saturation[canvas[sel]] / psf_peak_fraction(cond, canvas[sel], x[sel], y[sel])
        point(sel, flux, flux)
        info["mode"][sel] = FIXED
        info["fixed_flux"][sel] = flux

    sel = rows("dipole")
    if len(sel):
        k = len(sel)
        dx, dy = star_template_offsets(rng, k, detectable=True)
        galaxy = rng.random(k) < 0.3
        s = sel[~galaxy]
        point(s, 1.0, star_flux_scales(rng, len(s)), dx_t=dx[~galaxy], dy_t=dy[~galaxy])
        s = sel[galaxy]
        add_galaxy(
            scene,
            rng,
            canvas[s],
            x[s],
            y[s],
            1.0,
            rng.uniform(0.5, 2.5, len(s)),
            obj=obj[s],
            dx_t=dx[galaxy],
            dy_t=dy[galaxy],
        )

    sel = rows("bright_star_residual")
    if len(sel):
        k = len(sel)
        fx, fy = star_psf_mismatch(rng, k, detectable=True)
        # Its template offset is drawn like any star's.
        dx, dy = star_template_offsets(rng, k)
        scale_t = star_flux_scales(rng, k)
        if FLUX_SCALE_RESIDUAL_FRACTION > 0:
            # A share leave a flux-scale residual (a monopole) with an ordinary PSF mismatch.
            mono = rng.random(k) < FLUX_SCALE_RESIDUAL_FRACTION
            err = np.exp(rng.uniform(*np.log(FLUX_SCALE_RESIDUAL_RANGE), k)) * rng.choice([-1.0, 1.0], k)
            ofx, ofy = star_psf_mismatch(rng, k)
            fx, fy = np.where(mono, ofx, fx), np.where(mono, ofy, fy)
            scale_t = np.where(mono, 1.0 + err, scale_t)
            info["snr_sign"][sel] = np.where(mono & (err > 0), -1.0, 1.0)
        point(sel, 1.0, scale_t, psf_fx=fx, psf_fy=fy, dx_t=dx, dy_t=dy)

    sel = rows("satellite_trail")
    artifacts.add_satellite_trail(scene, rng, canvas[sel], x[sel], y[sel], obj=obj[sel])

    sel = rows("ghost")
    artifacts.add_ghost(scene, rng, canvas[sel], x[sel], y[sel], obj=obj[sel])

    sel = rows("edge")
    if len(sel):
        if edge_geometry is None:
            raise ValueError("add_labelled: 'edge' objects need edge_geometry (side, boundary).")
        side = np.asarray(edge_geometry["side"])[sel]
        boundary = np.asarray(edge_geometry["boundary"])[sel]
        center = np.where(side < 2, y[sel], x[sel]) + rng.normal(0, 5.0, len(sel))
        artifacts.add_edge_glow(scene, rng, canvas[sel], side, boundary, center, obj=obj[sel])
        # Often a source sits right at the edge and is cut by it.
        star = rng.random(len(sel)) < 0.4
        s = sel[star]
        flux = cond.sky_sigma_science[canvas[s]] * np.exp(rng.uniform(np.log(30), np.log(3000), len(s)))
        scene.add(
            "point",
            canvas[s],
            x=x[s] + rng.normal(0, 2.0, len(s)),
            y=y[s] + rng.normal(0, 2.0, len(s)),
            flux_s=flux,
            flux_t=flux,
        )

    sel = rows("noise")
    if len(sel):
        k = len(sel)
        u = rng.random(k)
        in_template = u < 0.2
        negative = in_template | (u > 0.8)
        in_science = np.where(in_template, 0.0, 1.0)
        component("point", sel, noise_scene, flux_s=in_science, flux_t=1.0 - in_science)
        info["mode"][sel] = CONDITIONED
        info["snr_sign"][sel] = np.where(negative, -1.0, 1.0)
        # A share of noise detections sit on a constant star or galaxy (its Poisson noise
        # makes fluctuations likelier there): a bright source with a clean subtraction and
        # a fluctuation is bogus, as a transient on a galaxy with the same look is real.
        on_source = rng.random(k) < 0.4
        if on_source.any():
            s = sel[on_source]
            m2 = len(s)
            sky = cond.sky_sigma_science[canvas[s]]
            galaxy = rng.random(m2) < 0.5
            psf_sigma = cond.psf_science.sigma[canvas[s]]
            snr_host = np.exp(rng.uniform(np.log(20.0), np.log(2000.0), m2))
            r_e = np.exp(rng.uniform(np.log(1.5), np.log(12.0), m2))
            g = s[galaxy]
            if len(g):
                r_off = r_e[galaxy] * np.abs(rng.normal(0, 0.5, len(g)))
                phi = rng.uniform(0, 2 * np.pi, len(g))
                flux = snr_host[galaxy] * sky[galaxy] * np.sqrt(4 * np.pi * (r_e[galaxy] ** 2 + psf_sigma[galaxy] ** 2))
                hdx, hdy = star_template_offsets(rng, len(g))
                add_galaxy(
                    scene, rng, canvas[g], x[g] - r_off * np.cos(phi), y[g] - r_off * np.sin(phi), flux,
                    r_e[galaxy], dx_t=hdx, dy_t=hdy,
                )  # fmt: skip
            st = s[~galaxy]
            if len(st):
                flux = snr_host[~galaxy] * sky[~galaxy] * np.sqrt(4 * np.pi * psf_sigma[~galaxy] ** 2)
                dx, dy = star_template_offsets(rng, len(st))
                scene.add(
                    "point", canvas[st], x=x[st] + rng.normal(0, 0.3, len(st)), y=y[st] + rng.normal(0, 0.3, len(st)),
                    flux_s=flux, flux_t=flux, dx_t=dx, dy_t=dy,
                )  # fmt: skip
    return info
