#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Benchmark of `SequenceReliabilityTask.run`: what the task adds around the sequence scorer.

Synthetic per-visit inputs as the reliability task writes them (``dia_source_cutouts`` with
3 x 29 x 29 stamps, source tables with ra/dec), ``--objects`` objects seen in ``--visits``
visits, scored by an untrained sequence package of the default size (28-pixel science
frames, VAE 32..512 channels, 36 latents, bidirectional GRU of 128 units: speed does not
depend on the weights). Reported, warm (second call), for objects grouped by
``diaObjectId`` and by positional association (1 arcsec friends-of-friends):
the task's total, the sequence scorer alone on the same frames, and the difference
(joining tables, cutting frames, grouping, partition, output table). Wall-clock differences
of a few hundredths of a second drown in the load of a shared machine, so the task's own CPU
time outside the scorer's ``score`` call is reported too (process CPU time of ``run`` minus
that of the ``score`` call inside it; best of 5).

``--before results.json`` adds the figures of an earlier run (e.g. of the previous commit,
run in the same session) to the table.

Results: ``benchmarks/results/sequence_task.json`` and ``sequence_task.md``.

Usage: ``python benchmarks/bench_sequence_task.py [--objects 1000] [--visits 20] [--threads 2]
[--before results.json]``
"""

import argparse
import json
import os
import platform
import time

import astropy.table
import numpy as np


def _package():
    import torch

    from lsst.meas.rbnet.contract import InputContract
    from lsst.meas.rbnet.nn import registry
    from lsst.meas.rbnet.package import ModelPackage

    torch.manual_seed(0)
    hp_vae = dict(in_channels=1, frame_size=28, latent_dim=36)
    hp_cls = dict(input_dim=36)
    return ModelPackage.from_modules(
        "sequence",
        {
            "encoder": ("vae", hp_vae, registry.build("vae", **hp_vae).eval()),
            "classifier": ("seq_bigru", hp_cls, registry.build("seq_bigru", **hp_cls).eval()),
        },
        contract=InputContract(stamp_size=29, channels=("science",)),
        version="bench",
        extra={"frame_size": 28, "frame_channels": ["science"], "latent_columns": [0, 36]},
    )


def _inputs(n_objects, n_visits, seed=0):
    rng = np.random.default_rng(seed)
    # On a grid 10 arcsec apart, so positional association finds exactly the objects.
    side = int(np.ceil(np.sqrt(n_objects)))
    ra = 150.0 + (np.arange(n_objects) % side) * 10.0 / 3600.0
    dec = 2.0 + (np.arange(n_objects) // side) * 10.0 / 3600.0
    cutouts, sources, times = [], [], []
    for v in range(n_visits):
        ids = np.int64(v + 1) * 10_000_000 + np.arange(n_objects, dtype=np.int64)
        cut = astropy.table.Table()
        cut["id"] = ids
        cut["stamp"] = rng.normal(0, 1, (n_objects, 3, 29, 29)).astype(np.float32)
        cut["reliabilityFlags"] = np.zeros(n_objects, np.int32)
        cut.meta["channels"] = ["difference", "science", "template"]
        src = astropy.table.Table()
        src["id"] = ids
        src["ra"] = ra + rng.normal(0, 0.1 / 3600, n_objects)
        src["dec"] = dec + rng.normal(0, 0.1 / 3600, n_objects)
        src["diaObjectId"] = np.arange(1, n_objects + 1, dtype=np.int64)
        src["reliability"] = rng.uniform(0, 1, n_objects).astype(np.float32)
        cutouts.append(cut)
        sources.append(src)
        times.append(60000.0 + 3.0 * v)
    return cutouts, sources, times


def _overhead_cpu(task, cutouts, sources, package, times, repeats=5):
    """Best CPU time of ``task.run`` outside its scorer's ``score`` call (seconds)."""
    scorer = task.load_scorer(package)
    inside = []

    def timed_score(*args, **kwargs):
        c0 = time.process_time()
        try:
            return type(scorer).score(scorer, *args, **kwargs)
        finally:
            inside.append(time.process_time() - c0)

    scorer.score = timed_score  # on this cached instance only; removed below
    try:
        best = np.inf
        for _ in range(repeats):
            inside.clear()
            c0 = time.process_time()
            task.run(cutouts, sources, package, times=times)
            best = min(best, time.process_time() - c0 - sum(inside))
    finally:
        del scorer.score
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--visits", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before", help="sequence_task.json of an earlier run to show beside this one")
    args = parser.parse_args()

    import torch

    from lsst.meas.rbnet.sequence.scoring import SequenceScorer
    from lsst.meas.rbnet.tasks.sequence import (
        SequenceReliabilityConfig,
        SequenceReliabilityTask,
        gather_frames,
    )

    torch.set_num_threads(args.threads)
    package = _package()
    cutouts, sources, times = _inputs(args.objects, args.visits)
    n_sources = args.objects * args.visits
    results = {
        "objects": args.objects,
        "visits": args.visits,
        "sources": n_sources,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "load_average_at_start": os.getloadavg()[0],
        "model": "untrained default-size VAE (28 px science frames, 36 latents) + seq_bigru(128)",
    }
    for mode in ("diaObjectId", "position"):
        config = SequenceReliabilityConfig()
        config.numThreads = args.threads
        config.device = "cpu"
        if mode == "position":
            config.objectIdColumn = ""
        task = SequenceReliabilityTask(config=config)
        task.run(cutouts[:2], sources[:2], package, times=times[:2])  # warm the scorer cache
        runs = []
        for _ in range(3):  # best of 3: the first full-size call also warms the kernels
            t0 = time.perf_counter()
            table = task.run(cutouts, sources, package, times=times).objectReliability
            runs.append(time.perf_counter() - t0)
            assert len(table) == args.objects, (mode, len(table))
        results[f"task_seconds_{mode}"] = min(runs)
        results[f"task_overhead_cpu_seconds_{mode}"] = _overhead_cpu(task, cutouts, sources, package, times)
    # The scorer alone on the same frames, already cut and in object order.
    frames = gather_frames(cutouts, sources, channels=("science",), frame_size=28, times=times)
    order = np.lexsort((frames.mjd, frames.object_id))
    offsets = np.arange(0, n_sources + 1, args.visits)
    scorer = SequenceScorer(package, device="cpu")
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        scorer.score(frames.frames[order], offsets, frames.mjd[order])
        runs.append(time.perf_counter() - t0)
    results["scorer_seconds"] = min(runs)
    results["scorer_precision"] = scorer.precision
    for mode in ("diaObjectId", "position"):
        results[f"task_overhead_seconds_{mode}"] = results[f"task_seconds_{mode}"] - results["scorer_seconds"]
        results[f"objects_per_second_{mode}"] = args.objects / results[f"task_seconds_{mode}"]

    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sequence_task.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [
        "# SequenceReliabilityTask.run",
        "",
        f"{args.objects} objects x {args.visits} visits ({n_sources} sources), {results['model']}, "
        f"{args.threads} torch threads, {results['machine']}; encoder precision {results['scorer_precision']} "
        f"(the scorer's 'auto'); best of 3 warm runs; load average {results['load_average_at_start']:.1f} "
        "at the start.",
        "",
        f"Command: `python benchmarks/bench_sequence_task.py --objects {args.objects} --visits {args.visits} "
        f"--threads {args.threads}{' --before ' + os.path.basename(args.before) if args.before else ''}`.",
        "",
        "| run | grouping | task total (s) | scorer alone (s) | task overhead (s) | "
        "task CPU outside score() (s) | objects/s |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = [("this run", results)]
    if args.before:
        with open(args.before) as f:
            runs.insert(0, ("before", json.load(f)))
        lines[2] += f" Before: `{os.path.basename(args.before)}` of an earlier run, shown beside."
    for name, res in runs:
        for mode in ("diaObjectId", "position"):
            cpu = res.get(f"task_overhead_cpu_seconds_{mode}")
            lines.append(
                f"| {name} | {mode} | {res[f'task_seconds_{mode}']:.2f} | {res['scorer_seconds']:.2f} | "
                f"{res[f'task_overhead_seconds_{mode}']:.2f} | {'-' if cpu is None else f'{cpu:.3f}'} | "
                f"{res[f'objects_per_second_{mode}']:.0f} |"
            )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "sequence_task.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
