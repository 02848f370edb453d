#!/usr/bin/env python
# This file is part of meas_rbnet.
"""What fine-tuning from a trained package buys: a learning curve, and (clearly apart) real alerts.

Experiment 1, simulated (the learning curve). A source model (the default
architecture, ``triplet_cnn``, 31x31 triplets) is trained here on
``--n-source`` stamps of the simulator preset ``--source`` (``rubin`` by
default). It is then adapted to the preset ``--target`` (``ztf``) with 100 /
300 / 1,000 / 3,000 labelled target stamps (``--sizes``), three ways, each with
its documented default learning rate:

- **fine-tuned**: ``train_triplet_model(init=source)``, all layers, learning rate
  `training.loop.FINE_TUNE_LEARNING_RATE` (3e-4), as ``rbnet train --init``;
- **head only**: the same with ``freeze_features=True`` (``--freeze-features``),
  learning rate `training.loop.FINE_TUNE_HEAD_LEARNING_RATE` (3e-3);
- **from scratch**: the same architecture from a random initialisation on the
  same stamps, learning rate 3e-3 (the ``rbnet train`` default).

Every fit sees the same labelled stamps (a fifth of them held out inside the
fit for early stopping and calibration, as ``rbnet train`` does), the same
batch size and the same budget of optimiser steps. Each is scored by ROC-AUC
on ``--n-test`` held-out target stamps and on held-out source stamps (what
adaptation costs on the source). Sizes up to 1,000 are repeated on
``--repeats`` different draws of the labelled stamps (and training seeds);
mean and spread are reported. The source model is trained in the benchmark
(not the shipped default) so that source and target are each exactly one
preset.

Experiment 2, real alerts, stand-in labels (``--real``; never shipped). The
shipped default model is fine-tuned on the ZTF alerts of the development set
(``../shared/realdata/ztf_alerts_63.npz``, 722 alerts) with the survey's own score
as a stand-in label (``drb`` where present, else ``rb``; >= 0.5 is "real"),
5-fold cross-validated with folds grouped by ``object_id`` (alerts of one object
never straddle training and test). Reported: ROC-AUC against the stand-in
labels of the out-of-fold scores, for the shipped model as it is, fine-tuned,
head only, and from scratch on the same folds. These labels are another
classifier's opinion, not truth; the numbers say how far a few hundred labels
move the model towards a survey's own notion of real/bogus, nothing more. No
model from this experiment is written anywhere.

One torch thread throughout (``torch.set_num_threads(1)``); the whole run is
sized to take about 15 minutes on a quiet 2-core machine. Results:
``benchmarks/results/finetune.{md,json}`` with the command.

Usage::

    python benchmarks/bench_finetune.py [--source rubin --target ztf] [--sizes 100,300,1000,3000]
        [--repeats 2] [--n-source 20000] [--no-real] [--quick]
"""

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_REALDATA = ROOT.parent / "shared" / "realdata"
RESULTS = HERE / "results"

#: Seeds of the simulated sets; no training command of the project uses them.
SOURCE_SEED, SOURCE_TEST_SEED, TARGET_POOL_SEED, TARGET_TEST_SEED = 31001, 31002, 31003, 31004
#: Fraction of each fit's labelled stamps held out for early stopping and calibration.
VALIDATION_FRACTION = 0.2
#: Learning rate of from-scratch fits (the ``rbnet train`` default).
SCRATCH_LEARNING_RATE = 3e-3
#: Order of the raw planes in the development set's ``triplets`` (science, template, difference).
REALDATA_PLANES = ("science", "template", "difference")


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def simulate(n, survey, seed, stamp_size):
    """Raw stamps, labels, classes of ``n`` simulated triplets of one preset."""
    from lsst.meas.rbnet.sim import simulate_stamps

    s = simulate_stamps(n, stamp_size=stamp_size, seed=seed, survey=survey)
    return s.stamps, np.asarray(s.table["label"]), np.asarray(s.table["source_class"]).astype(str)


def fit_plan(n_labelled, batch_size, steps, max_epochs):
    """Epochs and patience giving about ``steps`` optimiser steps on ``n_labelled`` stamps."""
    n_train = n_labelled - max(1, round(VALIDATION_FRACTION * n_labelled))
    per_epoch = math.ceil(n_train / batch_size)
    epochs = int(min(max_epochs, max(5, math.ceil(steps / per_epoch))))
    return epochs, max(3, epochs // 4)


def fit(arm, stamps, labels, classes, source, *, seed, batch_size, steps, max_epochs, contract, threads,
        head_lr=None):  # fmt: skip
    """Train one arm on the given labelled stamps; return (package, seconds, best_epoch)."""
    from lsst.meas.rbnet.training.loop import TrainConfig, fine_tune_config, train_triplet_model

    epochs, patience = fit_plan(len(labels), batch_size, steps, max_epochs)
    common = dict(
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        validation_fraction=VALIDATION_FRACTION,
        seed=seed,
        device="cpu",
        num_threads=threads,
        symmetric_temperature=False,
        version=arm[:7],
    )
    if arm == "scratch":
        spec = source.components["classifier"]
        derived = ("in_channels", "stamp_size", "n_classes")
        hyper = {k: v for k, v in spec.hyperparameters.items() if k not in derived}
        config = TrainConfig(contract=contract, architecture=spec.architecture, hyperparameters=hyper,
                             learning_rate=SCRATCH_LEARNING_RATE, **common)  # fmt: skip
        init = None
    else:
        config = fine_tune_config(source, freeze_features=(arm == "head"), **common)
        if arm == "head" and head_lr is not None:
            config.learning_rate = head_lr
        init = source
    if not source.classes:
        config.class_loss_weight = 0.0
    t0 = time.monotonic()
    result = train_triplet_model(stamps, labels, classes=classes, config=config, init=init)
    return result.package, time.monotonic() - t0, result.best_epoch


def auc_of(package, x, labels):
    """ROC-AUC of a package on prepared stamps."""
    from lsst.meas.rbnet.training import metrics as M
    from lsst.meas.rbnet.training.loop import model_logits

    return float(M.roc_auc(model_logits(package.build(), x), labels))


def _mean_spread(values):
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "values": v.tolist()}


def learning_curve(args):
    """Experiment 1: source model on one preset, adapted to another; dict of results."""
    from lsst.meas.rbnet.contract import InputContract
    from lsst.meas.rbnet.training.data import prepare_dataset
    from lsst.meas.rbnet.training.loop import TrainConfig, train_triplet_model

    contract = InputContract(stamp_size=args.stamp_size)
    t0 = time.monotonic()
    src = simulate(args.n_source, args.source, SOURCE_SEED, args.stamp_size)
    src_test = simulate(args.n_source_test, args.source, SOURCE_TEST_SEED, args.stamp_size)
    pool = simulate(max(args.sizes), args.target, TARGET_POOL_SEED, args.stamp_size)
    tgt_test = simulate(args.n_test, args.target, TARGET_TEST_SEED, args.stamp_size)
    sim_seconds = time.monotonic() - t0
    _log(f"simulated {args.n_source} {args.source} + {max(args.sizes)} / {args.n_test} {args.target} stamps "
         f"in {sim_seconds:.0f} s")  # fmt: skip
    x_src_test = prepare_dataset(src_test[0], src_test[1], contract).x
    x_tgt_test = prepare_dataset(tgt_test[0], tgt_test[1], contract).x

    t0 = time.monotonic()
    config = TrainConfig(
        contract=contract, epochs=args.source_epochs, batch_size=256, device="cpu", num_threads=args.threads,
        symmetric_temperature=False, max_seconds=60 * args.source_minutes, version="ftsrc", seed=0,
    )  # fmt: skip
    result = train_triplet_model(src[0], src[1], classes=src[2], config=config)
    source = result.package
    del src
    source_seconds = time.monotonic() - t0
    base = {
        "source_test_auc": auc_of(source, x_src_test, src_test[1]),
        "target_test_auc": auc_of(source, x_tgt_test, tgt_test[1]),
    }
    _log(
        f"source model: {len(result.history)} epochs in {source_seconds:.0f} s; ROC-AUC {args.source} "
        f"{base['source_test_auc']:.4f}, {args.target} {base['target_test_auc']:.4f} (before adaptation)"
    )

    arms = ["finetune", "head", "scratch"]
    rows = []
    for n in args.sizes:
        repeats = args.repeats if n < max(args.sizes) or n < len(pool[1]) else 1
        for arm in arms:
            per = {"target": [], "source": [], "seconds": [], "best_epoch": []}
            for r in range(repeats if arm != "head" else 1):
                idx = np.random.default_rng([TARGET_POOL_SEED, r]).permutation(len(pool[1]))[:n]
                pkg, seconds, best = fit(
                    arm, pool[0][idx], pool[1][idx], pool[2][idx], source, seed=r, batch_size=args.batch_size,
                    steps=args.steps, max_epochs=args.max_epochs, contract=contract, threads=args.threads,
                    head_lr=args.head_lr,
                )  # fmt: skip
                per["target"].append(auc_of(pkg, x_tgt_test, tgt_test[1]))
                per["source"].append(auc_of(pkg, x_src_test, src_test[1]))
                per["seconds"].append(seconds)
                per["best_epoch"].append(best)
            epochs, _ = fit_plan(n, args.batch_size, args.steps, args.max_epochs)
            row = {
                "n_labelled": n,
                "arm": arm,
                "repeats": len(per["target"]),
                "epochs": epochs,
                "target_auc": _mean_spread(per["target"]),
                "source_auc": _mean_spread(per["source"]),
                "best_epoch": per["best_epoch"],
                "seconds": float(np.sum(per["seconds"])),
            }
            rows.append(row)
            _log(f"n={n:5d} {arm:8s} target AUC {row['target_auc']['mean']:.4f} "
                 f"[{row['target_auc']['min']:.4f}, {row['target_auc']['max']:.4f}] "
                 f"source AUC {row['source_auc']['mean']:.4f} ({row['seconds']:.0f} s)")  # fmt: skip
    return {
        "source_preset": args.source,
        "target_preset": args.target,
        "stamp_size": args.stamp_size,
        "n_source": args.n_source,
        "n_source_test": args.n_source_test,
        "n_target_test": args.n_test,
        "head_lr": args.head_lr,
        "source_model": {
            "architecture": source.components["classifier"].architecture,
            "parameters": source.n_parameters(),
            "epochs_run": len(result.history),
            "seconds": source_seconds,
            "digest": source.digest,
            **base,
        },
        "simulation_seconds": sim_seconds,
        "rows": rows,
    }


def _grouped_folds(groups, labels, k, seed):
    """Fold index per row: whole groups per fold, groups dealt by label so folds are balanced."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    group_label = np.zeros(len(uniq))
    np.add.at(group_label, inverse, labels)
    group_label = group_label / np.bincount(inverse) >= 0.5
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(len(uniq), dtype=int)
    for value in (False, True):
        members = rng.permutation(np.flatnonzero(group_label == value))
        fold_of_group[members] = np.arange(len(members)) % k
    return fold_of_group[inverse]


def real_experiment(args):
    """Experiment 2: fine-tune the shipped model on ZTF alerts with stand-in labels, k-fold CV."""
    from lsst.meas.rbnet.constants import CHANNEL_ORDER
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.scoring import default_model_path
    from lsst.meas.rbnet.training import metrics as M
    from lsst.meas.rbnet.training.data import prepare_dataset
    from lsst.meas.rbnet.training.loop import model_logits

    path = Path(args.realdata) / "ztf_alerts_63.npz"
    if not path.is_file():
        _log(f"real-data experiment skipped: {path.name} not found in --realdata")
        return {"skipped": f"{path.name} not found"}
    d = np.load(path, allow_pickle=False)
    order = [REALDATA_PLANES.index(c) for c in CHANNEL_ORDER]
    stamps = np.ascontiguousarray(d["triplets"][:, order])
    drb, rb = d["drb"], d["rb"]
    score = np.where(np.isfinite(drb), drb, rb)
    keep = np.isfinite(score)
    stamps, score, objects = stamps[keep], score[keep], d["object_id"][keep]
    labels = (score >= 0.5).astype(np.int64)
    source = ModelPackage.load(default_model_path())
    folds = _grouped_folds(objects, labels, args.real_folds, seed=0)
    x_all = prepare_dataset(stamps, labels, source.contract).x
    arms = ["finetune", "head", "scratch"]
    oof = {arm: np.full(len(labels), np.nan) for arm in ["shipped"] + arms}
    oof["shipped"][:] = model_logits(source.build(), x_all)
    per_fold = {arm: [] for arm in oof}
    t0 = time.monotonic()
    for f in range(args.real_folds):
        test = folds == f
        train = ~test
        per_fold["shipped"].append(float(M.roc_auc(oof["shipped"][test], labels[test])))
        for arm in arms:
            pkg, _, _ = fit(
                arm, stamps[train], labels[train], None, source, seed=f, batch_size=args.batch_size,
                steps=args.real_steps, max_epochs=args.max_epochs, contract=source.contract,
                threads=args.threads, head_lr=args.head_lr,
            )  # fmt: skip
            oof[arm][test] = model_logits(pkg.build(), x_all[test])
            per_fold[arm].append(float(M.roc_auc(oof[arm][test], labels[test])))
        _log(f"real fold {f + 1}/{args.real_folds}: " + ", ".join(f"{a} {per_fold[a][-1]:.3f}" for a in oof))
    return {
        "file": path.name,
        "n": int(len(labels)),
        "n_real_standin": int(labels.sum()),
        "n_objects": int(len(np.unique(objects))),
        "folds": args.real_folds,
        "label": "drb where present else rb, >= 0.5 (another classifier's opinion, not truth)",
        "init_model": {"version": source.version, "digest": source.digest},
        "head_lr": args.head_lr,
        "pooled_auc": {arm: float(M.roc_auc(v, labels)) for arm, v in oof.items()},
        "fold_auc": {arm: _mean_spread(v) for arm, v in per_fold.items()},
        "seconds": time.monotonic() - t0,
    }


ARM_NAMES = {
    "finetune": "fine-tuned (all layers, lr 3e-4)",
    "head": "head only (features frozen, lr 3e-3)",
    "scratch": "from scratch (lr 3e-3)",
}


def _curve_lines(c):
    sm = c["source_model"]
    src, tgt = f"`{c['source_preset']}`", f"`{c['target_preset']}`"
    lines = [
        f"## 1. Learning curve: {src} -> {tgt} (simulated)",
        "",
        f"Source model: `{sm['architecture']}` ({sm['parameters']:,} parameters), trained in the benchmark "
        f"on {c['n_source']:,} {src} stamps ({c['stamp_size']}x{c['stamp_size']}), {sm['epochs_run']} "
        f"epochs. ROC-AUC on {c['n_source_test']:,} held-out {src} stamps {sm['source_test_auc']:.4f}; on "
        f"{c['n_target_test']:,} held-out {tgt} stamps **{sm['target_test_auc']:.4f}** before any "
        "adaptation.",
        "",
        f"ROC-AUC on the {c['n_target_test']:,} held-out {tgt} stamps after training on N labelled {tgt} "
        "stamps (a fifth of them held out inside the fit for early stopping and calibration); mean over "
        "repeats (different draws of the N stamps, and seeds), range in brackets. Last column: ROC-AUC on "
        f"the held-out {src} stamps afterwards (what adaptation costs on the source).",
        "",
        "| N labelled | arm | repeats | epochs (max) | target ROC-AUC | source ROC-AUC |",
        "|---:|---|---:|---:|---|---:|",
    ]
    for row in c["rows"]:
        t = row["target_auc"]
        name = ARM_NAMES[row["arm"]]
        if row["arm"] == "head" and c.get("head_lr") is not None:
            name = f"head only (features frozen, lr {c['head_lr']:g})"
        spread = f" [{t['min']:.4f}, {t['max']:.4f}]" if row["repeats"] > 1 else ""
        lines.append(
            f"| {row['n_labelled']:,} | {name} | {row['repeats']} | {row['epochs']} | "
            f"{t['mean']:.4f}{spread} | {row['source_auc']['mean']:.4f} |"
        )
    lines += ["", "Fine-tuned minus from scratch on the same stamps (target ROC-AUC, means):", ""]
    by = {(r["n_labelled"], r["arm"]): r["target_auc"]["mean"] for r in c["rows"]}
    for n in sorted({r["n_labelled"] for r in c["rows"]}):
        ft, sc, head = by[(n, "finetune")], by[(n, "scratch")], by[(n, "head")]
        lines.append(
            f"- N = {n:,}: fine-tuned {ft:.4f}, scratch {sc:.4f} ({ft - sc:+.4f}); head only {head:.4f}"
        )
    return lines + [""]


def _real_lines(r):
    if "skipped" in r:
        return ["## 2. Real ZTF alerts", "", f"Skipped: {r['skipped']}.", ""]
    lines = [
        "## 2. Real ZTF alerts with stand-in labels (experiment only; nothing shipped)",
        "",
        f"`{r['file']}`: {r['n']} alerts of {r['n_objects']} objects; stand-in label: {r['label']}; "
        f"{r['n_real_standin']} 'real'. {r['folds']}-fold cross-validation, folds grouped by object. "
        f"Init: the shipped default model (version `{r['init_model']['version']}`). ROC-AUC of the "
        "out-of-fold scores against the stand-in labels (pooled over folds; per-fold mean and range beside):",
        "",
        "| model | pooled ROC-AUC | per-fold mean [min, max] |",
        "|---|---:|---|",
    ]
    names = {"shipped": "shipped default as it is", **ARM_NAMES}
    if r.get("head_lr") is not None:
        names["head"] = f"head only (features frozen, lr {r['head_lr']:g})"
    for arm, auc in r["pooled_auc"].items():
        f = r["fold_auc"][arm]
        lines.append(f"| {names[arm]} | {auc:.3f} | {f['mean']:.3f} [{f['min']:.3f}, {f['max']:.3f}] |")
    return lines + [
        "",
        "The stand-in labels are ZTF's own classifiers' scores, not truth: this measures how far a few "
        "hundred alerts move a model towards the survey's notion of real/bogus. The development set must "
        "not be used to train a shipped model; no model from this run is kept.",
        "",
    ]


def write_markdown(path, results):
    """The results as a Markdown page."""
    lines = [
        "# Fine-tuning from a trained package",
        "",
        f"Command: `{results['command']}` (source tree {results['git_commit']})",
        "",
        f"Machine: {results['machine']}; {results['threads']} torch thread; total "
        f"{results['seconds'] / 60:.1f} min; load average at the start {results['load_average']}. The "
        "machine was shared with other jobs: times are indicative; the ROC-AUCs do not depend on it.",
        "",
    ]
    if results.get("curve"):
        lines += _curve_lines(results["curve"])
    if results.get("real"):
        lines += _real_lines(results["real"])
    Path(path).write_text("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--source", default="rubin", help="Simulator preset of the source model.")
    p.add_argument("--target", default="ztf", help="Simulator preset adapted to.")
    p.add_argument("--sizes", default="100,300,1000,3000", help="Numbers of labelled target stamps.")
    p.add_argument("--repeats", type=int, default=2, help="Draws per size below the largest.")
    p.add_argument("--n-source", type=int, default=20000)
    p.add_argument("--n-source-test", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=5000, help="Held-out target stamps.")
    p.add_argument("--stamp-size", type=int, default=31)
    p.add_argument("--source-epochs", type=int, default=8)
    p.add_argument("--source-minutes", type=float, default=3.5, help="Time budget of the source model.")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=300, help="Optimiser steps per fit (about).")
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--head-lr", type=float, default=None,
                   help="Learning rate of the head-only arm [default: 3e-3, FINE_TUNE_HEAD_LEARNING_RATE].")
    p.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                   help="Run experiment 2 (real ZTF alerts, stand-in labels).")  # fmt: skip
    p.add_argument("--realdata", default=str(DEFAULT_REALDATA), help="Directory of the development set.")
    p.add_argument("--real-folds", type=int, default=5)
    p.add_argument("--real-steps", type=int, default=150)
    p.add_argument("--skip-curve", action="store_true")
    p.add_argument("--quick", action="store_true", help="Toy sizes (a smoke test of the script).")
    p.add_argument("--out", default=str(RESULTS / "finetune"), help="Results path without suffix.")
    args = p.parse_args(argv)
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.quick:
        args.sizes, args.repeats, args.n_source, args.n_source_test, args.n_test = [60, 120], 1, 600, 200, 300
        args.source_epochs, args.steps, args.real_folds, args.real_steps = 1, 10, 2, 5

    import torch

    from lsst.meas.rbnet.training.loop import git_commit

    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    results = {
        "git_commit": git_commit(),
        "command": " ".join(
            ["python benchmarks/bench_finetune.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}",
        "threads": args.threads,
        "load_average": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
        "settings": {k: v for k, v in vars(args).items() if k not in ("realdata", "out")},
    }
    if not args.skip_curve:
        results["curve"] = learning_curve(args)
    if args.real:
        results["real"] = real_experiment(args)
    results["seconds"] = time.monotonic() - t0
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(out.with_suffix(".md"), results)
    _log(f"wrote {out.with_suffix('.md').name} and .json ({results['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
