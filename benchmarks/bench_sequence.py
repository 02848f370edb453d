#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Benchmarks of the multi-visit (sequence) model.

1. **Scoring speed**: 10,000 objects x 50 visits of 28x28 science frames on the CPU,
   the whole path (per-frame normalisation, VAE encoding, classification), for the
   Conv1D and the bidirectional GRU classifiers side by side, with the time of each
   stage (target: <= 30 s). Untrained packages built exactly as trained ones: the
   speed does not depend on the weights.
2. **sequence-cv wall time** on the synthetic stand-in for the RB_ZTF set (2,230
   objects, lengths 5-1,100, median ~430, D = 36; `make_synthetic_latents`), with the
   models and time budget of ``rbnet sequence-cv``'s defaults (target: < 30 min for
   5 folds). ``--cv-folds 1`` runs only the first fold with a fifth of the budget and
   reports the per-fold time.
3. **Sequence model vs aggregated single-visit scores** on the simulator's multi-visit
   set (`lsst.meas.rbnet.sim.simulate_sequences`): a sequence package trained on
   80% of the objects, against the per-object max and mean of the single-visit
   triplet scores (`lsst.meas.rbnet.scoring.score_triplets`, default model) on the
   other 20%, in ROC-AUC.

Usage::

    python benchmarks/bench_sequence.py [--quick] [--skip-speed] [--skip-cv] [--skip-compare]
        [--cv-folds 1|5] [--threads 2]

Results: ``benchmarks/results/sequence.json`` and ``sequence.md`` (sections not run
keep their previous results).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.cutouts import normalize_stamps
from lsst.meas.rbnet.nn import build
from lsst.meas.rbnet.package import ModelPackage
from lsst.meas.rbnet.sequence.scoring import SequenceScorer

RESULTS = Path(__file__).resolve().parent / "results"
_SECTIONS = ("speed", "cv", "compare")


def _package(classifier: str, hp: dict | None = None, frames=None, visit_scores: bool = False) -> ModelPackage:
    """An untrained package built as trained ones are; with ``frames`` (normalised), the
    classifier's standardisation is set from their float32 latents, as training sets it."""
    from lsst.meas.rbnet.sequence.aggregate import FRAME_FEATURES
    from lsst.meas.rbnet.sequence.encode import encode_frames

    torch.manual_seed(0)
    features = list(FRAME_FEATURES) if visit_scores else []
    vae_hp = {"in_channels": 1, "frame_size": 28, "latent_dim": 36}
    clf_hp = {"input_dim": 36 + len(features), **(hp or {})}
    vae = build("vae", **vae_hp).eval()
    clf = build(classifier, **clf_hp)
    if frames is not None:
        mu = encode_frames(vae, frames)
        mean = np.concatenate([mu.mean(axis=0), np.zeros(len(features))])
        scale = np.concatenate([mu.std(axis=0) + 1e-6, np.ones(len(features))])
        clf.set_standardization(mean, scale)
    return ModelPackage.from_modules(
        "sequence",
        {"encoder": ("vae", vae_hp, vae), "classifier": (classifier, clf_hp, clf)},
        contract=InputContract(stamp_size=29, channels=("science",)),
        version="bench",
        extra={
            "frame_size": 28,
            "frame_channels": ["science"],
            "latent_columns": [0, 36],
            "frame_features": features,
        },
    )


def _frames(n_objects: int, n_visits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw science frames: sky noise and a Gaussian source of varying flux, (N*T, 1, 28, 28)."""
    rng = np.random.default_rng(seed)
    n = n_objects * n_visits
    yy, xx = np.mgrid[:28, :28] - 14.0
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.8**2)).astype(np.float32)
    frames = np.empty((n, 1, 28, 28), dtype=np.float32)
    chunk = 50_000
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        frames[i : i + m, 0] = rng.standard_normal((m, 28, 28), dtype=np.float32)
        frames[i : i + m, 0] += rng.uniform(0, 50, (m, 1, 1)).astype(np.float32) * psf
    offsets = np.arange(0, n + 1, n_visits, dtype=np.int64)
    times = np.tile(np.cumsum(rng.exponential(3.0, n_visits)), n_objects) + 60000.0
    return frames, offsets, times


def bench_speed(n_objects: int, n_visits: int, threads: int) -> dict:
    print(f"== Scoring speed: {n_objects} objects x {n_visits} visits, {threads} threads", flush=True)
    frames, offsets, times = _frames(n_objects, n_visits)
    visit = np.random.default_rng(1).uniform(0, 1, len(frames)).astype(np.float32)
    out = {
        "n_objects": n_objects,
        "n_visits": n_visits,
        "n_frames": int(len(frames)),
        "threads": threads,
        "load_average_before": os.getloadavg()[0],
        "target_seconds": 30.0 * n_objects * n_visits / 500_000,
        "models": {},
    }
    contract = InputContract(stamp_size=29, channels=("science",))
    t = time.perf_counter()
    normed = normalize_stamps(np.ascontiguousarray(frames), contract)
    out["normalize_seconds"] = time.perf_counter() - t
    sample = normed[:: max(1, len(normed) // 4000)]
    for precision in ("float32", "auto"):
        scorer = SequenceScorer(_package("seq_bigru", frames=sample), precision=precision)
        t = time.perf_counter()
        lat = scorer.latents(normed, normalized=True)
        out[f"encode_seconds_{precision}"] = time.perf_counter() - t
        print(f"  VAE encoding alone ({scorer.precision}): {out[f'encode_seconds_{precision}']:.1f}s", flush=True)
    # "before": the previous defaults (float32 encoder in batches of 4096); "after": the
    # current defaults (precision "auto": bfloat16 on this CPU if the probe check passes).
    for name, arch, precision, with_scores in (
        ("conv1d, float32 (before)", "seq_conv1d", "float32", False),
        ("conv1d, auto (after)", "seq_conv1d", "auto", False),
        ("bigru, float32 (before)", "seq_bigru", "float32", False),
        ("bigru, auto (after)", "seq_bigru", "auto", False),
        ("bigru + visit scores, auto", "seq_bigru", "auto", True),
    ):
        scorer = SequenceScorer(_package(arch, frames=sample, visit_scores=with_scores), precision=precision)
        vs = visit if with_scores else None
        m = 50 * n_visits
        scorer.score(frames[:m], offsets[:51], times[:m], visit_scores=None if vs is None else vs[:m])  # warm up
        t, c = time.perf_counter(), time.process_time()
        p = scorer.score(frames, offsets, times, visit_scores=vs)
        total, cpu = time.perf_counter() - t, time.process_time() - c
        assert p.shape == (n_objects,) and np.all(np.isfinite(p))
        t = time.perf_counter()
        scorer.score_latents(lat, offsets, times, vs)
        classify = time.perf_counter() - t
        out["models"][name] = {
            "total_seconds": total,
            "cpu_seconds": cpu,
            "classify_seconds": classify,
            "objects_per_second": n_objects / total,
            "precision": scorer.precision,
            "encode_batch": scorer.encode_batch,
            "bf16_error": scorer.bf16_error,
            "classifier_parameters": scorer.package.n_parameters("classifier"),
            "encoder_parameters": scorer.package.n_parameters("encoder"),
        }
        print(
            f"  {name:<28} [{scorer.precision}] total {total:6.1f}s wall, {cpu:6.1f}s CPU "
            f"(classify alone {classify:.2f}s)  {n_objects / total:,.0f} objects/s",
            flush=True,
        )
    return out


def bench_cv(folds_to_run: int, threads: int, quick: bool, workers: int | None = None) -> dict:
    from lsst.meas.rbnet.cli.sequence import DEFAULT_CV_BUDGET
    from lsst.meas.rbnet.sequence.cv import cross_validate, default_workers
    from lsst.meas.rbnet.sequence.synthetic import make_synthetic_latents

    n = 600 if quick else 2230
    if workers is None:
        workers = default_workers()  # as `rbnet sequence-cv` on the CPU
    print(f"== sequence-cv on the synthetic stand-in ({n} objects), {folds_to_run} of 5 folds", flush=True)
    t = time.perf_counter()
    latents = make_synthetic_latents(n_objects=n, seed=0)
    gen = time.perf_counter() - t
    lengths = latents.lengths
    budget = DEFAULT_CV_BUDGET * folds_to_run / 5
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    res = cross_validate(
        latents,
        ["bigru", "conv1d"],
        k=5,
        seed=0,
        time_budget=budget,
        max_folds=folds_to_run,
        log=lambda s: print("  " + s, flush=True),
        workers=workers,
    )
    wall = time.perf_counter() - t
    out = {
        "n_objects": n,
        "frames": int(lengths.sum()),
        "median_length": float(np.median(lengths)),
        "min_length": int(lengths.min()),
        "max_length": int(lengths.max()),
        "generate_seconds": gen,
        "folds_run": folds_to_run,
        "budget_seconds": budget,
        "wall_seconds": wall,
        "per_fold_seconds": wall / folds_to_run,
        "estimated_5fold_seconds": wall / folds_to_run * 5,
        "threads": threads,
        "workers": workers,
        "load_average_before": load0,
        "models": {k: m.summary() for k, m in res.models.items()},
    }
    for line in res.table_lines():
        print("  " + line)
    print(
        f"  wall {wall:.0f}s for {folds_to_run} fold(s): {wall / folds_to_run:.0f}s per fold, "
        f"~{wall / folds_to_run * 5 / 60:.1f} min for 5",
        flush=True,
    )
    return out


def bench_compare(n_objects: int, threads: int, vae_frames: int = 8_000, vae_epochs: int = 3) -> dict:
    from lsst.meas.rbnet.constants import CHANNEL_ORDER
    from lsst.meas.rbnet.scoring import score_triplets
    from lsst.meas.rbnet.sequence.aggregate import aggregate_scores
    from lsst.meas.rbnet.sequence.scoring import SequenceScorer
    from lsst.meas.rbnet.sequence.train import (
        SequencePackageConfig,
        SequenceTrainConfig,
        VAETrainConfig,
        stratified_split,
        train_sequence_package,
    )
    from lsst.meas.rbnet.sim import simulate_sequences
    from lsst.meas.rbnet.training.metrics import roc_auc

    print(f"== Sequence model vs aggregated single-visit scores ({n_objects} simulated objects)", flush=True)
    t = time.perf_counter()
    seqs = simulate_sequences(n_objects, 7, frame_size=31, n_visits=(5, 60), channels=CHANNEL_ORDER)
    sim_s = time.perf_counter() - t
    out: dict = {
        "n_objects": n_objects,
        "n_frames": int(len(seqs.frames)),
        "simulate_seconds": sim_s,
        "vae_frames": vae_frames,
        "vae_epochs": vae_epochs,
    }
    labels = seqs.label.astype(np.int8)
    rng = np.random.default_rng(0)
    train, test = stratified_split(labels, 0.2, rng)
    out["n_train_objects"], out["n_test_objects"] = int(len(train)), int(len(test))

    # The single-visit default model on every visit: the baseline, and a per-frame input of
    # the sequence model in its "+ visit scores" form.
    d, s, tm = (seqs.frames[:, CHANNEL_ORDER.index(c)] for c in ("difference", "science", "template"))
    t = time.perf_counter()
    visit = score_triplets(s, tm, d, device="cpu")
    out["single_visit_seconds"] = time.perf_counter() - t
    agg = aggregate_scores(visit, seqs.offsets, ("max", "mean"))
    out["single_visit"] = {
        h: {"roc_auc": roc_auc(np.nan_to_num(agg[h][test], nan=0.0), labels[test])} for h in agg
    }
    for h in agg:
        print(f"  single-visit default model, per-object {h:<4}: AUC {out['single_visit'][h]['roc_auc']:.3f}")

    # Train on the training objects only (their own inner split does the early stopping).
    sub_rows = np.concatenate([np.arange(seqs.offsets[i], seqs.offsets[i + 1]) for i in train])
    sub_off = np.concatenate([[0], np.cumsum(np.diff(seqs.offsets)[train])])
    test_rows = np.concatenate([np.arange(seqs.offsets[i], seqs.offsets[i + 1]) for i in test])
    test_off = np.concatenate([[0], np.cumsum(np.diff(seqs.offsets)[test])])
    frames28 = seqs.frames[:, :, 1:29, 1:29]  # the 31-pixel stamps cut to 28 around the source pixel
    results = {}
    for arch in ("seq_bigru", "seq_conv1d"):
        for tag, with_scores in (("latents", False), ("latents + visit scores", True)):
            config = SequencePackageConfig(
                vae=VAETrainConfig(
                    hyperparameters={"latent_dim": 36}, epochs=vae_epochs, max_frames=vae_frames
                ),
                classifier=SequenceTrainConfig(architecture=arch, max_epochs=30),
                channels=CHANNEL_ORDER,
                test_fraction=0.0,
                version="bench",
            )
            t = time.perf_counter()
            package, _ = train_sequence_package(
                frames28[sub_rows],
                sub_off,
                labels[train],
                seqs.times[sub_rows],
                config,
                frame_channels=CHANNEL_ORDER,
                visit_scores=visit[sub_rows] if with_scores else None,
            )
            train_s = time.perf_counter() - t
            entry = {"train_seconds": train_s}
            for precision in ("float32", "auto"):
                scorer = SequenceScorer(package, precision=precision)
                p = scorer.score(
                    seqs.frames[test_rows],
                    test_off,
                    seqs.times[test_rows],
                    channels=CHANNEL_ORDER,
                    visit_scores=visit[test_rows] if with_scores else None,
                )
                entry[f"roc_auc_{precision}"] = roc_auc(p, labels[test])
                entry[f"scores_{precision}"] = p
                entry[f"encoder_{precision}"] = scorer.precision
            entry["roc_auc"] = entry["roc_auc_auto"]
            entry["max_abs_score_difference"] = float(np.max(np.abs(entry["scores_auto"] - entry["scores_float32"])))
            del entry["scores_auto"], entry["scores_float32"]
            results[f"{arch}, {tag}"] = entry
            print(
                f"  sequence {arch:<10} {tag:<24}: AUC {entry['roc_auc']:.3f} ({entry['encoder_auto']} encoder), "
                f"{entry['roc_auc_float32']:.3f} (float32); max |dp| {entry['max_abs_score_difference']:.4f}  "
                f"(train {train_s:.0f}s)",
                flush=True,
            )
    out["sequence"] = results
    return out


def _cv_table(models: dict) -> list[str]:
    """Markdown table of per-model CV summaries (mean +/- std over folds)."""
    lines = ["| model | ROC-AUC | accuracy | F1 (artifact) |", "|---|---|---|---|"]
    for name, m in models.items():
        lines.append(
            f"| {name} | {m['roc_auc_mean']:.3f} +/- {m['roc_auc_std']:.3f} | "
            f"{m['accuracy_mean']:.3f} +/- {m['accuracy_std']:.3f} | "
            f"{m['f1_artifact_mean']:.3f} +/- {m['f1_artifact_std']:.3f} |"
        )
    return lines


def write_md(data: dict) -> str:
    lines = [
        "# Sequence model benchmarks",
        "",
        f"Machine: {data['machine']}. Written by `benchmarks/bench_sequence.py` ({data['date']}).",
        "",
    ]
    sp = data.get("speed")
    if sp:
        lines += [
            f"## Scoring {sp['n_objects']:,} objects x {sp['n_visits']} visits (28x28 science frames), CPU, "
            f"{sp['threads']} threads",
            "",
            f"Target: <= {sp['target_seconds']:.0f} s including VAE encoding. Per-frame normalisation "
            f"alone: {sp['normalize_seconds']:.1f} s.",
            "",
            f"VAE encoding alone: float32 {sp.get('encode_seconds_float32', sp.get('encode_seconds', 0)):.1f} s, "
            f"auto {sp.get('encode_seconds_auto', float('nan')):.1f} s. Load average when started: "
            f"{sp['load_average_before']:.1f}.",
            "",
            "Command: `python benchmarks/bench_sequence.py --skip-cv --skip-compare --threads "
            f"{sp['threads']}`. 'before' is the previous default (float32 encoder, batches of 4096), "
            "'after' the current one (precision 'auto': bfloat16 convolutions where the CPU has native "
            "bfloat16 units and probe frames show the latents survive, float32 heads; batches of 1024).",
            "",
            "| classifier | encoder | total wall (s) | total CPU (s) | classify alone (s) | objects/s "
            "| classifier params |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, m in sp["models"].items():
            lines.append(
                f"| {name} | {m.get('precision', '')} | {m['total_seconds']:.1f} | {m['cpu_seconds']:.1f} | "
                f"{m['classify_seconds']:.2f} | {m['objects_per_second']:,.0f} | "
                f"{m['classifier_parameters']:,} |"
            )
        lines += [
            "",
            "The VAE encoder (the paper's 32-512 channel layout, about 4.8 M multiply-adds per frame) is "
            "almost all of the cost; 'classify alone' is the sequence classifier's own time on the latents. "
            "The packages are untrained but built as trained ones are (the classifier's standardisation set "
            "from float32 latents of the frames), so 'auto' makes the same probe check; speed does not "
            "depend on the weights.",
            "",
        ]
    cv = data.get("cv")
    if cv:
        lines += [
            f"## sequence-cv on the synthetic stand-in ({cv['n_objects']} objects, {cv['frames']:,} frames, "
            f"lengths {cv['min_length']}-{cv['max_length']}, median {cv['median_length']:.0f})",
            "",
            f"Models bigru + conv1d (defaults), budget {cv['budget_seconds']:.0f} s for "
            f"{cv['folds_run']} fold(s), {cv.get('workers', 1)} worker process(es) of 1 thread, "
            f"load average {cv['load_average_before']:.1f} "
            f"when started. Wall {cv['wall_seconds']:.0f} s "
            f"({cv['per_fold_seconds']:.0f} s per fold; "
            f"5 folds ~{cv['estimated_5fold_seconds'] / 60:.1f} min; "
            "target < 30 min).",
            "",
        ]
        lines += _cv_table(cv["models"])
        lines += [
            "",
            f"Command: `python benchmarks/bench_sequence.py --skip-speed --skip-compare --cv-folds "
            f"{cv['folds_run']}`.",
        ]
        before = data.get("cv_before")
        if before:
            lines += [
                "",
                f"Before ({before['label']}; wall {before['wall_seconds']:.0f} s for {before['folds_run']} folds):",
                "",
            ]
            lines += _cv_table(before["models"])
        lines += [
            "",
            "The synthetic set is a stand-in: its numbers are not comparable with the paper's "
            "(ROC-AUC 0.869 +/- 0.016, accuracy 0.804 +/- 0.021 on real ZTF objects).",
            "",
        ]
    cmp_ = data.get("compare")
    if cmp_:
        lines += [
            f"## Sequence model vs single-visit scores aggregated per object ({cmp_['n_objects']} simulated "
            f"objects, {cmp_['n_frames']:,} frames; {cmp_.get('n_test_objects', '20%')} held out)",
            "",
            "Command: `python benchmarks/bench_sequence.py --skip-speed --skip-cv "
            f"--compare-objects {cmp_['n_objects']} --vae-frames {cmp_.get('vae_frames', 8000)}`.",
            "",
            "| method | ROC-AUC (encoder auto) | ROC-AUC (encoder float32) | max abs score difference | train (s) |",
            "|---|---|---|---|---|",
        ]
        for k, v in cmp_["sequence"].items():
            if "roc_auc_float32" in v:
                lines.append(
                    f"| sequence {k} | {v['roc_auc']:.3f} ({v['encoder_auto']}) | {v['roc_auc_float32']:.3f} | "
                    f"{v['max_abs_score_difference']:.4f} | {v['train_seconds']:.0f} |"
                )
            else:
                lines.append(f"| sequence {k} | {v['roc_auc']:.3f} | | | |")
        if cmp_.get("single_visit"):
            for k, v in cmp_["single_visit"].items():
                lines.append(f"| single-visit default model, per-object {k} | {v['roc_auc']:.3f} | | | |")
        lines += [
            "",
            f"Each sequence package is trained within a benchmark budget ({cmp_.get('n_train_objects', '80%')} "
            f"objects, VAE {cmp_.get('vae_epochs', 3)} epochs on {cmp_.get('vae_frames', 8000):,} frames); the "
            "single-visit default model was trained on many more labelled triplets. 'latents + visit scores': "
            "the classifier also reads each frame's single-visit score (its logit and whether it was scored), "
            "as the sequence task does from dia_source_unstandardized_reliability. 'encoder auto' is the "
            "scorer's default: bfloat16 on this CPU unless seeded probe objects score more than 0.01 away "
            "from float32 for that package, then float32 (the figure in brackets says which was used).",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Smaller sizes (a smoke test of the script).")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-cv", action="store_true")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument(
        "--cv-folds", type=int, default=5, choices=(1, 2, 3, 4, 5), help="Folds of the 5-fold CV to run."
    )
    ap.add_argument("--compare-objects", type=int, default=400)
    ap.add_argument("--vae-frames", type=int, default=8_000, help="Frames the compared VAEs train on.")
    ap.add_argument("--vae-epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--workers", type=int, default=None, help="sequence-cv fit processes (default: as the command line)."
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "sequence.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )
    data["date"] = datetime.date.today().isoformat()
    data["command"] = " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))

    def save():
        # After every section, so a long run that is stopped keeps what it measured. Sections
        # are merged into the file as it is now, so runs of different sections may overlap.
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update({k: v for k, v in data.items() if k in ran or k not in _SECTIONS})
        data.clear()
        data.update(merged)
        path.write_text(json.dumps(data, indent=1))
        (RESULTS / "sequence.md").write_text(write_md(data))

    ran: set[str] = set()
    if not args.skip_speed:
        ran.add("speed")
        data["speed"] = bench_speed(1000 if args.quick else 10_000, 50, args.threads)
        save()
    if not args.skip_cv:
        ran.add("cv")
        data["cv"] = bench_cv(args.cv_folds, args.threads, args.quick, args.workers)
        save()
    if not args.skip_compare:
        ran.add("compare")
        data["compare"] = bench_compare(
            120 if args.quick else args.compare_objects,
            args.threads,
            vae_frames=args.vae_frames,
            vae_epochs=args.vae_epochs,
        )
        save()
    print(f"Results: {path} and {RESULTS / 'sequence.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
