# This file is part of meas_rbnet.
"""Tests of the model package (lsst.meas.rbnet.package)."""

import json
import pickle
import struct

import numpy as np
import pytest
import torch
from lsst.meas.rbnet.constants import ALL_CLASSES
from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.nn import architecture_defaults, build
from lsst.meas.rbnet.package import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ComponentSpec,
    ModelPackage,
    ModelPackageError,
    package_checksum,
    read_package_metadata,
    validate_version_string,
    weights_digest,
)
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

torch.set_num_threads(1)

HP = {"widths": [8, 16], "hidden": 8}


def make_module(seed=0, **hp):
    torch.manual_seed(seed)
    module = build("triplet_cnn", **{**HP, **hp})
    # Non-trivial batch-norm statistics, so buffers must round-trip too.
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return module


def make_package(seed=0, **kwargs):
    module = make_module(seed)
    args = dict(
        contract=InputContract(),
        version="t1",
        temperature=1.5,
        thresholds=[
            {"name": "default", "threshold": 0.5, "purity": 0.97, "completeness": 0.9},
            {"name": "purity99", "threshold": 0.8, "purity": 0.99, "completeness": float("nan")},
        ],
        metrics={"auc": np.float32(0.99), "n": np.int64(10)},
        provenance={"command": "test", "seed": seed},
        extra={"note": "x"},
    )
    args.update(kwargs)
    return ModelPackage.from_modules("triplet", {"classifier": ("triplet_cnn", HP, module)}, **args), module


def header(data):
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8 : 8 + n])


def rewrite(data, tensors=None, fix_digest=True, **meta_changes):
    """Re-serialise package bytes with changed metadata/tensors (the digest recomputed unless told not to)."""
    _, head = header(data)
    meta = dict(head["__metadata__"])
    tensors = st_load(data) if tensors is None else tensors
    package_json = json.loads(meta["package"])
    for key, value in meta_changes.items():
        if key in ("format", "format_version", "sha256"):
            meta[key] = value
        else:
            package_json[key] = value
    meta["package"] = json.dumps(package_json)
    if fix_digest and "sha256" not in meta_changes:
        digest = weights_digest(tensors)
        meta["sha256"] = digest if meta["format_version"] == "1" else package_checksum(digest, meta)
    return st_save(tensors, metadata=meta)


@pytest.fixture(scope="module")
def package():
    return make_package()[0]


def test_round_trip(tmp_path, package):
    x = torch.randn(6, 3, 31, 31)
    with torch.no_grad():
        ref = package.build()(x)
    path = tmp_path / "model.safetensors"
    package.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left
    for loaded in (ModelPackage.load(path), ModelPackage.from_bytes(package.to_bytes())):
        assert loaded.metadata() == package.metadata()
        assert loaded.digest == package.digest
        assert set(loaded.state) == set(package.state)
        for k in package.state:
            assert torch.equal(loaded.state[k], package.state[k])
        model = loaded.build()
        assert not model.training
        with torch.no_grad():
            assert torch.equal(model(x), ref)
    assert loaded.version == "t1" and loaded.temperature == 1.5 and loaded.temperature_symmetric == 1.5
    assert loaded.threshold("purity99") == 0.8
    assert loaded.thresholds[1]["completeness"] is None  # NaN becomes "undefined"
    assert loaded.metrics == {"auc": pytest.approx(0.99), "n": 10}
    assert loaded.provenance["command"] == "test" and "created" in loaded.provenance
    assert loaded.contract == InputContract()
    with pytest.raises(KeyError, match="purity95"):
        loaded.threshold("purity95")


def test_module_matches_package(package):
    # from_modules stores exactly the module's weights, including batch-norm buffers.
    module = make_module(0).eval()
    x = torch.randn(3, 3, 31, 31)
    with torch.no_grad():
        assert torch.equal(module(x), package.build()(x))


def test_digest_identifies_weights(package):
    other, _ = make_package(seed=1)
    assert other.digest != package.digest
    assert make_package(seed=0)[0].digest == package.digest
    assert len(package.digest) == 64


def test_digest_follows_changes_of_the_weights():
    # The digest is kept between calls; a weight changed in place or replaced must still show.
    pkg = make_package(seed=0)[0]
    first = pkg.digest
    assert pkg.digest == first == weights_digest(pkg.state)
    name = sorted(pkg.state)[0]
    original = pkg.state[name].clone()
    with torch.no_grad():
        pkg.state[name].add_(1.0)
    changed = pkg.digest
    assert changed != first and changed == weights_digest(pkg.state)
    pkg.state[name] = original.clone()
    assert pkg.digest == first
    with torch.inference_mode():
        pkg.state[name] = original + 1.0  # an inference tensor: no version counter
    assert pkg.digest == changed


def test_metadata_only(tmp_path, package):
    path = tmp_path / "m.safetensors"
    package.save(path)
    meta = read_package_metadata(path)
    assert meta["version"] == "t1" and meta["format_version"] == FORMAT_VERSION == 2
    assert meta["sha256"] == package_checksum(package.digest, header(package.to_bytes())[1]["__metadata__"])
    assert (
        read_package_metadata(package.to_bytes())["components"]["classifier"]["architecture"] == "triplet_cnn"
    )


def test_class_head_and_sequence_kind():
    hp = {**HP, "n_classes": len(ALL_CLASSES)}
    module = build("triplet_cnn", **hp)
    pkg = ModelPackage.from_modules(
        "triplet", {"classifier": ("triplet_cnn", hp, module)}, contract=InputContract(), version="c"
    )
    assert pkg.classes == ALL_CLASSES
    assert ModelPackage.from_bytes(pkg.to_bytes()).classes == ALL_CLASSES
    # A package of several components (e.g. a sequence model's encoder and classifier).
    seq = ModelPackage.from_modules(
        "sequence",
        {
            "encoder": ("triplet_cnn", HP, make_module(2)),
            "classifier": ("braai_like", {"stamp_size": 31}, build("braai_like", stamp_size=31)),
        },
        contract=InputContract(),
        version="seq1",
        extra={"latent_dim": 16},
    )
    loaded = ModelPackage.from_bytes(seq.to_bytes())
    assert loaded.kind == "sequence" and set(loaded.components) == {"encoder", "classifier"}
    assert isinstance(loaded.build("encoder"), torch.nn.Module)
    assert loaded.n_parameters("encoder") + loaded.n_parameters("classifier") == loaded.n_parameters()
    with pytest.raises(ModelPackageError, match="no component 'decoder'"):
        loaded.build("decoder")


def _data_offset(data):
    n, head = header(data)
    begin = head["classifier.head.weight"]["data_offsets"][0]
    return 8 + n + begin


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda d: d[: len(d) - 100], "truncated"),
        (lambda d: d[:5], "truncated or empty"),
        (lambda d: b"\x00" * 8 + d[8:], "not a safetensors file|no metadata|corrupt"),
        (lambda d: b"PK\x03\x04 this is a zip file, not a model package", "not a safetensors file"),
        (lambda d: d[:8] + b"#" + d[9:], "header is corrupt"),
        (lambda d: rewrite(d, sha256="0" * 64), "checksum mismatch"),
        (lambda d: rewrite(d, format_version=str(FORMAT_VERSION + 1)), "newer lsst.meas.rbnet.*upgrade"),
        (lambda d: rewrite(d, format_version="one"), "format_version"),
        (lambda d: rewrite(d, format="something-else"), "not an rbnet model package"),
        (
            lambda d: rewrite(
                d, components={"classifier": {"architecture": "resnet9000", "hyperparameters": {}}}
            ),
            "unknown architecture 'resnet9000'",
        ),
        (
            lambda d: rewrite(
                d,
                components={
                    "classifier": {"architecture": "triplet_cnn", "hyperparameters": {**HP, "colour": 1}}
                },
            ),
            "does not accept the hyperparameters",
        ),
        (
            lambda d: rewrite(
                d,
                components={
                    "classifier": {
                        "architecture": "triplet_cnn",
                        "hyperparameters": {"widths": [8, 32], "hidden": 8},
                    }
                },
            ),
            "wrong shapes.*features",
        ),
        (
            lambda d: rewrite(
                d,
                components={
                    "classifier": {"architecture": "triplet_cnn", "hyperparameters": {**HP, "hidden": 0}}
                },
            ),
            "weights do not match",
        ),
        # Absurd sizes are refused by their bounds, before anything is built (issue 11, case 9).
        (
            lambda d: rewrite(
                d,
                components={
                    "classifier": {
                        "architecture": "triplet_cnn",
                        "hyperparameters": {"widths": [10**5, 10**5]},
                    }
                },
            ),
            "beyond the bound 65536",
        ),
        # Large but within the bounds: refused by shape, without allocating the weights.
        (
            lambda d: rewrite(
                d,
                components={
                    "classifier": {
                        "architecture": "triplet_cnn",
                        "hyperparameters": {"widths": [60000, 60000]},
                    }
                },
            ),
            "wrong shapes",
        ),
        (lambda d: rewrite(d, version="toolongversion"), "1 to 7"),
        (lambda d: rewrite(d, version=""), "1 to 7"),
        (lambda d: rewrite(d, version="a b"), "without spaces"),
        (lambda d: rewrite(d, temperature=0.0), "temperature must be a finite number > 0"),
        (lambda d: rewrite(d, temperature=-1.0), "temperature"),
        (lambda d: rewrite(d, temperature_symmetric=0.0), "temperature_symmetric"),
        (lambda d: rewrite(d, contract={"stamp_size": 30}), "invalid input contract"),
        (
            lambda d: rewrite(d, contract={"stamp_size": 31, "channels": ["difference"]}),
            "in_channels=3 but the input contract says 1",
        ),
        (lambda d: rewrite(d, kind="movie"), "kind"),
        (lambda d: rewrite(d, thresholds=[{"name": "default", "threshold": 1.5}]), "threshold must be in"),
        (lambda d: rewrite(d, future_key=1), "unknown keys"),
    ],
)
def test_corruption_is_refused(tmp_path, package, corrupt, match):
    data = corrupt(package.to_bytes())
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ModelPackageError, match=match) as info:
        ModelPackage.load(path)
    assert str(path) in str(info.value)  # the message names the file
    with pytest.raises(ValueError, match=match):  # ModelPackageError is a ValueError
        ModelPackage.from_bytes(data, source="butler://x")


def test_flipped_weight_byte_fails_checksum(package):
    data = bytearray(package.to_bytes())
    data[_data_offset(data) + 1] ^= 0x10
    with pytest.raises(ModelPackageError, match="checksum mismatch.*corrupted"):
        ModelPackage.from_bytes(bytes(data))


def test_tensor_set_errors(package):
    data = package.to_bytes()
    tensors = st_load(data)
    missing = {k: v for k, v in tensors.items() if k != "classifier.head.bias"}
    with pytest.raises(ModelPackageError, match="missing tensors.*head.bias"):
        ModelPackage.from_bytes(rewrite(data, tensors=missing))
    extra = {**tensors, "classifier.spare.weight": torch.zeros(3)}
    with pytest.raises(ModelPackageError, match="unexpected tensors.*spare"):
        ModelPackage.from_bytes(rewrite(data, tensors=extra))
    orphan = {**tensors, "decoder.weight": torch.zeros(3)}
    with pytest.raises(ModelPackageError, match="unknown components.*decoder"):
        ModelPackage.from_bytes(rewrite(data, tensors=orphan))
    nan = dict(tensors)
    nan["classifier.head.weight"] = nan["classifier.head.weight"].clone()
    nan["classifier.head.weight"][0, 0] = float("nan")
    with pytest.raises(ModelPackageError, match="non-finite"):
        ModelPackage.from_bytes(rewrite(data, tensors=nan))


def test_no_pickle_and_no_torch_load(monkeypatch, tmp_path, package):
    path = tmp_path / "m.safetensors"
    package.save(path)

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling is forbidden")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = ModelPackage.load(path)
    with torch.no_grad():
        loaded.build()(torch.zeros(1, 3, 31, 31))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"version": "12345678"}, "1 to 7"),
        ({"version": 3}, "must be a string"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature_symmetric": -2.0}, "temperature_symmetric"),
        ({"thresholds": [{"name": "a", "threshold": 0.5}, {"name": "a", "threshold": 0.6}]}, "unique"),
        ({"thresholds": [{"name": "a", "level": 0.5}]}, "keys name, threshold"),
        ({"metrics": {"f": object()}}, "JSON-serialisable"),
        ({"contract": InputContract(stamp_size=33)}, "stamp_size=31 but the input contract says 33"),
        ({"contract": {"stamp_size": 31}}, "InputContract"),
    ],
)
def test_construction_errors(kwargs, match):
    with pytest.raises(ModelPackageError, match=match):
        make_package(**kwargs)


def test_from_modules_checks_module_against_architecture():
    module = build("triplet_cnn", widths=[8, 8], hidden=8)
    with pytest.raises(ModelPackageError, match="wrong shapes"):
        ModelPackage.from_modules(
            "triplet", {"classifier": ("triplet_cnn", HP, module)}, contract=InputContract(), version="v"
        )
    with pytest.raises(ModelPackageError, match="needs a 'classifier'"):
        ModelPackage.from_modules(
            "triplet", {"encoder": ("triplet_cnn", HP, make_module())}, contract=InputContract(), version="v"
        )


def test_version_string():
    assert validate_version_string("rb1.0") == "rb1.0"
    for bad in ("", "12345678", "é", "a\tb"):
        with pytest.raises(ValueError):
            validate_version_string(bad)


def test_component_spec_and_defaults():
    pkg = ModelPackage(
        components={"classifier": ComponentSpec("triplet_cnn", {"widths": (8, 16), "hidden": 8})},
        state={f"classifier.{k}": v for k, v in make_module().state_dict().items()},
    )
    pkg.validate()
    assert pkg.components["classifier"].hyperparameters["widths"] == [8, 16]  # JSON-normalised
    assert pkg.kind == "triplet" and pkg.temperature_symmetric == pkg.temperature == 1.0
    assert json.loads(header(pkg.to_bytes())[1]["__metadata__"]["package"])["kind"] == "triplet"
    assert header(pkg.to_bytes())[1]["__metadata__"]["format"] == FORMAT_NAME


def test_hyperparameters_are_complete(package):
    # Builder defaults are recorded, so a later change of defaults cannot change a stored model.
    hp = package.components["classifier"].hyperparameters
    assert set(hp) == set(architecture_defaults("triplet_cnn"))
    assert hp["widths"] == HP["widths"] and hp["pooling"] == architecture_defaults("triplet_cnn")["pooling"]
    meta = read_package_metadata(package.to_bytes())
    assert meta["components"]["classifier"]["hyperparameters"] == hp
