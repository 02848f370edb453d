# This file is part of meas_rbnet.
"""The model packages the project ships still score well: the package users get by default.

For every ``data/<stem>.safetensors`` there must be a ``data/<stem>.check.json`` written by
``python benchmarks/make_model_checks.py``: the keyword arguments of a seeded
`simulate_stamps` check set and the ROC-AUC the package reached on it. The test
re-simulates that set, scores it with `score_triplets(model=<package>)` and requires the
recorded ROC-AUC minus the recorded margin (0.01; the set is re-simulated identically, so
only rounding can move it). A package with random weights under the same version scores
about 0.5; a package replaced without re-running the script is reported by its digest.
"""

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lsst.meas.rbnet.package import ModelPackage
from lsst.meas.rbnet.scoring import default_model_path, score_triplets
from lsst.meas.rbnet.training.metrics import roc_auc

DATA = default_model_path().parent
PACKAGES = sorted(DATA.glob("*.safetensors"))
RERUN = "re-run 'python benchmarks/make_model_checks.py' (and commit the .check.json) after changing it"
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_model_checks.py"


@functools.cache
def _script():
    """The check script as a module (its `fingerprint` describes a check set the same way here)."""
    spec = importlib.util.spec_from_file_location("make_model_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_file(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".safetensors") + ".check.json")


@functools.cache
def _check_set(simulation_json: str):
    from lsst.meas.rbnet.sim import simulate_stamps

    return simulate_stamps(**json.loads(simulation_json))


def _load(path: Path) -> dict:
    check = _check_file(path)
    assert check.is_file(), f"{path.name} has no {check.name}; {RERUN}"
    record = json.loads(check.read_text())
    assert record["format"] == 1 and record["package"] == path.name
    return record


def test_the_default_package_is_shipped_and_checked():
    assert default_model_path() in PACKAGES
    assert _check_file(default_model_path()).is_file()


@pytest.mark.parametrize("path", PACKAGES, ids=[p.name for p in PACKAGES])
def test_check_file_describes_this_package(path):
    record = _load(path)
    package = ModelPackage.load(path)
    assert record["version"] == package.version, f"{path.name}: version changed; {RERUN}"
    assert record["digest"] == package.digest, f"{path.name}: the package file changed; {RERUN}"
    # The recorded figure itself must be one worth shipping, and the margin small.
    assert record["roc_auc"] >= record["min_roc_auc"] >= 0.9
    assert 0 < record["margin"] <= 0.02


@pytest.mark.parametrize("path", PACKAGES, ids=[p.name for p in PACKAGES])
def test_shipped_package_reaches_its_recorded_roc_auc(path):
    record = _load(path)
    sim = _check_set(json.dumps(record["simulation"], sort_keys=True))
    # The same set as when the check was made; otherwise the simulator changed and the figure is stale.
    fp = record["set_fingerprint"]
    got = _script().fingerprint(sim)
    assert got["truth_sha256"] == fp["truth_sha256"] and got["n_nan_pixels"] == fp["n_nan_pixels"], (
        f"the check set of {path.name} is no longer the one measured (simulator changed?); {RERUN}"
    )
    assert got["mean_abs_pixel"] == pytest.approx(fp["mean_abs_pixel"], rel=1e-4), RERUN
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        st = sim.stamps
        scores = score_triplets(st[:, 1], st[:, 2], st[:, 0], model=path, device="cpu")
    finally:
        torch.set_num_threads(old)
    labels = np.asarray(sim.table["label"]).astype(int)
    ok = np.isfinite(scores)
    assert np.count_nonzero(~ok) == record["n_unscored"]
    auc = roc_auc(scores[ok], labels[ok])
    assert auc >= record["roc_auc"] - record["margin"], (
        f"{path.name} (version {record['version']}) reaches ROC-AUC {auc:.4f} on its check set; "
        f"{record['roc_auc']:.4f} was recorded (margin {record['margin']})"
    )
