# This file is part of meas_rbnet.
"""``rbnet sequence-cv`` and ``rbnet train-sequence``: the multi-visit (RB_ZTF) model."""

__all__ = ["sequence_cv", "train_sequence"]

import json
import os
import sys
import time

import click

from .. import sim
from ..constants import CHANNEL_ORDER
from ..fileio import check_output_path, write_atomic
from ..sim.sequences import SequenceSet
from ._options import FiniteFloatRange, choice_option, input_file_option, output_file_option

#: Default wall-time budget of ``sequence-cv`` (seconds): 5 folds must fit in 30 minutes.
DEFAULT_CV_BUDGET = 1500.0


def _threads(n: int | None) -> None:
    import torch

    # One thread by default: the sequence models are many small operations, and two
    # threads synchronising on every one of them gained little on an idle 2-core
    # machine but were 6x slower (and burnt 9x the CPU) on a busy one.
    torch.set_num_threads(max(1, n or 1))


@click.command("sequence-cv")
@click.option(
    "--latents",
    "latent_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Directory of <object_id>.npy latent arrays (T, D), visits in time order.",
)
@input_file_option(
    "--labels",
    "label_file",
    required=True,
    help="CSV with columns object_id,label (RB_ZTF: 1 = artifact, 0 = real).",
)
@click.option(
    "--columns", default=None, help="Latent columns A:B to use, e.g. 0:36 (the VAE means of a 72-wide array)."
)
@click.option(
    "--models",
    default="bigru,conv1d",
    show_default=True,
    help="Comma-separated models: bigru, gru, lstm, conv1d. With several, an ensemble row is added.",
)
@choice_option("--loss", choices=["bce", "bce+tversky"], default="bce")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 20), help="Number of folds.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the folds and of training.")
@choice_option(
    "--label-real-is",
    choices=["0", "1"],
    default="0",
    help="The label value that means real (0 for RB_ZTF label files, where 1 = artifact).",
)
@input_file_option(
    "--times",
    "times_file",
    help="Table (CSV/Parquet) with object_id,time (days) per visit; default: DIR/times.csv, "
    "DIR/times.parquet or DIR/<object_id>.times.npy if present.",
)
@click.option(
    "--plot", default=None, type=click.Path(dir_okay=False), help="Write the ROC curves to this image."
)
@click.option(
    "--out", default=None, type=click.Path(dir_okay=False), help="Write all results to this JSON file."
)
@click.option(
    "--time-budget",
    default=DEFAULT_CV_BUDGET,
    show_default=True,
    type=FiniteFloatRange(min=0, min_open=True),
    help="Wall seconds for all fits together; each fit stops at its share and keeps its best epoch.",
)
@click.option(
    "--max-epochs",
    default=None,
    type=click.IntRange(min=1),
    help="Upper bound on epochs per fit (default: the models').",
)
@click.option(
    "--threads", default=None, type=click.IntRange(min=1), help="Torch CPU threads (default 1; see the docs)."
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    help="Fits run at once, each in its own process with one thread (default: one per CPU core, at "
    "most 2, on the CPU; 1 on a GPU). Results do not depend on it.",
)
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.option("--quiet", is_flag=True, help="Only the report and the table.")
def sequence_cv(
    latent_dir,
    label_file,
    columns,
    models,
    loss,
    folds,
    seed,
    label_real_is,
    times_file,
    plot,
    out,
    time_budget,
    max_epochs,
    threads,
    workers,
    device,
    quiet,
):
    """Stratified k-fold evaluation of sequence classifiers on saved latents.

    Reads one DIR/<object_id>.npy array (T, D) per object and the labels of FILE,
    reports every problem found (missing files, unknown ids, NaN rows, widths),
    trains each model on k-1 folds and tests on the last, and prints ROC-AUC,
    accuracy and F1 (artifact class, as in the RB_ZTF paper) as mean +/- std over folds.
    """
    # The sequence package imports torch: here, so that `rbnet sequence-cv --help` stays light.
    from ..sequence.cv import cross_validate, default_workers, plot_roc, resolve_model
    from ..sequence.latents import read_latent_dir

    names = [m.strip() for m in models.split(",") if m.strip()]
    try:
        for path, option in ((plot, "--plot"), (out, "--out")):
            if path:
                check_output_path(path, option)
        for m in names:
            resolve_model(m)
        latents, report = read_latent_dir(
            latent_dir, label_file, columns=columns, label_real_is=int(label_real_is), times_file=times_file
        )
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    for line in report.lines():
        click.echo(line)
    lengths = latents.lengths
    click.echo(
        f"Sequences: {latents.n_objects} objects, {int(lengths.sum())} frames, lengths {int(lengths.min())}-"
        f"{int(lengths.max())} (median {int(sorted(lengths)[len(lengths) // 2])}), width {latents.width}; "
        + (
            "time feature log(1 + dt) from the visit times."
            if latents.has_times
            else "no visit times: the time feature is 0."
        )
    )
    if min(report.n_real, report.n_bogus) < folds:
        raise click.ClickException(
            f"{folds} folds need at least {folds} objects of each class "
            f"(have {report.n_real} real, {report.n_bogus} artifacts)."
        )
    _threads(threads)
    overrides = {}
    for m in names:
        ov = {"device": device}
        if max_epochs:
            ov["max_epochs"] = max_epochs
        overrides[m] = ov
    if workers is None:
        workers = default_workers() if device == "cpu" else 1
    click.echo(
        f"Running {folds}-fold CV of {', '.join(names)} (loss {loss}, budget {time_budget:.0f}s, "
        f"{workers} worker{'s' if workers > 1 else ''}) ..."
    )
    log = None if quiet else (lambda s: click.echo("  " + s))
    try:
        result = cross_validate(
            latents,
            names,
            k=folds,
            seed=seed,
            loss=loss,
            time_budget=time_budget,
            config_overrides=overrides,
            log=log,
            workers=workers,
        )
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo("")
    for line in result.table_lines():
        click.echo(line)
    click.echo(
        f"Total {result.seconds:.0f}s. F1 is that of the artifact class; accuracy and F1 at P(real) = 0.5."
    )
    if plot:
        plot_roc(result, plot)
        click.echo(f"ROC curves: {plot}")
    if out:
        data = result.to_dict()
        data["load_report"] = report.to_dict()
        data["command"] = " ".join(sys.argv)
        write_atomic(out, json.dumps(data, indent=1))
        click.echo(f"Results: {out}")


def _parse_range(text: str) -> tuple[int, int]:
    try:
        a, b = text.split(":") if ":" in text else (text, text)
        lo, hi = int(a), int(b)
    except ValueError:
        raise click.BadParameter(f"expected LO:HI, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise click.BadParameter(f"need 1 <= LO <= HI, got {text!r}")
    return lo, hi


@click.command("train-sequence")
@output_file_option("--out", "out_path", help="Model package to write (.safetensors).")
@input_file_option(
    "--input", "input_path", help="A saved SequenceSet (.npz from the simulator); default: simulate one."
)
@click.option(
    "--n-objects", default=400, show_default=True, type=click.IntRange(min=10), help="Objects to simulate."
)
@click.option("--n-visits", default="5:60", show_default=True, help="Visits per object to simulate, LO:HI.")
@click.option(
    "--frame-size", default=28, show_default=True, type=click.IntRange(8, 101), help="Frame side (pixels)."
)
@choice_option(
    "--channels",
    choices=["science", "difference", "triplet"],
    default="science",
    help="Frame channels the model reads (the paper: science).",
)
@click.option("--latent-dim", default=36, show_default=True, type=click.IntRange(1, 1024), help="VAE latent size.")
@click.option("--vae-epochs", default=8, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--vae-max-frames",
    default=60000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Train the VAE on at most this many frames (0: all).",
)
@click.option("--model", default="bigru", show_default=True, help="bigru, gru, lstm or conv1d.")
@choice_option("--loss", choices=["bce", "bce+tversky"], default="bce")
@click.option(
    "--max-epochs", default=40, show_default=True, type=click.IntRange(min=1), help="Classifier epochs at most."
)
@click.option(
    "--test-fraction",
    default=0.2,
    show_default=True,
    type=FiniteFloatRange(0, 1, max_open=True),
    help="Objects held out to measure the package's metrics.",
)
@click.option(
    "--version", "version", default="seq1", show_default=True, help="reliabilityVersion (<= 7 chars)."
)
@click.option(
    "--visit-scores/--no-visit-scores",
    default=True,
    show_default=True,
    help="The classifier also reads each frame's single-visit score (the triplet model's, computed "
    "here from the frames' difference/science/template channels); the package then needs those "
    "scores when scoring, as the sequence task gives it.",
)
@input_file_option(
    "--visit-model", help="Triplet model package for --visit-scores (default: the shipped model)."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--threads", default=None, type=click.IntRange(min=1), help="Torch CPU threads (default 1; see the docs)."
)
def train_sequence(
    out_path,
    input_path,
    n_objects,
    n_visits,
    frame_size,
    channels,
    latent_dim,
    vae_epochs,
    vae_max_frames,
    model,
    loss,
    max_epochs,
    test_fraction,
    version,
    visit_scores,
    visit_model,
    seed,
    threads,
):
    """Train the VAE and a sequence classifier from frame sequences; write ONE model package.

    Frames come from --input (a SequenceSet .npz written by the simulator) or are
    simulated (lsst.meas.rbnet.sim.simulate_sequences). The package (kind "sequence")
    holds the encoder and the classifier, the calibration temperature and the
    held-out metrics.
    """
    # package and the sequence package import torch: here, so that `rbnet train-sequence --help`
    # stays light.
    from ..package import validate_version_string
    from ..sequence.cv import resolve_model
    from ..sequence.train import (
        SequencePackageConfig,
        SequenceTrainConfig,
        VAETrainConfig,
        train_sequence_package,
    )

    try:
        # Before any work: a bad output path must not be found only after the training.
        check_output_path(out_path, "--out")
        validate_version_string(version)
        arch = resolve_model(model)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    _threads(threads)
    want = CHANNEL_ORDER if channels == "triplet" else (channels,)
    t0 = time.perf_counter()
    if input_path:
        try:
            seqs = SequenceSet.load(input_path)
        except (ValueError, OSError) as err:
            raise click.ClickException(f"{input_path}: {err}") from None
    else:
        lo, hi = _parse_range(n_visits)
        click.echo(
            f"Simulating {n_objects} objects with {lo}-{hi} visits of {frame_size}x{frame_size} frames ..."
        )
        seqs = sim.simulate_sequences(
            n_objects, seed, frame_size=frame_size, n_visits=(lo, hi), channels=CHANNEL_ORDER
        )
    scores = visit_versions = None
    if visit_scores:
        from ..scoring import load_scorer, score_triplets

        have = tuple(seqs.channels)
        missing = [c for c in CHANNEL_ORDER if c not in have]
        if missing:
            raise click.ClickException(
                f"--visit-scores needs frames with the difference, science and template channels; "
                f"{input_path or 'the frames'} has {list(have)}. Use --no-visit-scores."
            )
        click.echo(f"Scoring {len(seqs.frames)} frames with the single-visit model ...")
        d, s_, t_ = (seqs.frames[:, have.index(c)] for c in ("difference", "science", "template"))
        try:
            scores = score_triplets(s_, t_, d, model=visit_model)
        except (ValueError, OSError) as err:
            raise click.ClickException(f"Single-visit scores: {err}") from None
        # The scorer score_triplets loaded, from the process cache.
        visit_versions = [load_scorer(visit_model).package.version]
    config = SequencePackageConfig(
        vae=VAETrainConfig(
            hyperparameters={"latent_dim": latent_dim},
            epochs=vae_epochs,
            max_frames=vae_max_frames,
            seed=seed,
        ),
        classifier=SequenceTrainConfig(architecture=arch, loss=loss, max_epochs=max_epochs, seed=seed),
        channels=tuple(want),
        test_fraction=test_fraction,
        version=version,
        seed=seed,
    )
    try:
        package, metrics = train_sequence_package(
            seqs.frames,
            seqs.offsets,
            seqs.label,
            seqs.times,
            config,
            frame_channels=tuple(seqs.channels),
            object_ids=seqs.object_id,
            provenance={"command": " ".join(sys.argv)},
            log=lambda s: click.echo("  " + s),
            visit_scores=scores,
            visit_score_versions=visit_versions,
        )
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    package.save(out_path)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    click.echo(
        f"Wrote {out_path} (version {package.version}, temperature {package.temperature:.3f}) in "
        f"{time.perf_counter() - t0:.0f}s. {metrics['evaluated_on']} ({metrics['n_eval']}): {shown}"
    )
