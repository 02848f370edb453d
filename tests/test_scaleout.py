"""Scale-out: the pipeline through ``bps submit`` (local Parsl site) and against PostgreSQL.

- ``test_bps_parsl_local``: ``bps submit bps/parsl-local.yaml`` on a small SQLite repository;
  every quantum's output must be in the registry afterwards (the final job put it there).
- ``test_postgres_multi_writer``: ``pipetask run -j 2`` (two processes writing to the
  registry at once) on a repository whose registry is in the PostgreSQL server that
  .ci/services.sh starts; skipped, with the reason, when there is none.

Both run the commands as a user would, in subprocesses, on small simulated visits and a tiny
untrained model (tests/rbnet_task_helpers.py), and check the outputs through a fresh Butler.
Two quick tests check the BPS site configurations and that .ci/services.sh never fails a run.
"""

import datetime
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rbnet_task_helpers import tiny_package, tiny_visit

from lsst.daf.butler import Butler
from lsst.meas.rbnet.butler.config import butler_seed_config
from lsst.meas.rbnet.butler.postgres import (
    POSTGRES_URL_ENV,
    create_postgres_repo,
    drop_namespace,
    postgres_url_from_env,
    unique_namespace,
)
from lsst.meas.rbnet.butler.repo import DEFAULT_INSTRUMENT, VisitWriter, create_repo, register_model

ROOT = Path(__file__).resolve().parent.parent
BPS_CONFIG = ROOT / "bps" / "parsl-local.yaml"
PIPELINE = ROOT / "pipelines" / "ApReliability.yaml"
SERVICES = ROOT / ".ci" / "services.sh"

INPUT_RUN = "scaleout/inputs"
INPUTS = f"{INPUT_RUN},pretrained_models"
MODEL_VERSION = "tiny1"


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Workers run `pipetask` and `butler` from PATH: the ones of this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # What EUPS would set; bps/parsl-local.yaml finds the pipeline through it.
    env["MEAS_RBNET_DIR"] = str(ROOT)
    # BPS puts its submit directory under ${PWD}; a subprocess's cwd does not update PWD.
    env["PWD"] = str(tmp_path)
    env.setdefault("USER", "rbnet")
    # One thread per worker: two workers share two cores with everything else.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


def _run(cmd: list[str], tmp_path: Path, timeout: float = 600) -> str:
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        pytest.fail(f"{' '.join(cmd[:2])} exited {proc.returncode}:\n{tail}")
    return proc.stdout + proc.stderr


def _fill(butler: Butler, visits, detectors) -> list[dict]:
    """Write small simulated (visit, detector)s and a tiny model; return their data IDs."""
    writer = VisitWriter(butler, run=INPUT_RUN)
    data_ids = [
        writer.write(tiny_visit(visit=v, detector=d, shape=(96, 96), n_sources=10, seed=7))
        for v in visits
        for d in detectors
    ]
    register_model(butler, tiny_package(version=MODEL_VERSION), name="tiny")
    return data_ids


def _check_outputs(repo: Path, output: str, data_ids: list[dict]) -> None:
    """Every quantum wrote its outputs, row-aligned with its sources."""
    butler = Butler.from_config(str(repo), collections=[output])
    refs = butler.query_datasets("dia_source_reliability", collections=output, explain=False)
    expected = sorted((d["visit"], d["detector"]) for d in data_ids)
    assert sorted((r.dataId["visit"], r.dataId["detector"]) for r in refs) == expected
    for data_id in data_ids:
        sources = butler.get("dia_source_unstandardized", data_id)
        rel = butler.get("dia_source_reliability", data_id)
        assert len(rel) == len(sources) > 0
        np.testing.assert_array_equal(np.asarray(rel["id"]), np.asarray(sources["id"]))
        score = np.asarray(rel["score"], dtype=float)
        finite = np.isfinite(score)
        # Sources off the image cannot be scored (NaN, flagged); the others can.
        assert finite.sum() >= len(score) - 2
        assert np.all((score[finite] >= 0) & (score[finite] <= 1))
        assert set(np.asarray(rel["version"]).tolist()) == {MODEL_VERSION}
        cat = butler.get("dia_source_unstandardized_reliability", data_id)
        np.testing.assert_array_equal(np.asarray(cat["id"]), np.asarray(sources["id"]))
        np.testing.assert_array_equal(np.asarray(cat["reliability"], dtype=float), score)


def _utc(value) -> datetime.datetime:
    return datetime.datetime.fromisoformat(str(value[-1] if isinstance(value, list) else value))


@pytest.mark.slow
def test_bps_parsl_local(tmp_path):
    # SQLite is enough here: BPS workers write files only and the final job registers them.
    repo = tmp_path / "repo"
    data_ids = _fill(create_repo(str(repo)), visits=(1,), detectors=(0, 1))
    output = "u/test/bps"
    # The shipped config as documented: pipeline from MEAS_RBNET_DIR, the rest on the command line.
    log = _run(
        [
            "bps",
            "submit",
            str(BPS_CONFIG),
            "-b",
            str(repo),
            "-i",
            INPUTS,
            "-o",
            output,
            "-d",
            f"instrument = '{DEFAULT_INSTRUMENT}'",
        ],
        tmp_path,
    )
    # bps submit exits 0 even when jobs fail: read Parsl's summary at shutdown.
    shutdown = [line for line in log.splitlines() if "Workflow shutdown information" in line]
    assert len(shutdown) == 1 and "'tasks_failed_count': 0," in shutdown[0], log[-3000:]
    _check_outputs(repo, output, data_ids)
    # The quanta ran as BPS jobs, through the Parsl executor, one job per quantum.
    assert log.count("launched on executor local") == len(data_ids)


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
        create_postgres_repo(str(repo), pg_url, namespace, seed=butler_seed_config())
        data_ids = _fill(Butler.from_config(str(repo), writeable=True), visits=(1, 2), detectors=(0,))
        output = "u/test/pg"
        # Two worker processes, each with its own registry connection, writing at once.
        _run(
            [
                "pipetask",
                "run",
                "-j",
                "2",
                "--register-dataset-types",
                "-b",
                str(repo),
                "-i",
                INPUTS,
                "-o",
                output,
                "-p",
                str(PIPELINE),
                "-d",
                f"instrument = '{DEFAULT_INSTRUMENT}'",
            ],
            tmp_path,
        )
        _check_outputs(repo, output, data_ids)
        # The workers really ran at the same time: at least two quanta's lifetimes overlap.
        butler = Butler.from_config(str(repo), collections=[output])
        spans = []
        for data_id in data_ids:
            quantum = butler.get("computeReliability_metadata", data_id)["quantum"]
            spans.append((_utc(quantum["prepUtc"]), _utc(quantum["endUtc"])))
        spans.sort()
        assert any(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1)), spans
    finally:
        drop_namespace(pg_url, namespace)


def test_bps_site_configs():
    import yaml

    from lsst.ctrl.bps import BpsConfig
    from lsst.pipe.base import Pipeline

    labels = set(Pipeline.from_uri(str(PIPELINE)).to_graph().tasks.keys())
    local = BpsConfig(str(BPS_CONFIG))
    assert local["wmsServiceClass"] == "lsst.ctrl.bps.parsl.ParslService"
    site = local[f".site.{local['computeSite']}"]
    assert site["class"] == "lsst.ctrl.bps.parsl.sites.Local" and site["cores"] == 2
    assert local[".finalJob.requestCpus"] <= 2

    htcondor = BpsConfig(str(ROOT / "bps" / "htcondor.yaml"))
    assert htcondor["wmsServiceClass"] == "lsst.ctrl.bps.htcondor.HTCondorService"
    # The batch configs cluster the reliability label of the shipped pipeline, per visit.
    # (panda.yaml includes ctrl_bps_panda's own files, so read it as plain YAML.)
    panda = yaml.safe_load((ROOT / "bps" / "panda.yaml").read_text())
    assert panda["wmsServiceClass"] == "lsst.ctrl.bps.panda.PanDAService"
    for cluster in (htcondor[".cluster"], panda["cluster"]):
        for section in cluster.values():
            assert set(section["pipetasks"].split(",")) <= labels
            assert section["dimensions"] == "visit"


def test_task_import_registers_storage_classes():
    # BPS jobs run "pipetask run-qbb", which resolves the graph's storage classes before it
    # reads any repository config: importing the tasks must be enough (no
    # DAF_BUTLER_CONFIG_PATH in any site config). Run in a fresh interpreter so that no
    # other test has registered them first.
    code = (
        "from lsst.daf.butler import StorageClassFactory as F\n"
        "assert 'RBNetMaskedImage' not in F()\n"
        "import lsst.meas.rbnet.tasks.reliability\n"
        "assert F().getStorageClass('RBNetMaskedImage').pytype.__name__ == 'MaskedImage'\n"
        "assert F().getStorageClass('RBNetModelPackage').pytype.__name__ == 'ModelPackage'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DAF_BUTLER_CONFIG_PATH"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


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
