# This file is part of meas_rbnet.
"""Detector-sized simulated visits: the data types, their files, and the pieces shared by
one visit (`lsst.meas.rbnet.sim.visit`) and a series of visits (`lsst.meas.rbnet.sim.series`).

A visit is one canvas holding the whole detector plus a margin (`SkyModel`);
`to_visit` turns what `lsst.meas.rbnet.sim.imaging.observe` made of it into a
`SimulatedVisit`, which `write_visit` writes as FITS images (the afw
``MaskedImage`` layout of `lsst.meas.rbnet.sim.masked_fits`) plus a source table.
"""

__all__ = [
    "BAND_FILTERS",
    "NJY_ZERO_POINT",
    "LOCAL_MIN",
    "SimImage",
    "VisitMetadata",
    "SimulatedVisit",
    "make_wcs",
    "source_ids",
    "place_apart",
    "local_size",
    "template_covered",
    "to_visit",
    "visit_metadata",
    "measure_sources",
    "set_source_units",
    "source_table",
    "draw_pointing",
    "SkyModel",
    "write_visit",
    "read_visit",
]

import dataclasses
import json
import os

import numpy as np
import scipy.fft
from astropy.table import Table
from astropy.wcs import WCS

from ..constants import BOGUS, MASK_PLANES, REAL, REAL_CLASSES
from .artifacts import add_background_artifacts
from .masked_fits import read_masked_image, write_masked_image
from .imaging import Conditions, Observation, local_canvas_size, observe, psf_photometry
from .psf import DoubleGaussianPsf
from .scene import FieldDensity, Scene, add_field

#: Rubin bands and the LSSTCam physical filter of each.
BAND_FILTERS: dict[str, str] = {"u": "u_24", "g": "g_6", "r": "r_57", "i": "i_39", "z": "z_20", "y": "y_10"}

#: AB magnitude of 1 nJy: images in nJy have this zero point.
NJY_ZERO_POINT: float = 31.4

#: Side of the canvases on which each labelled object is scaled to its target S/N.
LOCAL_MIN: int = 64


@dataclasses.dataclass
class SimImage:
    """One simulated image with its planes.

    Attributes
    ----------
    image : `numpy.ndarray`, (H, W) float32
        Background-subtracted pixels (nJy); NaN where NO_DATA.
    variance : `numpy.ndarray`, (H, W) float32
        Variance (nJy^2).
    mask : `numpy.ndarray`, (H, W) int32
        Mask bits, planes of `lsst.meas.rbnet.constants.MASK_PLANES`.
    psf : `DoubleGaussianPsf`
        The image's PSF (length 1).
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf: DoubleGaussianPsf

    @property
    def fwhm(self) -> float:
        """PSF FWHM (pixels)."""
        return float(self.psf.fwhm[0])

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    @property
    def mask_planes(self) -> dict[str, int]:
        """Mask plane name to bit number."""
        return dict(MASK_PLANES)


@dataclasses.dataclass
class VisitMetadata:
    """What a pipeline would know about a simulated visit.

    Attributes
    ----------
    visit, detector : `int`
    mjd : `float`
        Mid-exposure time (MJD, TAI).
    band, physical_filter : `str`
    pixel_scale : `float`
        Arcseconds per pixel.
    wcs : `astropy.wcs.WCS`
        Simple TAN projection of the detector (zero-based pixels as in the images).
    fwhm_science, fwhm_template, fwhm_difference : `float`
        PSF FWHM of each image (pixels).
    zero_point : `float`
        AB magnitude of one image unit (images are in nJy: 31.4).
    exposure_time : `float`
        Seconds.
    sky_noise_science, sky_noise_template, sky_noise_difference : `float`
        Background noise per pixel (nJy).
    instrumental_zero_point : `float`
        AB magnitude of one detected electron in the science exposure.
    saturation : `float`
        Science pixel value (nJy above background) where the full well is reached.
    seed : `int`
        Seed the visit was simulated with.
    """

    visit: int
    detector: int
    mjd: float
    band: str
    physical_filter: str
    pixel_scale: float
    wcs: WCS
    fwhm_science: float
    fwhm_template: float
    fwhm_difference: float
    zero_point: float
    exposure_time: float
    sky_noise_science: float
    sky_noise_template: float
    sky_noise_difference: float
    instrumental_zero_point: float
    saturation: float
    seed: int

    def to_dict(self) -> dict:
        """JSON-compatible form (the WCS as a dict of FITS header cards)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "wcs"}
        out["wcs"] = {k: v for k, v in self.wcs.to_header().items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "VisitMetadata":
        """Inverse of `to_dict`."""
        data = dict(data)
        data["wcs"] = WCS(data["wcs"])
        return cls(**data)


@dataclasses.dataclass
class SimulatedVisit:
    """Science, template and difference images of one visit and its labelled sources.

    Attributes
    ----------
    science, template, difference : `SimImage`
        The template is warped to the science pixel grid but not PSF-matched
        (as Rubin's ``template_detector``); the difference is science minus the
        PSF-matched template (or the PSF-matched science minus the template
        when the template is the sharper image).
    sources : `astropy.table.Table`
        One row per labelled object: ``id`` (int64), ``x``, ``y`` (measured
        centroid, zero-based pixels), ``ra``, ``dec`` (degrees), ``psfFlux``,
        ``psfFluxErr`` (nJy, forced PSF photometry on the difference at ``x, y``),
        ``snr`` (true PSF-optimal |S/N|), ``label`` (int8), ``source_class``,
        ``truth_x``, ``truth_y``, ``truth_flux`` (noiseless difference PSF flux,
        nJy), ``detected`` (``|psfFlux / psfFluxErr| >= 5``), ``host_flux``;
        a series adds ``diaObjectId``.
    metadata : `VisitMetadata`
    """

    science: SimImage
    template: SimImage
    difference: SimImage
    sources: Table
    metadata: VisitMetadata

    def write(self, directory, *, sources_format: str = "ecsv"):
        """Write FITS images and the source table to ``directory`` (see `write_visit`)."""
        return write_visit(self, directory, sources_format=sources_format)


def make_wcs(shape, pixel_scale: float, ra: float, dec: float, rotation_deg: float = 0.0) -> WCS:
    """A TAN WCS centred on the detector, for zero-based pixel coordinates.

    Parameters
    ----------
    shape : `tuple` [`int`, `int`]
        (height, width) in pixels.
    pixel_scale : `float`
        Arcseconds per pixel.
    ra, dec : `float`
        Sky position of the detector centre (degrees).
    rotation_deg : `float`
        Angle of the pixel y axis east of north (degrees).
    """
    height, width = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    # FITS pixels are one-based; the LSST convention is zero-based.
    wcs.wcs.crpix = [(width + 1) / 2.0, (height + 1) / 2.0]
    wcs.wcs.crval = [ra, dec]
    scale = pixel_scale / 3600.0
    theta = np.deg2rad(rotation_deg)
    # East to the left when north is up (the sky seen from inside the sphere).
    wcs.wcs.cd = scale * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    wcs.wcs.radesys = "ICRS"
    return wcs


def source_ids(visit: int, detector: int, n: int) -> np.ndarray:
    """Unique source ids for a (visit, detector): ``(visit % 1e9) * 1e9 + detector * 1e5 + 1..n`` (int64)."""
    if n >= 100_000 or not 0 <= detector < 10_000:
        raise ValueError(
            f"source_ids: need n < 100000 and 0 <= detector < 10000, got n={n}, detector={detector}."
        )
    return (
        np.int64(visit % 1_000_000_000) * 1_000_000_000
        + np.int64(detector) * 100_000
        + np.arange(1, n + 1, dtype=np.int64)
    )


def place_apart(rng, n, height, width, min_separation, border=0.0):
    """Dart throwing: ``n`` uniform positions at least ``min_separation`` apart where possible.

    Positions are zero-based pixel centres at least ``border`` pixels inside a
    (``height``, ``width``) detector; when the separation does not fit, the rest
    are drawn at random over the detector.

    Returns
    -------
    x, y : `numpy.ndarray`
    """
    accepted_x = np.empty(0)
    accepted_y = np.empty(0)
    tries = 0
    sep2 = min_separation**2
    while len(accepted_x) < n and tries < 20:
        cand_x = rng.uniform(border - 0.5, width - 0.5 - border, 4 * n + 16)
        cand_y = rng.uniform(border - 0.5, height - 0.5 - border, 4 * n + 16)
        for cx, cy in zip(cand_x, cand_y):
            if len(accepted_x) == n:
                break
            if len(accepted_x) == 0 or np.min((accepted_x - cx) ** 2 + (accepted_y - cy) ** 2) >= sep2:
                accepted_x = np.append(accepted_x, cx)
                accepted_y = np.append(accepted_y, cy)
        tries += 1
    if len(accepted_x) < n:
        # Too crowded for the separation: fill the rest at random.
        k = n - len(accepted_x)
        accepted_x = np.append(accepted_x, rng.uniform(-0.5, width - 0.5, k))
        accepted_y = np.append(accepted_y, rng.uniform(-0.5, height - 0.5, k))
    return accepted_x, accepted_y


def local_size(cond: Conditions) -> int:
    """Side of the canvas on which one labelled object is scaled to its target S/N (pixels)."""
    return local_canvas_size(cond, LOCAL_MIN)


def template_covered(rng, fraction, canvas_shape, margin, shape):
    """Where the template has data: it lacks data beyond a straight line cutting off ``fraction``
    of the detector.

    Returns
    -------
    covered : `numpy.ndarray` of `bool`, (1, H, W), or `None`
        On the canvas of ``canvas_shape`` whose detector starts at ``margin``;
        `None` when ``fraction`` is 0 (covered everywhere).
    """
    if fraction <= 0:
        return None
    height, width = shape
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0 : canvas_shape[0], 0 : canvas_shape[1]]
    proj = (xx - margin) * np.cos(phi) + (yy - margin) * np.sin(phi)
    if fraction >= 1:
        return np.zeros(canvas_shape, bool)[None]
    inner = proj[margin : margin + height, margin : margin + width]
    cut = np.quantile(inner, fraction)
    return (proj >= cut)[None]


def visit_metadata(
    cond: Conditions, obs, *, visit, detector, mjd, band: str, pixel_scale, wcs: WCS, seed
) -> VisitMetadata:
    """The `VisitMetadata` of canvas 0 of an `lsst.meas.rbnet.sim.imaging.observe` result under ``cond``."""
    return VisitMetadata(
        visit=visit,
        detector=int(detector),
        mjd=mjd,
        band=band,
        physical_filter=BAND_FILTERS[band],
        pixel_scale=float(pixel_scale),
        wcs=wcs,
        fwhm_science=float(cond.psf_science.fwhm[0]),
        fwhm_template=float(cond.psf_template.fwhm[0]),
        fwhm_difference=float(cond.psf_difference.fwhm[0]),
        zero_point=NJY_ZERO_POINT,
        exposure_time=30.0,
        sky_noise_science=float(cond.sky_sigma_science[0]),
        sky_noise_template=float(cond.sky_sigma_template[0]),
        sky_noise_difference=float(obs.sky_sigma_difference[0]),
        instrumental_zero_point=float(NJY_ZERO_POINT + 2.5 * np.log10(cond.gain_science[0])),
        saturation=float(cond.saturation[0]),
        seed=int(seed),
    )


def measure_sources(rng: np.random.Generator, obs, cond: Conditions, truth_x, truth_y, snr, wcs: WCS):
    """What a pipeline measures of each labelled object on canvas 0 of ``obs``.

    Returns
    -------
    x, y : `numpy.ndarray`
        Centroids: the truth plus the scatter of a PSF fit.
    flux, flux_err : `numpy.ndarray`
        Forced PSF photometry on the difference at ``x, y`` (nJy).
    ra, dec : `numpy.ndarray`
        Sky positions of ``x, y`` (degrees).
    """
    k = len(truth_x)
    # Centroid scatter of a PSF fit: about sqrt(2) sigma_PSF / S/N, at most 1.5 pixels.
    err = np.minimum(np.sqrt(2.0) * cond.psf_difference.sigma[0] / np.maximum(snr, 1.0), 1.5)
    x = truth_x + rng.normal(0, 1, k) * err
    y = truth_y + rng.normal(0, 1, k) * err
    psf = cond.psf_difference.take(np.zeros(k, int))
    flux, flux_err = psf_photometry(obs.difference[0], obs.variance_difference[0], x, y, psf)
    ra, dec = wcs.wcs_pix2world(x, y, 0)
    return x, y, flux, flux_err, np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)


def set_source_units(table: Table, flux_columns=("psfFlux", "psfFluxErr", "truth_flux")) -> None:
    """Units of a simulated source table: nJy fluxes, pixel positions, degrees on the sky."""
    for name in flux_columns:
        table[name].unit = "nJy"
    for name in ("x", "y", "truth_x", "truth_y"):
        table[name].unit = "pix"
    table["ra"].unit = "deg"
    table["dec"].unit = "deg"


def source_table(
    rng: np.random.Generator,
    obs,
    cond: Conditions,
    metadata: VisitMetadata,
    classes,
    truth_x,
    truth_y,
    snr,
    truth_flux,
) -> Table:
    """The source table of the labelled objects on canvas 0 of ``obs``: what a pipeline measures, and the truth.

    Parameters
    ----------
    rng : `numpy.random.Generator`
        Draws the centroid scatter (`measure_sources`).
    obs : `lsst.meas.rbnet.sim.imaging.Observation`
    cond : `Conditions`
        Conditions of the visit (length 1).
    metadata : `VisitMetadata`
    classes : array-like of `str`, (k,)
    truth_x, truth_y, snr, truth_flux : `numpy.ndarray`, (k,)
        True detector positions (pixels), true |S/N| and signed PSF flux (nJy) of each object.

    Returns
    -------
    table : `astropy.table.Table`
        Columns ``id``, ``x``, ``y``, ``ra``, ``dec``, ``psfFlux``, ``psfFluxErr``,
        ``snr``, ``label``, ``source_class``, ``truth_x``, ``truth_y``, ``truth_flux``,
        ``detected`` (``|psfFlux / psfFluxErr| >= 5``), with units (`set_source_units`);
        ``meta`` holds the visit, detector, band and MJD.
    """
    x, y, psf_flux, psf_flux_err, ra, dec = measure_sources(
        rng, obs, cond, truth_x, truth_y, snr, metadata.wcs
    )
    table = Table()
    table["id"] = source_ids(metadata.visit, metadata.detector, len(classes))
    table["x"] = x
    table["y"] = y
    table["ra"] = ra
    table["dec"] = dec
    table["psfFlux"] = psf_flux
    table["psfFluxErr"] = psf_flux_err
    table["snr"] = snr
    table["label"] = np.where(np.isin(classes, list(REAL_CLASSES)), REAL, BOGUS).astype(np.int8)
    table["source_class"] = np.asarray(classes, dtype=str)
    table["truth_x"] = truth_x
    table["truth_y"] = truth_y
    table["truth_flux"] = truth_flux
    with np.errstate(invalid="ignore", divide="ignore"):
        table["detected"] = np.abs(psf_flux / psf_flux_err) >= 5.0
    set_source_units(table)
    table.meta.update(
        {"visit": metadata.visit, "detector": metadata.detector, "band": metadata.band, "mjd": metadata.mjd}
    )
    return table


def draw_pointing(rng: np.random.Generator, ra: float | None, dec: float | None, rotation: float | None):
    """The pointing of a detector: ``ra``, ``dec`` and ``rotation`` (degrees), each drawn when `None`.

    ``ra`` is uniform, ``dec`` uniform on the sphere between about -70 and +10 degrees (Rubin's
    sky), the rotation uniform; each draw is made only for a value not given.
    """
    ra = float(rng.uniform(0, 360)) if ra is None else float(ra)
    dec = float(np.rad2deg(np.arcsin(rng.uniform(-0.94, 0.17)))) if dec is None else float(dec)
    rotation = float(rng.uniform(0, 360)) if rotation is None else float(rotation)
    return ra, dec, rotation


def to_visit(obs, cond: Conditions, sources: Table, metadata: VisitMetadata) -> SimulatedVisit:
    """A `SimulatedVisit` from canvas 0 of an `lsst.meas.rbnet.sim.imaging.observe` result."""
    return SimulatedVisit(
        science=SimImage(obs.science[0], obs.variance_science[0], obs.mask_science[0], cond.psf_science),
        template=SimImage(obs.template[0], obs.variance_template[0], obs.mask_template[0], cond.psf_template),
        difference=SimImage(
            obs.difference[0], obs.variance_difference[0], obs.mask_difference[0], cond.psf_difference
        ),
        sources=sources,
        metadata=metadata,
    )


@dataclasses.dataclass
class SkyModel:
    """The unlabelled content of a detector canvas: field and background artifacts.

    Attributes
    ----------
    scene : `lsst.meas.rbnet.sim.scene.Scene`
    canvas_shape : `tuple` [`int`, `int`]
        The detector plus ``margin`` on every side, padded to a fast FFT size.
    margin : `int`
        Pixels between the canvas and the detector edge.
    on_chip : `numpy.ndarray` of `bool`, (1, H, W)
        The detector's pixels on the canvas.
    shape : `tuple` [`int`, `int`]
        The detector's ``(height, width)``.
    """

    scene: Scene
    canvas_shape: tuple[int, int]
    margin: int
    on_chip: np.ndarray
    shape: tuple[int, int]

    def template_covered(self, rng, fraction):
        """`template_covered` on this canvas: `None`, or where the template has data, (1, H, W)."""
        return template_covered(rng, fraction, self.canvas_shape, self.margin, self.shape)

    def observe(self, scene: Scene, cond: Conditions, rng, **options) -> Observation:
        """`lsst.meas.rbnet.sim.imaging.observe` of ``scene`` on this canvas, cropped to the detector.

        Pixels off the detector are NO_DATA (``on_chip``); ``options`` are the other
        keyword arguments of ``observe`` (``template_covered``, ``template``, ``noise_objects``).
        """
        crop = (self.margin, self.margin, *self.shape)
        return observe(scene, cond, self.canvas_shape, rng, crop=crop, on_chip=self.on_chip, **options)

    @classmethod
    def build(
        cls,
        rng,
        cond,
        shape,
        pixel_scale,
        density_factor,
        background_artifacts,
        *,
        density=None,
        fwhm_max=None,
    ):
        """Draw the field (and background artifacts) of a detector of ``shape`` under ``cond``."""
        height, width = shape
        fwhm = (
            float(np.max(np.concatenate([cond.psf_science.fwhm, cond.psf_template.fwhm])))
            if fwhm_max is None
            else fwhm_max
        )
        margin = int(np.ceil(2.5 * fwhm)) + 8
        canvas_shape = (
            scipy.fft.next_fast_len(height + 2 * margin, real=True),
            scipy.fft.next_fast_len(width + 2 * margin, real=True),
        )
        scene = Scene()
        add_field(
            scene,
            rng,
            1,
            *canvas_shape,
            pixel_scale=pixel_scale,
            density=density or FieldDensity(),
            density_factor=density_factor,
        )
        if background_artifacts:
            add_background_artifacts(scene, rng, 1, *canvas_shape, cond.sky_sigma_science[:1])
        on_chip = np.zeros((1, *canvas_shape), bool)
        on_chip[0, margin : margin + height, margin : margin + width] = True
        return cls(scene, canvas_shape, margin, on_chip, (height, width))


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
