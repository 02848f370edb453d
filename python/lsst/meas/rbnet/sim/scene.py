# This file is part of meas_rbnet.
"""The content of a simulated sky: a component container and the static field.

A `Scene` holds every light-emitting (or charge-depositing) component of a
batch of canvases as columns of numpy arrays, one table per *kind*:

``point``
    Unresolved sources (stars, transients) and faint galaxies approximated by
    Gaussians: flux in science and template, template offset (misregistration
    or proper motion), science PSF width factors, intrinsic Gaussian size.
``extended``
    Sersic components of galaxies and trailed point sources, rendered in
    Fourier space.
``cr``, ``hot``, ``column``, ``streak``, ``ghost``, ``edge``
    Instrumental artifacts (see `lsst.meas.rbnet.sim.artifacts`).

Every row has a ``canvas`` index and an ``obj`` index (the labelled object it
belongs to, ``-1`` for the background). Components of a labelled object are
scaled together so the object reaches a target signal-to-noise ratio.

The static field (`add_field`) draws stars and galaxies from number counts
and size-magnitude relations typical of a high-latitude Rubin field in nJy.
"""

__all__ = [
    "Scene",
    "KIND_COLUMNS",
    "AMPLITUDE_COLUMNS",
    "nJy_to_mag",
    "mag_to_nJy",
    "FieldDensity",
    "add_field",
    "add_cutout_fields",
    "CUTOUT_DENSITY_RANGE",
    "add_galaxy",
    "sample_galaxy_radius",
]

import dataclasses

import numpy as np

#: Columns of each component kind (besides ``canvas`` and ``obj``).
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "point": ("x", "y", "flux_s", "flux_t", "dx_t", "dy_t", "psf_fx", "psf_fy", "size_x", "size_y"),
    "extended": ("x", "y", "flux_s", "flux_t", "dx_t", "dy_t", "shape", "r_e", "q", "theta", "length"),
    "cr": ("track", "x", "y", "deposit", "width", "masked"),
    "hot": ("x", "y", "amp", "template", "bad"),
    "column": ("x", "y0", "y1", "amp", "width", "decay", "bad"),
    "streak": ("x", "y", "theta", "flux", "defocus", "glint_amp", "glint_period", "glint_phase", "masked"),
    "ghost": ("x", "y", "r_out", "r_in", "blur", "amp", "gradient", "grad_angle"),
    "edge": ("side", "boundary", "center", "length", "amp", "decay", "mod_amp", "mod_period", "mod_phase"),
}

#: Columns that scale with a labelled object's amplitude.
AMPLITUDE_COLUMNS: dict[str, tuple[str, ...]] = {
    "point": ("flux_s", "flux_t"),
    "extended": ("flux_s", "flux_t"),
    "cr": ("deposit",),
    "hot": ("amp",),
    "column": ("amp",),
    "streak": ("flux",),
    "ghost": ("amp",),
    "edge": ("amp",),
}

_DEFAULTS = {
    "dx_t": 0.0,
    "dy_t": 0.0,
    "psf_fx": 1.0,
    "psf_fy": 1.0,
    "size_x": 0.0,
    "size_y": 0.0,
    "length": 0.0,
    "obj": -1,
}

#: AB zero point of fluxes in nJy: ``m = 31.4 - 2.5 log10(F / nJy)``.
_AB_NJY = 31.4


def mag_to_nJy(mag):
    """AB magnitude to flux in nJy."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - _AB_NJY))


def nJy_to_mag(flux):
    """Flux in nJy to AB magnitude."""
    return _AB_NJY - 2.5 * np.log10(np.asarray(flux, dtype=float))


def _dtype(column: str):
    if column in ("canvas", "obj", "track", "shape", "side"):
        return np.int64
    if column in ("masked", "template", "bad"):
        return bool
    return float


class Scene:
    """Components of a batch of canvases, grouped by kind (see module docstring)."""

    def __init__(self) -> None:
        self._parts: dict[str, list[dict[str, np.ndarray]]] = {kind: [] for kind in KIND_COLUMNS}
        self._tables: dict[str, dict[str, np.ndarray]] | None = None
        self._next_track = 0

    def add(self, kind: str, canvas, **columns) -> None:
        """Append components of one kind.

        Parameters
        ----------
        kind : `str`
            A key of `KIND_COLUMNS`.
        canvas : array-like of `int`
            Canvas index of each component; its length sets the number of rows.
        **columns
            Arrays or scalars for the columns of ``kind`` (``obj`` optional).
        """
        canvas = np.atleast_1d(np.asarray(canvas, dtype=np.int64))
        m = len(canvas)
        if m == 0:
            return
        expected = set(KIND_COLUMNS[kind]) | {"obj"}
        unknown = set(columns) - expected
        if unknown:
            raise ValueError(f"Scene.add({kind!r}): unknown columns {sorted(unknown)}.")
        row = {"canvas": canvas}
        for name in ("obj",) + KIND_COLUMNS[kind]:
            if name in columns:
                value = columns[name]
            elif name in _DEFAULTS:
                value = _DEFAULTS[name]
            else:
                raise ValueError(f"Scene.add({kind!r}): column {name!r} is required.")
            dtype = _dtype(name)
            row[name] = np.broadcast_to(np.asarray(value, dtype=dtype), (m,)).copy()
        if kind == "cr":
            # Track ids are made unique across calls and canvases (copies of a track are separate tracks).
            _, inverse = np.unique(np.stack([row["track"], row["canvas"]]), axis=1, return_inverse=True)
            inverse = inverse.reshape(-1)
            row["track"] = inverse + self._next_track
            self._next_track = int(row["track"].max()) + 1
        self._parts[kind].append(row)
        self._tables = None

    def extend(self, other: "Scene") -> None:
        """Append every component of ``other``."""
        for kind, table in other.tables().items():
            if len(table["canvas"]):
                cols = {k: v for k, v in table.items() if k != "canvas"}
                self.add(kind, table["canvas"], **cols)

    def tables(self) -> dict[str, dict[str, np.ndarray]]:
        """Concatenated columns of every kind (empty arrays for absent kinds)."""
        if self._tables is None:
            out = {}
            for kind, parts in self._parts.items():
                names = ("canvas", "obj") + KIND_COLUMNS[kind]
                if parts:
                    out[kind] = {n: np.concatenate([p[n] for p in parts]) for n in names}
                else:
                    out[kind] = {n: np.zeros(0, dtype=_dtype(n)) for n in names}
            self._tables = out
            self._parts = {kind: ([out[kind]] if len(out[kind]["canvas"]) else []) for kind in out}
        return self._tables

    def select(self, predicate) -> "Scene":
        """A new scene with the rows for which ``predicate(table) -> bool array`` holds."""
        new = Scene()
        for kind, table in self.tables().items():
            keep = np.asarray(predicate(table), dtype=bool)
            if keep.any():
                new.add(
                    kind, table["canvas"][keep], **{k: v[keep] for k, v in table.items() if k != "canvas"}
                )
        return new

    def take_objects(self, rows) -> "Scene":
        """A new scene with the components of the labelled objects ``rows``, object ``rows[i]`` renumbered ``i``.

        Used to hand the noise fluctuations of some objects to
        `lsst.meas.rbnet.sim.imaging.observe`, which numbers its objects from 0.
        """
        rows = np.asarray(rows, dtype=np.int64)
        new = self.select(lambda t: np.isin(t["obj"], rows))
        renumber = np.full(int(rows.max()) + 1 if len(rows) else 0, -1)
        renumber[rows] = np.arange(len(rows))
        for table in new.tables().values():
            table["obj"] = renumber[table["obj"]]
        return new

    def scale_objects(self, factor: np.ndarray) -> None:
        """Multiply the amplitude columns of every labelled object ``obj`` by ``factor[obj]``."""
        factor = np.asarray(factor, dtype=float)
        for kind, table in self.tables().items():
            obj = table["obj"]
            sel = obj >= 0
            if sel.any():
                for name in AMPLITUDE_COLUMNS[kind]:
                    table[name][sel] = table[name][sel] * factor[obj[sel]]

    def relocate(self, canvas_of_obj: np.ndarray, dx_of_obj: np.ndarray, dy_of_obj: np.ndarray) -> "Scene":
        """Copy of the labelled components moved to other canvases and shifted.

        Component of object ``k`` goes to canvas ``canvas_of_obj[k]`` with its
        coordinates shifted by ``(dx_of_obj[k], dy_of_obj[k])``.
        """
        new = Scene()
        for kind, table in self.tables().items():
            sel = table["obj"] >= 0
            if not sel.any():
                continue
            cols = {k: v[sel].copy() for k, v in table.items()}
            obj = cols["obj"]
            _shift(kind, cols, dx_of_obj[obj], dy_of_obj[obj])
            canvas = canvas_of_obj[obj]
            del cols["canvas"]
            new.add(kind, canvas, **cols)
        return new

    def replicate(self, source_canvas: np.ndarray, dx=None, dy=None, obj=None, new_canvas=None) -> "Scene":
        """Copies of every component on new canvases.

        Copy ``j`` receives every component on canvas ``source_canvas[j]``
        (shifted by ``dx[j]``, ``dy[j]`` and given object index ``obj[j]`` when
        those are given; ``obj`` is kept otherwise) and goes to canvas
        ``new_canvas[j]`` (``j`` by default).
        """
        source_canvas = np.asarray(source_canvas)
        new = Scene()
        order = np.argsort(source_canvas, kind="stable")
        sorted_src = source_canvas[order]
        for kind, table in self.tables().items():
            if not len(table["canvas"]):
                continue
            # For each component, the new canvases copying its canvas.
            lo = np.searchsorted(sorted_src, table["canvas"], side="left")
            hi = np.searchsorted(sorted_src, table["canvas"], side="right")
            counts = hi - lo
            if not counts.sum():
                continue
            rows = np.repeat(np.arange(len(counts)), counts)
            starts = np.repeat(lo, counts)
            within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            targets = order[starts + within]
            cols = {k: v[rows].copy() for k, v in table.items() if k != "canvas"}
            if dx is not None:
                _shift(kind, cols, np.asarray(dx)[targets], np.asarray(dy)[targets])
            if obj is not None:
                cols["obj"] = np.asarray(obj)[targets]
            new.add(kind, targets if new_canvas is None else np.asarray(new_canvas)[targets], **cols)
        return new

    def __len__(self) -> int:
        return sum(len(t["canvas"]) for t in self.tables().values())


def _shift(kind: str, cols: dict, dx: np.ndarray, dy: np.ndarray) -> None:
    # Move the components in the columns ``cols`` of a ``kind`` table by (dx, dy), in place:
    # their centres, the rows a bad column spans and a chip edge's boundary line.
    if "x" in cols:
        cols["x"] += dx
    for name in ("y", "y0", "y1"):
        if name in cols:
            cols[name] += dy
    if kind == "edge":
        cols["boundary"] += np.where(cols["side"] < 2, dx, dy)
        cols["center"] += np.where(cols["side"] < 2, dy, dx)


@dataclasses.dataclass
class FieldDensity:
    """Surface densities and magnitude ranges of the static field.

    Parameters
    ----------
    stars_per_deg2 : `float`
        Stars brighter than ``star_mag_range[1]`` per square degree.
    galaxies_per_deg2 : `float`
        Galaxies brighter than ``galaxy_mag_range[1]`` per square degree.
    star_mag_range, galaxy_mag_range : `tuple` [`float`, `float`]
        AB magnitude ranges drawn.
    star_slope, galaxy_slope : `float`
        Logarithmic slopes of the counts, ``dN/dm ~ 10**(slope * m)``.
    gaussian_galaxy_mag : `float`
        Galaxies fainter than this (S/N below about 3 in a Rubin visit) are
        drawn as elliptical Gaussians, convolved exactly and rendered like
        point sources; brighter ones as Sersic discs and bulges.
    """

    stars_per_deg2: float = 1.2e4
    galaxies_per_deg2: float = 1.5e5
    star_mag_range: tuple[float, float] = (14.0, 25.5)
    galaxy_mag_range: tuple[float, float] = (18.0, 25.5)
    star_slope: float = 0.12
    galaxy_slope: float = 0.33
    gaussian_galaxy_mag: float = 24.3


def _power_law_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    # Inverse-CDF sampling of dN/dm ~ 10**(slope * m) on [lo, hi].
    a = 10 ** (slope * lo)
    b = 10 ** (slope * hi)
    return np.log10(a + rng.random(n) * (b - a)) / slope


def sample_galaxy_radius(rng: np.random.Generator, mag: np.ndarray, pixel_scale: float) -> np.ndarray:
    """Half-light radius (pixels) of galaxies of AB magnitude ``mag``: fainter is smaller, log-normal."""
    median_arcsec = 0.9 * 10 ** (-0.13 * (np.asarray(mag) - 21.0))
    return median_arcsec / pixel_scale * np.exp(0.45 * rng.standard_normal(np.shape(mag)))


def add_galaxy(
    scene: Scene,
    rng: np.random.Generator,
    canvas,
    x,
    y,
    flux,
    r_e,
    *,
    obj=-1,
    bulge_fraction=None,
    dx_t=0.0,
    dy_t=0.0,
) -> None:
    """Add disc + bulge galaxies (Sersic 1 and 4) with random shapes.

    Parameters
    ----------
    scene : `Scene`
        Receives the galaxies' ``extended`` components: a disc and a bulge each
        (one of them for pure discs and spheroids).
    rng : `numpy.random.Generator`
    canvas, x, y, flux, r_e : array-like, (m,)
        Canvas, centre (pixels), total flux (nJy, same in science and template), disc
        half-light radius (pixels).
    obj : `int` or array-like
        Labelled object index (-1 for background galaxies).
    dx_t, dy_t : array-like
        Offset of the galaxy in the template (pixels), e.g. a misregistration.
    bulge_fraction : array-like, optional
        Bulge-to-total flux ratio; drawn (half pure discs, a fifth pure spheroids) by default.
    """
    canvas = np.atleast_1d(canvas)
    m = len(canvas)
    if m == 0:
        return
    if bulge_fraction is None:
        u = rng.random(m)
        bulge_fraction = np.where(u < 0.5, 0.0, np.where(u < 0.8, rng.uniform(0.1, 0.5, m), 1.0))
    bt = np.broadcast_to(np.asarray(bulge_fraction, dtype=float), (m,))
    flux = np.broadcast_to(np.asarray(flux, dtype=float), (m,))
    theta = rng.uniform(0, np.pi, m)
    # Inclined thin discs with an intrinsic thickness of 0.15.
    cos_i = rng.random(m)
    q_disc = np.sqrt(cos_i**2 + 0.15**2 * (1 - cos_i**2))
    q_bulge = rng.uniform(0.55, 1.0, m)
    r_e = np.broadcast_to(np.asarray(r_e, dtype=float), (m,))
    common = dict(x=x, y=y, obj=obj, theta=theta, dx_t=dx_t, dy_t=dy_t)
    disc = bt < 1
    scene.add(
        "extended",
        canvas[disc],
        **_sub(common, disc, m),
        flux_s=(flux * (1 - bt))[disc],
        flux_t=(flux * (1 - bt))[disc],
        shape=1,
        r_e=r_e[disc],
        q=q_disc[disc],
    )
    bulge = bt > 0
    r_b = np.where(bt < 1, 0.6 * r_e, r_e)
    scene.add(
        "extended",
        canvas[bulge],
        **_sub(common, bulge, m),
        flux_s=(flux * bt)[bulge],
        flux_t=(flux * bt)[bulge],
        shape=4,
        r_e=np.maximum(r_b, 0.3)[bulge],
        q=q_bulge[bulge],
    )


def _sub(columns: dict, sel: np.ndarray, m: int) -> dict:
    return {k: np.broadcast_to(np.asarray(v), (m,))[sel] for k, v in columns.items()}


def add_field(
    scene: Scene,
    rng: np.random.Generator,
    n_canvas: int,
    height: int,
    width: int,
    *,
    pixel_scale: float = 0.2,
    density: FieldDensity | None = None,
    density_factor=1.0,
) -> None:
    """Add the static field (stars and galaxies, identical in science and template).

    Parameters
    ----------
    scene : `Scene`
    rng : `numpy.random.Generator`
    n_canvas, height, width : `int`
        Canvases to fill and their size (pixels); sources are spread over the whole canvas.
    pixel_scale : `float`
        Arcseconds per pixel.
    density : `FieldDensity`, optional
    density_factor : `float` or array-like (n_canvas,)
        Multiplies both densities (crowded or sparse fields).
    """
    density = density or FieldDensity()
    area_deg2 = height * width * (pixel_scale / 3600.0) ** 2
    factor = np.broadcast_to(np.asarray(density_factor, dtype=float), (n_canvas,))
    n_star = rng.poisson(density.stars_per_deg2 * area_deg2 * factor)
    n_gal = rng.poisson(density.galaxies_per_deg2 * area_deg2 * factor)
    canvas = np.repeat(np.arange(n_canvas), n_star)
    m = len(canvas)
    mags = _power_law_mags(rng, m, *density.star_mag_range, density.star_slope)
    flux = mag_to_nJy(mags)
    scene.add(
        "point",
        canvas,
        x=rng.uniform(-0.5, width - 0.5, m),
        y=rng.uniform(-0.5, height - 0.5, m),
        flux_s=flux,
        flux_t=flux,
    )
    canvas = np.repeat(np.arange(n_canvas), n_gal)
    m = len(canvas)
    mags = _power_law_mags(rng, m, *density.galaxy_mag_range, density.galaxy_slope)
    x = rng.uniform(-0.5, width - 0.5, m)
    y = rng.uniform(-0.5, height - 0.5, m)
    r_e = sample_galaxy_radius(rng, mags, pixel_scale)
    faint = mags > density.gaussian_galaxy_mag
    # A Gaussian's half-light radius is 1.1774 sigma; axis ratios as for discs.
    sigma = r_e[faint] / 1.1774
    q = np.sqrt(rng.uniform(0.1, 1.0, faint.sum()))
    along_x = rng.random(faint.sum()) < 0.5
    flux = mag_to_nJy(mags[faint])
    scene.add(
        "point",
        canvas[faint],
        x=x[faint],
        y=y[faint],
        flux_s=flux,
        flux_t=flux,
        size_x=np.where(along_x, sigma / np.sqrt(q), sigma * np.sqrt(q)),
        size_y=np.where(along_x, sigma * np.sqrt(q), sigma / np.sqrt(q)),
    )
    bright = ~faint
    add_galaxy(scene, rng, canvas[bright], x[bright], y[bright], mag_to_nJy(mags[bright]), r_e[bright])


#: Range of the factor on the field density of each cutout canvas (drawn log-uniformly):
#: cutouts come from sparse and crowded fields alike.
CUTOUT_DENSITY_RANGE: tuple[float, float] = (0.3, 3.0)


def add_cutout_fields(
    scene: Scene, rng: np.random.Generator, n_canvas: int, size: int, pixel_scale: float
) -> None:
    """Add the static field of ``n_canvas`` square cutout canvases of side ``size``, each at its own density.

    The density factor of each canvas is drawn log-uniformly in `CUTOUT_DENSITY_RANGE`;
    see `add_field` for the rest.
    """
    factor = np.exp(rng.uniform(*np.log(CUTOUT_DENSITY_RANGE), n_canvas))
    add_field(scene, rng, n_canvas, size, size, pixel_scale=pixel_scale, density_factor=factor)
