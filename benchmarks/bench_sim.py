#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Benchmark of the simulator (lsst.meas.rbnet.sim).

Times, on one core (numpy/scipy FFTs run single-threaded in the simulator):

(a) ``simulate_stamps(N, S)`` for the training path (default N = 100,000,
    S = 51 and S = 31, with mask planes),
(b) ``simulate_visit(seed, (4096, 4096))``: one LSSTCam-sized detector with
    300 labelled sources and the default field,
(c) ``simulate_sequences(1000, n_visits=(1, 100))``.

Wall-clock and CPU (process) time are both reported because the machine may be
shared: on a loaded machine the CPU time is the better measure of the work.
Results go to ``benchmarks/results/sim.json`` and ``.md``.

Usage: ``python benchmarks/bench_sim.py [--n 100000] [--sizes 51,31] [--visit-shape 4096] [--skip-sequences]``
"""

import argparse
import json
import os
import platform
import time

import numpy as np


def _timed(fn):
    wall = time.perf_counter()
    cpu = time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sizes", default="51,31")
    parser.add_argument("--visit-shape", type=int, default=4096)
    parser.add_argument("--skip-sequences", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sim"))
    args = parser.parse_args()

    from lsst.meas.rbnet.sim import simulate_sequences, simulate_stamps, simulate_visit

    simulate_stamps(64, 31, seed=1)  # warm-up: imports and cached tables
    results = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_start": os.getloadavg(),
        "cases": [],
    }
    for size in (int(s) for s in args.sizes.split(",")):
        out, wall, cpu = _timed(lambda: simulate_stamps(args.n, size, seed=0))
        results["cases"].append(
            {
                "case": f"simulate_stamps({args.n}, {size})",
                "wall_s": wall,
                "cpu_s": cpu,
                "per_example_ms_cpu": 1e3 * cpu / args.n,
                "bytes": int(out.stamps.nbytes + out.masks.nbytes),
            }
        )
        print(
            f"simulate_stamps({args.n}, {size}): wall {wall:.1f} s, cpu {cpu:.1f} s "
            f"({1e3 * cpu / args.n:.2f} ms per example)",
            flush=True,
        )
        del out
    shape = (args.visit_shape, args.visit_shape)
    visit, wall, cpu = _timed(lambda: simulate_visit(0, shape))
    results["cases"].append(
        {"case": f"simulate_visit(0, {shape})", "wall_s": wall, "cpu_s": cpu, "n_sources": len(visit.sources)}
    )
    print(f"simulate_visit(0, {shape}): wall {wall:.1f} s, cpu {cpu:.1f} s", flush=True)
    del visit
    if not args.skip_sequences:
        seq, wall, cpu = _timed(lambda: simulate_sequences(1000, seed=0))
        results["cases"].append(
            {
                "case": "simulate_sequences(1000, n_visits=(1, 100))",
                "wall_s": wall,
                "cpu_s": cpu,
                "frames": int(len(seq.times)),
            }
        )
        print(
            f"simulate_sequences(1000): {len(seq.times)} frames, wall {wall:.1f} s, cpu {cpu:.1f} s",
            flush=True,
        )
    results["load_average_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as stream:
        json.dump(results, stream, indent=1)
    with open(args.out + ".md", "w") as stream:
        stream.write("# Simulator benchmark\n\n")
        stream.write(
            f"Machine: {results['machine']}, Python {results['python']}, numpy {results['numpy']}; "
            f"load average at start {results['load_average_start'][0]:.1f}, "
            f"at end {results['load_average_end'][0]:.1f} (2 cores shared).\n\n"
        )
        stream.write("| case | wall (s) | CPU (s) |\n|---|---|---|\n")
        for case in results["cases"]:
            stream.write(f"| {case['case']} | {case['wall_s']:.1f} | {case['cpu_s']:.1f} |\n")
    print(f"Wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
