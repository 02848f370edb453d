#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Accuracy benchmark of a triplet model package on a held-out simulated test set.

The test set is simulated with `lsst.meas.rbnet.sim.simulate_stamps` at
``--stamp-size`` (51 by default: raw stamps larger than the model's, as a
pipeline would cut them) with the fixed seed `TEST_SEED`, which no training
command of this project uses. The model scores the raw stamps through the
public API, `lsst.meas.rbnet.score_triplets` (which crops, normalises and
calibrates as the package's contract says): plainly, with rotation/flip
averaging (``symmetry=True``), and with the pixels that carry a bad mask plane
(`constants.DEFAULT_BAD_MASK_PLANES`) blanked first, as the pipeline's cutout
code does before scoring ("pipeline masks").

Reported (with `lsst.meas.rbnet.training.report.evaluate_scores`): ROC-AUC,
accuracy, F1, expected calibration error, log loss, completeness at purity 95%
and 99% (all sources and SNR >= 6), purity/completeness at the package's
recommended thresholds, the fraction of each artifact class scored above the
default threshold, the completeness of each real class, and completeness in
bins of SNR. A logistic-regression baseline on the same prepared pixels
(`training.baseline.LogisticBaseline`), fitted on separately simulated
training stamps (seed ``--baseline-seed``), is evaluated on the same test set.

Visit level: ``--visits`` (20 by default) detector visits simulated with
`lsst.meas.rbnet.sim.simulate_visit` (1024x1024, 300 labelled sources each;
seeds from ``--visit-seed`` = `VISIT_SEED`, never used for training and not the
seeds of ``rbnet demo``) are scored at the catalogue's measured centroids
through `Scorer.score_images` with their mask planes, as the pipeline scores
them, by the model and by every ``--compare`` package (e.g. the previous
default), side by side: the same metrics plus the spread of the per-visit
ROC-AUC. These stamps differ from `simulate_stamps` (crowding, trails, ghosts
and bad columns shared between detections, one PSF per visit, measured
centroids).

Targets (checked and printed, for the plain and the pipeline-mask scores):
ROC-AUC >= 0.99; completeness >= 95% at purity >= 99% for SNR >= 6;
ECE <= 0.02; the CNN beats the baseline in ROC-AUC and in completeness at
purity 99% (SNR >= 6).

Results go to ``benchmarks/results/accuracy.json`` and ``.md``.

Usage::

    python benchmarks/bench_accuracy.py [--model PACKAGE] [--n 20000] [--test-data FILE.npz] \
        [--visits 20] [--compare OLD_PACKAGE ...]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

#: Seed of the test set. Never used to simulate training data (the default model's
#: training data use seeds 101 and up; see doc/default-model.md).
TEST_SEED = 20240
#: Seed of the baseline's training stamps (not a seed of the CNN's training data either).
BASELINE_SEED = 20241
#: First seed of the visit-level test visits (training visits use seeds 5000-6079, see
#: doc/default-model.md; ``rbnet demo`` uses small seeds).
VISIT_SEED = 90000

TARGETS = {
    "roc_auc": 0.99,
    "completeness_at_purity99_snr6": 0.95,
    "ece": 0.02,
}


def simulate(n, seed, stamp_size, cache=None, survey=None):
    """Raw stamps, mask planes, labels, classes and SNR from the simulator (or an npz cache of them)."""
    from lsst.meas.rbnet.training.data import load_npz

    if cache is not None and Path(cache).is_file():
        d = load_npz(cache)
        return d["stamps"], d["masks"], d["labels"], d["classes"], d["snr"]
    from lsst.meas.rbnet.sim import simulate_stamps

    t0 = time.perf_counter()
    sim = simulate_stamps(n, stamp_size=stamp_size, seed=seed, with_masks=True, survey=survey)
    print(f"simulated {n} stamps (seed {seed}, {stamp_size}x{stamp_size}) in {time.perf_counter() - t0:.0f} s")
    out = (
        sim.stamps,
        sim.masks.astype(np.uint16),  # mask bits fit in 16 bits; halves the cache
        np.asarray(sim.table["label"]).astype(np.int64),
        np.asarray(sim.table["source_class"]).astype(str),
        np.asarray(sim.table["snr"], dtype=np.float64),
    )
    if cache is not None:
        np.savez(cache, stamps=out[0], masks=out[1], label=out[2], source_class=out[3], snr=out[4])
    return out


def blank_masked(stamps, masks):
    """Copy of ``stamps`` with pixels carrying a bad mask plane set to NaN, as the pipeline's cutouts do."""
    from lsst.meas.rbnet.constants import DEFAULT_BAD_MASK_PLANES, mask_bits

    out = stamps.copy()
    out[(masks & mask_bits(DEFAULT_BAD_MASK_PLANES)) != 0] = np.nan
    return out


def evaluate_visits(model_paths, seeds, shape=(1024, 1024), n_sources=300, threads=1):
    """Score the sources of simulated visits with each model through `Scorer.score_images` (with masks).

    Parameters
    ----------
    model_paths : `dict` [`str`, `pathlib.Path`]
        Column name -> model package.
    seeds : sequence of `int`
        `simulate_visit` seeds.

    Returns
    -------
    results : `dict` [`str`, `dict`]
        Per model, the `evaluate_scores` metrics plus ``per_visit_auc`` (one per
        visit), ``n_unscored`` and ``seconds`` (scoring time).
    """
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.scoring import load_scorer
    from lsst.meas.rbnet.sim import simulate_visit
    from lsst.meas.rbnet.training.metrics import roc_auc
    from lsst.meas.rbnet.training.report import evaluate_scores

    scorers = {
        name: load_scorer(path, device="cpu", num_threads=threads) for name, path in model_paths.items()
    }
    thresholds = {
        name: {t["name"]: t["threshold"] for t in ModelPackage.load(path).thresholds}
        for name, path in model_paths.items()
    }
    probs = {name: [] for name in scorers}
    per_visit = {name: [] for name in scorers}
    seconds = dict.fromkeys(scorers, 0.0)
    labels, classes, snr = [], [], []
    t0 = time.perf_counter()
    for seed in seeds:
        v = simulate_visit(seed, shape=shape, n_sources=n_sources)
        s = v.sources
        images = [v.difference.image, v.science.image, v.template.image]
        masks = [v.difference.mask, v.science.mask, v.template.mask]
        y_true = np.asarray(s["label"]).astype(np.int64)
        labels.append(y_true)
        classes.append(np.asarray(s["source_class"]).astype(str))
        snr.append(np.asarray(s["snr"], dtype=np.float64))
        for name, scorer in scorers.items():
            t1 = time.perf_counter()
            result = scorer.score_images(images, s["x"], s["y"], masks=masks)
            p = np.asarray(result.reliability, dtype=np.float64)
            seconds[name] += time.perf_counter() - t1
            probs[name].append(p)
            ok = np.isfinite(p)
            per_visit[name].append(roc_auc(p[ok], y_true[ok]))
    labels, classes, snr = np.concatenate(labels), np.concatenate(classes), np.concatenate(snr)
    elapsed = time.perf_counter() - t0
    print(f"simulated and scored {len(seeds)} visits ({len(labels)} sources) in {elapsed:.0f} s")
    results = {}
    for name in scorers:
        p = np.concatenate(probs[name])
        ok = np.isfinite(p)
        m = evaluate_scores(p[ok], labels[ok], classes=classes[ok], snr=snr[ok], thresholds=thresholds[name])
        m["n_unscored"] = int((~ok).sum())
        m["seconds"] = seconds[name]
        m["per_visit_auc"] = per_visit[name]
        results[name] = m
        print(
            f"visits, {name}: AUC {m['roc_auc']:.5f} (per visit {min(per_visit[name]):.4f}-"
            f"{max(per_visit[name]):.4f}), AUC SNR>=6 {m['roc_auc_snr']:.5f}, ECE {m['ece']:.4f}"
        )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="Model package (default: the shipped default model).")
    parser.add_argument("--n", type=int, default=20000, help="Test sources (default 20000).")
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="Test-set seed (default %(default)s).")
    parser.add_argument("--stamp-size", type=int, default=51, help="Side of the raw test stamps.")
    parser.add_argument("--test-data", default=None, help="npz cache of the test set (read if present, else written).")
    parser.add_argument("--baseline-n", type=int, default=20000, help="Training stamps of the baseline (0: none).")
    parser.add_argument("--baseline-seed", type=int, default=BASELINE_SEED)
    parser.add_argument("--baseline-data", default=None, help="npz cache of the baseline's training stamps.")
    parser.add_argument("--no-symmetry", action="store_true", help="Skip the rotation/flip-averaged scores.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1).")
    parser.add_argument("--plots", default=None, help="Directory for ROC/reliability/per-class plots.")
    parser.add_argument("--visits", type=int, default=20, help="Visit-level test visits (0: none).")
    parser.add_argument("--visit-seed", type=int, default=VISIT_SEED, help="Seed of the first test visit.")
    parser.add_argument("--compare", action="append", default=[],
                        help="Another model package to evaluate on the visits side by side (repeatable).")
    parser.add_argument("--surveys", default="rubin,ztf,decam",
                        help="Survey presets with a held-out set of their own at their alert cutout size "
                             "(comma-separated; 'none' for none).")
    parser.add_argument("--survey-n", type=int, default=10000, help="Test sources per survey preset.")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy"),
                        help="Result path without suffix (.json and .md are written).")
    args = parser.parse_args(argv)

    import torch

    from lsst.meas.rbnet import score_triplets
    from lsst.meas.rbnet.cutouts import prepare_stamps
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.scoring import default_model_path
    from lsst.meas.rbnet.training.baseline import LogisticBaseline
    from lsst.meas.rbnet.training.report import (
        evaluate_scores,
        markdown_class_table,
        markdown_metrics_table,
    )

    torch.set_num_threads(args.threads)
    model_path = Path(args.model) if args.model else default_model_path()
    package = ModelPackage.load(model_path)
    thresholds = {t["name"]: t["threshold"] for t in package.thresholds}
    print(f"model {model_path.name}: version {package.version!r}, contract {package.contract}")

    stamps, masks, labels, classes, snr = simulate(args.n, args.seed, args.stamp_size, args.test_data)
    masked = blank_masked(stamps, masks)
    del masks

    results = {}
    timings = {}
    cases = (("CNN", stamps, False), ("CNN (symmetry)", stamps, True), ("CNN (pipeline masks)", masked, False))
    for name, x, symmetry in cases:
        if symmetry and args.no_symmetry:
            continue
        t0 = time.perf_counter()
        p = score_triplets(x[:, 1], x[:, 2], x[:, 0], model=model_path, device="cpu", symmetry=symmetry)
        timings[name] = time.perf_counter() - t0
        ok = np.isfinite(p)
        m = evaluate_scores(p[ok], labels[ok], classes=classes[ok], snr=snr[ok], thresholds=thresholds)
        m["n_unscored"] = int((~ok).sum())
        m["seconds"] = timings[name]
        results[name] = m
        print(f"{name}: scored {ok.sum()} of {len(p)} in {timings[name]:.1f} s, AUC {m['roc_auc']:.5f}")
        if name == "CNN":
            p_cnn, ok_cnn = p, ok

    surveys = [] if args.surveys.lower() == "none" else [v.strip() for v in args.surveys.split(",") if v.strip()]
    if surveys:
        from lsst.meas.rbnet.sim.surveys import get_survey

        for k, name in enumerate(surveys):
            preset = get_survey(name)
            size = max(preset.simulation_size, 21)
            st, ms, lab, cls_, sn = simulate(args.survey_n, args.seed + 100 + k, size, survey=preset.name)
            for label, x in ((f"CNN [{preset.name}]", st), (f"CNN [{preset.name}, pipeline masks]",
                                                             blank_masked(st, ms))):
                t0 = time.perf_counter()
                p = score_triplets(x[:, 1], x[:, 2], x[:, 0], model=model_path, device="cpu")
                ok = np.isfinite(p)
                m = evaluate_scores(p[ok], lab[ok], classes=cls_[ok], snr=sn[ok], thresholds=thresholds)
                m["n_unscored"] = int((~ok).sum())
                m["seconds"] = time.perf_counter() - t0
                m["stamp_size"] = size
                results[label] = m
                print(f"{label}: {size}x{size}, scored {ok.sum()} of {len(p)}, AUC {m['roc_auc']:.5f}")
            del st, ms

    if args.baseline_n > 0:
        bst, _, blab, _, _ = simulate(args.baseline_n, args.baseline_seed, package.contract.stamp_size, args.baseline_data)
        xb, _ = prepare_stamps(bst, package.contract)
        t0 = time.perf_counter()
        base = LogisticBaseline(seed=0).fit(xb, blab)
        del xb, bst
        xt, _ = prepare_stamps(stamps, package.contract)
        pb = base.predict_proba(xt)
        ok = np.isfinite(pb) & ok_cnn
        m = evaluate_scores(pb[ok], labels[ok], classes=classes[ok], snr=snr[ok])
        m["l2"] = base.l2_
        m["n_train"] = int(len(blab))
        m["seconds"] = time.perf_counter() - t0
        results["baseline"] = m
        print(f"baseline (logistic regression, l2={base.l2_:g}, {len(blab)} training stamps): AUC {m['roc_auc']:.5f}")

    cnn = results["CNN"]
    checks = {}
    b = results.get("baseline")
    b99 = ((b or {}).get("completeness_at_purity_snr") or {}).get("0.99") or 0
    for name in ["CNN", "CNN (pipeline masks)"] + [k for k in results if k.startswith("CNN [")]:
        m = results[name]
        c99 = (m.get("completeness_at_purity_snr") or {}).get("0.99")
        checks[f"{name}: ROC-AUC >= 0.99"] = m["roc_auc"] >= TARGETS["roc_auc"]
        checks[f"{name}: completeness >= 95% at purity >= 99%, SNR >= 6"] = (
            c99 is not None and c99 >= TARGETS["completeness_at_purity99_snr6"]
        )
        checks[f"{name}: ECE <= 0.02"] = m["ece"] <= TARGETS["ece"]
        if b is not None:
            checks[f"{name} beats the baseline (ROC-AUC and C @ P99, SNR >= 6)"] = (
                m["roc_auc"] > b["roc_auc"] and (c99 or 0) > b99
            )
    for k, v in checks.items():
        print(f"  [{'PASS' if v else 'FAIL'}] {k}")

    visit_results = {}
    visit_seeds = list(range(args.visit_seed, args.visit_seed + args.visits))
    if visit_seeds:
        models = {f"{package.version} (this model)": model_path}
        for other in args.compare:
            other = Path(other)
            name = ModelPackage.load(other).version
            models[name if name not in models else f"{name} ({other.name})"] = other
        visit_results = evaluate_visits(models, visit_seeds, threads=args.threads)

    meta = {
        "model": model_path.name,
        "version": package.version,
        "model_sha256": package.digest,
        "contract": package.contract.to_dict(),
        "test_seed": args.seed,
        "n_test": int(len(labels)),
        "stamp_size": args.stamp_size,
        "baseline_seed": args.baseline_seed if args.baseline_n else None,
        "visit_seeds": [visit_seeds[0], visit_seeds[-1]] if visit_seeds else None,
        "visit_shape": [1024, 1024],
        "visit_n_sources": 300,
        "thresholds": package.thresholds,
        "temperature": package.temperature,
        "temperature_symmetric": package.temperature_symmetric,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": args.threads,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "checks": checks, "results": results, "visits": visit_results}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float) + "\n")

    md = [
        "# Accuracy benchmark",
        "",
        f"Model `{meta['model']}` (version `{meta['version']}`), scored through `score_triplets` on "
        f"{meta['n_test']} raw {args.stamp_size}x{args.stamp_size} simulated triplets (seed {args.seed}, "
        "never used for training). Produced by `python benchmarks/bench_accuracy.py`.",
        "",
        "## Targets",
        "",
        *[f"- {'PASS' if v else 'FAIL'}: {k}" for k, v in checks.items()],
        "",
        "## Metrics",
        "",
        markdown_metrics_table(results),
        "",
        "C @ P99% = completeness at purity 99%; P / C = purity / completeness at the package's thresholds "
        "(the purity thresholds were chosen on the validation set at SNR >= 6).",
        "",
        "## Per class: fraction scored real at the default threshold",
        "",
        "Completeness for real classes; for artifact classes, the fraction that leaks into the real selection.",
        "",
        "### All sources",
        "",
        markdown_class_table(results),
        "",
        "### SNR >= 6",
        "",
        markdown_class_table(results, key="per_class_snr"),
        "",
        "## Completeness of real sources by SNR at the default threshold (CNN)",
        "",
        "| SNR | real sources | completeness |",
        "|---|---:|---:|",
    ]
    for row in cnn.get("completeness_by_snr", []):
        hi = "inf" if row["snr_hi"] is None else f"{row['snr_hi']:g}"
        comp = "-" if row["completeness"] is None else f"{100 * row['completeness']:.2f}%"
        md.append(f"| [{row['snr_lo']:g}, {hi}) | {row['n_real']} | {comp} |")
    md += ["", f"Scoring time on this machine ({args.threads} thread): "
           + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), ""]
    if visit_results:
        n_src = next(iter(visit_results.values()))["n"]
        md += [
            "## Visit level",
            "",
            f"{len(visit_seeds)} simulated 1024x1024 detector visits (`simulate_visit`, seeds "
            f"{visit_seeds[0]}-{visit_seeds[-1]}, 300 labelled sources each, {n_src} in all; never used for "
            "training), scored at the catalogue's measured centroids through `Scorer.score_images` with the mask planes, as the "
            "pipeline does. Each column is a model package, scored with its own calibration and thresholds.",
            "",
            markdown_metrics_table(visit_results),
            "| ROC-AUC per visit: min / median / max | "
            + " | ".join(
                " / ".join(f"{f(m['per_visit_auc']):.4f}" for f in (np.min, np.median, np.max))
                for m in visit_results.values()
            )
            + " |",
            "",
            "### Per class, all sources (fraction scored real at the default threshold)",
            "",
            markdown_class_table(visit_results),
            "",
            "### Per class, SNR >= 6",
            "",
            markdown_class_table(visit_results, key="per_class_snr"),
            "",
        ]
    out.with_suffix(".md").write_text("\n".join(md))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")

    if args.plots:
        from lsst.meas.rbnet.training.plots import make_evaluation_plots

        probs = {"CNN": p_cnn[ok_cnn]}
        if "baseline" in results:
            probs["baseline"] = pb[ok_cnn]
        paths = make_evaluation_plots(
            args.plots, probs, labels[ok_cnn], classes=classes[ok_cnn], snr=snr[ok_cnn],
            threshold=thresholds.get("default", 0.5), prefix="test_",
        )  # fmt: skip
        print("plots:", ", ".join(p.name for p in paths))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
