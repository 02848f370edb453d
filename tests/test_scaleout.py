"""Scale-out: the pipeline through ``bps submit`` (local Parsl site) and against PostgreSQL.

- ``test_bps_parsl_local``: ``bps submit bps/parsl-local.yaml`` on a small SQLite repository;
  every quantum's output must be in the registry afterwards (the final job put it there).
- ``test_postgres_multi_writer``: ``pipetask run -j 2`` (two processes writing to the
  registry at once) on a repository whose registry is in the PostgreSQL server that
  .ci/services.sh starts; skipped, with the reason, when there is none.

Both run the commands as a user would, in subprocesses, and check the outputs through a
fresh Butler.
"""

import os
import subprocess
import sys
from pathlib import Path

import astropy.table
import numpy as np
import pytest

from lsst.daf.butler import Butler, DatasetType
from lsst.meas.rbnet.butler.postgres import (
    POSTGRES_URL_ENV,
    create_postgres_repo,
    drop_namespace,
    postgres_url_from_env,
    unique_namespace,
)

import lsst.pipe.base as pipeBase
from lsst.pipe.base import connectionTypes as cT

ROOT = Path(__file__).resolve().parent.parent
BPS_CONFIG = ROOT / "bps" / "parsl-local.yaml"
SERVICES = ROOT / ".ci" / "services.sh"

VISITS = (1, 2)
DETECTORS = (0, 1)
INSTRUMENT = "Toy"
INPUT_RUN = "scaleout/inputs"


# A stand-in for the reliability task while it is being written: same dimensions, one row out
# per row in, keyed by id.
class ToyConnections(pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")):
    sources = cT.Input(
        doc="Sources.", name="toy_sources", storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    scores = cT.Output(
        doc="Scores.", name="toy_scores", storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )


class ToyConfig(pipeBase.PipelineTaskConfig, pipelineConnections=ToyConnections):
    pass


class ToyTask(pipeBase.PipelineTask):
    ConfigClass = ToyConfig
    _DefaultName = "toy"

    def run(self, sources):
        scores = astropy.table.Table(
            {"id": sources["id"], "score": np.full(len(sources), 0.5, dtype=np.float32)}
        )
        return pipeBase.Struct(scores=scores)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Workers run `pipetask` and `butler` from PATH: the ones of this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).parent), env.get("PYTHONPATH")] if p)
    # BPS puts its submit directory under ${PWD}; a subprocess's cwd does not update PWD.
    env["PWD"] = str(tmp_path)
    env.setdefault("USER", "rbnet")
    # One thread per worker: two workers share two cores with everything else.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


def _run(cmd: list[str], tmp_path: Path, timeout: float = 300) -> str:
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        pytest.fail(f"{' '.join(cmd[:3])} ... exited {proc.returncode}:\n{tail}")
    return proc.stdout + proc.stderr


def _fill(butler: Butler) -> dict[tuple[int, int], np.ndarray]:
    registry = butler.registry
    registry.insertDimensionData(
        "instrument", {"name": INSTRUMENT, "class_name": "toy.Toy", "detector_max": 10, "visit_max": 1000}
    )
    registry.insertDimensionData("physical_filter", {"instrument": INSTRUMENT, "name": "toy_r", "band": "r"})
    registry.insertDimensionData(
        "detector", *[{"instrument": INSTRUMENT, "id": d, "full_name": f"d{d}"} for d in DETECTORS]
    )
    registry.insertDimensionData("day_obs", {"instrument": INSTRUMENT, "id": 20250101})
    registry.insertDimensionData(
        "visit",
        *[
            {"instrument": INSTRUMENT, "id": v, "name": f"v{v}", "physical_filter": "toy_r", "day_obs": 20250101}
            for v in VISITS
        ],
    )
    registry.insertDimensionData(
        "visit_detector_region",
        *[{"instrument": INSTRUMENT, "visit": v, "detector": d} for v in VISITS for d in DETECTORS],
    )
    registry.registerDatasetType(
        DatasetType("toy_sources", ("instrument", "visit", "detector"), "ArrowAstropy", universe=butler.dimensions)
    )
    registry.registerRun(INPUT_RUN)
    ids = {}
    for v in VISITS:
        for d in DETECTORS:
            ids[v, d] = np.arange(7, dtype=np.int64) + 1000 * v + 100 * d
            butler.put(astropy.table.Table({"id": ids[v, d]}), "toy_sources", instrument=INSTRUMENT, visit=v, detector=d, run=INPUT_RUN)
    return ids


def _pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"description: toy\ntasks:\n  computeReliability:\n    class: {__name__}.ToyTask\n")
    return path


def _check_outputs(repo: Path, collection: str, ids: dict) -> None:
    butler = Butler.from_config(str(repo), collections=collection)
    refs = list(butler.query_datasets("toy_scores", collections=collection, explain=False))
    assert sorted((r.dataId["visit"], r.dataId["detector"]) for r in refs) == sorted(ids)
    for ref in refs:
        out = butler.get(ref)
        sources = ids[ref.dataId["visit"], ref.dataId["detector"]]
        np.testing.assert_array_equal(np.asarray(out["id"]), sources)


@pytest.mark.slow
def test_bps_parsl_local(tmp_path):
    repo = tmp_path / "repo"
    Butler.makeRepo(str(repo))
    ids = _fill(Butler.from_config(str(repo), writeable=True))
    output = "u/test/bps"
    log = _run(
        [
            "bps", "submit", str(BPS_CONFIG),
            "-b", str(repo), "-i", INPUT_RUN, "-o", output,
            "-p", str(_pipeline(tmp_path)),
            "-d", f"instrument = '{INSTRUMENT}'",
        ],
        tmp_path,
    )
    assert "tasks_failed_count': 0" in log
    _check_outputs(repo, output, ids)


@pytest.fixture
def pg_url():
    url = postgres_url_from_env()
    if url is None:
        pytest.skip(
            os.environ.get("RBNET_TEST_POSTGRES_SKIP")
            or f"no PostgreSQL server: {POSTGRES_URL_ENV} is unset (run './dev test', or "
            "'source .ci/services.sh; start_services' first)"
        )
    return url


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_multi_writer(tmp_path, pg_url):
    namespace = unique_namespace("test_scaleout")
    repo = tmp_path / "repo"
    try:
        create_postgres_repo(str(repo), pg_url, namespace)
        ids = _fill(Butler.from_config(str(repo), writeable=True))
        output = "u/test/pg"
        _run(
            [
                "pipetask", "run", "-j", "2", "--register-dataset-types",
                "-b", str(repo), "-i", INPUT_RUN, "-o", output,
                "-p", str(_pipeline(tmp_path)),
                "-d", f"instrument = '{INSTRUMENT}'",
            ],
            tmp_path,
        )
        _check_outputs(repo, output, ids)
    finally:
        drop_namespace(pg_url, namespace)


def test_services_never_fail_without_a_server(tmp_path):
    # No server binaries and no way to install them: start_services must still succeed,
    # export no URL and say why, so that the postgres tests skip with that reason.
    script = (
        f"set -euo pipefail; source '{SERVICES}'; "
        "_rbnet_pg_bindir() { :; }; _rbnet_pg_install() { return 1; }; "
        "unset RBNET_TEST_POSTGRES_URL RBNET_PG_DIR; start_services; "
        'echo "url=${RBNET_TEST_POSTGRES_URL:-}"; echo "skip=${RBNET_TEST_POSTGRES_SKIP:-}"; '
        "stop_services; echo stopped"
    )
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "url=" in lines
    assert any(line.startswith("skip=no PostgreSQL server binaries") for line in lines)
    assert lines[-1] == "stopped"
