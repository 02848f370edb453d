# This file is part of meas_rbnet.
"""Tests of the simulator (lsst.meas.rbnet.sim)."""

import numpy as np
import pytest

from lsst.meas.rbnet.constants import ARTIFACT_CLASSES, MASK_PLANES, REAL_CLASSES, mask_bits
from lsst.meas.rbnet.sim import (
    SequenceSet,
    StampSet,
    simulate_sequences,
    simulate_stamps,
    simulate_visit,
    simulate_visit_series,
)
from lsst.meas.rbnet.sim.imaging import (
    Conditions,
    difference_sky_sigma,
    noiseless_difference,
    psf_photometry,
    render_models,
)
from lsst.meas.rbnet.sim.psf import DoubleGaussianPsf
from lsst.meas.rbnet.sim.scene import Scene

ALL = REAL_CLASSES + ARTIFACT_CLASSES
BIT = {name: 1 << bit for name, bit in MASK_PLANES.items()}


@pytest.fixture(scope="module")
def stamps() -> StampSet:
    # Two of each artifact class, four of each real class.
    return simulate_stamps(40, stamp_size=31, seed=11, edge_fraction=0.1)


def test_stamps_shapes_and_columns(stamps):
    n = 40
    assert stamps.stamps.shape == (n, 3, 31, 31) and stamps.stamps.dtype == np.float32
    assert stamps.masks.shape == (n, 3, 31, 31) and stamps.masks.dtype == np.int32
    t = stamps.table
    for name in (
        "id",
        "label",
        "source_class",
        "snr",
        "flux",
        "fwhm_science",
        "fwhm_template",
        "x_offset",
        "y_offset",
        "sky_noise",
    ):
        assert name in t.colnames, name
    assert t["id"].dtype == np.int64 and len(np.unique(t["id"])) == n
    assert t["label"].dtype == np.int8
    assert t["snr"].dtype == np.float64
    assert set(t["source_class"]) == set(ALL)
    real = np.isin(t["source_class"], REAL_CLASSES)
    assert np.all(t["label"][real] == 1) and np.all(t["label"][~real] == 0)
    assert np.all(np.abs(t["x_offset"]) <= 0.5) and np.all(np.abs(t["y_offset"]) <= 0.5)
    assert np.all((t["fwhm_science"] >= 1.5 - 1e-9) & (t["fwhm_science"] <= 6 + 1e-9))
    # NaN exactly where the pixel is NO_DATA.
    nodata = (stamps.masks & BIT["NO_DATA"]) != 0
    assert np.array_equal(np.isnan(stamps.stamps), nodata)


def test_stamps_reproducible():
    a = simulate_stamps(12, 21, seed=3)
    b = simulate_stamps(12, 21, seed=3)
    c = simulate_stamps(12, 21, seed=4)
    assert np.array_equal(a.stamps, b.stamps, equal_nan=True)
    assert np.array_equal(a.masks, b.masks)
    assert list(a.table["source_class"]) == list(b.table["source_class"])
    assert not np.array_equal(a.stamps, c.stamps, equal_nan=True)


def test_stamp_snr_is_true_and_in_range():
    s = simulate_stamps(
        24,
        31,
        seed=5,
        class_fractions={"real_new": 1, "real_fainter": 1},
        snr_range=(20.0, 200.0),
        edge_fraction=0.0,
    )
    t = s.table
    assert np.all((t["snr"] >= 20 - 1e-6) & (t["snr"] <= 200 + 1e-6))
    # Forced PSF photometry at the true position agrees with the true S/N within the noise.
    c = 15
    from lsst.meas.rbnet.sim.psf import DoubleGaussianPsf as Psf

    measured = []
    for i in range(len(t)):
        psf = (
            Psf.from_fwhm([t["fwhm_science"][i]])
            if t["fwhm_science"][i] >= t["fwhm_template"][i]
            else Psf.from_fwhm([t["fwhm_template"][i]])
        )
        var = np.full((31, 31), t["sky_noise_difference"][i] ** 2, np.float32)
        flux, err = psf_photometry(s.stamps[i, 0], var, [c + t["x_offset"][i]], [c + t["y_offset"][i]], psf)
        measured.append(flux[0] / err[0])
    measured = np.array(measured)
    sign = np.where(t["source_class"] == "real_fainter", -1, 1)
    assert np.all(np.sign(measured) == sign)
    # Noise of the estimate is 1 (plus PSF-model and neighbour mismatch); allow a few sigma.
    assert np.median(np.abs(np.abs(measured) - t["snr"]) / np.sqrt(1 + (0.05 * t["snr"]) ** 2)) < 2.0


def test_snr_distribution_spans_threshold():
    s = simulate_stamps(60, 21, seed=8, class_fractions={"real_new": 1}, edge_fraction=0.0)
    snr = s.table["snr"]
    assert snr.min() >= 3.0 - 1e-6 and snr.max() <= 1000 + 1e-6
    assert np.mean((snr > 4) & (snr < 10)) > 0.25  # plenty near the detection threshold
    assert np.mean(snr > 50) > 0.1


def test_real_new_absent_from_template():
    s = simulate_stamps(
        12, 31, seed=6, class_fractions={"real_new": 1}, snr_range=(60.0, 300.0), edge_fraction=0
    )
    t = s.table
    c = 15
    ratio = []
    for i in range(len(t)):
        x, y = [c + t["x_offset"][i]], [c + t["y_offset"][i]]
        psf_s = DoubleGaussianPsf.from_fwhm([t["fwhm_science"][i]])
        psf_t = DoubleGaussianPsf.from_fwhm([t["fwhm_template"][i]])
        var_s = np.full((31, 31), t["sky_noise"][i] ** 2, np.float32)
        var_t = np.full((31, 31), t["sky_noise_template"][i] ** 2, np.float32)
        fs, es = psf_photometry(s.stamps[i, 1], var_s, x, y, psf_s)
        ft, _ = psf_photometry(s.stamps[i, 2], var_t, x, y, psf_t)
        assert fs[0] / es[0] > 20
        ratio.append(ft[0] / fs[0])
    # The source is in the science image and not in the template; what the template shows
    # at its position is the field (a neighbour or host may sit there by chance).
    assert np.median(ratio) < 0.03
    assert np.mean(np.array(ratio) < 0.1) >= 0.75


def test_masks_where_expected(stamps):
    t, m = stamps.table, stamps.masks
    c = 15
    sat = np.flatnonzero(t["source_class"] == "saturated_star")
    assert np.all(m[sat, 1, c, c] & BIT["SAT"]) and np.all(m[sat, 0, c, c] & BIT["SAT"])
    edge = np.flatnonzero(t["source_class"] == "edge")
    for i in edge:
        assert np.isnan(stamps.stamps[i]).any()
        assert (m[i] & BIT["EDGE"]).any() and (m[i] & BIT["NO_DATA"]).any()
    # Bright real sources are detected at their position on the difference.
    bright = np.flatnonzero((t["label"] == 1) & (t["snr"] > 15) & ~t["near_edge"])
    detected = (m[bright, 0, c, c] & (BIT["DETECTED"] | BIT["DETECTED_NEGATIVE"])) != 0
    assert detected.all()
    # Pipeline-like planes appear somewhere in a larger set.
    more = simulate_stamps(
        60, 31, seed=12, class_fractions={"cosmic_ray": 1, "bad_column": 1, "satellite_trail": 1}
    )
    planes = np.bitwise_or.reduce(more.masks.reshape(-1))
    for name in ("CR", "BAD", "STREAK", "DETECTED"):
        assert planes & BIT[name], name


def test_edge_examples_have_no_data():
    s = simulate_stamps(10, 31, seed=9, class_fractions={"edge": 1})
    off = s.table["off_chip_fraction"]
    assert np.all(off > 0) and np.all(off < 1)
    assert np.all(np.isnan(s.stamps).reshape(10, -1).any(axis=1))


def test_matching_removes_static_stars():
    # A bright static star leaves less than a sigma in the noiseless difference with well-sampled PSFs.
    n = 4
    cond = Conditions(
        DoubleGaussianPsf.from_fwhm(np.full(n, 4.0), wing_fraction=0.12),
        DoubleGaussianPsf.from_fwhm(np.full(n, 2.8), wing_fraction=0.08),
        20.0,
        5.0,
        0.5,
        0.05,
        1e12,
        0.0,
        0.0,
        0.0,
    )
    scene = Scene()
    flux = 300 * 20.0 * np.sqrt(cond.psf_science.effective_area())
    scene.add("point", np.arange(n), x=32.3, y=31.8, flux_s=flux, flux_t=flux)
    sci, tmpl, *_ = render_models(scene, cond, (64, 64))
    diff = noiseless_difference(sci, tmpl, cond)
    assert np.abs(diff).max() < 0.5 * difference_sky_sigma(cond)[0]
    assert sci.max() > 50 * 20.0


def test_visit_noise_matches_variance_and_difference():
    v = simulate_visit(21, (256, 256), n_sources=15, fwhm_science=3.5, fwhm_template=2.6)
    assert v.science.image.shape == (256, 256) and v.science.image.dtype == np.float32
    assert v.difference.mask.dtype == np.int32 and v.template.variance.dtype == np.float32
    skip = mask_bits(
        ["DETECTED", "DETECTED_NEGATIVE", "SAT", "SUSPECT", "BAD", "CR", "EDGE", "NO_DATA", "STREAK"]
    )
    for img in (v.science, v.template, v.difference):
        ok = (img.mask & skip) == 0
        chi2 = np.mean(img.image[ok] ** 2 / img.variance[ok])
        assert 0.85 < chi2 < 1.2, chi2
    # Difference: science minus a template convolved to the science PSF (template sharper here).
    assert abs(v.metadata.fwhm_difference - v.metadata.fwhm_science) < 1e-6
    t = v.sources
    for name in (
        "id",
        "x",
        "y",
        "ra",
        "dec",
        "psfFlux",
        "psfFluxErr",
        "snr",
        "label",
        "source_class",
        "truth_x",
        "truth_y",
    ):
        assert name in t.colnames
    assert t["id"].dtype == np.int64 and len(np.unique(t["id"])) == len(t)
    ra, dec = v.metadata.wcs.wcs_pix2world(t["x"], t["y"], 0)
    assert np.allclose(ra, t["ra"]) and np.allclose(dec, t["dec"])
    # A pixel is 0.2 arcsec.
    r0 = v.metadata.wcs.wcs_pix2world([[0, 0], [1, 0]], 0)
    sep = np.hypot((r0[1, 0] - r0[0, 0]) * np.cos(np.deg2rad(r0[0, 1])), r0[1, 1] - r0[0, 1]) * 3600
    assert abs(sep - 0.2) < 1e-6


def test_visit_template_coverage_and_reproducible():
    a = simulate_visit(4, (128, 160), n_sources=10, template_coverage=0.3, background_artifacts=False)
    b = simulate_visit(4, (128, 160), n_sources=10, template_coverage=0.3, background_artifacts=False)
    assert np.array_equal(a.difference.image, b.difference.image, equal_nan=True)
    missing = np.isnan(a.template.image).mean()
    assert 0.25 < missing < 0.35
    assert np.all(a.template.mask[np.isnan(a.template.image)] & BIT["NO_DATA"])
    assert np.isnan(a.difference.image).mean() >= missing


def test_sequences_times_and_fixed_pixel_artifacts():
    s = simulate_sequences(
        10,
        seed=2,
        frame_size=24,
        n_visits=(4, 9),
        class_fractions={"hot_pixel": 1, "real_new": 1, "cosmic_ray": 1},
    )
    assert isinstance(s, SequenceSet)
    assert s.offsets[0] == 0 and s.offsets[-1] == len(s.times) == len(s.frames)
    assert s.frames.shape[1:] == (3, 24, 24) and s.frames.dtype == np.float32
    assert np.all((s.n_visits >= 4) & (s.n_visits <= 9))
    for i in range(len(s)):
        frames, times = s.sequence(i)
        assert np.all(np.diff(times) >= 0)
    for i in np.flatnonzero(s.source_class == "hot_pixel"):
        a, b = s.offsets[i], s.offsets[i + 1]
        present = np.flatnonzero(s.frame_present[a:b]) + a
        strong = present[np.abs(s.frame_snr[present]) > 8]
        peaks = np.array([np.unravel_index(np.nanargmax(s.frames[f, 0]), (24, 24)) for f in strong])
        if len(peaks):
            # The same pixel (or its neighbour of a hot pair) every time.
            assert np.ptp(peaks, axis=0).max() <= 1
    for i in np.flatnonzero(s.source_class == "cosmic_ray"):
        a, b = s.offsets[i], s.offsets[i + 1]
        assert 1 <= s.frame_present[a:b].sum() <= 2  # appears once (rarely twice)


def test_visit_series_stable_objects():
    visits = simulate_visit_series(3, seed=1, shape=(160, 160), n_objects=12)
    ids = [v.sources["diaObjectId"] for v in visits]
    assert all(np.array_equal(ids[0], i) for i in ids[1:])
    assert np.allclose(visits[0].sources["truth_x"], visits[2].sources["truth_x"])
    mjd = [v.metadata.mjd for v in visits]
    assert np.all(np.diff(mjd) >= 0)
    # The template is one coadd: identical in every visit.
    assert np.array_equal(visits[0].template.image, visits[1].template.image, equal_nan=True)


def test_cli_stamps_npz_without_pickle(tmp_path):
    from click.testing import CliRunner

    from lsst.meas.rbnet.cli import main

    out = tmp_path / "s.npz"
    result = CliRunner().invoke(
        main, ["simulate", "stamps", str(out), "--n", "8", "--seed", "1", "--size", "21"]
    )
    assert result.exit_code == 0, result.output
    with np.load(out, allow_pickle=False) as data:
        for key in (
            "stamps",
            "masks",
            "id",
            "label",
            "source_class",
            "snr",
            "flux",
            "fwhm_science",
            "fwhm_template",
        ):
            assert key in data.files
        assert data["stamps"].shape == (8, 3, 21, 21)
        assert data["source_class"].dtype.kind == "U"


def test_visit_files_round_trip(tmp_path):
    from lsst.meas.rbnet.sim.io import read_visit

    v = simulate_visit(2, (96, 96), n_sources=6)
    v.write(tmp_path / "v")
    back = read_visit(tmp_path / "v")
    assert np.array_equal(back.difference.mask, v.difference.mask)
    assert np.array_equal(back.science.image, v.science.image, equal_nan=True)
    assert list(back.sources["id"]) == list(v.sources["id"])
    images = pytest.importorskip("lsst.images")
    masked = images.MaskedImage.read_legacy(str(tmp_path / "v" / "difference.fits"))
    assert masked.image.array.shape == (96, 96)


def test_difference_is_science_minus_matched_template():
    from scipy.signal import fftconvolve

    from lsst.meas.rbnet.sim.imaging import observe
    from lsst.meas.rbnet.sim.subtraction import kernel_real
    from lsst.meas.rbnet.sim.scene import add_field

    rng = np.random.default_rng(0)
    cond = Conditions(
        DoubleGaussianPsf.from_fwhm([3.6]),
        DoubleGaussianPsf.from_fwhm([2.7]),
        20.0,
        6.0,
        0.5,
        0.05,
        1e12,
        0.0,
        0.0,
        0.0,
    )
    scene = Scene()
    add_field(scene, rng, 1, 128, 128, density_factor=5.0)
    obs = observe(scene, cond, (128, 128), rng)
    kernel, _ = kernel_real(cond, (128, 128))
    matched = fftconvolve(obs.template[0].astype(np.float64), kernel[0].astype(np.float64), mode="same")
    inner = (slice(24, -24), slice(24, -24))
    resid = obs.difference[0][inner] - (obs.science[0] - matched)[inner]
    assert np.abs(resid).max() < 1e-3 * np.sqrt(obs.variance_difference[0][inner]).min()


def test_matching_kernels_never_amplify_noise():
    # Whatever the pair of PSFs, the kernel blurs the sharper image: the difference's
    # background noise stays below that of science and template added in quadrature.
    from lsst.meas.rbnet.sim.imaging import kernel_sum_squares, sample_conditions

    cond = sample_conditions(np.random.default_rng(1), 400)
    k2 = kernel_sum_squares(cond)
    assert np.all(k2 <= 1.0 + 1e-3)
    sigma = difference_sky_sigma(cond)
    bound = np.hypot(cond.sky_sigma_science, cond.sky_sigma_template)
    assert np.all(sigma <= bound * (1 + 1e-3))


@pytest.mark.parametrize("decorrelate", [True, False])
def test_rubin_like_differences_are_decorrelated(decorrelate):
    # Rubin whitens its differences: where the science image is the sharper one and is
    # convolved, the difference keeps white noise of the summed variance instead of the
    # kernel's smooth, quieter noise.
    from lsst.meas.rbnet.sim.imaging import observe, sample_conditions

    rng = np.random.default_rng(3)
    cond = sample_conditions(rng, 16, fwhm_science=2.5, fwhm_template=4.0, decorrelate=decorrelate)
    assert cond.convolve_science.all() and np.all(cond.decorrelate == float(decorrelate))
    obs = observe(Scene(), cond, (64, 64), rng)
    d = obs.difference / difference_sky_sigma(cond)[:, None, None]
    lag1 = np.corrcoef(d[:, :, :-1].ravel(), d[:, :, 1:].ravel())[0, 1]
    bound = np.hypot(cond.sky_sigma_science, cond.sky_sigma_template)
    if decorrelate:
        assert abs(lag1) < 0.05
        np.testing.assert_allclose(difference_sky_sigma(cond), bound)
        # The variance plane is the plain sum of the two images'.
        np.testing.assert_allclose(obs.variance_difference, obs.variance_science + obs.variance_template, rtol=1e-5)
    else:
        assert lag1 > 0.3
        assert np.all(difference_sky_sigma(cond) < 0.9 * bound)
    assert abs(d.std() - 1) < 0.05
