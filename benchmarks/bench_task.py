#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Benchmark of the reliability task, in memory and through ``pipetask run``.

Part 1, one detector (4096 x 4096 by default, lsst.images VisitImage/DifferenceImage/
MaskedImage inputs) with 1,000 sources, on the CPU:

(a) ``ReliabilityTask.run``: the model comes from the process-wide scorer cache, each
    image is turned into arrays once and stamps stream into the network in batches;
    the first call (cold: builds the network) is reported apart from the warm ones;
(b) a baseline in the style of meas_transiNet: the model package is parsed and the
    network built again for every quantum, and one sub-image per source and channel is
    cut in a Python loop (then normalised and scored in one batch).

Part 2, ``pipetask run`` of ``pipelines/ApReliability.yaml`` on a fresh repository with
512 x 512 detectors (about 300 sources each), for 1 and for 20 quanta (``-j 1``), with
where the time goes: interpreter and pipetask start-up (``pipetask --help``), graph
building (``pipetask qgraph`` minus start-up), per-quantum execution (from pipetask's
log) split into the task's ``run`` (from the task metadata) and the rest (Butler reads
and writes, task construction).

Model: the shipped default package if it is installed, else an untrained
``triplet_cnn`` of the default size (speed does not depend on the weights).

Results: ``benchmarks/results/task.json`` and ``task.md``.

Usage: ``python benchmarks/bench_task.py [--size 4096] [--n 1000] [--repeat 5] [--skip-pipetask]``
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _wcs(shape):
    import astropy.wcs

    w = astropy.wcs.WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


def make_visit(shape, n, seed=0, visit=1, detector=0):
    """Noise images with n Gaussian sources and sparse masked pixels (simulator-like object)."""
    import astropy.table

    from lsst.meas.rbnet.constants import MASK_PLANES

    rng = np.random.default_rng(seed)
    h, w = shape

    class Plane:
        pass

    planes = []
    x = rng.uniform(-5, w + 5, n)
    y = rng.uniform(-5, h + 5, n)
    for k in range(3):
        p = Plane()
        p.image = rng.normal(0, 10, shape).astype(np.float32)
        cx, cy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
        inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
        p.image[cy[inside], cx[inside]] += 300.0
        p.variance = np.full(shape, 100.0, np.float32)
        p.mask = np.zeros(shape, np.int32)
        p.mask[rng.integers(0, h, 2000), rng.integers(0, w, 2000)] |= 1 << MASK_PLANES["CR"]
        planes.append(p)

    class Visit:
        pass

    v = Visit()
    v.difference, v.science, v.template = planes
    v.sources = astropy.table.Table(
        {
            "id": (np.int64(visit) * 1000 + detector) * 100000 + np.arange(n, dtype=np.int64),
            "x": x,
            "y": y,
            "ra": np.zeros(n),
            "dec": np.zeros(n),
            "label": (rng.uniform(size=n) > 0.5).astype(np.int16),
        }
    )
    v.metadata = dict(
        visit=visit,
        detector=detector,
        mjd=60000.0 + visit,
        band="r",
        physical_filter="sim_r",
        wcs=_wcs(shape),
        fwhm=3.5,
    )
    return v


def model_package():
    from lsst.meas.rbnet.contract import InputContract
    from lsst.meas.rbnet.nn import registry
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.scoring import default_model_path

    path = default_model_path()
    if Path(path).is_file():
        return ModelPackage.load(path), f"default ({Path(path).name})"
    module = registry.build("triplet_cnn")
    hp = registry.architecture_defaults("triplet_cnn")
    hp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()}
    package = ModelPackage.from_modules(
        "triplet", {"classifier": ("triplet_cnn", hp, module)}, contract=InputContract(), version="bench"
    )
    return package, "untrained triplet_cnn (default size)"


def baseline(package_bytes, science, template, difference, sources):
    """The meas_transiNet way: reload the model, one sub-image per source in a Python loop."""
    import torch

    from lsst.meas.rbnet.cutouts import prepare_stamps
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.tasks.adapter import to_arrays

    package = ModelPackage.from_bytes(package_bytes)  # every quantum
    net = package.build("classifier").eval()
    S = package.contract.stamp_size
    r = S // 2
    imgs = [to_arrays(o).image for o in (difference, science, template)]
    h, w = imgs[0].shape
    stamps = np.zeros((len(sources), 3, S, S), np.float32)
    for i, (x, y) in enumerate(zip(sources["x"], sources["y"])):
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        for c, img in enumerate(imgs):
            sub = img[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
            stamps[i, c, : sub.shape[0], : sub.shape[1]] = sub  # edge sources: zero-padded, as transiNet
    x, _ = prepare_stamps(stamps, package.contract)
    with torch.inference_mode():
        logits = net(torch.from_numpy(x)).float().numpy()
    return 1 / (1 + np.exp(-logits / package.temperature))


def bench_run(args, results):
    import torch

    from lsst.meas.rbnet.butler.images import make_difference_image, make_masked_image, make_visit_image
    from lsst.meas.rbnet.scoring import clear_scorer_cache
    from lsst.meas.rbnet.tasks.reliability import ReliabilityConfig, ReliabilityTask

    torch.set_num_threads(args.threads)
    shape = (args.size, args.size)
    v = make_visit(shape, args.n)
    common = dict(
        wcs=v.metadata["wcs"],
        instrument="RBSim",
        detector=0,
        visit=1,
        band="r",
        physical_filter="sim_r",
        mjd=60001.0,
        fwhm=3.5,
    )
    science = make_visit_image(v.science.image, v.science.variance, v.science.mask, **common)
    difference = make_difference_image(v.difference.image, v.difference.variance, v.difference.mask, **common)
    template = make_masked_image(v.template.image, v.template.variance, v.template.mask)
    sources = v.sources
    package, model_name = model_package()
    config = ReliabilityConfig()
    config.device = "cpu"
    config.numThreads = args.threads
    task = ReliabilityTask(config=config)
    kwargs = dict(
        science=science, template=template, difference=difference, sources=sources, pretrainedModel=package
    )
    clear_scorer_cache()
    t = time.perf_counter()
    task.run(**kwargs)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        out = task.run(**kwargs)
        warm.append(time.perf_counter() - t)
    data = package.to_bytes()
    base = []
    for _ in range(max(1, args.repeat // 2)):
        t = time.perf_counter()
        ref = baseline(data, science, template, difference, sources)
        base.append(time.perf_counter() - t)
    ok = np.isfinite(out.reliability["score"])
    agree = (
        float(np.corrcoef(np.asarray(out.reliability["score"])[ok], ref[ok])[0, 1]) if ok.sum() > 2 else None
    )
    results["task_run"] = {
        "image_size": args.size,
        "n_sources": args.n,
        "threads": args.threads,
        "model": model_name,
        "model_parameters": package.n_parameters(),
        "stamp_size": package.contract.stamp_size,
        "cold_first_call_s": cold,
        "warm_best_s": min(warm),
        "warm_median_s": statistics.median(warm),
        "baseline_best_s": min(base),
        "baseline_median_s": statistics.median(base),
        "speedup_median": statistics.median(base) / statistics.median(warm),
        "score_correlation_with_baseline": agree,
        "target_s": 1.5,
    }
    print(json.dumps(results["task_run"], indent=2))


def _pipetask(args, env, log):
    exe = os.path.join(os.path.dirname(sys.executable), "pipetask")
    t = time.perf_counter()
    proc = subprocess.run([exe, *args], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    log.write(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"pipetask {args[0]} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return dt, proc.stdout + proc.stderr


def bench_pipetask(args, results):
    from lsst.daf.butler import Butler

    from lsst.meas.rbnet.butler.repo import VisitWriter, create_repo, register_model

    tmp = Path(tempfile.mkdtemp(prefix="rbnet_bench_"))
    try:
        t = time.perf_counter()
        butler = create_repo(str(tmp / "repo"))
        writer = VisitWriter(butler, run="sim")
        for k in range(20):
            visit, detector = 1 + k // 4, k % 4
            writer.write(make_visit((512, 512), 300, seed=k, visit=visit, detector=detector))
        package, model_name = model_package()
        register_model(butler, package, name="bench")
        setup = time.perf_counter() - t
        env = dict(os.environ, MEAS_RBNET_DIR=str(ROOT), OMP_NUM_THREADS=str(args.threads))
        pipeline = str(ROOT / "pipelines" / "ApReliability.yaml")
        log = open(HERE / "results" / "task_pipetask.log", "w")
        startup, _ = _pipetask(["--help"], env, log)
        out = {"setup_repo_20_quanta_s": setup, "pipetask_startup_s": startup, "model": model_name}
        for n_quanta, where in ((1, "visit = 1 AND detector = 0"), (20, "visit >= 1")):
            common = ["-b", str(tmp / "repo"), "-i", "sim,pretrained_models", "-p", pipeline, "-d", where]
            qg, _ = _pipetask(["qgraph", *common, "-o", f"qg{n_quanta}"], env, log)
            wall, text = _pipetask(
                [
                    "run",
                    *common,
                    "-o",
                    f"out{n_quanta}",
                    "-j",
                    "1",
                    "--register-dataset-types",
                    "-c",
                    f"computeReliability:numThreads={args.threads}",
                ],
                env,
                log,
            )
            quanta = [
                float(s)
                for s in re.findall(
                    r"Execution of task 'computeReliability' on quantum .* took ([0-9.]+) seconds", text
                )
            ]
            b = Butler.from_config(str(tmp / "repo"), collections=f"out{n_quanta}")
            run_s = []
            for ref in b.registry.queryDatasets("computeReliability_metadata", collections=f"out{n_quanta}"):
                md = b.get(ref).to_dict()
                node = md.get("computeReliability", md)
                if "runStartUtc" in node and "runEndUtc" in node:
                    from datetime import datetime

                    def first(v):
                        return v[0] if isinstance(v, list) else v

                    start = datetime.fromisoformat(str(first(node["runStartUtc"])))
                    end = datetime.fromisoformat(str(first(node["runEndUtc"])))
                    run_s.append((end - start).total_seconds())
            out[f"{n_quanta}_quanta"] = {
                "wall_s": wall,
                "qgraph_wall_s": qg,
                "graph_building_s": max(qg - startup, 0.0),
                "quanta_executed": len(quanta),
                "quantum_total_s": sum(quanta),
                "quantum_first_s": quanta[0] if quanta else None,
                "quantum_median_s": statistics.median(quanta) if quanta else None,
                "task_run_total_s": sum(run_s) if run_s else None,
                "io_and_overhead_in_quanta_s": (sum(quanta) - sum(run_s)) if run_s else None,
                "rest_s": wall - startup - max(qg - startup, 0.0) - sum(quanta),
            }
            print(n_quanta, json.dumps(out[f"{n_quanta}_quanta"], indent=2))
        log.close()
        results["pipetask"] = out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_markdown(results, path):
    lines = ["# Reliability task benchmark", "", f"Machine: {results['machine']}", ""]
    r = results.get("task_run")
    if r:
        lines += [
            f"## ReliabilityTask.run, one {r['image_size']}x{r['image_size']} detector, {r['n_sources']} sources, "
            f"CPU ({r['threads']} threads)",
            "",
            f"Model: {r['model']}, {r['model_parameters']} parameters, {r['stamp_size']}x{r['stamp_size']} stamps.",
            "",
            "| case | best (s) | median (s) |",
            "|---|---|---|",
            f"| task run, model cached (target <= {r['target_s']} s) | {r['warm_best_s']:.3f} | {r['warm_median_s']:.3f} |",
            f"| task run, first call (builds the network) | {r['cold_first_call_s']:.3f} | |",
            f"| baseline: reload model + per-source Python loop | {r['baseline_best_s']:.3f} | {r['baseline_median_s']:.3f} |",
            "",
            f"Speed-up (median): {r['speedup_median']:.1f}x. Correlation of the scores with the baseline's "
            f"(interior sources): {r['score_correlation_with_baseline']}.",
            "",
        ]
    p = results.get("pipetask")
    if p:
        lines += [
            "## pipetask run (ApReliability.yaml, 512x512 detectors, 300 sources each, -j 1)",
            "",
            f"pipetask start-up (`pipetask --help`): {p['pipetask_startup_s']:.2f} s.",
            "",
            "| quanta | wall (s) | graph building (s) | quanta total (s) | task run total (s) | I/O + overhead in quanta (s) | rest (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for n in (1, 20):
            q = p[f"{n}_quanta"]
            f = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(
                f"| {n} | {f(q['wall_s'])} | {f(q['graph_building_s'])} | {f(q['quantum_total_s'])} | "
                f"{f(q['task_run_total_s'])} | {f(q['io_and_overhead_in_quanta_s'])} | {f(q['rest_s'])} |"
            )
        lines += [
            "",
            "'rest' is the wall time not in start-up, graph building or quanta: writing the graph, "
            "init-outputs, provenance, process teardown.",
            "",
        ]
    Path(path).write_text("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-pipetask", action="store_true")
    parser.add_argument("--skip-run", action="store_true")
    args = parser.parse_args()
    (HERE / "results").mkdir(exist_ok=True)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    }
    if not args.skip_run:
        bench_run(args, results)
    if not args.skip_pipetask:
        bench_pipetask(args, results)
    (HERE / "results" / "task.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, HERE / "results" / "task.md")
    print(f"Wrote {HERE / 'results' / 'task.json'} and task.md")


if __name__ == "__main__":
    main()
