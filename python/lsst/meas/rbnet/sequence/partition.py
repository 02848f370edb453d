# This file is part of meas_rbnet.
"""The part of the sky a quantum owns, so that each object is scored by one quantum.

An object belongs to the partition holding its mean position (`object_positions
<lsst.meas.rbnet.sequence.association.object_positions>`); sky pixels do not overlap,
so an object seen by two quanta near a boundary is scored by exactly one.
"""

from __future__ import annotations

__all__ = ["SkyPartition"]

import numpy as np


class SkyPartition:
    """The part of the sky a quantum owns: one sky pixel, or a region.

    Parameters
    ----------
    pixelization : `lsst.sphgeom.Pixelization`, optional
        E.g. ``HtmPixelization(7)``; with ``index``.
    index : `int`, optional
        The pixel.
    region : `lsst.sphgeom.Region`, optional
        Instead of a pixel (regions that overlap, e.g. patches, may own one object twice).
    """

    def __init__(self, pixelization=None, index: int | None = None, region=None):
        if (pixelization is None) == (region is None):
            raise ValueError("SkyPartition needs either a pixelization and an index, or a region.")
        if pixelization is not None and index is None:
            raise ValueError("SkyPartition needs the pixel index with the pixelization.")
        self.pixelization = pixelization
        self.index = None if index is None else int(index)
        self.region = region

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """``(M,)`` bool: positions (degrees) inside the partition (never for NaN positions)."""
        from lsst.sphgeom import LonLat, UnitVector3d

        ra = np.asarray(ra, float)
        dec = np.asarray(dec, float)
        out = np.zeros(len(ra), bool)
        for k in np.flatnonzero(np.isfinite(ra) & np.isfinite(dec)):
            v = UnitVector3d(LonLat.fromDegrees(float(ra[k]), float(dec[k])))
            if self.pixelization is not None:
                out[k] = self.pixelization.index(v) == self.index
            else:
                out[k] = self.region.contains(v)
        return out

    def __repr__(self) -> str:
        if self.pixelization is not None:
            return f"SkyPartition({self.pixelization!r}, {self.index})"
        return f"SkyPartition(region={self.region!r})"
