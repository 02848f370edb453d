# This file is part of meas_rbnet.
"""Build `lsst.images` objects (VisitImage, DifferenceImage, MaskedImage) from arrays.

Used to write simulated visits into a Butler repository with the same Python types
Rubin's pipelines use. A `~lsst.images.VisitImage` needs a
`~lsst.images.cameras.Detector`, which has no public constructor for a camera that
is not described by an afw camera; `make_detector` writes a minimal description of
one detector (our own: a flat focal plane, square pixels, a constant plate scale)
and builds the detector through lsst.images' own serialization models, so the
result is exactly what reading such a detector from a file would give.
"""

from __future__ import annotations

__all__ = [
    "make_detector",
    "make_mask_schema",
    "make_sky_projection",
    "make_visit_image",
    "make_difference_image",
    "make_masked_image",
]

from typing import Any

import astropy.time
import astropy.units as u
import numpy as np

from ..constants import MASK_PLANES

#: Short descriptions of the mask planes written into simulated images.
_PLANE_DOCS: dict[str, str] = {
    "BAD": "Bad pixel (e.g. bad column).",
    "SAT": "Saturated pixel.",
    "INTRP": "Interpolated pixel.",
    "CR": "Cosmic ray.",
    "EDGE": "Near the detector edge.",
    "DETECTED": "Part of a detected source (positive).",
    "DETECTED_NEGATIVE": "Part of a detected source (negative).",
    "SUSPECT": "Pixel value above the suspect level.",
    "NO_DATA": "No data (e.g. no template coverage).",
    "STREAK": "Satellite or other streak.",
}

# Nominal camera geometry for simulated detectors: 10 micron pixels, detectors laid
# out on a square grid with 5% gaps. Only used for the focal-plane transforms, which
# nothing in this package reads; they make the detector description complete.
_PIXEL_SIZE_MM = 0.010


def make_detector(
    instrument: str,
    detector: int,
    width: int,
    height: int,
    *,
    visit: int | None = None,
    pixel_scale_arcsec: float = 0.2,
    name: str | None = None,
):
    """Make a minimal `lsst.images.cameras.Detector` for a simulated camera.

    Parameters
    ----------
    instrument : `str`
        Butler name of the instrument.
    detector : `int`
        Detector id.
    width, height : `int`
        Size of the detector's pixel grid (pixels); the grid starts at ``(0, 0)``.
    visit : `int`, optional
        Visit the geometry belongs to.
    pixel_scale_arcsec : `float`, optional
        Plate scale (arcsec per pixel), for the focal plane to field angle transform.
    name : `str`, optional
        Detector name; ``"S<id>"`` by default.

    Returns
    -------
    detector : `lsst.images.cameras.Detector`
        The detector, with pixel -> focal plane (mm) -> field angle (rad) transforms.
    """
    from lsst.images import serialization as ser
    from lsst.images._transforms import _ast
    from lsst.images.cameras import DetectorSerializationModel

    # AST frame attributes in AST's own syntax work with both AST bindings
    # (astshim inside the Rubin stack, starlink-pyast outside it).
    pixels = _ast.Frame(
        2,
        f"Ident=DETECTOR_{detector}, Domain=PIXELS, "
        f"Bottom(1)=0, Top(1)={width}, Bottom(2)=0, Top(2)={height}",
    )
    frames = _ast.FrameSet(pixels)
    per_row = 16
    col, row = detector % per_row, detector // per_row
    origin_mm = (col * width * 1.05 * _PIXEL_SIZE_MM, row * height * 1.05 * _PIXEL_SIZE_MM)
    to_focal_plane = _ast.CmpMap(_ast.ZoomMap(2, _PIXEL_SIZE_MM), _ast.ShiftMap(origin_mm), True)
    frames.addFrame(1, to_focal_plane, _ast.Frame(2, "Ident=FOCAL_PLANE, Unit(1)=mm, Unit(2)=mm"))
    rad_per_mm = (pixel_scale_arcsec / _PIXEL_SIZE_MM * u.arcsec).to_value(u.rad)
    frames.addFrame(
        2, _ast.ZoomMap(2, rad_per_mm), _ast.Frame(2, "Ident=FIELD_ANGLE, Unit(1)=rad, Unit(2)=rad")
    )
    description = {
        "attributes": {
            "name": name or f"S{detector:02d}",
            "id": int(detector),
            "type": "SCIENCE",
            "serial": f"SIM-{detector:04d}",
            "bbox": {"y": {"start": 0, "stop": int(height)}, "x": {"start": 0, "stop": int(width)}},
            "orientation": {
                "focal_plane_x": origin_mm[0],
                "focal_plane_y": origin_mm[1],
                "focal_plane_z": 0.0,
            },
            "pixel_size": _PIXEL_SIZE_MM,
            "physical_type": "simulated",
        },
        "amplifiers": [],
        "frames": {"instrument": instrument, "ast": frames.show()},
        "visit": visit,
    }
    model = DetectorSerializationModel.model_validate(description)
    return model.deserialize(ser.DetachedArchive())


def make_mask_schema(mask_planes: dict[str, int] | None = None):
    """An int32 `lsst.images.MaskSchema` whose plane ``n`` is bit ``n`` of an afw-style mask.

    Parameters
    ----------
    mask_planes : `dict` [`str`, `int`], optional
        Plane name to bit; `MASK_PLANES` by default. Bits must be < 31.
    """
    from lsst.images import MaskPlane, MaskSchema

    mask_planes = MASK_PLANES if mask_planes is None else mask_planes
    n = max(mask_planes.values()) + 1 if mask_planes else 1
    if n > 31:
        raise ValueError(f"Mask plane bits must be < 31, got {max(mask_planes.values())}.")
    planes: list[Any] = [None] * n
    for name, bit in mask_planes.items():
        planes[bit] = MaskPlane(name, _PLANE_DOCS.get(name, name))
    return MaskSchema(planes, dtype=np.int32)


def make_sky_projection(wcs, frame, bbox):
    """Wrap an astropy FITS WCS (zero-based pixels of the full detector) as a `SkyProjection`."""
    from lsst.images import SkyProjection

    return SkyProjection.from_fits_wcs(wcs, frame, pixel_bounds=bbox)


def _planes(image, variance, mask, schema, projection):
    from lsst.images import Image, Mask

    image = np.asarray(image, dtype=np.float32)
    img = Image(image, unit=u.nJy, sky_projection=projection)
    var = None
    if variance is not None:
        var = Image(np.asarray(variance, dtype=np.float32), unit=u.nJy**2)
    msk = None
    if mask is not None:
        msk = Mask(np.asarray(mask, dtype=np.int32)[:, :, None], schema=schema)
    else:
        msk = Mask(schema=schema, shape=image.shape)
    return img, var, msk


def _obs_info(instrument, detector, visit, physical_filter, mjd, exposure_time):
    from astro_metadata_translator import ObservationInfo

    begin = astropy.time.Time(float(mjd), format="mjd", scale="tai")
    return ObservationInfo(
        instrument=instrument,
        telescope=instrument,
        physical_filter=physical_filter,
        detector_num=int(detector),
        visit_id=int(visit),
        exposure_time=float(exposure_time) * u.s,
        datetime_begin=begin,
        datetime_end=begin + float(exposure_time) * u.s,
    )


def _visit_kwargs(
    image,
    variance,
    mask,
    *,
    wcs,
    instrument,
    detector,
    visit,
    band,
    physical_filter,
    mjd,
    fwhm,
    exposure_time=30.0,
):
    from lsst.images.psfs import GaussianPointSpreadFunction

    height, width = np.shape(image)
    det = make_detector(instrument, detector, width, height, visit=visit)
    projection = make_sky_projection(wcs, det.frame, det.bbox)
    img, var, msk = _planes(image, variance, mask, make_mask_schema(), projection)
    sigma = max(float(fwhm), 0.5) / 2.3548
    stamp = int(2 * np.ceil(4 * sigma) + 1)
    psf = GaussianPointSpreadFunction(sigma, bounds=det.bbox, stamp_size=max(stamp, 5))
    return dict(
        image=img,
        mask=msk,
        variance=var,
        obs_info=_obs_info(instrument, detector, visit, physical_filter, mjd, exposure_time),
        psf=psf,
        detector=det,
        band=band,
    )


def make_visit_image(
    image,
    variance,
    mask,
    *,
    wcs,
    instrument: str,
    detector: int,
    visit: int,
    band: str,
    physical_filter: str,
    mjd: float,
    fwhm: float,
    exposure_time: float = 30.0,
):
    """Make an `lsst.images.VisitImage` from arrays.

    Parameters
    ----------
    image, variance : `numpy.ndarray`, (H, W)
        Pixels (nJy) and variance (nJy^2).
    mask : `numpy.ndarray`, (H, W) int32 or `None`
        Bit mask with `MASK_PLANES` bits.
    wcs : `astropy.wcs.WCS`
        FITS WCS for zero-based pixel coordinates of the arrays.
    instrument, detector, visit, band, physical_filter
        Identifiers.
    mjd : `float`
        Start of the exposure (MJD, TAI).
    fwhm : `float`
        PSF FWHM (pixels); the image gets a Gaussian PSF model of that width.
    exposure_time : `float`, optional
        Seconds.
    """
    from lsst.images import VisitImage

    return VisitImage(
        **_visit_kwargs(
            image,
            variance,
            mask,
            wcs=wcs,
            instrument=instrument,
            detector=detector,
            visit=visit,
            band=band,
            physical_filter=physical_filter,
            mjd=mjd,
            fwhm=fwhm,
            exposure_time=exposure_time,
        )
    )


def make_difference_image(image, variance, mask, **kwargs):
    """Make an `lsst.images.DifferenceImage` from arrays (arguments as `make_visit_image`)."""
    from lsst.images import DifferenceImage

    return DifferenceImage(**_visit_kwargs(image, variance, mask, **kwargs))


def make_masked_image(image, variance, mask, *, wcs=None, instrument: str = "", detector: int = 0):
    """Make an `lsst.images.MaskedImage` (the template) from arrays.

    Parameters
    ----------
    image, variance, mask : `numpy.ndarray`, (H, W)
        As in `make_visit_image`.
    wcs : `astropy.wcs.WCS`, optional
        FITS WCS of the pixel grid; attached as the sky projection when given.
    instrument : `str`, optional
        Instrument name of the pixel frame (needed with ``wcs``).
    detector : `int`, optional
        Detector id of the pixel frame (needed with ``wcs``).
    """
    from lsst.images import MaskedImage

    projection = None
    if wcs is not None:
        height, width = np.shape(image)
        det = make_detector(instrument, detector, width, height)
        projection = make_sky_projection(wcs, det.frame, det.bbox)
    img, var, msk = _planes(image, variance, mask, make_mask_schema(), projection)
    return MaskedImage(img, mask=msk, variance=var)
