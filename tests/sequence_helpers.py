# This file is part of meas_rbnet.
"""Synthetic per-visit inputs of the sequence model, shared by the sequence test files.

The tables are those the reliability task writes (``dia_source_cutouts``,
``dia_source_unstandardized_reliability``), made directly with 21-pixel stamps.
"""

import astropy.table
import numpy as np

from lsst.meas.rbnet.constants import CHANNEL_ORDER

STAMP = 21
FRAME = 20


def make_series(
    ra,
    dec,
    n_visits=4,
    *,
    seed=0,
    object_ids=True,
    present=None,
    scatter_arcsec=0.1,
    first_visit=1,
    time_column=True,
):
    """Per-visit cutouts and source tables of objects at (ra, dec) observed ``n_visits`` times.

    Object ``k`` (diaObjectId ``k + 1``) is real when ``k`` is even (a point source in the
    science stamp) and bogus otherwise. ``present[k]`` lists the visits it is detected in.

    Returns
    -------
    cutouts, sources : `list` [`astropy.table.Table`]
    times : `list` [`float`]
    labels : `astropy.table.Table`
        Per source (id, label).
    """
    rng = np.random.default_rng(seed)
    ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
    n_obj = len(ra)
    truth = (np.arange(n_obj) % 2 == 0).astype(np.int16)
    yy, xx = np.mgrid[:STAMP, :STAMP] - STAMP // 2
    psf = np.exp(-(xx**2 + yy**2) / 4.0)
    cutouts, sources, times, labels = [], [], [], []
    for v in range(n_visits):
        visit = first_visit + v
        rows = [k for k in range(n_obj) if present is None or v in present[k]]
        ids = np.int64(visit) * 100_000 + np.asarray(rows, np.int64)
        stamps = rng.normal(0, 1, (len(rows), 3, STAMP, STAMP)).astype(np.float32)
        stamps[:, 1] += (truth[rows] * 20.0)[:, None, None] * psf
        cut = astropy.table.Table()
        cut["id"] = ids
        cut["stamp"] = stamps
        cut["reliabilityFlags"] = np.zeros(len(rows), np.int32)
        cut["x"] = np.zeros(len(rows))
        cut["y"] = np.zeros(len(rows))
        cut.meta["channels"] = list(CHANNEL_ORDER)
        src = astropy.table.Table()
        src["id"] = ids
        err = scatter_arcsec / 3600.0
        src["ra"] = ra[rows] + rng.normal(0, err, len(rows)) / np.cos(np.radians(dec[rows]))
        src["dec"] = dec[rows] + rng.normal(0, err, len(rows))
        if object_ids:
            src["diaObjectId"] = np.asarray(rows, np.int64) + 1
        mjd = 60000.0 + 2.0 * v + 0.1 * rng.uniform()
        if time_column:
            src["midpointMjdTai"] = np.full(len(rows), mjd)
        src["reliability"] = rng.uniform(0, 1, len(rows)).astype(np.float32)
        cutouts.append(cut)
        sources.append(src)
        times.append(mjd)
        labels.append(astropy.table.Table({"id": ids, "label": truth[rows]}))
    return cutouts, sources, times, astropy.table.vstack(labels)


def field(n=6, seed=0, spacing_arcsec=20.0):
    rng = np.random.default_rng(seed)
    ra = 150.0 + np.arange(n) * spacing_arcsec / 3600.0
    dec = 2.0 + rng.uniform(-1, 1, n) / 3600.0
    return ra, dec
