#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Simulated versus real alert cutouts, per survey preset: statistics and galleries.

For every survey with real cutouts in the development set (``../shared/realdata``
beside the checkout, or ``--realdata``): ZTF (``ztf_alerts_63.npz``), Rubin
(``rubin_alerts_30.npz``) and DECam (``decam_alerts_63.npz``), this

- simulates ``--n`` stamps with the survey's preset
  (`lsst.meas.rbnet.sim.surveys`) at its alert cutout size (an odd
  `SurveyPreset.simulation_size`, cropped to ``[:cutout_size, :cutout_size]``),
  with the default class mix of training (half real, shared by the real
  classes; half bogus),
- measures `lsst.meas.rbnet.sim.compare.cutout_statistics` of the real and the
  simulated cutouts and puts their distributions side by side
  (`compare_statistics`): all simulated stamps, and the real classes only,
- adds the fraction of negative detections from the metadata (real: ZTF
  ``isdiffpos == 'f'``, Rubin/DECam a negative ``isdiffpos`` flux; simulated:
  the truth ``detection_sign``),
- writes ``benchmarks/results/sim_real.md`` and ``.json``, and per survey a
  gallery ``doc/sim-vs-real/<survey>.png`` (real cutouts across the survey score
  range beside simulated ones of real-looking classes, the same stretch for
  both) and histograms of the main statistics ``doc/sim-vs-real/<survey>_stats.png``.

The real cutouts are read, never trained on (their README).

Usage: ``python benchmarks/compare_sim_real.py [--n 3000] [--seed 8] [--realdata DIR]``
"""

import argparse
import json
import os
import platform
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Survey preset -> file of the development set.
REAL_FILES = {"ztf": "ztf_alerts_63.npz", "rubin": "rubin_alerts_30.npz", "decam": "decam_alerts_63.npz"}

#: Index of each plane in the real files' ``triplets`` (science, template, difference) ...
REAL_ORDER = {"science": 0, "template": 1, "difference": 2}
#: ... and in simulated stamps (`lsst.meas.rbnet.constants.CHANNEL_ORDER`).
SIM_ORDER = {"difference": 0, "science": 1, "template": 2}

#: Simulated classes shown in the galleries: those that look like real alerts, and two common bogus ones.
GALLERY_CLASSES = (
    "real_new",
    "real_brighter",
    "real_fainter",
    "real_on_galaxy",
    "real_moving",
    "dipole",
    "cosmic_ray",
    "bright_star_residual",
)

#: Statistics in the Markdown table (all of them go to the JSON).
TABLE_STATISTICS = (
    "noise_science",
    "noise_template",
    "noise_difference",
    "noise_ratio_template",
    "noise_ratio_difference",
    "sky_science",
    "sky_template",
    "sky_difference",
    "sky_over_noise_science",
    "sky_over_noise_template",
    "noise_corr_science",
    "noise_corr_template",
    "noise_corr_difference",
    "fwhm_science",
    "fwhm_difference",
    "ellipticity_science",
    "science_peak_snr",
    "template_peak_snr",
    "difference_peak_snr",
    "difference_psf_snr",
    "n_peaks_science",
    "n_peaks_template",
    "n_peaks_difference",
    "nan_fraction_science",
    "nan_fraction_template",
    "nan_fraction_difference",
    "any_nan",
    "negative",
    "negative_science_minus_template",
    "truth_negative",
)

#: Statistics drawn as histograms.
HIST_STATISTICS = (
    ("noise_ratio_template", "template noise / science noise", "log"),
    ("noise_ratio_difference", "difference noise / science noise", "log"),
    ("sky_over_noise_science", "science sky / science noise", "linear"),
    ("noise_corr_template", "template noise lag-1 correlation", "linear"),
    ("noise_corr_difference", "difference noise lag-1 correlation", "linear"),
    ("fwhm_science", "science FWHM (pixels)", "linear"),
    ("fwhm_difference", "difference FWHM (pixels)", "linear"),
    ("difference_peak_snr", "difference peak / noise", "log"),
    ("science_peak_snr", "science centre peak / noise", "log"),
    ("noise_corr_science", "science noise lag-1 correlation", "linear"),
    ("n_peaks_science", "science: field peaks > 5 sigma", "linear"),
    ("n_peaks_difference", "difference: residual peaks > 5 sigma", "linear"),
)


def _real_negative(data) -> np.ndarray:
    # The survey's own sign of the detection: ZTF 't'/'f'; Rubin and DECam carry a signed flux or 1/0.
    flag = np.asarray(data["isdiffpos"]).astype(str)
    out = np.zeros(len(flag), bool)
    for i, v in enumerate(flag):
        v = v.strip().lower()
        if v in ("f", "false", "0", "-1"):
            out[i] = True
        elif v not in ("t", "true", "1"):
            try:
                out[i] = float(v) < 0
            except ValueError:
                pass
    return out


def _planes(stamps: np.ndarray, order: dict) -> dict:
    return {name: np.asarray(stamps[:, index], dtype=np.float64) for name, index in order.items()}


def _stats(planes: dict):
    from lsst.meas.rbnet.sim.compare import cutout_statistics

    return cutout_statistics(planes["science"], planes["template"], planes["difference"])


def _sim_diagnostics(truth, stats) -> dict:
    # Where simulated traits come from, by the simulator's truth: the subtraction mode (the science
    # convolved when the template is the sharper image) and the causes of missing pixels.
    conv = np.asarray(truth["convolved_science"], bool)
    nan = np.asarray(stats["any_nan"], bool)
    block = np.asarray(truth["nan_block"], bool)
    edge = np.asarray(truth["near_edge"], bool)
    out = {"convolved_science_fraction": float(conv.mean())}
    for name, sel in (("convolved_science", conv), ("convolved_template", ~conv)):
        for col in ("noise_ratio_difference", "noise_corr_difference"):
            v = np.asarray(stats[col], float)[sel]
            v = v[np.isfinite(v)]
            out[f"{col}_{name}"] = [float(x) for x in np.percentile(v, [16, 50, 84])] if len(v) else None
    out["nan_fraction"] = float(nan.mean())
    out["nan_with_block"] = float((nan & block).mean())
    out["nan_near_edge_without_block"] = float((nan & edge & ~block).mean())
    out["nan_other"] = float((nan & ~edge & ~block).mean())
    return out


def _smoothed_difference(stats) -> dict:
    # Fractions of cutouts whose difference looks smoothed: less noisy than the science, correlated.
    ratio = np.asarray(stats["noise_ratio_difference"], float)
    corr = np.asarray(stats["noise_corr_difference"], float)
    return {
        "noise_ratio_below_0.8": float(np.mean(ratio < 0.8)),
        "noise_corr_above_0.2": float(np.mean(corr > 0.2)),
        "max_noise_corr": float(np.nanmax(corr)) if np.isfinite(corr).any() else None,
    }


def _plain(value):
    # numpy scalar -> Python scalar for JSON.
    return value.item() if hasattr(value, "item") else value


def _fmt(v, digits=3):
    if v is None or not np.isfinite(v):
        return "-"
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-2):
        return f"{v:.2e}"
    return f"{v:.{digits}g}"


def _gallery(path, survey, real, real_meta, sim, sim_table, n_rows, rng):
    """Real cutouts (left) beside simulated ones (right), one stretch per column for both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Real: spread over the survey's score range (sorted by score, evenly spaced ranks).
    score = np.asarray(real_meta["score"], dtype=float)
    order = np.argsort(np.where(np.isfinite(score), score, -1.0), kind="stable")
    n_real = min(n_rows, len(order))
    real_pick = order[np.linspace(0, len(order) - 1, n_real).round().astype(int)][::-1]
    # Simulated: one or two of each real-looking class, at the S/N of a typical alert (5-100).
    cls = np.asarray(sim_table["source_class"]).astype(str)
    snr = np.asarray(sim_table["snr"], dtype=float)
    sim_pick = []
    for name in GALLERY_CLASSES[:n_rows]:
        idx = np.flatnonzero((cls == name) & (snr >= 5) & (snr <= 100))
        if len(idx):
            sim_pick.append(int(rng.choice(idx)))
    names = ("science", "template", "difference")

    def sky_subtracted(planes, index, name):
        img = planes[name][index]
        if name == "difference":
            return img
        # Per-cutout sky removed for display only (ZTF skies differ by 10x between cutouts);
        # the sky levels are in the statistics table.
        finite = img[np.isfinite(img)]
        return img - (np.median(finite) if finite.size else 0.0)

    shown = {name: [] for name in names}
    for planes, picks in ((real, real_pick), (sim, sim_pick)):
        for i in picks:
            for name in names:
                shown[name].append(sky_subtracted(planes, i, name))
    limits = {}
    for name in names:
        pooled = np.concatenate([a[np.isfinite(a)].ravel() for a in shown[name]])
        noise = 1.4826 * np.median(np.abs(pooled - np.median(pooled)))
        soft = max(noise, 1e-12)
        if name == "difference":
            hi = np.percentile(np.abs(pooled), 99.5)
            limits[name] = (-hi, hi, soft)
        else:
            limits[name] = (np.percentile(pooled, 0.5), np.percentile(pooled, 99.7), soft)

    cmap = {
        "gray": matplotlib.colormaps["gray"].copy(),
        "diff": matplotlib.colormaps["RdBu_r"].copy(),
    }
    for c in cmap.values():
        c.set_bad("red")
    rows = max(n_real, len(sim_pick))
    fig, axes = plt.subplots(
        rows, 7, figsize=(12.5, 1.75 * rows + 1.2), gridspec_kw={"width_ratios": [1, 1, 1, 0.12, 1, 1, 1]}
    )
    axes = np.atleast_2d(axes)
    for r in range(rows):
        axes[r, 3].axis("off")
        for block, (planes, picks, label) in enumerate(((real, real_pick, "real"), (sim, sim_pick, "sim"))):
            for c, name in enumerate(names):
                ax = axes[r, 4 * block + c]
                ax.set_xticks([])
                ax.set_yticks([])
                if r >= len(picks):
                    ax.axis("off")
                    continue
                i = picks[r]
                img = sky_subtracted(planes, i, name)
                lo, hi, soft = limits[name]
                stretched = np.arcsinh(img / soft)
                ax.imshow(
                    stretched,
                    cmap=cmap["diff" if name == "difference" else "gray"],
                    vmin=np.arcsinh(lo / soft),
                    vmax=np.arcsinh(hi / soft),
                    origin="lower",
                    interpolation="nearest",
                )
                ax.set_title(f"{label} {name}", fontsize=7, pad=2)
                if c == 0:
                    if label == "real":
                        meta = real_meta
                        sign = "-" if meta["negative"][i] else "+"
                        text = f"{meta['score_name'][i]} {meta['score'][i]:.2f}\nisdiffpos {sign}"
                    else:
                        sign = "-" if sim_table["detection_sign"][i] < 0 else "+"
                        text = f"{sim_table['source_class'][i]}\nS/N {snr[i]:.0f} ({sign})"
                    ax.set_ylabel(text, fontsize=7)
                if r == rows - 1 or r == len(picks) - 1:
                    ax.set_xlabel("pixels", fontsize=6)
    size = real["science"].shape[-1]
    fig.suptitle(
        f"{survey}: real alert cutouts (left, by survey score) vs simulated '{survey}' preset (right), "
        f"{size}x{size} px\nsame asinh stretch per column for real and simulated (softening = pooled noise, "
        f"limits = pooled 0.5-99.7% / |diff| 99.5%); science and template less their median sky; "
        f"difference red +, blue -; NaN pixels red",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _histograms(path, survey, real_table, sim_table, sim_real_table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(4, 3, figsize=(12, 12.5))
    for ax, (col, label, scale) in zip(axes.ravel(), HIST_STATISTICS):
        series = [
            ("real", real_table, "k"),
            ("sim (all)", sim_table, "tab:blue"),
            ("sim (real classes)", sim_real_table, "tab:orange"),
        ]
        values = [np.asarray(t[col], float) for _, t, _ in series]
        values = [v[np.isfinite(v)] for v in values]
        if scale == "log":
            values = [v[v > 0] for v in values]
        pooled = np.concatenate(values) if any(len(v) for v in values) else np.zeros(1)
        lo, hi = np.percentile(pooled, [1, 99]) if len(pooled) else (0, 1)
        if scale == "log":
            bins = np.geomspace(max(lo, 1e-3), max(hi, 2e-3), 30)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
        for (name, _, colour), v in zip(series, values):
            if not len(v):
                # Nothing measurable (e.g. no FWHM of a single faint cutout): say so in the legend.
                ax.plot([], [], color=colour, label=f"{name} (n=0)")
                continue
            ax.hist(
                np.clip(v, bins[0], bins[-1]),
                bins=bins,
                density=True,
                histtype="step",
                color=colour,
                lw=1.5,
                label=f"{name} (n={len(v)})",
            )
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.set_title(col, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{survey}: statistics of real alert cutouts vs the simulated '{survey}' preset "
        "(lsst.meas.rbnet.sim.compare.cutout_statistics; values outside the axis are piled at its ends)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="Simulated stamps per survey.")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--realdata",
        default=os.path.join(os.path.dirname(ROOT), "shared", "realdata"),
        help="Directory of the real development set (default: shared/realdata beside the checkout).",
    )
    parser.add_argument("--surveys", default="ztf,rubin,decam")
    parser.add_argument("--gallery-rows", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "sim_real"))
    parser.add_argument("--figures", default=os.path.join(ROOT, "doc", "sim-vs-real"))
    args = parser.parse_args()

    from lsst.meas.rbnet.constants import REAL_CLASSES
    from lsst.meas.rbnet.sim import simulate_stamps
    from lsst.meas.rbnet.sim.compare import compare_statistics
    from lsst.meas.rbnet.sim.surveys import get_survey

    os.makedirs(args.figures, exist_ok=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    results = {
        "command": "python benchmarks/compare_sim_real.py "
        + f"--n {args.n} --seed {args.seed} --surveys {args.surveys}",
        "machine": platform.platform(),
        "python": platform.python_version(),
        "surveys": {},
    }
    for survey in args.surveys.split(","):
        preset = get_survey(survey)
        path = os.path.join(args.realdata, REAL_FILES[survey])
        if not os.path.exists(path):
            raise FileNotFoundError(f"{survey}: real cutouts {path} not found (set --realdata).")
        with np.load(path, allow_pickle=False) as data:
            triplets = np.asarray(data["triplets"])
            real_meta = {k: np.asarray(data[k]) for k in ("score", "score_name", "isdiffpos")}
        real_meta["negative"] = _real_negative(real_meta)
        if triplets.shape[-1] != preset.cutout_size:
            raise ValueError(
                f"{survey}: {path} holds {triplets.shape[-1]}-pixel cutouts, the preset "
                f"{preset.cutout_size}."
            )
        start = time.process_time()
        sim = simulate_stamps(args.n, preset.simulation_size, args.seed, survey=preset, with_masks=False)
        cpu = time.process_time() - start
        k = preset.cutout_size
        sim_stamps = sim.stamps[:, :, :k, :k]
        real_planes = _planes(triplets, REAL_ORDER)
        sim_planes = _planes(sim_stamps, SIM_ORDER)
        real_table = _stats(real_planes)
        sim_table = _stats(sim_planes)
        real_table["truth_negative"] = real_meta["negative"]
        sim_table["truth_negative"] = np.asarray(sim.table["detection_sign"]) < 0
        is_real = np.isin(np.asarray(sim.table["source_class"]).astype(str), REAL_CLASSES)
        comp_all = compare_statistics(real_table, sim_table)
        comp_real = compare_statistics(real_table, sim_table[is_real], names=("real", "simreal"))
        print(
            f"{survey}: {len(real_table)} real vs {args.n} simulated ({k}x{k}; simulation {cpu:.1f} s CPU)",
            flush=True,
        )
        rows = []
        for row, row_r in zip(comp_all, comp_real):
            entry = {name: _plain(row[name]) for name in row.colnames}
            for q in ("n", "p16", "median", "p84", "mean"):
                entry[f"sim_real_classes_{q}"] = _plain(row_r[f"simreal_{q}"])
            rows.append(entry)
        results["surveys"][survey] = {
            "real_file": REAL_FILES[survey],
            "n_real": len(real_table),
            "n_sim": args.n,
            "n_sim_real_classes": int(is_real.sum()),
            "cutout_size": k,
            "units": preset.units,
            "simulation_cpu_s": cpu,
            "statistics": rows,
            "sim_diagnostics": _sim_diagnostics(sim.table, sim_table),
            "smoothed_difference": {
                "real": _smoothed_difference(real_table),
                "sim": _smoothed_difference(sim_table),
            },
        }
        rng = np.random.default_rng(args.seed)
        _gallery(
            os.path.join(args.figures, f"{survey}.png"),
            survey,
            real_planes,
            real_meta,
            sim_planes,
            sim.table,
            args.gallery_rows,
            rng,
        )
        stats_png = os.path.join(args.figures, f"{survey}_stats.png")
        _histograms(stats_png, survey, real_table, sim_table, sim_table[is_real])
        for e in rows:
            if e["statistic"] in TABLE_STATISTICS:
                print(
                    f"  {e['statistic']:32s} real {_fmt(e['real_median'])} "
                    f"[{_fmt(e['real_p16'])}, {_fmt(e['real_p84'])}] mean {_fmt(e['real_mean'])}   "
                    f"sim {_fmt(e['sim_median'])} [{_fmt(e['sim_p16'])}, {_fmt(e['sim_p84'])}] "
                    f"mean {_fmt(e['sim_mean'])}   sim-real-classes {_fmt(e['sim_real_classes_median'])} "
                    f"mean {_fmt(e['sim_real_classes_mean'])}",
                    flush=True,
                )
    with open(args.out + ".json", "w") as stream:
        json.dump(results, stream, indent=1, default=float)
    _write_markdown(args.out + ".md", results)
    print(f"Wrote {args.out}.json and .md, figures in {args.figures}")


def _write_markdown(path, results):
    # The numbers; the judgement (where they differ and why) is written by hand below the marker.
    marker = "<!-- judgement -->"
    judgement = ""
    if os.path.exists(path):
        with open(path) as stream:
            old = stream.read()
        if marker in old:
            judgement = old[old.index(marker) :]
    with open(path, "w") as stream:
        stream.write("# Simulated vs real alert cutouts, per survey preset\n\n")
        stream.write(
            f"Command: `{results['command']}` ({results['machine']}, Python {results['python']}).\n"
            "Statistics: `lsst.meas.rbnet.sim.compare.cutout_statistics` (definitions in its docstring); "
            "each cell is median [16th, 84th percentile]; for flags (and the NaN fractions) the mean, i.e. "
            "the fraction of cutouts, is what matters. `sim` = all simulated stamps (training class mix: "
            "half real, half bogus), `sim real` = the real classes only. `truth_negative`: real = the "
            "survey's `isdiffpos`, sim = the truth `detection_sign`. FWHM is NaN (left out) where the "
            "central peak is below 5 sigma. Galleries and histograms: `doc/sim-vs-real/`.\n\n"
        )
        for survey, res in results["surveys"].items():
            size = res["cutout_size"]
            stream.write(
                f"## {survey}\n\n{res['n_real']} real cutouts (`{res['real_file']}`) vs {res['n_sim']} "
                f"simulated ({res['n_sim_real_classes']} of real classes), {size}x{size} px, "
                f"{res['units']}; simulation {res['simulation_cpu_s']:.0f} s CPU.\n\n"
            )
            stream.write(
                "| statistic | n real / sim | real | sim | sim real | real mean | sim mean | sim real mean "
                "| sim/real median |\n"
            )
            stream.write("|---|---|---|---|---|---|---|---|---|\n")
            for e in res["statistics"]:
                if e["statistic"] not in TABLE_STATISTICS:
                    continue
                if e["kind"] == "flag":
                    cells = ["-", "-", "-"]
                else:
                    cells = [
                        f"{_fmt(e[p + 'median'])} [{_fmt(e[p + 'p16'])}, {_fmt(e[p + 'p84'])}]"
                        for p in ("real_", "sim_", "sim_real_classes_")
                    ]
                means = [_fmt(e["real_mean"]), _fmt(e["sim_mean"]), _fmt(e["sim_real_classes_mean"])]
                # A ratio of medians means something only for positive quantities.
                positive = e["kind"] == "value" and e["real_median"] > 0 and e["sim_median"] > 0
                ratio = _fmt(e["ratio_median"]) if positive else "-"
                counts = f"{e['real_n']} / {e['sim_n']}"
                row = [e["statistic"], counts] + cells + means + [ratio]
                stream.write("| " + " | ".join(row) + " |\n")
            stream.write("\n")
            d = res["sim_diagnostics"]

            def trio(v):
                return "-" if v is None else f"{_fmt(v[1])} [{_fmt(v[0])}, {_fmt(v[2])}]"

            conv_ratio = trio(d["noise_ratio_difference_convolved_science"])
            conv_corr = trio(d["noise_corr_difference_convolved_science"])
            tmpl_ratio = trio(d["noise_ratio_difference_convolved_template"])
            tmpl_corr = trio(d["noise_corr_difference_convolved_template"])
            stream.write(
                "Simulated, by the truth: "
                f"{d['convolved_science_fraction']:.1%} of stamps have the science convolved (template "
                f"sharper); their difference/science noise is {conv_ratio} and difference noise correlation "
                f"{conv_corr}, against {tmpl_ratio} and {tmpl_corr} when the template is convolved. "
                f"Stamps with NaN pixels: {d['nan_fraction']:.1%} = {d['nan_with_block']:.1%} with a cut "
                f"block + {d['nan_near_edge_without_block']:.1%} near a chip edge + {d['nan_other']:.1%} "
                "other (saturated cores).\n\n"
            )
            real_sm, sim_sm = res["smoothed_difference"]["real"], res["smoothed_difference"]["sim"]
            stream.write(
                "Smoothed-looking differences: difference/science noise below 0.8 in "
                f"{real_sm['noise_ratio_below_0.8']:.1%} of real and {sim_sm['noise_ratio_below_0.8']:.1%} "
                f"of simulated cutouts; lag-1 noise correlation above 0.2 in "
                f"{real_sm['noise_corr_above_0.2']:.1%} real, {sim_sm['noise_corr_above_0.2']:.1%} "
                f"simulated (largest real {_fmt(real_sm['max_noise_corr'])}).\n\n"
            )
        stream.write(judgement or marker + "\n")


if __name__ == "__main__":
    main()
