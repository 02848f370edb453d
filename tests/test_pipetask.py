# This file is part of meas_rbnet.
"""End to end: a small repository and a real ``pipetask run`` subprocess on the AP drop-in pipeline.

Two quanta (one visit, two detectors) of 128x128 images scored by a tiny untrained
model; the test checks what Alert Production relies on: every source has one row,
ids equal row by row, scores in [0, 1] or NaN with NOT_SCORED, a version of at most
7 characters, and the source catalogue with the reliability columns added.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rbnet_task_helpers import tiny_package, tiny_visit  # noqa: E402

from lsst.meas.rbnet.flags import SourceFlag  # noqa: E402

pytestmark = pytest.mark.slow


def _pipetask(args, root):
    from lsst.meas.rbnet.cli.demo import package_root

    exe = os.path.join(os.path.dirname(sys.executable), "pipetask")
    env = dict(os.environ, MEAS_RBNET_DIR=str(package_root()), OMP_NUM_THREADS="1")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=420, env=env, cwd=root)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from lsst.meas.rbnet.butler.repo import VisitWriter, create_repo, ingest_labels, register_model

    root = str(tmp_path_factory.mktemp("pipetask_repo"))
    butler = create_repo(os.path.join(root, "repo"))
    writer = VisitWriter(butler, run="sim")
    for detector in (0, 1):
        writer.write(tiny_visit(visit=1, detector=detector, seed=5))
    ingest_labels(butler, writer.labels(), run="labels")
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


def test_demo_small(tmp_path, monkeypatch):
    """`rbnet demo` end to end on one small detector, with a tiny model standing in for the default."""
    import json

    from rich.console import Console

    import lsst.meas.rbnet.scoring as scoring
    from lsst.meas.rbnet.cli.demo import run_demo

    model = tmp_path / "tiny.safetensors"
    tiny_package(version="demo1").save(model)
    monkeypatch.setattr(scoring, "default_model_path", lambda: model)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=120)
    summary = run_demo(
        tmp_path / "demo", detectors=1, visits=1, size=256, n_sources=40, seed=1, console=console
    )
    assert summary["sources"] == 40 and summary["quanta"] == 1
    assert summary["versions"] == ["demo1"]
    assert 0.0 <= summary["roc_auc"] <= 1.0
    assert (tmp_path / "demo" / "roc.png").stat().st_size > 0
    assert (tmp_path / "demo" / "score_histograms.png").stat().st_size > 0
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["sources"] == 40
    # The console showed the real pipetask run.
    assert "pipetask run -b" in (tmp_path / "console.txt").read_text()
