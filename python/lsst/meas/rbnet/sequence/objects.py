# This file is part of meas_rbnet.
"""The per-object sequence reliability table (``dia_object_sequence_reliability``)."""

from __future__ import annotations

__all__ = ["empty_object_table", "object_table"]

import astropy.table
import numpy as np

from ..constants import VERSION_MAX_LENGTH


def empty_object_table() -> astropy.table.Table:
    """A per-object sequence reliability table with no rows and every column."""
    return object_table(
        object_id=np.zeros(0, np.int64),
        n_visits=np.zeros(0, np.int32),
        n_sources=np.zeros(0, np.int32),
        first=np.zeros(0),
        last=np.zeros(0),
        ra=np.zeros(0),
        dec=np.zeros(0),
        reliability=np.zeros(0, np.float32),
        version="",
        flags=np.zeros(0, np.int32),
        triplet_max=np.zeros(0, np.float32),
        triplet_mean=np.zeros(0, np.float32),
    )


def object_table(
    *,
    object_id,
    n_visits,
    n_sources,
    first,
    last,
    ra,
    dec,
    reliability,
    version,
    flags,
    triplet_max,
    triplet_mean,
) -> astropy.table.Table:
    n = len(object_id)
    table = astropy.table.Table()
    table["objectId"] = np.asarray(object_id, np.int64)
    table["nVisits"] = np.asarray(n_visits, np.int32)
    table["nSources"] = np.asarray(n_sources, np.int32)
    table["firstMjd"] = np.asarray(first, np.float64)
    table["lastMjd"] = np.asarray(last, np.float64)
    table["ra"] = np.asarray(ra, np.float64)
    table["dec"] = np.asarray(dec, np.float64)
    table["reliability"] = np.asarray(reliability, np.float32)
    table["reliabilityVersion"] = np.array([version] * n, dtype=f"<U{VERSION_MAX_LENGTH}")
    table["flags"] = np.asarray(flags, np.int32)
    table["tripletReliabilityMax"] = np.asarray(triplet_max, np.float32)
    table["tripletReliabilityMean"] = np.asarray(triplet_mean, np.float32)
    table["ra"].unit = "deg"
    table["dec"].unit = "deg"
    table["firstMjd"].unit = "d"
    table["lastMjd"].unit = "d"
    return table
