# This file is part of meas_rbnet.
"""Tests of the Butler layer: storage classes and formatter, repository helpers, the
``register-model``, ``ingest-labels`` and ``configure-repo`` commands."""

import os
import subprocess
import sys
import textwrap

import astropy.table
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rbnet_task_helpers import tiny_package, tiny_visit  # noqa: E402

from lsst.daf.butler import Butler  # noqa: E402

from lsst.meas.rbnet.butler.config import config_search_path, configure_repo, repo_is_configured  # noqa: E402
from lsst.meas.rbnet.butler.formatter import clear_read_cache  # noqa: E402
from lsst.meas.rbnet.butler.repo import (  # noqa: E402
    LABELS_DATASET_TYPE,
    MODEL_DATASET_TYPE,
    VisitWriter,
    create_repo,
    ingest_labels,
    register_model,
)
from lsst.meas.rbnet.package import ModelPackage, ModelPackageError  # noqa: E402


@pytest.fixture(scope="module")
def package():
    return tiny_package(version="b1")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository with one simulated (visit, detector) written by VisitWriter."""
    root = str(tmp_path_factory.mktemp("butler_repo"))
    butler = create_repo(root)
    writer = VisitWriter(butler, run="sim/raw")
    visit = tiny_visit(visit=4, detector=2, shape=(64, 80), n_sources=6)
    writer.write(visit)
    return root, butler, writer, visit


def test_created_repo_knows_our_storage_classes(repo):
    root, butler, _, _ = repo
    assert repo_is_configured(root)
    assert configure_repo(root) is False  # nothing to do
    assert butler.get_dataset_type(MODEL_DATASET_TYPE).storageClass_name == "RBNetModelPackage"


def test_visit_writer_writes_ap_datasets(repo):
    import lsst.images

    _, butler, writer, visit = repo
    data_id = {"instrument": "RBSim", "visit": 4, "detector": 2}
    science = butler.get("preliminary_visit_image", data_id, collections="sim/raw")
    difference = butler.get("difference_image", data_id, collections="sim/raw")
    template = butler.get("template_detector", data_id, collections="sim/raw")
    sources = butler.get("dia_source_unstandardized", data_id, collections="sim/raw")
    assert isinstance(science, lsst.images.VisitImage)
    assert isinstance(difference, lsst.images.DifferenceImage)
    assert isinstance(template, lsst.images.MaskedImage)
    np.testing.assert_array_equal(science.image.array, visit.science.image)
    np.testing.assert_array_equal(difference.mask.array[:, :, 0], visit.difference.mask)
    assert science.detector.id == 2 and science.band == "r"
    # The truth stays out of the catalogue the tasks read; it is kept as labels.
    assert "label" not in sources.colnames and "source_class" not in sources.colnames
    np.testing.assert_array_equal(sources["id"], visit.sources["id"])
    labels = writer.labels()
    np.testing.assert_array_equal(labels["label"], visit.sources["label"])
    # Graph building needs the visit_detector_region rows.
    regions = list(butler.registry.queryDimensionRecords("visit_detector_region", dataId=data_id))
    assert len(regions) == 1 and regions[0].region is not None


def test_images_read_through_rbnet_masked_image(repo):
    import lsst.images

    _, butler, _, visit = repo
    data_id = {"instrument": "RBSim", "visit": 4, "detector": 2}
    for name in ("template_detector", "difference_image", "preliminary_visit_image"):
        obj = butler.get(name, data_id, collections="sim/raw", storageClass="RBNetMaskedImage")
        assert isinstance(obj, lsst.images.MaskedImage)
    np.testing.assert_array_equal(obj.variance.array, visit.science.variance)


def test_model_round_trip_and_cache(repo, package):
    _, butler, _, _ = repo
    ref = register_model(butler, package, name="rt")
    assert ref.run == "pretrained_models/rt"
    clear_read_cache()
    got = butler.get(MODEL_DATASET_TYPE, collections="pretrained_models")
    assert isinstance(got, ModelPackage)
    assert got.version == "b1" and got.digest == package.digest
    assert butler.getURI(ref).getExtension() == ".safetensors"
    # Every quantum asks for the same dataset: the second read is served from memory.
    assert butler.get(ref) is butler.get(ref)


def test_register_model_chain_order_and_errors(repo, package, tmp_path):
    _, butler, _, _ = repo
    path = tmp_path / "m.safetensors"
    tiny_package(version="b2", seed=1).save(path)
    register_model(butler, str(path), name="second")
    chain = list(butler.registry.getCollectionChain("pretrained_models"))
    assert chain[0] == "pretrained_models/second"
    assert butler.get(MODEL_DATASET_TYPE, collections="pretrained_models").version == "b2"
    with pytest.raises(RuntimeError, match="already exists"):
        register_model(butler, str(path), name="second")
    with pytest.raises(ValueError, match="no '/'"):
        register_model(butler, str(path), name="a/b")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelPackageError):
        register_model(butler, str(bad), name="bad")


def test_corrupt_model_dataset_names_the_dataset(repo, package):
    _, butler, _, _ = repo
    ref = register_model(butler, package, name="tobreak")
    uri = butler.getURI(ref)
    data = bytearray(uri.read())
    data[-10] ^= 0xFF  # flip bits in the weights
    os.chmod(uri.ospath, 0o644)
    uri.write(bytes(data), overwrite=True)
    clear_read_cache()
    # daf_butler re-raises formatter errors as ValueError (ModelPackageError is one) with our message.
    with pytest.raises(
        ValueError, match=r"pretrainedModelPackage@\{\} in run 'pretrained_models/tobreak'.*corrupt"
    ):
        butler.get(ref)


def test_ingest_labels_csv_and_parquet(repo, tmp_path):
    root, butler, _, visit = repo
    table = astropy.table.Table(
        {
            "id": visit.sources["id"],
            "label": visit.sources["label"],
            "source_class": visit.sources["source_class"],
        }
    )
    csv = tmp_path / "labels.csv"
    table.write(csv, format="ascii.csv")
    ref = ingest_labels(root, str(csv), run="labels/csv")
    got = Butler.from_config(root).get(LABELS_DATASET_TYPE, {"instrument": "RBSim"}, collections="labels/csv")
    np.testing.assert_array_equal(got["id"], table["id"])
    assert ref.run == "labels/csv"
    pq = tmp_path / "labels.parquet"
    words = astropy.table.Table(
        {
            "ra": visit.sources["ra"],
            "dec": visit.sources["dec"],
            "mjd": np.full(len(table), 60004.0),
            "label": np.where(visit.sources["label"] == 1, "real", "bogus"),
        }
    )
    words.write(pq, format="parquet")
    ingest_labels(butler, str(pq), run="labels/pq")
    got = butler.get(LABELS_DATASET_TYPE, {"instrument": "RBSim"}, collections="labels/pq")
    np.testing.assert_array_equal(got["label"], visit.sources["label"])


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"id": [1, 2]}, "no 'label' column"),
        ({"label": [0, 1]}, "need a source 'id' column"),
        ({"id": [1, 2], "label": [0, 3]}, "column 'label' has values \\[3\\]"),
        ({"id": [1, 1], "label": [0, 1]}, "duplicate source ids"),
        ({"id": [1, 2], "label": [0, 1], "source_class": ["dipole", "unicorn"]}, "unknown source_class"),
        ({"id": [1.5, 2.0], "label": [0, 1]}, "'id' must hold integers"),
    ],
)
def test_bad_labels_are_named(repo, columns, message):
    _, butler, _, _ = repo
    with pytest.raises(ValueError, match=message):
        ingest_labels(butler, astropy.table.Table(columns), run="labels/bad")


def test_labels_file_extension(repo, tmp_path):
    _, butler, _, _ = repo
    path = tmp_path / "labels.txt"
    path.write_text("id,label\n1,0\n")
    with pytest.raises(ValueError, match="csv or .parquet"):
        ingest_labels(butler, str(path), run="labels/txt")


def test_configure_existing_repo(tmp_path):
    root = str(tmp_path / "plain")
    Butler.makeRepo(root)
    assert not repo_is_configured(root)
    assert configure_repo(root) is True
    assert repo_is_configured(root)
    assert os.path.exists(os.path.join(root, "butler.yaml.bak"))
    assert configure_repo(root) is False
    with pytest.raises(FileNotFoundError, match="Butler repository"):
        configure_repo(str(tmp_path / "nowhere"))


_SUBPROCESS = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from lsst.daf.butler import Butler, DatasetType
    from lsst.meas.rbnet.butler.repo import check_storage_classes
    from rbnet_task_helpers import tiny_package
    butler = Butler.from_config({root!r}, writeable=True, run="m")
    try:
        check_storage_classes(butler)
    except RuntimeError as err:
        print("UNCONFIGURED:", err)
        sys.exit(0)
    butler.registry.registerDatasetType(DatasetType("model", [], "RBNetModelPackage", universe=butler.dimensions))
    butler.put(tiny_package(version="env"), "model", {{}})
    print("VERSION:", Butler.from_config({root!r}).get("model", collections="m").version)
    """)


def test_shared_repo_with_config_path_and_without(tmp_path):
    """A repository nobody configured: a clear error without DAF_BUTLER_CONFIG_PATH, working with it.

    Subprocesses, because daf_butler's storage class registry is process-wide.
    """
    root = str(tmp_path / "shared")
    Butler.makeRepo(root)
    script = _SUBPROCESS.format(tests=os.path.dirname(__file__), root=root)
    env = {k: v for k, v in os.environ.items() if k != "DAF_BUTLER_CONFIG_PATH"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert "UNCONFIGURED:" in out.stdout and "rbnet configure-repo" in out.stdout, out.stderr
    env["DAF_BUTLER_CONFIG_PATH"] = config_search_path()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert "VERSION: env" in out.stdout, out.stderr


def test_cli_commands(repo, package, tmp_path):
    from click.testing import CliRunner

    from lsst.meas.rbnet.cli import main

    root, _, _, visit = repo
    runner = CliRunner()
    path = tmp_path / "cli.safetensors"
    package.save(path)
    result = runner.invoke(main, ["register-model", root, str(path), "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert "pretrained_models/cli" in result.output
    result = runner.invoke(main, ["register-model", root, str(path), "--name", "cli"])
    assert result.exit_code != 0 and "already exists" in result.output
    csv = tmp_path / "l.csv"
    astropy.table.Table({"id": visit.sources["id"], "label": visit.sources["label"]}).write(
        csv, format="ascii.csv"
    )
    result = runner.invoke(main, ["ingest-labels", root, str(csv), "--run", "labels/cli"])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n1,7\n")
    result = runner.invoke(main, ["ingest-labels", root, str(bad), "--run", "labels/cli2"])
    assert result.exit_code != 0 and "'label'" in result.output
    result = runner.invoke(main, ["configure-repo", "--print-config-path"])
    assert result.exit_code == 0 and os.path.isdir(result.output.strip())
    assert os.path.exists(os.path.join(result.output.strip(), "storageClasses.yaml"))
