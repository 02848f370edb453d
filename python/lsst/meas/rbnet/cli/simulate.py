# This file is part of meas_rbnet.
"""``rbnet simulate`` and ``rbnet gallery``: simulated data with truth for training, tests and demos."""

__all__ = ["simulate", "gallery"]

import time

import click
import numpy as np


def _parse_range(ctx, param, value):
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LO,HI (two numbers), got {value!r}") from None
    return (lo, hi)


@click.group()
def simulate():
    """Write simulated triplets, visits or multi-visit sequences with truth."""


@simulate.command("stamps")
@click.argument("out", type=click.Path(dir_okay=False, writable=True))
@click.option(
    "--n", "n", type=click.IntRange(min=1), default=10000, show_default=True, help="Number of stamps."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--size", type=click.IntRange(min=3), default=51, show_default=True, help="Stamp side in pixels (odd)."
)
@click.option(
    "--real-fraction",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Fraction of real examples.",
)
@click.option(
    "--fwhm-range",
    default="1.5,6.0",
    show_default=True,
    callback=_parse_range,
    help="Seeing FWHM range in pixels, LO,HI.",
)
@click.option(
    "--snr-range",
    default="3,1000",
    show_default=True,
    callback=_parse_range,
    help="S/N range of the labelled objects, LO,HI.",
)
@click.option(
    "--edge-fraction",
    type=click.FloatRange(0, 1),
    default=0.03,
    show_default=True,
    help="Fraction of examples near a chip edge.",
)
@click.option(
    "--no-template-fraction",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of examples whose template lacks data over part of the stamp.",
)
@click.option(
    "--variance/--no-variance", default=False, show_default=True, help="Also write variance planes."
)
@click.option(
    "--survey",
    type=click.Choice(["rubin", "ztf", "decam"], case_sensitive=False),
    default=None,
    help="Simulate with a survey preset (seeing, pixel scale, noise, sky, template depth, units, "
    "edges, missing pixels, sign of negative detections); replaces --fwhm-range and --edge-fraction. "
    "--size may then be the preset's alert cutout size (rubin 30, ztf 63, decam 63), even sizes too.",
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
):
    """Write N labelled triplet stamps to OUT (.npz, readable with np.load(allow_pickle=False)).

    Keys: stamps (N, 3, S, S) float32 in channel order difference, science,
    template (NaN = no data), in nJy or, with --survey, the preset's units;
    masks (N, 3, S, S) int32; id, label, source_class, snr, flux,
    fwhm_science, fwhm_template and the other truth columns. With --survey
    an even --size (Rubin's 30x30 alert cutouts) is simulated one pixel
    larger and cropped to [:S, :S], so the source stays at pixel (S // 2, S // 2).
    """
    from ..sim.io import write_stamps
    from ..sim.stamps import simulate_stamps

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
    start = time.perf_counter()

    def progress(done, total):
        if done == total or done % (20 * 256) < 256:
            click.echo(f"  {done}/{total} stamps ({time.perf_counter() - start:.1f} s)", err=True)

    result = simulate_stamps(
        n,
        size + 1 - size % 2,
        seed,
        real_fraction=real_fraction,
        fwhm_range=fwhm_range,
        snr_range=snr_range,
        edge_fraction=edge_fraction,
        no_template_fraction=no_template_fraction,
        with_variance=variance,
        progress=progress,
        survey=survey,
    )
    if size % 2 == 0:
        # Cropping [:S, :S] keeps the centre pixel at S // 2, as in Rubin's even alert cutouts.
        result.stamps = np.ascontiguousarray(result.stamps[:, :, :size, :size])
        if result.masks is not None:
            result.masks = np.ascontiguousarray(result.masks[:, :, :size, :size])
        if result.variances is not None:
            result.variances = np.ascontiguousarray(result.variances[:, :, :size, :size])
        result.table.meta["stamp_size"] = size
    write_stamps(result, out)
    n_real = int((result.table["label"] == 1).sum())
    preset = f", survey {survey} ({result.table.meta['units']})" if survey is not None else ""
    click.echo(
        f"Wrote {n} stamps ({n_real} real, {n - n_real} bogus) of {size}x{size} px{preset} to {out} "
        f"in {time.perf_counter() - start:.1f} s."
    )


@simulate.command("visit-stamps")
@click.argument("out", type=click.Path(dir_okay=False, writable=True))
@click.option("--first-seed", type=int, default=0, show_default=True, help="Seed of the first visit.")
@click.option(
    "--visits",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Number of visits (seeds FIRST-SEED, FIRST-SEED+1, ...).",
)
@click.option(
    "--size", type=click.IntRange(min=3), default=51, show_default=True, help="Stamp side in pixels (odd)."
)
@click.option("--shape", default="1024,1024", show_default=True, help="Detector HEIGHT,WIDTH in pixels.")
@click.option(
    "--n-sources",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Labelled objects per visit.",
)
def visit_stamps(out, first_seed, visits, size, shape, n_sources):
    """Write the stamps of all sources of simulated detector visits to OUT (.npz).

    Same keys as `rbnet simulate stamps` (stamps are raw pixels around the
    measured centroids; masks are the mask planes), for training on the
    crowding, shared artifacts and PSFs of whole visits.
    """
    from ..sim.io import write_stamps
    from ..sim.visit_stamps import simulate_visit_stamps

    if size % 2 != 1:
        raise click.BadParameter(f"--size must be odd, got {size}.")
    try:
        height, width = (int(v) for v in shape.split(","))
    except ValueError:
        raise click.BadParameter(f"--shape: expected HEIGHT,WIDTH, got {shape!r}") from None
    start = time.perf_counter()

    def progress(done, total):
        click.echo(f"  {done}/{total} visits ({time.perf_counter() - start:.1f} s)", err=True)

    result = simulate_visit_stamps(
        range(first_seed, first_seed + visits),
        shape=(height, width),
        n_sources=n_sources,
        stamp_size=size,
        progress=progress,
    )
    write_stamps(result, out)
    n = len(result)
    n_real = int((result.table["label"] == 1).sum())
    click.echo(
        f"Wrote {n} stamps ({n_real} real, {n - n_real} bogus) of {size}x{size} px from {visits} visits "
        f"(seeds {first_seed}-{first_seed + visits - 1}) to {out} in {time.perf_counter() - start:.1f} s."
    )


@simulate.command("visit")
@click.argument("out_dir", type=click.Path(file_okay=False, writable=True))
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--shape", default="1024,1024", show_default=True, help="Detector HEIGHT,WIDTH in pixels.")
@click.option(
    "--n-sources",
    type=click.IntRange(min=0),
    default=300,
    show_default=True,
    help="Number of labelled objects.",
)
@click.option("--real-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option(
    "--fwhm-science", type=float, default=None, help="Science seeing FWHM (pixels); drawn by default."
)
@click.option("--fwhm-template", type=float, default=None, help="Template FWHM (pixels); drawn by default.")
@click.option("--visit", type=int, default=None, help="Visit id (default 2026010100000 + seed).")
@click.option("--detector", type=int, default=0, show_default=True, help="Detector id.")
@click.option("--band", type=click.Choice(["u", "g", "r", "i", "z", "y"]), default="r", show_default=True)
@click.option(
    "--template-coverage",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of the detector without template data.",
)
@click.option("--sources-format", type=click.Choice(["ecsv", "parquet"]), default="ecsv", show_default=True)
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
    from ..sim.visit import simulate_visit

    try:
        height, width = (int(v) for v in shape.split(","))
    except ValueError:
        raise click.BadParameter(f"--shape expects HEIGHT,WIDTH, got {shape!r}") from None
    start = time.perf_counter()
    result = simulate_visit(
        seed,
        (height, width),
        n_sources=n_sources,
        real_fraction=real_fraction,
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
        from ..sim.gallery import make_visit_preview

        make_visit_preview(result, preview)
        click.echo(f"Wrote preview {preview}.")


@simulate.command("sequences")
@click.argument("out", type=click.Path(dir_okay=False, writable=True))
@click.option("--n-objects", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--frame-size", type=click.IntRange(min=3), default=28, show_default=True)
@click.option(
    "--n-visits",
    default="1,100",
    show_default=True,
    callback=_parse_range,
    help="Range of the number of visits per object, LO,HI.",
)
@click.option("--real-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True)
def sequences(out, n_objects, seed, frame_size, n_visits, real_fraction):
    """Write multi-visit cutout sequences of N objects to OUT (.npz, no pickle).

    Keys: frames (sum T, C, F, F) float32, offsets (N + 1,), times (sum T,) MJD,
    label, source_class, kind, object_id, plus per-frame fwhm and snr.
    """
    from ..sim.sequences import simulate_sequences

    start = time.perf_counter()
    result = simulate_sequences(
        n_objects,
        seed,
        frame_size=frame_size,
        n_visits=(int(n_visits[0]), int(n_visits[1])),
        real_fraction=real_fraction,
    )
    result.save(out)
    click.echo(
        f"Wrote {n_objects} sequences ({len(result.times)} frames) to {out} "
        f"in {time.perf_counter() - start:.1f} s."
    )


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, writable=True))
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--n-per-class",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Examples shown per class.",
)
@click.option(
    "--size", type=click.IntRange(min=3), default=51, show_default=True, help="Stamp side (pixels)."
)
def gallery(out, seed, n_per_class, size):
    """Plot simulated examples of every class (one row per class) to OUT (PNG)."""
    from ..sim.gallery import make_gallery

    make_gallery(out, seed=seed, n_per_class=n_per_class, stamp_size=size)
    click.echo(f"Wrote {out}.")
