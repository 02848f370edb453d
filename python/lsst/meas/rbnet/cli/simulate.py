# This file is part of meas_rbnet.
"""``rbnet simulate`` and ``rbnet gallery``: simulated data with truth for training, tests and demos."""

__all__ = ["simulate", "gallery"]

import contextlib
import math
import time
from pathlib import Path

import click
import numpy as np

from ..constants import ARTIFACT_CLASSES, REAL_CLASSES
from ..fileio import atomic_path, check_output_path
# The simulator needs numpy, scipy and astropy only (matplotlib is imported inside the gallery
# functions), so importing it here keeps torch and matplotlib out of `rbnet simulate --help`.
from ..sim.gallery import make_gallery, make_visit_preview
from ..sim.io import write_stamps
from ..sim.sequences import simulate_sequences
from ..sim.stamps import class_counts, simulate_stamps
from ..sim.visit import simulate_visit
from ..sim.visit_stamps import simulate_visit_stamps
from ._options import FiniteFloatRange, choice_option

#: Smallest stamp side the simulator accepts (pixels): the seeing FWHM reaches 6 pixels and
#: chip edges are placed 2 to S/2 - 1 pixels from the centre.
MIN_SIM_STAMP_SIZE = 11

# Options and the argument shared by several sub-commands: one definition each (the help
# text, where it differs between commands, is passed in).
_OUT_ARGUMENT = click.argument("out", type=click.Path(dir_okay=False, writable=True))
_SHAPE_OPTION = click.option(
    "--shape", default="1024,1024", show_default=True, help="Detector HEIGHT,WIDTH in pixels."
)
_SURVEY_CHOICE = click.Choice(["rubin", "ztf", "decam"], case_sensitive=False)


def _seed_option(help: str = "Random seed."):
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def _size_option(help: str):
    return click.option(
        "--size", type=click.IntRange(min=MIN_SIM_STAMP_SIZE), default=51, show_default=True, help=help
    )


def _count_option(name: str, default: int, help: str, minimum: int = 1):
    return click.option(name, type=click.IntRange(min=minimum), default=default, show_default=True, help=help)


def _fraction_option(name: str, default: float, help: str):
    return click.option(name, type=FiniteFloatRange(0, 1), default=default, show_default=True, help=help)


def _real_fraction_option(help: str):
    return _fraction_option("--real-fraction", 0.5, help)


def _range_option(name: str, default: str, help: str):
    return click.option(name, default=default, show_default=True, callback=_parse_range, help=help)


def _parse_shape(shape: str) -> tuple[int, int]:
    """HEIGHT,WIDTH of ``--shape``, each at least 64 pixels."""
    try:
        height, width = (int(v) for v in shape.split(","))
    except ValueError:
        raise click.BadParameter(f"expected HEIGHT,WIDTH, got {shape!r}", param_hint="--shape") from None
    if min(height, width) < 64:
        raise click.BadParameter(f"a detector of at least 64x64 pixels, got {shape!r}", param_hint="--shape")
    return height, width


def _check_ranges(**ranges) -> None:
    """LO,HI options: finite, positive, LO <= HI."""
    for name, value in ranges.items():
        if value is None:
            continue
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise click.BadParameter(
                f"expected finite 0 < LO <= HI, got {lo:g},{hi:g}", param_hint="--" + name.replace("_", "-")
            )


def _parse_range(ctx, param, value):
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LO,HI (two numbers), got {value!r}") from None
    return (lo, hi)


def _output(out: str, npz: bool = True) -> Path:
    """OUT checked before any work (its folder exists and is writable).

    With ``npz`` the file numpy really writes: ``.npz`` appended to a name without it
    (numpy does so silently; the messages name the real file).
    """

    path = Path(out)
    if npz and path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    try:
        return check_output_path(path, "OUT")
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="OUT") from None


def _class_fractions(n: int, real_fraction: float) -> tuple[dict[str, int], int]:
    """Counts per class (as weights for the simulator) giving round(n * real_fraction) real examples.

    The simulator rounds each of its 15 classes separately, which can lose the fraction
    altogether for small N (--n 20 --real-fraction 0.1 gave no real example): here the
    real and bogus totals are rounded first (half up), then shared equally by the classes
    of each kind (largest remainder).
    """

    n_real = int(math.floor(n * real_fraction + 0.5))
    counts: dict[str, int] = {}
    for names, total in ((REAL_CLASSES, n_real), (ARTIFACT_CLASSES, n - n_real)):
        base, extra = divmod(total, len(names))
        counts.update({c: base + (i < extra) for i, c in enumerate(names)})
    return counts, n_real


def _weighted_class_counts(n: int, real_fraction: float, specs) -> dict[str, int]:
    """Counts per class from ``--class-weight CLASS=W`` options (other classes weigh 1).

    Each kind (real, bogus) keeps its share of ``real_fraction``; within a kind the
    classes share it in proportion to their weights; counts are rounded by largest
    remainder (`lsst.meas.rbnet.sim.stamps.class_counts`).
    """

    weights = {c: 1.0 for c in REAL_CLASSES + ARTIFACT_CLASSES}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or name not in weights:
            raise click.BadParameter(
                f"expected CLASS=W with CLASS one of {', '.join(weights)}; got {spec!r}.",
                param_hint="--class-weight",
            )
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not (math.isfinite(w) and w >= 0):
            raise click.BadParameter(f"the weight must be a finite number >= 0, got {spec!r}.",
                                     param_hint="--class-weight")  # fmt: skip
        weights[name] = w
    fractions = {}
    for names, share in ((REAL_CLASSES, real_fraction), (ARTIFACT_CLASSES, 1 - real_fraction)):
        total = sum(weights[c] for c in names)
        if share > 0 and total <= 0:
            raise click.BadParameter("every class of one kind has weight 0.", param_hint="--class-weight")
        fractions.update({c: (share * weights[c] / total if total > 0 else 0.0) for c in names})
    return class_counts(n, fractions)


def _say_rounding(n: int, real_fraction: float, n_real: int, what: str) -> None:
    if not math.isclose(n * real_fraction, n_real):
        click.echo(
            f"--real-fraction {real_fraction:g} of {n} {what} is {n * real_fraction:g}: rounded to "
            f"{n_real} real and {n - n_real} bogus (fraction {n_real / n:.3g}).",
            err=True,
        )


@contextlib.contextmanager
def _progress_bar(description: str, total: int, unit: str):
    """A rich progress bar on stderr (as `rbnet train` shows); yields a ``progress(done, total)`` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, total_: bar.update(task, completed=done, total=total_)


@click.group()
def simulate():
    """Write simulated triplets, visits or multi-visit sequences with truth."""


@simulate.command("stamps")
@_OUT_ARGUMENT
@click.option(
    "--n", "n", type=click.IntRange(min=1), default=10000, show_default=True, help="Number of stamps."
)
@_seed_option()
@_size_option("Stamp side in pixels (odd).")
@_real_fraction_option("Fraction of real examples (N times it, rounded half up; the rounding is reported).")
@_range_option("--fwhm-range", "1.5,6.0", "Seeing FWHM range in pixels, LO,HI.")
@_range_option("--snr-range", "3,1000", "S/N range of the labelled objects, LO,HI.")
@_fraction_option("--edge-fraction", 0.03, "Fraction of examples near a chip edge.")
@_fraction_option(
    "--no-template-fraction", 0.0, "Fraction of examples whose template lacks data over part of the stamp."
)
@click.option(
    "--variance/--no-variance", default=False, show_default=True, help="Also write variance planes."
)
@click.option(
    "--survey",
    type=_SURVEY_CHOICE,
    default=None,
    help="Simulate with a survey preset (seeing, pixel scale, noise, sky, template depth, units, "
    "edges, missing pixels, sign of negative detections, whitened differences for rubin and ztf); "
    "replaces --fwhm-range and --edge-fraction. "
    "--size may then be the preset's alert cutout size (rubin 30, ztf 63, decam 63), even sizes too.",
)
@click.option(
    "--class-weight",
    "class_weights",
    multiple=True,
    metavar="CLASS=W",
    help="Relative weight of one class within its kind (real or bogus; default 1 each), repeatable, "
    "e.g. --class-weight real_brighter=2. The real fraction is kept.",
)
@click.pass_context
def stamps(
    ctx,
    out,
    n,
    seed,
    size,
    real_fraction,
    fwhm_range,
    snr_range,
    edge_fraction,
    no_template_fraction,
    variance,
    survey,
    class_weights,
):
    """Write N labelled triplet stamps to OUT (.npz, readable with np.load(allow_pickle=False);
    ".npz" is appended to a name without it).

    Keys: stamps (N, 3, S, S) float32 in channel order difference, science,
    template (NaN = no data), in nJy or, with --survey, the preset's units;
    masks (N, 3, S, S) int32; id, label, source_class, snr, flux,
    fwhm_science, fwhm_template and the other truth columns. With --survey
    an even --size (Rubin's 30x30 alert cutouts) is simulated one pixel
    larger and cropped to [:S, :S], so the source stays at pixel (S // 2, S // 2).
    """

    if survey is None and size % 2 != 1:
        raise click.BadParameter(f"--size must be odd (even sizes only with --survey), got {size}.")
    if survey is not None:
        for name in ("fwhm_range", "edge_fraction"):
            if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
                option = "--" + name.replace("_", "-")
                raise click.BadParameter(
                    f"{option} cannot be combined with --survey {survey}: the preset sets it.",
                    param_hint=option,
                )
    out = _output(out)
    _check_ranges(fwhm_range=fwhm_range, snr_range=snr_range)
    if class_weights:
        fractions = _weighted_class_counts(n, real_fraction, class_weights)
    else:
        fractions, n_real = _class_fractions(n, real_fraction)
        _say_rounding(n, real_fraction, n_real, "stamps")
    start = time.perf_counter()
    with _progress_bar("simulating", n, "stamps") as progress:
        result = simulate_stamps(
            n,
            size + 1 - size % 2,
            seed,
            class_fractions=fractions,
            fwhm_range=fwhm_range,
            snr_range=snr_range,
            edge_fraction=edge_fraction,
            no_template_fraction=no_template_fraction,
            with_variance=variance,
            progress=progress,
            survey=survey,
        )
    if size % 2 == 0:
        result.crop(size)
    with atomic_path(out) as tmp:
        write_stamps(result, tmp)
    n_real = int((result.table["label"] == 1).sum())
    preset = f", survey {survey} ({result.table.meta['units']})" if survey is not None else ""
    click.echo(
        f"Wrote {n} stamps ({n_real} real, {n - n_real} bogus) of {size}x{size} px{preset} to {out} "
        f"in {time.perf_counter() - start:.1f} s."
    )


@simulate.command("visit-stamps")
@_OUT_ARGUMENT
@click.option("--first-seed", type=int, default=0, show_default=True, help="Seed of the first visit.")
@_count_option("--visits", 10, "Number of visits (seeds FIRST-SEED, FIRST-SEED+1, ...).")
@_size_option("Stamp side in pixels (odd).")
@_SHAPE_OPTION
@_count_option("--n-sources", 300, "Labelled objects per visit.")
def visit_stamps(out, first_seed, visits, size, shape, n_sources):
    """Write the stamps of all sources of simulated detector visits to OUT (.npz).

    Same keys as `rbnet simulate stamps` (stamps are raw pixels around the
    measured centroids; masks are the mask planes), for training on the
    crowding, shared artifacts and PSFs of whole visits.
    """

    if size % 2 != 1:
        raise click.BadParameter(f"--size must be odd, got {size}.")
    out = _output(out)
    height, width = _parse_shape(shape)
    start = time.perf_counter()
    with _progress_bar("simulating", visits, "visits") as progress:
        result = simulate_visit_stamps(
            range(first_seed, first_seed + visits),
            shape=(height, width),
            n_sources=n_sources,
            stamp_size=size,
            progress=progress,
        )
    with atomic_path(out) as tmp:
        write_stamps(result, tmp)
    n = len(result)
    n_real = int((result.table["label"] == 1).sum())
    click.echo(
        f"Wrote {n} stamps ({n_real} real, {n - n_real} bogus) of {size}x{size} px from {visits} visits "
        f"(seeds {first_seed}-{first_seed + visits - 1}) to {out} in {time.perf_counter() - start:.1f} s."
    )


@simulate.command("visit")
@click.argument("out_dir", type=click.Path(file_okay=False, writable=True))
@_seed_option()
@_SHAPE_OPTION
@_count_option("--n-sources", 300, "Number of labelled objects.", minimum=0)
@_real_fraction_option("Fraction of real objects (rounded half up; the rounding is reported).")
@click.option(
    "--fwhm-science",
    type=FiniteFloatRange(min=0.5, max=50),
    default=None,
    help="Science seeing FWHM (pixels); drawn by default.",
)
@click.option(
    "--fwhm-template",
    type=FiniteFloatRange(min=0.5, max=50),
    default=None,
    help="Template FWHM (pixels); drawn by default.",
)
@click.option("--visit", type=int, default=None, help="Visit id (default 2026010100000 + seed).")
@click.option("--detector", type=int, default=0, show_default=True, help="Detector id.")
@choice_option("--band", choices=["u", "g", "r", "i", "z", "y"], default="r")
@_fraction_option("--template-coverage", 0.0, "Fraction of the detector without template data.")
@choice_option("--sources-format", choices=["ecsv", "parquet"], default="ecsv")
@click.option(
    "--preview",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also write a PNG preview of the three images with the sources marked.",
)
def visit(
    out_dir,
    seed,
    shape,
    n_sources,
    real_fraction,
    fwhm_science,
    fwhm_template,
    visit,
    detector,
    band,
    template_coverage,
    sources_format,
    preview,
):
    """Simulate one detector-sized visit and write it to OUT_DIR.

    Files: science.fits, template.fits, difference.fits (afw MaskedImage layout:
    IMAGE, MASK, VARIANCE HDUs), sources.ecsv (or .parquet) and metadata.json.
    """

    height, width = _parse_shape(shape)
    if preview:
        preview = _output(preview, npz=False)
    fractions = None
    if n_sources:
        fractions, n_real = _class_fractions(n_sources, real_fraction)
        _say_rounding(n_sources, real_fraction, n_real, "objects")
    start = time.perf_counter()
    result = simulate_visit(
        seed,
        (height, width),
        n_sources=n_sources,
        real_fraction=real_fraction,
        class_fractions=fractions,
        fwhm_science=fwhm_science,
        fwhm_template=fwhm_template,
        visit=visit,
        detector=detector,
        band=band,
        template_coverage=template_coverage,
    )
    elapsed = time.perf_counter() - start
    paths = result.write(out_dir, sources_format=sources_format)
    click.echo(
        f"Simulated visit {result.metadata.visit} detector {result.metadata.detector} "
        f"({height}x{width} px, {len(result.sources)} sources) in {elapsed:.1f} s; wrote {out_dir}: "
        + ", ".join(sorted(p.rsplit("/", 1)[-1] for p in paths.values()))
    )
    if preview:
        with atomic_path(preview) as tmp:
            make_visit_preview(result, tmp)
        click.echo(f"Wrote preview {preview}.")


@simulate.command("sequences")
@_OUT_ARGUMENT
@click.option("--n-objects", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--frame-size", type=click.IntRange(min=3), default=28, show_default=True)
@_range_option("--n-visits", "1,100", "Range of the number of visits per object, LO,HI.")
@_real_fraction_option("Fraction of real objects (rounded half up; the rounding is reported).")
def sequences(out, n_objects, seed, frame_size, n_visits, real_fraction):
    """Write multi-visit cutout sequences of N objects to OUT (.npz, no pickle; ".npz" is appended to a
    name without it).

    Keys: frames (sum T, C, F, F) float32, offsets (N + 1,), times (sum T,) MJD,
    label, source_class, kind, object_id, plus per-frame fwhm and snr.
    """

    out = _output(out)
    lo, hi = n_visits
    if not (lo == int(lo) and hi == int(hi) and 1 <= lo <= hi):
        raise click.BadParameter(f"expected whole numbers 1 <= LO <= HI, got {lo:g},{hi:g}.", param_hint="--n-visits")
    fractions, n_real = _class_fractions(n_objects, real_fraction)
    _say_rounding(n_objects, real_fraction, n_real, "objects")
    start = time.perf_counter()
    with _progress_bar("simulating", n_objects, "objects") as progress:
        result = simulate_sequences(
            n_objects,
            seed,
            frame_size=frame_size,
            n_visits=(int(lo), int(hi)),
            class_fractions=fractions,
            progress=progress,
        )
    with atomic_path(out) as tmp:
        result.save(tmp)
    click.echo(
        f"Wrote {n_objects} sequences ({len(result.times)} frames) to {out} "
        f"in {time.perf_counter() - start:.1f} s."
    )


@click.command()
@_OUT_ARGUMENT
@_seed_option()
@_count_option("--n-per-class", 4, "Examples shown per class.")
@_size_option("Stamp side (pixels).")
@click.option(
    "--survey",
    type=_SURVEY_CHOICE,
    default=None,
    help="Show the stamps of a survey preset (even --size allowed, e.g. rubin 30).",
)
def gallery(out, seed, n_per_class, size, survey):
    """Plot simulated examples of every class (one row per class) to OUT (PNG)."""

    if survey is None and size % 2 != 1:
        raise click.BadParameter(f"--size must be odd (even sizes only with --survey), got {size}.")
    out = _output(out, npz=False)
    with atomic_path(out) as tmp:
        make_gallery(tmp, seed=seed, n_per_class=n_per_class, stamp_size=size, survey=survey)
    click.echo(f"Wrote {out}.")
