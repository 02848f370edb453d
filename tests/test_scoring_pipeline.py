# This file is part of meas_rbnet.
"""The scorer cuts the next batch of stamps in a background thread while the network scores one.

Results must not depend on it: the same scores and flags as cutting every batch in the
calling thread, in input order; errors of the cutting thread reach the caller.
"""

import numpy as np
import pytest
import torch

from lsst.meas.rbnet import scoring
from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.nn import build
from lsst.meas.rbnet.package import ModelPackage
from lsst.meas.rbnet.scoring import Scorer, _in_background


@pytest.fixture(scope="module")
def scorer():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    hp = {"widths": [8, 16], "hidden": 16}
    package = ModelPackage.from_modules(
        "triplet",
        {"classifier": ("triplet_cnn", {**hp, "stamp_size": 21}, build("triplet_cnn", **hp, stamp_size=21))},
        contract=InputContract(stamp_size=21),
        version="pipe",
    )
    yield Scorer(package, device="cpu", batch_size=64)
    torch.set_num_threads(old)


def test_background_batches_give_the_same_scores(scorer, monkeypatch):
    rng = np.random.default_rng(3)
    images = [rng.normal(0, 10, (120, 140)).astype(np.float32) for _ in range(3)]
    images[1][50:60, 50:60] = np.nan
    n = 300
    x, y = rng.uniform(-5, 145, n), rng.uniform(-5, 125, n)
    x[7] = np.nan
    monkeypatch.setattr(scoring, "PIPELINE_BATCH", 40)  # 8 batches, cut ahead
    calls = []
    real = scoring._in_background
    monkeypatch.setattr(scoring, "_in_background", lambda it: (calls.append(1), real(it))[1])
    ahead = scorer.score_images(images, x, y)
    assert calls, "the background path was not taken"
    monkeypatch.setattr(scoring, "_in_background", lambda it: it)
    monkeypatch.setattr(scoring, "PIPELINE_BATCH", 10**6)
    inline = scorer.score_images(images, x, y)
    np.testing.assert_array_equal(ahead.flags, inline.flags)
    np.testing.assert_array_equal(ahead.logits, inline.logits)  # NaN in the same places too
    assert np.isnan(ahead.reliability[7]) and np.isfinite(ahead.reliability).sum() > 250


def test_in_background_order_errors_and_early_stop():
    assert list(_in_background(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise KeyError("cut failed")

    it = _in_background(failing())
    assert next(it) == 1
    with pytest.raises(KeyError, match="cut failed"):
        next(it)

    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    it = _in_background(counting(), depth=1)
    assert next(it) == 0
    it.close()  # the consumer stops: the producer must stop soon after, not run to the end
    import time

    time.sleep(0.5)
    assert len(produced) < 10
