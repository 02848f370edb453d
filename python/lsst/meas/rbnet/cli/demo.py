# This file is part of meas_rbnet.
"""``rbnet demo``: the whole job on simulated data, with the real pipeline tools.

1. Create a local Butler repository (SQLite) that knows this package's storage classes.
2. Simulate visits (a few detectors each) and write them as the datasets Alert
   Production makes (``preliminary_visit_image``, ``template_detector``,
   ``difference_image``, ``dia_source_unstandardized``); ingest their truth as labels.
3. Register the shipped default model in ``pretrained_models/default``, or, with
   ``--train``, simulate separate training visits, run ``pipelines/Train.yaml`` with
   ``pipetask`` and register the model it makes.
4. Run ``pipelines/Demo.yaml`` (the reliability task) with a real ``pipetask run``
   subprocess, whose output the user sees.
5. Read the scores back, compare with the truth and print a summary (ROC-AUC, purity
   and completeness at the model's default threshold, flag counts, per class), and
   write plots (ROC, score histograms per class) and ``summary.json`` into DIR.

With ``--sequence`` the demo is about objects over many visits instead
(`run_sequence_demo`): two simulated series of the same objects, the reliability
pipeline writing cutouts, ``pipelines/TrainSequence.yaml`` training the sequence model,
``pipelines/Sequence.yaml`` scoring objects per htm7 trixel, and a per-object comparison
of the sequence model with the maximum and the mean of the single-visit scores.
"""

from __future__ import annotations

__all__ = ["demo", "run_demo", "run_sequence_demo", "package_root", "pipeline_path"]

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

#: Collections the demo writes.
SIM_RUN = "demo/sim"
TRAIN_SIM_RUN = "demo/train-sim"
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


def _is_demo_repo(repo: Path) -> bool:
    """Whether ``repo`` is a Butler repository made by the demo (a real folder with our marker)."""
    return (
        not repo.is_symlink()
        and repo.is_dir()
        and (repo / DEMO_MARKER).is_file()
        and (repo / "butler.yaml").is_file()
    )


def _prepare_output(directory, overwrite: bool, console):
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
        if not _is_demo_repo(repo):
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


def _create_demo_repo(repo: Path):
    """Create the demo's repository and mark it as the demo's (see `_is_demo_repo`)."""
    from ..butler.repo import create_repo

    butler = create_repo(str(repo))
    (repo / DEMO_MARKER).write_text("Made by 'rbnet demo'; 'rbnet demo --overwrite' may delete this folder.\n")
    return butler


def _echo(console, text: str = "", style: str | None = None) -> None:
    if console is not None:
        console.print(text, style=style, highlight=False)
    else:
        click.echo(text)


def _simulate(seed: int, visit: int, detector: int, size: int, n_sources: int | None):
    """One simulated (visit, detector); the simulator makes ids unique per (visit, detector).

    All visits point at one field (with a small dither) and the detectors of a visit
    tile the focal plane on a 4-wide grid, so visit regions are compact as in real data.
    """
    import numpy as np

    from ..sim.visit import simulate_visit

    pixel_scale = 0.2
    rng = np.random.default_rng([seed, visit])
    ra0, dec0 = 150.0 + rng.normal(0, 0.005), 2.0 + rng.normal(0, 0.005)
    step = size * pixel_scale / 3600.0 * 1.05
    col, row = detector % 4, detector // 4
    kwargs: dict[str, Any] = {
        "shape": (size, size),
        "visit": visit,
        "detector": detector,
        "pixel_scale": pixel_scale,
        "ra": ra0 + col * step / np.cos(np.radians(dec0)),
        "dec": dec0 + row * step,
        "rotation": 0.0,
        # One epoch per visit, shared by its detectors (a night in 2026, one visit a night).
        "mjd": 61041.2 + visit,
    }
    if n_sources is not None:
        kwargs["n_sources"] = n_sources
    return simulate_visit(seed * 100_003 + visit * 1009 + detector, **kwargs)


def _write_visits(writer, visits, detectors, *, size, n_sources, seed, console, what) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    total = 0
    jobs = [(v, d) for v in visits for d in detectors]
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"Simulating {what}", total=len(jobs))
        for v, d in jobs:
            sim = _simulate(seed, v, d, size, n_sources)
            writer.write(sim, visit=v, detector=d)
            total += len(sim.sources)
            progress.advance(task)
    return total


def _pipetask(args: list[str], log_path: Path, console) -> float:
    """Run ``pipetask`` as a subprocess, showing its output; return the wall time."""
    exe = shutil.which("pipetask", path=os.path.dirname(sys.executable)) or shutil.which("pipetask")
    cmd = [exe] if exe else [sys.executable, "-m", "lsst.ctrl.mpexec.cli.pipetask"]
    cmd += args
    env = dict(os.environ)
    env["MEAS_RBNET_DIR"] = str(package_root())
    env.setdefault("OMP_NUM_THREADS", "2")
    _echo(console, "$ " + " ".join(["pipetask"] + args), style="bold cyan")
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


def _collect(butler, collections, instrument: str):
    """Scores of every scored (visit, detector) joined with the labels, row by row."""
    import astropy.table
    import numpy as np

    from ..butler.repo import LABELS_DATASET_TYPE

    labels = butler.get(LABELS_DATASET_TYPE, {"instrument": instrument}, collections=LABELS_RUN)
    label_index = {int(i): k for k, i in enumerate(np.asarray(labels["id"]))}
    refs = sorted(
        butler.registry.queryDatasets("dia_source_reliability", collections=collections),
        key=lambda r: (r.dataId["visit"], r.dataId["detector"]),
    )
    tables = []
    for ref in refs:
        rel = butler.get(ref)
        src = butler.get("dia_source_unstandardized", ref.dataId, collections=collections)
        if not np.array_equal(np.asarray(rel["id"]), np.asarray(src["id"])):
            raise RuntimeError(f"dia_source_reliability {ref.dataId} is not row-aligned with its sources.")
        rows = np.array([label_index.get(int(i), -1) for i in rel["id"]])
        t = astropy.table.Table()
        t["id"] = rel["id"]
        t["score"] = rel["score"]
        t["flags"] = rel["reliabilityFlags"]
        t["version"] = rel["version"]
        t["label"] = np.where(rows >= 0, np.asarray(labels["label"])[np.maximum(rows, 0)], -1)
        if "source_class" in labels.colnames:
            t["source_class"] = np.where(
                rows >= 0, np.asarray(labels["source_class"]).astype(str)[np.maximum(rows, 0)], ""
            )
        else:
            t["source_class"] = np.where(t["label"] == 1, "real", "bogus")
        t["snr"] = np.asarray(src["snr"], float) if "snr" in src.colnames else np.nan
        t["visit"] = ref.dataId["visit"]
        t["detector"] = ref.dataId["detector"]
        tables.append(t)
    if not tables:
        raise click.ClickException("The pipeline wrote no dia_source_reliability datasets.")
    return astropy.table.vstack(tables), len(refs)


def _summarise(table, threshold: float, outdir: Path, console) -> dict[str, Any]:
    import numpy as np

    from ..flags import SourceFlag
    from ..training import metrics as M
    from ..training.plots import plot_roc, plot_score_histograms

    scores = np.asarray(table["score"], float)
    labels = np.asarray(table["label"])
    flags = np.asarray(table["flags"])
    scored = np.isfinite(scores) & (labels >= 0)
    s, y = scores[scored], labels[scored]
    summary: dict[str, Any] = {
        "sources": int(len(table)),
        "scored": int(np.count_nonzero(np.isfinite(scores))),
        "unscorable": int(np.count_nonzero(~np.isfinite(scores))),
        "labelled_real": int(np.count_nonzero(labels == 1)),
        "labelled_bogus": int(np.count_nonzero(labels == 0)),
        "threshold": threshold,
        "versions": sorted(set(np.asarray(table["version"]).astype(str).tolist())),
    }
    if len(np.unique(y)) == 2:
        summary["roc_auc"] = M.roc_auc(s, y)
        purity, completeness = M.purity_completeness(s, y, threshold)
        summary["purity"], summary["completeness"] = purity, completeness
        summary["accuracy"] = M.accuracy(s, y, threshold)
        snr = np.asarray(table["snr"], float)[scored]
        bright = np.isfinite(snr) & (snr >= 6)
        if bright.any() and len(np.unique(y[bright])) == 2:
            summary["roc_auc_snr6"] = M.roc_auc(s[bright], y[bright])
        summary["classes"] = M.class_fractions(
            s, y, np.asarray(table["source_class"]).astype(str)[scored], threshold
        )
        plot_roc({summary["versions"][0] if summary["versions"] else "model": (s, y)}, outdir / "roc.png")
    plot_score_histograms(
        s,
        np.asarray(table["source_class"]).astype(str)[scored],
        outdir / "score_histograms.png",
        threshold=threshold,
    )
    summary["flags"] = {
        f.name: int(np.count_nonzero(flags & int(f))) for f in SourceFlag if np.count_nonzero(flags & int(f))
    }
    return summary


def _print_summary(summary: dict[str, Any], console, outdir: Path, timings: dict[str, float]) -> None:
    from rich.table import Table

    t = Table(title="Reliability vs the simulated truth", show_header=False)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("model version", ", ".join(summary["versions"]))
    t.add_row(
        "sources scored", f"{summary['scored']} of {summary['sources']} ({summary['unscorable']} unscorable)"
    )
    t.add_row("truth", f"{summary['labelled_real']} real, {summary['labelled_bogus']} bogus")
    if "roc_auc" in summary:
        t.add_row("ROC-AUC", f"{summary['roc_auc']:.4f}")
        if "roc_auc_snr6" in summary:
            t.add_row("ROC-AUC (SNR >= 6)", f"{summary['roc_auc_snr6']:.4f}")
        t.add_row(f"purity at {summary['threshold']:.3g}", f"{summary['purity']:.4f}")
        t.add_row(f"completeness at {summary['threshold']:.3g}", f"{summary['completeness']:.4f}")
        t.add_row("accuracy", f"{summary['accuracy']:.4f}")
    for name, n in summary["flags"].items():
        t.add_row(f"flag {name}", str(n))
    for name, seconds in timings.items():
        t.add_row(f"time: {name}", f"{seconds:.1f} s")
    console.print(t)
    if "classes" in summary:
        c = Table(title=f"Per class at threshold {summary['threshold']:.3g}")
        for col in ("class", "n", "selected as real", "mean score"):
            c.add_column(col, justify="right" if col != "class" else "left")
        for name, d in summary["classes"].items():
            c.add_row(name, str(d["n"]), f"{d['fraction_above']:.1%}", f"{d['mean_score']:.3f}")
        console.print(c)
    console.print(f"Plots and summary.json are in {outdir}/ (roc.png, score_histograms.png).")


def run_demo(
    directory: str | os.PathLike,
    *,
    detectors: int = 4,
    visits: int = 2,
    train: bool = False,
    train_visits: int = 4,
    seed: int = 0,
    size: int = 1024,
    n_sources: int | None = None,
    jobs: int = 1,
    overwrite: bool = False,
    console=None,
) -> dict[str, Any]:
    """Run the demo (see the module docstring); return the summary written to ``summary.json``."""
    import astropy.table

    from ..butler.repo import DEFAULT_INSTRUMENT, VisitWriter, ingest_labels, register_model

    console, outdir, repo, log_path = _prepare_output(directory, overwrite, console)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    console.rule("[bold]1. Butler repository")
    butler = _create_demo_repo(repo)
    _echo(console, f"Created {repo} (SQLite registry; rbnet storage classes in butler.yaml).")

    console.rule("[bold]2. Simulated visits")
    t0 = time.perf_counter()
    writer = VisitWriter(butler, run=SIM_RUN)
    visit_ids = list(range(1, visits + 1))
    detector_ids = list(range(detectors))
    n = _write_visits(
        writer,
        visit_ids,
        detector_ids,
        size=size,
        n_sources=n_sources,
        seed=seed,
        console=console,
        what="visits",
    )
    labels = writer.labels()
    timings["simulate and write"] = time.perf_counter() - t0
    _echo(
        console, f"Wrote {len(visit_ids)} visits x {len(detector_ids)} detectors ({n} sources) to {SIM_RUN}."
    )

    train_inputs = None
    if train:
        t0 = time.perf_counter()
        twriter = VisitWriter(butler, run=TRAIN_SIM_RUN)
        train_ids = list(range(101, 101 + train_visits))
        nt = _write_visits(
            twriter,
            train_ids,
            detector_ids,
            size=size,
            n_sources=n_sources,
            seed=seed + 7,
            console=console,
            what="training visits",
        )
        labels = astropy.table.vstack([labels, twriter.labels()], join_type="outer")
        timings["simulate training visits"] = time.perf_counter() - t0
        _echo(console, f"Wrote {len(train_ids)} training visits ({nt} sources) to {TRAIN_SIM_RUN}.")
        train_inputs = train_ids
    ingest_labels(butler, labels, run=LABELS_RUN, instrument=DEFAULT_INSTRUMENT)
    _echo(console, f"Ingested {len(labels)} truth labels as rbnet_labels in {LABELS_RUN}.")

    console.rule("[bold]3. Model")
    if train:
        t0 = time.perf_counter()
        where = f"instrument='{DEFAULT_INSTRUMENT}' AND visit >= {min(train_inputs)}"
        timings["pipetask (train)"] = _pipetask(
            [
                "run",
                "-b",
                str(repo),
                "-i",
                f"{TRAIN_SIM_RUN},{LABELS_RUN}",
                "--output-run",
                TRAIN_RUN,
                "-p",
                str(pipeline_path("Train.yaml")),
                "-d",
                where,
                "-C",
                f"trainTriplet:{package_root() / 'config' / 'trainQuick.py'}",
                "-j",
                str(max(1, jobs)),
                "--register-dataset-types",
            ],
            log_path,
            console,
        )
        butler = type(butler).from_config(str(repo), writeable=True)
        package = butler.get("pretrainedModelPackage", collections=TRAIN_RUN)
        register_model(butler, package, name="demo-trained")
        _echo(console, f"Trained model {package.version!r} registered as pretrained_models/demo-trained.")
        timings["train (total)"] = time.perf_counter() - t0
    else:
        from ..scoring import default_model_path

        path = default_model_path()
        if not Path(path).is_file():
            raise click.ClickException(
                f"No default model is installed ({path}); run the demo with --train to train one first."
            )
        register_model(butler, str(path), name="default")
        _echo(console, f"Registered {Path(path).name} as pretrained_models/default.")

    console.rule("[bold]4. pipetask run: the reliability pipeline")
    where = f"instrument='{DEFAULT_INSTRUMENT}' AND visit <= {max(visit_ids)}"
    timings["pipetask (score)"] = _pipetask(
        [
            "run",
            "-b",
            str(repo),
            "-i",
            f"{SIM_RUN},pretrained_models",
            "-o",
            SCORES_COLLECTION,
            "-p",
            str(pipeline_path("Demo.yaml")),
            "-d",
            where,
            "-j",
            str(max(1, jobs)),
            "--register-dataset-types",
        ],
        log_path,
        console,
    )

    console.rule("[bold]5. Results")
    from lsst.daf.butler import Butler

    reader = Butler.from_config(str(repo))
    table, n_quanta = _collect(reader, SCORES_COLLECTION, DEFAULT_INSTRUMENT)
    package = reader.get("pretrainedModelPackage", collections="pretrained_models")
    try:
        threshold = package.threshold("default")
    except KeyError:
        threshold = 0.5
    summary = _summarise(table, threshold, outdir, console)
    summary["quanta"] = n_quanta
    timings["total"] = time.perf_counter() - start
    summary["timings_seconds"] = timings
    summary["repo"] = str(repo)
    _print_summary(summary, console, outdir, timings)
    write_atomic(outdir / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    with atomic_path(outdir / "scores.parquet") as tmp:
        table.write(tmp, overwrite=True)
    return summary


# ----------------------------------------------------------------------
# --sequence: the multi-visit model
# ----------------------------------------------------------------------

#: Collections of the sequence demo.
SEQ_SIM_RUN = "demo/series"
SEQ_DETECTION_LABELS_RUN = "labels/demo-detections"
SEQ_TRAIN_RUN = "demo/train-sequence"
SEQ_SCORES_COLLECTION = "demo/sequence"

#: First visit ids of the training and the scoring series (distinct visits, distinct fields).
SEQ_TRAIN_FIRST_VISIT = 1
SEQ_SCORE_FIRST_VISIT = 1001

#: Side of the cutouts the reliability task writes for the sequence model (its frames are 28 pixels).
SEQ_CUTOUT_SIZE = 29


def _write_series(writer, *, n_visits, n_objects, seed, first_visit, detector, size, ra, dec, console, what):
    """Simulate one multi-visit series of one detector and write it; return its visits' source tables."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..sim import simulate_visit_series

    with console.status(f"Simulating {what} ({n_visits} visits, {n_objects} objects) ..."):
        series = simulate_visit_series(
            n_visits,
            seed,
            shape=(size, size),
            n_objects=n_objects,
            first_visit=first_visit,
            detector=detector,
            ra=ra,
            dec=dec,
            rotation=0.0,
        )
    tables = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"Writing {what}", total=len(series))
        for sim in series:
            writer.write(sim)
            tables.append((sim.metadata.mjd, sim.sources))
            progress.advance(task)
    return tables


def _object_truth(tables):
    """Label and class of each diaObjectId of a series (the simulator's truth)."""
    import numpy as np

    truth = {}
    for _, src in tables:
        for oid, label, cls in zip(
            np.asarray(src["diaObjectId"]), np.asarray(src["label"]), src["source_class"]
        ):
            truth.setdefault(int(oid), (int(label), str(cls)))
    return truth


def _sequence_summary(objects, truth, outdir: Path) -> dict[str, Any]:
    import numpy as np

    from ..flags import ObjectFlag
    from ..training import metrics as M
    from ..training.plots import plot_roc

    ids = np.asarray(objects["objectId"])
    labels = np.array([truth.get(int(i), (-1, ""))[0] for i in ids])
    classes = np.array([truth.get(int(i), (-1, ""))[1] for i in ids])
    flags = np.asarray(objects["flags"])
    scores = {
        "sequence model": np.asarray(objects["reliability"], float),
        "max of single-visit scores": np.asarray(objects["tripletReliabilityMax"], float),
        "mean of single-visit scores": np.asarray(objects["tripletReliabilityMean"], float),
    }
    usable = labels >= 0
    for s in scores.values():
        usable &= np.isfinite(s)
    y = labels[usable]
    summary: dict[str, Any] = {
        "objects": int(len(ids)),
        "objects_scored": int(np.count_nonzero(np.isfinite(scores["sequence model"]))),
        "objects_compared": int(np.count_nonzero(usable)),
        "real": int(np.count_nonzero(y == 1)),
        "bogus": int(np.count_nonzero(y == 0)),
        "visits_per_object_median": float(np.median(objects["nVisits"])) if len(ids) else 0.0,
        "versions": sorted(set(np.asarray(objects["reliabilityVersion"]).astype(str).tolist())),
        "flags": {
            f.name: int(np.count_nonzero(flags & int(f))) for f in ObjectFlag if np.any(flags & int(f))
        },
    }
    if len(np.unique(y)) == 2:
        summary["roc_auc"] = {name: M.roc_auc(s[usable], y) for name, s in scores.items()}
        summary["accuracy_at_0.5"] = {name: M.accuracy(s[usable], y, 0.5) for name, s in scores.items()}
        plot_roc(
            {name: (s[usable], y) for name, s in scores.items()},
            outdir / "sequence_roc.png",
            title="Objects: sequence model vs single-visit scores",
        )
        per_class = {}
        for name in sorted(set(classes[usable].tolist())):
            sel = classes[usable] == name
            per_class[name] = {
                "n": int(sel.sum()),
                "label": int(y[sel][0]),
                "sequence_mean": float(np.mean(scores["sequence model"][usable][sel])),
                "max_single_mean": float(np.mean(scores["max of single-visit scores"][usable][sel])),
            }
        summary["classes"] = per_class
    return summary


def _print_sequence_summary(summary, console, outdir: Path, timings: dict[str, float]) -> None:
    from rich.table import Table

    t = Table(title="Objects: sequence model vs single-visit (triplet) scores", show_header=False)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("sequence model version", ", ".join(summary["versions"]))
    t.add_row("objects", f"{summary['objects']} ({summary['objects_scored']} scored)")
    t.add_row("truth (compared objects)", f"{summary['real']} real, {summary['bogus']} bogus")
    t.add_row("visits per object (median)", f"{summary['visits_per_object_median']:.0f}")
    for name, auc in summary.get("roc_auc", {}).items():
        t.add_row(f"ROC-AUC: {name}", f"{auc:.4f}")
    for name, acc in summary.get("accuracy_at_0.5", {}).items():
        t.add_row(f"accuracy at 0.5: {name}", f"{acc:.4f}")
    for name, n in summary["flags"].items():
        t.add_row(f"flag {name}", str(n))
    for name, seconds in timings.items():
        t.add_row(f"time: {name}", f"{seconds:.1f} s")
    console.print(t)
    if "classes" in summary:
        c = Table(title="Mean object score per class")
        for col in ("class", "label", "n", "sequence", "max single-visit"):
            c.add_column(col, justify="left" if col == "class" else "right")
        for name, d in summary["classes"].items():
            c.add_row(
                name, str(d["label"]), str(d["n"]), f"{d['sequence_mean']:.3f}", f"{d['max_single_mean']:.3f}"
            )
        console.print(c)
    console.print(f"sequence_roc.png, objects.parquet and summary.json are in {outdir}/.")


def run_sequence_demo(
    directory: str | os.PathLike,
    *,
    visits: int = 12,
    objects: int = 200,
    train: bool = False,
    seed: int = 0,
    size: int = 1024,
    jobs: int = 1,
    overwrite: bool = False,
    train_config: str | os.PathLike | None = None,
    console=None,
) -> dict[str, Any]:
    """The multi-visit demo (``rbnet demo --sequence``); return the summary written to ``summary.json``.

    1. A new repository; two simulated multi-visit series of one detector each (the same
       objects over ``visits`` visits, ``diaObjectId`` in the source tables): one to train
       on (visits 1..), one to score (visits 1001..), in different fields.
    2. A triplet model: the shipped default, or with ``train`` one trained by ``Train.yaml``
       on the training series' detections (sources whose object is present in the visit).
    3. ``Demo.yaml`` (the reliability task with cutouts) on every visit.
    4. ``TrainSequence.yaml`` on the training visits (``config/trainSequenceQuick.py`` unless
       ``train_config`` names another file); the package is registered as
       ``pretrained_models/demo-sequence``.
    5. ``Sequence.yaml`` on the scoring visits (one quantum per htm7 trixel).
    6. Per object: ROC-AUC of the sequence model against the maximum and the mean of the
       object's single-visit scores, using the simulator's truth.
    """
    import astropy.table
    import numpy as np

    from ..butler.repo import (
        DEFAULT_INSTRUMENT,
        VisitWriter,
        ingest_labels,
        labels_table,
        register_model,
    )
    from ..tasks.sequence import SEQUENCE_MODEL_DATASET_TYPE, SEQUENCE_RELIABILITY_DATASET_TYPE

    console, outdir, repo, log_path = _prepare_output(directory, overwrite, console)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    jobs_arg = str(max(1, jobs))
    train_ids = list(range(SEQ_TRAIN_FIRST_VISIT, SEQ_TRAIN_FIRST_VISIT + visits))
    score_ids = list(range(SEQ_SCORE_FIRST_VISIT, SEQ_SCORE_FIRST_VISIT + visits))
    if not train:
        from ..scoring import default_model_path

        default = default_model_path()
        if not Path(default).is_file():
            raise click.ClickException(
                f"No default model is installed ({default}); run the demo with --train to train one first."
            )

    console.rule("[bold]1. Butler repository and simulated series")
    butler = _create_demo_repo(repo)
    _echo(console, f"Created {repo} (SQLite registry; rbnet storage classes in butler.yaml).")
    t0 = time.perf_counter()
    writer = VisitWriter(butler, run=SEQ_SIM_RUN)
    train_tables = _write_series(
        writer,
        n_visits=visits,
        n_objects=objects,
        seed=2 * seed + 1,
        first_visit=train_ids[0],
        detector=0,
        size=size,
        ra=150.0,
        dec=2.0,
        console=console,
        what="the training series",
    )
    score_tables = _write_series(
        writer,
        n_visits=visits,
        n_objects=objects,
        seed=2 * seed + 2,
        first_visit=score_ids[0],
        detector=1,
        size=size,
        ra=150.5,
        dec=2.0,
        console=console,
        what="the scoring series",
    )
    ingest_labels(butler, writer.labels(), run=LABELS_RUN, instrument=DEFAULT_INSTRUMENT)
    timings["simulate and write"] = time.perf_counter() - t0
    _echo(
        console,
        f"Wrote 2 series x {visits} visits x {objects} objects to {SEQ_SIM_RUN}; object labels in "
        f"{LABELS_RUN}.",
    )

    console.rule("[bold]2. Single-visit (triplet) model")
    if train:
        t0 = time.perf_counter()
        detections = [
            labels_table(src[np.asarray(src["present"], bool)], mjd=mjd) for mjd, src in train_tables
        ]
        ingest_labels(
            butler,
            astropy.table.vstack(detections),
            run=SEQ_DETECTION_LABELS_RUN,
            instrument=DEFAULT_INSTRUMENT,
        )
        timings["pipetask (train triplet)"] = _pipetask(
            [
                "run",
                "-b",
                str(repo),
                "-i",
                f"{SEQ_SIM_RUN},{SEQ_DETECTION_LABELS_RUN}",
                "--output-run",
                TRAIN_RUN,
                "-p",
                str(pipeline_path("Train.yaml")),
                "-d",
                f"instrument='{DEFAULT_INSTRUMENT}' AND visit <= {train_ids[-1]}",
                "-C",
                f"trainTriplet:{package_root() / 'config' / 'trainQuick.py'}",
                "-j",
                jobs_arg,
                "--register-dataset-types",
            ],
            log_path,
            console,
        )
        butler = type(butler).from_config(str(repo), writeable=True)
        package = butler.get("pretrainedModelPackage", collections=TRAIN_RUN)
        register_model(butler, package, name="demo-trained")
        _echo(
            console,
            f"Trained triplet model {package.version!r} registered as pretrained_models/demo-trained.",
        )
    else:
        register_model(butler, str(default), name="default")
        _echo(console, f"Registered {Path(default).name} as pretrained_models/default.")

    console.rule("[bold]3. pipetask run: the reliability pipeline, writing cutouts")
    timings["pipetask (score visits)"] = _pipetask(
        [
            "run",
            "-b",
            str(repo),
            "-i",
            f"{SEQ_SIM_RUN},pretrained_models",
            "-o",
            SCORES_COLLECTION,
            "-p",
            str(pipeline_path("Demo.yaml")),
            "-d",
            f"instrument='{DEFAULT_INSTRUMENT}'",
            "-c",
            f"computeReliability:cutoutSize={SEQ_CUTOUT_SIZE}",
            "-j",
            jobs_arg,
            "--register-dataset-types",
        ],
        log_path,
        console,
    )

    console.rule("[bold]4. pipetask run: train the sequence model")
    config_file = Path(train_config) if train_config else package_root() / "config" / "trainSequenceQuick.py"
    timings["pipetask (train sequence)"] = _pipetask(
        [
            "run",
            "-b",
            str(repo),
            "-i",
            f"{SCORES_COLLECTION},{LABELS_RUN}",
            "--output-run",
            SEQ_TRAIN_RUN,
            "-p",
            str(pipeline_path("TrainSequence.yaml")),
            "-d",
            f"instrument='{DEFAULT_INSTRUMENT}' AND visit <= {train_ids[-1]}",
            "-C",
            f"trainSequence:{config_file}",
            "--register-dataset-types",
        ],
        log_path,
        console,
    )
    butler = type(butler).from_config(str(repo), writeable=True)
    seq_package = butler.get(SEQUENCE_MODEL_DATASET_TYPE, collections=SEQ_TRAIN_RUN)
    register_model(butler, seq_package, name="demo-sequence", dataset_type=SEQUENCE_MODEL_DATASET_TYPE)
    metrics = butler.get("rbnet_sequence_training_metrics", collections=SEQ_TRAIN_RUN)
    held = metrics.get("metrics", {})
    _echo(
        console,
        f"Sequence model {seq_package.version!r} trained on {metrics['n_train_objects']} objects "
        f"({metrics['n_frames']} frames); held-out ROC-AUC {held.get('roc_auc', float('nan')):.4f} "
        f"on {held.get('n_eval', 0)} objects; registered as pretrained_models/demo-sequence.",
    )

    console.rule("[bold]5. pipetask run: the sequence pipeline (one quantum per htm7 trixel)")
    timings["pipetask (sequence)"] = _pipetask(
        [
            "run",
            "-b",
            str(repo),
            "-i",
            f"{SCORES_COLLECTION},pretrained_models",
            "-o",
            SEQ_SCORES_COLLECTION,
            "-p",
            str(pipeline_path("Sequence.yaml")),
            "-d",
            f"instrument='{DEFAULT_INSTRUMENT}' AND visit >= {score_ids[0]}",
            "-j",
            jobs_arg,
            "--register-dataset-types",
        ],
        log_path,
        console,
    )

    console.rule("[bold]6. Results per object")
    from lsst.daf.butler import Butler

    reader = Butler.from_config(str(repo))
    refs = list(
        reader.registry.queryDatasets(SEQUENCE_RELIABILITY_DATASET_TYPE, collections=SEQ_SCORES_COLLECTION)
    )
    if not refs:
        raise click.ClickException(
            f"The sequence pipeline wrote no {SEQUENCE_RELIABILITY_DATASET_TYPE} datasets."
        )
    objects = astropy.table.vstack([reader.get(ref) for ref in refs])
    objects.sort("objectId")
    if len(np.unique(objects["objectId"])) != len(objects):
        raise click.ClickException("An object was scored by more than one partition.")
    summary = _sequence_summary(objects, _object_truth(score_tables), outdir)
    summary["partitions"] = len(refs)
    summary["training_metrics"] = metrics
    timings["total"] = time.perf_counter() - start
    summary["timings_seconds"] = timings
    summary["repo"] = str(repo)
    _print_sequence_summary(summary, console, outdir, timings)
    write_atomic(outdir / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    with atomic_path(outdir / "objects.parquet") as tmp:
        objects.write(tmp, overwrite=True)
    return summary


@click.command("demo")
@click.argument("directory", default="demo", required=False)
@click.option(
    "--detectors", default=4, show_default=True, type=click.IntRange(1, 100), help="Detectors per visit."
)
@click.option("--visits", default=2, show_default=True, type=click.IntRange(1, 100), help="Visits to score.")
@click.option("--train", is_flag=True, help="Train a model with the Train pipeline first and score with it.")
@click.option(
    "--train-visits",
    default=4,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Training visits (--train).",
)
@click.option("--seed", default=0, show_default=True, help="Random seed of the simulation.")
@click.option(
    "--size", default=1024, show_default=True, type=click.IntRange(128, 4096), help="Detector side (pixels)."
)
@click.option(
    "--sources",
    "n_sources",
    default=None,
    type=click.IntRange(1, 100_000),
    help="Sources per detector (simulator's default).",
)
@click.option(
    "-j", "--jobs", default=1, show_default=True, type=click.IntRange(1, 64), help="Processes for pipetask run -j."
)
@click.option("--overwrite", is_flag=True, help="Replace DIRECTORY/repo if it exists.")
@click.option(
    "--sequence",
    is_flag=True,
    help="The multi-visit demo instead: simulate two series of visits of the same objects, score them, "
    "train the sequence model with the TrainSequence pipeline and score objects with the Sequence pipeline "
    "(--visits visits per series, default 12 here; --size; --train for the triplet model).",
)
@click.option(
    "--objects",
    "n_objects",
    default=200,
    show_default=True,
    type=click.IntRange(8, 5000),
    help="Objects per series (--sequence).",
)
def demo(
    directory,
    detectors,
    visits,
    train,
    train_visits,
    seed,
    size,
    n_sources,
    jobs,
    overwrite,
    sequence,
    n_objects,
):
    """Simulate visits into a new Butler repo in DIRECTORY, score them with a real
    'pipetask run' of the reliability pipeline, and report how well the scores
    separate real sources from artifacts (plots and summary.json in DIRECTORY).
    With --sequence, do the same for objects over many visits with the sequence model."""
    if sequence:
        source = click.get_current_context().get_parameter_source("visits")
        default_visits = source is None or source.name == "DEFAULT"
        run_sequence_demo(
            directory,
            visits=12 if default_visits else visits,
            objects=n_objects,
            train=train,
            seed=seed,
            size=size,
            jobs=jobs,
            overwrite=overwrite,
        )
        return
    run_demo(
        directory,
        detectors=detectors,
        visits=visits,
        train=train,
        train_visits=train_visits,
        seed=seed,
        size=size,
        n_sources=n_sources,
        jobs=jobs,
        overwrite=overwrite,
    )
