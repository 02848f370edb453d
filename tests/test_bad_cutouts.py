# This file is part of meas_rbnet.
"""Bad real-world cutouts scored by the shipped default model (issue 8, "Bad input").

A cutout that is mostly NaN, a saturated core blanked as ZTF does, a missing
template, a Rubin cutout in nJy beside a ZTF one in DN with the sky left in:
each gets a defined score and the flag that says why, and never a confident
"real" that comes only from the fill value.
"""

import numpy as np
import pytest

from lsst.meas.rbnet import score_triplets
from lsst.meas.rbnet.flags import SourceFlag
from lsst.meas.rbnet.sim import simulate_stamps

DIFF, SCI, TMPL = 0, 1, 2


@pytest.fixture(scope="module")
def ztf():
    st = simulate_stamps(
        160, 31, seed=12, survey="ztf", class_fractions={"real_new": 1, "saturated_star": 1}, nan_block_fraction=0
    )
    return st.stamps, np.asarray(st.table["source_class"])


def _score(x):
    return score_triplets(x[:, SCI], x[:, TMPL], x[:, DIFF], return_flags=True)


def test_blank_saturated_cores_are_flagged_and_not_real(ztf):
    x, cls = ztf
    s, f = _score(x[cls == "saturated_star"])
    assert np.all(f & SourceFlag.BAD_CENTER)
    assert np.all(np.isfinite(s))
    assert np.mean(s >= 0.5) < 0.1


def test_blank_centre_is_never_a_confident_real(ztf):
    x, cls = ztf
    y = x[cls == "real_new"].copy()
    s_before, _ = _score(y)
    assert np.mean(s_before >= 0.5) > 0.6  # the sources themselves are recognised...
    y[:, :, 11:20, 11:20] = np.nan
    s, f = _score(y)
    assert np.all(f & SourceFlag.BAD_CENTER)
    assert np.all(f & SourceFlag.NONFINITE)
    # ...but with their pixels gone, what is left (the fill value) never reads as real.
    assert np.nanmax(s) < 0.9
    assert np.nanmean(s >= 0.5) < 0.1


def test_mostly_nan_cutout_is_flagged(ztf):
    x, cls = ztf
    y = x[cls == "real_new"].copy()
    y[:, :, :, :12] = np.nan  # a chip gap over 12 of 31 columns, off the source
    y[:, :, :6, :] = np.nan
    s, f = _score(y)
    assert np.all(f & SourceFlag.NONFINITE)
    assert not np.any(f & SourceFlag.BAD_CENTER)
    assert np.all(np.isfinite(s))


def test_missing_template_is_not_scored_and_says_why(ztf):
    x, _ = ztf
    y = x[:20].copy()
    y[:, TMPL] = np.nan
    s, f = _score(y)
    assert np.all(np.isnan(s))
    assert np.all(f & SourceFlag.NOT_SCORED)
    assert np.all(f & SourceFlag.NO_VALID_PIXELS)


def test_units_and_sky_level_do_not_change_scores(ztf):
    # A Rubin cutout in nJy beside a ZTF cutout in DN with its sky: the contract's
    # per-channel robust normalisation makes the score independent of both.
    x, _ = ztf
    s, _ = _score(x)
    y = x.copy()
    y[:, SCI] = 150.0 * y[:, SCI] + 1.2e4
    y[:, TMPL] = 150.0 * y[:, TMPL] + 1.1e4
    y[:, DIFF] = 150.0 * y[:, DIFF]
    s2, _ = _score(y)
    np.testing.assert_allclose(s2, s, atol=2e-3)
