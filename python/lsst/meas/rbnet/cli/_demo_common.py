# This file is part of meas_rbnet.
"""What both demos (`lsst.meas.rbnet.cli.demo` and `lsst.meas.rbnet.cli.demo_sequence`) share.

Setup (the output folder, the demo's repository, the model to score with), the
``pipetask`` runs they have in common, and the pieces of their summaries (flag
counts, the summary table, the files written).
"""

from __future__ import annotations

__all__ = [
    "LABELS_RUN",
    "SCORES_COLLECTION",
    "TRAIN_RUN",
    "DEMO_MARKER",
    "package_root",
    "pipeline_path",
    "is_demo_repo",
    "DemoRun",
    "start_demo",
    "prepare_output",
    "create_demo_repo",
    "echo",
    "progress_bar",
    "run_pipetask",
    "require_default_model",
    "train_triplet_model",
    "run_reliability_pipeline",
    "flag_counts",
    "summary_table",
    "class_table",
    "finish_run",
]

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..fileio import atomic_path, write_atomic

#: Collections both demos write.
LABELS_RUN = "labels/demo"
SCORES_COLLECTION = "demo/scores"
TRAIN_RUN = "demo/train"


def package_root() -> Path:
    """Top directory of the package (holding ``pipelines/`` and ``config/``).

    ``$MEAS_RBNET_DIR`` (set by EUPS) if it is set, else the source tree this module
    was imported from (an editable or in-place install).

    Raises
    ------
    FileNotFoundError
        If neither holds a ``pipelines`` directory.
    """
    candidates = []
    if os.environ.get("MEAS_RBNET_DIR"):
        candidates.append(Path(os.environ["MEAS_RBNET_DIR"]))
    candidates.append(Path(__file__).resolve().parents[5])
    for root in candidates:
        if (root / "pipelines").is_dir():
            return root
    raise FileNotFoundError(
        f"Cannot find the package's pipelines/ directory (looked in {[str(c) for c in candidates]}); "
        "set MEAS_RBNET_DIR to the meas_rbnet source directory."
    )


def pipeline_path(name: str) -> Path:
    """Path of ``pipelines/<name>``."""
    return package_root() / "pipelines" / name


#: File the demo writes into each repository it creates; ``--overwrite`` deletes only such folders.
DEMO_MARKER = ".rbnet-demo-repo"


def is_demo_repo(repo: Path) -> bool:
    """Whether ``repo`` is a Butler repository made by the demo (a real folder with our marker)."""
    return (
        not repo.is_symlink()
        and repo.is_dir()
        and (repo / DEMO_MARKER).is_file()
        and (repo / "butler.yaml").is_file()
    )


def prepare_output(directory, overwrite: bool, console):
    """Console, output directory, fresh repo path and an empty pipetask log for a demo run.

    ``DIRECTORY/repo`` must not exist, or (with ``overwrite``) be a repository that an
    earlier demo made; anything else there (user files, a symbolic link, a dangling one)
    is refused and left alone.
    """
    if console is None:
        from rich.console import Console

        console = Console()
    outdir = Path(directory).absolute()
    if outdir.exists() and not outdir.is_dir():
        raise click.ClickException(f"{outdir} exists and is not a folder.")
    repo = outdir / "repo"
    if repo.is_symlink():
        target = os.readlink(repo)
        state = "" if repo.exists() else ", which does not exist"
        raise click.ClickException(
            f"{repo} is a symbolic link (to {target}{state}); the demo makes its own repository there. "
            "Remove the link or choose another DIRECTORY."
        )
    if repo.exists():
        if not overwrite:
            raise click.ClickException(f"{repo} exists; remove it or pass --overwrite.")
        if not is_demo_repo(repo):
            raise click.ClickException(
                f"{repo} was not made by 'rbnet demo' (no {DEMO_MARKER} file and butler.yaml in it); "
                "--overwrite deletes only a demo's repository. Nothing was deleted: move it or choose "
                "another DIRECTORY."
            )
        shutil.rmtree(repo)
    outdir.mkdir(parents=True, exist_ok=True)
    log_path = outdir / "pipetask.log"
    log_path.write_text("")
    return console, outdir, repo, log_path


@dataclasses.dataclass
class DemoRun:
    """What every step of a demo run uses: where it writes, how it reports, what it has timed."""

    console: Any
    outdir: Path
    repo: Path
    log_path: Path
    jobs: str
    start: float = dataclasses.field(default_factory=time.perf_counter)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)


def start_demo(directory, overwrite: bool, console, jobs: int) -> DemoRun:
    """A demo run writing into ``directory`` (`prepare_output`), its clock started now."""
    console, outdir, repo, log_path = prepare_output(directory, overwrite, console)
    return DemoRun(console, outdir, repo, log_path, jobs=str(max(1, jobs)))


def create_demo_repo(repo: Path, console=None):
    """Create the demo's repository and mark it as the demo's (see `is_demo_repo`); say so on ``console``."""
    # Here and below: the Butler layer imports daf_butler and scoring imports torch, which
    # `rbnet demo --help` does not need.
    from ..butler.repo import create_repo

    butler = create_repo(str(repo))
    (repo / DEMO_MARKER).write_text(
        "Made by 'rbnet demo'; 'rbnet demo --overwrite' may delete this folder.\n"
    )
    if console is not None:
        echo(console, f"Created {repo} (SQLite registry; rbnet storage classes in butler.yaml).")
    return butler


def echo(console, text: str = "", style: str | None = None) -> None:
    """Print ``text`` on the rich ``console`` (plain ``click.echo`` without one)."""
    if console is not None:
        console.print(text, style=style, highlight=False)
    else:
        click.echo(text)


def progress_bar(console):
    """The demos' progress bar (description, bar, count, elapsed time) on ``console``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def run_pipetask(args: list[str], log_path: Path, console) -> float:
    """Run ``pipetask`` as a subprocess, showing its output; return the wall time."""
    exe = shutil.which("pipetask", path=os.path.dirname(sys.executable)) or shutil.which("pipetask")
    cmd = [exe] if exe else [sys.executable, "-m", "lsst.ctrl.mpexec.cli.pipetask"]
    cmd += args
    env = dict(os.environ)
    env["MEAS_RBNET_DIR"] = str(package_root())
    env.setdefault("OMP_NUM_THREADS", "2")
    echo(console, "$ " + " ".join(["pipetask"] + args), style="bold cyan")
    start = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            # Unwrapped, as pipetask prints it.
            console.out("  " + line.rstrip(), style="dim", highlight=False)
        rc = proc.wait()
    seconds = time.perf_counter() - start
    if rc != 0:
        raise click.ClickException(f"pipetask failed (exit code {rc}); its output is in {log_path}.")
    return seconds


def require_default_model() -> Path:
    """Path of the shipped default model; a clear error (use ``--train``) when none is installed."""
    from ..scoring import default_model_path

    path = default_model_path()
    if not Path(path).is_file():
        raise click.ClickException(
            f"No default model is installed ({path}); run the demo with --train to train one first."
        )
    return path


def train_triplet_model(butler, run: DemoRun, *, inputs: str, where: str, what: str):
    """Train a triplet model with ``pipelines/Train.yaml`` (quick config) into `TRAIN_RUN`; register it.

    Returns
    -------
    butler : `lsst.daf.butler.Butler`
        A new writeable client of ``repo`` (it knows the dataset types the pipeline registered).
    package : `lsst.meas.rbnet.package.ModelPackage`
        The trained model, registered as ``pretrained_models/demo-trained``.
    seconds : `float`
        Wall time of the ``pipetask run``.
    """
    from ..butler.repo import register_model

    seconds = run_pipetask(
        [
            "run",
            "-b",
            str(run.repo),
            "-i",
            inputs,
            "--output-run",
            TRAIN_RUN,
            "-p",
            str(pipeline_path("Train.yaml")),
            "-d",
            where,
            "-C",
            f"trainTriplet:{package_root() / 'config' / 'trainQuick.py'}",
            "-j",
            run.jobs,
            "--register-dataset-types",
        ],
        run.log_path,
        run.console,
    )
    butler = type(butler).from_config(str(run.repo), writeable=True)
    package = butler.get("pretrainedModelPackage", collections=TRAIN_RUN)
    register_model(butler, package, name="demo-trained")
    echo(run.console, f"Trained {what} {package.version!r} registered as pretrained_models/demo-trained.")
    return butler, package, seconds


def run_reliability_pipeline(run: DemoRun, *, inputs: str, where: str, config: tuple[str, ...] = ()) -> float:
    """``pipetask run`` of ``pipelines/Demo.yaml`` (the reliability task) into `SCORES_COLLECTION`.

    ``config`` holds ``-c`` overrides (``label:field=value``). Returns the wall time.
    """
    overrides = [arg for item in config for arg in ("-c", item)]
    return run_pipetask(
        [
            "run",
            "-b",
            str(run.repo),
            "-i",
            inputs,
            "-o",
            SCORES_COLLECTION,
            "-p",
            str(pipeline_path("Demo.yaml")),
            "-d",
            where,
            *overrides,
            "-j",
            run.jobs,
            "--register-dataset-types",
        ],
        run.log_path,
        run.console,
    )


def flag_counts(flags, flag_type) -> dict[str, int]:
    """Number of rows with each flag of ``flag_type`` (an `enum.IntFlag`) set, for the flags set at all."""
    import numpy as np

    flags = np.asarray(flags)
    counts = {f.name: int(np.count_nonzero(flags & int(f))) for f in flag_type}
    return {name: n for name, n in counts.items() if n}


def summary_table(title: str, rows, summary: dict[str, Any], timings: dict[str, float]):
    """The demos' summary table: ``rows`` (quantity, value), then flag counts and timings."""
    from rich.table import Table

    t = Table(title=title, show_header=False)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    for row in rows:
        t.add_row(*row)
    for name, n in summary["flags"].items():
        t.add_row(f"flag {name}", str(n))
    for name, seconds in timings.items():
        t.add_row(f"time: {name}", f"{seconds:.1f} s")
    return t


def class_table(title: str, columns, rows):
    """The demos' per-class table: the ``class`` column left-aligned, the figures right-aligned."""
    from rich.table import Table

    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="left" if col == "class" else "right")
    for row in rows:
        t.add_row(*row)
    return t


def finish_run(run: DemoRun, summary, table, *, table_name: str, show):
    """Record the total time and repository in ``summary``, show it with ``show(summary, console,
    outdir, timings)`` (the demo's summary printer), and write ``summary.json`` and ``table`` (as
    ``table_name``) into the run's folder."""
    timings = run.timings
    timings["total"] = time.perf_counter() - run.start
    summary["timings_seconds"] = timings
    summary["repo"] = str(run.repo)
    show(summary, run.console, run.outdir, timings)
    write_atomic(run.outdir / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    with atomic_path(run.outdir / table_name) as tmp:
        table.write(tmp, overwrite=True)
