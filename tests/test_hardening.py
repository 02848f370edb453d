# This file is part of meas_rbnet.
"""Hardening: the cases of issue 11 (nothing lost, nothing silently wrong, at home in the stack).

Each test names the case it covers ("case N"); each failed before the fix.
"""

import numpy as np
import pytest
import torch
from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.flags import SourceFlag as F
from lsst.meas.rbnet.nn import build
from lsst.meas.rbnet.package import ModelPackage, ModelPackageError
from lsst.meas.rbnet.scoring import Scorer, score_triplets

torch.set_num_threads(1)

HP = {"widths": [8, 16], "hidden": 8}


def make_package(seed=0, version="h1", temperature=2.0):
    contract = InputContract()
    hp = {**HP, "in_channels": contract.n_channels, "stamp_size": contract.stamp_size}
    torch.manual_seed(seed)
    module = build("triplet_cnn", **hp)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        module.head.weight.mul_(20)
    return ModelPackage.from_modules(
        "triplet",
        {"classifier": ("triplet_cnn", hp, module)},
        contract=contract,
        version=version,
        temperature=temperature,
    )


@pytest.fixture(scope="module")
def package():
    return make_package()


def _stamps(n=6, seed=1):
    """(n, 31, 31) float32 difference, science, template stamps: noise plus a central source."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-15:16, -15:16]
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2)).astype(np.float32)
    amp = rng.uniform(5, 200, n).astype(np.float32)[:, None, None]
    diff = rng.normal(0, 10, (n, 31, 31)).astype(np.float32) + amp * psf
    sci = rng.normal(100, 10, (n, 31, 31)).astype(np.float32) + amp * psf
    tmp = rng.normal(100, 5, (n, 31, 31)).astype(np.float32)
    return diff, sci, tmp


# ---------------------------------------------------------------------------
# Silently wrong
# ---------------------------------------------------------------------------


def _damaged():
    diff, sci, tmp = _stamps()
    diff[0, 15, 15] = np.nan  # the centre
    diff[1, 10:20, 10:20] = np.inf  # near the centre
    diff[2, :25, :] = np.nan  # most of the stamp
    sci[3, 0:3, 0:3] = -np.inf  # a corner
    tmp[4, :, :] = np.nan  # a whole channel
    return diff, sci, tmp


def test_case5_stamp_and_image_paths_flag_alike(package):
    """Case 5: score_triplets flags NaN/inf pixels exactly as Scorer.score_images does."""
    diff, sci, tmp = _damaged()
    n = diff.shape[0]
    r_st, f_st = score_triplets(sci, tmp, diff, model=package, device="cpu", return_flags=True)
    # The same stamps laid on images, far apart, scored through extraction.
    images = [np.zeros((40 * n, 40), np.float32) for _ in range(3)]
    for i in range(n):
        for c, arr in enumerate((diff, sci, tmp)):
            images[c][40 * i + 4 : 40 * i + 35, 4:35] = arr[i]
    x = np.full(n, 19.0)
    y = 40.0 * np.arange(n) + 19.0
    res = Scorer(package, device="cpu").score_images(images, x, y)
    np.testing.assert_array_equal(f_st, res.flags)
    np.testing.assert_allclose(r_st, res.reliability, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert f_st[0] & F.BAD_CENTER and f_st[0] & F.NONFINITE
    assert f_st[1] & F.BAD_CENTER and f_st[1] & F.NONFINITE
    assert f_st[2] & F.MOSTLY_BAD and f_st[2] & F.BAD_CENTER
    assert f_st[3] == F.NONFINITE
    assert f_st[4] & F.NO_VALID_PIXELS and f_st[4] & F.NOT_SCORED and np.isnan(r_st[4])
    assert f_st[5] == 0
    # Never a NaN score without a flag, never a flag-free score of a damaged stamp.
    assert np.all(np.isfinite(r_st) | ((f_st & F.NOT_SCORED) != 0))


def test_case5_resized_stamps_count_padding_as_missing(package):
    """Case 5: a small stamp padded to the model's size: padding is missing, not NONFINITE."""
    diff, sci, tmp = _stamps(3)
    small = [a[:, 4:27, 4:27].copy() for a in (diff, sci, tmp)]  # 23x23 -> padded to 31x31
    _, f = score_triplets(small[1], small[2], small[0], model=package, device="cpu", return_flags=True)
    assert np.all(f == F.RESIZED)  # 31*31 - 23*23 = 432 of 961 missing: less than half
    small[0][1, 11, 11] = np.nan
    _, f = score_triplets(small[1], small[2], small[0], model=package, device="cpu", return_flags=True)
    assert f[1] == F.RESIZED | F.NONFINITE | F.BAD_CENTER and f[0] == F.RESIZED


@pytest.mark.parametrize("scale,dtype", [(1e-42, np.float32), (1e-40, np.float64), (1e-60, np.float64)])
def test_case6_tiny_values_score_as_unscaled(package, scale, dtype):
    """Case 6: float32 denormals and tiny float64 stamps score as the unscaled stamps (no NaN)."""
    diff, sci, tmp = _stamps()
    ref, fref = score_triplets(sci, tmp, diff, model=package, device="cpu", return_flags=True)
    scaled = [(a.astype(dtype) * dtype(scale)) for a in (sci, tmp, diff)]
    got, f = score_triplets(*scaled, model=package, device="cpu", return_flags=True)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(f, fref)
    # Float32 denormals keep only a few significant bits; the scores move little.
    np.testing.assert_allclose(got, ref, atol=2e-3 if dtype is np.float32 else 1e-5)


def test_case6_images_with_denormals(package):
    """Case 6: the image path scores denormal images like the stamp path."""
    diff, sci, tmp = _stamps(2)
    images = [np.zeros((80, 40), np.float32) for _ in range(3)]
    for i in range(2):
        for c, arr in enumerate((diff, sci, tmp)):
            images[c][40 * i + 4 : 40 * i + 35, 4:35] = arr[i]
    ref = Scorer(package, device="cpu").score_images(images, np.full(2, 19.0), np.array([19.0, 59.0]))
    tiny = [im * np.float32(1e-42) for im in images]
    got = Scorer(package, device="cpu").score_images(tiny, np.full(2, 19.0), np.array([19.0, 59.0]))
    assert np.isfinite(got.reliability).all()
    np.testing.assert_allclose(got.reliability, ref.reliability, atol=2e-3)


def test_case6_nan_output_is_flagged(package, monkeypatch):
    """Case 6: a non-finite network output is flagged BAD_OUTPUT | NOT_SCORED, never a bare NaN."""
    scorer = Scorer(package, device="cpu")
    real = scorer._network_logits

    def broken(t):
        out = real(t).clone()
        out[0] = float("nan")
        return out

    monkeypatch.setattr(scorer, "_network_logits", broken)
    diff, sci, tmp = _stamps(3)
    res = scorer.score_channels({"difference": diff, "science": sci, "template": tmp})
    assert np.isnan(res.reliability[0]) and res.flags[0] == F.BAD_OUTPUT | F.NOT_SCORED
    assert np.isfinite(res.reliability[1:]).all() and (res.flags[1:] == 0).all()


@pytest.mark.parametrize("value", ["no", "False", "yes", 1, 0, None, 1.0])
def test_case7_symmetry_must_be_boolean(package, value):
    """Case 7: symmetry="no" (or any non-boolean) is refused, naming the argument."""
    diff, sci, tmp = _stamps(2)
    with pytest.raises(ValueError, match="symmetry must be a boolean"):
        score_triplets(sci, tmp, diff, model=package, device="cpu", symmetry=value)
    with pytest.raises(ValueError, match="symmetry must be a boolean"):
        Scorer(package, device="cpu", symmetry=value)


def test_case7_symmetry_booleans_accepted(package):
    diff, sci, tmp = _stamps(2)
    a = score_triplets(sci, tmp, diff, model=package, device="cpu", symmetry=np.bool_(True))
    b = score_triplets(sci, tmp, diff, model=package, device="cpu", symmetry=True)
    c = score_triplets(sci, tmp, diff, model=package, device="cpu", symmetry=False)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def _metadata_span(data):
    """Byte range of the safetensors header's ``__metadata__`` object."""
    import struct

    (n,) = struct.unpack("<Q", data[:8])
    head = data[8 : 8 + n]
    start = head.index(b'"__metadata__"')
    depth, i = 0, head.index(b"{", start)
    for j in range(i, len(head)):
        depth += {ord("{"): 1, ord("}"): -1}.get(head[j], 0)
        if depth == 0:
            return 8 + i, 8 + j + 1
    raise AssertionError("no end of __metadata__")


def test_case8_every_metadata_byte_is_covered(package):
    """Case 8: any changed byte of the metadata (not only the weights) is refused."""
    data = package.to_bytes()
    a, b = _metadata_span(data)
    text = data[a:b]
    # The reported case: temperature 2.0 -> 2.5 in the package JSON still parses as a package.
    i = text.index(b'temperature\\": 2.0') + len(b'temperature\\": 2.')
    bad = bytearray(data)
    bad[a + i] = ord("5")
    with pytest.raises(ModelPackageError, match="checksum mismatch"):
        ModelPackage.from_bytes(bytes(bad))
    accepted = []
    for k in range(a, b):
        for new in {data[k] ^ 0x01, ord("1") if data[k] != ord("1") else ord("2")}:
            bad = bytearray(data)
            bad[k] = new
            try:
                ModelPackage.from_bytes(bytes(bad))
            except ModelPackageError:
                continue
            accepted.append((k - a, chr(data[k]), chr(new)))
    assert accepted == []


def test_case8_shipped_default_has_a_full_checksum():
    """Case 8: the shipped default package is in the format whose checksum covers the metadata."""
    from lsst.meas.rbnet.package import FORMAT_VERSION, read_package_metadata
    from lsst.meas.rbnet.scoring import default_model_path

    meta = read_package_metadata(default_model_path())
    assert FORMAT_VERSION >= 2 and meta["format_version"] == FORMAT_VERSION
    ModelPackage.load(default_model_path())


def _rewrite(data, **changes):
    """Package bytes with entries of the package JSON changed and a valid checksum."""
    import json
    import struct

    from lsst.meas.rbnet.package import package_checksum, weights_digest
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    (n,) = struct.unpack("<Q", data[:8])
    meta = dict(json.loads(data[8 : 8 + n])["__metadata__"])
    tensors = st_load(data)
    pj = json.loads(meta["package"])
    pj.update(changes)
    meta["package"] = json.dumps(pj)
    meta.pop("sha256")
    meta["sha256"] = package_checksum(weights_digest(tensors), meta)
    return st_save(tensors, metadata=meta)


@pytest.mark.parametrize(
    "hp, match",
    [
        ({"convs_per_block": 20000}, r"convs_per_block=20000 is outside \[0, 16\]"),
        ({"widths": [8] * 5000}, "widths='<list of 5000>' has more than 16 entries"),
        ({"hidden": 10**9}, "hidden=1000000000 is beyond the bound"),
        ({"dropout": float("inf")}, "dropout=inf is not finite"),
    ],
)
def test_case9_huge_networks_refused_before_building(package, monkeypatch, hp, match):
    """Case 9: hyperparameters asking for a huge network are refused before any module is built."""
    from lsst.meas.rbnet.nn import registry

    comps = {"classifier": {"architecture": "triplet_cnn", "hyperparameters": {**HP, **hp}}}
    data = _rewrite(package.to_bytes(), components=comps)
    calls = []
    real = registry._REGISTRY["triplet_cnn"]
    monkeypatch.setitem(registry._REGISTRY, "triplet_cnn", lambda **kw: calls.append(kw) or real(**kw))
    with pytest.raises(ModelPackageError, match=match):
        ModelPackage.from_bytes(data)
    assert calls == []
    with pytest.raises(ValueError, match=match):
        build("triplet_cnn", **{**HP, **hp})
    assert calls == []


# ---------------------------------------------------------------------------
# Command line helpers
# ---------------------------------------------------------------------------


def run_cli(*args, input=None):
    from click.testing import CliRunner
    from lsst.meas.rbnet.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def _write_stamps(path, stamps, labels, **extra):
    np.savez(path, stamps=stamps, label=labels, **extra)
    return path


def _good_stamps(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, 3, 31, 31)).astype(np.float32), (np.arange(n) % 2).astype(np.int64)


def test_case10_all_nan_stamps_refused(tmp_path):
    """Case 10: training on all-NaN stamps is refused, naming the file (no model written)."""
    st, lab = _good_stamps()
    st[:] = np.nan
    data = _write_stamps(tmp_path / "nan.npz", st, lab)
    out = tmp_path / "m.safetensors"
    res = run_cli("train", "--data", data, "--out", out, "--epochs", 1)
    assert res.exit_code != 0 and "nan.npz" in res.output and "finite pixel" in res.output
    assert not out.exists()


def test_case10_complex_stamps_refused(tmp_path):
    """Case 10: complex stamps are refused (their imaginary part would be dropped)."""
    st, lab = _good_stamps()
    data = _write_stamps(tmp_path / "cplx.npz", st.astype(np.complex64) * (1 + 1j), lab)
    res = run_cli("train", "--data", data, "--out", tmp_path / "m.safetensors")
    assert res.exit_code != 0 and "cplx.npz" in res.output and "imaginary" in res.output


def test_case10_bad_labels_refused(tmp_path):
    st, lab = _good_stamps()
    lab = lab.astype(float)
    lab[3] = np.nan
    res = run_cli("train", "--data", _write_stamps(tmp_path / "l.npz", st, lab), "--out", tmp_path / "m.st")
    assert res.exit_code != 0 and "l.npz" in res.output and "labels must be 0" in res.output


@pytest.mark.parametrize(
    "option", ["--class-weight", "--lr", "--noise-std", "--val-fraction", "--max-minutes", "--mask-fraction"]
)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_case10_non_finite_options_refused(tmp_path, option, value):
    """Case 10: --class-weight nan (and other non-finite numbers) are refused before any work."""
    st, lab = _good_stamps()
    data = _write_stamps(tmp_path / "ok.npz", st, lab)
    res = run_cli("train", "--data", data, "--out", tmp_path / "m.safetensors", option, value)
    assert res.exit_code != 0
    assert option in res.output and ("finite" in res.output or "not in the range" in res.output)
    assert "read 60 stamps" not in res.output


def test_case10_trainconfig_refuses_nan():
    from lsst.meas.rbnet.training.loop import TrainConfig

    for field in ("class_loss_weight", "learning_rate", "noise_std", "weight_decay", "max_seconds"):
        with pytest.raises(ValueError, match=f"{field} must be a finite number"):
            TrainConfig(**{field: float("nan")})


# ---------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------


def test_case15_unreadable_npz_named(tmp_path):
    """Case 15: a text file named .npz and a truncated .npz give a message naming the file."""
    text = tmp_path / "text.npz"
    text.write_text("this is not an npz file\n" * 10)
    res = run_cli("train", "--data", text, "--out", tmp_path / "m.safetensors")
    assert res.exit_code != 0 and "text.npz" in res.output and "not an .npz file" in res.output
    assert "allow_pickle" not in res.output
    st, lab = _good_stamps()
    good = _write_stamps(tmp_path / "good.npz", st, lab)
    np.savez_compressed(tmp_path / "c.npz", stamps=st, label=lab)
    for src in (good, tmp_path / "c.npz"):
        data = src.read_bytes()
        for cut in (len(data) // 2, len(data) - 30):
            trunc = tmp_path / f"trunc_{cut}.npz"
            trunc.write_bytes(data[:cut])
            res = run_cli("train", "--data", trunc, "--out", tmp_path / "m.safetensors")
            assert res.exit_code != 0 and trunc.name in res.output, res.output
            assert "Traceback" not in res.output


# ---------------------------------------------------------------------------
# Butler commands: names, kinds, failures, races (cases 3, 4, 11, 19)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def butler_repo(tmp_path_factory):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from rbnet_task_helpers import tiny_visit

    from lsst.meas.rbnet.butler.repo import VisitWriter, create_repo

    root = tmp_path_factory.mktemp("hard_repo") / "repo"
    butler = create_repo(str(root))
    VisitWriter(butler, run="sim/raw").write(tiny_visit(visit=1, detector=0, shape=(48, 48), n_sources=3))
    return root


def _collections(root):
    from lsst.daf.butler import Butler

    b = Butler.from_config(str(root))
    return sorted(b.registry.queryCollections())


def _labels_csv(tmp_path, name="labels.csv"):
    path = tmp_path / name
    path.write_text("id,label\n1,1\n2,0\n")
    return path


@pytest.mark.parametrize("run", ["../../../x", "/abs", "a//b", "a,b", "a b", "..", "x/../y", ".hidden", ""])
def test_case3_run_names_validated(butler_repo, tmp_path, run):
    """Case 3: RUN names that escape the repository or break later are refused, saying what is allowed."""
    before = _collections(butler_repo)
    res = run_cli("ingest-labels", butler_repo, _labels_csv(tmp_path), "--run", run)
    assert res.exit_code != 0 and "letters, digits" in res.output
    assert _collections(butler_repo) == before
    assert not (butler_repo.parent.parent / "x").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("name", ["a,b", "..", "a/b", " a", "", "-x"])
def test_case3_model_names_validated(butler_repo, name):
    before = _collections(butler_repo)
    res = run_cli("register-model", butler_repo, "--name", name)
    assert res.exit_code != 0 and "letters, digits" in res.output
    assert _collections(butler_repo) == before


def test_case3_good_names_accepted(butler_repo, tmp_path):
    res = run_cli("ingest-labels", butler_repo, _labels_csv(tmp_path), "--run", "labels/2024-06_v1.2")
    assert res.exit_code == 0, res.output


def test_case4_failed_ingest_leaves_no_run(butler_repo, tmp_path):
    """Case 4: a failed ingest-labels leaves no empty RUN behind; the retry with the same name works."""
    before = _collections(butler_repo)
    res = run_cli("ingest-labels", butler_repo, _labels_csv(tmp_path), "--run", "labels/retry", "--instrument", "NoSuch")
    assert res.exit_code != 0 and "NoSuch" in res.output
    assert _collections(butler_repo) == before
    res = run_cli("ingest-labels", butler_repo, _labels_csv(tmp_path), "--run", "labels/retry")
    assert res.exit_code == 0, res.output


def test_case4_failed_register_leaves_no_run(butler_repo, monkeypatch):
    """Case 4: register-model failing after the run was made removes it again."""
    from lsst.daf.butler import Butler
    from lsst.meas.rbnet.butler import repo as repo_module

    before = _collections(butler_repo)

    def failing_put(self, *args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Butler, "put", failing_put, raising=False)
    for cls in type(Butler.from_config(str(butler_repo))).__mro__:
        if "put" in vars(cls):
            monkeypatch.setattr(cls, "put", failing_put)
    with pytest.raises(OSError, match="disk full"):
        repo_module.register_model(str(butler_repo), make_package(version="f1"), name="failing")
    assert _collections(butler_repo) == before
    monkeypatch.undo()
    repo_module.register_model(str(butler_repo), make_package(version="f1"), name="failing")
    assert "pretrained_models/failing" in _collections(butler_repo)


def _sequence_package(tmp_path):
    from lsst.meas.rbnet.nn import registry

    torch.manual_seed(0)
    hp_vae = dict(in_channels=1, frame_size=20, latent_dim=4, hidden_channels=[4, 8])
    hp_cls = dict(input_dim=4, hidden_size=8, head_hidden=8, dropout=0.0)
    pkg = ModelPackage.from_modules(
        "sequence",
        {
            "encoder": ("vae", hp_vae, registry.build("vae", **hp_vae).eval()),
            "classifier": ("seq_gru", hp_cls, registry.build("seq_gru", **hp_cls).eval()),
        },
        contract=InputContract(stamp_size=21, channels=("science",)),
        version="seq1",
        extra={"frame_size": 20, "frame_channels": ["science"], "latent_columns": [0, 4]},
    )
    path = tmp_path / "seq.safetensors"
    pkg.save(path)
    return path


def test_case11_sequence_package_kept_apart(butler_repo, tmp_path):
    """Case 11: a sequence package is refused as pretrainedModelPackage and goes to its own type by default."""
    from lsst.daf.butler import Butler

    path = _sequence_package(tmp_path)
    before = _collections(butler_repo)
    res = run_cli("register-model", butler_repo, path, "--name", "seq-wrong", "--dataset-type", "pretrainedModelPackage")
    assert res.exit_code != 0 and "sequence model" in res.output and "pretrainedSequenceModelPackage" in res.output
    assert _collections(butler_repo) == before
    res = run_cli("register-model", butler_repo, path, "--name", "seq-ok")
    assert res.exit_code == 0 and "pretrainedSequenceModelPackage" in res.output, res.output
    b = Butler.from_config(str(butler_repo))
    assert not list(b.registry.queryDatasets("pretrainedModelPackage", collections="pretrained_models/seq-ok"))
    # And a triplet package is refused as a sequence model.
    triplet = tmp_path / "t.safetensors"
    make_package(version="t9").save(triplet)
    res = run_cli("register-model", butler_repo, triplet, "--name", "t-wrong", "--dataset-type", "pretrainedSequenceModelPackage")
    assert res.exit_code != 0 and "triplet model" in res.output


def test_case19_concurrent_registration_is_explained(butler_repo, tmp_path, monkeypatch):
    """Case 19: a second process registering the same name at once gets a message, not a traceback."""
    from lsst.meas.rbnet.butler import repo as repo_module

    pkg = tmp_path / "p.safetensors"
    make_package(version="c1").save(pkg)
    assert run_cli("register-model", butler_repo, pkg, "--name", "race").exit_code == 0
    before = _collections(butler_repo)
    # The other process made the run between our check and our registration.
    monkeypatch.setattr(repo_module, "_collection_exists", lambda butler, name: False)
    res = run_cli("register-model", butler_repo, pkg, "--name", "race")
    assert res.exit_code != 0 and "already exists" in res.output and "another process" in res.output
    assert "Traceback" not in res.output and "ConflictingDefinitionError" not in res.output
    assert _collections(butler_repo) == before
    from lsst.daf.butler import Butler

    b = Butler.from_config(str(butler_repo))
    assert len(list(b.registry.queryDatasets("pretrainedModelPackage", collections="pretrained_models/race"))) == 1


# ---------------------------------------------------------------------------
# Data loss: demo --overwrite (case 1), atomic writes (case 2), file modes (case 18),
# dangling symlinks (case 17)
# ---------------------------------------------------------------------------


def test_case1_overwrite_refuses_a_folder_the_demo_did_not_make(tmp_path):
    """Case 1: `rbnet demo DIR --overwrite` never deletes a DIR/repo of user files."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "thesis.tex").write_text("years of work")
    (repo / "butler.yaml").write_text("a real repository of someone else's\n")
    res = run_cli("demo", tmp_path, "--overwrite")
    assert res.exit_code != 0 and "was not made by 'rbnet demo'" in res.output and "Nothing was deleted" in res.output
    assert (repo / "thesis.tex").read_text() == "years of work"


def test_case1_overwrite_deletes_a_demo_repo(tmp_path):
    from lsst.meas.rbnet.cli.demo import DEMO_MARKER, _prepare_output

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "butler.yaml").write_text("x\n")
    (repo / DEMO_MARKER).write_text("demo\n")
    with pytest.raises(Exception, match="--overwrite"):
        _prepare_output(tmp_path, False, console=False)
    _prepare_output(tmp_path, True, console=False)
    assert not repo.exists()


def test_case1_demo_marks_its_repo(tmp_path):
    from lsst.meas.rbnet.cli.demo import _create_demo_repo, _is_demo_repo

    repo = tmp_path / "repo"
    _create_demo_repo(repo)
    assert _is_demo_repo(repo)


@pytest.mark.parametrize("target_exists", [False, True])
def test_case17_symlinked_repo_is_refused(tmp_path, target_exists):
    """Case 17: DIR/repo a (dangling) symbolic link: a clear message, not OSError [Errno None]."""
    target = tmp_path / "elsewhere"
    if target_exists:
        target.mkdir()
        (target / "keep.txt").write_text("keep")
    (tmp_path / "repo").symlink_to(target)
    res = run_cli("demo", tmp_path, "--overwrite")
    assert res.exit_code != 0 and "is a symbolic link" in res.output
    assert ("does not exist" in res.output) != target_exists
    assert "Errno" not in res.output
    if target_exists:
        assert (target / "keep.txt").read_text() == "keep"


def test_case2_interrupted_write_keeps_the_old_file(tmp_path):
    """Case 2: a writer interrupted half way leaves the old file whole and no temporary behind."""
    from lsst.meas.rbnet.fileio import atomic_path

    out = tmp_path / "v.npz"
    np.savez(out, a=np.arange(10))
    old = out.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out) as tmp:
            assert tmp.parent == out.parent and tmp.suffix == ".npz"
            np.savez(tmp, a=np.arange(10**5))
            with open(tmp, "r+b") as f:
                f.truncate(100)  # half written
            raise KeyboardInterrupt
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npz"]
    with atomic_path(out) as tmp:
        np.savez(tmp, a=np.arange(3))
    assert np.load(out)["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npz"]


def test_case2_package_and_plots_are_written_atomically(tmp_path, package, monkeypatch):
    """Case 2: package files and plots go through the temporary-file-and-rename helper."""
    from lsst.meas.rbnet.training import plots

    path = tmp_path / "m.safetensors"
    package.save(path)
    old = path.read_bytes()

    def broken_write(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr("pathlib.Path.write_bytes", broken_write)
    with pytest.raises(KeyboardInterrupt):
        make_package(seed=3).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old and ModelPackage.load(path).digest == package.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]

    png = tmp_path / "roc.png"
    plots.plot_roc({"m": (np.array([0.1, 0.9, 0.4, 0.7]), np.array([0, 1, 0, 1]))}, png)
    good = png.read_bytes()

    from matplotlib.figure import Figure

    def broken_savefig(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(KeyboardInterrupt):
        plots.plot_roc({"m": (np.array([0.2, 0.8, 0.4, 0.7]), np.array([0, 1, 0, 1]))}, png)
    assert png.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "roc.png"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_case18_written_files_honour_the_umask(tmp_path, package, umask, mode):
    """Case 18: files written through the package (models, metrics, plots) get 0o666 less the umask."""
    import os
    import stat

    from lsst.meas.rbnet.fileio import write_atomic
    from lsst.meas.rbnet.training import plots

    old = os.umask(umask)
    try:
        package.save(tmp_path / "m.safetensors")
        write_atomic(tmp_path / "m.metrics.json", "{}\n")
        plots.plot_roc({"m": (np.array([0.1, 0.9]), np.array([0, 1]))}, tmp_path / "roc.png")
    finally:
        os.umask(old)
    for name in ("m.safetensors", "m.metrics.json", "roc.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_case16_train_sequence_checks_out_first(tmp_path, monkeypatch):
    """Case 16: train-sequence --out in a missing folder fails before any simulation or training."""
    import lsst.meas.rbnet.sim as sim

    monkeypatch.setattr(sim, "simulate_sequences", lambda *a, **k: pytest.fail("simulated before checking --out"))
    res = run_cli("train-sequence", "--out", tmp_path / "nodir" / "s.safetensors", "--n-objects", 20)
    assert res.exit_code != 0 and "--out" in res.output and "does not exist" in res.output
    res = run_cli("train-sequence", "--out", tmp_path, "--n-objects", 20)
    assert res.exit_code != 0 and "is a directory" in res.output


@pytest.mark.parametrize(
    "args, option",
    [
        (["--n-objects", "0"], "--n-objects"),
        (["--n-objects", "-5"], "--n-objects"),
        (["--frame-size", "0"], "--frame-size"),
        (["--vae-epochs", "0"], "--vae-epochs"),
        (["--test-fraction", "nan"], "--test-fraction"),
        (["--test-fraction", "1"], "--test-fraction"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_case16_train_sequence_options_checked(tmp_path, args, option):
    res = run_cli("train-sequence", "--out", tmp_path / "s.safetensors", *args)
    assert res.exit_code == 2 and option in res.output and "Traceback" not in res.output


def test_case16_sequence_cv_checks_outputs_first(tmp_path):
    lat = tmp_path / "lat"
    lat.mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("object_id,label\n")
    res = run_cli("sequence-cv", "--latents", lat, "--labels", labels, "--out", tmp_path / "no" / "r.json")
    assert res.exit_code != 0 and "--out" in res.output and "does not exist" in res.output


# ---------------------------------------------------------------------------
# rbnet simulate (cases 12, 13, 14, and its progress bar of case 23)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n, fraction, real", [(20, 0.1, 2), (5, 0.5, 3), (7, 0.0, 0), (7, 1.0, 7), (30, 1 / 3, 10)])
def test_case12_real_fraction_met(tmp_path, n, fraction, real):
    """Case 12: --real-fraction is met (rounded half up), and a rounding is said."""
    out = tmp_path / "s.npz"
    res = run_cli("simulate", "stamps", out, "--n", n, "--real-fraction", fraction, "--size", 21)
    assert res.exit_code == 0, res.output
    labels = np.load(out)["label"]
    assert len(labels) == n and int(labels.sum()) == real
    assert f"{real} real, {n - real} bogus" in res.output
    assert ("rounded to" in res.output) == (not np.isclose(n * fraction, real))


def test_case12_sequences_real_fraction_met(tmp_path):
    out = tmp_path / "q.npz"
    res = run_cli("simulate", "sequences", out, "--n-objects", 10, "--real-fraction", 0.1, "--n-visits", "2,3",
                  "--frame-size", 15)
    assert res.exit_code == 0, res.output
    assert int(np.load(out)["label"].sum()) == 1


@pytest.mark.parametrize("cmd", [["simulate", "stamps", "x.npz"], ["gallery", "g.png"], ["simulate", "visit-stamps", "v.npz"]])
def test_case13_tiny_sizes_refused(tmp_path, cmd):
    """Case 13: --size 3 is refused with the accepted range, not a numpy traceback."""
    cmd = cmd[:-1] + [tmp_path / cmd[-1]]
    res = run_cli(*cmd, "--size", 3)
    assert res.exit_code == 2 and "--size" in res.output and "x>=11" in res.output


@pytest.mark.parametrize("option, value", [("--real-fraction", "nan"), ("--edge-fraction", "nan"),
                                           ("--snr-range", "5,nan"), ("--fwhm-range", "3,1")])
def test_case13_more_simulate_options_checked(tmp_path, option, value):
    res = run_cli("simulate", "stamps", tmp_path / "x.npz", "--n", 5, option, value)
    assert res.exit_code == 2 and option in res.output and not (tmp_path / "x.npz").exists()


def test_case14_written_file_is_named(tmp_path):
    """Case 14: OUT without .npz: the message names the file really written (OUT.npz)."""
    res = run_cli("simulate", "stamps", tmp_path / "noext", "--n", 4, "--size", 21)
    assert res.exit_code == 0 and str(tmp_path / "noext.npz") in res.output
    assert (tmp_path / "noext.npz").exists() and not (tmp_path / "noext").exists()
    res = run_cli("simulate", "stamps", tmp_path / "nodir" / "x.npz", "--n", 4, "--size", 21)
    assert res.exit_code == 2 and "does not exist" in res.output


def test_case2_simulate_interrupted_keeps_old_file(tmp_path, monkeypatch):
    """Case 2: `rbnet simulate stamps v.npz` interrupted while writing keeps the good v.npz."""
    import lsst.meas.rbnet.sim.io as sim_io

    out = tmp_path / "v.npz"
    assert run_cli("simulate", "stamps", out, "--n", 6, "--size", 21).exit_code == 0
    good = out.read_bytes()
    real = np.savez_compressed

    def interrupted(path, **arrays):
        real(path, **arrays)
        with open(path, "r+b") as f:
            f.truncate(50)
        raise KeyboardInterrupt

    monkeypatch.setattr(sim_io.np, "savez_compressed", interrupted)
    # click turns the interruption into "Aborted!" and exit code 1.
    res = run_cli("simulate", "stamps", out, "--n", 8, "--size", 21, "--seed", 5)
    assert res.exit_code == 1 and "Aborted" in res.output
    monkeypatch.undo()
    assert out.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["v.npz"]


def test_case23_simulate_shows_a_progress_bar(tmp_path, monkeypatch):
    """Case 23: rbnet simulate drives a rich progress bar, as rbnet train does."""
    from rich.progress import Progress

    updates = []
    real = Progress.update
    monkeypatch.setattr(Progress, "update", lambda self, task, **kw: updates.append(kw) or real(self, task, **kw))
    assert run_cli("simulate", "stamps", tmp_path / "s.npz", "--n", 300, "--size", 21).exit_code == 0
    assert updates and updates[-1]["completed"] == 300


# ---------------------------------------------------------------------------
# At home in the Rubin stack (cases 20, 21)
# ---------------------------------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

#: Stack Python packages -> EUPS product names.
_PRODUCTS = {
    "lsst.daf.butler": "daf_butler",
    "lsst.pipe.base": "pipe_base",
    "lsst.pex.config": "pex_config",
    "lsst.images": "images",
    "lsst.utils": "utils",
    "lsst.resources": "resources",
    "lsst.sphgeom": "sphgeom",
    "lsst.afw": "afw",
    "lsst.alert.packet": "alert_packet",
    "lsst.ctrl.bps": "ctrl_bps",
    "lsst.ctrl.mpexec": "ctrl_mpexec",
}


def _table():
    import re

    text = (ROOT / "ups" / "meas_rbnet.table").read_text()
    required = set(re.findall(r"^setupRequired\((\w+)\)", text, re.M))
    optional = set(re.findall(r"^setupOptional\((\w+)\)", text, re.M))
    env = dict(re.findall(r"^envPrepend\((\w+), *([^)]+)\)", text, re.M))
    return required, optional, env


def test_case20_ups_table_lists_every_stack_import():
    """Case 20: every stack package the code imports is set up by the EUPS table."""
    import re

    imported = set()
    for path in (ROOT / "python" / "lsst" / "meas" / "rbnet").rglob("*.py"):
        for m in re.finditer(r"^\s*(?:from|import) (lsst\.[a-z_]+(?:\.[a-z_]+)?)", path.read_text(), re.M):
            name = m.group(1)
            if not name.startswith("lsst.meas.rbnet"):
                imported.add(name)
    required, optional, _ = _table()
    missing = []
    for name in sorted(imported):
        product = next((p for mod, p in _PRODUCTS.items() if name == mod or name.startswith(mod + ".")), None)
        assert product is not None, f"{name} is imported but not mapped to an EUPS product in this test"
        if product not in required | optional:
            missing.append(product)
    assert missing == []
    assert {"images", "daf_butler", "pipe_base", "utils", "pex_config", "resources", "sconsUtils"} <= required


def test_case20_ups_table_environment():
    """Case 20: the table puts our Butler config and command plugins on the daf_butler search paths."""
    from lsst.meas.rbnet.butler.config import config_search_path
    from lsst.meas.rbnet.cli.butler_commands import plugin_resources_path

    _, _, env = _table()
    config = env["DAF_BUTLER_CONFIG_PATH"].replace("${PRODUCT_DIR}", str(ROOT))
    assert __import__("os").path.samefile(config, config_search_path())
    assert (ROOT / env["DAF_BUTLER_CONFIG_PATH"].replace("${PRODUCT_DIR}/", "") / "storageClasses.yaml").is_file()
    plugins = env["DAF_BUTLER_PLUGINS"].replace("${PRODUCT_DIR}", str(ROOT))
    assert __import__("os").path.samefile(plugins, plugin_resources_path())
    assert env["PYTHONPATH"] == "${PRODUCT_DIR}/python"


def test_case20_scons_license_copyright_version():
    """Case 20: tests/SConscript, LICENSE (GPL v3 text), COPYRIGHT, and a version from git, not hand-written."""
    import importlib.metadata
    import tomllib

    sconscript = (ROOT / "tests" / "SConscript").read_text()
    assert "BasicSConscript.tests" in sconscript
    assert "_version.py" in (ROOT / "SConstruct").read_text()
    lic = (ROOT / "LICENSE").read_text()
    assert lic.lstrip().startswith("GNU GENERAL PUBLIC LICENSE") and "Version 3, 29 June 2007" in lic
    assert "END OF TERMS AND CONDITIONS" in lic and len(lic.splitlines()) > 600
    assert "GPL-3.0-or-later" in (ROOT / "COPYRIGHT").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "GPL-3.0-or-later"
    assert "version" not in project and "version" in project["dynamic"]
    from lsst.meas.rbnet import __version__
    from lsst.meas.rbnet import version as version_module

    source = __import__("inspect").getsource(version_module)
    assert "0.1.0" not in source
    try:
        from lsst.meas.rbnet._version import __version__ as built
    except ImportError:
        built = importlib.metadata.version("lsst-meas-rbnet")
    assert __version__ == built


def test_case20_readme_inside_the_stack():
    readme = (ROOT / "README.md").read_text()
    assert "setup -r ." in readme and "scons" in readme


def test_case21_butler_subcommands(tmp_path):
    """Case 21: the Butler commands are `butler` subcommands through DAF_BUTLER_PLUGINS."""
    import os
    import shutil
    import subprocess
    import sys

    from lsst.meas.rbnet.cli.butler_commands import plugin_resources_path

    env = dict(os.environ, DAF_BUTLER_PLUGINS=plugin_resources_path())
    butler = shutil.which("butler", path=os.path.dirname(sys.executable)) or "butler"
    out = subprocess.run([butler, "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("register-model", "ingest-labels", "configure-repo"):
        assert name in out.stdout
    out = subprocess.run(
        [butler, "configure-repo", "--print-config-path"], env=env, capture_output=True, text=True, timeout=120
    )
    from lsst.meas.rbnet.butler.config import config_search_path

    assert out.returncode == 0 and out.stdout.strip() == config_search_path()


def test_case21_rbnet_help_and_log_level():
    """Case 21: `rbnet -h` and `--log-level [COMPONENT=]LEVEL`, as butler and pipetask have."""
    import logging

    res = run_cli("-h")
    assert res.exit_code == 0 and "--log-level" in res.output
    assert run_cli("train", "-h").exit_code == 0
    before = logging.getLogger("lsst.meas.rbnet.scoring").level
    try:
        res = run_cli("--log-level", "lsst.meas.rbnet.scoring=DEBUG", "configure-repo", "--print-config-path")
        assert res.exit_code == 0
        assert logging.getLogger("lsst.meas.rbnet.scoring").level == logging.DEBUG
    finally:
        logging.getLogger("lsst.meas.rbnet.scoring").setLevel(before)
    res = run_cli("--log-level", "LOUD", "configure-repo", "--print-config-path")
    assert res.exit_code == 2 and "--log-level" in res.output


# ---------------------------------------------------------------------------
# Dependencies (case 25): scikit-learn as the reference for the hand-written metrics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_case25_metrics_agree_with_scikit_learn(seed):
    """Case 25: ROC-AUC (with ties), ROC points, log-loss, Brier, confusion matrix, accuracy, F1,
    purity and completeness agree with scikit-learn."""
    sk = pytest.importorskip("sklearn.metrics")
    from lsst.meas.rbnet.training import metrics as M

    rng = np.random.default_rng(seed)
    n = 500
    y = (rng.random(n) < 0.4).astype(np.int64)
    p = rng.beta(2, 2, n) * 0.6 + 0.4 * y
    p[::7] = np.round(p[::7], 1)  # ties
    # Away from 0 and 1, where the two clip log(0) differently (1e-7 here, machine epsilon there).
    p = np.clip(p, 1e-4, 1 - 1e-4)
    assert M.roc_auc(p, y) == pytest.approx(sk.roc_auc_score(y, p), abs=1e-12)
    fpr, tpr, _ = M.roc_curve(p, y)
    fpr_sk, tpr_sk, _ = sk.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk, atol=1e-12)
    np.testing.assert_allclose(tpr, tpr_sk, atol=1e-12)
    assert M.log_loss(p, y) == pytest.approx(sk.log_loss(y, p), rel=1e-9)
    assert M.brier_score(p, y) == pytest.approx(sk.brier_score_loss(y, p), rel=1e-12)
    for t in (0.3, 0.5, 0.8):
        pred = (p >= t).astype(int)
        names, counts = M.confusion_matrix(p, y, threshold=t)
        assert names == ["bogus", "real"]
        np.testing.assert_array_equal(counts, sk.confusion_matrix(y, pred, labels=[0, 1]))
        assert M.accuracy(p, y, t) == pytest.approx(sk.accuracy_score(y, pred))
        assert M.f1(p, y, t) == pytest.approx(sk.f1_score(y, pred, zero_division=0))
        purity, completeness = M.purity_completeness(p, y, t)
        assert purity == pytest.approx(sk.precision_score(y, pred, zero_division=0))
        assert completeness == pytest.approx(sk.recall_score(y, pred))


# ---------------------------------------------------------------------------
# The APDB schema (case 24)
# ---------------------------------------------------------------------------


def _apdb_diasource_columns():
    import importlib.resources

    import yaml

    pytest.importorskip("lsst.sdm.schemas")
    text = (importlib.resources.files("lsst.sdm.schemas") / "apdb.yaml").read_text()
    tables = {t["name"]: t for t in yaml.safe_load(text)["tables"]}
    return {c["name"]: c for c in tables["DiaSource"]["columns"]}


def _task_output(version="h1"):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from rbnet_task_helpers import tiny_package, tiny_visit

    from lsst.meas.rbnet.tasks.reliability import ReliabilityConfig, ReliabilityTask

    visit = tiny_visit(shape=(64, 64), n_sources=5)
    task = ReliabilityTask(config=ReliabilityConfig())
    return task.run(
        science=visit.science,
        template=visit.template,
        difference=visit.difference,
        sources=visit.sources,
        pretrainedModel=tiny_package(version=version),
    )


def test_case24_output_matches_apdb_diasource_schema():
    """Case 24: our reliability columns have the APDB DiaSource types, meaning and length limit."""
    from lsst.meas.rbnet.constants import VERSION_MAX_LENGTH

    cols = _apdb_diasource_columns()
    rel, ver = cols["reliability"], cols["reliabilityVersion"]
    # felis "float" is 32-bit; "string" has a maximum length.
    assert rel["datatype"] == "float" and ver["datatype"] == "string"
    assert "probability" in rel["description"].lower() and "astrophysical" in rel["description"].lower()
    assert ver["length"] == VERSION_MAX_LENGTH
    out = _task_output(version="h1234567"[:VERSION_MAX_LENGTH])
    table = out.sourcesWithReliability
    assert table["reliability"].dtype == np.float32
    scores = np.asarray(table["reliability"])
    ok = np.isfinite(scores)
    assert ok.any() and np.all((scores[ok] >= 0) & (scores[ok] <= 1))  # a probability (0-1)
    versions = np.asarray(table["reliabilityVersion"]).astype(str)
    assert max(len(v) for v in versions) <= ver["length"]
    assert out.reliability["score"].dtype == np.float32
    assert out.reliability["id"].dtype == np.int64  # diaSourceId is "long"
    assert cols["diaSourceId"]["datatype"] == "long"


def test_case24_longer_versions_refused():
    from lsst.meas.rbnet.package import validate_version_string

    length = _apdb_diasource_columns()["reliabilityVersion"]["length"]
    validate_version_string("x" * length)
    with pytest.raises(ValueError, match="1 to"):
        validate_version_string("x" * (length + 1))


# ---------------------------------------------------------------------------
# pipe_base error types (case 22)
# ---------------------------------------------------------------------------


def _reliability_inputs():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from rbnet_task_helpers import tiny_package, tiny_visit

    from lsst.meas.rbnet.tasks.reliability import ReliabilityConfig, ReliabilityTask

    visit = tiny_visit(shape=(64, 64), n_sources=5)
    return ReliabilityTask(config=ReliabilityConfig()), visit, tiny_package()


def _check_algorithm_error(err, cls, **expected):
    import lsst.pipe.base as pipeBase

    assert isinstance(err, pipeBase.AlgorithmError) and isinstance(err, cls) and isinstance(err, ValueError)
    md = err.metadata
    assert all(isinstance(v, (str, int, float, bool)) for v in md.values()), md
    for k, v in expected.items():
        assert md[k] == v, (k, md)
    # The metadata survive pipe_base's own container.
    pipeBase.TaskMetadata.from_dict({"failure": md})


def test_case22_duplicate_ids_are_an_algorithm_error():
    from lsst.meas.rbnet.tasks.errors import DuplicateSourceIdError

    task, visit, package = _reliability_inputs()
    sources = visit.sources.copy()
    sources["id"][1] = sources["id"][0]
    with pytest.raises(DuplicateSourceIdError) as info:
        task.run(science=visit.science, template=visit.template, difference=visit.difference,
                 sources=sources, pretrainedModel=package)
    _check_algorithm_error(info.value, DuplicateSourceIdError, column="id", n_duplicates=1,
                           dataset="dia_source_unstandardized")


def test_labels_without_a_label_column_are_a_missing_column_error():
    from astropy.table import Table

    from lsst.meas.rbnet.tasks.errors import MissingColumnError
    from lsst.meas.rbnet.tasks.labelled_cutouts import LabelledCutoutsConfig, LabelledCutoutsTask

    _, visit, _ = _reliability_inputs()
    task = LabelledCutoutsTask(config=LabelledCutoutsConfig())
    labels = Table({"id": visit.sources["id"]})
    with pytest.raises(MissingColumnError, match="label") as info:
        task.run(science=visit.science, template=visit.template, difference=visit.difference,
                 sources=visit.sources, labels=labels)
    _check_algorithm_error(info.value, MissingColumnError, missing="label",
                           dataset=task.config.connections.labels)


def test_case22_missing_and_bad_columns_are_algorithm_errors():
    from lsst.meas.rbnet.tasks.errors import BadColumnError, MissingColumnError

    task, visit, package = _reliability_inputs()
    sources = visit.sources.copy()
    sources.remove_column("x")
    with pytest.raises(MissingColumnError) as info:
        task.run(science=visit.science, template=visit.template, difference=visit.difference,
                 sources=sources, pretrainedModel=package)
    _check_algorithm_error(info.value, MissingColumnError, missing="x")
    sources = visit.sources.copy()
    sources["id"] = sources["id"].astype(float)
    with pytest.raises(BadColumnError) as info:
        task.run(science=visit.science, template=visit.template, difference=visit.difference,
                 sources=sources, pretrainedModel=package)
    _check_algorithm_error(info.value, BadColumnError, column="id", dtype="float64")


def test_case22_mismatched_grids_are_an_algorithm_error():
    from lsst.meas.rbnet.tasks.adapter import ImageArrays, check_same_bbox
    from lsst.meas.rbnet.tasks.errors import ImageGridMismatchError

    a = ImageArrays(np.zeros((10, 12), np.float32))
    b = ImageArrays(np.zeros((10, 12), np.float32), x0=3)
    with pytest.raises(ImageGridMismatchError, match="do not share one pixel grid") as info:
        check_same_bbox({"difference": a, "template": b})
    _check_algorithm_error(info.value, ImageGridMismatchError, difference="0, 0, 12, 10", template="3, 0, 12, 10")


# ---------------------------------------------------------------------------
# Progress and device logging (case 23)
# ---------------------------------------------------------------------------


def test_case23_scorer_logs_device_and_precision(package, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lsst.meas.rbnet.scoring"):
        Scorer(package, device="cpu", symmetry=True)
    text = caplog.text
    assert "Model h1 on cpu" in text and "float32" in text and "symmetry" in text


def test_case23_sequence_bf16_fallback_is_logged(tmp_path, monkeypatch, caplog):
    import logging

    import lsst.meas.rbnet.sequence.scoring as seqscoring
    from lsst.meas.rbnet import runtime

    pkg = ModelPackage.load(_sequence_package(tmp_path))
    runtime.clear_scorer_cache()  # the probe below must run, not an earlier probe's cached figure
    monkeypatch.setattr(runtime, "cast_dtype", lambda device, precision="auto": torch.bfloat16)
    monkeypatch.setattr(seqscoring.SequenceScorer, "_bf16_score_error", lambda self, enc32: 0.5)
    with caplog.at_level(logging.INFO, logger="lsst.meas.rbnet.sequence.scoring"):
        scorer = seqscoring.SequenceScorer(pkg, device="cpu", precision="auto")
    assert scorer._dtype == torch.float32
    assert "falling back to float32" in caplog.text and "encoder in float32" in caplog.text


# ---------------------------------------------------------------------------
# Plots (case 26)
# ---------------------------------------------------------------------------


@pytest.fixture
def captured_figures(monkeypatch):
    from lsst.meas.rbnet.training import plots

    figures = []
    real = plots._save

    def capture(fig, path):
        figures.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return figures


def test_case26_gallery_marks_missing_panels(tmp_path, captured_figures):
    """Case 26: NaN and fully masked gallery panels are drawn as missing (red, "no data"), not black."""
    import matplotlib.colors

    from lsst.meas.rbnet.training.plots import BAD_COLOR, plot_gallery

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3, 21, 21)).astype(np.float32)
    x[0, 2] = 0.0  # a fully masked channel after preparation (only the fill value)
    x[1, 1] = np.nan  # no data at all
    x[2, 0, :5] = np.nan  # partly missing
    plot_gallery(x, ["a", "b", "c"], tmp_path / "g.png", channel_names=["difference", "science", "template"])
    fig = captured_figures[-1]
    axes = np.array(fig.axes).reshape(3, 3)
    red = matplotlib.colors.to_rgba(BAD_COLOR)
    for i in range(3):
        for j in range(3):
            ax = axes[i, j]
            texts = [t.get_text() for t in ax.texts]
            assert (texts == ["no data"]) == ((i, j) in ((0, 2), (1, 1))), (i, j, texts)
            image = ax.images[0]
            assert image.get_cmap().get_bad() == pytest.approx(red)
    # The partly missing panel keeps its NaN rows masked (drawn red), the rest scaled.
    data = axes[2, 0].images[0].get_array()
    assert np.ma.getmaskarray(data)[:5].all() and not np.ma.getmaskarray(data)[5:].any()


def test_case26_every_plot_has_axis_labels(tmp_path, captured_figures):
    """Case 26: every axes of every evaluation plot is labelled (its own labels or the figure's)."""
    from lsst.meas.rbnet.training.plots import make_evaluation_plots, plot_gallery

    rng = np.random.default_rng(1)
    y = np.arange(200) % 2
    p = np.clip(0.3 * rng.random(200) + 0.6 * y, 0, 1)
    classes = np.where(y == 1, "real_new", "cosmic_ray")
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_auc": 0.9 + 0.02 * e} for e in (1, 2, 3)]
    make_evaluation_plots(tmp_path, {"CNN": p}, y, classes=classes, snr=rng.uniform(3, 50, 200), history=history)
    plot_gallery(rng.normal(size=(2, 3, 21, 21)), ["a", "b"], tmp_path / "g.png")
    assert len(captured_figures) >= 5
    for fig in captured_figures:
        supx = fig._supxlabel.get_text() if fig._supxlabel is not None else ""
        supy = fig._supylabel.get_text() if fig._supylabel is not None else ""
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            assert ax.get_xlabel() or supx, (fig.get_suptitle(), ax.get_title())
            assert ax.get_ylabel() or supy or ax.images, (fig.get_suptitle(), ax.get_title())


def _cutout_tables(n=40, real=None, seed=0, nan=False):
    import astropy.table

    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2 if real is None else np.full(n, real)).astype(np.int16)
    yy, xx = np.mgrid[-10:11, -10:11]
    stamps = rng.normal(0, 1, (n, 3, 21, 21)).astype(np.float32)
    stamps[:, 0] += (labels[:, None, None] * 20 * np.exp(-(xx**2 + yy**2) / 4.0)).astype(np.float32)
    if nan:
        stamps[:] = np.nan
    t = astropy.table.Table()
    t["stamp"] = stamps
    t["label"] = labels
    t["source_class"] = np.where(labels == 1, "real_new", "cosmic_ray")
    t["snr"] = np.full(n, 10.0, np.float32)
    return [t]


def _train_task():
    from lsst.meas.rbnet.tasks.train import TrainTripletConfig, TrainTripletTask

    config = TrainTripletConfig()
    config.stampSize = 21
    config.epochs = 2
    config.widths = [4, 8]
    config.hidden = 8
    config.validationFraction = 0.3
    config.version = "t1"
    config.numThreads = 1
    config.doPlots = False
    return TrainTripletTask(config=config)


@pytest.mark.parametrize("kind", ["one class", "all NaN"])
def test_case22_untrainable_cutouts_are_unprocessable(kind):
    """Case 22: labelled cutouts that cannot train a model raise UnprocessableDataError."""
    import lsst.pipe.base as pipeBase
    from lsst.meas.rbnet.tasks.errors import UnusableTrainingDataError

    tables = _cutout_tables(real=1) if kind == "one class" else _cutout_tables(nan=True)
    with pytest.raises(UnusableTrainingDataError, match="both classes are needed") as info:
        _train_task().run(tables)
    assert isinstance(info.value, pipeBase.UnprocessableDataError)


def test_case23_training_task_logs_every_epoch(caplog):
    """Case 23: TrainTripletTask logs the device and precision, then a line per epoch."""
    import logging

    with caplog.at_level(logging.INFO):
        _train_task().run(_cutout_tables())
    text = caplog.text
    assert "on cpu (float32)" in text
    assert "Epoch 1" in text and "Epoch 2" in text and "validation AUC" in text
    assert "Training done." in text


def test_case23_periodic_step_lines(caplog):
    import logging

    from lsst.meas.rbnet.tasks.train import TrainingLog

    log = logging.getLogger("lsst.meas.rbnet.test")
    progress = TrainingLog(log, interval=0.0)
    with caplog.at_level(logging.INFO, logger="lsst.meas.rbnet.test"):
        for step in (1, 2, 3):
            progress({"event": "step", "epoch": 1, "step": step, "steps": 3, "loss": 0.5})
    assert caplog.text.count("Epoch 1: step") == 3


def _pyproject():
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_case24_schema_package_is_a_test_dependency():
    """Case 24: lsst-sdm-schemas, whose APDB schema the output is checked against, is a test dependency."""
    test = " ".join(_pyproject()["optional-dependencies"]["test"])
    assert "lsst-sdm-schemas" in test


def test_case25_dependencies():
    """Case 25: torch has a lower bound only, pyyaml is not a runtime dependency of code that never
    imports it, scikit-learn is a test-only reference, and the README says how to get the CPU torch."""
    import re

    project = _pyproject()
    deps = project["dependencies"]
    torch_spec = next(d for d in deps if re.match(r"torch\b", d))
    assert ">=" in torch_spec and "<" not in torch_spec and "==" not in torch_spec
    runtime_imports_yaml = any(
        re.search(r"^\s*(import yaml|from yaml)", p.read_text(), re.M)
        for p in (ROOT / "python").rglob("*.py")
    )
    assert any(d.lower().startswith("pyyaml") for d in deps) == runtime_imports_yaml
    assert not any(d.startswith("scikit-learn") for d in deps)
    assert any(d.startswith("scikit-learn") for d in project["optional-dependencies"]["test"])
    readme = (ROOT / "README.md").read_text()
    assert "whl/cpu" in readme and "CPU build of torch" in readme


# ---------------------------------------------------------------------------
# More of the same kinds, found while fixing the above
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("widths", ["a,b", "16,,32", "0,8"])
def test_more_train_widths_named(tmp_path, widths):
    res = run_cli("train", "--simulate", 60, "--out", tmp_path / "m.safetensors", "--widths", widths)
    assert res.exit_code == 2 and "--widths" in res.output and "invalid literal" not in res.output


@pytest.mark.parametrize("option, value", [("--sources", "-5"), ("--jobs", "0")])
def test_more_demo_counts_checked(tmp_path, option, value):
    res = run_cli("demo", tmp_path / "d", option, value)
    assert res.exit_code == 2 and option in res.output and not (tmp_path / "d").exists()


def test_more_visit_real_fraction_met(tmp_path):
    """--real-fraction of `simulate visit` is met as for stamps (5 objects at 0.1: 1 real, said)."""
    import astropy.table

    res = run_cli("simulate", "visit", tmp_path / "v", "--shape", "96,96", "--n-sources", 5, "--real-fraction", 0.1)
    assert res.exit_code == 0, res.output
    assert "rounded to 1 real and 4 bogus" in res.output
    sources = astropy.table.Table.read(tmp_path / "v" / "sources.ecsv")
    labelled = sources[sources["label"] >= 0] if "label" in sources.colnames else sources
    assert int((labelled["label"] == 1).sum()) == 1
