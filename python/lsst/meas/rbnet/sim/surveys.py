# This file is part of meas_rbnet.
"""Survey presets: what the cameras, pipelines and alert cutouts of each survey look like.

A `SurveyPreset` holds the traits that differ between surveys and that the
real alert cutouts in ``shared/realdata`` show (their README and
``benchmarks/compare_sim_real.py`` compare them): pixel scale, seeing, noise
and sky levels, template (reference coadd) depth and noise correlation,
saturation, units, alert cutout size, whether the sky is left in the science
and template cutouts, how negative detections are shown, whether the
difference images are whitened after PSF matching, and how often cutouts
carry blocks of missing pixels.

`simulate_stamps(..., survey=NAME)` uses a preset; `sample_survey_conditions`
draws the observing conditions of a batch of stamps from one. Subtraction
imperfections (template misregistration, PSF-matching error) are properties
of each image, drawn from the same distributions whatever the labelled source
is (doc/label-policy.md).

Values are round numbers read off the survey's documentation and checked
against the real cutouts (noise per plane, sky level, FWHM), not fitted to
them.
"""

__all__ = ["SurveyPreset", "SURVEYS", "get_survey", "sample_survey_conditions"]

import dataclasses

import numpy as np

from .conditions import Conditions, exposure_conditions
from .psf import DoubleGaussianPsf


@dataclasses.dataclass(frozen=True)
class SurveyPreset:
    """The traits of one survey's images and alert cutouts.

    Attributes
    ----------
    name : `str`
    pixel_scale : `float`
        Arcseconds per pixel.
    seeing_median : `float`
        Median seeing FWHM of the science images (arcseconds); drawn log-normally.
    seeing_log_sigma : `float`
        Log-normal width of the seeing.
    fwhm_range : `tuple` [`float`, `float`]
        Limits of the science and template FWHM (pixels).
    template_sharper_fraction : `float`
        Fraction of science images whose template has the better seeing.
    sky_sigma_range : `tuple` [`float`, `float`]
        Background noise per pixel of the science image (survey units), log-uniform.
    template_depth_range : `tuple` [`float`, `float`]
        Number of exposures in the template coadd (its noise is ``sqrt(depth)`` lower).
    template_noise_smoothing : `tuple` [`float`, `float`]
        Range of the Gaussian sigma (pixels) of the correlation of the template's
        noise (resampling and coadding correlate it; 0 for a single exposure).
    gain_range : `tuple` [`float`, `float`]
        Survey units per detected electron.
    full_well_range : `tuple` [`float`, `float`]
        Full well (electrons).
    sky_level_range : `tuple` [`float`, `float`]
        Background level left in the science and template cutouts (survey
        units; ``(0, 0)`` when the cutouts are background-subtracted).
    units : `str`
        Pixel units of the cutouts.
    cutout_size : `int`
        Side of the survey's alert cutouts (pixels; may be even).
    negative_difference_flipped : `bool`
        True when the difference cutout of a negative detection is shown with
        its sign flipped (ZTF: ``isdiffpos = 'f'`` alerts carry the reference
        minus the science image), so that the source is always positive.
    ellipticity_sigma : `float`
        Sigma of the science PSF ellipticity ``(sx - sy) / (sx + sy)``.
    wing_fraction_range : `tuple` [`float`, `float`]
        Fraction of the PSF light in its broad (Moffat-like) wing.
    misregistration_sigma : `float`
        Sigma (pixels, per axis) of the template misregistration of an image.
    kernel_error_sigma : `float`
        Sigma of the fractional width error of the PSF-matching kernel of an image.
    nan_block_fraction : `float`
        Fraction of cutouts with a block of missing pixels (chip gap, masked
        region) somewhere in the stamp.
    edge_fraction : `float`
        Fraction of cutouts that reach past a chip edge.
    saturated_as_nan : `bool`
        True when saturated pixels are blanked (NaN) in the cutouts, as ZTF does.
    nJy_per_unit : `float`
        Flux of one survey unit in nJy (``10**(-0.4 * (ZP - 31.4))`` for a zero
        point ZP of the survey's pixel units). Scenes are made in nJy, so stars
        and galaxies have their true brightness against the survey's noise;
        the cutouts are then given in the survey's units.
    decorrelated_difference : `bool`
        True when the survey's difference images have white noise whichever
        image was convolved: Rubin whitens its Alard-Lupton differences
        (decorrelation), ZTF's ZOGY differences are white by construction.
        False leaves the noise correlated by the matching kernel, as a plain
        Alard-Lupton subtraction does (the smoothed differences of a
        convolved science image).
    """

    name: str
    pixel_scale: float
    seeing_median: float
    seeing_log_sigma: float
    fwhm_range: tuple[float, float]
    template_sharper_fraction: float
    sky_sigma_range: tuple[float, float]
    template_depth_range: tuple[float, float]
    template_noise_smoothing: tuple[float, float]
    gain_range: tuple[float, float]
    full_well_range: tuple[float, float]
    sky_level_range: tuple[float, float]
    units: str
    cutout_size: int
    negative_difference_flipped: bool
    ellipticity_sigma: float
    wing_fraction_range: tuple[float, float]
    misregistration_sigma: float
    kernel_error_sigma: float
    nan_block_fraction: float
    edge_fraction: float
    saturated_as_nan: bool = False
    nJy_per_unit: float = 1.0
    decorrelated_difference: bool = False

    @property
    def simulation_size(self) -> int:
        """Odd stamp side to simulate so that cropping gives `cutout_size` about ``H // 2``."""
        return self.cutout_size + 1 if self.cutout_size % 2 == 0 else self.cutout_size


#: The presets' traits side by side, one row a `SurveyPreset` field, the values in the order of
#: `_PRESET_NAMES`, so that the surveys are compared at a glance.
_PRESET_NAMES = ("rubin", "ztf", "decam")
_PRESET_TRAITS = {
    "pixel_scale": (0.2, 1.01, 0.263),
    # Rubin: early LSSTCam operations (real alert cutouts: about 1.15").
    "seeing_median": (1.1, 2.4, 1.1),
    "seeing_log_sigma": (0.25, 0.2, 0.2),
    "fwhm_range": ((2.0, 9.0), (1.3, 4.5), (2.0, 8.0)),
    "template_sharper_fraction": (0.9, 0.93, 0.85),
    # nJy (40 nJy is a typical 30 s r-band visit), DN, counts.
    "sky_sigma_range": ((20.0, 70.0), (3.0, 12.0), (3.0, 15.0)),
    "template_depth_range": ((8.0, 30.0), (15.0, 60.0), (1.0, 10.0)),
    "template_noise_smoothing": ((0.3, 0.6), (0.3, 0.5), (0.0, 0.6)),
    # Survey units per electron: nJy; DN (a gain of about 6 e-/DN); counts.
    "gain_range": ((0.35, 0.7), (0.15, 0.2), (0.2, 0.3)),
    "full_well_range": ((9.0e4, 1.5e5), (1.0e5, 1.6e5), (1.3e5, 1.8e5)),
    "sky_level_range": ((0.0, 0.0), (40.0, 400.0), (0.0, 0.0)),
    "units": ("nJy", "DN", "counts"),
    "cutout_size": (30, 63, 63),
    "negative_difference_flipped": (False, True, False),
    "ellipticity_sigma": (0.04, 0.06, 0.05),
    "wing_fraction_range": ((0.05, 0.2), (0.08, 0.25), (0.05, 0.2)),
    "misregistration_sigma": (0.04, 0.06, 0.05),
    "kernel_error_sigma": (0.01, 0.015, 0.012),
    "nan_block_fraction": (0.03, 0.04, 0.05),
    "edge_fraction": (0.03, 0.04, 0.03),
    "saturated_as_nan": (False, True, False),
    # ZTF: zero point about 25.96 mag for DN of a 30 s exposure; DECam: about 29.1 mag for
    # counts of a 90 s exposure.
    "nJy_per_unit": (1.0, 150.0, 8.0),
    # Rubin decorrelates its differences, ZTF's ZOGY makes them white; DECam pipelines
    # (HOTPANTS-based) do not.
    "decorrelated_difference": (True, True, False),
}

#: The presets, by name. ``generic`` (no preset) is the broad distribution the first default
#: model was trained on (Rubin-like pixels, seeing 1.5-6 pixels).
SURVEYS: dict[str, SurveyPreset] = {
    name: SurveyPreset(name=name, **{trait: values[i] for trait, values in _PRESET_TRAITS.items()})
    for i, name in enumerate(_PRESET_NAMES)
}


def get_survey(survey) -> SurveyPreset:
    """The preset named ``survey`` (or ``survey`` itself if it is a `SurveyPreset`).

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
    if isinstance(survey, SurveyPreset):
        return survey
    try:
        return SURVEYS[str(survey).lower()]
    except KeyError:
        raise ValueError(f"Unknown survey preset {survey!r}; expected one of {sorted(SURVEYS)}.") from None


def sample_survey_conditions(rng: np.random.Generator, n: int, preset: SurveyPreset) -> Conditions:
    """Observing and subtraction conditions of ``n`` images of a survey.

    Each image gets its own seeing, sky, template depth and noise correlation,
    saturation, and subtraction quality (misregistration and kernel error: a
    Gaussian core plus a tail of poor subtractions), drawn alike for every image.
    """
    lo, hi = preset.fwhm_range
    fwhm_s = np.exp(rng.normal(np.log(preset.seeing_median / preset.pixel_scale), preset.seeing_log_sigma, n))
    # A quarter drawn uniformly over the range, so the extremes are seen in training.
    fwhm_s = np.where(rng.random(n) < 0.25, rng.uniform(lo, hi, n), fwhm_s)
    fwhm_s = np.clip(fwhm_s, lo, hi)
    sharper = rng.random(n) < preset.template_sharper_fraction
    ratio = np.where(sharper, rng.uniform(0.6, 0.95, n), rng.uniform(1.02, 1.3, n))
    fwhm_t = np.clip(fwhm_s * ratio, lo, hi)
    psf_s = DoubleGaussianPsf.from_fwhm(
        fwhm_s,
        wing_fraction=rng.uniform(*preset.wing_fraction_range, n),
        wing_ratio=rng.uniform(1.8, 3.0, n),
        ellipticity=np.clip(rng.normal(0, preset.ellipticity_sigma, n), -0.2, 0.2),
    )
    psf_t = DoubleGaussianPsf.from_fwhm(
        fwhm_t,
        wing_fraction=rng.uniform(*preset.wing_fraction_range, n),
        wing_ratio=rng.uniform(1.8, 3.0, n),
        ellipticity=np.clip(rng.normal(0, preset.ellipticity_sigma / 2, n), -0.1, 0.1),
    )
    # Noise and gain in nJy (the scene's unit); the cutouts are converted to survey units at the end.
    k = preset.nJy_per_unit
    sky = k * np.exp(rng.uniform(np.log(preset.sky_sigma_range[0]), np.log(preset.sky_sigma_range[1]), n))
    gain = k * rng.uniform(*preset.gain_range, n)
    depth = rng.uniform(*preset.template_depth_range, n)
    # The template's noise per exposure is like the science image's, sqrt(depth) lower in the coadd.
    sky_t = sky * np.exp(rng.normal(0, 0.2, n)) / np.sqrt(depth)
    full_well = rng.uniform(*preset.full_well_range, n)
    sky_electrons = (sky / gain) ** 2
    # Subtraction quality of the image: most are good, a tail is poor (heavy-tailed).
    poor = rng.random(n) < 0.2
    misreg = preset.misregistration_sigma * np.where(poor, rng.uniform(2.0, 6.0, n), 1.0)
    kernel = preset.kernel_error_sigma * np.where(poor, rng.uniform(2.0, 5.0, n), 1.0)
    return exposure_conditions(
        psf_s,
        psf_t,
        sky,
        sky_t,
        gain,
        depth,
        saturation=gain * np.maximum(full_well - sky_electrons, 0.2 * full_well),
        kernel_error=rng.normal(0.0, 1.0, n) * kernel,
        template_dx=rng.normal(0.0, 1.0, n) * misreg,
        template_dy=rng.normal(0.0, 1.0, n) * misreg,
        spike_angle=rng.uniform(0.0, np.pi / 2, n),
        template_noise_smoothing=rng.uniform(*preset.template_noise_smoothing, n),
        decorrelate=float(preset.decorrelated_difference),
    )
