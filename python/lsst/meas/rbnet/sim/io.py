# This file is part of meas_rbnet.
"""Files of simulated data: stamp sets as ``.npz``, visits as FITS plus a source table.

Stamps are written with `numpy.savez_compressed` holding only numeric arrays
and fixed-width unicode class names, so ``np.load(path, allow_pickle=False)``
reads them. Visit images are written in the layout of
``lsst.afw.image.MaskedImage.writeFits`` (an empty primary HDU, then IMAGE,
MASK with ``MP_*`` plane cards, and VARIANCE), which
`lsst.images.MaskedImage.read_legacy` reads without afw.

The stamp files are written here; the image layout is `lsst.meas.rbnet.sim.masked_fits`
and the visit directory `lsst.meas.rbnet.sim.detector` (next to the visit types), both
re-exported here.
"""

__all__ = [
    "META_PREFIX",
    "STAMP_KEYS",
    "write_stamps",
    "read_stamps",
    "write_masked_image",
    "read_masked_image",
    "write_visit",
    "read_visit",
]

import numpy as np
from astropy.table import Table

from ..constants import CHANNEL_ORDER
from .detector import read_visit, write_visit
from .masked_fits import read_masked_image, write_masked_image
from .stamps import StampSet

#: Keys always present in a stamps ``.npz`` file.
STAMP_KEYS: tuple[str, ...] = (
    "stamps",
    "masks",
    "id",
    "label",
    "source_class",
    "snr",
    "flux",
    "fwhm_science",
    "fwhm_template",
)


#: Prefix of the keys that hold the scalars of the table's ``meta`` in a stamps file.
META_PREFIX = "meta_"


def write_stamps(stamp_set, path) -> str:
    """Write a `StampSet` to a compressed ``.npz`` readable without pickle.

    Besides `STAMP_KEYS` every other numeric or boolean table column is
    written under its own name, plus ``channels`` (fixed-width unicode), and
    every scalar of ``table.meta`` (survey, units, pixel scale, stamp size) as
    a 0-d array named ``meta_<key>``.
    """
    table = stamp_set.table
    arrays = {"stamps": stamp_set.stamps, "channels": np.array(CHANNEL_ORDER, dtype="U16")}
    if stamp_set.masks is not None:
        arrays["masks"] = stamp_set.masks
    else:
        arrays["masks"] = np.zeros(stamp_set.stamps.shape, np.int32)
    if stamp_set.variances is not None:
        arrays["variances"] = stamp_set.variances
    for name in table.colnames:
        column = np.asarray(table[name])
        if column.dtype.kind in "US":
            column = column.astype(f"U{max(1, max((len(v) for v in column), default=1))}")
        elif column.dtype.kind not in "biuf":
            continue
        arrays[name] = column
    for key, value in table.meta.items():
        if isinstance(value, (str, bool, int, float, np.generic)):
            arrays[f"{META_PREFIX}{key}"] = np.asarray(value)
    np.savez_compressed(path, **arrays)
    return str(path)


def read_stamps(path):
    """Read a stamps ``.npz`` back into a `StampSet` (without pickle)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    missing = [k for k in STAMP_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not a stamps file, missing keys {missing}.")
    table = Table()
    skip = {"stamps", "masks", "variances", "channels"}
    for name, value in arrays.items():
        if name.startswith(META_PREFIX) and value.ndim == 0:
            table.meta[name[len(META_PREFIX) :]] = value.item()
        elif name not in skip and value.ndim == 1:
            table[name] = value
    return StampSet(
        stamps=arrays["stamps"], masks=arrays["masks"], table=table, variances=arrays.get("variances")
    )
