# This file is part of meas_rbnet.
"""Point-spread functions and PSF-matching kernels of the simulator.

The PSF is a double Gaussian (a core and a wider wing carrying 5-20% of the
light), the usual description of ground-based seeing with extended wings. Each
Gaussian may be stretched along the pixel axes (a mild ellipticity), which keeps
both Gaussians separable: point sources are rendered exactly, pixel-integrated,
as sums of outer products of 1-D profiles.

Every quantity is vectorised over a batch of PSFs (one per canvas or per
component), so the whole simulator handles thousands of different seeing
conditions in one numpy call.
"""

__all__ = [
    "DoubleGaussianPsf",
    "FWHM_PER_SIGMA",
    "pixel_gaussian_1d",
    "matching_kernel_fourier",
]

import dataclasses

import numpy as np
from scipy.special import erf

#: FWHM of a single Gaussian in units of its sigma.
FWHM_PER_SIGMA: float = 2.0 * np.sqrt(2.0 * np.log(2.0))

_SQRT2 = np.sqrt(2.0)


def pixel_gaussian_1d(offset: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """A unit Gaussian integrated over unit pixels.

    Parameters
    ----------
    offset : `numpy.ndarray`
        Pixel centre minus the Gaussian's centre (pixels), any shape.
    sigma : `numpy.ndarray`
        Sigma (pixels), broadcastable to ``offset``.

    Returns
    -------
    values : `numpy.ndarray`
        Fraction of the 1-D Gaussian falling in each pixel.
    """
    s = _SQRT2 * sigma
    return 0.5 * (erf((offset + 0.5) / s) - erf((offset - 0.5) / s))


def _half_max_radius(wing_fraction: np.ndarray, wing_ratio: np.ndarray) -> np.ndarray:
    # Radius (in units of the core sigma) where the circular double Gaussian falls
    # to half its central value; solved by bisection, vectorised.
    f = np.asarray(wing_fraction, dtype=float)
    b2 = np.asarray(wing_ratio, dtype=float) ** 2
    centre = (1 - f) + f / b2
    lo = np.zeros(np.broadcast(f, b2).shape)
    hi = np.full_like(lo, 3.0) * np.sqrt(b2)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        value = (1 - f) * np.exp(-0.5 * mid**2) + f / b2 * np.exp(-0.5 * mid**2 / b2)
        above = value > 0.5 * centre
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return 0.5 * (lo + hi)


@dataclasses.dataclass
class DoubleGaussianPsf:
    """A batch of double-Gaussian PSFs.

    ``PSF(x, y) = (1 - f) G(x; sx) G(y; sy) + f G(x; b sx) G(y; b sy)`` with
    ``G`` a unit 1-D Gaussian, ``f`` the wing fraction and ``b`` the wing ratio.

    Parameters
    ----------
    sigma_x, sigma_y : `numpy.ndarray`, (n,)
        Core sigmas along columns (x) and rows (y), pixels.
    wing_fraction : `numpy.ndarray`, (n,)
        Fraction of the light in the wing Gaussian.
    wing_ratio : `numpy.ndarray`, (n,)
        Wing sigma over core sigma (> 1).
    """

    sigma_x: np.ndarray
    sigma_y: np.ndarray
    wing_fraction: np.ndarray
    wing_ratio: np.ndarray

    def __post_init__(self) -> None:
        arrays = np.broadcast_arrays(
            *(np.atleast_1d(np.asarray(a, dtype=float)) for a in dataclasses.astuple(self))
        )
        for field, value in zip(dataclasses.fields(self), arrays):
            setattr(self, field.name, np.array(value))

    @classmethod
    def from_fwhm(
        cls,
        fwhm,
        *,
        wing_fraction=0.1,
        wing_ratio=2.0,
        ellipticity=0.0,
    ) -> "DoubleGaussianPsf":
        """PSFs of a given full width at half maximum.

        Parameters
        ----------
        fwhm : array-like
            FWHM of the (circularised) PSF, pixels.
        wing_fraction, wing_ratio : array-like
            See the class docstring.
        ellipticity : array-like
            ``(sx - sy) / (sx + sy)``; the geometric mean of ``sx`` and ``sy`` is kept.
        """
        fwhm = np.asarray(fwhm, dtype=float)
        if np.any(~(fwhm > 0)):
            raise ValueError(f"PSF fwhm must be > 0, got {fwhm!r}.")
        sigma = 0.5 * fwhm / _half_max_radius(wing_fraction, wing_ratio)
        e = np.asarray(ellipticity, dtype=float)
        stretch = np.sqrt((1 + e) / (1 - e))
        return cls(sigma * stretch, sigma / stretch, wing_fraction, wing_ratio)

    def __len__(self) -> int:
        return len(self.sigma_x)

    def take(self, index) -> "DoubleGaussianPsf":
        """The PSFs at ``index`` (an index array or slice)."""
        # Arrays are already validated: skip __post_init__ (this is called very often).
        new = object.__new__(DoubleGaussianPsf)
        new.sigma_x = self.sigma_x[index]
        new.sigma_y = self.sigma_y[index]
        new.wing_fraction = self.wing_fraction[index]
        new.wing_ratio = self.wing_ratio[index]
        return new

    @staticmethod
    def where(choose, a: "DoubleGaussianPsf", b: "DoubleGaussianPsf") -> "DoubleGaussianPsf":
        """Per PSF of the batch, ``a``'s where ``choose`` is True and ``b``'s elsewhere."""
        return DoubleGaussianPsf(
            np.where(choose, a.sigma_x, b.sigma_x),
            np.where(choose, a.sigma_y, b.sigma_y),
            np.where(choose, a.wing_fraction, b.wing_fraction),
            np.where(choose, a.wing_ratio, b.wing_ratio),
        )

    def scaled(self, factor_x=1.0, factor_y=1.0) -> "DoubleGaussianPsf":
        """The same PSFs with widths multiplied by ``factor_x`` and ``factor_y``."""
        return DoubleGaussianPsf(
            self.sigma_x * factor_x, self.sigma_y * factor_y, self.wing_fraction, self.wing_ratio
        )

    def convolved(self, size_x=0.0, size_y=0.0) -> "DoubleGaussianPsf":
        """The PSFs convolved with Gaussians of sigma ``size_x``, ``size_y`` (pixels).

        Exact for the core; the wing keeps a single wing ratio (the geometric
        mean of the exact ratios along x and y).
        """
        sx = np.sqrt(self.sigma_x**2 + np.asarray(size_x) ** 2)
        sy = np.sqrt(self.sigma_y**2 + np.asarray(size_y) ** 2)
        b2 = self.wing_ratio**2
        ratio = np.sqrt(
            np.sqrt((b2 * self.sigma_x**2 + np.asarray(size_x) ** 2) / sx**2)
            * np.sqrt((b2 * self.sigma_y**2 + np.asarray(size_y) ** 2) / sy**2)
        )
        return DoubleGaussianPsf(sx, sy, self.wing_fraction, ratio)

    @property
    def fwhm(self) -> np.ndarray:
        """Circularised FWHM (pixels), shape (n,)."""
        return (
            2.0 * np.sqrt(self.sigma_x * self.sigma_y) * _half_max_radius(self.wing_fraction, self.wing_ratio)
        )

    @property
    def sigma(self) -> np.ndarray:
        """Geometric-mean core sigma (pixels), shape (n,)."""
        return np.sqrt(self.sigma_x * self.sigma_y)

    @property
    def extent(self) -> np.ndarray:
        """Radius (pixels) beyond which the PSF carries a negligible (<1e-5) fraction of its light."""
        return 4.8 * self.wing_ratio * np.maximum(self.sigma_x, self.sigma_y)

    def fourier(self, ky: np.ndarray, kx: np.ndarray, *, double: bool = False) -> np.ndarray:
        """Fourier transform (continuous, unit integral) on a frequency grid.

        Parameters
        ----------
        ky, kx : `numpy.ndarray`
            Row and column frequencies (cycles per pixel), shapes ``(Gy,)`` and ``(Gx,)``.
        double : `bool`
            Compute in float64 instead of float32.

        Returns
        -------
        ft : `numpy.ndarray`, (n, Gy, Gx)
            Real (the PSF is centred and symmetric).
        """
        c = -2.0 * np.pi**2
        sx2 = (self.sigma_x**2)[:, None]
        sy2 = (self.sigma_y**2)[:, None]
        kx2 = np.asarray(kx)[None, :] ** 2
        ky2 = np.asarray(ky)[None, :] ** 2
        b2 = (self.wing_ratio**2)[:, None]
        f = self.wing_fraction[:, None]
        dtype = np.float64 if double else np.float32
        core_y = np.exp(c * sy2 * ky2).astype(dtype)
        core_x = ((1 - f) * np.exp(c * sx2 * kx2)).astype(dtype)
        wing_y = np.exp(c * b2 * sy2 * ky2).astype(dtype)
        wing_x = (f * np.exp(c * b2 * sx2 * kx2)).astype(dtype)
        return core_y[:, :, None] * core_x[:, None, :] + wing_y[:, :, None] * wing_x[:, None, :]

    def profiles_1d(self, dx: np.ndarray, dy: np.ndarray):
        """Pixel-integrated 1-D profiles of core and wing.

        Parameters
        ----------
        dx, dy : `numpy.ndarray`, (n, L)
            Pixel-centre offsets from the PSF centre along x and y.

        Returns
        -------
        (core_x, core_y, wing_x, wing_y) : `tuple` of `numpy.ndarray`, each (n, L)
            ``core_*`` already carry the weight ``1 - f`` and ``wing_*`` the weight ``f``
            on the x factor, so the 2-D image is ``core_y^T core_x + wing_y^T wing_x``.
        """
        sx = self.sigma_x[:, None]
        sy = self.sigma_y[:, None]
        b = self.wing_ratio[:, None]
        f = self.wing_fraction[:, None]
        return (
            (1 - f) * pixel_gaussian_1d(dx, sx),
            pixel_gaussian_1d(dy, sy),
            f * pixel_gaussian_1d(dx, b * sx),
            pixel_gaussian_1d(dy, b * sy),
        )

    def image(self, size: int, x=None, y=None) -> np.ndarray:
        """Pixel-integrated PSF images, unit total flux (before truncation).

        Parameters
        ----------
        size : `int`
            Side of the square image (pixels).
        x, y : array-like, optional
            Centre (pixels, LSST convention); the central pixel by default.

        Returns
        -------
        images : `numpy.ndarray`, (n, size, size) float64
        """
        n = len(self)
        c = (size - 1) / 2.0
        x = np.broadcast_to(c if x is None else np.asarray(x, dtype=float), (n,))
        y = np.broadcast_to(c if y is None else np.asarray(y, dtype=float), (n,))
        grid = np.arange(size, dtype=float)
        cx, cy, wx, wy = self.profiles_1d(grid[None, :] - x[:, None], grid[None, :] - y[:, None])
        return cy[:, :, None] * cx[:, None, :] + wy[:, :, None] * wx[:, None, :]

    def effective_area(self) -> np.ndarray:
        """Noise-equivalent area ``1 / sum(P^2)`` of the pixel-integrated PSF (pixels), shape (n,).

        Computed in the continuum with the pixel response approximated by a
        Gaussian of variance 1/12, accurate to about 1% for FWHM >= 1.5 pixels.
        """
        f = self.wing_fraction
        b2 = self.wing_ratio**2
        sx2, sy2 = self.sigma_x**2, self.sigma_y**2
        p = 1.0 / 12.0
        total = 0.0
        for wi, si in ((1 - f, 1.0), (f, b2)):
            for wj, sj in ((1 - f, 1.0), (f, b2)):
                total = total + wi * wj / (
                    2 * np.pi * np.sqrt((sx2 * (si + sj) + 2 * p) * (sy2 * (si + sj) + 2 * p))
                )
        return 1.0 / total


def matching_kernel_fourier(
    target: DoubleGaussianPsf, source: DoubleGaussianPsf, ky: np.ndarray, kx: np.ndarray
) -> np.ndarray:
    """Fourier transform of the kernel that turns the ``source`` PSF into ``target``.

    ``K = target / source`` in Fourier space (the ideal PSF-matching kernel an
    Alard-Lupton fit approaches), regularised where the source PSF has no
    power and bounded by 1 in modulus (a matching kernel never amplifies a
    frequency; where the PSFs' wings cross, the match is then imperfect).

    Returns
    -------
    ft : `numpy.ndarray`, (n, Gy, Gx) float32
    """
    t = target.fourier(ky, kx)
    s = source.fourier(ky, kx)
    eps = np.float32(1e-6)
    # A matching kernel blurs: it never amplifies a frequency. Where the wings of the two
    # PSFs cross this bound bites and the match is imperfect, as a real fit would be.
    return np.clip(t * s / (s * s + eps * eps), -1.0, 1.0)
