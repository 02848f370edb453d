#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Scoring speed and memory benchmark (CPU).

Measures, for the default ``triplet_cnn`` (31x31x3 stamps) and the braai-sized
``braai_like`` (63x63x3 stamps, the ZTF comparison), both untrained but built
exactly as a trained package would be:

1. throughput in triplets per second, median of repeats, for
   - the full path from raw ``(N, 3, S, S)`` stamps through `Scorer.score_stamps`
     (preparation: normalisation, flags; then the network), and
   - the network alone (`Scorer.logits_prepared` on prepared stamps),
   at batch sizes 256, 1024 and 4096, with and without symmetry averaging;
2. peak memory while 100,000 sources stream through `Scorer.score_images` on a
   synthetic 4096x4096 image triplet (with mask planes), per batch size, each
   in a fresh process (run first, while the parent is small, because a child's
   ``ru_maxrss`` starts at the parent's): ``ru_maxrss`` growth over the state
   after the images and the model are loaded, the same from the current RSS
   sampled every 5 ms, and the ``tracemalloc`` peak (numpy allocations). It
   should depend on the batch size, not on the number of sources.

Usage::

    python benchmarks/bench_scoring.py [--model PATH] [--repeats 5] [--quick]

``--model`` replaces the untrained ``triplet_cnn`` by a trained package.
Results go to ``benchmarks/results/scoring.json`` and ``scoring.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.cutouts import prepare_stamps
from lsst.meas.rbnet.nn import build
from lsst.meas.rbnet.package import ModelPackage
from lsst.meas.rbnet.scoring import Scorer

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (256, 1024, 4096)


def make_packages(model_path: str | None) -> dict[str, ModelPackage]:
    """The benchmarked packages: the triplet model (default or ``model_path``) and braai_like."""
    packages = {}
    if model_path:
        packages["model"] = ModelPackage.load(model_path)
    else:
        torch.manual_seed(0)
        hp = {}
        packages["triplet_cnn"] = ModelPackage.from_modules(
            "triplet",
            {"classifier": ("triplet_cnn", hp, build("triplet_cnn", **hp))},
            contract=InputContract(),
            version="bench",
        )
    hp = {"stamp_size": 63}
    packages["braai_like"] = ModelPackage.from_modules(
        "triplet",
        {"classifier": ("braai_like", hp, build("braai_like", **hp))},
        # braai's own preprocessing: each stamp scaled to unit L2 norm.
        contract=InputContract(stamp_size=63, normalization="unit"),
        version="braai",
    )
    return packages


def raw_stamps(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Synthetic raw triplets (N, 3, S, S) float32: noise, background and a point source in half."""
    rng = np.random.default_rng(seed)
    st = rng.normal(0.0, 1.0, size=(n, 3, size, size)).astype(np.float32)
    st[:, 1:] += 100.0
    yy, xx = np.mgrid[:size, :size] - size // 2
    psf = np.exp(-(xx**2 + yy**2) / 4.5).astype(np.float32)
    st[::2, 0] += (rng.uniform(5, 200, (n + 1) // 2)[:, None, None] * psf).astype(np.float32)
    return st


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(packages, repeats: int, quick: bool) -> list[dict]:
    """Throughput rows; the models are timed in turn within each repeat (interleaved), so that
    a varying load on a shared machine affects them alike and their ratio stays meaningful."""
    rows = []
    for symmetry in (False, True):
        for bs in BATCH_SIZES:
            # Two batches at least for the plain path; at most 2048 sources for the 8x costlier
            # symmetric path (then batch 4096 scores one partial batch).
            n = (min(bs, 2048) if symmetry else max(2 * bs, 4096)) if not quick else min(bs, 1024)
            cases = {}
            for name, package in packages.items():
                stamps = raw_stamps(n, package.contract.stamp_size)
                scorer = Scorer(package, device="cpu", batch_size=bs, symmetry=symmetry)
                prepared, _ = prepare_stamps(stamps, package.contract)
                full = functools.partial(scorer.score_stamps, stamps)
                net = functools.partial(scorer.logits_prepared, prepared)
                full(), net()  # warm-up
                cases[name] = (full, net, {"full": [], "network": []})
            for _ in range(repeats):
                for full, net, times in cases.values():
                    times["full"].append(_seconds(full))
                    times["network"].append(_seconds(net))
            for name, (_, _, times) in cases.items():
                package = packages[name]
                size = package.contract.stamp_size
                row = {
                    "model": name,
                    "architecture": package.components["classifier"].architecture,
                    "parameters": sum(p.numel() for p in package.build().parameters()),
                    "stamp": f"{package.contract.n_channels}x{size}x{size}",
                    "symmetry": symmetry,
                    "batch_size": bs,
                    "n": n,
                    "full_per_s_median": n / statistics.median(times["full"]),
                    "full_per_s_best": n / min(times["full"]),
                    "network_per_s_median": n / statistics.median(times["network"]),
                    "network_per_s_best": n / min(times["network"]),
                }
                rows.append(row)
                print(
                    f"{name:12s} sym={symmetry!s:5s} bs={bs:5d} n={n:5d}  "
                    f"full {row['full_per_s_median']:8.0f}/s "
                    f"(best {row['full_per_s_best']:8.0f})  network {row['network_per_s_median']:8.0f}/s "
                    f"(best {row['network_per_s_best']:8.0f})",
                    flush=True,
                )
    return rows


# ----------------------------------------------------------------------
# Memory (each measurement in a fresh process, since ru_maxrss only grows)
# ----------------------------------------------------------------------


def _maxrss_bytes() -> int:
    # Linux reports kilobytes, macOS bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssSampler(threading.Thread):
    """Samples the current RSS every few milliseconds (a cross-check of ``ru_maxrss``)."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = _current_rss_bytes()
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _current_rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def memory_child(
    model_path: str | None, which: str, batch_size: int, n_sources: int, image_size: int
) -> dict:
    torch.set_num_threads(2)
    package = make_packages(model_path)[which]
    rng = np.random.default_rng(1)
    shape = (image_size, image_size)
    # Generated in float32 directly and masks written (not lazily zeroed pages), so that making
    # the inputs leaves no transient high-water mark above the baseline.
    images = [rng.standard_normal(shape, dtype=np.float32) for _ in range(3)]
    images[1] += 100.0
    images[2] += 100.0
    masks = [np.full(shape, 0, dtype=np.int32) for _ in range(3)]
    x = rng.uniform(-10, image_size + 10, n_sources)
    y = rng.uniform(-10, image_size + 10, n_sources)
    scorer = Scorer(package, device="cpu", batch_size=batch_size)
    # Warm up the network with a few sources (loads kernels), then take the baseline: the growth
    # measured after it is what the batches themselves need.
    scorer.score_images(images, x[:16], y[:16], masks=masks)
    base = _maxrss_bytes()
    base_current = _current_rss_bytes() if sys.platform.startswith("linux") else None
    sampler = _RssSampler() if base_current is not None else None
    if sampler:
        sampler.start()
    tracemalloc.start()
    t0 = time.perf_counter()
    result = scorer.score_images(images, x, y, masks=masks)
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sampled_peak = sampler.stop() if sampler else None
    s = package.contract.stamp_size
    return {
        "model": which,
        "batch_size": batch_size,
        "n_sources": n_sources,
        "image_size": image_size,
        "rss_growth_mb": (_maxrss_bytes() - base) / 2**20,
        "sampled_rss_growth_mb": None if sampled_peak is None else (sampled_peak - base_current) / 2**20,
        "baseline_rss_mb": base / 2**20,
        "tracemalloc_peak_mb": traced_peak / 2**20,
        "one_batch_input_mb": batch_size * package.contract.n_channels * s * s * 4 / 2**20,
        "all_stamps_at_once_mb": n_sources * package.contract.n_channels * s * s * 4 / 2**20,
        "images_mb": sum(a.nbytes for a in images + masks) / 2**20,
        "seconds": seconds,
        "per_s": n_sources / seconds,
        "n_scored": int(np.isfinite(result.reliability).sum()),
    }


def _fmt_mb(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def memory(model_path, names, n_sources: int, image_size: int, batch_sizes) -> list[dict]:
    rows = []
    for which in names:
        for bs in batch_sizes:
            cmd = [
                sys.executable,
                __file__,
                "--memory-child",
                which,
                str(bs),
                str(n_sources),
                str(image_size),
            ]
            if model_path:
                cmd += ["--model", model_path]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{which:12s} bs={bs:5d}: RSS growth {row['rss_growth_mb']:7.1f} MB "
                f"(sampled {_fmt_mb(row['sampled_rss_growth_mb'])} MB), tracemalloc peak "
                f"{row['tracemalloc_peak_mb']:7.1f} MB "
                f"(one batch of input {row['one_batch_input_mb']:.1f} MB; "
                f"all stamps at once would be {row['all_stamps_at_once_mb']:.0f} MB), "
                f"{row['per_s']:.0f} sources/s",
                flush=True,
            )
    return rows


# ----------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------


def write_markdown(path: Path, info: dict, rows: list[dict], mem: list[dict]) -> None:
    lines = [
        "# Scoring benchmark (CPU)",
        "",
        f"Written by `benchmarks/bench_scoring.py` on {info['date']}: {info['cpu_count']} CPUs, "
        f"torch {info['torch']} with {info['torch_threads']} threads, load average before/after "
        f"{info['load_before']} / {info['load_after']}. Medians of {info['repeats']} repeats (after a "
        "warm-up call); the models are timed in turn within each repeat, so a varying load affects "
        "them alike. The machine was shared, so the best repeat is shown too.",
        "",
        "## Throughput (triplets per second)",
        "",
        "`full`: raw (N, 3, S, S) stamps through `Scorer.score_stamps` (preparation + network). "
        "`network`: `Scorer.logits_prepared` on prepared stamps. Both models run through the same "
        "`Scorer` (batch norm folded, channels-last, the network fed chunks of "
        "`scoring.cpu_network_chunk(S)` stamps: 128 for 31x31, 32 for 63x63). With symmetry each stamp "
        "is scored 8 times (rotations and flips).",
        "",
        "| model | params | stamp | symmetry | batch | full (median) | full (best) | network (median) "
        "| network (best) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['stamp']} | {'yes' if r['symmetry'] else 'no'} | "
            f"{r['batch_size']} | {r['full_per_s_median']:,.0f} | {r['full_per_s_best']:,.0f} | "
            f"{r['network_per_s_median']:,.0f} | {r['network_per_s_best']:,.0f} |"
        )
    ratios = info.get("ratios", {})
    if ratios:
        lines += ["", "Speed ratio of the triplet model over braai_like (no symmetry, batch 1024):", ""]
        for k, v in ratios.items():
            lines.append(f"- {k}: {v:.2f}x")
    if mem:
        lines += [
            "",
            "## Peak memory streaming sources through `Scorer.score_images`",
            "",
            f"{mem[0]['n_sources']:,} sources on a synthetic {mem[0]['image_size']}x{mem[0]['image_size']} "
            f"image triplet with int32 masks ({mem[0]['images_mb']:.0f} MB of images, not counted). "
            "RSS growth: `ru_maxrss` after scoring minus after loading the images and the model and scoring "
            "16 sources, in a fresh process per row; it includes the network's activations (torch), which "
            "grow with the batch size. Sampled: peak of the current RSS (read every 5 ms) minus the current "
            "RSS before scoring. tracemalloc: peak of numpy allocations (extraction and preparation) during "
            "scoring.",
            "",
            "| model | batch | RSS growth (MB) | sampled RSS growth (MB) | tracemalloc peak (MB) "
            "| one batch of input (MB) | all stamps at once (MB) | sources/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in mem:
            lines.append(
                f"| {r['model']} | {r['batch_size']} | {r['rss_growth_mb']:.1f} | "
                f"{_fmt_mb(r['sampled_rss_growth_mb'])} | {r['tracemalloc_peak_mb']:.1f} | "
                f"{r['one_batch_input_mb']:.1f} | {r['all_stamps_at_once_mb']:.0f} | {r['per_s']:,.0f} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="path of a trained triplet model package to benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per configuration (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="small sizes, for trying the script")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--out", default=str(RESULTS), help="directory for scoring.json and scoring.md")
    parser.add_argument(
        "--memory-child", nargs=4, metavar=("MODEL", "BATCH", "N", "SIZE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.memory_child:
        which, bs, n, size = args.memory_child
        print(json.dumps(memory_child(args.model, which, int(bs), int(n), int(size))))
        return

    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "model": args.model or "untrained default triplet_cnn",
        "load_before": round(os.getloadavg()[0], 2),
    }
    packages = make_packages(args.model)
    mem = []
    if not args.no_memory:
        # Memory first, while this process is small: on Linux a child's ru_maxrss starts from
        # the parent's high-water mark, which the throughput runs would raise.
        n_sources, image_size = (20_000, 2048) if args.quick else (100_000, 4096)
        mem = memory(args.model, list(packages), n_sources, image_size, BATCH_SIZES)
    rows = throughput(packages, repeats, args.quick)
    info["load_after"] = round(os.getloadavg()[0], 2)
    first = next(iter(packages))

    def pick(model, key):
        return next(
            r[key] for r in rows if r["model"] == model and r["batch_size"] == 1024 and not r["symmetry"]
        )

    info["ratios"] = {
        f"{kind} ({stat})": pick(first, f"{kind}_per_s_{stat}") / pick("braai_like", f"{kind}_per_s_{stat}")
        for kind in ("full", "network")
        for stat in ("median", "best")
    }
    for k, v in info["ratios"].items():
        print(f"{first} / braai_like, {k}: {v:.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring.json").write_text(json.dumps({"info": info, "throughput": rows, "memory": mem}, indent=1))
    write_markdown(out / "scoring.md", info, rows, mem)
    print(f"wrote {out / 'scoring.json'} and {out / 'scoring.md'}")


if __name__ == "__main__":
    main()
