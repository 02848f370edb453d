# This file is part of meas_rbnet.
"""``rbnet demo --sequence``: objects over many visits with the sequence model.

Two simulated series of the same objects, the reliability pipeline writing cutouts,
``pipelines/TrainSequence.yaml`` training the sequence model, ``pipelines/Sequence.yaml``
scoring objects per htm7 trixel, and a per-object comparison of the sequence model
with the maximum and the mean of the single-visit scores (`run_sequence_demo`).
The setup and summary pieces shared with the single-visit demo are in
`lsst.meas.rbnet.cli._demo_common`.
"""

from __future__ import annotations

__all__ = ["run_sequence_demo"]

import os
import time
from pathlib import Path
from typing import Any

import click

from ..flags import ObjectFlag
from ..sim import simulate_visit_series
from ._demo_common import (
    LABELS_RUN,
    SCORES_COLLECTION,
    class_table,
    create_demo_repo,
    echo,
    finish_run,
    flag_counts,
    package_root,
    pipeline_path,
    progress_bar,
    require_default_model,
    run_pipetask,
    run_reliability_pipeline,
    start_demo,
    summary_table,
    train_triplet_model,
)


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
    with progress_bar(console) as progress:
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

    # torch and matplotlib: imported when the summary is made, not by `rbnet demo --help`.
    from ..training import metrics as M
    from ..training.plots import plot_roc

    ids = np.asarray(objects["objectId"])
    labels = np.array([truth.get(int(i), (-1, ""))[0] for i in ids])
    classes = np.array([truth.get(int(i), (-1, ""))[1] for i in ids])
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
        "flags": flag_counts(objects["flags"], ObjectFlag),
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
    rows = [
        ("sequence model version", ", ".join(summary["versions"])),
        ("objects", f"{summary['objects']} ({summary['objects_scored']} scored)"),
        ("truth (compared objects)", f"{summary['real']} real, {summary['bogus']} bogus"),
        ("visits per object (median)", f"{summary['visits_per_object_median']:.0f}"),
    ]
    rows += [(f"ROC-AUC: {name}", f"{auc:.4f}") for name, auc in summary.get("roc_auc", {}).items()]
    accuracy = summary.get("accuracy_at_0.5", {})
    rows += [(f"accuracy at 0.5: {name}", f"{acc:.4f}") for name, acc in accuracy.items()]
    title = "Objects: sequence model vs single-visit (triplet) scores"
    console.print(summary_table(title, rows, summary, timings))
    if "classes" in summary:
        rows = [
            (name, str(d["label"]), str(d["n"]), f"{d['sequence_mean']:.3f}", f"{d['max_single_mean']:.3f}")
            for name, d in summary["classes"].items()
        ]
        columns = ("class", "label", "n", "sequence", "max single-visit")
        console.print(class_table("Mean object score per class", columns, rows))
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

    # The Butler layer and the tasks import daf_butler and pipe_base (seconds): here, so that
    # `rbnet demo --help` stays fast.
    from ..butler.repo import DEFAULT_INSTRUMENT, VisitWriter, ingest_labels, labels_table, register_model
    from ..tasks.sequence import SEQUENCE_MODEL_DATASET_TYPE, SEQUENCE_RELIABILITY_DATASET_TYPE

    run = start_demo(directory, overwrite, console, jobs)
    console, repo, log_path, timings = run.console, run.repo, run.log_path, run.timings
    train_ids = list(range(SEQ_TRAIN_FIRST_VISIT, SEQ_TRAIN_FIRST_VISIT + visits))
    score_ids = list(range(SEQ_SCORE_FIRST_VISIT, SEQ_SCORE_FIRST_VISIT + visits))
    if not train:
        default = require_default_model()

    console.rule("[bold]1. Butler repository and simulated series")
    butler = create_demo_repo(repo, console)
    t0 = time.perf_counter()
    writer = VisitWriter(butler, run=SEQ_SIM_RUN)
    # The two series differ only in seed, visits, detector and field.
    train_tables, score_tables = (
        _write_series(
            writer,
            n_visits=visits,
            n_objects=objects,
            seed=2 * seed + k + 1,
            first_visit=ids[0],
            detector=k,
            size=size,
            ra=ra,
            dec=2.0,
            console=console,
            what=what,
        )
        for k, (ids, ra, what) in enumerate(
            ((train_ids, 150.0, "the training series"), (score_ids, 150.5, "the scoring series"))
        )
    )
    ingest_labels(butler, writer.labels(), run=LABELS_RUN, instrument=DEFAULT_INSTRUMENT)
    timings["simulate and write"] = time.perf_counter() - t0
    echo(
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
        butler, _, timings["pipetask (train triplet)"] = train_triplet_model(
            butler,
            run,
            inputs=f"{SEQ_SIM_RUN},{SEQ_DETECTION_LABELS_RUN}",
            where=f"instrument='{DEFAULT_INSTRUMENT}' AND visit <= {train_ids[-1]}",
            what="triplet model",
        )
    else:
        register_model(butler, str(default), name="default")
        echo(console, f"Registered {Path(default).name} as pretrained_models/default.")

    console.rule("[bold]3. pipetask run: the reliability pipeline, writing cutouts")
    timings["pipetask (score visits)"] = run_reliability_pipeline(
        run,
        inputs=f"{SEQ_SIM_RUN},pretrained_models",
        where=f"instrument='{DEFAULT_INSTRUMENT}'",
        config=(f"computeReliability:cutoutSize={SEQ_CUTOUT_SIZE}",),
    )

    console.rule("[bold]4. pipetask run: train the sequence model")
    config_file = Path(train_config) if train_config else package_root() / "config" / "trainSequenceQuick.py"
    timings["pipetask (train sequence)"] = run_pipetask(
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
    echo(
        console,
        f"Sequence model {seq_package.version!r} trained on {metrics['n_train_objects']} objects "
        f"({metrics['n_frames']} frames); held-out ROC-AUC {held.get('roc_auc', float('nan')):.4f} "
        f"on {held.get('n_eval', 0)} objects; registered as pretrained_models/demo-sequence.",
    )

    console.rule("[bold]5. pipetask run: the sequence pipeline (one quantum per htm7 trixel)")
    timings["pipetask (sequence)"] = run_pipetask(
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
            run.jobs,
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
    summary = _sequence_summary(objects, _object_truth(score_tables), run.outdir)
    summary["partitions"] = len(refs)
    summary["training_metrics"] = metrics
    finish_run(run, summary, objects, table_name="objects.parquet", show=_print_sequence_summary)
    return summary
