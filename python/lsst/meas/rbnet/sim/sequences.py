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

from ..constants import BOGUS, CHANNEL_ORDER, REAL, REAL_CLASSES
from .conditions import with_templates
from .imaging import (
    add_template_noise,
    observe,
    render_models,
    sample_conditions,
)
from .objects import BEHAVIOUR, KINDS, draw_objects, object_components, rubin_cadence
from .scene import Scene, add_cutout_fields
from .series import simulate_visit_series
from .stamps import class_counts

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
    objs = draw_objects(rng, classes, size, centre, times_by_object, snr_range)

    # Conditions: seeing and sky per visit; one template per object.
    cond_v = sample_conditions(rng, n_frames, fwhm_range=fwhm_range)
    cond_o = sample_conditions(rng, n_obj, fwhm_range=fwhm_range)
    cond = with_templates(cond_v, cond_o, frame_obj)

    static = Scene()  # on object canvases: both sides; the template side makes the template
    add_cutout_fields(static, rng, n_obj, size, pixel_scale)
    parts = object_components(rng, objs, times_by_object, n_visits, cond, shape, snr_range, static)
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
