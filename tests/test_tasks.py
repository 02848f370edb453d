# This file is part of meas_rbnet.
"""Tests of the PipelineTasks: ReliabilityTask, LabelledCutoutsTask, TrainTripletTask.

`run` is tested on in-memory objects (every bad input of the reliability task has a
test); each task is also run on a quantum of a small repository made with
`lsst.daf.butler.tests.makeTestRepo` through `lsst.pipe.base.testUtils.runTestQuantum`.
Most images are 128x128 and the model is tiny and untrained: those tests check the
plumbing. The alignment tests use the shipped model on a mosaic of simulated triplets
(`rbnet_task_helpers.aligned_scene`): ids in shuffled order, images whose origin is not
(0, 0), real and bogus tiles side by side; each source's score must be the score of its
own cutout, computed independently with `score_triplets`.
"""

import math
import os
import sys

import astropy.table
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rbnet_task_helpers import (  # noqa: E402
    aligned_scene,
    assert_own_scores,
    labels_into_run,
    own_cutout_scores,
    shipped_package,
    tiny_package,
    tiny_visit,
    write_scene,
)

from lsst.meas.rbnet.flags import UNSCORABLE, SourceFlag  # noqa: E402
from lsst.meas.rbnet.tasks.adapter import ImageArrays  # noqa: E402
from lsst.meas.rbnet.tasks.reliability import (  # noqa: E402
    NoModelError,
    ReliabilityConfig,
    ReliabilityConnections,
    ReliabilityTask,
)


@pytest.fixture(scope="module")
def package():
    return tiny_package()


@pytest.fixture(scope="module")
def visit():
    return tiny_visit(no_template_rows=0)


def _task(**overrides):
    config = ReliabilityConfig()
    for k, v in overrides.items():
        setattr(config, k, v)
    config.validate()
    return ReliabilityTask(config=config)


def _run(task, visit, package, sources=None, **images):
    kw = dict(science=visit.science, template=visit.template, difference=visit.difference)
    kw.update(images)
    return task.run(sources=visit.sources if sources is None else sources, pretrainedModel=package, **kw)


# ----------------------------------------------------------------------
# run() on in-memory objects
# ----------------------------------------------------------------------


def test_every_source_gets_one_aligned_row(visit, package):
    result = _run(_task(), visit, package)
    rel, cat = result.reliability, result.sourcesWithReliability
    n = len(visit.sources)
    assert len(rel) == n and len(cat) == n
    np.testing.assert_array_equal(rel["id"], visit.sources["id"])
    np.testing.assert_array_equal(cat["id"], visit.sources["id"])
    assert rel["score"].dtype == np.float32 and cat["reliability"].dtype == np.float32
    assert rel["reliabilityFlags"].dtype == np.int32
    assert all(v == "tiny1" for v in rel["version"]) and all(len(v) <= 7 for v in cat["reliabilityVersion"])
    scores = np.asarray(rel["score"])
    flags = np.asarray(rel["reliabilityFlags"])
    finite = np.isfinite(scores)
    assert np.all((scores[finite] >= 0) & (scores[finite] <= 1))
    # NaN exactly where the source could not be scored, and then NOT_SCORED says so.
    assert np.all(((flags[~finite] & SourceFlag.NOT_SCORED) != 0))
    assert np.all((flags[finite] & (UNSCORABLE | SourceFlag.NOT_SCORED)) == 0)
    # The helper puts source 0 on the edge and source 1 off the image.
    assert flags[0] & SourceFlag.EDGE and finite[0]
    assert flags[1] & SourceFlag.OFF_IMAGE and not finite[1]
    # The input columns are kept as they were.
    for col in visit.sources.colnames:
        np.testing.assert_array_equal(cat[col], visit.sources[col])
    np.testing.assert_array_equal(cat["reliability"], rel["score"])


def test_unscorable_score_is_configurable(visit, package):
    result = _run(_task(unscorableScore=0.0), visit, package)
    assert result.reliability["score"][1] == 0.0
    assert result.reliability["reliabilityFlags"][1] & SourceFlag.NOT_SCORED


def test_empty_table_gives_empty_outputs_with_the_schema(visit, package):
    empty = visit.sources[:0]
    result = _run(_task(doWriteCutouts=True), visit, package, sources=empty)
    assert len(result.reliability) == 0
    assert result.reliability.colnames == ["id", "score", "version", "reliabilityFlags"]
    assert result.reliability["score"].dtype == np.float32
    assert result.reliability["id"].dtype == np.int64
    assert "reliability" in result.sourcesWithReliability.colnames
    assert result.cutouts["stamp"].shape == (0, 3, 21, 21)


def test_missing_centroid_columns_are_named(visit, package):
    sources = visit.sources.copy()
    sources.remove_columns(["x", "y"])
    with pytest.raises(ValueError, match=r"\['x', 'y'\]"):
        _run(_task(), visit, package, sources=sources)


def test_configured_centroid_columns(visit, package):
    sources = visit.sources.copy()
    sources.rename_columns(["x", "y"], ["centroid_x", "centroid_y"])
    result = _run(_task(xColumn="centroid_x", yColumn="centroid_y"), visit, package, sources=sources)
    assert len(result.reliability) == len(sources)


def test_duplicate_ids_are_an_error(visit, package):
    sources = visit.sources.copy()
    sources["id"][3] = sources["id"][2]
    with pytest.raises(ValueError, match="duplicate ids"):
        _run(_task(), visit, package, sources=sources)


def test_images_on_different_grids_are_an_error(visit, package):
    t = visit.template
    shifted = ImageArrays(t.image, t.variance, t.mask, {"NO_DATA": 8}, x0=5, y0=0)
    with pytest.raises(ValueError, match="do not share one pixel grid"):
        _run(_task(), visit, package, template=shifted)


def test_no_template_flag(package):
    v = tiny_visit(no_template_rows=40, seed=3)
    v.sources["x"][2], v.sources["y"][2] = 60.0, 10.0  # centre inside the template's NO_DATA rows
    v.sources["x"][3], v.sources["y"][3] = 60.0, 90.0  # well clear of them
    result = _run(_task(), v, package)
    flags = np.asarray(result.reliability["reliabilityFlags"])
    assert flags[2] & SourceFlag.NO_TEMPLATE
    assert not flags[3] & SourceFlag.NO_TEMPLATE


def test_model_channels_must_match_config(visit, package):
    with pytest.raises(ValueError, match="channels"):
        _run(_task(channels=["difference"]), visit, package)


def test_model_stamp_size_must_match_config(visit, package):
    with pytest.raises(ValueError, match="stampSize"):
        _run(_task(stampSize=31), visit, package)


def test_expected_model_version(visit, package):
    with pytest.raises(ValueError, match="expectedModelVersion"):
        _run(_task(expectedModelVersion="other"), visit, package)


def test_no_model_says_how_to_get_one(visit):
    with pytest.raises(NoModelError, match="register-model"):
        _task().run(
            science=visit.science,
            template=visit.template,
            difference=visit.difference,
            sources=visit.sources,
            pretrainedModel=None,
        )


def test_difference_only_reads_only_the_difference(visit):
    config = ReliabilityConfig()
    config.channels = ["difference"]
    connections = ReliabilityConnections(config=config)
    assert "science" not in connections.inputs and "template" not in connections.inputs
    task = ReliabilityTask(config=config)
    result = task.run(
        difference=visit.difference,
        sources=visit.sources,
        pretrainedModel=tiny_package(channels=["difference"]),
    )
    assert len(result.reliability) == len(visit.sources)


def test_storage_classes_are_configurable():
    config = ReliabilityConfig()
    config.sourcesStorageClass = "DataFrame"
    config.scienceStorageClass = "RBNetMaskedImage"
    connections = ReliabilityConnections(config=config)
    assert connections.sources.storageClass == "DataFrame"
    assert connections.science.storageClass == "RBNetMaskedImage"
    assert connections.template.storageClass == "RBNetMaskedImage"
    assert "cutouts" not in connections.outputs


def test_dataframe_sources(visit, package):
    result = _run(_task(), visit, package, sources=visit.sources.to_pandas())
    np.testing.assert_array_equal(result.reliability["id"], visit.sources["id"])


def test_model_is_loaded_once(package):
    task = _task()
    assert task.load_scorer(package) is task.load_scorer(package)
    assert _task().load_scorer(package) is task.load_scorer(package)


def test_cutouts_output(visit, package):
    result = _run(_task(doWriteCutouts=True, cutoutSize=25), visit, package)
    cut = result.cutouts
    assert cut["stamp"].shape == (len(visit.sources), 3, 25, 25)
    np.testing.assert_array_equal(cut["id"], visit.sources["id"])
    # Raw pixels: the centre of a source well inside the image equals the difference image there.
    i = 5
    cx, cy = int(np.floor(visit.sources["x"][i] + 0.5)), int(np.floor(visit.sources["y"][i] + 0.5))
    assert cut["stamp"][i, 0, 12, 12] == visit.difference.image[cy, cx]


def test_config_validation():
    config = ReliabilityConfig()
    config.channels = ["science", "template"]
    with pytest.raises(Exception, match="difference"):
        config.validate()
    config = ReliabilityConfig()
    config.unscorableScore = 2.0
    with pytest.raises(Exception, match="NaN or in"):
        config.validate()
    assert math.isnan(ReliabilityConfig().unscorableScore)


# ----------------------------------------------------------------------
# Alignment: the right score on the right source
# ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return shipped_package()


@pytest.fixture(scope="module")
def scene(shipped):
    return aligned_scene(shipped, seed=0)


def test_scene_catches_permutations_and_shifts(scene, shipped):
    """The premise of the alignment tests: a permutation or a dropped origin shift changes the scores."""
    v = scene.visit
    own = own_cutout_scores(scene, shipped)
    ok = scene.scorable
    assert (scene.x0, scene.y0) != (0, 0)
    assert not np.all(np.diff(np.asarray(v.sources["id"])) > 0)
    # Every scorable source's score differs from every other's.
    assert np.diff(np.sort(own[ok])).min() > 1e-4
    # Read at parent coordinates as if they were array indices, most sources land on a tile of
    # the other class (or off the images).
    shifted = own_cutout_scores(
        scene, shipped, x=np.asarray(v.sources["x"]) + scene.x0, y=np.asarray(v.sources["y"]) + scene.y0
    )
    inside = np.isfinite(shifted) & ok
    assert inside.sum() >= 4 and np.all(np.abs(shifted[inside] - own[inside]) > 0.5)


def test_each_source_gets_its_own_score(scene, shipped):
    v = scene.visit
    result = _run(_task(doWriteCutouts=True), v, shipped)
    assert_own_scores(result.reliability, scene, shipped)
    cat = result.sourcesWithReliability
    np.testing.assert_array_equal(cat["id"], v.sources["id"])
    np.testing.assert_array_equal(cat["reliability"], result.reliability["score"])
    np.testing.assert_array_equal(cat["x"], v.sources["x"])
    # The written cutouts are the sources' own pixels too (difference, science, template).
    S, h = scene.stamp_size, scene.stamp_size // 2
    for i in np.flatnonzero(scene.scorable):
        cx = int(np.floor(v.sources["x"][i] - scene.x0 + 0.5))
        cy = int(np.floor(v.sources["y"][i] - scene.y0 + 0.5))
        for k, img in enumerate((v.difference, v.science, v.template)):
            np.testing.assert_array_equal(
                result.cutouts["stamp"][i, k], img.image[cy - h : cy + h + 1, cx - h : cx + h + 1]
            )
    assert result.cutouts["stamp"].shape[2:] == (S, S)


def test_row_order_of_the_input_is_kept(scene, shipped):
    """Reordering the input rows reorders the outputs the same way and changes no score."""
    v = scene.visit
    base = _run(_task(), v, shipped).reliability
    order = np.random.default_rng(5).permutation(len(v.sources))
    again = _run(_task(), v, shipped, sources=v.sources[order]).reliability
    np.testing.assert_array_equal(again["id"], np.asarray(v.sources["id"])[order])
    np.testing.assert_allclose(again["score"], np.asarray(base["score"])[order], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(again["reliabilityFlags"], np.asarray(base["reliabilityFlags"])[order])


def test_lsst_images_origin_is_used(scene, shipped):
    """lsst.images sub-images carry the origin in their bounding box; the task reads it there."""
    import lsst.images

    from lsst.meas.rbnet.butler.images import make_masked_image

    v = scene.visit
    H, W = v.difference.image.shape
    box = lsst.images.Box.factory[scene.y0 : scene.y0 + H, scene.x0 : scene.x0 + W]
    images = {}
    for name in ("science", "template", "difference"):
        img = getattr(v, name)
        full = np.zeros((scene.y0 + H, scene.x0 + W), np.float32)
        full[scene.y0 :, scene.x0 :] = img.image
        images[name] = make_masked_image(full, np.ones_like(full), np.zeros(full.shape, np.int32))[box]
        assert images[name].bbox.x.start == scene.x0 and images[name].bbox.y.start == scene.y0
    result = _task().run(sources=v.sources, pretrainedModel=shipped, **images)
    assert_own_scores(result.reliability, scene, shipped)


# ----------------------------------------------------------------------
# Quanta in a test repository
# ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory, package, scene, shipped):
    """Butlers on one test repository: ``rel`` (run test/rel: inputs and the model, for the
    reliability quanta), ``train`` (run test/train: inputs and labels, for the training ones)
    and ``align`` (run test/align: the alignment scene, images with origin (x0, y0), and the
    shipped model).

    makeQuantum looks for inputs in the Butler's own run, so each run holds its inputs.
    """
    from lsst.daf.butler import Butler, DatasetType
    from lsst.daf.butler.tests import makeTestRepo

    from lsst.meas.rbnet.butler.config import butler_seed_config
    from lsst.meas.rbnet.butler.repo import MODEL_DATASET_TYPE, VisitWriter

    root = str(tmp_path_factory.mktemp("task_repo"))
    config = butler_seed_config()
    # A file datastore, so the model package goes through its formatter as in production.
    config["datastore", "cls"] = "lsst.daf.butler.datastores.fileDatastore.FileDatastore"
    config["datastore", "root"] = "<butlerRoot>"
    # makeQuantum's refs carry no dimension records, so the file template may use only data ID values.
    config["datastore", "templates", "default"] = (
        "{run:/}/{datasetType}.{component:?}/{datasetType}_{component:?}_{instrument:?}_{visit:?}_{detector:?}"
    )
    butler = makeTestRepo(root, config=config)
    rel = VisitWriter(butler, run="test/rel")
    rel.write(tiny_visit(visit=1, detector=0, seed=1))
    bad = tiny_visit(visit=3, detector=0, seed=3)
    bad.sources["id"][1] = bad.sources["id"][0]
    rel.write(bad)
    rel.write(tiny_visit(visit=4, detector=0, seed=4, n_sources=40))  # for the failures mid-quantum
    butler.put(package, MODEL_DATASET_TYPE, {}, run="test/rel")
    train = VisitWriter(butler, run="test/train")
    train.write(tiny_visit(visit=1, detector=0, seed=1))
    train.write(tiny_visit(visit=2, detector=0, seed=2))
    labels_into_run(butler, train.labels(), "test/train")
    write_scene(butler, "test/align", scene, records_run="test/align-records")
    butler.put(shipped, MODEL_DATASET_TYPE, {}, run="test/align")
    universe = butler.dimensions
    dims = ["instrument", "visit", "detector"]
    for name, d, sc in [
        ("dia_source_reliability", dims, "ArrowAstropy"),
        ("dia_source_unstandardized_reliability", dims, "ArrowAstropy"),
        ("dia_source_cutouts", dims, "ArrowAstropy"),
        ("rbnet_labelled_cutouts", dims, "ArrowAstropy"),
        ("rbnet_training_metrics", [], "StructuredDataDict"),
        ("rbnet_training_roc", [], "Plot"),
        ("rbnet_training_history", [], "Plot"),
    ]:
        butler.registry.registerDatasetType(DatasetType(name, d, sc, universe=universe))
    return {
        "rel": Butler.from_config(root, writeable=True, run="test/rel"),
        "train": Butler.from_config(root, writeable=True, run="test/train"),
        "align": Butler.from_config(root, writeable=True, run="test/align"),
    }


def _data_id(visit):
    return {"instrument": "RBSim", "visit": visit, "detector": 0}


def test_reliability_quantum(repo):
    repo = repo["rel"]
    from lsst.pipe.base.testUtils import assertValidOutput, makeQuantum, runTestQuantum

    config = ReliabilityConfig()
    config.doWriteCutouts = True
    task = ReliabilityTask(config=config)
    did = _data_id(1)
    io = {
        name: did
        for name in (
            "science",
            "template",
            "difference",
            "sources",
            "reliability",
            "sourcesWithReliability",
            "cutouts",
        )
    }
    io["pretrainedModel"] = {}
    quantum = makeQuantum(task, repo, did, io)
    # The connections are wired as they should be (mocked run: what runQuantum passes it).
    mock = runTestQuantum(task, repo, quantum, mockRun=True)
    kwargs = mock.call_args.kwargs
    assert set(kwargs) == {"science", "template", "difference", "sources", "pretrainedModel"}
    assert kwargs["pretrainedModel"].version == "tiny1"
    # And for real.
    runTestQuantum(task, repo, quantum, mockRun=False)
    rel = repo.get("dia_source_reliability", did)
    src = repo.get("dia_source_unstandardized", did)
    np.testing.assert_array_equal(rel["id"], src["id"])
    assert "label" not in src.colnames  # the truth never reaches the task
    cat = repo.get("dia_source_unstandardized_reliability", did)
    np.testing.assert_array_equal(cat["reliability"], rel["score"])
    assert repo.get("dia_source_cutouts", did)["stamp"].shape[1:] == (3, 21, 21)
    result = task.run(**{k: kwargs[k] for k in kwargs})
    assertValidOutput(task, result)


def test_reliability_quantum_gives_each_source_its_own_score(repo, scene, shipped):
    """A quantum on images whose bounding box starts at (x0, y0) != (0, 0), ids shuffled."""
    repo = repo["align"]
    from lsst.pipe.base.testUtils import makeQuantum, runTestQuantum

    task = ReliabilityTask(config=ReliabilityConfig())
    did = _data_id(scene.visit.metadata["visit"])
    io = {
        name: did
        for name in ("science", "template", "difference", "sources", "reliability", "sourcesWithReliability")
    }
    io["pretrainedModel"] = {}
    science = repo.get("preliminary_visit_image", did)
    assert (science.bbox.x.start, science.bbox.y.start) == (scene.x0, scene.y0)
    runTestQuantum(task, repo, makeQuantum(task, repo, did, io), mockRun=False)
    rel = repo.get("dia_source_reliability", did)
    assert_own_scores(rel, scene, shipped)
    cat = repo.get("dia_source_unstandardized_reliability", did)
    np.testing.assert_array_equal(cat["id"], scene.visit.sources["id"])
    np.testing.assert_array_equal(cat["reliability"], rel["score"])


def test_model_package_name_must_match_the_run(repo):
    repo = repo["rel"]
    from lsst.pipe.base.testUtils import makeQuantum, runTestQuantum

    config = ReliabilityConfig()
    config.modelPackageName = "something_else"
    task = ReliabilityTask(config=config)
    did = _data_id(1)
    io = {
        name: did
        for name in ("science", "template", "difference", "sources", "reliability", "sourcesWithReliability")
    }
    io["pretrainedModel"] = {}
    with pytest.raises(ValueError, match="pretrained_models/something_else"):
        runTestQuantum(task, repo, makeQuantum(task, repo, did, io), mockRun=False)


def test_failed_quantum_writes_nothing(repo):
    repo = repo["rel"]
    from lsst.pipe.base.testUtils import makeQuantum, runTestQuantum

    task = ReliabilityTask(config=ReliabilityConfig())
    did = _data_id(3)  # its source table has a duplicate id
    io = {
        name: did
        for name in ("science", "template", "difference", "sources", "reliability", "sourcesWithReliability")
    }
    io["pretrainedModel"] = {}
    quantum = makeQuantum(task, repo, did, io)
    with pytest.raises(ValueError, match="duplicate ids"):
        runTestQuantum(task, repo, quantum, mockRun=False)
    # makeQuantum registers the output refs up front; no file may have been written for them.
    outputs = [ref for refs in quantum.outputs.values() for ref in refs]
    assert len(outputs) == 2
    assert not any(repo.stored(ref) for ref in outputs)


class InjectedFailure(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["scoring", "cutouts"])
def test_failure_in_the_middle_of_a_quantum_writes_nothing(repo, monkeypatch, where):
    """A failure after part of the work is done (some batches scored; or all scores computed and
    the cutouts being made) leaves no output at all, not the outputs computed so far."""
    repo = repo["rel"]
    from lsst.pipe.base.testUtils import makeQuantum, runTestQuantum

    import lsst.meas.rbnet.cutouts as cutouts

    done = []
    if where == "scoring":
        real_iter = cutouts.iter_cutout_batches

        def failing_iter(*args, **kwargs):
            for batch in real_iter(*args, **kwargs):
                if len(done) == 3:
                    raise InjectedFailure("in the middle of scoring")
                done.append(batch[0])
                yield batch

        monkeypatch.setattr(cutouts, "iter_cutout_batches", failing_iter)
    else:

        def failing_extract(*args, **kwargs):
            done.append("scored")
            raise InjectedFailure("while making the cutouts")

        monkeypatch.setattr(cutouts, "extract_cutouts", failing_extract)
    config = ReliabilityConfig()
    config.batchSize = 5  # 40 sources: 8 batches, the 4th fails
    config.doWriteCutouts = True
    task = ReliabilityTask(config=config)
    did = _data_id(4)
    names = ("science", "template", "difference", "sources")
    names += ("reliability", "sourcesWithReliability", "cutouts")
    io = {name: did for name in names}
    io["pretrainedModel"] = {}
    quantum = makeQuantum(task, repo, did, io)
    with pytest.raises(InjectedFailure):
        runTestQuantum(task, repo, quantum, mockRun=False)
    assert len(done) == (3 if where == "scoring" else 1)
    outputs = [ref for refs in quantum.outputs.values() for ref in refs]
    assert len(outputs) == 3
    assert not any(repo.stored(ref) for ref in outputs)


def test_labelled_cutouts_and_training_quanta(repo):
    repo = repo["train"]
    from lsst.pipe.base.testUtils import assertValidOutput, makeQuantum, runTestQuantum

    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.tasks.labelled_cutouts import LabelledCutoutsConfig, LabelledCutoutsTask
    from lsst.meas.rbnet.tasks.train import TrainTripletConfig, TrainTripletTask

    cconfig = LabelledCutoutsConfig()
    cconfig.stampSize = 23
    ctask = LabelledCutoutsTask(config=cconfig)
    for v in (1, 2):
        did = _data_id(v)
        io = {n: did for n in ("science", "template", "difference", "sources", "cutouts")}
        io["labels"] = {"instrument": "RBSim"}
        runTestQuantum(ctask, repo, makeQuantum(ctask, repo, did, io), mockRun=False)
        cut = repo.get("rbnet_labelled_cutouts", did)
        src = repo.get("dia_source_unstandardized", did)
        assert cut["stamp"].shape == (len(src), 3, 23, 23)  # every tiny-visit source is labelled
        assert set(np.unique(cut["label"])) <= {0, 1}

    tconfig = TrainTripletConfig()
    tconfig.stampSize = 21  # cropped from the 23-pixel cutouts
    tconfig.epochs = 1
    tconfig.widths = [4, 8]
    tconfig.hidden = 8
    tconfig.validationFraction = 0.3
    tconfig.version = "t1"
    tconfig.numThreads = 1
    ttask = TrainTripletTask(config=tconfig)
    io = {"cutouts": [_data_id(1), _data_id(2)], "model": {}, "metrics": {}, "rocPlot": {}, "historyPlot": {}}
    quantum = makeQuantum(ttask, repo, {}, io)
    runTestQuantum(ttask, repo, quantum, mockRun=False)
    model = repo.get("pretrainedModelPackage")
    assert isinstance(model, ModelPackage) and model.version == "t1"
    assert model.contract.stamp_size == 21
    metrics = repo.get("rbnet_training_metrics")
    # Every labelled cutout of both visits was used, with its own label (the truth of tiny_visit).
    truth = np.concatenate([np.asarray(tiny_visit(visit=v, seed=v).sources["label"]) for v in (1, 2)])
    assert metrics["n_train_total"] == len(truth) == 24
    assert metrics["n_real"] == int(truth.sum()) and metrics["n_bogus"] == int((truth == 0).sum())
    # The trained package is directly usable by the reliability task.
    v = tiny_visit(visit=9)
    result = ReliabilityTask(config=ReliabilityConfig()).run(
        science=v.science,
        template=v.template,
        difference=v.difference,
        sources=v.sources,
        pretrainedModel=model,
    )
    assert np.all(result.reliability["version"] == "t1")
    cut = repo.get("rbnet_labelled_cutouts", _data_id(1))
    assertValidOutput(ttask, ttask.run([cut, repo.get("rbnet_labelled_cutouts", _data_id(2))]))


def test_labels_matched_by_position():
    from lsst.meas.rbnet.tasks.labelled_cutouts import match_labels

    sources = astropy.table.Table({"id": [1, 2, 3], "ra": [10.0, 10.001, 10.002], "dec": [0.0, 0.0, 0.0]})
    labels = astropy.table.Table(
        {
            "ra": [10.0011, 10.0, 20.0],
            "dec": [0.0, 0.0, 0.0],
            "mjd": [60000.0, 60005.0, 60000.0],
            "label": [1, 0, 1],
        }
    )
    index = match_labels(sources, labels, mjd=60000.0, radius_arcsec=1.0)
    # Source 1 matches no label at this epoch (the label at its position is 5 days off).
    np.testing.assert_array_equal(index, [-1, 0, -1])
    with pytest.raises(ValueError, match="time"):
        match_labels(sources, labels, mjd=None)
