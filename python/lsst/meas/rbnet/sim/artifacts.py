# This file is part of meas_rbnet.
"""Instrumental and processing artifacts: how they are drawn and how they look.

Each ``add_*`` function places artifacts in a `Scene` so that a given point
(the position a detection would have) lies on the artifact; ``render_artifacts``
turns the scene's artifact tables into pixels and mask bits. The models follow
what Rubin's thick, deep-depleted CCDs and its optics produce:

cosmic rays
    Straight muon tracks (1-60 pixels), compact spots and curly electron
    "worms"; the charge spreads over a diffusion sigma of 0.25-0.45 pixels,
    so they are sharper than any PSF. Science image only; the CR mask plane is
    set on part of the track when the pipeline's finder caught it.
hot pixels
    One or two pixels with a fixed excess, in the science image (positive in
    the difference) or, rarely, in the template (negative).
bad columns
    A column segment (1-2 columns wide, sometimes decaying away from a charge
    trap) with an excess or a deficit; sometimes already flagged BAD.
saturation
    Pixels above the full well are clipped and the excess charge bleeds along
    the column in both directions, conserving charge (`saturate`).
satellite trails
    Lines crossing the canvas; the profile across is the PSF convolved with the
    projection of the annular pupil (defocused low-orbit satellites look
    double-horned), with optional glints; STREAK is set on the difference when
    the pipeline's streak finder caught it.
ghosts
    Large, faint, out-of-focus pupil images (annuli with soft edges and an
    illumination gradient), in the science image only.
chip edges
    A brightness roll-off along the boundary of the valid data (flat-field
    edge effects), fading inwards over a few pixels.
"""

__all__ = [
    "add_cosmic_ray",
    "add_hot_pixel",
    "add_bad_column",
    "add_satellite_trail",
    "add_ghost",
    "add_edge_glow",
    "add_background_artifacts",
    "render_artifacts",
    "saturate",
    "PUPIL_OBSCURATION",
]

import numpy as np
from scipy.special import erf

from ..constants import MASK_BIT
from .psf import DoubleGaussianPsf, pixel_gaussian_1d
from .scene import AMPLITUDE_COLUMNS, Scene

#: Central obscuration of the pupil (inner / outer radius), sets the shape of defocused images.
PUPIL_OBSCURATION: float = 0.61


def _uniform_angle(rng, m):
    return rng.uniform(0.0, 2 * np.pi, m)


def add_cosmic_ray(scene: Scene, rng: np.random.Generator, canvas, x, y, *, obj=-1, masked_probability=0.5):
    """Add one cosmic-ray hit through each point ``(x, y)``.

    The total deposit of each hit is 1 (scale it with the object's amplitude)
    or, for background hits (``obj == -1``), drawn from a realistic range by
    `add_background_artifacts`.

    Parameters
    ----------
    scene : `Scene`
    rng : `numpy.random.Generator`
    canvas, x, y : array-like, (m,)
        Canvas index and a point on each track (pixels).
    obj : `int` or array-like
        Labelled object index per hit.
    masked_probability : `float`
        Chance that the pipeline's cosmic-ray finder flagged the hit (CR mask on its core).
    """
    canvas = np.atleast_1d(np.asarray(canvas))
    m = len(canvas)
    x = np.broadcast_to(np.asarray(x, dtype=float), (m,))
    y = np.broadcast_to(np.asarray(y, dtype=float), (m,))
    obj = np.broadcast_to(np.asarray(obj), (m,))
    kind = rng.choice(3, size=m, p=[0.6, 0.25, 0.15])  # track, spot, worm
    masked = rng.random(m) < masked_probability
    rows = {k: [] for k in ("canvas", "obj", "track", "x", "y", "deposit", "width", "masked")}
    for i in range(m):
        step = 0.3
        if kind[i] == 0:
            length = min(1.5 + rng.exponential(10.0), 60.0)
            n_pts = max(2, int(length / step))
            angle = rng.uniform(0, np.pi)
            s = np.linspace(0, length, n_pts)
            px, py = s * np.cos(angle), s * np.sin(angle)
        elif kind[i] == 1:
            n_pts = rng.integers(1, 5)
            px, py = rng.normal(0, 0.4, n_pts), rng.normal(0, 0.4, n_pts)
        else:
            n_pts = rng.integers(15, 70)
            turn = np.cumsum(rng.normal(0, 0.35, n_pts)) + rng.uniform(0, 2 * np.pi)
            px, py = np.cumsum(step * np.cos(turn)), np.cumsum(step * np.sin(turn))
        # Landau-like fluctuations of the energy loss along the track.
        dep = rng.lognormal(0.0, 0.5, len(px))
        dep /= dep.sum()
        # Put the given point on the track: at its brightest deposit for short hits,
        # anywhere along it for long tracks (a detection can sit on any part).
        anchor = int(np.argmax(dep)) if len(px) < 8 else int(rng.integers(len(px)))
        px = px - px[anchor] + x[i]
        py = py - py[anchor] + y[i]
        rows["canvas"].append(np.full(len(px), canvas[i]))
        rows["obj"].append(np.full(len(px), obj[i]))
        rows["track"].append(np.full(len(px), i))
        rows["x"].append(px)
        rows["y"].append(py)
        rows["deposit"].append(dep)
        rows["width"].append(np.full(len(px), rng.uniform(0.25, 0.45)))
        rows["masked"].append(np.full(len(px), masked[i]))
    if m:
        cols = {k: np.concatenate(v) for k, v in rows.items()}
        scene.add("cr", cols.pop("canvas"), **cols)


def add_hot_pixel(
    scene: Scene,
    rng: np.random.Generator,
    canvas,
    x,
    y,
    *,
    obj=-1,
    template_probability=0.1,
    bad_probability=0.15,
):
    """Add a hot pixel (sometimes a pair) at the pixel containing each ``(x, y)``; unit amplitude."""
    canvas = np.atleast_1d(np.asarray(canvas))
    m = len(canvas)
    ix = np.floor(np.broadcast_to(np.asarray(x, dtype=float), (m,)) + 0.5)
    iy = np.floor(np.broadcast_to(np.asarray(y, dtype=float), (m,)) + 0.5)
    template = rng.random(m) < template_probability
    bad = rng.random(m) < bad_probability
    scene.add("hot", canvas, obj=obj, x=ix, y=iy, amp=1.0, template=template, bad=bad)
    pair = rng.random(m) < 0.2
    if pair.any():
        # A neighbouring pixel with a fraction of the excess (charge shared across a pixel boundary).
        d = rng.integers(0, 2, m)
        scene.add(
            "hot",
            canvas[pair],
            obj=np.broadcast_to(np.asarray(obj), (m,))[pair],
            x=(ix + d)[pair],
            y=(iy + 1 - d)[pair],
            amp=rng.uniform(0.1, 0.7, m)[pair],
            template=template[pair],
            bad=bad[pair],
        )


def add_bad_column(
    scene: Scene, rng: np.random.Generator, canvas, x, y, height, *, obj=-1, bad_probability=0.5
):
    """Add a bad column segment through the pixel containing each ``(x, y)``.

    A quarter are cold (a deficit, negative in the difference); a third decay
    away from a charge trap. ``height`` is the canvas height (pixels).
    """
    canvas = np.atleast_1d(np.asarray(canvas))
    m = len(canvas)
    ix = np.floor(np.broadcast_to(np.asarray(x, dtype=float), (m,)) + 0.5)
    iy = np.floor(np.broadcast_to(np.asarray(y, dtype=float), (m,)) + 0.5)
    full = rng.random(m) < 0.4
    y0 = np.where(full, -1e6, iy - np.round(rng.exponential(60.0, m)) - 2)
    y1 = np.where(full, 1e6, iy + np.round(rng.exponential(60.0, m)) + 3)
    sign = np.where(rng.random(m) < 0.25, -1.0, 1.0)
    decay = np.where(rng.random(m) < 0.33, rng.uniform(5.0, 60.0, m), 0.0)
    # A decaying column starts at its trap and runs upwards through the point.
    y0 = np.where(decay > 0, iy - np.round(rng.uniform(0, 1, m) * decay), y0)
    width = np.where(rng.random(m) < 0.8, 1.0, 2.0)
    scene.add(
        "column",
        canvas,
        obj=obj,
        x=ix,
        y0=y0,
        y1=y1,
        amp=sign,
        width=width,
        decay=decay,
        bad=rng.random(m) < bad_probability,
    )


def add_satellite_trail(
    scene: Scene, rng: np.random.Generator, canvas, x, y, *, obj=-1, masked_probability=0.5
):
    """Add a satellite trail through each ``(x, y)``; unit flux per pixel of length."""
    canvas = np.atleast_1d(np.asarray(canvas))
    m = len(canvas)
    glint = rng.random(m) < 0.3
    scene.add(
        "streak",
        canvas,
        obj=obj,
        x=x,
        y=y,
        theta=rng.uniform(0, np.pi, m),
        flux=1.0,
        defocus=np.where(rng.random(m) < 0.7, rng.uniform(3.0, 9.0, m), rng.uniform(0.0, 1.5, m)),
        glint_amp=np.where(glint, rng.uniform(0.2, 0.8, m), 0.0),
        glint_period=rng.uniform(15.0, 120.0, m),
        glint_phase=_uniform_angle(rng, m),
        masked=rng.random(m) < masked_probability,
    )


def add_ghost(scene: Scene, rng: np.random.Generator, canvas, x, y, *, obj=-1, radius=None):
    """Add an out-of-focus pupil ghost whose annulus passes through each ``(x, y)``; unit brightness."""
    canvas = np.atleast_1d(np.asarray(canvas))
    m = len(canvas)
    r_out = (
        np.exp(rng.uniform(np.log(12.0), np.log(150.0), m))
        if radius is None
        else np.broadcast_to(radius, (m,))
    )
    r_in = r_out * rng.uniform(0.45, 0.7, m)
    # The point lies inside the annulus.
    r = rng.uniform(r_in + 0.15 * (r_out - r_in), r_out - 0.15 * (r_out - r_in))
    phi = _uniform_angle(rng, m)
    scene.add(
        "ghost",
        canvas,
        obj=obj,
        x=np.asarray(x) - r * np.cos(phi),
        y=np.asarray(y) - r * np.sin(phi),
        r_out=r_out,
        r_in=r_in,
        blur=rng.uniform(0.8, 4.0, m),
        amp=1.0,
        gradient=rng.uniform(0.0, 0.6, m),
        grad_angle=_uniform_angle(rng, m),
    )


def add_edge_glow(scene: Scene, rng: np.random.Generator, canvas, side, boundary, center, *, obj=-1):
    """Add a brightness roll-off along a chip boundary; unit amplitude at the boundary.

    ``side`` 0/1: the chip's left/right edge, ``boundary`` the first (0) or last
    (1) valid column; 2/3: bottom/top edge, ``boundary`` the first/last valid row.
    The roll-off is strongest around ``center`` (a coordinate along the edge)
    and fades along the edge over tens to hundreds of pixels.
    """
    canvas = np.atleast_1d(np.asarray(canvas))
    m = len(canvas)
    scene.add(
        "edge",
        canvas,
        obj=obj,
        side=side,
        boundary=boundary,
        center=center,
        length=np.exp(rng.uniform(np.log(15.0), np.log(300.0), m)),
        amp=1.0,
        decay=rng.uniform(0.8, 4.0, m),
        mod_amp=rng.uniform(0.0, 0.6, m),
        mod_period=rng.uniform(15.0, 150.0, m),
        mod_phase=_uniform_angle(rng, m),
    )


def add_background_artifacts(
    scene: Scene,
    rng: np.random.Generator,
    n_canvas: int,
    height: int,
    width: int,
    sky_sigma: np.ndarray,
    *,
    cosmic_rays_per_mpix: float = 6.0,
    hot_pixels_per_mpix: float = 1.5,
    bad_columns_per_mpix: float = 0.25,
    satellite_probability_per_mpix: float = 0.01,
    ghost_probability_per_mpix: float = 0.02,
) -> None:
    """Add unlabelled artifacts at realistic rates (per million pixels) to every canvas.

    Amplitudes are drawn relative to each canvas' sky noise ``sky_sigma`` (nJy, (n,)).
    """
    mpix = height * width / 1e6
    sky_sigma = np.broadcast_to(np.asarray(sky_sigma, dtype=float), (n_canvas,))

    def draw(rate):
        counts = rng.poisson(rate * mpix, n_canvas)
        canvas = np.repeat(np.arange(n_canvas), counts)
        return canvas, rng.uniform(0, width - 1, len(canvas)), rng.uniform(0, height - 1, len(canvas))

    canvas, x, y = draw(cosmic_rays_per_mpix)
    before = len(scene.tables()["cr"]["canvas"])
    add_cosmic_ray(scene, rng, canvas, x, y, masked_probability=0.85)
    table = scene.tables()["cr"]
    new = slice(before, None)
    # Deposits of 50-2000 sigma in total; each track carries one draw.
    if len(table["track"]) > before:
        per_track = np.exp(rng.uniform(np.log(50), np.log(2000), int(table["track"].max()) + 1))
        table["deposit"][new] *= per_track[table["track"][new]] * sky_sigma[table["canvas"][new]]

    def add_scaled(rate, add, kind, low, high, log_uniform, **options):
        # Add one kind at ``rate`` and multiply the new rows' amplitude by a factor drawn
        # in [low, high] (log-uniformly or uniformly) times their canvas' sky noise.
        canvas, x, y = draw(rate)
        start = len(scene.tables()[kind]["canvas"])
        add(scene, rng, canvas, x, y, **options)
        table = scene.tables()[kind]
        (column,) = AMPLITUDE_COLUMNS[kind]
        n = len(table[column]) - start
        factor = (
            np.exp(rng.uniform(np.log(low), np.log(high), n)) if log_uniform else rng.uniform(low, high, n)
        )
        table[column][start:] *= factor * sky_sigma[table["canvas"][start:]]

    add_scaled(hot_pixels_per_mpix, add_hot_pixel, "hot", 5, 500, True, bad_probability=0.6)
    add_scaled(
        bad_columns_per_mpix, add_bad_column, "column", 0.5, 5.0, False, height=height, bad_probability=0.8
    )
    add_scaled(
        satellite_probability_per_mpix, add_satellite_trail, "streak", 3, 300, True, masked_probability=0.7
    )
    add_scaled(ghost_probability_per_mpix, add_ghost, "ghost", 0.2, 1.5, False)


def _clip_box(y0, y1, x0, x1, height, width):
    return max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)


def render_artifacts(
    tables: dict,
    science: np.ndarray,
    template: np.ndarray,
    mask_science: np.ndarray,
    mask_template: np.ndarray,
    mask_difference: np.ndarray,
    psf_science: DoubleGaussianPsf,
) -> None:
    """Add the artifacts of a scene to the science/template canvases and set their mask bits.

    Parameters
    ----------
    tables : `dict`
        ``Scene.tables()``.
    science, template : `numpy.ndarray`, (n, H, W)
        Noiseless canvases (nJy), modified in place.
    mask_science, mask_template, mask_difference : `numpy.ndarray` of int32, (n, H, W)
        Mask canvases, modified in place (``mask_difference`` holds planes set
        on the difference image only, such as STREAK).
    psf_science : `DoubleGaussianPsf`
        Science PSF of each canvas (satellite trails are PSF-convolved).
    """
    n, height, width = science.shape
    _render_cosmic_rays(tables["cr"], science, mask_science)
    t = tables["hot"]
    if len(t["canvas"]):
        ix, iy = t["x"].astype(int), t["y"].astype(int)
        ok = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
        for target, mask, sel in (
            (science, mask_science, ok & ~t["template"]),
            (template, mask_template, ok & t["template"]),
        ):
            np.add.at(target, (t["canvas"][sel], iy[sel], ix[sel]), t["amp"][sel])
            bad = sel & t["bad"]
            mask[t["canvas"][bad], iy[bad], ix[bad]] |= MASK_BIT["BAD"]
    t = tables["column"]
    rows = np.arange(height, dtype=float)
    for i in range(len(t["canvas"])):
        b, x0, w = t["canvas"][i], int(t["x"][i]), int(t["width"][i])
        ya, yb = int(max(t["y0"][i], 0)), int(min(t["y1"][i] + 1, height))
        xa, xb = max(x0, 0), min(x0 + w, width)
        if ya >= yb or xa >= xb:
            continue
        profile = np.ones(yb - ya)
        if t["decay"][i] > 0:
            profile = np.exp(-(rows[ya:yb] - t["y0"][i]) / t["decay"][i])
        science[b, ya:yb, xa:xb] += (t["amp"][i] * profile)[:, None]
        if t["bad"][i]:
            mask_science[b, ya:yb, xa:xb] |= MASK_BIT["BAD"]
    _render_streaks(tables["streak"], science, mask_difference, psf_science)
    _render_ghosts(tables["ghost"], science)
    _render_edges(tables["edge"], science)


def _render_cosmic_rays(t, science, mask_science):
    if not len(t["canvas"]):
        return
    _, height, width = science.shape
    order = np.argsort(t["track"], kind="stable")
    tracks, starts = np.unique(t["track"][order], return_index=True)
    ends = np.append(starts[1:], len(order))
    for s, e in zip(starts, ends):
        rows = order[s:e]
        b = t["canvas"][rows[0]]
        x, y, dep, w = t["x"][rows], t["y"][rows], t["deposit"][rows], t["width"][rows]
        x0, x1 = int(np.floor(x.min())) - 3, int(np.ceil(x.max())) + 4
        y0, y1 = int(np.floor(y.min())) - 3, int(np.ceil(y.max())) + 4
        ya, yb, xa, xb = _clip_box(y0, y1, x0, x1, height, width)
        if ya >= yb or xa >= xb:
            continue
        gx = pixel_gaussian_1d(np.arange(xa, xb)[None, :] - x[:, None], w[:, None])
        gy = pixel_gaussian_1d(np.arange(ya, yb)[None, :] - y[:, None], w[:, None])
        patch = (gy * dep[:, None]).T @ gx
        science[b, ya:yb, xa:xb] += patch
        if t["masked"][rows[0]]:
            # The finder flags the sharp core but misses the faint wings of the track.
            peak = np.abs(patch).max()
            mask_science[b, ya:yb, xa:xb] |= np.where(np.abs(patch) > 0.08 * peak, MASK_BIT["CR"], 0).astype(
                np.int32
            )


def _streak_profile(defocus, sigma_n, wing_fraction, wing_ratio):
    # 1-D profile across a trail: PSF marginal convolved with the projection of the
    # annular pupil (unit integral), tabulated on a fine grid.
    h = 0.05
    half = defocus + 6.0 * wing_ratio * sigma_n + 2.0
    u = np.arange(-half, half + h / 2, h)
    if defocus > 0.3:
        chord = 2 * np.sqrt(np.clip(defocus**2 - u**2, 0, None)) - 2 * np.sqrt(
            np.clip((PUPIL_OBSCURATION * defocus) ** 2 - u**2, 0, None)
        )
    else:
        chord = np.zeros_like(u)
        chord[len(u) // 2] = 1.0
    kernel = (1 - wing_fraction) * np.exp(-0.5 * (u / sigma_n) ** 2) / sigma_n + wing_fraction * np.exp(
        -0.5 * (u / (wing_ratio * sigma_n)) ** 2
    ) / (wing_ratio * sigma_n)
    profile = np.convolve(chord, kernel, mode="same")
    profile /= profile.sum() * h
    return u, profile


def _render_streaks(t, science, mask_difference, psf, tile: int = 128):
    if not len(t["canvas"]):
        return
    _, height, width = science.shape
    for i in range(len(t["canvas"])):
        b = t["canvas"][i]
        c, s = np.cos(t["theta"][i]), np.sin(t["theta"][i])
        # Width of the PSF across the trail, with the pixel response.
        sig_n = np.sqrt((psf.sigma_x[b] * s) ** 2 + (psf.sigma_y[b] * c) ** 2 + 1.0 / 12.0)
        u, prof = _streak_profile(t["defocus"][i], sig_n, psf.wing_fraction[b], psf.wing_ratio[b])
        mask_half = max(t["defocus"][i] + 2.5 * sig_n, 2.0)
        # Only tiles the trail crosses are evaluated.
        for ty in range(0, height, tile):
            for tx in range(0, width, tile):
                h, w = min(tile, height - ty), min(tile, width - tx)
                cy, cx = ty + 0.5 * (h - 1), tx + 0.5 * (w - 1)
                if abs(-(cx - t["x"][i]) * s + (cy - t["y"][i]) * c) > u[-1] + 0.71 * tile:
                    continue
                yy = np.arange(ty, ty + h, dtype=np.float64)[:, None]
                xx = np.arange(tx, tx + w, dtype=np.float64)[None, :]
                d = -(xx - t["x"][i]) * s + (yy - t["y"][i]) * c
                near = np.abs(d) < u[-1]
                if not near.any():
                    continue
                values = np.interp(d[near], u, prof) * t["flux"][i]
                if t["glint_amp"][i] > 0:
                    along = (xx - t["x"][i]) * c + (yy - t["y"][i]) * s
                    values *= 1 + t["glint_amp"][i] * np.sin(
                        2 * np.pi * np.broadcast_to(along, d.shape)[near] / t["glint_period"][i]
                        + t["glint_phase"][i]
                    )
                block = science[b, ty : ty + h, tx : tx + w]
                block[near] += values.astype(science.dtype)
                if t["masked"][i]:
                    mask_difference[b, ty : ty + h, tx : tx + w][np.abs(d) < mask_half] |= MASK_BIT["STREAK"]


def _render_ghosts(t, science):
    _, height, width = science.shape
    for i in range(len(t["canvas"])):
        b = t["canvas"][i]
        reach = t["r_out"][i] + 4 * t["blur"][i]
        ya, yb, xa, xb = _clip_box(
            int(t["y"][i] - reach),
            int(t["y"][i] + reach) + 2,
            int(t["x"][i] - reach),
            int(t["x"][i] + reach) + 2,
            height,
            width,
        )
        if ya >= yb or xa >= xb:
            continue
        dy = np.arange(ya, yb)[:, None] - t["y"][i]
        dx = np.arange(xa, xb)[None, :] - t["x"][i]
        r = np.hypot(dx, dy)
        z = np.sqrt(2.0) * t["blur"][i]
        ring = 0.5 * (erf((t["r_out"][i] - r) / z) - erf((t["r_in"][i] - r) / z))
        tilt = (
            1
            + t["gradient"][i]
            * (dx * np.cos(t["grad_angle"][i]) + dy * np.sin(t["grad_angle"][i]))
            / t["r_out"][i]
        )
        science[b, ya:yb, xa:xb] += (t["amp"][i] * ring * tilt).astype(science.dtype)


def _render_edges(t, science):
    _, height, width = science.shape
    for i in range(len(t["canvas"])):
        b, side, edge = t["canvas"][i], t["side"][i], t["boundary"][i]
        reach = 12.0 * t["decay"][i]
        # Across the edge: from the boundary inwards; along it: around the centre.
        if side in (0, 2):
            lo, hi = edge, edge + reach
        else:
            lo, hi = edge - reach, edge
        extent = height if side < 2 else width
        a0 = int(max(np.floor(lo), 0))
        a1 = int(min(np.ceil(hi) + 1, width if side < 2 else height))
        c0 = int(max(np.floor(t["center"][i] - 5 * t["length"][i]), 0))
        c1 = int(min(np.ceil(t["center"][i] + 5 * t["length"][i]) + 1, extent))
        if a0 >= a1 or c0 >= c1:
            continue
        coord = np.arange(a0, a1, dtype=float)
        along = np.arange(c0, c1, dtype=float)
        dist = coord - edge if side in (0, 2) else edge - coord
        fall = np.where(dist >= 0, np.exp(-np.clip(dist, 0, None) / t["decay"][i]), 0.0)
        mod = (
            1 + t["mod_amp"][i] * np.sin(2 * np.pi * along / t["mod_period"][i] + t["mod_phase"][i])
        ) * np.exp(-0.5 * ((along - t["center"][i]) / t["length"][i]) ** 2)
        values = (t["amp"][i] * mod[:, None] * fall[None, :]).astype(science.dtype)
        if side < 2:
            science[b, c0:c1, a0:a1] += values
        else:
            science[b, a0:a1, c0:c1] += values.T


def saturate(science: np.ndarray, threshold: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Clip pixels at the full well and bleed the excess charge along columns, in place.

    Parameters
    ----------
    science : `numpy.ndarray`, (n, H, W)
        Background-subtracted science canvases (nJy) with noise.
    threshold : `numpy.ndarray`, (n,)
        Value at which a pixel saturates (nJy above the background); ``inf`` for none.
    mask : `numpy.ndarray` of int32, (n, H, W)
        SAT is set on clipped and bled pixels, SUSPECT on pixels close to saturation.
    rng : `numpy.random.Generator`
        Draws the up/down asymmetry of each bleed.
    """
    threshold = np.asarray(threshold, dtype=science.dtype)
    t3 = threshold[:, None, None]
    over = science > t3
    if not over.any():
        return
    n, height, width = science.shape
    cb, cx = np.nonzero(over.any(axis=1))
    values = science[cb, :, cx].astype(np.float64)  # (k, H)
    tk = threshold[cb][:, None].astype(np.float64)
    excess = np.clip(values - tk, 0, None).sum(axis=1)
    values = np.minimum(values, tk)
    sat = values >= tk
    rows = np.arange(height)[None, :]
    first = np.argmax(sat, axis=1)[:, None]
    last = (height - 1 - np.argmax(sat[:, ::-1], axis=1))[:, None]
    up_share = rng.uniform(0.35, 0.65, n)[cb]
    e_up = excess * up_share
    e_dn = excess - e_up
    deficit = np.where(rows > last, tk - values, 0.0)
    before = np.cumsum(deficit, axis=1) - deficit
    values += np.clip(e_up[:, None] - before, 0, deficit)
    deficit = np.where(rows < first, tk - values, 0.0)
    before = np.cumsum(deficit[:, ::-1], axis=1)[:, ::-1] - deficit
    values += np.clip(e_dn[:, None] - before, 0, deficit)
    science[cb, :, cx] = values.astype(science.dtype)
    full = science >= t3 * (1 - 1e-6)
    mask[full] |= MASK_BIT["SAT"]
    mask[(science > 0.85 * t3) & ~full] |= MASK_BIT["SUSPECT"]
