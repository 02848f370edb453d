# This file is part of meas_rbnet.
"""Tests of the pieces shared by several networks or simulators: `nn.registration.register_preset`,
`sim.scene.Scene.take_objects`, `sim.detector.source_table` and `SkyModel.observe`."""

import numpy as np
import pytest
import torch
from torch import nn

from lsst.meas.rbnet.constants import MASK_BIT, MASK_PLANES
from lsst.meas.rbnet.nn import registry
from lsst.meas.rbnet.nn.registration import BUILDERS, register_preset
from lsst.meas.rbnet.nn.sequence import RecurrentClassifier
from lsst.meas.rbnet.sim.conditions import sample_conditions
from lsst.meas.rbnet.sim.detector import SkyModel, draw_pointing
from lsst.meas.rbnet.sim.scene import Scene
from lsst.meas.rbnet.sim.series import simulate_visit_series
from lsst.meas.rbnet.sim.visit import simulate_visit


class _Toy(nn.Module):
    def __init__(self, width: int = 4, depth: int = 1, mode: str = "a"):
        super().__init__()
        self.width, self.depth, self.mode = width, depth, mode
        self.layer = nn.Linear(width, 1)


def test_register_preset_fixes_arguments_and_changes_defaults():
    try:
        register_preset("_toy_preset", _Toy, {"mode": "b"}, depth=3)
        assert registry.architecture_defaults("_toy_preset") == {"width": 4, "depth": 3}
        built = registry.build("_toy_preset", width=2)
        assert (built.width, built.depth, built.mode) == (2, 3, "b")
        with pytest.raises(ValueError, match="does not take hyperparameters \\['mode'\\]"):
            registry.build("_toy_preset", mode="c")
        with pytest.raises(TypeError, match="takes no arguments \\['colour'\\]"):
            register_preset("_toy_bad", _Toy, {"colour": 1})
    finally:
        BUILDERS.pop("_toy_preset", None)
        BUILDERS.pop("_toy_bad", None)


def test_recurrent_presets_are_their_cells():
    torch.manual_seed(0)
    for name, cell, bidirectional in [
        ("seq_bigru", "gru", True),
        ("seq_gru", "gru", False),
        ("seq_lstm", "lstm", False),
    ]:
        model = registry.build(name, hidden_size=6, head_hidden=0)
        assert isinstance(model, RecurrentClassifier)
        assert (model.cell, model.bidirectional) == (cell, bidirectional)
        assert "cell" not in registry.architecture_defaults(name)
    assert registry.architecture_defaults("seq_gru")["downsample"] == 4
    assert registry.architecture_defaults("seq_bigru")["downsample"] == 1
    assert registry.build("seq_lstm", bidirectional=True, hidden_size=6).bidirectional


def test_take_objects_renumbers_in_the_order_given():
    scene = Scene()
    scene.add("point", [0, 0, 1, 1], obj=[-1, 4, 2, 7], x=[1.0, 2.0, 3.0, 4.0], y=0.0, flux_s=1.0, flux_t=0.0)
    taken = scene.take_objects([7, 4])
    table = taken.tables()["point"]
    # Objects 4 and 7 only (not the unlabelled component nor object 2), 7 -> 0 and 4 -> 1.
    assert sorted(zip(table["x"].tolist(), table["obj"].tolist())) == [(2.0, 1), (4.0, 0)]
    assert len(scene.take_objects([])) == 0
    # The original scene is unchanged.
    assert scene.tables()["point"]["obj"].tolist() == [-1, 4, 2, 7]


def test_mask_bit_is_the_plane_bit():
    assert all(MASK_BIT[name] == 1 << bit for name, bit in MASK_PLANES.items())


def test_draw_pointing_draws_only_what_is_missing():
    rng = np.random.default_rng(1)
    assert draw_pointing(rng, 10.0, -5.0, 30.0) == (10.0, -5.0, 30.0)
    # Nothing drawn above: the stream is where a fresh one starts.
    assert rng.uniform() == np.random.default_rng(1).uniform()
    ra, dec, rotation = draw_pointing(np.random.default_rng(2), None, None, 0.0)
    assert 0 <= ra < 360 and -70.1 < dec < 9.8 and rotation == 0.0


def test_sky_model_observe_crops_to_the_detector():
    rng = np.random.default_rng(3)
    cond = sample_conditions(rng, 1)
    sky = SkyModel.build(rng, cond, (40, 56), 0.2, 1.0, False)
    assert sky.shape == (40, 56) and sky.on_chip.sum() == 40 * 56
    obs = sky.observe(sky.scene, cond, rng, template_covered=sky.template_covered(rng, 0.5))
    assert obs.science.shape == (1, 40, 56)
    # Half the detector lacks a template: NO_DATA there, in the template and the difference.
    lacking = (obs.mask_template & MASK_BIT["NO_DATA"]) != 0
    assert 0.4 < lacking.mean() < 0.6
    assert np.all(np.isnan(obs.template[lacking])) and np.all(
        (obs.mask_difference[lacking] & MASK_BIT["NO_DATA"]) != 0
    )
    assert sky.template_covered(rng, 0.0) is None


def test_visit_source_table_columns():
    visit = simulate_visit(5, (96, 96), n_sources=6, background_artifacts=False)
    sources = visit.sources
    assert sources.colnames == [
        "id", "x", "y", "ra", "dec", "psfFlux", "psfFluxErr", "snr", "label", "source_class",
        "truth_x", "truth_y", "truth_flux", "detected", "host_flux",
    ]  # fmt: skip
    assert str(sources["host_flux"].unit) == "nJy" and str(sources["ra"].unit) == "deg"
    assert sources.meta["visit"] == visit.metadata.visit and sources.meta["band"] == "r"


def test_series_source_table_columns():
    (visit,) = simulate_visit_series(1, 2, (96, 96), n_objects=5, background_artifacts=False)
    sources = visit.sources
    assert sources.colnames == [
        "id", "diaObjectId", "x", "y", "ra", "dec", "psfFlux", "psfFluxErr", "snr", "label", "source_class",
        "kind", "truth_x", "truth_y", "truth_flux", "detected", "present",
    ]  # fmt: skip
    assert len(set(sources["diaObjectId"])) == 5 and str(sources["psfFlux"].unit) == "nJy"
