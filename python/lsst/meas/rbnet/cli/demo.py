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
(`lsst.meas.rbnet.cli.demo_sequence.run_sequence_demo`): two simulated series of the same
objects, the reliability pipeline writing cutouts, ``pipelines/TrainSequence.yaml`` training
the sequence model, ``pipelines/Sequence.yaml`` scoring objects per htm7 trixel, and a
per-object comparison of the sequence model with the maximum and the mean of the
single-visit scores. The setup and summary pieces both demos share are in
`lsst.meas.rbnet.cli._demo_common`.
"""

from __future__ import annotations

__all__ = ["demo", "run_demo", "run_sequence_demo", "package_root", "pipeline_path"]

import os
import time
from pathlib import Path
from typing import Any

import click

from ..flags import SourceFlag
from ..sim.visit import simulate_visit
from ._demo_common import (
    DEMO_MARKER,
    LABELS_RUN,
    SCORES_COLLECTION,
    class_table,
    create_demo_repo,
    echo,
    finish_run,
    flag_counts,
    is_demo_repo,
    package_root,
    pipeline_path,
    prepare_output,
    progress_bar,
    require_default_model,
    run_reliability_pipeline,
    start_demo,
    summary_table,
    train_triplet_model,
)
from .demo_sequence import run_sequence_demo

# Names the shared pieces had here before they moved to _demo_common (tests import them from here;
# DEMO_MARKER above too).
_prepare_output = prepare_output
_create_demo_repo = create_demo_repo
_is_demo_repo = is_demo_repo

#: Collections the demo writes (besides those of `lsst.meas.rbnet.cli._demo_common`).
SIM_RUN = "demo/sim"
TRAIN_SIM_RUN = "demo/train-sim"


def _simulate(seed: int, visit: int, detector: int, size: int, n_sources: int | None):
    """One simulated (visit, detector); the simulator makes ids unique per (visit, detector).

    All visits point at one field (with a small dither) and the detectors of a visit
    tile the focal plane on a 4-wide grid, so visit regions are compact as in real data.
    """
    import numpy as np

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
    total = 0
    jobs = [(v, d) for v in visits for d in detectors]
    with progress_bar(console) as progress:
        task = progress.add_task(f"Simulating {what}", total=len(jobs))
        for v, d in jobs:
            sim = _simulate(seed, v, d, size, n_sources)
            writer.write(sim, visit=v, detector=d)
            total += len(sim.sources)
            progress.advance(task)
    return total


def _collect(butler, collections, instrument: str):
    """Scores of every scored (visit, detector) joined with the labels, row by row."""
    import astropy.table
    import numpy as np

    # daf_butler: kept out of `rbnet demo --help` (see run_demo).
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

    # torch and matplotlib: imported when the summary is made, not by `rbnet demo --help`.
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
    summary["flags"] = flag_counts(flags, SourceFlag)
    return summary


def _print_summary(summary: dict[str, Any], console, outdir: Path, timings: dict[str, float]) -> None:
    rows = [
        ("model version", ", ".join(summary["versions"])),
        (
            "sources scored",
            f"{summary['scored']} of {summary['sources']} ({summary['unscorable']} unscorable)",
        ),
        ("truth", f"{summary['labelled_real']} real, {summary['labelled_bogus']} bogus"),
    ]
    if "roc_auc" in summary:
        rows.append(("ROC-AUC", f"{summary['roc_auc']:.4f}"))
        if "roc_auc_snr6" in summary:
            rows.append(("ROC-AUC (SNR >= 6)", f"{summary['roc_auc_snr6']:.4f}"))
        rows.append((f"purity at {summary['threshold']:.3g}", f"{summary['purity']:.4f}"))
        rows.append((f"completeness at {summary['threshold']:.3g}", f"{summary['completeness']:.4f}"))
        rows.append(("accuracy", f"{summary['accuracy']:.4f}"))
    console.print(summary_table("Reliability vs the simulated truth", rows, summary, timings))
    if "classes" in summary:
        rows = [
            (name, str(d["n"]), f"{d['fraction_above']:.1%}", f"{d['mean_score']:.3f}")
            for name, d in summary["classes"].items()
        ]
        title = f"Per class at threshold {summary['threshold']:.3g}"
        console.print(class_table(title, ("class", "n", "selected as real", "mean score"), rows))
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

    # The Butler layer imports daf_butler (seconds): here, so that `rbnet demo --help` stays fast.
    from ..butler.repo import DEFAULT_INSTRUMENT, VisitWriter, ingest_labels, register_model

    run = start_demo(directory, overwrite, console, jobs)
    console, repo, timings = run.console, run.repo, run.timings

    console.rule("[bold]1. Butler repository")
    butler = create_demo_repo(repo, console)

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
    echo(
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
        echo(console, f"Wrote {len(train_ids)} training visits ({nt} sources) to {TRAIN_SIM_RUN}.")
        train_inputs = train_ids
    ingest_labels(butler, labels, run=LABELS_RUN, instrument=DEFAULT_INSTRUMENT)
    echo(console, f"Ingested {len(labels)} truth labels as rbnet_labels in {LABELS_RUN}.")

    console.rule("[bold]3. Model")
    if train:
        t0 = time.perf_counter()
        where = f"instrument='{DEFAULT_INSTRUMENT}' AND visit >= {min(train_inputs)}"
        butler, _, timings["pipetask (train)"] = train_triplet_model(
            butler, run, inputs=f"{TRAIN_SIM_RUN},{LABELS_RUN}", where=where, what="model"
        )
        timings["train (total)"] = time.perf_counter() - t0
    else:
        path = require_default_model()
        register_model(butler, str(path), name="default")
        echo(console, f"Registered {Path(path).name} as pretrained_models/default.")

    console.rule("[bold]4. pipetask run: the reliability pipeline")
    where = f"instrument='{DEFAULT_INSTRUMENT}' AND visit <= {max(visit_ids)}"
    timings["pipetask (score)"] = run_reliability_pipeline(
        run, inputs=f"{SIM_RUN},pretrained_models", where=where
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
    summary = _summarise(table, threshold, run.outdir, console)
    summary["quanta"] = n_quanta
    finish_run(run, summary, table, table_name="scores.parquet", show=_print_summary)
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
    # The options both demos take.
    common = dict(train=train, seed=seed, size=size, jobs=jobs, overwrite=overwrite)
    if sequence:
        source = click.get_current_context().get_parameter_source("visits")
        default_visits = source is None or source.name == "DEFAULT"
        run_sequence_demo(directory, visits=12 if default_visits else visits, objects=n_objects, **common)
        return
    run_demo(
        directory,
        detectors=detectors,
        visits=visits,
        train_visits=train_visits,
        n_sources=n_sources,
        **common,
    )
