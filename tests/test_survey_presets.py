# This file is part of meas_rbnet.
"""Survey presets of the simulator and the label policy it follows (doc/label-policy.md)."""

import numpy as np
import pytest

from lsst.meas.rbnet.constants import MASK_PLANES
from lsst.meas.rbnet.sim import simulate_stamps
from lsst.meas.rbnet.sim.labelled import (
    POOR_REGISTRATION_RANGE,
    star_psf_mismatch,
    star_template_offsets,
)
from lsst.meas.rbnet.sim.surveys import SURVEYS, get_survey

DIFF, SCI, TMPL = 0, 1, 2


def _robust_sigma(a):
    a = a[np.isfinite(a)]
    return 1.4826 * np.median(np.abs(a - np.median(a))) if a.size else np.nan


def test_unknown_survey_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match="decam.*rubin.*ztf"):
        get_survey("hsc")
    with pytest.raises(ValueError, match="Unknown survey"):
        simulate_stamps(4, 21, survey="hsc")


@pytest.mark.parametrize("name", sorted(SURVEYS))
def test_preset_units_noise_and_sky(name):
    preset = get_survey(name)
    st = simulate_stamps(256, 31, seed=11, survey=name, class_fractions={"real_new": 1})
    assert st.table.meta["survey"] == name
    assert st.table.meta["units"] == preset.units
    assert st.table.meta["pixel_scale"] == preset.pixel_scale
    # The science background noise, measured on the pixels, lies in the preset's range (survey units).
    lo, hi = preset.sky_sigma_range
    noise = np.array([_robust_sigma(s[SCI][:8]) for s in st.stamps])
    assert lo * 0.7 < np.nanmedian(noise) < hi * 1.3
    # The template is a deeper coadd: less noisy than the science image.
    tnoise = np.array([_robust_sigma(s[TMPL][:8]) for s in st.stamps])
    assert np.nanmedian(tnoise) < 0.7 * np.nanmedian(noise)
    # Sky left in the science and template cutouts only where the survey leaves it.
    sky = np.nanmedian(st.stamps[:, SCI], axis=(1, 2))
    if preset.sky_level_range[1] > 0:
        assert np.nanmedian(sky) > preset.sky_level_range[0]
        assert np.all(np.asarray(st.table["sky_level"]) > 0)
    else:
        assert abs(np.nanmedian(sky)) < 0.5 * np.nanmedian(noise)
    # Seeing in pixels follows the pixel scale.
    fwhm_arcsec = np.median(st.table["fwhm_science"]) * preset.pixel_scale
    assert 0.6 * preset.seeing_median < fwhm_arcsec < 1.6 * preset.seeing_median


def test_ztf_stars_are_not_hundreds_of_sigma():
    # The scene is made in nJy and converted to DN: a 63x63 ZTF cutout holds a few
    # field sources, not a sky full of saturated stars.
    st = simulate_stamps(64, 63, seed=3, survey="ztf", class_fractions={"real_new": 1})
    noise = np.median([_robust_sigma(s[SCI]) for s in st.stamps])
    sky = np.nanmedian(st.stamps[:, SCI], axis=(1, 2))
    bright = (st.stamps[:, SCI] - sky[:, None, None]) > 20 * noise
    assert np.median(bright.mean(axis=(1, 2))) < 0.02


@pytest.mark.parametrize("name, flipped", [("ztf", True), ("rubin", False), ("decam", False)])
def test_negative_detections_follow_the_survey_convention(name, flipped):
    st = simulate_stamps(128, 31, seed=5, survey=name, class_fractions={"real_fainter": 1}, nan_block_fraction=0)
    assert np.all(np.asarray(st.table["detection_sign"]) == -1)
    centre = np.nanmean(st.stamps[:, DIFF, 14:17, 14:17], axis=(1, 2))
    positive = np.mean(centre > 0)
    if flipped:
        assert positive > 0.9
    else:
        assert positive < 0.1


def test_template_offsets_are_shared_by_constant_and_variable_stars():
    rng = np.random.default_rng(1)
    dx, dy = star_template_offsets(rng, 20000)
    shift = np.hypot(dx, dy)
    # Half of all stars are visibly misregistered, the rest well registered.
    assert 0.4 < np.mean(shift >= POOR_REGISTRATION_RANGE[0]) < 0.6
    dxd, dyd = star_template_offsets(rng, 5000, detectable=True)
    shift_d = np.hypot(dxd, dyd)
    assert shift_d.min() >= POOR_REGISTRATION_RANGE[0] - 1e-12
    # The detectable branch is the same distribution as the visible part of the full one.
    visible = shift[shift >= POOR_REGISTRATION_RANGE[0]]
    assert abs(np.median(visible) - np.median(shift_d)) < 0.05
    fx, fy = star_psf_mismatch(rng, 20000)
    assert 0.25 < np.mean(np.abs(fx - 1) > 0.02) < 0.45


def test_variable_stars_carry_subtraction_residuals_like_artifacts(monkeypatch):
    # Label policy: a brightening star whose difference shows a dipole on top of its
    # net flux is real. Such stars must be common in the training set: compare with
    # the same simulation where variable stars get a perfect subtraction.
    from lsst.meas.rbnet.sim import labelled

    def negative_lobes():
        st = simulate_stamps(
            300, 31, seed=7, survey="rubin", class_fractions={"real_brighter": 1}, nan_block_fraction=0
        )
        core = st.stamps[:, DIFF, 11:20, 11:20]
        sigma = np.asarray(st.table["sky_noise_difference"])
        net = np.nansum(core, axis=(1, 2))
        # The change is real: the net flux is positive for (almost) every one of them...
        assert np.mean(net > 0) > 0.95
        # ...while some also show a strong negative lobe of misregistration or PSF mismatch.
        return np.mean(np.nanmin(core, axis=(1, 2)) < -5 * sigma)

    with_residuals = negative_lobes()
    monkeypatch.setattr(labelled, "star_template_offsets", lambda rng, n, detectable=False: (np.zeros(n),) * 2)
    monkeypatch.setattr(labelled, "star_psf_mismatch", lambda rng, n, detectable=False: (np.ones(n),) * 2)
    monkeypatch.setattr(labelled, "star_flux_scales", lambda rng, n: np.ones(n))
    perfect = negative_lobes()
    assert with_residuals > 0.1
    assert with_residuals > 2.5 * perfect


def test_nan_blocks_keep_off_the_detection_and_are_flagged_in_masks():
    st = simulate_stamps(400, 31, seed=9, class_fractions={"real_new": 1, "cosmic_ray": 1}, nan_block_fraction=0.5)
    cut = np.asarray(st.table["nan_block"])
    assert 0.4 < cut.mean() < 0.6
    nan = np.isnan(st.stamps)
    assert nan[cut].any(axis=(1, 2, 3)).all()
    near_edge = np.asarray(st.table["near_edge"])
    centre_nan = nan[:, :, 13:18, 13:18].any(axis=(1, 2, 3))
    assert not (centre_nan & cut & ~near_edge).any()
    nodata = (st.masks & (1 << MASK_PLANES["NO_DATA"])) != 0
    assert np.array_equal(nan, nodata)


def test_ztf_saturated_cores_are_blank():
    st = simulate_stamps(64, 31, seed=2, survey="ztf", class_fractions={"saturated_star": 1})
    centre = st.stamps[:, :, 15, 15]
    assert np.isnan(centre).all()


def test_template_noise_is_correlated_like_a_coadd():
    from lsst.meas.rbnet.sim.imaging import add_template_noise
    from lsst.meas.rbnet.sim.surveys import sample_survey_conditions

    def neighbour_correlation(smoothing):
        cond = sample_survey_conditions(np.random.default_rng(0), 8, get_survey("ztf"))
        cond.template_noise_smoothing = np.full(8, smoothing)
        noisy, var = add_template_noise(np.zeros((8, 64, 64), np.float32), cond, np.random.default_rng(1))
        t = noisy / np.sqrt(var)
        a, b = t[:, :, :-1].ravel(), t[:, :, 1:].ravel()
        return np.corrcoef(a, b)[0, 1], t.std()

    corr, std = neighbour_correlation(0.7)
    assert corr > 0.3
    # The per-pixel variance stays what the variance plane says.
    assert abs(std - 1) < 0.05
    corr, std = neighbour_correlation(0.0)
    assert abs(corr) < 0.05 and abs(std - 1) < 0.05


def test_presets_are_reproducible():
    a = simulate_stamps(40, 31, seed=8, survey="ztf")
    b = simulate_stamps(40, 31, seed=8, survey="ztf")
    np.testing.assert_array_equal(a.stamps, b.stamps)


def test_cli_class_weights(tmp_path):
    from click.testing import CliRunner

    from lsst.meas.rbnet.cli import main

    out = tmp_path / "w.npz"
    args = ["simulate", "stamps", str(out), "--n", "70", "--size", "21", "--seed", "3"]
    result = CliRunner().invoke(main, args + ["--class-weight", "real_brighter=2", "--class-weight", "real_fainter=2"])
    assert result.exit_code == 0, result.output
    with np.load(out, allow_pickle=False) as d:
        classes, counts = np.unique(d["source_class"], return_counts=True)
        counts = dict(zip(classes.tolist(), counts.tolist()))
        assert (d["label"] == 1).sum() == 35
    # Real half shared 1:2:2:1:1 between the five real classes.
    assert counts["real_brighter"] == counts["real_fainter"] == 10
    assert counts["real_new"] == counts["real_on_galaxy"] == counts["real_moving"] == 5
    for bad in ("nonsense=2", "real_new", "real_new=-1", "real_new=nan"):
        result = CliRunner().invoke(main, args + ["--class-weight", bad])
        assert result.exit_code != 0
        assert "--class-weight" in result.output


def test_cli_gallery_of_a_survey(tmp_path):
    from click.testing import CliRunner

    from lsst.meas.rbnet.cli import main

    out = tmp_path / "g.png"
    result = CliRunner().invoke(main, ["gallery", str(out), "--survey", "rubin", "--size", "30", "--n-per-class", "1"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10000
    result = CliRunner().invoke(main, ["gallery", str(tmp_path / "h.png"), "--size", "30"])
    assert result.exit_code != 0 and "--size must be odd" in result.output


def test_stamps_file_keeps_survey_units_and_scale(tmp_path):
    from lsst.meas.rbnet.sim.io import read_stamps, write_stamps

    st = simulate_stamps(6, 31, seed=1, survey="ztf", class_fractions={"real_new": 1})
    path = write_stamps(st, tmp_path / "z.npz")
    back = read_stamps(path)
    for key in ("survey", "units", "pixel_scale"):
        assert back.table.meta[key] == st.table.meta[key]
    assert back.table.meta["survey"] == "ztf"
    assert np.array_equal(back.stamps, st.stamps, equal_nan=True)
    # The meta scalars are not mistaken for columns.
    assert not any(name.startswith("meta_") for name in back.table.colnames)


def test_noise_detections_have_a_heavier_than_gaussian_tail(monkeypatch):
    from lsst.meas.rbnet.sim import labelled

    assert labelled.NOISE_HEAVY_TAIL_FRACTION == 0  # off by default: the Gaussian tail
    default = 0.3

    def above(threshold, fraction):
        monkeypatch.setattr(labelled, "NOISE_HEAVY_TAIL_FRACTION", fraction)
        snr = labelled.sample_noise_snr(np.random.default_rng(4), 20000)
        assert snr.min() >= 3.0
        return np.mean(snr > threshold)

    # A Gaussian tail above 3 or 5 sigma hardly reaches 6.5 sigma (exp(-(6.5**2 - 5**2) / 2) / 2 = 0.5%);
    # the heavier tail, when asked for, puts a share of the noise detections there.
    gaussian = above(6.5, 0.0)
    assert gaussian < 0.01
    heavy = above(6.5, default)
    assert heavy > 0.05
    assert above(5.0 * labelled.NOISE_HEAVY_TAIL_MAX * 1.5, default) < 0.01


def test_flux_scale_errors_leave_monopoles_on_constant_stars(monkeypatch):
    # A constant star whose template flux scale is off (zero point, colour term) leaves a
    # PSF-shaped residual of either sign: bogus by the label policy, however much it looks
    # like a small change of a variable star.
    from lsst.meas.rbnet.sim import labelled

    assert labelled.STAR_FLUX_SCALE_SIGMA > 0 and 0 < labelled.FLUX_SCALE_RESIDUAL_FRACTION < 1  # on by default
    monkeypatch.setattr(labelled, "STAR_FLUX_SCALE_SIGMA", 0.0)
    assert np.array_equal(labelled.star_flux_scales(np.random.default_rng(0), 5), np.ones(5))
    monkeypatch.setattr(labelled, "STAR_FLUX_SCALE_SIGMA", 0.02)
    scales = labelled.star_flux_scales(np.random.default_rng(0), 20000)
    assert abs(np.std(scales) - 0.02) < 0.002 and abs(np.mean(scales) - 1) < 0.001

    # Well-registered stars, so that what is left is the flux-scale or PSF residual alone.
    monkeypatch.setattr(labelled, "star_template_offsets", lambda rng, n, detectable=False: (np.zeros(n),) * 2)

    def residuals():
        st = simulate_stamps(
            200, 31, seed=8, survey="rubin", class_fractions={"bright_star_residual": 1}, nan_block_fraction=0
        )
        assert not np.any(np.asarray(st.table["label"]))
        net = np.nansum(st.stamps[:, DIFF, 11:20, 11:20].astype(float), axis=(1, 2))
        return np.sign(net), np.asarray(st.table["detection_sign"])

    monkeypatch.setattr(labelled, "FLUX_SCALE_RESIDUAL_FRACTION", 0.0)
    net_sign, sign = residuals()
    assert np.all(sign == 1)  # PSF-mismatch residuals: detected on their positive core
    monkeypatch.setattr(labelled, "FLUX_SCALE_RESIDUAL_FRACTION", 1.0)
    net_sign, sign = residuals()
    # Monopoles of both signs, detected with the sign of their net flux.
    assert 0.3 < np.mean(sign == -1) < 0.7
    assert np.mean(net_sign == sign) > 0.75


def _neighbour_correlation(planes):
    # Median over difference planes of the lag-1 correlation of their noise: pixels outside
    # the central 11x11 and within 4 robust sigma (sources and residuals left out).
    c = planes.shape[1] // 2
    out = []
    for p in planes.astype(float):
        a = (p - np.nanmedian(p)) / _robust_sigma(p)
        a[c - 5 : c + 6, c - 5 : c + 6] = np.nan
        a[np.abs(a) > 4] = np.nan
        left, right = a[:, :-1], a[:, 1:]
        ok = np.isfinite(left) & np.isfinite(right)
        out.append(np.corrcoef(left[ok], right[ok])[0, 1])
    return np.median(out)


@pytest.mark.parametrize("name", ["rubin", "ztf"])
def test_decorrelated_differences_are_white(name):
    # Rubin whitens its differences and ZTF's ZOGY differences are white: where the science
    # image is the sharper one and is convolved, the difference keeps white noise of the
    # summed variance, instead of the smooth, quieter noise of a plain Alard-Lupton subtraction.
    import dataclasses

    preset = get_survey(name)
    assert preset.decorrelated_difference and not get_survey("decam").decorrelated_difference
    plain = dataclasses.replace(preset, decorrelated_difference=False)
    kw = dict(class_fractions={"noise": 1}, nan_block_fraction=0.0)
    white = simulate_stamps(600, 31, seed=8, survey=name, **kw)
    smooth = simulate_stamps(600, 31, seed=8, survey=plain, **kw)
    conv = np.asarray(white.table["convolved_science"], bool)
    np.testing.assert_array_equal(conv, np.asarray(smooth.table["convolved_science"], bool))
    assert conv.sum() >= 20
    assert _neighbour_correlation(smooth.stamps[conv, DIFF]) > 0.3
    assert abs(_neighbour_correlation(white.stamps[conv, DIFF])) < 0.1
    # The difference's noise is what the truth table says: the summed variance once whitened.
    for st in (white, smooth):
        measured = np.array([_robust_sigma(p) for p in st.stamps[:, DIFF]])
        ratio = measured / np.asarray(st.table["sky_noise_difference"])
        assert 0.93 < np.median(ratio[conv]) < 1.12 and 0.93 < np.median(ratio[~conv]) < 1.12
    sci = np.array([_robust_sigma(p) for p in white.stamps[conv, SCI]])
    assert np.median(np.array([_robust_sigma(p) for p in white.stamps[conv, DIFF]]) / sci) > 0.9
    sci = np.array([_robust_sigma(p) for p in smooth.stamps[conv, SCI]])
    assert np.median(np.array([_robust_sigma(p) for p in smooth.stamps[conv, DIFF]]) / sci) < 0.75
