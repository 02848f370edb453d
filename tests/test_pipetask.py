# This file is part of meas_rbnet.
"""End to end: a small repository and a real ``pipetask run`` subprocess on the AP drop-in pipeline.

Two quanta (one visit, two detectors) of 128x128 images scored by a tiny untrained
model; the test checks what Alert Production relies on: every source has one row,
ids equal row by row, scores in [0, 1] or NaN with NOT_SCORED, a version of at most
7 characters, and the source catalogue with the reliability columns added.

With the shipped model on the alignment scene of `rbnet_task_helpers.aligned_scene`
(images whose bounding box starts at (x0, y0) != (0, 0), ids in shuffled order, real
and bogus tiles side by side) every source must get the score of its own cutout; a
quantum whose template is not on the science grid fails and writes nothing, while the
other quantum of the same run is written.
"""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rbnet_task_helpers import (  # noqa: E402
    aligned_scene,
    assert_own_scores,
    shipped_package,
    tiny_package,
    tiny_visit,
    write_scene,
)

from lsst.meas.rbnet.flags import SourceFlag  # noqa: E402

pytestmark = pytest.mark.slow


def _pipetask(args, root):
    from lsst.meas.rbnet.cli.demo import package_root

    exe = os.path.join(os.path.dirname(sys.executable), "pipetask")
    env = dict(os.environ, MEAS_RBNET_DIR=str(package_root()), OMP_NUM_THREADS="1")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=420, env=env, cwd=root)


@pytest.fixture(scope="module")
def shipped():
    return shipped_package()


@pytest.fixture(scope="module")
def scene(shipped):
    return aligned_scene(shipped, seed=3, visit=7, detector=0)


def _moved(scene, visit, detector):
    """The same scene as another (visit, detector)."""
    meta = dict(scene.visit.metadata, visit=visit, detector=detector)
    return dataclasses.replace(scene, visit=dataclasses.replace(scene.visit, metadata=meta))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, scene, shipped):
    """Runs: ``sim`` (tiny visits), ``sim-offset`` (the alignment scene as visit 7), ``sim-bad``
    (visit 8: detector 0 with its template off the science grid, detector 1 fine); models
    ``pretrained_models/shipped`` and, first in the chain, ``pretrained_models/tiny``."""
    from lsst.meas.rbnet.butler.repo import VisitWriter, create_repo, ingest_labels, register_model

    root = str(tmp_path_factory.mktemp("pipetask_repo"))
    butler = create_repo(os.path.join(root, "repo"))
    writer = VisitWriter(butler, run="sim")
    for detector in (0, 1):
        writer.write(tiny_visit(visit=1, detector=detector, seed=5))
    ingest_labels(butler, writer.labels(), run="labels")
    write_scene(butler, "sim-offset", scene)
    bad = _moved(scene, 8, 0)
    write_scene(butler, "sim-bad", bad, records_run="sim-bad-records-0", template_shift=(2, 0))
    write_scene(butler, "sim-bad", _moved(scene, 8, 1), records_run="sim-bad-records-1")
    register_model(butler, shipped, name="shipped")
    path = os.path.join(root, "tiny.safetensors")
    tiny_package(version="e2e").save(path)
    register_model(butler, path, name="tiny")
    return root, os.path.join(root, "repo")


def test_pipetask_run_ap_reliability(repo):
    from lsst.daf.butler import Butler

    from lsst.meas.rbnet.cli.demo import pipeline_path

    root, repo_path = repo
    result = _pipetask(
        [
            "run",
            "-b",
            repo_path,
            "-i",
            "sim,pretrained_models",
            "-o",
            "out",
            "-p",
            str(pipeline_path("ApReliability.yaml")),
            "--register-dataset-types",
        ],
        root,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    butler = Butler.from_config(repo_path, collections="out")
    refs = list(butler.registry.queryDatasets("dia_source_reliability", collections="out"))
    assert len(refs) == 2
    for ref in refs:
        rel = butler.get(ref)
        src = butler.get("dia_source_unstandardized", ref.dataId)
        cat = butler.get("dia_source_unstandardized_reliability", ref.dataId)
        assert len(rel) == len(src) == len(cat) > 0
        np.testing.assert_array_equal(rel["id"], src["id"])
        np.testing.assert_array_equal(cat["id"], src["id"])
        score = np.asarray(rel["score"])
        flags = np.asarray(rel["reliabilityFlags"])
        ok = np.isfinite(score)
        assert np.all((score[ok] >= 0) & (score[ok] <= 1))
        assert np.all(flags[~ok] & SourceFlag.NOT_SCORED)
        assert (~ok).sum() >= 1  # the helper puts one source off the image
        assert set(rel["version"]) == {"e2e"}
        assert all(len(v) <= 7 for v in cat["reliabilityVersion"])
        np.testing.assert_array_equal(cat["reliability"], rel["score"])


def _run_ap(repo, inputs, output, *extra):
    from lsst.meas.rbnet.cli.demo import pipeline_path

    root, repo_path = repo
    pipeline = str(pipeline_path("ApReliability.yaml"))
    args = ["run", "-b", repo_path, "-i", inputs, "-o", output, "-p", pipeline]
    return _pipetask([*args, "--register-dataset-types", *extra], root)


def test_pipetask_gives_each_source_its_own_score(repo, scene, shipped):
    from lsst.daf.butler import Butler

    result = _run_ap(repo, "sim-offset,pretrained_models/shipped", "out-offset")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    butler = Butler.from_config(repo[1], collections="out-offset")
    did = {"instrument": "RBSim", "visit": 7, "detector": 0}
    science = butler.get("preliminary_visit_image", did)
    assert (science.bbox.x.start, science.bbox.y.start) == (scene.x0, scene.y0) != (0, 0)
    rel = butler.get("dia_source_reliability", did)
    assert set(rel["version"]) == {shipped.version}
    assert_own_scores(rel, scene, shipped)
    cat = butler.get("dia_source_unstandardized_reliability", did)
    np.testing.assert_array_equal(cat["id"], scene.visit.sources["id"])
    np.testing.assert_array_equal(cat["reliability"], rel["score"])


def test_failed_quantum_under_pipetask_writes_nothing(repo, scene, shipped):
    from lsst.daf.butler import Butler

    result = _run_ap(repo, "sim-bad,pretrained_models/shipped", "out-bad")
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-3000:]
    assert "do not share one pixel grid" in text
    butler = Butler.from_config(repo[1], collections="out-bad")
    for name in ("dia_source_reliability", "dia_source_unstandardized_reliability"):
        refs = list(butler.registry.queryDatasets(name, collections="out-bad", findFirst=False))
        # The failed quantum (detector 0) left nothing; the other one (detector 1) wrote its outputs.
        assert sorted(ref.dataId["detector"] for ref in refs) == [1], name
    good = butler.get("dia_source_reliability", visit=8, detector=1, instrument="RBSim")
    assert_own_scores(good, scene, shipped)


def test_pipetask_without_model_says_what_to_do(repo):
    from lsst.meas.rbnet.cli.demo import pipeline_path

    root, repo_path = repo
    result = _pipetask(
        [
            "qgraph",
            "-b",
            repo_path,
            "-i",
            "sim",
            "-o",
            "nomodel",
            "-p",
            str(pipeline_path("ApReliability.yaml")),
        ],
        root,
    )
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "pretrained_models" in text and "register-model" in text


def test_demo_small(tmp_path, shipped):
    """`rbnet demo` end to end on one small detector with the shipped model: it must tell real from bogus.

    A demo that scored the wrong sources, or summarised scores against the wrong labels,
    would sit near ROC-AUC 0.5; the shipped model reaches about 0.98 on whole simulated
    visits (doc/default-model.md), so 0.8 leaves room for the noise of 40 sources.
    """
    import json

    import astropy.table
    from rich.console import Console

    from lsst.meas.rbnet.cli.demo import run_demo
    from lsst.meas.rbnet.training import metrics as M

    console = Console(file=open(tmp_path / "console.txt", "w"), width=120)
    summary = run_demo(
        tmp_path / "demo", detectors=1, visits=1, size=256, n_sources=40, seed=1, console=console
    )
    assert summary["sources"] == 40 and summary["quanta"] == 1
    assert summary["versions"] == [shipped.version]
    assert summary["labelled_real"] > 5 and summary["labelled_bogus"] > 5
    assert summary["roc_auc"] > 0.8
    # The summary's figure is the one the written table gives.
    table = astropy.table.Table.read(tmp_path / "demo" / "scores.parquet")
    s, y = np.asarray(table["score"], float), np.asarray(table["label"])
    ok = np.isfinite(s) & (y >= 0)
    assert summary["roc_auc"] == pytest.approx(M.roc_auc(s[ok], y[ok]))
    assert (tmp_path / "demo" / "roc.png").stat().st_size > 0
    assert (tmp_path / "demo" / "score_histograms.png").stat().st_size > 0
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["sources"] == 40
    # The console showed the real pipetask run.
    assert "pipetask run -b" in (tmp_path / "console.txt").read_text()
