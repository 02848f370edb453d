# This file is part of meas_rbnet.
"""Tests of lsst.meas.rbnet.sim.compare (statistics of cutouts) and ``rbnet simulate stamps --survey``."""

import numpy as np
import pytest
from astropy.table import Table
from scipy.ndimage import gaussian_filter
from scipy.special import erf

from lsst.meas.rbnet.sim.compare import (
    FWHM_PER_SIGMA,
    adaptive_moments,
    compare_statistics,
    cutout_statistics,
)

SIZE = 31


def _pixel_gaussian(size, fwhm, flux, dx=0.0, dy=0.0, sigma_y=None):
    # A Gaussian integrated over each pixel, centred at (size // 2 + dy, size // 2 + dx).
    sx = fwhm / FWHM_PER_SIGMA
    sy = sx if sigma_y is None else sigma_y
    edges = np.arange(size + 1) - size // 2 - 0.5

    def profile(c, s):
        return 0.5 * (erf((edges[1:] - c) / (np.sqrt(2) * s)) - erf((edges[:-1] - c) / (np.sqrt(2) * s)))

    return flux * np.outer(profile(dy, sy), profile(dx, sx))


@pytest.mark.parametrize("fwhm", [1.8, 3.0, 5.0])
def test_adaptive_moments_recover_gaussian_fwhm(fwhm):
    img = _pixel_gaussian(SIZE, fwhm, 1000.0, dx=0.3, dy=-0.4)[None]
    sigma, ell, row, col = adaptive_moments(img, radius=10)
    assert FWHM_PER_SIGMA * sigma[0] == pytest.approx(fwhm, rel=0.03)
    # Round; pixelisation of a sub-pixel offset makes a ~2 pixel source look slightly elongated.
    assert ell[0] < 0.03
    assert row[0] == pytest.approx(SIZE // 2 - 0.4, abs=0.02)
    assert col[0] == pytest.approx(SIZE // 2 + 0.3, abs=0.02)


def test_adaptive_moments_ellipticity_and_nan():
    sx, sy = 1.5, 1.0
    img = _pixel_gaussian(SIZE, sx * FWHM_PER_SIGMA, 1000.0, sigma_y=sy)[None]
    _, ell, _, _ = adaptive_moments(img, radius=10)
    # The intrinsic (sx^2 - sy^2) / (sx^2 + sy^2): the weight and the pixel width are removed.
    expected = (sx**2 - sy**2) / (sx**2 + sy**2)
    assert ell[0] == pytest.approx(expected, rel=0.03)
    # A negative or missing source is not measured.
    blank = np.full((2, SIZE, SIZE), np.nan)
    blank[1] = -_pixel_gaussian(SIZE, 3.0, 1000.0)
    sigma, _, _, _ = adaptive_moments(blank)
    assert np.all(np.isnan(sigma))


def _triplets(n=100, seed=3, fwhm=3.0):
    rng = np.random.default_rng(seed)
    source = _pixel_gaussian(SIZE, fwhm, 1.0)
    science = rng.normal(200.0, 5.0, (n, SIZE, SIZE)) + 3000.0 * source
    template = rng.normal(100.0, 2.0, (n, SIZE, SIZE)) + 4000.0 * source
    difference = rng.normal(0.0, 6.0, (n, SIZE, SIZE)) - 1000.0 * source
    return science, template, difference


def test_cutout_statistics_known_answers():
    science, template, difference = _triplets()
    difference[:10, :4, :] = np.nan  # 4 rows of 31 missing in 10 cutouts
    template[0] = gaussian_filter(template[0] - 100.0, 1.0) * 5 + 100.0  # correlated noise in one
    t = cutout_statistics(science, template, difference)
    assert len(t) == 100
    assert np.median(t["noise_science"]) == pytest.approx(5.0, rel=0.05)
    assert np.median(t["noise_template"]) == pytest.approx(2.0, rel=0.05)
    assert np.median(t["noise_difference"]) == pytest.approx(6.0, rel=0.05)
    assert np.median(t["sky_science"]) == pytest.approx(200.0, abs=0.5)
    assert np.median(t["sky_template"]) == pytest.approx(100.0, abs=0.3)
    assert np.median(t["sky_over_noise_science"]) == pytest.approx(40.0, rel=0.06)
    assert np.median(t["noise_ratio_template"]) == pytest.approx(0.4, rel=0.06)
    assert np.allclose(t["nan_fraction_difference"][:10], 4 / SIZE)
    assert np.all(t["nan_fraction_difference"][10:] == 0)
    assert np.all(t["nan_fraction_science"] == 0)
    assert list(np.flatnonzero(t["any_nan"])) == list(range(10))
    assert np.median(t["fwhm_science"]) == pytest.approx(3.0, rel=0.05)
    assert np.median(t["fwhm_difference"]) == pytest.approx(3.0, rel=0.08)
    assert np.all(t["negative"])
    # The science (3000) is fainter than the template (4000) at the centre: a fading source.
    assert np.all(t["negative_science_minus_template"])
    # Peak of 1000 * (centre pixel fraction) over noise 6, taken with the detection's sign.
    peak = 1000.0 * _pixel_gaussian(SIZE, 3.0, 1.0).max() / 6.0
    assert np.median(t["difference_peak_snr"]) == pytest.approx(peak, rel=0.1)
    # Optimal S/N of a Gaussian with a matched weight: flux / (sigma_noise sqrt(4 pi s^2)).
    optimal = 1000.0 / (6.0 * np.sqrt(4 * np.pi * (3.0 / FWHM_PER_SIGMA) ** 2))
    assert np.median(-t["difference_psf_snr"]) == pytest.approx(optimal, rel=0.08)
    # The weight is a unit-peak Gaussian: a matched source of flux F gives F / (2 pi s^2).
    assert np.median(t["difference_psf_flux"]) == pytest.approx(
        -1000.0 / (2 * np.pi * (3.0 / FWHM_PER_SIGMA) ** 2), rel=0.05
    )
    # No field sources, only the central one: the 5-sigma peaks of pure noise beyond 6 pixels are rare.
    assert np.mean(t["n_peaks_science"]) < 0.1
    # White noise is uncorrelated; the smoothed template is strongly correlated.
    assert abs(np.median(t["noise_corr_science"])) < 0.05
    assert t["noise_corr_template"][0] > 0.5


def test_cutout_statistics_counts_field_peaks():
    science, template, difference = _triplets(n=4)
    # Three field stars in cutout 1 (one too close to the centre to count), a negative residual in 2.
    for dy, dx in ((10, 0), (-9, 8), (2, 2)):
        science[1] += 500.0 * np.roll(_pixel_gaussian(SIZE, 2.5, 1.0), (dy, dx), axis=(0, 1))
    difference[2] -= 800.0 * np.roll(_pixel_gaussian(SIZE, 2.5, 1.0), (-11, -3), axis=(0, 1))
    t = cutout_statistics(science, template, difference)
    assert list(t["n_peaks_science"]) == [0, 2, 0, 0]
    assert list(t["n_peaks_difference"]) == [0, 0, 1, 0]


def test_cutout_statistics_faint_and_missing_sources():
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 1.0, (3, 3, 25, 25))
    noise[2, :, 10:15, 10:15] = np.nan  # the centre is missing in every plane
    t = cutout_statistics(noise[:, 0], noise[:, 1], noise[:, 2])
    # Pure noise: no FWHM is claimed; a missing centre gives no flux and no detection sign.
    assert np.all(np.isnan(t["fwhm_science"]))
    assert np.isnan(t["difference_psf_flux"][2])
    assert not t["negative"][2]
    assert t["nan_fraction_science"][2] == pytest.approx(25 / 625)


def test_cutout_statistics_bad_input():
    a = np.zeros((2, 21, 21))
    with pytest.raises(ValueError, match="same shape"):
        cutout_statistics(a, a, np.zeros((2, 21, 23)))
    with pytest.raises(ValueError, match="at least 7x7"):
        cutout_statistics(np.zeros((1, 5, 5)), np.zeros((1, 5, 5)), np.zeros((1, 5, 5)))
    with pytest.raises(ValueError, match="science"):
        cutout_statistics(np.zeros(5), a, a)


def test_compare_statistics_percentiles_and_flags():
    real = Table({"x": np.arange(101.0), "flag": np.arange(101) < 20, "only_real": np.ones(101)})
    sim = Table({"x": 2.0 * np.arange(101.0), "flag": np.arange(101) < 50})
    out = compare_statistics(real, sim)
    assert list(out["statistic"]) == ["x", "flag"]
    x = out[out["statistic"] == "x"][0]
    assert (x["real_p16"], x["real_median"], x["real_p84"]) == pytest.approx((16.0, 50.0, 84.0))
    assert x["sim_median"] == pytest.approx(100.0)
    assert x["ratio_median"] == pytest.approx(2.0)
    assert x["kind"] == "value"
    f = out[out["statistic"] == "flag"][0]
    assert f["kind"] == "flag"
    assert np.isnan(f["real_median"])
    assert f["real_mean"] == pytest.approx(20 / 101)
    assert f["sim_mean"] == pytest.approx(50 / 101)
    with pytest.raises(ValueError, match="no column in common"):
        compare_statistics(Table({"a": [1.0]}), Table({"b": [1.0]}))


def test_statistics_of_simulated_rubin_stamps():
    from lsst.meas.rbnet.sim import simulate_stamps
    from lsst.meas.rbnet.sim.surveys import get_survey

    preset = get_survey("rubin")
    st = simulate_stamps(24, preset.simulation_size, seed=2, survey="rubin")
    s = st.stamps[:, :, : preset.cutout_size, : preset.cutout_size]
    t = cutout_statistics(s[:, 1], s[:, 2], s[:, 0])
    lo, hi = preset.sky_sigma_range
    # Background-subtracted cutouts whose science noise is the preset's, within the MAD's scatter
    # (a ghost or a large galaxy filling a stamp may bias one stamp's background estimate).
    sky = np.abs(t["sky_over_noise_science"])
    assert np.median(sky) < 0.5 and np.mean(sky < 2.0) >= 0.9
    assert lo * 0.8 < np.median(t["noise_science"]) < hi * 1.2
    assert np.median(t["noise_ratio_template"]) < 1.0  # the template is a deeper coadd


def test_cli_simulate_stamps_survey(tmp_path):
    from click.testing import CliRunner

    from lsst.meas.rbnet.cli import main

    out = tmp_path / "rubin.npz"
    args = ["simulate", "stamps", str(out), "--n", "6", "--seed", "1"]
    result = CliRunner().invoke(main, args + ["--survey", "rubin", "--size", "30"])
    assert result.exit_code == 0, result.output
    assert "survey rubin (nJy)" in result.output
    with np.load(out, allow_pickle=False) as data:
        assert data["stamps"].shape == (6, 3, 30, 30)
        assert data["masks"].shape == (6, 3, 30, 30)

    ztf = tmp_path / "ztf.npz"
    result = CliRunner().invoke(main, args[:2] + [str(ztf)] + args[3:] + ["--survey", "ztf", "--size", "21"])
    assert result.exit_code == 0, result.output
    with np.load(ztf, allow_pickle=False) as data:
        science = data["stamps"][:, 1]
        # ZTF cutouts keep the sky (preset 40-400 DN) in the science plane.
        assert np.all(np.nanmedian(science.reshape(6, -1), axis=1) > 30)

    bad = CliRunner().invoke(main, args + ["--survey", "ztf", "--fwhm-range", "1,3"])
    assert bad.exit_code != 0
    assert "--fwhm-range" in bad.output
    even = CliRunner().invoke(main, args + ["--size", "30"])
    assert even.exit_code != 0
    assert "odd" in even.output
