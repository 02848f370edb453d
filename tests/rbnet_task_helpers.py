# This file is part of meas_rbnet.
"""Small inputs shared by the task, Butler and pipetask tests: a tiny model package and a
tiny synthetic (visit, detector) with known sources. Not a test module (no ``test_`` prefix)."""

__all__ = [
    "tiny_package",
    "tiny_visit",
    "TinyImage",
    "TinyVisit",
    "WCS_CENTER",
    "shipped_package",
    "AlignedScene",
    "aligned_scene",
    "own_cutout_scores",
    "assert_own_scores",
    "write_scene",
    "labels_into_run",
]

import dataclasses

import astropy.table
import astropy.wcs
import numpy as np

from lsst.meas.rbnet.constants import CHANNEL_ORDER, MASK_PLANES

WCS_CENTER = (150.0, 2.0)


def tiny_package(channels=CHANNEL_ORDER, stamp_size=21, version="tiny1", seed=0):
    """An untrained but valid triplet model package (a few thousand weights)."""
    import torch

    from lsst.meas.rbnet.contract import InputContract
    from lsst.meas.rbnet.nn import registry
    from lsst.meas.rbnet.package import ModelPackage

    torch.manual_seed(seed)
    hp = dict(in_channels=len(channels), stamp_size=stamp_size, widths=[4, 8], hidden=8, dropout=0.0)
    module = registry.build("triplet_cnn", **hp)
    return ModelPackage.from_modules(
        "triplet",
        {"classifier": ("triplet_cnn", hp, module)},
        contract=InputContract(stamp_size=stamp_size, channels=tuple(channels)),
        version=version,
        thresholds=[{"name": "default", "threshold": 0.5, "purity": None, "completeness": None}],
    )


@dataclasses.dataclass
class TinyImage:
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    # Parent-frame pixel of image[0, 0] (read by the task's adapter, as an lsst.images bbox start).
    x0: int = 0
    y0: int = 0


@dataclasses.dataclass
class TinyVisit:
    science: TinyImage
    template: TinyImage
    difference: TinyImage
    sources: astropy.table.Table
    metadata: dict


def _wcs(shape):
    w = astropy.wcs.WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.crval = list(WCS_CENTER)
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


def tiny_visit(visit=1, detector=0, shape=(128, 128), n_sources=12, seed=0, no_template_rows=0):
    """Gaussian noise images with point sources in the difference; sources include one on the
    edge and one off the image. The template's first ``no_template_rows`` rows are NO_DATA."""
    rng = np.random.default_rng(seed + 1000 * visit + detector)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    x = rng.uniform(15, w - 15, n_sources)
    y = rng.uniform(15, h - 15, n_sources)
    x[0], y[0] = 1.0, h / 2  # on the edge
    x[1], y[1] = -40.0, h / 2  # off the image
    label = (rng.uniform(size=n_sources) > 0.5).astype(np.int16)
    planes = []
    for k in range(3):
        img = rng.normal(0, 10, shape).astype(np.float32)
        if k != 2:
            for xi, yi, li in zip(x, y, label):
                amp = 200.0 if li else -150.0
                img += (amp * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / (2 * 1.5**2))).astype(np.float32)
        mask = np.zeros(shape, np.int32)
        if k == 2 and no_template_rows:
            mask[:no_template_rows] |= 1 << MASK_PLANES["NO_DATA"]
            img[:no_template_rows] = np.nan
        planes.append(TinyImage(img, np.full(shape, 100.0, np.float32), mask))
    difference, science, template = planes
    wcs = _wcs(shape)
    ra, dec = wcs.all_pix2world(x, y, 0)
    ids = (np.int64(visit) * 1000 + detector) * 10000 + np.arange(n_sources, dtype=np.int64)
    sources = astropy.table.Table(
        {
            "id": ids,
            "x": x,
            "y": y,
            "ra": ra,
            "dec": dec,
            "psfFlux": rng.uniform(100, 1000, n_sources),
            "psfFluxErr": np.full(n_sources, 30.0),
            "snr": rng.uniform(5, 30, n_sources),
            "label": label,
            "source_class": np.where(label == 1, "real_new", "dipole"),
        }
    )
    meta = dict(
        visit=visit,
        detector=detector,
        mjd=60000.0 + visit,
        band="r",
        physical_filter="sim_r",
        wcs=wcs,
        fwhm=3.5,
        pixel_scale=0.2,
    )
    return TinyVisit(science, template, difference, sources, meta)


# ----------------------------------------------------------------------
# Alignment scenes: the right score on the right source
# ----------------------------------------------------------------------


def shipped_package():
    """The default model package users get (``data/rbnet-default.safetensors``)."""
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.scoring import default_model_path

    return ModelPackage.load(default_model_path())


@dataclasses.dataclass
class AlignedScene:
    """Images tiled with simulated triplets and one source per tile, rows in shuffled order.

    Attributes
    ----------
    visit : `TinyVisit`
        Images (origin ``(x0, y0)``) and sources (``id``, ``x``, ``y`` in the parent frame).
    x0, y0 : `int`
        Parent-frame pixel of the images' ``[0, 0]``.
    stamp_size : `int`
        Side of a tile (the model's stamp size).
    real : `numpy.ndarray`, (N,) bool
        Whether the tile under each source holds a confidently real triplet (checkerboard).
    scorable : `numpy.ndarray`, (N,) bool
        False for the two sources that cannot be scored (off the image, NaN centroid).
    """

    visit: TinyVisit
    x0: int
    y0: int
    stamp_size: int
    real: np.ndarray
    scorable: np.ndarray


def aligned_scene(package, *, rows=4, cols=5, origin=None, seed=0, visit=7, detector=0):
    """A scene where a permutation of scores or a dropped origin shift changes the answer.

    The images are a ``rows x cols`` mosaic of simulated triplets of the model's stamp
    size, real and bogus alternating like a checkerboard: real simulated triplets the
    package scores in (0.8, 0.999) and bogus ones it scores in (0.001, 0.2), so
    neighbouring tiles have very different scores and no two tiles score alike. Each tile
    has one source at its centre pixel (plus a sub-pixel offset in [-0.45, 0.45]); one more
    source lies off the image and one has a NaN centroid. Rows are in random order and
    ids are random (non-monotonic). The images' origin defaults to ``(S, 2 S)``: reading
    at the parent coordinates without subtracting it lands on the tile one column right
    and two rows up, whose class is the opposite one.
    """
    from lsst.meas.rbnet.scoring import score_triplets
    from lsst.meas.rbnet.sim import simulate_stamps

    S = package.contract.stamp_size
    x0, y0 = origin if origin is not None else (S, 2 * S)
    n_tiles = rows * cols
    n_real = (n_tiles + 1) // 2

    def pick(candidates, score, m):
        # Confident but not saturated scores, spread out: every tile's score differs from every
        # other's, so moving any score to another source is visible, not only across classes.
        candidates = candidates[np.argsort(score[candidates], kind="stable")]
        if len(candidates) < m:
            return None
        return candidates[np.linspace(0, len(candidates) - 1, m).round().astype(int)]

    # A sharper model leaves fewer triplets inside the bands: simulate more until there are enough.
    for n_pool in (12 * n_tiles, 48 * n_tiles, 192 * n_tiles):
        pool = simulate_stamps(n_pool, stamp_size=S, seed=seed, edge_fraction=0.0, with_masks=False)
        st = pool.stamps
        label = np.asarray(pool.table["label"])
        score = score_triplets(st[:, 1], st[:, 2], st[:, 0], model=package, device="cpu")
        ok = np.isfinite(st).all(axis=(1, 2, 3)) & np.isfinite(score)
        real_band = ok & (label == 1) & (score > 0.8) & (score < 0.999)
        bogus_band = ok & (label == 0) & (score > 0.001) & (score < 0.2)
        reals = pick(np.flatnonzero(real_band), score, n_real)
        bogus = pick(np.flatnonzero(bogus_band), score, n_tiles - n_real)
        if reals is not None and bogus is not None:
            chosen = np.sort(score[np.concatenate([reals, bogus])])
            if np.diff(chosen).min() > 1e-4:
                break
    else:
        raise AssertionError(
            f"the package scores too few of {n_pool} simulated triplets confidently but distinctly "
            "(real in (0.8, 0.999), bogus in (0.001, 0.2)) to build the alignment scene"
        )
    rng = np.random.default_rng(seed + 1)
    reals, bogus = rng.permutation(reals), rng.permutation(bogus)
    H, W = rows * S, cols * S
    planes = np.zeros((3, H, W), np.float32)
    tile_real = np.zeros((rows, cols), bool)
    ri = bi = 0
    for r in range(rows):
        for c in range(cols):
            if (r + c) % 2 == 0:
                k, ri = reals[ri], ri + 1
                tile_real[r, c] = True
            else:
                k, bi = bogus[bi], bi + 1
            planes[:, r * S : (r + 1) * S, c * S : (c + 1) * S] = st[k]
    rr, cc = np.divmod(np.arange(n_tiles), cols)
    x = x0 + cc * S + S // 2 + rng.uniform(-0.45, 0.45, n_tiles)
    y = y0 + rr * S + S // 2 + rng.uniform(-0.45, 0.45, n_tiles)
    x = np.concatenate([x, [x0 - 50.0, np.nan]])
    y = np.concatenate([y, [y0 + H / 2, y0 + 10.0]])
    real = np.concatenate([tile_real[rr, cc], [False, False]])
    scorable = np.arange(n_tiles + 2) < n_tiles
    order = rng.permutation(n_tiles + 2)
    ids = rng.choice(np.int64(1) << 40, n_tiles + 2, replace=False).astype(np.int64)
    assert np.any(np.diff(ids) < 0) and np.any(np.diff(ids) > 0)
    x, y, real, scorable = x[order], y[order], real[order], scorable[order]
    wcs = _wcs((y0 + H, x0 + W))
    ra, dec = wcs.all_pix2world(np.nan_to_num(x), np.nan_to_num(y), 0)
    sources = astropy.table.Table({"id": ids, "x": x, "y": y, "ra": ra, "dec": dec})
    images = [
        TinyImage(planes[k], np.ones((H, W), np.float32), np.zeros((H, W), np.int32), x0, y0)
        for k in range(3)
    ]
    difference, science, template = images
    meta = dict(
        visit=visit,
        detector=detector,
        mjd=60000.0 + visit,
        band="r",
        physical_filter="sim_r",
        wcs=wcs,
        fwhm=3.5,
        pixel_scale=0.2,
    )
    return AlignedScene(TinyVisit(science, template, difference, sources, meta), x0, y0, S, real, scorable)


def own_cutout_scores(scene, package, x=None, y=None):
    """Scores of each source's own cutout, cut here by plain slicing and scored with `score_triplets`.

    ``x``, ``y`` (parent frame) default to the scene's centroids; NaN for sources whose
    stamp is not entirely inside the images.
    """
    from lsst.meas.rbnet.scoring import score_triplets

    v = scene.visit
    x = np.asarray(v.sources["x"] if x is None else x, float)
    y = np.asarray(v.sources["y"] if y is None else y, float)
    S, h = scene.stamp_size, scene.stamp_size // 2
    H, W = v.difference.image.shape
    out = np.full(len(x), np.nan)
    cut = {k: [] for k in ("science", "template", "difference")}
    rows = []
    for i, (xi, yi) in enumerate(zip(x, y)):
        if not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        # The centre pixel holds the centroid (round half up), in the images' own (local) frame.
        cx, cy = int(np.floor(xi - scene.x0 + 0.5)), int(np.floor(yi - scene.y0 + 0.5))
        if cx - h < 0 or cy - h < 0 or cx + h >= W or cy + h >= H:
            continue
        for k in cut:
            cut[k].append(getattr(v, k).image[cy - h : cy + h + 1, cx - h : cx + h + 1])
        rows.append(i)
    if rows:
        stacks = {k: np.stack(a) for k, a in cut.items()}
        assert stacks["difference"].shape[1:] == (S, S)
        out[rows] = score_triplets(
            stacks["science"], stacks["template"], stacks["difference"], model=package, device="cpu"
        )
    return out


def assert_own_scores(reliability, scene, package):
    """Assert that the task's ``reliability`` table gives each scene source its own cutout's score.

    Rows must be the scene's sources in their (shuffled) order; scorable sources must carry
    the score `own_cutout_scores` computes (to float32 rounding), the others NaN and
    ``NOT_SCORED``.
    """
    from lsst.meas.rbnet.flags import SourceFlag

    np.testing.assert_array_equal(reliability["id"], scene.visit.sources["id"])
    own = own_cutout_scores(scene, package)
    score = np.asarray(reliability["score"], float)
    ok = scene.scorable
    np.testing.assert_allclose(score[ok], own[ok], rtol=0, atol=1e-5)
    assert np.all(np.isnan(score[~ok]))
    assert np.all(np.asarray(reliability["reliabilityFlags"])[~ok] & SourceFlag.NOT_SCORED)
    # The scene is what it claims: real tiles score high and bogus ones low.
    assert np.all(own[ok & scene.real] > 0.8) and np.all(own[ok & ~scene.real] < 0.2)


def write_scene(butler, run, scene, records_run=None, template_shift=(0, 0)):
    """Write an `AlignedScene` into ``run`` with images whose bounding box starts at ``(x0, y0)``.

    The dimension records come from writing the whole detector (the scene pasted at its
    origin) into ``records_run`` with `VisitWriter`; the datasets in ``run`` are the
    sub-images of those (`lsst.images` bounding boxes not starting at 0) and the sources.
    ``template_shift`` (dx, dy), at most 8 pixels, moves the template's box: a template
    not on the science image's pixel grid, which the reliability task must refuse.
    """
    import lsst.images
    from lsst.daf.butler import CollectionType

    from lsst.meas.rbnet.butler.images import make_difference_image, make_masked_image, make_visit_image
    from lsst.meas.rbnet.butler.repo import VisitWriter, sources_table

    v = scene.visit
    H, W = v.difference.image.shape
    full_shape = (scene.y0 + H + 8, scene.x0 + W + 8)
    full = []
    for img in (v.science, v.template, v.difference):
        planes = [np.zeros(full_shape, np.float32), np.ones(full_shape, np.float32)]
        planes.append(np.zeros(full_shape, np.int32))
        for p, a in zip(planes, (img.image, img.variance, img.mask)):
            p[scene.y0 : scene.y0 + H, scene.x0 : scene.x0 + W] = a
        full.append(TinyImage(*planes))
    whole = TinyVisit(full[0], full[1], full[2], v.sources, v.metadata)
    writer = VisitWriter(butler, run=records_run or f"{run}-records")
    data_id = writer.write(whole)
    m = v.metadata
    common = dict(
        wcs=m["wcs"],
        instrument=data_id["instrument"],
        detector=m["detector"],
        visit=m["visit"],
        band=m["band"],
        physical_filter=m["physical_filter"],
        mjd=m["mjd"],
    )
    box = lsst.images.Box.factory[scene.y0 : scene.y0 + H, scene.x0 : scene.x0 + W]
    sci, tmpl, diff = full
    science = make_visit_image(sci.image, sci.variance, sci.mask, fwhm=m["fwhm"], **common)[box]
    difference = make_difference_image(diff.image, diff.variance, diff.mask, fwhm=m["fwhm"], **common)[box]
    dx, dy = template_shift
    tbox = lsst.images.Box.factory[scene.y0 + dy : scene.y0 + dy + H, scene.x0 + dx : scene.x0 + dx + W]
    template = make_masked_image(
        tmpl.image, tmpl.variance, tmpl.mask, wcs=m["wcs"], instrument=data_id["instrument"],
        detector=m["detector"],
    )[tbox]  # fmt: skip
    butler.registry.registerCollection(run, CollectionType.RUN)
    butler.put(science, "preliminary_visit_image", data_id, run=run)
    butler.put(template, "template_detector", data_id, run=run)
    butler.put(difference, "difference_image", data_id, run=run)
    butler.put(sources_table(v.sources), "dia_source_unstandardized", data_id, run=run)
    return data_id


def labels_into_run(butler, labels, run, instrument=None):
    """Ingest labels with `ingest_labels` and copy them into an existing ``run``.

    `lsst.pipe.base.testUtils.makeQuantum` finds inputs only in the Butler's own run, but
    `ingest_labels` writes only into a new run (labels are never overwritten): ingest into
    ``<run>-labels`` and put the dataset read back into ``run``.
    """
    from lsst.meas.rbnet.butler.repo import LABELS_DATASET_TYPE, ingest_labels

    ref = ingest_labels(butler, labels, run=f"{run}-labels", instrument=instrument)
    butler.put(butler.get(ref), LABELS_DATASET_TYPE, ref.dataId, run=run)
    return ref
