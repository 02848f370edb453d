# This file is part of meas_rbnet.
"""Training: losses, calibration, splits, augmentation, the loop, the baseline and ``rbnet train``.

The stamps here are easy synthetic ones made in the test (Gaussian point sources
in the difference and science images are real; single-pixel spikes and
positive/negative dipoles are bogus), so a tiny network learns them in seconds.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.nn.triplet import dihedral_transforms
from lsst.meas.rbnet.package import ModelPackage
from lsst.meas.rbnet.scoring import score_triplets
from lsst.meas.rbnet.training import metrics as M
from lsst.meas.rbnet.training.baseline import LogisticBaseline, hand_features
from lsst.meas.rbnet.training.calibration import apply_temperature, fit_temperature
from lsst.meas.rbnet.training.crossval import cross_validate, stratified_kfold
from lsst.meas.rbnet.training.data import (
    dihedral_augment,
    iterate_batches,
    load_npz,
    prepare_dataset,
    stratified_split,
)
from lsst.meas.rbnet.training.losses import bce_loss, focal_loss, get_loss, tversky_loss
from lsst.meas.rbnet.training.loop import TrainConfig, choose_thresholds, model_logits, train_triplet_model

SIZE = 21
CONTRACT = InputContract(stamp_size=SIZE)
TINY = {"widths": [8, 16], "hidden": 16, "dropout": 0.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny networks gain nothing from threads, and on a shared 2-core machine two threads
    # spin-wait for each other (measured 10x slower): use one, and restore the setting after.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def easy_stamps(n: int, seed: int, size: int = SIZE):
    """Raw (n, 3, size, size) triplets in CHANNEL_ORDER with labels, classes and SNR."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size // 2
    labels = (rng.random(n) < 0.5).astype(np.int64)
    kind = np.where(labels == 1, 0, rng.integers(1, 3, n))  # 0 real, 1 spike, 2 dipole
    snr = rng.uniform(5, 30, n).astype(np.float32)
    amp = (snr / 2.5)[:, None, None]
    dx, dy = rng.uniform(-0.5, 0.5, (2, n, 1, 1))

    def gauss(ox, oy):
        return np.exp(-((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * 1.5**2))

    stamps = rng.normal(0, 1, (n, 3, size, size)).astype(np.float32)
    g = amp * gauss(dx, dy)
    plus = amp * gauss(1.3 + dx, dy)
    minus = amp * gauss(-1.3 + dx, dy)
    spike = np.zeros((n, size, size), np.float32)
    spike[:, size // 2, size // 2] = 4 * amp[:, 0, 0]
    diff = np.where(kind[:, None, None] == 0, g, np.where(kind[:, None, None] == 1, spike, plus - minus))
    sci = np.where(kind[:, None, None] == 0, g, np.where(kind[:, None, None] == 1, spike, plus))
    tmpl = np.where(kind[:, None, None] == 2, minus, 0)
    stamps[:, 0] += diff
    stamps[:, 1] += sci
    stamps[:, 2] += tmpl
    stamps[:3, 2, 0, :4] = np.nan  # a few missing pixels, as in real stamps
    classes = np.array(["real_new", "cosmic_ray", "dipole"])[kind]
    return stamps, labels, classes, snr


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        contract=CONTRACT,
        hyperparameters=TINY,
        epochs=3,
        batch_size=64,
        learning_rate=5e-3,
        num_threads=1,
        version="test1",
        symmetric_temperature=False,
    )
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------


def test_focal_with_gamma_zero_is_bce():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(100, generator=g) * 3
    y = (torch.rand(100, generator=g) < 0.5).float()
    assert torch.allclose(focal_loss(z, y, gamma=0.0), bce_loss(z, y), atol=1e-6)
    # Focusing down-weights easy examples, so the focal loss is below BCE.
    assert focal_loss(z, y, gamma=2.0) < bce_loss(z, y)
    assert torch.allclose(get_loss("focal", gamma=0.0)(z, y), bce_loss(z, y), atol=1e-6)


def test_tversky_bounds():
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    perfect = torch.tensor([20.0, 20.0, -20.0, -20.0])
    wrong = -perfect
    assert 0 <= tversky_loss(perfect, y) < 1e-3
    assert tversky_loss(wrong, y, smooth=1e-6) > 0.99
    assert tversky_loss(wrong, y) <= 1
    # alpha weighs false positives: with only false positives, a larger alpha costs more.
    fp_only = torch.tensor([20.0, 20.0, 20.0, -20.0])
    assert tversky_loss(fp_only, y, alpha=0.9, beta=0.1) > tversky_loss(fp_only, y, alpha=0.1, beta=0.9)
    z = torch.randn(50)
    yr = (torch.rand(50) < 0.5).float()
    v = tversky_loss(z, yr)
    assert 0 <= v <= 1


def test_get_loss_errors():
    from lsst.meas.rbnet.cli.train import _LOSSES
    from lsst.meas.rbnet.training.losses import LOSSES

    assert _LOSSES == LOSSES  # the command line offers exactly the losses there are
    with pytest.raises(ValueError, match="Unknown loss"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="does not take"):
        get_loss("bce", gamma=2.0)
    with pytest.raises(ValueError, match="shape"):
        bce_loss(torch.zeros(3), torch.zeros(4))


# ----------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------


def test_temperature_scaling_recovers_known_temperature():
    rng = np.random.default_rng(4)
    u = rng.normal(0, 3, 50_000)  # calibrated logits
    y = (rng.random(u.size) < 1 / (1 + np.exp(-u))).astype(int)
    for t_true in (0.5, 2.5):
        t = fit_temperature(u * t_true, y)
        assert t == pytest.approx(t_true, rel=0.05)
    p = apply_temperature(u * 2.5, fit_temperature(u * 2.5, y))
    assert M.expected_calibration_error(p, y) < 0.01
    # Extreme logits do not overflow.
    assert apply_temperature(np.array([-1e4, 1e4]), 1.0).tolist() == [0.0, 1.0]


# ----------------------------------------------------------------------
# Splits and augmentation
# ----------------------------------------------------------------------


def test_kfold_is_stratified_and_covers_every_index_once():
    rng = np.random.default_rng(5)
    labels = (rng.random(1003) < 0.3).astype(int)
    classes = np.where(labels == 1, "real_new", rng.choice(["cosmic_ray", "dipole", "ghost"], labels.size))
    folds = stratified_kfold(labels, 5, seed=1, strata=classes)
    assert len(folds) == 5
    test_all = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(test_all), np.arange(labels.size))
    for train, test in folds:
        assert np.intersect1d(train, test).size == 0
        assert train.size + test.size == labels.size
        for name in np.unique(classes):
            expected = np.sum(classes == name) / 5
            assert abs(np.sum(classes[test] == name) - expected) <= 1
    with pytest.raises(ValueError, match="k must be"):
        stratified_kfold(labels, 1)


def test_stratified_split():
    labels = np.array([0] * 80 + [1] * 20)
    train, val = stratified_split(labels, 0.25, seed=0)
    assert np.intersect1d(train, val).size == 0 and train.size + val.size == 100
    assert labels[val].sum() == 5 and (labels[val] == 0).sum() == 20


def test_dihedral_augment_gives_group_elements():
    x = torch.randn(64, 3, 9, 9)
    out = dihedral_augment(x, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(len(x)):
        views = dihedral_transforms(x[i])
        match = [k for k, v in enumerate(views) if torch.equal(v, out[i])]
        assert match, "augmented stamp is not a rotation/flip of the input"
        seen.add(match[0])
    assert len(seen) == 8


def test_iterate_batches_covers_data(tmp_path):
    stamps, labels, classes, snr = easy_stamps(130, seed=6)
    data = prepare_dataset(stamps, labels, CONTRACT, classes=classes, snr=snr)
    assert np.isfinite(data.x).all()
    seen = []
    for xb, yb, cb in iterate_batches(data, 50, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert xb.dtype == torch.float32 and xb.shape[1:] == (3, SIZE, SIZE) and cb is None
        seen.append(yb)
    assert sum(len(y) for y in seen) == 130
    assert float(torch.cat(seen).sum()) == labels.sum()
    # npz round trip through the loader.
    path = tmp_path / "d.npz"
    np.savez(path, stamps=stamps, label=labels, source_class=classes, snr=snr)
    loaded = load_npz(path)
    assert np.array_equal(loaded["labels"], labels) and loaded["classes"][0] == classes[0]
    np.savez(tmp_path / "bad.npz", stamps=stamps)
    with pytest.raises(ValueError, match="no labels"):
        load_npz(tmp_path / "bad.npz")


def test_prepare_dataset_blanks_masked_pixels_in_a_fraction_of_stamps():
    from lsst.meas.rbnet.constants import MASK_PLANES

    stamps, labels, _, _ = easy_stamps(200, seed=8)
    masks = np.zeros(stamps.shape, np.int32)
    c = SIZE // 2
    masks[:, 0, c, c] = 1 << MASK_PLANES["CR"]  # a bad plane: blanked (then filled) when applied
    masks[:, 1, c, c] = 1 << MASK_PLANES["DETECTED"]  # not a bad plane: never blanked
    plain = prepare_dataset(stamps, labels, CONTRACT).x
    none = prepare_dataset(stamps, labels, CONTRACT, masks=masks, mask_fraction=0.0).x
    assert np.array_equal(none, plain)
    every = prepare_dataset(stamps, labels, CONTRACT, masks=masks, mask_fraction=1.0).x
    assert np.all(every[:, 0, c, c] == CONTRACT.fill_value)
    assert np.array_equal(every[:, 1], plain[:, 1])
    half = prepare_dataset(stamps, labels, CONTRACT, masks=masks, mask_fraction=0.5, seed=1).x
    blanked = np.mean(np.any(half != plain, axis=(1, 2, 3)))
    assert 0.3 < blanked < 0.7
    with pytest.raises(ValueError, match="masks has shape"):
        prepare_dataset(stamps, labels, CONTRACT, masks=masks[:10])


def test_choose_thresholds():
    rng = np.random.default_rng(7)
    y = (rng.random(4000) < 0.5).astype(int)
    p = 1 / (1 + np.exp(-rng.normal(np.where(y == 1, 2.5, -2.5), 1.5)))
    snr = rng.uniform(3, 30, y.size)
    th = {t["name"]: t for t in choose_thresholds(p, y, snr=snr, snr_min=6.0)}
    assert set(th) == {"default", "purity95", "purity99"}
    assert th["default"]["threshold"] == 0.5
    assert th["purity99"]["threshold"] > th["purity95"]["threshold"]
    assert th["purity95"]["purity"] >= 0.95 and th["purity99"]["purity"] >= 0.99
    mask = snr >= 6
    assert M.purity_completeness(p, y, th["purity99"]["threshold"], mask=mask) == pytest.approx(
        (th["purity99"]["purity"], th["purity99"]["completeness"])
    )


# ----------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    stamps, labels, classes, snr = easy_stamps(700, seed=10)
    progress = []
    result = train_triplet_model(
        stamps, labels, classes=classes, snr=snr, config=tiny_config(), progress=progress.append
    )
    return result, progress


def test_tiny_model_learns_and_scores_through_score_triplets(trained, tmp_path):
    result, progress = trained
    events = [e["event"] for e in progress]
    assert events[0] == "start" and events[-1] == "done" and "epoch" in events and "step" in events
    pkg = result.package
    assert pkg.version == "test1" and pkg.contract == CONTRACT
    assert {t["name"] for t in pkg.thresholds} == {"default", "purity95", "purity99"}
    assert pkg.classes and pkg.provenance["seed"] == 0 and "git_commit" in pkg.provenance
    # Margins: these easy stamps are learnt perfectly (ROC-AUC 1.0); untrained networks score
    # them at 0.3-0.7 and one trained on shuffled labels at about 0.66, accuracy below 0.5.
    assert len(result.history) >= 1 and result.metrics["roc_auc"] > 0.98
    path = tmp_path / "tiny.safetensors"
    pkg.save(path)
    loaded = ModelPackage.load(path)
    # Fresh sources, never seen in training, through the public API on raw stamps.
    stamps, labels, _, _ = easy_stamps(400, seed=11)
    scores = score_triplets(stamps[:, 1], stamps[:, 2], stamps[:, 0], model=path, device="cpu")
    assert scores.shape == (400,) and np.isfinite(scores).all()
    assert M.roc_auc(scores, labels) > 0.98
    assert M.accuracy(scores, labels, loaded.threshold("default")) > 0.95
    json.dumps(result.metrics)  # JSON-serialisable


def test_training_is_deterministic_on_cpu(trained):
    result, _ = trained
    stamps, labels, classes, snr = easy_stamps(700, seed=10)
    again = train_triplet_model(stamps, labels, classes=classes, snr=snr, config=tiny_config())
    assert again.package.digest == result.package.digest
    assert again.package.temperature == result.package.temperature


def test_early_stopping_stops_and_restores_best_weights():
    stamps, labels, classes, snr = easy_stamps(500, seed=12)
    val = easy_stamps(200, seed=13)
    # No later epoch can improve by min_delta = 10, so training stops after 1 + patience epochs.
    config = tiny_config(epochs=10, patience=2, min_delta=10.0, class_loss_weight=0.0)
    result = train_triplet_model(stamps, labels, config=config, validation=val[:2])
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1
    assert not result.package.classes
    # The packaged weights are epoch 1's: their validation loss is the one recorded then.
    data = prepare_dataset(val[0], val[1], CONTRACT)
    logits = model_logits(result.package.build(), data.x)
    loss = float(bce_loss(torch.from_numpy(logits).float(), torch.from_numpy(val[1]).float()))
    assert loss == pytest.approx(result.history[0]["val_loss"], rel=1e-4)
    assert result.history[1]["val_loss"] != pytest.approx(loss, rel=1e-4)


def test_time_budget_ends_training():
    stamps, labels, _, _ = easy_stamps(300, seed=17)
    events = []
    config = tiny_config(epochs=5, max_seconds=0.0, class_loss_weight=0.0)
    result = train_triplet_model(stamps, labels, config=config, progress=events.append)
    # The budget is spent after the first batch: one epoch of one step, then calibration and packaging.
    assert len(result.history) == 1 and result.stopped_early
    assert sum(e["event"] == "step" for e in events) == 1
    assert result.package.temperature > 0


def test_config_validation():
    with pytest.raises(ValueError, match="version"):
        tiny_config(version="too-long-version")
    with pytest.raises(ValueError, match="loss"):
        tiny_config(loss="hinge")
    with pytest.raises(ValueError, match="architecture"):
        tiny_config(architecture="resnet1000")
    stamps, labels, _, _ = easy_stamps(50, seed=1)
    with pytest.raises(ValueError, match="both real and bogus"):
        train_triplet_model(stamps, np.ones(50, int), config=tiny_config())


def test_cross_validation_reports_mean_and_std():
    stamps, labels, classes, snr = easy_stamps(300, seed=14)
    res = cross_validate(
        stamps, labels, k=2, classes=classes, snr=snr, config=tiny_config(epochs=1, class_loss_weight=0.0)
    )
    assert res["k"] == 2 and len(res["folds"]) == 2
    assert sum(f["n"] for f in res["folds"]) == 300
    auc = res["summary"]["roc_auc"]
    # One epoch per fold already separates these stamps (about 0.997); untrained nets give 0.3-0.7.
    assert auc["n"] == 2 and 0 <= auc["std"] and auc["mean"] > 0.95
    json.dumps(res)


# ----------------------------------------------------------------------
# Baseline
# ----------------------------------------------------------------------


def test_logistic_baseline_learns_easy_stamps():
    stamps, labels, _, _ = easy_stamps(600, seed=15)
    test = easy_stamps(300, seed=16)
    x = prepare_dataset(stamps, labels, CONTRACT).x
    xt = prepare_dataset(test[0], test[1], CONTRACT).x
    assert hand_features(x).shape == (600, 21)
    base = LogisticBaseline(max_iter=100).fit(x, labels)
    p = base.predict_proba(xt)
    assert p.shape == (300,) and (0 <= p).all() and (p <= 1).all()
    # Perfect on these stamps (1.0); fitted on shuffled labels it gives about 0.5.
    assert M.roc_auc(p, test[1]) > 0.98
    with pytest.raises(RuntimeError, match="not fitted"):
        LogisticBaseline().decision_function(xt)


# ----------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------


def test_rbnet_train_cli_end_to_end(tmp_path):
    from click.testing import CliRunner

    from lsst.meas.rbnet.cli import main

    stamps, labels, classes, snr = easy_stamps(500, seed=20)
    data = tmp_path / "train.npz"
    np.savez(data, stamps=stamps, label=labels, source_class=classes, snr=snr)
    out = tmp_path / "model.safetensors"
    plots = tmp_path / "plots"
    args = [
        "train", "--data", str(data), "--out", str(out), "--version", "cli1", "--stamp-size", str(SIZE),
        "--epochs", "2", "--batch-size", "64", "--plots", str(plots), "--seed", "3", "--threads", "1",
        "--widths", "8,16", "--no-symmetric-temperature",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "ROC-AUC" in result.output and "baseline" in result.output
    pkg = ModelPackage.load(out)
    assert pkg.version == "cli1" and pkg.contract.stamp_size == SIZE
    assert "rbnet train" in pkg.provenance["command"] and str(tmp_path) not in json.dumps(pkg.provenance)
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["test"]["cnn"]["roc_auc"] > 0.98 and "baseline" in metrics["test"]
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert "roc.png" in pngs and "reliability.png" in pngs and "scores_per_class.png" in pngs
    # A bad argument is a clear error, not a traceback.
    bad = CliRunner().invoke(main, ["train", "--out", str(out)])
    assert bad.exit_code != 0 and "--data or --simulate" in bad.output


def test_difference_only_training():
    stamps, labels, _, _ = easy_stamps(400, seed=21)
    contract = InputContract(stamp_size=SIZE, channels=("difference",))
    config = dataclasses.replace(tiny_config(epochs=2, class_loss_weight=0.0), contract=contract)
    result = train_triplet_model(stamps, labels, config=config)
    assert result.package.contract.channels == ("difference",)
    assert result.package.components["classifier"].hyperparameters["in_channels"] == 1
