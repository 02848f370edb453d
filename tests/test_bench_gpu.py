# This file is part of meas_rbnet.
"""``benchmarks/bench_gpu.py`` on a machine without a GPU.

The GPU it is written for is lent for a few minutes, so its code must be known to run
before then: without a GPU it must say so and exit 0 without writing anything, and its
``--cpu-smoke`` mode runs every section at toy sizes on the CPU and writes the report.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _run(args, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu.md"
    proc = _run(["--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU" in proc.stdout
    assert not out.exists()


@pytest.mark.slow
def test_cpu_smoke_runs_every_section(tmp_path):
    out = tmp_path / "gpu.md"
    proc = _run(["--cpu-smoke", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    figures = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    scoring = figures["scoring"]
    assert {c["batch_size"] for c in scoring["cases"]} == {64, 256}
    assert {(c["amp"], c["symmetry"]) for c in scoring["cases"]} >= {("float32", False), ("float32", True)}
    assert all(c["network_per_s"] > 0 and c["finite_fraction"] > 0.9 for c in scoring["cases"])
    assert figures["task"]["n_sources"] == 200 and 0.5 < figures["task"]["scored_fraction"] <= 1
    for label in ("before", "after"):
        assert figures["training"][label]["samples_per_s"] > 0
    assert figures["sequence"]["float32"]["finite_fraction"] == 1.0
    assert "## One training epoch" in text and "## Sequence scorer" in text
