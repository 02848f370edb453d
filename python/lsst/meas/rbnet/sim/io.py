# This file is part of meas_rbnet.
"""Files of simulated data: stamp sets as ``.npz``, visits as FITS plus a source table.

Stamps are written with `numpy.savez_compressed` holding only numeric arrays
and fixed-width unicode class names, so ``np.load(path, allow_pickle=False)``
reads them. Visit images are written in the layout of
``lsst.afw.image.MaskedImage.writeFits`` (an empty primary HDU, then IMAGE,
MASK with ``MP_*`` plane cards, and VARIANCE), which
`lsst.images.MaskedImage.read_legacy` reads without afw.
"""

__all__ = [
    "STAMP_KEYS",
    "write_stamps",
    "read_stamps",
    "write_masked_image",
    "read_masked_image",
    "write_visit",
    "read_visit",
]

import json
import os

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..constants import CHANNEL_ORDER, MASK_PLANES

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


def write_stamps(stamp_set, path) -> str:
    """Write a `StampSet` to a compressed ``.npz`` readable without pickle.

    Besides `STAMP_KEYS` every other numeric or boolean table column is
    written under its own name, plus ``channels`` (fixed-width unicode).
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
    np.savez_compressed(path, **arrays)
    return str(path)


def read_stamps(path):
    """Read a stamps ``.npz`` back into a `StampSet` (without pickle)."""
    from .stamps import StampSet

    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    missing = [k for k in STAMP_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not a stamps file, missing keys {missing}.")
    table = Table()
    skip = {"stamps", "masks", "variances", "channels"}
    for name, value in arrays.items():
        if name not in skip and value.ndim == 1:
            table[name] = value
    return StampSet(
        stamps=arrays["stamps"], masks=arrays["masks"], table=table, variances=arrays.get("variances")
    )


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


def write_visit(visit, directory, *, sources_format: str = "ecsv") -> dict[str, str]:
    """Write a `SimulatedVisit`: ``science.fits``, ``template.fits``, ``difference.fits``,
    ``sources.ecsv`` (or ``sources.parquet``) and ``metadata.json``.

    Returns
    -------
    paths : `dict` [`str`, `str`]
    """
    if sources_format not in ("ecsv", "parquet"):
        raise ValueError(f"sources_format must be 'ecsv' or 'parquet', got {sources_format!r}.")
    os.makedirs(directory, exist_ok=True)
    meta = visit.metadata
    card_meta = {
        "VISIT": meta.visit,
        "DETECTOR": meta.detector,
        "MJD": meta.mjd,
        "BAND": meta.band,
        "FILTER": meta.physical_filter,
        "EXPTIME": meta.exposure_time,
        "ZEROPT": meta.zero_point,
        "PIXSCALE": meta.pixel_scale,
        "SEED": meta.seed,
    }
    paths = {}
    for name in ("science", "template", "difference"):
        img = getattr(visit, name)
        path = os.path.join(directory, f"{name}.fits")
        write_masked_image(
            path,
            img.image,
            img.mask,
            img.variance,
            kind=name,
            wcs=meta.wcs,
            metadata={
                **card_meta,
                "PSF_FWHM": img.fwhm,
                "PSF_SIGX": float(img.psf.sigma_x[0]),
                "PSF_SIGY": float(img.psf.sigma_y[0]),
                "PSF_WFRC": float(img.psf.wing_fraction[0]),
                "PSF_WRAT": float(img.psf.wing_ratio[0]),
            },
        )
        paths[name] = path
    path = os.path.join(directory, f"sources.{sources_format}")
    visit.sources.write(path, overwrite=True, format="ascii.ecsv" if sources_format == "ecsv" else "parquet")
    paths["sources"] = path
    path = os.path.join(directory, "metadata.json")
    with open(path, "w") as stream:
        json.dump(meta.to_dict(), stream, indent=1, default=float)
    paths["metadata"] = path
    return paths


def read_visit(directory):
    """Read a visit written by `write_visit`."""
    from .psf import DoubleGaussianPsf
    from .visit import SimImage, SimulatedVisit, VisitMetadata

    with open(os.path.join(directory, "metadata.json")) as stream:
        meta = VisitMetadata.from_dict(json.load(stream))
    images = {}
    for name in ("science", "template", "difference"):
        image, mask, variance, header = read_masked_image(os.path.join(directory, f"{name}.fits"))
        psf = DoubleGaussianPsf(
            header["PSF_SIGX"], header["PSF_SIGY"], header["PSF_WFRC"], header["PSF_WRAT"]
        )
        images[name] = SimImage(image, variance, mask, psf)
    for ext in ("ecsv", "parquet"):
        path = os.path.join(directory, f"sources.{ext}")
        if os.path.exists(path):
            sources = Table.read(path, format="ascii.ecsv" if ext == "ecsv" else "parquet")
            break
    else:
        raise FileNotFoundError(f"{directory}: no sources.ecsv or sources.parquet.")
    return SimulatedVisit(**images, sources=sources, metadata=meta)
