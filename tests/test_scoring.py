# This file is part of meas_rbnet.
"""Tests of scoring (lsst.meas.rbnet.scoring)."""

import os

import numpy as np
import pytest
import torch
from lsst.meas.rbnet import scoring
from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.cutouts import extract_cutouts, prepare_stamps
from lsst.meas.rbnet.flags import SourceFlag
from lsst.meas.rbnet.nn import build
from lsst.meas.rbnet.package import ModelPackage, ModelPackageError
from lsst.meas.rbnet.scoring import (
    Scorer,
    autocast_dtype,
    load_scorer,
    score_triplets,
    select_device,
)

torch.set_num_threads(1)

HP = {"widths": [8, 16], "hidden": 8}


def make_package(temperature=2.0, temperature_symmetric=None, contract=None, seed=0, version="t1"):
    contract = contract or InputContract()
    hp = {**HP, "in_channels": contract.n_channels, "stamp_size": contract.stamp_size}
    torch.manual_seed(seed)
    module = build("triplet_cnn", **hp)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    # A larger output layer spreads the logits so differences are visible.
    with torch.no_grad():
        module.head.weight.mul_(20)
    return ModelPackage.from_modules(
        "triplet",
        {"classifier": ("triplet_cnn", hp, module)},
        contract=contract,
        version=version,
        temperature=temperature,
        temperature_symmetric=temperature_symmetric,
    )


@pytest.fixture(scope="module")
def package():
    return make_package()


@pytest.fixture(scope="module")
def scorer(package):
    return Scorer(package, device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def stamps():
    rng = np.random.default_rng(42)
    st = rng.normal(100.0, 5.0, size=(40, 3, 31, 31)).astype(np.float32)
    yy, xx = np.mgrid[:31, :31] - 15
    psf = np.exp(-(xx**2 + yy**2) / 4.0)
    st[::2, 0] += rng.uniform(10, 200, 20)[:, None, None] * psf
    return st


def test_probabilities(scorer, stamps):
    result = scorer.score_stamps(stamps)
    assert result.reliability.shape == (40,) and result.reliability.dtype == np.float32
    assert result.flags.dtype == np.int32 and result.logits.dtype == np.float32
    assert np.all((result.reliability >= 0) & (result.reliability <= 1))
    assert np.ptp(result.reliability) > 0.01  # not a constant
    assert np.all(result.flags == 0)
    assert scorer.version == "t1" and scorer.contract == InputContract()


def test_matches_network_and_temperature(package, scorer, stamps):
    x, _ = prepare_stamps(stamps, package.contract)
    with torch.no_grad():
        logits = package.build()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(scorer.logits_prepared(x), logits, rtol=1e-4, atol=1e-4)
    expected = 1 / (1 + np.exp(-logits / 2.0))
    np.testing.assert_allclose(scorer.score_prepared(x), expected, atol=1e-5)
    # Same weights, another temperature: same logits, probabilities recalibrated.
    hot = Scorer(make_package(temperature=5.0), device="cpu")
    np.testing.assert_allclose(hot.score_prepared(x), 1 / (1 + np.exp(-logits / 5.0)), atol=1e-5)
    assert not np.allclose(hot.score_prepared(x), scorer.score_prepared(x), atol=1e-3)


def test_row_alignment(scorer, stamps):
    ref = scorer.score_stamps(stamps).reliability
    perm = np.random.default_rng(0).permutation(len(stamps))
    np.testing.assert_allclose(scorer.score_stamps(stamps[perm]).reliability, ref[perm], rtol=1e-5, atol=1e-6)


def test_batch_size_invariance(package, stamps):
    ref = Scorer(package, device="cpu", batch_size=1024).score_stamps(stamps).reliability
    for bs in (1, 7, 40):
        out = Scorer(package, device="cpu", batch_size=bs).score_stamps(stamps).reliability
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_network_chunks(package, stamps):
    assert [scoring.cpu_network_chunk(s) for s in (21, 31, 63, 101)] == [256, 128, 32, 16]
    assert Scorer(package, device="cpu").network_chunk == 128
    ref = Scorer(package, device="cpu", network_chunk=0).score_stamps(stamps).reliability
    for chunk in (1, 7, 128):
        out = Scorer(package, device="cpu", network_chunk=chunk).score_stamps(stamps).reliability
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_symmetry_is_exact(stamps):
    package = make_package(temperature=2.0, temperature_symmetric=1.5)
    sym = Scorer(package, device="cpu", batch_size=16, symmetry=True)
    plain = Scorer(package, device="cpu", batch_size=16)
    ref = sym.score_stamps(stamps)
    transformed = [np.rot90(stamps, k, axes=(2, 3)) for k in (1, 2, 3)]
    transformed += [stamps[..., ::-1], stamps[..., ::-1, :], np.swapaxes(stamps, 2, 3)]
    for t in transformed:
        t = np.ascontiguousarray(t)
        np.testing.assert_array_equal(sym.score_stamps(t).reliability, ref.reliability)
    # Without symmetry averaging the scores do change (so the check above means something).
    rot = np.ascontiguousarray(transformed[0])
    assert not np.allclose(
        plain.score_stamps(rot).reliability, plain.score_stamps(stamps).reliability, atol=1e-4
    )
    # The averaged logit is calibrated with temperature_symmetric.
    np.testing.assert_allclose(ref.reliability, 1 / (1 + np.exp(-ref.logits / 1.5)), atol=1e-6)


def test_unscorable_sources(scorer, stamps):
    st = stamps.copy()
    st[3] = np.nan  # all channels
    st[5, 2] = np.nan  # one channel entirely bad
    st[7, :, :4, :] = np.nan  # partly bad: still scored
    flags = np.zeros(len(st), dtype=np.int32)
    flags[9] = SourceFlag.OFF_IMAGE
    result = scorer.score_stamps(st, flags=flags)
    bad = np.zeros(len(st), dtype=bool)
    bad[[3, 5, 9]] = True
    assert np.all(np.isnan(result.reliability[bad])) and np.all(np.isnan(result.logits[bad]))
    assert np.all(result.flags[bad] & SourceFlag.NOT_SCORED)
    assert result.flags[3] & SourceFlag.NO_VALID_PIXELS and result.flags[9] & SourceFlag.OFF_IMAGE
    assert np.all(np.isfinite(result.reliability[~bad]))
    assert not np.any(result.flags[~bad] & SourceFlag.NOT_SCORED)
    # The others get the scores they get without the bad neighbours.
    clean = scorer.score_stamps(stamps).reliability
    keep = ~bad
    keep[7] = False
    np.testing.assert_allclose(result.reliability[keep], clean[keep], rtol=1e-5, atol=1e-6)
    everything_bad = scorer.score_stamps(np.full((3, 3, 31, 31), np.nan, dtype=np.float32))
    assert np.all(np.isnan(everything_bad.reliability))


@pytest.mark.parametrize("size", [21, 30, 31, 63, 101])
def test_stamp_sizes_accepted(package, stamps, size):
    rng = np.random.default_rng(size)
    st = rng.normal(size=(5, 3, size, size)).astype(np.float32)
    prob, flags = score_triplets(st[:, 1], st[:, 2], st[:, 0], model=package, device="cpu", return_flags=True)
    assert prob.shape == (5,) and prob.dtype == np.float32 and np.all(np.isfinite(prob))
    assert np.all((flags & SourceFlag.RESIZED) != 0) == (size != 31)


def test_score_triplets_matches_scorer(package, scorer, stamps):
    prob = score_triplets(stamps[:, 1], stamps[:, 2], stamps[:, 0], model=package, device="cpu")
    np.testing.assert_allclose(prob, scorer.score_stamps(stamps).reliability, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((5, 20, 20),) * 3, "outside the accepted range"),
        (((5, 102, 102),) * 3, "outside the accepted range"),
        (((5, 31, 19),) * 3, "width 19 is outside the accepted range"),
        (((5, 31, 31), (5, 31, 31), (5, 31)), "3-d"),
        (((5, 31, 31), (4, 31, 31), (5, 31, 31)), "has 4 stamps but"),
        (((5, 31, 31), (5, 33, 33), (5, 31, 31)), "33x33"),
    ],
)
def test_score_triplets_validation(package, shapes, match):
    science, template, difference = (np.zeros(s, dtype=np.float32) for s in shapes)
    with pytest.raises(ValueError, match=match):
        score_triplets(science, template, difference, model=package, device="cpu")


def test_score_triplets_edge_cases(package):
    empty = np.zeros((0, 31, 31), dtype=np.float32)
    out = score_triplets(empty, empty, empty, model=package, device="cpu")
    assert out.shape == (0,) and out.dtype == np.float32
    out, flags = score_triplets(empty, empty, empty, model=package, device="cpu", return_flags=True)
    assert flags.shape == (0,) and flags.dtype == np.int32
    one = np.zeros((2, 31, 31), dtype=np.float32)
    with pytest.raises(ValueError, match=r"uses channels.*science"):
        score_triplets(None, one, one, model=package, device="cpu")
    with pytest.raises(ValueError, match="difference stamps are required"):
        score_triplets(one, one, None, model=package, device="cpu")
    with pytest.raises(ValueError, match="Unknown device"):
        score_triplets(one, one, one, model=package, device="gpu")


def test_difference_only_model(stamps):
    package = make_package(contract=InputContract(channels=("difference",)))
    prob = score_triplets(None, None, stamps[:, 0], model=package, device="cpu")
    assert prob.shape == (40,) and np.all(np.isfinite(prob))
    # Science and template are ignored when given.
    prob2 = score_triplets(stamps[:, 1], stamps[:, 2], stamps[:, 0], model=package, device="cpu")
    np.testing.assert_array_equal(prob, prob2)
    # Three-channel stamps and one-channel stamps give the same result.
    sc = Scorer(package, device="cpu")
    np.testing.assert_allclose(sc.score_stamps(stamps).reliability, prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sc.score_stamps(stamps[:, 0]).reliability, prob, rtol=1e-5, atol=1e-6)


def test_score_images(package, scorer):
    rng = np.random.default_rng(3)
    shape = (200, 300)
    images = [rng.normal(0, 1, shape).astype(np.float32) for _ in range(3)]
    images[1] += 100.0
    n = 50
    x = rng.uniform(-5, shape[1] + 5, n)
    y = rng.uniform(-5, shape[0] + 5, n)
    x[0] = np.nan
    result = scorer.score_images(images, x, y)
    assert len(result) == n
    batch = extract_cutouts(images, x, y, 31)
    ref = scorer.score_stamps(batch.stamps, flags=batch.flags)
    np.testing.assert_allclose(result.reliability, ref.reliability, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.flags, ref.flags)
    assert result.flags[0] & SourceFlag.BAD_CENTROID and np.isnan(result.reliability[0])
    off = (x < -0.5) | (x >= shape[1] - 0.5) | (y < -0.5) | (y >= shape[0] - 0.5)
    assert np.all(np.isnan(result.reliability[off])) and np.all(result.flags[off] & SourceFlag.NOT_SCORED)
    inside = ~off & np.isfinite(x)
    assert np.all(np.isfinite(result.reliability[inside]))
    # Masks are passed through: a bad-mask centre is flagged.
    masks = [np.zeros(shape, dtype=np.int32) for _ in range(3)]
    i = int(np.flatnonzero(inside)[0])
    masks[0][int(np.floor(y[i] + 0.5)), int(np.floor(x[i] + 0.5))] = 1  # BAD
    masked = scorer.score_images(images, x, y, masks=masks)
    assert masked.flags[i] & SourceFlag.MASKED


def test_prepared_shape_checked(scorer):
    with pytest.raises(ValueError, match=r"\(N, 3, 31, 31\)"):
        scorer.score_prepared(np.zeros((2, 3, 33, 33), dtype=np.float32))
    assert scorer.score_prepared(np.zeros((0, 3, 31, 31), dtype=np.float32)).shape == (0,)


def test_scorer_arguments(package):
    with pytest.raises(ValueError, match="batch_size"):
        Scorer(package, device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="num_threads"):
        Scorer(package, device="cpu", num_threads=0)
    seq = ModelPackage(kind="sequence", components=package.components, state=package.state, version="s")
    with pytest.raises(ModelPackageError, match="kind 'sequence'"):
        Scorer(seq, device="cpu")


# ----------------------------------------------------------------------
# Device and precision
# ----------------------------------------------------------------------


def fake_cuda(monkeypatch, available=True, count=2, bf16=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if available else 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_select_device_cpu_and_auto(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    fake_cuda(monkeypatch, available=False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda:0")


def test_select_device_cuda(monkeypatch):
    fake_cuda(monkeypatch, available=True, count=2)
    assert select_device("auto").type == "cuda"
    assert select_device("cuda") == torch.device("cuda")
    assert select_device("CUDA:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"out of range.*2 CUDA devices"):
        select_device("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "mps", "", 3, None])
def test_select_device_errors(bad):
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        select_device(bad)


def test_autocast_decision(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    fake_cuda(monkeypatch, bf16=True)
    assert autocast_dtype(cpu, "auto") is None
    assert autocast_dtype(cuda, "auto") is torch.bfloat16
    fake_cuda(monkeypatch, bf16=False)
    assert autocast_dtype(cuda, "auto") is torch.float16
    assert autocast_dtype(cuda, "off") is None and autocast_dtype(cuda, False) is None
    assert autocast_dtype(cpu, "on") is torch.bfloat16
    assert autocast_dtype(cpu, "float16") is torch.float16
    with pytest.raises(ValueError, match="amp must be"):
        autocast_dtype(cpu, "half")


def test_cpu_bfloat16_runs(package, stamps):
    # The autocast path itself (exercised on the CPU): close to float32, not identical.
    ref = Scorer(package, device="cpu").score_stamps(stamps[:8]).reliability
    amp = Scorer(package, device="cpu", amp="bfloat16")
    assert amp.amp_dtype is torch.bfloat16
    out = amp.score_stamps(stamps[:8]).reliability
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=0.1)


# ----------------------------------------------------------------------
# Loading and caching
# ----------------------------------------------------------------------


def test_cache(tmp_path, package):
    scoring.clear_scorer_cache()
    path = tmp_path / "m.safetensors"
    package.save(path)
    a = load_scorer(path, device="cpu")
    assert load_scorer(str(path), device="cpu") is a
    assert load_scorer(path, device="cpu", batch_size=7) is not a
    assert load_scorer(path, device="cpu", symmetry=True) is not a
    assert load_scorer(package, device="cpu") is load_scorer(package, device="cpu")
    # An identical package object rebuilt from bytes hits the same entry.
    assert load_scorer(ModelPackage.from_bytes(package.to_bytes()), device="cpu") is load_scorer(
        package, device="cpu"
    )
    # A changed file is reloaded.
    make_package(seed=5, version="t2").save(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    b = load_scorer(path, device="cpu")
    assert b is not a and b.version == "t2"
    scoring.clear_scorer_cache()
    assert load_scorer(path, device="cpu") is not b


def test_cache_builds_each_model_once(monkeypatch, tmp_path, package):
    """A cached model is neither rebuilt nor re-read from its file (the cost a quantum must not pay)."""
    scoring.clear_scorer_cache()
    built, loaded = [], []
    real_init, real_load = Scorer.__init__, ModelPackage.load

    def counting_init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    def counting_load(*args, **kwargs):
        loaded.append(1)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(Scorer, "__init__", counting_init)
    monkeypatch.setattr(ModelPackage, "load", staticmethod(counting_load))
    for _ in range(3):
        load_scorer(package, device="cpu")
    assert len(built) == 1
    path = tmp_path / "m.safetensors"
    package.save(path)
    for _ in range(3):
        load_scorer(path, device="cpu")
    assert len(loaded) == 1 and len(built) == 2
    scoring.clear_scorer_cache()


def test_default_model(monkeypatch, tmp_path, package):
    scoring.clear_scorer_cache()
    missing = tmp_path / "none.safetensors"
    monkeypatch.setattr(scoring, "default_model_path", lambda: missing)
    with pytest.raises(FileNotFoundError, match="default model"):
        load_scorer(device="cpu")
    package.save(missing)
    assert load_scorer(device="cpu").version == "t1"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_scorer(tmp_path / "nowhere.safetensors", device="cpu")
    # score_triplets without a model scores with the default package.
    st = np.random.default_rng(1).normal(size=(4, 3, 31, 31)).astype(np.float32)
    np.testing.assert_array_equal(
        score_triplets(st[:, 1], st[:, 2], st[:, 0], device="cpu"),
        score_triplets(st[:, 1], st[:, 2], st[:, 0], model=package, device="cpu"),
    )
    scoring.clear_scorer_cache()


def test_default_model_path_is_in_package():
    path = scoring.default_model_path()
    assert path.name == scoring.DEFAULT_MODEL_FILENAME == "rbnet-default.safetensors"
    assert path.parent.name == "data" and path.parent.parent.name == "rbnet"
    # It is installed and is a triplet package the scorer loads.
    assert path.is_file() and ModelPackage.load(path).kind == "triplet"


def test_empty_inputs(scorer):
    images = [np.zeros((64, 64), dtype=np.float32)] * 3
    for result in (
        scorer.score_images(images, np.zeros(0), np.zeros(0)),
        scorer.score_stamps(np.zeros((0, 3, 31, 31), dtype=np.float32)),
    ):
        assert len(result) == 0 and result.reliability.dtype == np.float32 and result.flags.dtype == np.int32
