# This file is part of meas_rbnet.
"""Tests of lsst.meas.rbnet.sim.visit_stamps and ``rbnet simulate visit-stamps``."""

import numpy as np
import pytest

from lsst.meas.rbnet.constants import BOGUS, CHANNEL_ORDER, REAL, REAL_CLASSES
from lsst.meas.rbnet.sim import StampSet, simulate_visit, simulate_visit_stamps
from lsst.meas.rbnet.sim.visit_stamps import VISIT_ID_STRIDE

SHAPE = (128, 160)
N_SOURCES = 8
SIZE = 15


@pytest.fixture(scope="module")
def result() -> StampSet:
    return simulate_visit_stamps([3, 4], shape=SHAPE, n_sources=N_SOURCES, stamp_size=SIZE)


def test_layout_and_columns(result):
    n = len(result)
    assert n == 2 * N_SOURCES
    assert result.stamps.shape == (n, len(CHANNEL_ORDER), SIZE, SIZE)
    assert result.stamps.dtype == np.float32
    assert result.masks.shape == result.stamps.shape and result.masks.dtype == np.int32
    t = result.table
    for name in ("id", "label", "source_class", "snr", "flux", "fwhm_science", "fwhm_template"):
        assert name in t.colnames
    assert len(np.unique(t["id"])) == n
    is_real = np.isin(np.asarray(t["source_class"]), list(REAL_CLASSES))
    np.testing.assert_array_equal(np.asarray(t["label"]), np.where(is_real, REAL, BOGUS))
    # One PSF per visit: the FWHM columns are constant within a visit.
    fwhm = np.asarray(t["fwhm_science"]).reshape(2, N_SOURCES)
    assert np.all(fwhm == fwhm[:, :1]) and np.all(fwhm > 0)


def test_stamps_are_the_visit_pixels(result):
    # The first visit's stamps are its difference/science/template pixels (and mask planes)
    # around the catalogue centroids, in channel order.
    v = simulate_visit(3, shape=SHAPE, n_sources=N_SOURCES)
    s = v.sources
    np.testing.assert_array_equal(result.table["id"][:N_SOURCES], np.asarray(s["id"]) + 3 * VISIT_ID_STRIDE)
    images = {"difference": v.difference, "science": v.science, "template": v.template}
    half = SIZE // 2
    checked = 0
    for i in range(N_SOURCES):
        cx, cy = int(np.floor(s["x"][i] + 0.5)), int(np.floor(s["y"][i] + 0.5))
        if not (half <= cx < SHAPE[1] - half and half <= cy < SHAPE[0] - half):
            continue  # partly off the detector: NaN padding, checked below
        for c, name in enumerate(CHANNEL_ORDER):
            window = (slice(cy - half, cy + half + 1), slice(cx - half, cx + half + 1))
            np.testing.assert_array_equal(result.stamps[i, c], images[name].image[window])
            np.testing.assert_array_equal(result.masks[i, c], images[name].mask[window])
        checked += 1
    assert checked > 0


def test_off_detector_pixels():
    # Sources near the border: off-detector pixels are NaN in the stamps and 0 in the masks.
    r = simulate_visit_stamps([5], shape=(64, 64), n_sources=6, stamp_size=41)
    off = np.isnan(r.stamps)
    assert off.any()
    assert np.all(r.masks[off] == 0)


def test_reproducible_and_bad_arguments():
    a = simulate_visit_stamps([7], shape=(64, 64), n_sources=4, stamp_size=11)
    b = simulate_visit_stamps([7], shape=(64, 64), n_sources=4, stamp_size=11)
    np.testing.assert_array_equal(a.stamps, b.stamps)
    with pytest.raises(ValueError, match="seeds"):
        simulate_visit_stamps([])
    with pytest.raises(ValueError, match="stamp_size"):
        simulate_visit_stamps([1], stamp_size=10)


def test_cli_writes_the_keys_of_simulate_stamps(tmp_path):
    from click.testing import CliRunner

    from lsst.meas.rbnet.cli import main
    from lsst.meas.rbnet.training.data import load_npz

    runner = CliRunner()
    visits = tmp_path / "visits.npz"
    stamps = tmp_path / "stamps.npz"
    res = runner.invoke(
        main,
        ["simulate", "visit-stamps", str(visits), "--first-seed", "3", "--visits", "2", "--size", str(SIZE),
         "--shape", f"{SHAPE[0]},{SHAPE[1]}", "--n-sources", str(N_SOURCES)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["simulate", "stamps", str(stamps), "--n", "4", "--size", str(SIZE)])
    assert res.exit_code == 0, res.output
    with np.load(visits, allow_pickle=False) as v, np.load(stamps, allow_pickle=False) as s:
        common = {"stamps", "masks", "channels", "id", "label", "source_class", "snr", "flux",
                  "fwhm_science", "fwhm_template"}  # fmt: skip
        assert common <= set(v.files) and common <= set(s.files)
        for key in common:
            assert v[key].dtype.kind == s[key].dtype.kind, key
        assert v["stamps"].shape == (2 * N_SOURCES, 3, SIZE, SIZE)
    direct = simulate_visit_stamps([3, 4], shape=SHAPE, n_sources=N_SOURCES, stamp_size=SIZE)
    loaded = load_npz(visits)
    np.testing.assert_array_equal(loaded["stamps"], direct.stamps)
    np.testing.assert_array_equal(loaded["labels"], np.asarray(direct.table["label"]))
    res = runner.invoke(main, ["simulate", "visit-stamps", str(visits), "--size", "12"])
    assert res.exit_code != 0 and "--size must be odd" in res.output
