#!/usr/bin/env python
# This file is part of meas_rbnet.
"""One-command GPU benchmark: everything worth measuring in a few minutes of a borrowed GPU.

Needs only the installed ``lsst.meas.rbnet`` (no checkout, no Butler repository, no
network): the shipped default model, images and stamps made here. Sections, each timed
after a warm-up, with ``torch.cuda.synchronize()`` around every measurement:

1. **Scoring throughput** of the default model (`lsst.meas.rbnet.scoring.Scorer`) at batch
   sizes 256, 1,024, 4,096 and 16,384, without and with mixed precision (``amp="off"`` /
   ``"auto"``: bfloat16 where the GPU supports it, else float16), without and with
   symmetry averaging: (a) the network alone on prepared stamps held in host memory
   (`Scorer.logits_prepared`: includes the copy to the device), (b) the whole path from
   raw stamps (`Scorer.score_stamps`: normalisation and flags on the CPU, then the
   network). Peak GPU memory of each case (``torch.cuda.max_memory_allocated``).
   Goal: at least 100,000 triplets/s.
2. **The task's run**: `ReliabilityTask.run` on one 4096x4096 detector (lsst.images
   ``VisitImage``/``DifferenceImage``/``MaskedImage``) with 10,000 sources,
   ``device="cuda"``; first call and best of the warm ones.
3. **A training epoch of the default model**: `train_triplet_model` with the default
   package's own training configuration (architecture, batch size 256, float16 storage,
   augmentation, class head, amp) on as many synthetic prepared stamps as it was trained
   on (143,640 + 15,960 for validation), one epoch; once on the current code path, and
   once with the former one restored for comparison ("before": loss read back every
   step, float16 autocast with the gradient scaler, augmentation on the CPU in the
   calling thread, copies from pageable memory).
4. **The sequence scorer** (`SequenceScorer`) on 10,000 objects x 50 visits of 28x28
   frames, an untrained bi-GRU package built as trained ones are (speed does not depend
   on the weights), encoder precision ``float32`` and ``auto``.

A time guard skips what would not fit in ``--budget`` seconds (default 270) and says so.
On a machine without a CUDA GPU it prints that and exits 0 without writing anything.
``--cpu-smoke`` runs every section at toy sizes on the CPU (what ``tests/test_bench_gpu.py``
does, so the GPU minutes are not spent finding a bug in this script).

Usage::

    python benchmarks/bench_gpu.py [--out FILE] [--budget 270] [--device cuda:0]

Writes one file (default ``benchmarks/results/gpu.md`` beside this script when that
directory exists, else ``rbnet-gpu.md`` in the current directory): tables, then every
figure as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

BATCH_SIZES = (256, 1024, 4096, 16384)


class Clock:
    """Wall time with the device drained before reading it; a deadline for the whole run."""

    def __init__(self, device, budget: float):
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.device = device
        self.start = time.perf_counter()
        self.budget = budget

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def time(self, fn, repeats: int = 1):
        """Best wall time of ``repeats`` calls of ``fn`` (and its last result)."""
        best, out = float("inf"), None
        for _ in range(repeats):
            self.sync()
            t = time.perf_counter()
            out = fn()
            self.sync()
            best = min(best, time.perf_counter() - t)
        return best, out

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def reset_peak(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self):
        if not self.cuda:
            return None
        return self.torch.cuda.max_memory_allocated(self.device) / 2**20


def default_package():
    from lsst.meas.rbnet.package import ModelPackage
    from lsst.meas.rbnet.scoring import default_model_path

    return ModelPackage.load(default_model_path())


def raw_stamps(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) float32: noise plus a point source, a few NaN pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size // 2
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2)).astype(np.float32)
    x = rng.standard_normal((n, 3, size, size), dtype=np.float32) * 10
    x += rng.uniform(0, 300, (n, 3, 1, 1)).astype(np.float32) * psf
    x[::50, 2, 0, :3] = np.nan
    return x


# ----------------------------------------------------------------------
# 1. Scoring
# ----------------------------------------------------------------------


def bench_scoring(clock, device, sizes, n, log) -> dict:
    from lsst.meas.rbnet.cutouts import prepare_stamps
    from lsst.meas.rbnet.scoring import Scorer

    package = default_package()
    S = package.contract.stamp_size
    raw = raw_stamps(n, S)
    prepared, _ = prepare_stamps(raw, package.contract)
    out = {"n_stamps": n, "stamp_size": S, "model": package.version, "cases": []}
    for symmetry in (False, True):
        for amp in ("off", "auto"):
            for bs in sizes:
                if clock.left() < 20:
                    out["skipped"] = "time budget"
                    log("  scoring: budget spent, skipping the rest")
                    return out
                scorer = Scorer(package, device=device, batch_size=bs, symmetry=symmetry, amp=amp)
                m = n // 8 if symmetry else n  # 8 network passes per stamp
                scorer.logits_prepared(prepared[: min(m, 2 * bs)])  # warm-up: kernels, allocator
                clock.reset_peak()
                net_s, _ = clock.time(lambda: scorer.logits_prepared(prepared[:m]), repeats=3)
                peak_net = clock.peak_mb()
                clock.reset_peak()
                full_s, res = clock.time(lambda: scorer.score_stamps(raw[:m]), repeats=2)
                case = {
                    "batch_size": bs,
                    "amp": str(scorer.amp_dtype).replace("torch.", "") if scorer.amp_dtype else "float32",
                    "symmetry": symmetry,
                    "n": m,
                    "network_per_s": m / net_s,
                    "full_path_per_s": m / full_s,
                    "peak_gpu_mb_network": peak_net,
                    "peak_gpu_mb_full": clock.peak_mb(),
                    "finite_fraction": float(np.isfinite(res.reliability).mean()),
                }
                out["cases"].append(case)
                log(
                    f"  batch {bs:>6} {case['amp']:>8} symmetry={symmetry!s:<5} network "
                    f"{case['network_per_s']:>10,.0f}/s  full path {case['full_path_per_s']:>9,.0f}/s  "
                    f"peak {case['peak_gpu_mb_network'] or 0:.0f} MB"
                )
                del scorer
    return out


# ----------------------------------------------------------------------
# 2. The task's run
# ----------------------------------------------------------------------


def _task_inputs(size: int, n: int, seed: int = 0):
    import astropy.table
    import astropy.wcs

    from lsst.meas.rbnet.butler.images import make_difference_image, make_masked_image, make_visit_image
    from lsst.meas.rbnet.constants import MASK_PLANES

    rng = np.random.default_rng(seed)
    shape = (size, size)
    wcs = astropy.wcs.WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [size / 2, size / 2]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    x = rng.uniform(-5, size + 5, n)
    y = rng.uniform(-5, size + 5, n)
    planes = []
    for _ in range(3):
        img = rng.standard_normal(shape, dtype=np.float32) * 10
        cx, cy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
        inside = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
        img[cy[inside], cx[inside]] += 300.0
        mask = np.zeros(shape, np.int32)
        mask[rng.integers(0, size, 2000), rng.integers(0, size, 2000)] |= 1 << MASK_PLANES["CR"]
        planes.append((img, np.full(shape, 100.0, np.float32), mask))
    common = dict(
        wcs=wcs, instrument="RBSim", detector=0, visit=1, band="r", physical_filter="sim_r", mjd=60001.0,
        fwhm=3.5,
    )
    difference = make_difference_image(*planes[0], **common)
    science = make_visit_image(*planes[1], **common)
    template = make_masked_image(*planes[2])
    sources = astropy.table.Table({"id": np.arange(n, dtype=np.int64), "x": x, "y": y})
    return dict(science=science, template=template, difference=difference, sources=sources)


def bench_task(clock, device, size, n, log) -> dict:
    from lsst.meas.rbnet.scoring import clear_scorer_cache
    from lsst.meas.rbnet.tasks.reliability import ReliabilityConfig, ReliabilityTask

    t = time.perf_counter()
    inputs = _task_inputs(size, n)
    make_s = time.perf_counter() - t
    config = ReliabilityConfig()
    config.device = str(device)
    task = ReliabilityTask(config=config)
    package = default_package()
    clear_scorer_cache()
    cold, _ = clock.time(lambda: task.run(pretrainedModel=package, **inputs))
    warm, out = clock.time(lambda: task.run(pretrainedModel=package, **inputs), repeats=3)
    scores = np.asarray(out.reliability["score"])
    res = {
        "image_size": size,
        "n_sources": n,
        "make_inputs_s": make_s,
        "first_call_s": cold,
        "warm_best_s": warm,
        "sources_per_s": n / warm,
        "scored_fraction": float(np.isfinite(scores).mean()),
        "batch_size": config.batchSize,
    }
    log(f"  run: first {cold:.3f} s, warm best {warm:.3f} s ({n / warm:,.0f} sources/s)")
    return res


# ----------------------------------------------------------------------
# 3. A training epoch
# ----------------------------------------------------------------------


@contextlib.contextmanager
def _former_training_path():
    """The training loop as it was before the GPU fixes (for the 'before' figure)."""
    import torch

    from lsst.meas.rbnet.training import data as D
    from lsst.meas.rbnet.training import loop as L

    saved = (L._loss_sync_steps, L.iterate_batches, D._to_device, torch.cuda.is_bf16_supported)
    L._loss_sync_steps = lambda device: 1
    L.iterate_batches = functools.partial(D.iterate_batches, augment_on_device=False)
    D._to_device = lambda t, device: t.to(device, non_blocking=True)
    torch.cuda.is_bf16_supported = lambda *a, **k: False  # float16 + GradScaler, as before
    try:
        yield
    finally:
        L._loss_sync_steps, L.iterate_batches, D._to_device, torch.cuda.is_bf16_supported = saved


def _training_data(n: int, contract, seed: int):
    from lsst.meas.rbnet.constants import ALL_CLASSES
    from lsst.meas.rbnet.training.data import PreparedStamps

    rng = np.random.default_rng(seed)
    S = contract.stamp_size
    x = np.empty((n, contract.n_channels, S, S), np.float16)
    for a in range(0, n, 16384):  # in chunks: no float32 copy of the whole set
        b = min(n, a + 16384)
        x[a:b] = rng.standard_normal((b - a, contract.n_channels, S, S), dtype=np.float32)
    labels = (np.arange(n) % 2).astype(np.int8)
    bogus = np.array(ALL_CLASSES[1:])
    classes = np.where(labels == 1, ALL_CLASSES[0], bogus[rng.integers(0, len(bogus), n)])
    x[labels == 1, :2, S // 2, S // 2] += np.float16(3.0)  # something to learn
    return PreparedStamps(x=x, labels=labels, contract=contract, classes=classes)


def bench_training(clock, device, n_train, n_val, log, compare: bool = True) -> dict:
    from lsst.meas.rbnet.training.loop import TrainConfig, train_triplet_model

    package = default_package()
    prov = package.provenance.get("config", {}) if isinstance(package.provenance, dict) else {}
    contract = package.contract
    t = time.perf_counter()
    train = _training_data(n_train, contract, 1)
    val = _training_data(n_val, contract, 2)
    make_s = time.perf_counter() - t
    config = TrainConfig(
        contract=contract,
        architecture=prov.get("architecture", "triplet_cnn"),
        hyperparameters=dict(prov.get("hyperparameters", {})),
        epochs=1,
        batch_size=int(prov.get("batch_size", 256)),
        learning_rate=float(prov.get("learning_rate", 3e-3)),
        class_loss_weight=float(prov.get("class_loss_weight", 0.2)),
        storage_dtype=prov.get("storage_dtype", "float16"),
        device=str(device),
        amp=True,
        version="gpu",
        symmetric_temperature=False,
    )
    out = {"n_train": n_train, "n_val": n_val, "batch_size": config.batch_size, "make_data_s": make_s}

    def one(label):
        t = time.perf_counter()
        result = train_triplet_model(train, config=config, validation=val)
        h = result.history[0]
        out[label] = {
            "epoch_s": h["seconds"],
            "samples_per_s": h["samples_per_second"],
            "total_s": time.perf_counter() - t,
            "train_loss": h["train_loss"],
            "val_auc": h["val_auc"],
        }
        log(f"  {label}: epoch {h['seconds']:.1f} s ({h['samples_per_second']:,.0f} stamps/s)")

    one("after")
    if compare:
        if clock.left() > 2.5 * out["after"]["total_s"] + 90:
            with _former_training_path():
                one("before")
            out["speedup"] = out["before"]["epoch_s"] / out["after"]["epoch_s"]
        else:
            out["before"] = "skipped: time budget"
    return out


# ----------------------------------------------------------------------
# 4. The sequence scorer
# ----------------------------------------------------------------------


def _sequence_package():
    import torch

    from lsst.meas.rbnet.contract import InputContract
    from lsst.meas.rbnet.nn import build
    from lsst.meas.rbnet.package import ModelPackage

    torch.manual_seed(0)
    vae_hp = {"in_channels": 1, "frame_size": 28, "latent_dim": 36}
    clf_hp = {"input_dim": 36}
    return ModelPackage.from_modules(
        "sequence",
        {
            "encoder": ("vae", vae_hp, build("vae", **vae_hp).eval()),
            "classifier": ("seq_bigru", clf_hp, build("seq_bigru", **clf_hp)),
        },
        contract=InputContract(stamp_size=29, channels=("science",)),
        version="bench",
        extra={
            "frame_size": 28,
            "frame_channels": ["science"],
            "latent_columns": [0, 36],
            "frame_features": [],
        },
    )


def bench_sequence(clock, device, n_objects, n_visits, log) -> dict:
    from lsst.meas.rbnet.sequence.scoring import SequenceScorer

    rng = np.random.default_rng(0)
    n = n_objects * n_visits
    yy, xx = np.mgrid[:28, :28] - 14.0
    psf = np.exp(-(xx**2 + yy**2) / (2 * 1.8**2)).astype(np.float32)
    t = time.perf_counter()
    frames = np.empty((n, 1, 28, 28), np.float32)
    for a in range(0, n, 50_000):
        b = min(n, a + 50_000)
        frames[a:b, 0] = rng.standard_normal((b - a, 28, 28), dtype=np.float32)
        frames[a:b, 0] += rng.uniform(0, 50, (b - a, 1, 1)).astype(np.float32) * psf
    offsets = np.arange(0, n + 1, n_visits, dtype=np.int64)
    times = np.tile(np.cumsum(rng.exponential(3.0, n_visits)), n_objects) + 60000.0
    out = {"n_objects": n_objects, "n_visits": n_visits, "make_frames_s": time.perf_counter() - t}
    package = _sequence_package()
    for precision in ("float32", "auto"):
        if clock.left() < 30:
            out[precision] = "skipped: time budget"
            continue
        scorer = SequenceScorer(package, device=str(device), precision=precision)
        m = min(n, 50 * n_visits)
        scorer.score(frames[:m], offsets[:51], times[:m])  # warm-up
        wall, p = clock.time(lambda: scorer.score(frames, offsets, times))
        out[precision] = {
            "precision_used": scorer.precision,
            "seconds": wall,
            "objects_per_s": n_objects / wall,
            "frames_per_s": n / wall,
            "finite_fraction": float(np.isfinite(p).mean()),
        }
        log(f"  sequence {precision} ({scorer.precision}): {wall:.2f} s ({n_objects / wall:,.0f} objects/s)")
    return out


# ----------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------


def write_report(results: dict, path: Path) -> None:
    lines = ["# GPU benchmark", "", f"Command: `{results['command']}`", ""]
    lines += [f"- {k}: {v}" for k, v in results["machine"].items()] + [""]
    sc = results.get("scoring")
    if isinstance(sc, dict) and sc.get("cases"):
        lines += [
            f"## Scoring (default model {sc['model']}, {sc['stamp_size']}x{sc['stamp_size']} stamps)",
            "",
            "Network: prepared stamps in host memory through `Scorer.logits_prepared` (includes the copy). "
            "Full path: raw stamps through `Scorer.score_stamps` (normalisation on the CPU). "
            "Goal: >= 100,000 triplets/s.",
            "",
            "| batch | precision | symmetry | network (triplets/s) | full path (triplets/s) | peak GPU MB |",
            "|---:|---|---|---:|---:|---:|",
        ]
        for c in sc["cases"]:
            lines.append(
                f"| {c['batch_size']} | {c['amp']} | {c['symmetry']} | {c['network_per_s']:,.0f} | "
                f"{c['full_path_per_s']:,.0f} | {c['peak_gpu_mb_network'] or 0:.0f} |"
            )
        lines.append("")
    tk = results.get("task")
    if isinstance(tk, dict):
        lines += [
            f"## ReliabilityTask.run, {tk['image_size']}x{tk['image_size']} detector, "
            f"{tk['n_sources']:,} sources",
            "",
            f"First call {tk['first_call_s']:.3f} s; warm best {tk['warm_best_s']:.3f} s "
            f"({tk['sources_per_s']:,.0f} sources/s); batch size {tk['batch_size']}.",
            "",
        ]
    tr = results.get("training")
    if isinstance(tr, dict):
        lines += [
            f"## One training epoch of the default model ({tr['n_train']:,} stamps, "
            f"batch {tr['batch_size']})",
            "",
            "| code path | epoch (s) | stamps/s |",
            "|---|---:|---:|",
        ]
        for label in ("before", "after"):
            v = tr.get(label)
            if isinstance(v, dict):
                lines.append(f"| {label} | {v['epoch_s']:.2f} | {v['samples_per_s']:,.0f} |")
            elif v:
                lines.append(f"| {label} | {v} | |")
        lines.append("")
    sq = results.get("sequence")
    if isinstance(sq, dict):
        lines += [
            f"## Sequence scorer, {sq['n_objects']:,} objects x {sq['n_visits']} visits (bi-GRU)",
            "",
            "| encoder | seconds | objects/s |",
            "|---|---:|---:|",
        ]
        for p in ("float32", "auto"):
            v = sq.get(p)
            if isinstance(v, dict):
                lines.append(
                    f"| {p} ({v['precision_used']}) | {v['seconds']:.2f} | {v['objects_per_s']:,.0f} |"
                )
            elif v:
                lines.append(f"| {p} | {v} | |")
        lines.append("")
    lines += ["## All figures", "", "```json", json.dumps(results, indent=1, default=str), "```", ""]
    path.write_text("\n".join(lines))


def _default_out() -> Path:
    here = Path(__file__).resolve().parent / "results"
    return here / "gpu.md" if here.is_dir() else Path("rbnet-gpu.md")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="results file (Markdown with a JSON block)")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds the whole run may take")
    parser.add_argument("--device", default="cuda", help="CUDA device ('cuda' or 'cuda:N')")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="every section at toy sizes on the CPU (tests this script)"
    )
    args = parser.parse_args(argv)
    import torch

    if args.cpu_smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        sizes, n_score, task_size, n_src = (64, 256), 512, 256, 200
        n_train, n_val, n_obj, n_vis = 512, 128, 40, 5
    else:
        if not torch.cuda.is_available():
            print(
                "bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False): nothing measured, "
                "no results written."
            )
            return 0
        from lsst.meas.rbnet.scoring import select_device

        device = select_device(args.device)
        sizes, n_score, task_size, n_src = BATCH_SIZES, 65536, 4096, 10_000
        n_train, n_val, n_obj, n_vis = 143_640, 15_960, 10_000, 50
    out = args.out or _default_out()
    clock = Clock(device, args.budget)

    def log(msg):
        print(f"[{time.perf_counter() - clock.start:6.1f}s] {msg}", flush=True)

    machine = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU smoke run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_supported": bool(device.type == "cuda" and torch.cuda.is_bf16_supported()),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
    }
    results = {"command": " ".join(["python", "bench_gpu.py", *(argv or sys.argv[1:])]), "machine": machine}
    sections = (
        ("scoring", lambda: bench_scoring(clock, device, sizes, n_score, log)),
        ("task", lambda: bench_task(clock, device, task_size, n_src, log)),
        ("training", lambda: bench_training(clock, device, n_train, n_val, log)),
        ("sequence", lambda: bench_sequence(clock, device, n_obj, n_vis, log)),
    )
    for name, fn in sections:
        if clock.left() < 15:
            results[name] = "skipped: time budget"
            log(f"{name}: skipped (time budget)")
            continue
        log(f"{name} ...")
        try:
            results[name] = fn()
        except Exception as err:  # one failing section must not lose the others' figures
            results[name] = f"failed: {type(err).__name__}: {err}"
            log(f"{name} FAILED: {type(err).__name__}: {err}")
            if args.cpu_smoke:
                raise
        # Each section's figures are kept even if a later one crashes the process.
        write_report(results, out)
    results["total_s"] = time.perf_counter() - clock.start
    write_report(results, out)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
