# This file is part of meas_rbnet.
"""Observing conditions of a batch of science/template pairs, and Rubin-like draws of them.

Moved out of `lsst.meas.rbnet.sim.imaging` (which re-exports both names) so the
instrument model stays under about 600 lines.
"""

__all__ = ["Conditions", "exposure_conditions", "sample_conditions", "with_templates"]

import dataclasses

import numpy as np

from .psf import DoubleGaussianPsf


@dataclasses.dataclass
class Conditions:
    """Observing conditions of a batch of science/template pairs; every array has shape (n,).

    Parameters
    ----------
    psf_science, psf_template : `DoubleGaussianPsf`
    sky_sigma_science, sky_sigma_template : `numpy.ndarray`
        Background noise per pixel (nJy): sky and read noise.
    gain_science, gain_template : `numpy.ndarray`
        nJy per detected electron: a source of flux ``F`` adds ``F * gain`` to the variance (nJy^2).
    saturation : `numpy.ndarray`
        Science pixel value (nJy above the background) at which the full well is reached.
    kernel_error : `numpy.ndarray`
        Fractional width error of the PSF-matching kernel.
    template_dx, template_dy : `numpy.ndarray`
        Misregistration of the template (pixels).
    spike_angle : `numpy.ndarray`
        Angle of the diffraction spikes of bright stars in the science image
        (radians; the camera rotation).
    template_noise_smoothing : `numpy.ndarray`
        Gaussian sigma (pixels) of the correlation of the template's noise
        (a warped coadd); 0 for white noise. The per-pixel variance is kept.
    decorrelate : `numpy.ndarray`
        1 where the pipeline whitens the difference image after PSF matching
        (Rubin's decorrelation of Alard-Lupton differences; ZTF's ZOGY
        differences are white by construction), 0 where it leaves the noise
        the matching kernel correlated.
    """

    psf_science: DoubleGaussianPsf
    psf_template: DoubleGaussianPsf
    sky_sigma_science: np.ndarray
    sky_sigma_template: np.ndarray
    gain_science: np.ndarray
    gain_template: np.ndarray
    saturation: np.ndarray
    kernel_error: np.ndarray
    template_dx: np.ndarray
    template_dy: np.ndarray
    spike_angle: np.ndarray = 0.7853981633974483
    template_noise_smoothing: np.ndarray = 0.0
    decorrelate: np.ndarray = 0.0

    def __post_init__(self) -> None:
        n = len(self.psf_science)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, DoubleGaussianPsf):
                setattr(self, field.name, np.broadcast_to(np.asarray(value, dtype=float), (n,)).copy())
        if len(self.psf_template) != n:
            raise ValueError("Conditions: psf_science and psf_template differ in length.")

    def __len__(self) -> int:
        return len(self.psf_science)

    def take(self, index) -> "Conditions":
        """Conditions of the canvases ``index``."""
        return Conditions(
            **{
                f.name: (
                    getattr(self, f.name).take(index)
                    if f.name.startswith("psf")
                    else getattr(self, f.name)[index]
                )
                for f in dataclasses.fields(self)
            }
        )

    @property
    def convolve_science(self) -> np.ndarray:
        """True where the science image is the sharper one, so it is convolved to the template's PSF (n,)."""
        # The image with the narrower core is convolved: a kernel that narrows a core would
        # have to deconvolve, which PSF matching cannot do.
        return self.psf_template.sigma > self.psf_science.sigma

    @property
    def psf_matched(self) -> DoubleGaussianPsf:
        """PSF of the PSF-matched images: that of the convolved (broader) image."""
        return DoubleGaussianPsf.where(self.convolve_science, self.psf_template, self.psf_science)

    @property
    def psf_difference(self) -> DoubleGaussianPsf:
        """PSF of the difference image: `psf_matched`, or the science PSF where the difference
        is decorrelated (whitening undoes the convolution of the science image, down to the
        template's noise level)."""
        dec = self.decorrelate > 0
        if not dec.any():
            return self.psf_matched
        return DoubleGaussianPsf.where(dec, self.psf_science, self.psf_matched)


def exposure_conditions(
    psf_science, psf_template, sky_science, sky_template, gain, depth, **rest
) -> Conditions:
    """Conditions of science exposures with ``gain`` and templates coadded from ``depth`` such exposures.

    ``rest`` are the other fields of `Conditions`; the template's gain is ``gain / depth``.
    """
    return Conditions(
        psf_science=psf_science,
        psf_template=psf_template,
        sky_sigma_science=sky_science,
        sky_sigma_template=sky_template,
        gain_science=gain,
        gain_template=gain / depth,
        **rest,
    )


def sample_conditions(
    rng: np.random.Generator,
    n: int,
    *,
    fwhm_range=(1.5, 6.0),
    fwhm_science=None,
    fwhm_template=None,
    sky_sigma_range=(12.0, 50.0),
    template_depth_range=(6.0, 30.0),
    decorrelate: bool = True,
) -> Conditions:
    """Draw observing conditions typical of Rubin visits and templates.

    Parameters
    ----------
    rng : `numpy.random.Generator`
    n : `int`
    fwhm_range : `tuple` [`float`, `float`]
        Range of seeing FWHM (pixels) for science and template PSFs.
    fwhm_science, fwhm_template : `float` or array-like, optional
        Fixed FWHMs (pixels) instead of drawn ones.
    sky_sigma_range : `tuple` [`float`, `float`]
        Range of the science background noise per pixel (nJy), drawn log-uniformly.
    template_depth_range : `tuple` [`float`, `float`]
        Range of the number of visits in the template coadd (its noise is
        ``sqrt(depth)`` lower).
    decorrelate : `bool`
        Whiten the differences after PSF matching, as Rubin's pipeline does
        (`Conditions.decorrelate`); False leaves the plain Alard-Lupton
        difference, whose noise the kernel correlates where the science image
        is convolved.
    """
    lo, hi = fwhm_range
    if not 0 < lo <= hi:
        raise ValueError(f"fwhm_range must satisfy 0 < lo <= hi, got {fwhm_range}.")
    if fwhm_science is None:
        # Half uniform over the range (coverage for training), half a realistic log-normal seeing.
        realistic = np.exp(rng.normal(np.log(3.6), 0.3, n))
        fwhm_s = np.where(rng.random(n) < 0.5, rng.uniform(lo, hi, n), realistic)
        fwhm_s = np.clip(fwhm_s, lo, hi)
    else:
        fwhm_s = np.broadcast_to(np.asarray(fwhm_science, dtype=float), (n,)).copy()
    if fwhm_template is None:
        # Templates are built from the better-seeing visits: usually sharper than the science image.
        ratio = np.where(rng.random(n) < 0.8, rng.uniform(0.6, 0.95, n), rng.uniform(1.02, 1.3, n))
        fwhm_t = np.clip(fwhm_s * ratio, lo, hi)
    else:
        fwhm_t = np.broadcast_to(np.asarray(fwhm_template, dtype=float), (n,)).copy()
    psf_s = DoubleGaussianPsf.from_fwhm(
        fwhm_s,
        wing_fraction=rng.uniform(0.05, 0.2, n),
        wing_ratio=rng.uniform(1.8, 2.6, n),
        ellipticity=np.clip(rng.normal(0, 0.03, n), -0.08, 0.08),
    )
    psf_t = DoubleGaussianPsf.from_fwhm(
        fwhm_t,
        wing_fraction=rng.uniform(0.05, 0.2, n),
        wing_ratio=rng.uniform(1.8, 2.6, n),
        ellipticity=np.clip(rng.normal(0, 0.015, n), -0.05, 0.05),
    )
    sky = np.exp(rng.uniform(np.log(sky_sigma_range[0]), np.log(sky_sigma_range[1]), n))
    gain = rng.uniform(0.35, 0.7, n)
    depth = rng.uniform(*template_depth_range, n)
    sky_t = np.exp(rng.uniform(np.log(sky_sigma_range[0]), np.log(sky_sigma_range[1]), n)) / np.sqrt(depth)
    full_well = rng.uniform(9.0e4, 1.5e5, n)  # electrons
    sky_electrons = (sky / gain) ** 2
    return exposure_conditions(
        psf_s,
        psf_t,
        sky,
        sky_t,
        gain,
        depth,
        saturation=gain * (full_well - sky_electrons),
        kernel_error=rng.normal(0.0, 0.004, n),
        template_dx=rng.normal(0.0, 0.02, n),
        template_dy=rng.normal(0.0, 0.02, n),
        spike_angle=rng.uniform(0.0, np.pi / 2, n),
        decorrelate=float(decorrelate),
    )


def with_templates(science: Conditions, templates: Conditions, index) -> Conditions:
    """Science-side conditions of ``science`` with the template side of ``templates`` at ``index``.

    For visits that share templates (a series of one detector, the visits of one object):
    ``index`` maps each canvas of ``science`` to its template.
    """
    return Conditions(
        psf_science=science.psf_science,
        psf_template=templates.psf_template.take(index),
        sky_sigma_science=science.sky_sigma_science,
        sky_sigma_template=templates.sky_sigma_template[index],
        gain_science=science.gain_science,
        gain_template=templates.gain_template[index],
        saturation=science.saturation,
        kernel_error=science.kernel_error,
        template_dx=templates.template_dx[index],
        template_dy=templates.template_dy[index],
        spike_angle=science.spike_angle,
        decorrelate=science.decorrelate,
    )
