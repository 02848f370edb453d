#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Benchmark of stamp extraction and preparation (lsst.meas.rbnet.cutouts).

Three detector-sized float32 images (difference, science, template) with NaNs and
mask bits, N random sources (some near or past the edges), S x S stamps. In one
run it times:

(a) a plain copy of the output bytes (``np.copyto`` into a preallocated
    (N, 3, S, S) float32 array): the memory-bound floor;
(b) `extract_cutouts` (stamps, NaN/mask handling, counts, flags);
(c) `prepare_cutouts`: extraction + normalisation + NaN fill + flags;
(d) a per-source Python loop slicing one sub-image per source and channel (the
    meas_transiNet way), with no NaN/mask handling at all;
(e) streaming through `iter_cutout_batches` in batches,

and the peak traced memory (tracemalloc) of (c) and (e). Each case is repeated;
the table gives the best and the median time, because the machine may be
shared. Results go to ``benchmarks/results/cutouts.json`` and ``.md``.

Usage: ``python benchmarks/bench_cutouts.py [--n 10000] [--size 51] [--repeat 5]``
"""

import argparse
import json
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np

from lsst.meas.rbnet.constants import MASK_PLANES
from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.cutouts import extract_cutouts, iter_cutout_batches, prepare_cutouts


def make_data(shape, n, seed=0):
    """Images with NaNs, masks with sparse bad pixels, columns and blobs; sources some at edges."""
    rng = np.random.default_rng(seed)
    H, W = shape
    images, masks = [], []
    for c in range(3):
        img = rng.standard_normal(shape, dtype=np.float32)
        img *= 10.0
        nan_idx = rng.integers(0, H * W, size=H * W // 20000)
        img.ravel()[nan_idx] = np.nan
        m = np.zeros(shape, dtype=np.int32)
        m.ravel()[rng.integers(0, H * W, size=H * W // 5000)] = 1 << MASK_PLANES["CR"]
        for col in rng.integers(0, W, size=2):
            m[:, col] |= 1 << MASK_PLANES["BAD"]
        for _ in range(20):  # saturated blobs
            r, cc = rng.integers(0, H - 20), rng.integers(0, W - 20)
            m[r : r + 15, cc : cc + 15] |= 1 << MASK_PLANES["SAT"]
        # Not a bad plane: must cost nothing.
        m.ravel()[rng.integers(0, H * W, size=H * W // 50)] |= 1 << MASK_PLANES["DETECTED"]
        images.append(img)
        masks.append(m)
    x = rng.uniform(0, W - 1, n)
    y = rng.uniform(0, H - 1, n)
    k = n // 20  # 5% near or past an edge
    x[:k] = rng.uniform(-20, 30, k)
    y[k : 2 * k] = rng.uniform(H - 30, H + 20, k)
    perm = rng.permutation(n)
    return images, masks, x[perm], y[perm]


def loop_cutouts(images, x, y, size):
    """Per-source Python loop, one slice per source and channel (no NaN/mask handling)."""
    H, W = images[0].shape
    half = size // 2
    out = np.zeros((len(x), len(images), size, size), dtype=np.float32)
    for i in range(len(x)):
        cx, cy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
        r0, c0 = cy - half, cx - half
        ra, rb, ca, cb = max(r0, 0), min(r0 + size, H), max(c0, 0), min(c0 + size, W)
        for c, img in enumerate(images):
            out[i, c, ra - r0 : rb - r0, ca - c0 : cb - c0] = img[ra:rb, ca:cb]
    return out


def timeit(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), times


def peak_memory(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="number of sources")
    parser.add_argument("--size", type=int, default=51, help="stamp side (pixels, odd, 21..101)")
    parser.add_argument("--image", type=int, default=4096, help="image side (pixels)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats per case")
    parser.add_argument("--batch", type=int, default=1024, help="batch size of the streaming case")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cutouts")
    )
    args = parser.parse_args()

    images, masks, x, y = make_data((args.image, args.image), args.n)
    contract = InputContract(stamp_size=args.size)
    shape = (args.n, 3, args.size, args.size)
    src = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    dst = np.empty(shape, dtype=np.float32)
    dst[...] = 0.0  # touch the pages once so (a) measures copying, not page faults

    def stream():
        for _sl, batch, _flags in iter_cutout_batches(images, x, y, contract, args.batch, masks=masks):
            pass

    cases = {
        "a_copy": ("plain copy of the output bytes (memory-bound floor)", lambda: np.copyto(dst, src)),
        "b_extract": (
            "extract_cutouts",
            lambda: extract_cutouts(images, x, y, args.size, masks=masks),
        ),
        "c_prepare": (
            "extract + normalise + fill + flags (prepare_cutouts)",
            lambda: prepare_cutouts(images, x, y, contract, masks=masks),
        ),
        "d_loop": ("per-source Python loop of slices (no NaN/mask handling)", lambda: loop_cutouts(images, x, y, args.size)),
        "e_stream": (f"iter_cutout_batches, batches of {args.batch}", stream),
    }
    results = {}
    for key, (label, fn) in cases.items():
        fn()  # warm up
        best, med, times = timeit(fn, args.repeat)
        results[key] = {"label": label, "best_s": best, "median_s": med, "times_s": times}
    peaks = {"c_prepare": peak_memory(cases["c_prepare"][1]), "e_stream": peak_memory(stream)}
    for key, peak in peaks.items():
        results[key]["peak_traced_bytes"] = peak

    ref_best, ref_med = results["a_copy"]["best_s"], results["a_copy"]["median_s"]
    for r in results.values():
        r["ratio_best_to_copy"] = r["best_s"] / ref_best
        r["ratio_median_to_copy"] = r["median_s"] / ref_med
    targets = {"b_extract": 1.5, "c_prepare": 3.0}
    meta = {
        "n_sources": args.n,
        "stamp_size": args.size,
        "image_shape": [args.image, args.image],
        "channels": 3,
        "repeat": args.repeat,
        "output_bytes": int(np.prod(shape) * 4),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "targets_ratio_to_copy": targets,
    }

    lines = [
        f"# Cutout benchmark: {args.n} sources, 3 x {args.image}x{args.image} float32 images, "
        f"{args.size}x{args.size} stamps",
        "",
        f"numpy {np.__version__}, {os.cpu_count()} cores, load average at end "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; best and median of {args.repeat} runs.",
        "",
        "| case | best (s) | median (s) | best / copy | median / copy | target | peak traced memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        target = f"<= {targets[key]}x" if key in targets else ""
        peak = f"{r['peak_traced_bytes'] / 2**20:.0f} MiB" if "peak_traced_bytes" in r else ""
        lines.append(
            f"| ({key[0]}) {r['label']} | {r['best_s']:.3f} | {r['median_s']:.3f} | "
            f"{r['ratio_best_to_copy']:.2f} | {r['ratio_median_to_copy']:.2f} | {target} | {peak} |"
        )
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump({"meta": meta, "results": results}, fh, indent=2)
    with open(args.out + ".md", "w") as fh:
        fh.write(table + "\n")


if __name__ == "__main__":
    main()
