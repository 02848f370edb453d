# This file is part of meas_rbnet.
"""Tests of lsst.meas.rbnet.sequence: latents I/O, batching, k-fold CV, CLI, scoring and packages."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lsst.meas.rbnet.constants import BOGUS, REAL
from lsst.meas.rbnet.sequence.aggregate import aggregate_scores
from lsst.meas.rbnet.sequence.cv import cross_validate, plot_roc, stratified_kfold
from lsst.meas.rbnet.sequence.data import collate, length_batches
from lsst.meas.rbnet.sequence.latents import LatentSet, parse_columns, read_latent_dir
from lsst.meas.rbnet.sequence.synthetic import make_synthetic_frames, make_synthetic_latents

torch.set_num_threads(1)

#: A small, fast classifier and training schedule for the tests.
FAST = {
    "hyperparameters": {"channels": 16, "num_layers": 2, "head_hidden": 8},
    "max_epochs": 6,
    "patience": 2,
    "min_epochs": 3,
    "batch_frames": 4096,
}


def _toy_latents(n=120, d=6, seed=0, separable=True):
    """Objects whose class shows in a shift of feature 0 (strong) when ``separable``."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int8)
    rng.shuffle(labels)
    seqs, times = [], []
    for i in range(n):
        t = int(rng.integers(3, 40))
        x = rng.normal(size=(t, d)).astype(np.float32)
        if separable:
            x[:, 0] += 2.0 if labels[i] == REAL else -2.0
        seqs.append(x)
        times.append(np.sort(rng.uniform(0, 50, t)))
    return LatentSet.from_sequences([f"o{i}" for i in range(n)], seqs, labels, times)


# ---------------------------------------------------------------- latents and batching


def test_latent_set_basics():
    ls = _toy_latents(10)
    assert ls.n_objects == 10 and ls.width == 6 and ls.has_times
    dt = ls.dt()
    assert np.all(dt[ls.offsets[:-1]] == 0) and np.all(dt >= 0)
    i = 3
    np.testing.assert_allclose(
        dt[ls.offsets[i] + 1 : ls.offsets[i + 1]],
        np.diff(ls.times[ls.offsets[i] : ls.offsets[i + 1]]),
        rtol=1e-6,
    )
    sub = ls.subset([4, 1])
    np.testing.assert_array_equal(sub.sequence(0), ls.sequence(4))
    np.testing.assert_array_equal(sub.object_ids, ls.object_ids[[4, 1]])
    assert ls.select_columns(slice(0, 2)).width == 2
    with pytest.raises(ValueError, match="at least one frame"):
        LatentSet(np.array(["a", "b"]), np.zeros((1, 2)), np.array([0, 1, 1]))


def test_parse_columns():
    assert parse_columns("0:36") == slice(0, 36)
    assert parse_columns(":36") == slice(0, 36)
    assert parse_columns("36:", 72) == slice(36, None)
    assert parse_columns(None) is None
    with pytest.raises(ValueError, match="reaches past"):
        parse_columns("0:80", 72)
    with pytest.raises(ValueError, match="expected 'A:B'"):
        parse_columns("a:b")


def test_length_batches_cover_and_respect_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1200, 500)
    for shuffle in (False, True):
        batches = length_batches(lengths, max_frames=4000, max_batch=32, shuffle=shuffle, rng=rng)
        seen = np.sort(np.concatenate(batches))
        np.testing.assert_array_equal(seen, np.arange(500))
        for b in batches:
            assert len(b) <= 32
            assert len(b) == 1 or lengths[b].max() * len(b) <= 4000
    # Bucketing keeps the padding small compared to padding everything to the longest.
    batches = length_batches(lengths, max_frames=8000, max_batch=64)
    padded = sum(lengths[b].max() * len(b) for b in batches)
    assert padded < 1.2 * lengths.sum() < 0.7 * lengths.max() * len(lengths)


def test_collate_and_crops():
    ls = _toy_latents(8)
    idx = np.array([2, 5, 7])
    b = collate(ls.values, ls.offsets, idx, ls.times)
    assert b.x.shape == (3, ls.lengths[idx].max(), 6)
    for row, i in enumerate(idx):
        n = ls.lengths[i]
        np.testing.assert_array_equal(b.x[row, :n].numpy(), ls.sequence(i))
        assert torch.all(b.x[row, n:] == 0) and torch.all(b.dt[row, n:] == 0)
        np.testing.assert_allclose(
            b.dt[row, 1:n].numpy(), np.diff(ls.times[ls.offsets[i] : ls.offsets[i + 1]]), rtol=1e-5
        )
    rng = np.random.default_rng(1)
    for crop in ("subsample", "window"):
        c = collate(ls.values, ls.offsets, idx, ls.times, max_len=4, crop=crop, rng=rng)
        assert c.lengths.max() <= 4
        for row, i in enumerate(idx):
            n = int(c.lengths[row])
            rows = [np.flatnonzero((ls.sequence(i) == v).all(1))[0] for v in c.x[row, :n].numpy()]
            assert rows == sorted(rows)  # visits stay in time order
            assert np.all(c.dt[row, :n].numpy() >= 0)
    nt = collate(ls.values, ls.offsets, idx, None)
    assert torch.all(nt.dt == 0)


# ---------------------------------------------------------------- reading a latent directory


def _write_dir(tmp_path, n=30, d=5, seed=0):
    """A latent dir + RB_ZTF-style CSV (1 = artifact) with one problem of each kind."""
    rng = np.random.default_rng(seed)
    lat = tmp_path / "lat"
    lat.mkdir()
    rows = ["object_id,label"]
    for i in range(n):
        artifact = i % 2
        t = int(rng.integers(4, 15))
        x = rng.normal(size=(t, d)).astype(np.float32)
        x[:, 0] += 2.0 if artifact else -2.0
        oid = f"{1000 + i}"
        if i == 3:
            x[1] = np.nan  # one NaN row: dropped with a warning
        if i == 5:
            x = np.full((2, d), np.nan, np.float32)  # left empty: excluded
        if i == 7:
            x = rng.normal(size=(t, d + 2)).astype(np.float32)  # wrong width
        if i == 9:
            x = np.zeros((0, d), np.float32)  # empty array
        if i != 11:  # 1011 is labelled but has no file
            np.save(lat / f"{oid}.npy", x)
        rows.append(f"{oid},{artifact}")
    np.save(lat / "999999.npy", rng.normal(size=(5, d)).astype(np.float32))  # a file with no label
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return lat, tmp_path / "labels.csv"


def test_read_latent_dir_reports_problems(tmp_path):
    lat, csv = _write_dir(tmp_path)
    ls, rep = read_latent_dir(str(lat), str(csv))
    assert rep.missing_files == ["1011"]
    assert rep.unlabelled_files == ["999999"]
    assert rep.nan_rows == {"1003": 1, "1005": 2}
    assert rep.emptied_by_nan == ["1005"]
    assert rep.width_mismatch == {"1007": 7}
    assert rep.empty == ["1009"]
    assert rep.n_used == 30 - 4 == ls.n_objects  # no file, all-NaN, wrong width, empty
    assert rep.n_excluded == 4
    assert rep.times_source == "none" and not ls.has_times
    text = "\n".join(rep.lines())
    for needle in (
        "1011",
        "999999",
        "1007 (width 7)",
        "1009",
        "dropped 3 frames",
        "the dt feature is 0",
        "0 = real, 1 = artifact",
    ):
        assert needle in text
    # RB_ZTF convention: label 1 = artifact -> BOGUS; odd ids were written as artifacts.
    k = list(ls.object_ids).index("1001")
    assert ls.labels[k] == BOGUS and ls.labels[list(ls.object_ids).index("1000")] == REAL
    ls2, rep2 = read_latent_dir(str(lat), str(csv), label_real_is=1, columns="0:3")
    assert ls2.labels[list(ls2.object_ids).index("1001")] == REAL and ls2.width == 3
    assert rep2.columns == "0:3"


def test_read_latent_dir_times_and_bad_labels(tmp_path):
    lat, csv = _write_dir(tmp_path)
    t = np.arange(len(np.load(lat / "1000.npy")), dtype=float)[::-1] * 2.0  # reversed: must be sorted
    np.save(lat / "1000.times.npy", t)
    np.save(lat / "1002.times.npy", np.arange(3.0))  # wrong length
    with open(csv, "a") as f:
        f.write("1004,maybe\n")
    ls, rep = read_latent_dir(str(lat), str(csv))
    assert ls.has_times and "per-object" in rep.times_source
    assert rep.times_reordered == ["1000"] and "1002" in rep.times_bad
    assert "1004" in rep.bad_labels and "1004" not in ls.object_ids
    assert len(rep.times_missing) == ls.n_objects - 2
    i = list(ls.object_ids).index("1000")
    assert np.all(np.diff(ls.times[ls.offsets[i] : ls.offsets[i + 1]]) >= 0)


def test_read_latent_dir_errors(tmp_path):
    lat, csv = _write_dir(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,class\n1000,1\n")
    with pytest.raises(ValueError, match="missing column"):
        read_latent_dir(str(lat), str(bad))
    with pytest.raises(FileNotFoundError):
        read_latent_dir(str(tmp_path / "nope"), str(csv))


# ---------------------------------------------------------------- k-fold CV


def test_stratified_kfold():
    y = np.array([0] * 23 + [1] * 17)
    folds = stratified_kfold(y, 5, seed=3)
    tests = np.concatenate([te for _, te in folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(40))
    for tr, te in folds:
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 40
        assert abs(y[te].sum() - 17 / 5) <= 1
    with pytest.raises(ValueError, match="at least 5"):
        stratified_kfold(np.array([0] * 10 + [1] * 3), 5)


def test_cv_separable_and_shuffled(tmp_path):
    ls = _toy_latents(120)
    res = cross_validate(ls, ["conv1d"], k=5, seed=0, config_overrides={"conv1d": FAST})
    s = res.models["conv1d"].summary()
    assert s["roc_auc_mean"] > 0.95 and s["accuracy_mean"] > 0.85
    assert np.all(np.isfinite(res.models["conv1d"].probabilities))
    rng = np.random.default_rng(5)
    shuffled = LatentSet(ls.object_ids, ls.values, ls.offsets, rng.permutation(ls.labels), ls.times)
    res2 = cross_validate(shuffled, ["conv1d"], k=5, seed=0, config_overrides={"conv1d": FAST})
    assert 0.3 < res2.models["conv1d"].summary()["roc_auc_mean"] < 0.7
    out = tmp_path / "roc.png"
    plot_roc(res, str(out))
    assert out.stat().st_size > 1000
    d = res.to_dict()
    assert d["k"] == 5 and len(d["models"]["conv1d"]["folds"]) == 5
    json.dumps(d)


# ---------------------------------------------------------------- CLI


def test_cv_results_do_not_depend_on_workers():
    from lsst.meas.rbnet.sequence.cv import cross_validate

    ls = _toy_latents(60, seed=4)
    gru = {**FAST, "hyperparameters": {"hidden_size": 8, "head_hidden": 8}}
    kw = dict(k=3, seed=1, config_overrides={"conv1d": FAST, "gru": gru})
    one = cross_validate(ls, ["conv1d", "gru"], **kw)
    lines = []
    two = cross_validate(ls, ["conv1d", "gru"], workers=2, log=lines.append, **kw)
    assert len(lines) == 6 and two.settings["workers"] == 2
    for name in ("conv1d", "gru", "ensemble"):
        np.testing.assert_allclose(two.models[name].probabilities, one.models[name].probabilities, atol=1e-6)
        assert [r.fold for r in two.models[name].folds] == [0, 1, 2]
    # A time budget caps every fit at its share (times the workers).
    capped = cross_validate(
        ls, ["conv1d"], k=3, seed=1, time_budget=6.0, workers=2, config_overrides={"conv1d": FAST}
    )
    assert all(r.seconds < 30 for r in capped.models["conv1d"].folds)


def test_cli_sequence_cv(tmp_path):
    from lsst.meas.rbnet.cli import main

    lat, csv = _write_dir(tmp_path, n=40)
    out, plot = tmp_path / "cv.json", tmp_path / "roc.png"
    result = CliRunner().invoke(
        main,
        [
            "sequence-cv",
            "--latents",
            str(lat),
            "--labels",
            str(csv),
            "--models",
            "conv1d,gru",
            "--folds",
            "3",
            "--max-epochs",
            "3",
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--threads",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    text = result.output
    for needle in (
        "1011",
        "999999",
        "1007 (width 7)",
        "dropped 3 frames",
        "no visit times",
        "ROC-AUC",
        "ensemble",
        "conv1d",
        "gru",
    ):
        assert needle in text, needle
    data = json.loads(out.read_text())
    assert data["load_report"]["missing_files"] == ["1011"]
    assert set(data["models"]) == {"conv1d", "gru", "ensemble"}
    assert plot.stat().st_size > 1000
    bad = CliRunner().invoke(
        main, ["sequence-cv", "--latents", str(lat), "--labels", str(csv), "--models", "rnn"]
    )
    assert bad.exit_code != 0 and "Unknown sequence model" in bad.output


def test_cli_train_sequence_with_and_without_visit_scores(tmp_path):
    from lsst.meas.rbnet.cli import main
    from lsst.meas.rbnet.package import ModelPackage

    common = ["--n-objects", "16", "--n-visits", "2:4", "--latent-dim", "4", "--vae-epochs", "1"]
    common += ["--vae-max-frames", "64", "--model", "conv1d", "--max-epochs", "2", "--threads", "1"]
    out = tmp_path / "seq.safetensors"
    result = CliRunner().invoke(
        main, ["train-sequence", "--out", str(out), "--channels", "triplet", "--version", "sv1", *common]
    )
    assert result.exit_code == 0, result.output
    assert "single-visit model" in result.output
    package = ModelPackage.load(out)
    assert package.extra["frame_features"] == ["visit_logit", "visit_scored"]
    from lsst.meas.rbnet.scoring import load_scorer

    assert package.extra["visit_score_versions"] == [load_scorer(None).package.version]
    plain = tmp_path / "plain.safetensors"
    result = CliRunner().invoke(main, ["train-sequence", "--out", str(plain), "--no-visit-scores", *common])
    assert result.exit_code == 0, result.output
    assert ModelPackage.load(plain).extra["frame_features"] == []
    assert ModelPackage.load(plain).extra["visit_score_versions"] == []


# ---------------------------------------------------------------- aggregation, synthetic data


def test_aggregate_scores():
    s = np.array([0.1, 0.9, 0.5, np.nan, 0.2, np.nan])
    off = np.array([0, 3, 3, 5, 6])
    a = aggregate_scores(s, off, ("max", "mean", "median", "min"))
    np.testing.assert_allclose(a["max"], [0.9, np.nan, 0.2, np.nan])
    np.testing.assert_allclose(a["mean"], [0.5, np.nan, 0.2, np.nan])
    np.testing.assert_allclose(a["median"], [0.5, np.nan, 0.2, np.nan])
    np.testing.assert_allclose(a["min"], [0.1, np.nan, 0.2, np.nan])
    with pytest.raises(ValueError, match="Unknown aggregation"):
        aggregate_scores(s, off, "mode")


def test_synthetic_latents_shape():
    ls = make_synthetic_latents(n_objects=60, seed=1)
    assert ls.n_objects == 60 and ls.width == 36 and ls.has_times
    assert ls.lengths.min() >= 5 and ls.lengths.max() <= 1100
    assert 0 < ls.labels.sum() < 60
    assert make_synthetic_latents(n_objects=5, seed=1, with_logvar=True).width == 72
    np.testing.assert_array_equal(
        make_synthetic_latents(n_objects=5, seed=2).values, make_synthetic_latents(n_objects=5, seed=2).values
    )


# ---------------------------------------------------------------- encoding, packages, scoring


def test_fused_encoder_matches_vae():
    from lsst.meas.rbnet.nn import registry
    from lsst.meas.rbnet.sequence.encode import encode_frames

    torch.manual_seed(0)
    vae = registry.build("vae", hidden_channels=[4, 8, 8, 8, 8], latent_dim=6)
    # Give the batch norms non-trivial running statistics.
    vae.train()
    with torch.no_grad():
        for _ in range(3):
            vae(torch.randn(16, 1, 28, 28) * 2 + 1)
    vae.eval()
    x = np.random.default_rng(0).normal(size=(37, 1, 28, 28)).astype(np.float32)
    x[0, 0, 3, 3] = np.nan
    mu, lv = encode_frames(vae, x, batch_size=10, return_logvar=True)
    with torch.no_grad():
        ref_mu, ref_lv = vae.encode(torch.from_numpy(np.nan_to_num(x)))
    np.testing.assert_allclose(mu, ref_mu.numpy(), atol=1e-4)
    np.testing.assert_allclose(lv, ref_lv.numpy(), atol=1e-4)
    # bfloat16 keeps about 3 significant digits of the latents.
    mu16 = encode_frames(vae, x, batch_size=10, dtype=torch.bfloat16)
    assert np.abs(mu16 - mu).max() < 0.02 * np.abs(mu).max()


@pytest.fixture(scope="module")
def tiny_package():
    from lsst.meas.rbnet.sequence.train import (
        SequencePackageConfig,
        SequenceTrainConfig,
        VAETrainConfig,
        train_sequence_package,
    )

    fr = make_synthetic_frames(n_objects=24, n_visits=(3, 8), channels=3, seed=0)
    config = SequencePackageConfig(
        vae=VAETrainConfig(hyperparameters={"latent_dim": 8, "hidden_channels": [4, 8, 8, 8, 8]}, epochs=1),
        classifier=SequenceTrainConfig(
            architecture="seq_bigru",
            hyperparameters={"hidden_size": 8},
            max_epochs=2,
            min_epochs=1,
            val_fraction=0.25,
        ),
        channels=("science",),
        test_fraction=0.25,
        version="seqT1",
    )
    package, metrics = train_sequence_package(fr.frames, fr.offsets, fr.labels, fr.times, config)
    return package, metrics, fr


def test_sequence_package_round_trip(tiny_package, tmp_path):
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.sequence.scoring import SequenceScorer, score_sequences

    package, metrics, fr = tiny_package
    assert package.kind == "sequence" and package.version == "seqT1"
    assert set(package.components) == {"encoder", "classifier"}
    assert package.components["encoder"].architecture == "vae"
    assert package.contract.stamp_size == 29 and package.contract.channels == ("science",)
    assert package.extra["frame_size"] == 28 and package.temperature > 0
    # A quarter of the 24 objects, stratified, is held out and evaluated (both classes, so an AUC).
    assert metrics["evaluated_on"] == "held-out test objects"
    assert metrics["n_eval"] == package.provenance["n_test_objects"] == 6
    assert package.provenance["n_train_objects"] == 18
    path = tmp_path / "seq.safetensors"
    package.save(path)
    loaded = ModelPackage.load(path)
    assert loaded.digest == package.digest and loaded.extra == package.extra

    # Score with an empty object appended: every object gets an output, NaN for no frames.
    offsets = np.concatenate([fr.offsets, [fr.offsets[-1]]])
    p1 = score_sequences(package, fr.frames, offsets, fr.times)
    p2 = score_sequences(str(path), fr.frames, offsets, fr.times)
    assert p1.shape == (25,) and p1.dtype == np.float32
    assert np.isnan(p1[-1]) and np.all((p1[:-1] >= 0) & (p1[:-1] <= 1))
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    # The recorded held-out metrics are those of the package's own scores on the held-out objects.
    from lsst.meas.rbnet.sequence.train import stratified_split
    from lsst.meas.rbnet.training.metrics import accuracy, roc_auc

    _, held = stratified_split(fr.labels, 0.25, np.random.default_rng(package.provenance["seed"]))
    assert len(held) == 6 and 0 < fr.labels[held].sum() < 6
    assert metrics["roc_auc"] == pytest.approx(roc_auc(p1[held], fr.labels[held]), abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(accuracy(p1[held], fr.labels[held], 0.5), abs=1e-9)
    # Chunked streaming gives the same scores; 29-pixel stamps are cut to the 28-pixel frames.
    small = SequenceScorer(loaded, chunk_frames=7, encode_batch=5)
    np.testing.assert_allclose(small.score(fr.frames, offsets, fr.times), p1, atol=1e-4)
    stamps = np.pad(fr.frames, ((0, 0), (0, 0), (0, 1), (0, 1)))
    np.testing.assert_allclose(small.score(stamps, offsets, fr.times), p1, atol=1e-4)
    with pytest.raises(ValueError, match="offsets"):
        small.score(fr.frames, offsets[:-2], fr.times)
    with pytest.raises(ValueError, match="precision"):
        SequenceScorer(loaded, precision="float16")


def test_visit_score_features():
    from lsst.meas.rbnet.sequence.aggregate import FRAME_FEATURES, LOGIT_CLIP, visit_score_features

    p = np.array([0.5, 0.9, 0.1, np.nan, 0.0, 1.0], dtype=np.float32)
    f = visit_score_features(p)
    assert f.shape == (6, len(FRAME_FEATURES)) and f.dtype == np.float32
    logit, scored = f[:, 0], f[:, 1]
    np.testing.assert_allclose(logit[:3], [0.0, np.log(9.0), -np.log(9.0)], rtol=1e-5, atol=1e-6)
    assert logit[3] == 0.0 and scored.tolist() == [1, 1, 1, 0, 1, 1]
    assert logit[4] == -np.float32(LOGIT_CLIP) and logit[5] == np.float32(LOGIT_CLIP)
    assert visit_score_features(p, ("visit_scored",)).shape == (6, 1)
    with pytest.raises(ValueError, match="Unknown frame feature"):
        visit_score_features(p, ("visit_snr",))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        visit_score_features(np.array([1.5]))
    with pytest.raises(ValueError, match="1-D"):
        visit_score_features(np.zeros((2, 2)))


def test_encoder_precision_selection(monkeypatch):
    import torch

    from lsst.meas.rbnet import runtime
    from lsst.meas.rbnet.sequence import scoring

    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert scoring.native_bf16("cpu") and scoring.encoder_dtype("cpu", "auto") == torch.bfloat16
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert scoring.encoder_dtype(torch.device("cpu"), "auto") == torch.bfloat16
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not scoring.native_bf16("cpu") and scoring.encoder_dtype("cpu", "auto") == torch.float32
    assert scoring.encoder_dtype("cpu", "bfloat16") == torch.bfloat16
    assert scoring.encoder_dtype("cpu", "float32") == torch.float32
    # CUDA: what the GPU supports; none here (torch.cuda.is_available() False) means no bfloat16.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert scoring.encoder_dtype("cuda:0", "auto") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert scoring.encoder_dtype("cuda", "auto") == torch.float32
    with pytest.raises(ValueError, match="precision"):
        scoring.encoder_dtype("cpu", "half")


def test_bfloat16_encoder_is_used_only_where_scores_survive(tiny_package, monkeypatch):
    from lsst.meas.rbnet import runtime
    from lsst.meas.rbnet.sequence import scoring

    package, _, fr = tiny_package
    p32 = scoring.SequenceScorer(package, precision="float32")
    p16 = scoring.SequenceScorer(package, precision="bfloat16")
    assert p32.precision == "float32" and p16.precision == "bfloat16" and p16.encode_batch <= p32.encode_batch
    a = p32.score(fr.frames, fr.offsets, fr.times)
    b = p16.score(fr.frames, fr.offsets, fr.times)
    # "auto" on a machine with bfloat16 units: probe frames decide.
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    auto = scoring.SequenceScorer(package)
    assert auto.bf16_error is not None and auto.bf16_error >= 0
    c = auto.score(fr.frames, fr.offsets, fr.times)
    if auto.bf16_error <= scoring.BF16_MAX_ERROR:
        assert auto.precision == "bfloat16"
        np.testing.assert_allclose(c, b, atol=1e-6)
        assert np.abs(c - a).max() < 0.02
    else:
        assert auto.precision == "float32"
        np.testing.assert_allclose(c, a, atol=1e-6)
    # A threshold no package meets keeps float32; one every package meets takes bfloat16.
    monkeypatch.setattr(scoring, "BF16_MAX_ERROR", -1.0)
    assert scoring.SequenceScorer(package).precision == "float32"
    monkeypatch.setattr(scoring, "BF16_MAX_ERROR", np.inf)
    assert scoring.SequenceScorer(package).precision == "bfloat16"
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    none = scoring.SequenceScorer(package)
    assert none.precision == "float32" and none.bf16_error is None


@pytest.fixture(scope="module")
def visit_score_package():
    """A package whose latents carry no label information; the visit scores do."""
    from lsst.meas.rbnet.sequence.train import (
        SequencePackageConfig,
        SequenceTrainConfig,
        VAETrainConfig,
        train_sequence_package,
    )

    rng = np.random.default_rng(3)
    n_obj = 80
    lengths = rng.integers(2, 7, n_obj)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    labels = (np.arange(n_obj) % 2).astype(np.int8)
    frames = rng.normal(size=(offsets[-1], 1, 20, 20)).astype(np.float32)  # pure noise for both classes
    times = np.concatenate([np.cumsum(rng.uniform(1, 3, t)) for t in lengths])
    obj = np.repeat(np.arange(n_obj), lengths)
    visit = np.clip(rng.normal(np.where(labels[obj] == 1, 0.7, 0.3), 0.15), 0, 1).astype(np.float32)
    visit[::7] = np.nan  # some visits not scored
    config = SequencePackageConfig(
        vae=VAETrainConfig(hyperparameters={"latent_dim": 4, "hidden_channels": [4, 4]}, epochs=1),
        classifier=SequenceTrainConfig(
            architecture="seq_conv1d", hyperparameters={"channels": 8}, max_epochs=25, patience=25
        ),
        channels=("science",),
        test_fraction=0.0,
        version="seqV1",
    )
    package, _ = train_sequence_package(frames, offsets, labels, times, config, visit_scores=visit)
    return package, frames, offsets, labels, times, visit


def test_sequence_model_reads_visit_scores(visit_score_package):
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.sequence.scoring import SequenceScorer
    from lsst.meas.rbnet.training.metrics import roc_auc

    package, frames, offsets, labels, times, visit = visit_score_package
    assert package.extra["frame_features"] == ["visit_logit", "visit_scored"]
    assert package.components["classifier"].hyperparameters["input_dim"] == 4 + 2
    scorer = SequenceScorer(ModelPackage.from_bytes(package.to_bytes()))
    assert scorer.needs_visit_scores
    p = scorer.score(frames, offsets, times, visit_scores=visit)
    # The noise frames say nothing; the visit scores separate the classes.
    assert p.shape == (len(labels),) and roc_auc(p, labels) > 0.9
    # Latents scored directly give the same numbers.
    lat = scorer.latents(frames)
    np.testing.assert_allclose(scorer.score_latents(lat, offsets, times, visit), p, atol=1e-6)
    with pytest.raises(ValueError, match="visit_scores"):
        scorer.score(frames, offsets, times)
    with pytest.raises(ValueError, match="one value per frame"):
        scorer.score(frames, offsets, times, visit_scores=visit[:-1])
    with pytest.raises(ValueError, match="visit_scores"):
        scorer.score_latents(lat, offsets, times)
    from lsst.meas.rbnet.sequence.train import train_sequence_package

    with pytest.raises(ValueError, match="one value per frame"):
        train_sequence_package(frames, offsets, labels, times, visit_scores=np.zeros(3))


def test_non_finite_latents_leave_their_frames_out(visit_score_package):
    from lsst.meas.rbnet.sequence.scoring import SequenceScorer

    package, frames, offsets, labels, times, visit = visit_score_package
    scorer = SequenceScorer(package)
    lat = scorer.latents(frames[: offsets[3]])
    off, t, v = offsets[:4], times[: offsets[3]], visit[: offsets[3]]
    ref = scorer.score_latents(lat, off, t, v)
    bad = lat.copy()
    bad[off[0] : off[1]] = np.nan  # object 0 loses every frame
    bad[off[1], 2] = np.inf  # object 1 loses its first frame
    p = scorer.score_latents(bad, off, t, v)
    assert np.isnan(p[0]) and np.isfinite(p[1]) and p[2] == ref[2]
    keep = np.r_[off[1] + 1 : off[2]]
    alone = scorer.score_latents(lat[keep], np.array([0, len(keep)]), t[keep], v[keep])
    np.testing.assert_allclose(p[1], alone[0], atol=1e-6)
    with pytest.raises(ValueError, match="times"):
        scorer.score_latents(lat, off, t[:-1], v)


def test_package_with_unknown_frame_feature_is_refused(visit_score_package):
    from lsst.meas.rbnet.package import ModelPackage, ModelPackageError
    from lsst.meas.rbnet.sequence.scoring import SequenceScorer

    package = visit_score_package[0]
    odd = ModelPackage.from_bytes(package.to_bytes())
    odd.extra["frame_features"] = ["visit_logit", "visit_snr"]
    with pytest.raises(ModelPackageError, match="visit_snr"):
        SequenceScorer(odd)
    odd.extra["frame_features"] = ["visit_logit"]
    with pytest.raises(ModelPackageError, match="reads 6 values per frame"):
        SequenceScorer(odd)


def test_fit_reads_the_loss_once_per_epoch(monkeypatch):
    """The step losses stay on the device during an epoch (no read, hence no host-device
    synchronisation, per step); the logged training loss is the same number a read per step gave."""
    from lsst.meas.rbnet.sequence import train as seq_train

    seen = []  # (loss tensor, batch size) of every step, in order
    per_epoch = []  # number of steps seen when each epoch was logged
    real_get_loss = seq_train.get_loss

    def recording_get_loss(name, **params):
        fn = real_get_loss(name, **params)

        def loss(logits, target):
            value = fn(logits, target)
            seen.append((value.detach().clone(), len(target)))
            return value

        return loss

    reads = []
    real_float, real_item, real_tolist = torch.Tensor.__float__, torch.Tensor.item, torch.Tensor.tolist

    def counted(name, real):
        def read(self, *a, **k):
            if self.ndim == 0 or name == "tolist":
                reads.append((name, len(seen)))
            return real(self, *a, **k)

        return read

    monkeypatch.setattr(seq_train, "get_loss", recording_get_loss)
    monkeypatch.setattr(torch.Tensor, "__float__", counted("float", real_float))
    monkeypatch.setattr(torch.Tensor, "item", counted("item", real_item))
    monkeypatch.setattr(torch.Tensor, "tolist", counted("tolist", real_tolist))
    cfg = seq_train.SequenceTrainConfig(architecture="seq_conv1d", **{**FAST, "batch_frames": 256})
    fit = seq_train.fit_sequence_classifier(
        _toy_latents(80), np.arange(80), cfg, log=lambda line: per_epoch.append(len(seen))
    )
    monkeypatch.undo()
    assert len(fit.history) == len(per_epoch) >= 3
    starts = [0] + per_epoch[:-1]
    assert all(b - a >= 3 for a, b in zip(starts, per_epoch))  # several steps per epoch
    for rec, a, b in zip(fit.history, starts, per_epoch):
        total, count = 0.0, 0
        for value, n in seen[a:b]:
            total += float(value) * n
            count += n
        assert rec["train_loss"] == total / count  # bit for bit what a per-step read gave
    # Loss reads (one tolist per epoch, after its last step), none while an epoch's steps run.
    loss_reads = [at for name, at in reads if name in ("float", "tolist")]
    assert loss_reads == per_epoch


def test_fit_respects_time_budget_and_calibrates():
    from lsst.meas.rbnet.sequence.train import SequenceTrainConfig, fit_sequence_classifier, platt_scaling

    ls = _toy_latents(60)
    cfg = SequenceTrainConfig(
        architecture="seq_conv1d",
        max_seconds=1e-3,
        batch_frames=64,
        **{k: v for k, v in FAST.items() if k != "batch_frames"},
    )
    fit = fit_sequence_classifier(ls, np.arange(60), cfg)
    assert len(fit.history) == 1 and fit.temperature > 0
    # Platt scaling recovers a known logistic relation.
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.5 * z + 1.0)))).astype(int)
    a, b = platt_scaling(z, y)
    assert a == pytest.approx(0.5, abs=0.08) and b == pytest.approx(1.0, abs=0.15)
