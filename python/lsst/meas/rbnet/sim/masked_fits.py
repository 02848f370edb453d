# This file is part of meas_rbnet.
"""Images in the FITS layout of ``lsst.afw.image.MaskedImage.writeFits``.

An empty primary HDU, then IMAGE, MASK with ``MP_*`` plane cards, and
VARIANCE, which `lsst.images.MaskedImage.read_legacy` reads without afw.
"""

__all__ = ["write_masked_image", "read_masked_image"]

import numpy as np
from astropy.io import fits

from ..constants import MASK_PLANES

#: Planes (never set here) that real afw images of each kind declare after ours; readers such
#: as `lsst.images.MaskedImage.read_legacy` recognise the kind of image from them.
_KIND_PLANES: dict[str, tuple[str, ...]] = {
    "science": (),
    "template": ("INEXACT_PSF", "SENSOR_EDGE", "HIGH_VARIANCE"),
    "difference": ("SAT_TEMPLATE", "HIGH_VARIANCE"),
}


def _plane_cards(header: fits.Header, kind: str) -> None:
    planes = dict(MASK_PLANES)
    for name in _KIND_PLANES[kind]:
        planes.setdefault(name, max(planes.values()) + 1)
    for name, bit in planes.items():
        header[f"HIERARCH MP_{name}"] = bit


def write_masked_image(
    path, image, mask, variance, *, kind: str = "science", wcs=None, metadata: dict | None = None
) -> str:
    """Write image, mask and variance planes in the afw ``MaskedImage`` FITS layout.

    Parameters
    ----------
    path : `str`
    image, variance : `numpy.ndarray`, (H, W) float32
    mask : `numpy.ndarray`, (H, W) int32
        Bits of `lsst.meas.rbnet.constants.MASK_PLANES` (recorded as ``MP_*`` cards).
    kind : `str`
        ``"science"``, ``"template"`` or ``"difference"``: the plane cards of that kind of image.
    wcs : `astropy.wcs.WCS`, optional
        Zero-based pixel WCS; written shifted to FITS one-based convention by astropy.
    metadata : `dict`, optional
        Scalar cards for the primary header (keys longer than 8 characters use HIERARCH).
    """
    primary = fits.PrimaryHDU()
    for key, value in (metadata or {}).items():
        if isinstance(value, (bool, int, float, str, np.integer, np.floating)):
            primary.header[key if len(key) <= 8 else f"HIERARCH {key}"] = value
    hdus = [primary]
    wcs_header = wcs.to_header() if wcs is not None else fits.Header()
    for name, data in (("IMAGE", image), ("MASK", mask), ("VARIANCE", variance)):
        header = fits.Header()
        header["EXTTYPE"] = name
        header.extend(wcs_header, update=True)
        header["LTV1"] = 0
        header["LTV2"] = 0
        if name == "MASK":
            _plane_cards(header, kind)
        if name == "IMAGE":
            header["BUNIT"] = "nJy"
        hdus.append(fits.ImageHDU(np.asarray(data), header=header, name=name))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return str(path)


def read_masked_image(path):
    """Read ``(image, mask, variance, primary_header)`` written by `write_masked_image`."""
    with fits.open(path) as hdus:
        image = np.array(hdus["IMAGE"].data, dtype=np.float32)
        mask = np.array(hdus["MASK"].data, dtype=np.int32)
        variance = np.array(hdus["VARIANCE"].data, dtype=np.float32)
        planes = {k[3:]: v for k, v in hdus["MASK"].header.items() if k.startswith("MP_")}
        if planes and planes != MASK_PLANES:
            # Re-map bits written with another plane numbering.
            remapped = np.zeros_like(mask)
            for name, bit in planes.items():
                if name in MASK_PLANES:
                    remapped |= np.where(mask & (1 << bit), np.int32(1 << MASK_PLANES[name]), 0).astype(
                        np.int32
                    )
            mask = remapped
        header = hdus[0].header.copy()
    return image, mask, variance, header
