# This file is part of meas_rbnet.
"""``rbnet score-alerts``: score ZTF / Rubin alert packets and broker exports.

Reads the inputs with `lsst.meas.rbnet.alerts` (streaming, batch by batch),
scores every alert with a triplet model package and writes one row per alert,
in input order, to ``--out`` (Parquet, CSV or ECSV by its extension). Alerts
that cannot be scored get a row too, with a NaN score and `AlertFlag` bits
naming the reason; the run ends with a count per reason and fails (exit status
1) only when no alert at all could be scored.
"""

__all__ = ["score_alerts"]

import math
import time

import click

from ..alerts.output import AlertTableWriter, output_format
from ..alerts.score import AlertScoreSummary, compare_with_survey, iter_scored_batches, output_columns
from ..alerts.sources import expand_inputs, sniff_survey
from ._options import choice_option, input_file_option, output_file_option


def _parse_sizes(values) -> dict[str, int]:
    sizes = {}
    for v in values:
        name, sep, size = v.partition("=")
        if not sep or not size.strip().isdigit():
            raise click.BadParameter(
                f"expected SURVEY=PIXELS (e.g. rubin=93), got {v!r}", param_hint="--cutout-size"
            )
        sizes[name.strip()] = int(size)
    return sizes


def _progress(console, total):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Alerts per second since the start (not a sliding window: the figure a benchmark would give)."""

        def render(self, task):
            elapsed = task.elapsed or 0.0
            rate = task.completed / elapsed if elapsed > 0 else 0.0
            return Text(f"{rate:,.0f} alerts/s", style="progress.data.speed")

    columns = [TextColumn("{task.description}")]
    columns += [BarColumn(), MofNCompleteColumn()] if total else [TextColumn("{task.completed:,} alerts")]
    columns += [RateColumn(), TimeElapsedColumn()]
    return Progress(*columns, console=console, transient=False)


@click.command("score-alerts")
@click.argument("paths", nargs=-1, required=True)
@output_file_option("--out", "out", help="Output table: .parquet, .csv or .ecsv.")
@input_file_option(
    "--model", help="Triplet model package (.safetensors); default: the shipped default model."
)
@click.option(
    "--compare",
    is_flag=True,
    help="Print ROC-AUC and agreement at 0.5 against each survey's own score (ZTF drb/rb, Rubin "
    "reliability).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many alerts.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Alerts decoded and scored at once; bounds the memory used.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--symmetry", is_flag=True, help="Average over the 8 rotations/flips of each stamp (8x slower)."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Torch threads for the network; the reader decodes the next batch in another thread, "
    "and one network thread keeps up with it.",
)
@click.option(
    "--cutout-size",
    "cutout_sizes",
    multiple=True,
    metavar="SURVEY=PIXELS",
    help="Cutout size of a survey's stacks instead of its own (ztf=63, rubin=30); repeatable.",
)
@choice_option(
    "--fits-reader",
    choices=["lean", "astropy"],
    default="lean",
    help="FITS decoder of the cutouts (same pixels; lean is faster).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def score_alerts(
    paths,
    out,
    model,
    compare,
    limit,
    batch_size,
    device,
    symmetry,
    threads,
    cutout_sizes,
    fits_reader,
    no_progress,
):
    """Score alert packets: PATHS are files (Avro, Confluent messages, Parquet, tar), directories or globs."""
    from rich.console import Console
    from rich.table import Table as RichTable

    # package and scoring import torch: here, not at the top, so `rbnet score-alerts --help` stays light.
    from ..package import ModelPackageError

    sizes = _parse_sizes(cutout_sizes)
    try:
        output_format(out)
        files = expand_inputs(paths)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    from ..scoring import load_scorer

    try:
        # Loaded (and cached for the run) before the output file is opened, so a bad package fails fast.
        load_scorer(model, device=device, batch_size=batch_size, symmetry=symmetry, num_threads=threads)
    except (FileNotFoundError, ModelPackageError, ValueError) as err:
        raise click.ClickException(f"--model: {err}") from None
    # The survey score columns are fixed before the first row is written, from the files' headers.
    surveys = {sniff_survey(f) for f, _ in files} - {None}
    console = Console(stderr=True)
    summary = AlertScoreSummary()
    start = time.perf_counter()
    try:
        scored = iter_scored_batches(
            list(paths),
            model,
            device=device,
            batch_size=batch_size,
            limit=limit,
            symmetry=symmetry,
            lean_fits=fits_reader == "lean",
            cutout_sizes=sizes,
            files=files,
            num_threads=threads,
        )
        with AlertTableWriter(out, output_columns(surveys)) as writer:
            progress = None if no_progress else _progress(console, limit)
            task = None
            if progress is not None:
                progress.start()
                task = progress.add_task("scoring alerts", total=limit)
            try:
                for _, table in scored:
                    writer.write(table)
                    summary.add(table)
                    if progress is not None:
                        progress.update(task, completed=summary.n_alerts)
            finally:
                if progress is not None:
                    progress.stop()
    except (FileNotFoundError, ModelPackageError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    elapsed = time.perf_counter() - start
    rate = summary.n_alerts / elapsed if elapsed > 0 else 0.0
    click.echo(
        f"{summary.n_scored} of {summary.n_alerts} alerts scored in {elapsed:.1f} s ({rate:,.0f} alerts/s); "
        f"wrote {out}"
    )
    if summary.flag_counts:
        click.echo("flags (alerts with each bit; NOT_SCORED rows have a NaN score):")
        for name, count in sorted(summary.flag_counts.items(), key=lambda kv: (-kv[1], kv[0])):
            click.echo(f"  {name:<16} {count}")
    if compare:
        rows = compare_with_survey(summary)
        table = RichTable(title="against the survey's own score (its decision at 0.5 as the label)")
        for col in ("survey", "alerts compared", "survey score >= 0.5", "ROC-AUC", "agreement at 0.5"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(
                r["survey"],
                str(r["n"]),
                str(r["survey_real"]),
                f"{r['roc_auc']:.3f}" if math.isfinite(r["roc_auc"]) else "- (one class)",
                f"{r['agreement']:.3f}",
            )
        if rows:
            Console(width=120).print(table)
        else:
            click.echo("no alert had both our score and the survey's")
    if summary.n_scored == 0:
        raise click.ClickException(f"no alert could be scored ({summary.n_alerts} read); see the flags above")
