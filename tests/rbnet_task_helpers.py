# This file is part of meas_rbnet.
"""Small inputs shared by the task, Butler and pipetask tests: a tiny model package and a
tiny synthetic (visit, detector) with known sources. Not a test module (no ``test_`` prefix)."""

__all__ = ["tiny_package", "tiny_visit", "TinyImage", "TinyVisit", "WCS_CENTER"]

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
