#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Benchmark of stamp extraction and preparation (lsst.meas.rbnet.cutouts), round 1 vs round 2.

Three detector-sized float32 images (difference, science, template) with NaNs and
mask bits, N random sources (some near or past the edges), S x S stamps. The
round-1 functions are taken from git history (``cutouts.py`` at ``--baseline-ref``,
by default the last commit of round 1, loaded as a temporary module) and are timed in
the same run, interleaved with the current ones (each repeat runs every case once, so
both see the same machine load); without git or that commit the baseline is left out.
Cases:

(a)  a plain copy of the output bytes into a preallocated (N, 3, S, S) float32
     array (``np.copyto``): the memory-bound floor named by the targets;
(a2) ``np.empty`` + ``np.copyto``: the floor for any function that returns a new
     array (it pays the page faults of fresh memory);
(a3) one fancy-index gather of every stamp row from a single (3, H, W) buffer into
     a new array, in output order: the least numpy can do to cut the stamps when
     the three images are one buffer (no checks at all);
(a4) ``np.arcsinh`` in place over an array of the output's size: the
     transcendental part of the default normalisation alone;
(f)  the gather of every stamp row per image in raster-ordered chunks plus the
     copy of each chunk into its rows of a new output: the floor of the design
     used here with three separate images (no checks at all);
(b)  `extract_cutouts` (stamps, NaN/mask handling, counts, flags), and (b2) the
     same into a preallocated ``out``;
(c)  `prepare_cutouts`: extraction + normalisation + NaN fill + flags, and (c2)
     into a preallocated ``out``;
(d)  a per-source Python loop slicing one sub-image per source and channel (the
     meas_transiNet way), with no NaN/mask handling at all, and (d2) the same
     loop producing what (b) produces;
(e)  streaming through `iter_cutout_batches` in batches, and (e2) with
     ``reuse_buffer=True`` (round 2 only);
(p)  with numba installed (not a dependency): the compiled-kernel prototype of
     ``benchmarks/_numba_prototype.py`` (not adopted; its docstring says what it is and
     lacks), extraction and preparation, 1 and 2 threads, and its first-call cost in fresh
     processes with a cold and a warm kernel cache; (t) torch's own operations for the
     normalisation's two heavy parts (arcsinh over the output, medians of the grid values).

Then (b) and (c) again on two variants: images with dense bad areas (EDGE bands,
saturated stars with bleed trails, a template 40% NO_DATA) and a small N. Outputs
of round 1 and round 2 are compared for exact equality. Results go to
``benchmarks/results/cutouts.json`` and ``.md``.

Usage: ``python benchmarks/bench_cutouts.py [--n 10000] [--size 51] [--repeat 5]``
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

from lsst.meas.rbnet import cutouts as round2
from lsst.meas.rbnet.constants import DEFAULT_BAD_MASK_PLANES, MASK_PLANES, mask_bits
from lsst.meas.rbnet.contract import InputContract

#: The last commit whose ``cutouts.py`` is round 1 (the baseline of the round-2 figures).
ROUND1_REF = "20089efca2f7fcc6c97845dd75853140795f6cfc"


def load_baseline(ref: str):
    """``lsst.meas.rbnet.cutouts`` as it was at git commit ``ref``, as a throw-away module, or None.

    The file is read with ``git show`` from the checkout this script lives in, its
    package-relative imports made absolute, and imported from a temporary directory.
    """
    import importlib.util
    import shutil
    import subprocess
    import tempfile

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        text = subprocess.run(
            ["git", "show", f"{ref}:python/lsst/meas/rbnet/cutouts.py"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        print(f"No baseline: cannot read cutouts.py at {ref} from git ({err}).")
        return None
    text = text.replace("from .", "from lsst.meas.rbnet.")
    path = os.path.join(tempfile.mkdtemp(prefix="rbnet_cutouts_baseline_"), "cutouts_baseline.py")
    with open(path, "w") as f:
        f.write(text)
    try:
        spec = importlib.util.spec_from_file_location("cutouts_baseline", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        # Once executed the module needs its file no more.
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    return module


BAD_BITS = mask_bits(DEFAULT_BAD_MASK_PLANES)


def load_prototype():
    """``benchmarks/_numba_prototype.py`` (the compiled-kernel prototype, not adopted), or None without numba."""
    try:
        import _numba_prototype
    except ImportError as err:
        print(f"No compiled-kernel prototype ({err}); `pip install numba` to measure it.")
        return None
    return _numba_prototype


# Run in a fresh process: what the prototype costs a process at its first call (a pipetask
# quantum's situation), on a 512x512 detector with 300 sources as in bench_task.py's pipetask runs.
_FIRST_CALL = r"""
import json, sys, time
w0, c0 = time.perf_counter(), time.process_time()
import numba
w1, c1 = time.perf_counter(), time.process_time()
sys.path.insert(0, sys.argv[1])
import numpy as np
import _numba_prototype as P
rng = np.random.default_rng(0)
images = [rng.standard_normal((512, 512), dtype=np.float32) for _ in range(3)]
masks = [np.zeros((512, 512), np.int32) for _ in range(3)]
x, y = rng.uniform(0, 511, 300), rng.uniform(0, 511, 300)
w2, c2 = time.perf_counter(), time.process_time()
P.prepare(images, masks, 1, x, y, 51, 3.0, 0.0)
w3, c3 = time.perf_counter(), time.process_time()
P.prepare(images, masks, 1, x, y, 51, 3.0, 0.0)
w4, c4 = time.perf_counter(), time.process_time()
print(json.dumps({"import_numba_wall_s": w1 - w0, "import_numba_cpu_s": c1 - c0,
                  "first_call_wall_s": w3 - w2, "first_call_cpu_s": c3 - c2,
                  "second_call_wall_s": w4 - w3, "second_call_cpu_s": c4 - c3}))
"""


def prototype_first_calls() -> dict:
    """First-call costs of the prototype in two fresh processes sharing a new kernel cache: cold, then warm."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = {}
    with tempfile.TemporaryDirectory(prefix="rbnet_numba_cache_") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for name in ("cold", "warm"):
            res = subprocess.run(
                [sys.executable, "-c", _FIRST_CALL, here], env=env, capture_output=True, text=True, check=True
            )
            out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


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


def make_dense_masks(masks, seed=5):
    """Copies of ``masks`` with EDGE bands, saturated stars with bleed trails and a template 40% NO_DATA."""
    rng = np.random.default_rng(seed)
    dense = [m.copy() for m in masks]
    H, W = dense[0].shape
    for m in dense:
        edge = 1 << MASK_PLANES["EDGE"]
        m[:25] |= edge
        m[-25:] |= edge
        m[:, :25] |= edge
        m[:, -25:] |= edge
        for _ in range(30):
            r, c = rng.integers(200, H - 200), rng.integers(200, W - 200)
            m[r - 20 : r + 20, c - 20 : c + 20] |= 1 << MASK_PLANES["SAT"]
            m[r - 150 : r + 150, c - 2 : c + 3] |= 1 << MASK_PLANES["SAT"]
    dense[2][:, int(0.6 * W) :] |= 1 << MASK_PLANES["NO_DATA"]
    return dense


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


def loop_cutouts_checked(images, masks, x, y, size, bits):
    """Per-source loop with the same output as `extract_cutouts` (NaN for bad pixels, counts, flags)."""
    H, W = images[0].shape
    half = size // 2
    n = len(x)
    out = np.full((n, len(images), size, size), np.nan, dtype=np.float32)
    n_bad = np.zeros((n, len(images)), dtype=np.int32)
    nonfinite = np.zeros(n, dtype=bool)
    masked = np.zeros(n, dtype=bool)
    for i in range(n):
        cx, cy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
        r0, c0 = cy - half, cx - half
        ra, rb, ca, cb = max(r0, 0), min(r0 + size, H), max(c0, 0), min(c0 + size, W)
        if ra >= rb or ca >= cb:
            n_bad[i] = size * size
            continue
        for c, (img, m) in enumerate(zip(images, masks)):
            pix = img[ra:rb, ca:cb].astype(np.float32)
            bad = ~np.isfinite(pix)
            nonfinite[i] |= bad.any()
            mb = (m[ra:rb, ca:cb] & bits) != 0
            masked[i] |= mb.any()
            bad |= mb
            pix[bad] = np.nan
            out[i, c, ra - r0 : rb - r0, ca - c0 : cb - c0] = pix
            n_bad[i, c] = size * size - pix.size + bad.sum()
    return out, n_bad, nonfinite, masked


def single_buffer_gather(stack, x, y, size):
    """(a3): every stamp row of the sources inside a (C, H, W) buffer in one fancy index, output order."""
    C, H, W = stack.shape
    half = size // 2
    r0 = np.floor(y + 0.5).astype(np.int64) - half
    c0 = np.floor(x + 0.5).astype(np.int64) - half
    r0 = np.clip(r0, 0, H - size)
    c0 = np.clip(c0, 0, W - size)
    flat = stack.reshape(-1)
    rows = np.ndarray(
        shape=(flat.shape[0] - size + 1,), dtype=np.dtype((np.void, size * 4)), buffer=flat, strides=(4,)
    )
    starts = (np.arange(C) * H * W)[None, :, None] + (r0 * W + c0)[:, None, None] + np.arange(size) * W
    return rows[starts.reshape(-1)].view(np.float32).reshape(len(x), C, size, size)


def chunked_floor(images, x, y, size):
    """(f): raster-ordered chunked gather of every stamp row per image + copy into a new output; no checks."""
    H, W = images[0].shape
    half = size // 2
    r0 = np.clip(np.floor(y + 0.5).astype(np.int64) - half, 0, H - size)
    c0 = np.clip(np.floor(x + 0.5).astype(np.int64) - half, 0, W - size)
    order = np.argsort(r0 * W + c0, kind="stable")
    views = [round2._row_view(img, size) for img in images]
    out = np.empty((len(x), len(images), size, size), dtype=np.float32)
    step = max(1, round2._CHUNK_BYTES // (size * size * 4))
    offs = np.arange(size) * W
    for a in range(0, len(x), step):
        idx = order[a : a + step]
        starts = ((r0[idx] * W + c0[idx])[:, None] + offs).reshape(-1)
        for c, (rows, _) in enumerate(views):
            out[idx, c] = rows[starts].view(np.float32).reshape(-1, size, size)
    return out


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def peak_memory(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def run_cases(cases, repeat):
    """Time every case ``repeat`` times, interleaved (one round of all cases per repeat)."""
    for _, _, fn in cases:
        fn()  # warm up
    times = {key: ([], []) for key, _, _ in cases}
    for _ in range(repeat):
        for key, _, fn in cases:
            w, c = timed(fn)
            times[key][0].append(w)
            times[key][1].append(c)
    results = {}
    for key, label, _ in cases:
        wall, cpu = times[key]
        results[key] = {
            "label": label,
            "wall_median_s": statistics.median(wall),
            "wall_best_s": min(wall),
            "cpu_median_s": statistics.median(cpu),
            "cpu_best_s": min(cpu),
            "wall_s": wall,
            "cpu_s": cpu,
        }
    return results


def same_batch(b1, b2):
    return all(
        np.array_equal(getattr(b1, k), getattr(b2, k), equal_nan=True)
        for k in ("stamps", "flags", "n_bad", "centers", "offsets")
    )


def met(ratio: float, target: float) -> str:
    return "met" if ratio <= target else "NOT met"


def prototype_lines(results, checks, first, targets, args) -> list[str]:
    """The results file's section on the compiled-kernel prototype and torch's operations."""
    a, a2 = results["a_copy"], results["a2_copy_fresh"]
    lines = [
        "",
        "## Compiled-kernel prototype (numba, not adopted) and torch's operations, same run",
        "",
        "`benchmarks/_numba_prototype.py`: one numba kernel per stamp and channel, parallel over stamps "
        "(prange): gather, NaN/mask marking, counts and flag inputs, median and MAD on the statistics "
        "grid (bisection on order-preserving int32 keys with vectorised counts), subtract and scale, "
        "written into the float32 output; then numpy's own np.arcsinh over the output and the fill of "
        "the untrusted pixels. numba "
        f"{__import__('numba').__version__}; 1-thread cases run with numba.set_num_threads(1).",
        "",
        "| case | CPU median (s) | median / best (a) | median / best (a2) | wall median (s) |",
        "|---|---|---|---|---|",
    ]
    for key in (
        "b_extract_r2",
        "p_extract",
        "p_extract_out",
        "p_extract_2t",
        "c_prepare_r2",
        "p_prepare",
        "p_prepare_out",
        "p_prepare_2t",
        "p_prepare_libm",
        "a4_arcsinh",
        "t_asinh",
        "t_median",
    ):
        r = results[key]
        label = r["label"].replace(", round 2", " (package, numpy)")
        lines.append(
            f"| ({key.split('_')[0]}) {label} | {r['cpu_median_s']:.3f} | {r['cpu_median_s'] / a['cpu_best_s']:.1f} | "
            f"{r['cpu_median_s'] / a2['cpu_best_s']:.1f} | {r['wall_median_s']:.3f} |"
        )
    pe, pp = results["p_extract"], results["p_prepare"]
    cold, warm = first["cold"], first["warm"]
    lines += [
        "",
        "Outputs (this run's data): prototype extraction identical to `extract_cutouts` (stamps with NaN "
        f"positions, flags, counts): {'yes' if checks['prototype_extract_identical'] else 'NO'}; prototype "
        "preparation identical to `prepare_cutouts`: "
        f"{'yes' if checks['prototype_prepare_identical'] else 'NO'}. With libm's asinhf in the kernel "
        f"instead of np.arcsinh, {checks['libm_asinhf_pixels_differing']:,} of {checks['pixels']:,} pixels "
        f"differ from numpy's (max |difference| {checks['libm_asinhf_max_abs_difference']:.2g}: the last bit).",
        "",
        "First call in a fresh process (512x512 detector, 300 sources, 51x51 stamps: a pipetask quantum's "
        f"work), two processes sharing a new kernel cache: `import numba` {cold['import_numba_cpu_s']:.2f} s "
        f"CPU; first call with a cold cache (compiles) {cold['first_call_cpu_s']:.2f} s CPU "
        f"({cold['first_call_wall_s']:.2f} s wall), with the warm cache {warm['first_call_cpu_s']:.2f} s CPU "
        f"({warm['first_call_wall_s']:.2f} s wall); the next call {warm['second_call_wall_s'] * 1e3:.0f} ms.",
        "",
        "Why it is not adopted:",
        "",
        f"- It misses both targets too: extraction {pe['cpu_median_over_a']:.1f}x (a) and "
        f"{pe['cpu_median_over_a2']:.1f}x (a2) (target {targets['b_extract']}x), preparation "
        f"{pp['cpu_median_over_a']:.1f}x (a) and {pp['cpu_median_over_a2']:.1f}x (a2) (target "
        f"{targets['c_prepare']}x). Two threads (prange) do not lower the CPU time: preparation "
        f"{results['p_prepare_2t']['cpu_median_s']:.3f} s CPU, {results['p_prepare_2t']['wall_median_s']:.3f} s "
        f"wall, against {pp['wall_median_s']:.3f} s wall with one. "
        "Preparation pays a new array (a2), numpy's arcsinh over it (a4), two medians of the grid "
        "values per stamp channel and the gather itself, whose short rows (51 pixels, each in another "
        "image row) cost more than a copy (the prototype's extraction alone is above). A "
        "function returning new stamps cannot meet 3x (a): the fresh array and numpy's arcsinh over it "
        "alone come to "
        f"{(a2['cpu_best_s'] + results['a4_arcsinh']['cpu_best_s']) / a['cpu_best_s']:.1f}x (a) (best runs).",
        "- The arcsinh cannot be fused into the kernel: libm's scalar asinhf (what numba compiles "
        f"np.arcsinh to) makes preparation {results['p_prepare_libm']['cpu_median_s']:.2f} s against "
        f"{pp['cpu_median_s']:.2f} s with numpy's vectorised arcsinh; torch's CPU asinh is no faster "
        f"({results['t_asinh']['cpu_median_s']:.2f} s over the output) and torch.median over the grid values "
        f"alone takes {results['t_median']['cpu_median_s']:.2f} s (and returns the lower middle value, not the "
        "mean of the two middle ones the contract specifies), so torch's operations are no route either.",
        "- The first quantum of `pipetask run` would pay `import numba` plus the kernel cache load "
        f"(about {warm['import_numba_cpu_s'] + warm['first_call_cpu_s']:.1f} s CPU) or, with no writable or "
        f"no warm cache (a new release, a read-only install), the compilation ({cold['first_call_cpu_s']:.1f} s "
        "CPU, again for every new combination of image and mask dtypes): issue 12 item 1's 1-quantum ratio (1.14 of the do-nothing task, "
        "6.89 s, in benchmarks/results/task.md) has 0.4 s of room under its 1.20 limit.",
        "- One code path means replacing all of the numpy code, including what the prototype lacks (see its "
        "docstring: other image dtypes and layouts, the fallbacks of the statistics, denormal rescaling, "
        "overflow clipping, the other normalisations, `prepare_stamps` / `normalize_stamps` on given "
        "stamps), for a speed-up that leaves both targets missed.",
    ]
    return lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="number of sources")
    parser.add_argument("--size", type=int, default=51, help="stamp side (pixels, odd, 21..101)")
    parser.add_argument("--image", type=int, default=4096, help="image side (pixels)")
    parser.add_argument("--repeat", type=int, default=5, help="repeats per case")
    parser.add_argument("--batch", type=int, default=1024, help="batch size of the streaming case")
    parser.add_argument("--small-n", type=int, default=1000, help="N of the small-N variant")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cutouts")
    )
    parser.add_argument(
        "--baseline-ref", default=ROUND1_REF, help="git commit whose cutouts.py is the round-1 baseline"
    )
    args = parser.parse_args()
    load_start = os.getloadavg()
    round1 = load_baseline(args.baseline_ref)
    if round1 is None:
        sys.exit("bench_cutouts.py compares with cutouts.py from git history; run it in a git checkout.")

    S = args.size
    images, masks, x, y = make_data((args.image, args.image), args.n)
    contract = InputContract(stamp_size=S)
    shape = (args.n, 3, S, S)
    src = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    dst = np.empty(shape, dtype=np.float32)
    dst[...] = 0.0  # touch the pages once so (a) measures copying, not page faults
    out1 = np.zeros(shape, dtype=np.float32)
    out2 = np.zeros(shape, dtype=np.float32)
    stack = np.stack(images)

    def fresh_copy():
        out = np.empty(shape, dtype=np.float32)
        np.copyto(out, src)
        return out

    def stream(mod, **kw):
        def run():
            for _sl, _batch, _flags in mod.iter_cutout_batches(
                images, x, y, contract, args.batch, masks=masks, **kw
            ):
                pass

        return run

    def ext(mod, imgs=images, msk=masks, xx=x, yy=y, out=None):
        return lambda: mod.extract_cutouts(imgs, xx, yy, S, masks=msk, out=out)

    def prep(mod, imgs=images, msk=masks, xx=x, yy=y, out=None):
        return lambda: mod.prepare_cutouts(imgs, xx, yy, contract, masks=msk, out=out)

    cases = [
        ("a_copy", "np.copyto into a preallocated array (memory-bound floor)", lambda: np.copyto(dst, src)),
        ("a2_copy_fresh", "np.empty + np.copyto (floor for a function returning a new array)", fresh_copy),
        (
            "a3_single_gather",
            "one fancy-index gather of all stamp rows from one (3, H, W) buffer, new array, no checks",
            lambda: single_buffer_gather(stack, x, y, S),
        ),
        (
            "a4_arcsinh",
            "np.arcsinh in place over a preallocated array of the output's size (normalisation's math alone)",
            lambda: np.arcsinh(dst, out=dst),
        ),
        (
            "f_chunked_floor",
            "raster-ordered chunked gather per image + copy into a new array, no checks",
            lambda: chunked_floor(images, x, y, S),
        ),
        ("b_extract_r1", "extract_cutouts, round 1", ext(round1)),
        ("b_extract_r2", "extract_cutouts, round 2", ext(round2)),
        ("b2_extract_out_r1", "extract_cutouts(out=preallocated), round 1", ext(round1, out=out1)),
        ("b2_extract_out_r2", "extract_cutouts(out=preallocated), round 2", ext(round2, out=out2)),
        ("c_prepare_r1", "prepare_cutouts (extract + normalise + fill + flags), round 1", prep(round1)),
        ("c_prepare_r2", "prepare_cutouts (extract + normalise + fill + flags), round 2", prep(round2)),
        ("c2_prepare_out_r1", "prepare_cutouts(out=preallocated), round 1", prep(round1, out=out1)),
        ("c2_prepare_out_r2", "prepare_cutouts(out=preallocated), round 2", prep(round2, out=out2)),
        ("e_stream_r1", f"iter_cutout_batches, batches of {args.batch}, round 1", stream(round1)),
        ("e_stream_r2", f"iter_cutout_batches, batches of {args.batch}, round 2", stream(round2)),
        (
            "e2_stream_reuse_r2",
            f"iter_cutout_batches(reuse_buffer=True), batches of {args.batch}, round 2",
            stream(round2, reuse_buffer=True),
        ),
        (
            "d_loop",
            "per-source Python loop of slices (no NaN/mask handling)",
            lambda: loop_cutouts(images, x, y, S),
        ),
        (
            "d2_loop_checked",
            "per-source Python loop with the same output as (b)",
            lambda: loop_cutouts_checked(images, masks, x, y, S, BAD_BITS),
        ),
    ]
    proto = load_prototype()
    late_cases = []
    if proto is not None:
        import numba
        import torch

        torch.set_num_threads(1)
        soft, fill = contract.asinh_softening, contract.fill_value
        gr, gc = round2.stats_pixel_grid(S)
        grid_values = torch.from_numpy(np.ascontiguousarray(src[:, :, gr, gc]).reshape(args.n * 3, -1))
        # (a4)'s buffer: no further 300 MB array (fresh memory is what this machine is slowest at).
        asinh_buffer = torch.from_numpy(dst)

        def threads(k, fn):
            def run():
                numba.set_num_threads(k)
                return fn()

            return run

        def p_ext(out=None):
            return lambda: proto.extract(images, masks, BAD_BITS, x, y, S, out=out)

        def p_prep(out=None, libm=False):
            return lambda: proto.prepare(
                images, masks, BAD_BITS, x, y, S, soft, fill, out=out, asinh_in_kernel=libm
            )

        for fn in (p_ext(), p_prep(), p_prep(libm=True)):
            fn()  # compile (or load the kernel cache) before timing
        cases += [
            ("p_extract", "numba prototype: extraction, new array, 1 thread", threads(1, p_ext())),
            ("p_extract_out", "numba prototype: extraction into a preallocated array, 1 thread",
             threads(1, p_ext(out2))),
            ("p_extract_2t", "numba prototype: extraction, new array, 2 threads", threads(2, p_ext())),
            ("p_prepare", "numba prototype: preparation (kernel + np.arcsinh + fill + flags), new array, 1 thread",
             threads(1, p_prep())),
            ("p_prepare_out", "numba prototype: preparation into a preallocated array, 1 thread",
             threads(1, p_prep(out2))),
            ("p_prepare_2t", "numba prototype: preparation, new array, 2 threads", threads(2, p_prep())),
        ]  # fmt: skip
        # Timed after the others, not interleaved: in this process the first fresh 300 MB array
        # after one of these slow cases (seconds) took several times (a2), slowing the floors.
        late_cases += [
            ("p_prepare_libm", "numba prototype: preparation with libm's asinhf in the kernel, new array, 1 thread",
             threads(1, p_prep(libm=True))),
            ("t_asinh", "torch: Tensor.asinh_ in place over an array of the output's size, 1 thread",
             lambda: asinh_buffer.asinh_()),
            ("t_median", f"torch: torch.median of every stamp channel's grid values ({args.n * 3} x "
             f"{grid_values.shape[1]}), 1 thread", lambda: torch.median(grid_values, dim=1)),
        ]  # fmt: skip
    results = run_cases(cases, args.repeat)
    if late_cases:
        results.update(run_cases(late_cases, args.repeat))
    for key in ("c_prepare_r1", "c_prepare_r2", "e_stream_r1", "e_stream_r2"):
        fn = dict((k, f) for k, _, f in cases)[key]
        results[key]["peak_traced_bytes"] = peak_memory(fn)

    dense_masks = make_dense_masks(masks)
    ns = min(args.small_n, args.n)
    variant_cases = [
        ("dense_b_r1", "dense bad areas: extract_cutouts, round 1", ext(round1, msk=dense_masks)),
        ("dense_b_r2", "dense bad areas: extract_cutouts, round 2", ext(round2, msk=dense_masks)),
        ("dense_c_r1", "dense bad areas: prepare_cutouts, round 1", prep(round1, msk=dense_masks)),
        ("dense_c_r2", "dense bad areas: prepare_cutouts, round 2", prep(round2, msk=dense_masks)),
        ("small_b_r1", f"N = {ns}: extract_cutouts, round 1", ext(round1, xx=x[:ns], yy=y[:ns])),
        ("small_b_r2", f"N = {ns}: extract_cutouts, round 2", ext(round2, xx=x[:ns], yy=y[:ns])),
        ("small_c_r1", f"N = {ns}: prepare_cutouts, round 1", prep(round1, xx=x[:ns], yy=y[:ns])),
        ("small_c_r2", f"N = {ns}: prepare_cutouts, round 2", prep(round2, xx=x[:ns], yy=y[:ns])),
    ]
    variants = run_cases(variant_cases, args.repeat)

    # Round 2 must give exactly the round-1 outputs.
    checks = {}
    for name, msk, xx, yy in (
        ("main", masks, x, y),
        ("dense", dense_masks, x, y),
        ("small", masks, x[:ns], y[:ns]),
    ):
        b1 = round1.extract_cutouts(images, xx, yy, S, masks=msk)
        b2 = round2.extract_cutouts(images, xx, yy, S, masks=msk)
        p1 = round1.prepare_cutouts(images, xx, yy, contract, masks=msk)
        p2 = round2.prepare_cutouts(images, xx, yy, contract, masks=msk)
        checks[f"{name}_extract_identical"] = same_batch(b1, b2)
        checks[f"{name}_prepare_identical"] = bool(
            np.array_equal(p1[0], p2[0]) and np.array_equal(p1[1], p2[1])
        )
    s1 = [
        (st.copy(), f)
        for _, st, f in round1.iter_cutout_batches(images, x, y, contract, args.batch, masks=masks)
    ]
    s2 = [
        (st.copy(), f)
        for _, st, f in round2.iter_cutout_batches(
            images, x, y, contract, args.batch, masks=masks, reuse_buffer=True
        )
    ]
    checks["stream_identical"] = all(
        np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(s1, s2)
    ) and len(s1) == len(s2)
    proto_checks, first_calls = {}, None
    if proto is not None:
        b2 = round2.extract_cutouts(images, x, y, S, masks=masks)
        st, fl, nb = proto.extract(images, masks, BAD_BITS, x, y, S)
        proto_checks["prototype_extract_identical"] = bool(
            np.array_equal(st, b2.stamps, equal_nan=True)
            and np.array_equal(fl, b2.flags)
            and np.array_equal(nb, b2.n_bad)
        )
        p2 = round2.prepare_cutouts(images, x, y, contract, masks=masks)
        pp = proto.prepare(images, masks, BAD_BITS, x, y, S, contract.asinh_softening, contract.fill_value)
        proto_checks["prototype_prepare_identical"] = bool(
            np.array_equal(pp[0], p2[0]) and np.array_equal(pp[1], p2[1])
        )
        pl = proto.prepare(
            images,
            masks,
            BAD_BITS,
            x,
            y,
            S,
            contract.asinh_softening,
            contract.fill_value,
            asinh_in_kernel=True,
        )[0]
        proto_checks["libm_asinhf_pixels_differing"] = int(np.count_nonzero(pl != p2[0]))
        proto_checks["libm_asinhf_max_abs_difference"] = float(np.max(np.abs(pl - p2[0])))
        proto_checks["pixels"] = int(pl.size)
        del st, pp, pl, b2, p2
        first_calls = prototype_first_calls()

    a, a2 = results["a_copy"], results["a2_copy_fresh"]
    # Floors are lower bounds: ratios divide by their best run. A fresh 300 MB array's page faults
    # (a2) sometimes take several times as long on this shared machine, which would make any ratio
    # to a median of (a2) look better than it is.
    for r in list(results.values()) + list(variants.values()):
        r["cpu_median_over_a"] = r["cpu_median_s"] / a["cpu_best_s"]
        r["cpu_median_over_a2"] = r["cpu_median_s"] / a2["cpu_best_s"]
        r["wall_median_over_a"] = r["wall_median_s"] / a["wall_best_s"]
    targets = {"b_extract": 1.5, "c_prepare": 3.0}
    meta = {
        "n_sources": args.n,
        "stamp_size": S,
        "image_shape": [args.image, args.image],
        "channels": 3,
        "repeat": args.repeat,
        "batch": args.batch,
        "output_bytes": int(np.prod(shape) * 4),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "command": ["python", "benchmarks/bench_cutouts.py", *sys.argv[1:]],
        "targets_ratio_to_a": targets,
        "note": (
            "cpu = process CPU time (user + system, includes page faults). The machine is shared by "
            "several processes; CPU time is the fairer measure of this code's own work (wall time also "
            "counts waiting for a core). Cases run interleaved, one round of all cases per repeat, so "
            "round 1 and round 2 see the same load. Ratios *_over_a / *_over_a2 divide a case's median by "
            "the floor's best run (floors are lower bounds)."
        ),
    }

    def fmt_pair(key, res):
        r1, r2 = res[f"{key}_r1"], res[f"{key}_r2"]
        return (
            f"| {r2['label'].rsplit(', round', 1)[0]} | {r1['cpu_median_s']:.3f} | "
            f"{r2['cpu_median_s']:.3f} | "
            f"{r1['cpu_median_s'] / r2['cpu_median_s']:.2f}x | {r2['cpu_median_over_a']:.1f} | "
            f"{r2['cpu_median_over_a2']:.1f} | {r1['wall_median_s']:.3f} | {r2['wall_median_s']:.3f} |"
        )

    lines = [
        f"# Cutout benchmark: {args.n} sources, 3 x {args.image}x{args.image} float32 images, {S}x{S} stamps",
        "",
        f"Command: `python benchmarks/bench_cutouts.py {' '.join(sys.argv[1:])}`.",
        "",
        f"numpy {np.__version__}, {os.cpu_count()} cores shared with other jobs (load average at start "
        f"{', '.join(f'{v:.1f}' for v in load_start)}, at end "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}); {args.repeat} interleaved runs per case; "
        "medians. CPU = process time (user + system): the fairer figure on this loaded machine; "
        "wall times are given too. Ratios to the floors divide a case's median by the floor's best run.",
        "",
        "## Reference floors",
        "",
        "Floors are lower bounds, so their best run is the fair figure; page-fault-heavy cases "
        "(fresh 300 MB arrays) vary a lot between runs on this machine.",
        "",
        "| case | CPU best (s) | CPU median (s) | best / (a) | best / (a2) | wall median (s) |",
        "|---|---|---|---|---|---|",
    ]
    a_best, a2_best = results["a_copy"]["cpu_best_s"], results["a2_copy_fresh"]["cpu_best_s"]
    for key in (
        "a_copy",
        "a2_copy_fresh",
        "a3_single_gather",
        "a4_arcsinh",
        "f_chunked_floor",
        "d_loop",
        "d2_loop_checked",
    ):
        r = results[key]
        lines.append(
            f"| ({key.split('_')[0]}) {r['label']} | {r['cpu_best_s']:.3f} | {r['cpu_median_s']:.3f} | "
            f"{r['cpu_best_s'] / a_best:.1f} | {r['cpu_best_s'] / a2_best:.1f} | {r['wall_median_s']:.3f} |"
        )
    lines += [
        "",
        "## Round 1 vs round 2 (same run)",
        "",
        "| case | round 1 CPU (s) | round 2 CPU (s) | speed-up | round 2 CPU / best (a) | round 2 CPU / best (a2) | "
        "round 1 wall (s) | round 2 wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ("b_extract", "b2_extract_out", "c_prepare", "c2_prepare_out", "e_stream"):
        lines.append(f"| ({key.split('_')[0]}) " + fmt_pair(key, results)[2:])
    r = results["e2_stream_reuse_r2"]
    lines.append(
        f"| (e2) {r['label'].rsplit(', round', 1)[0]} | | {r['cpu_median_s']:.3f} | "
        f"{results['e_stream_r1']['cpu_median_s'] / r['cpu_median_s']:.2f}x vs (e) round 1 | "
        f"{r['cpu_median_over_a']:.1f} | {r['cpu_median_over_a2']:.1f} | | {r['wall_median_s']:.3f} |"
    )
    for key in ("dense_b", "dense_c", "small_b", "small_c"):
        lines.append(fmt_pair(key, variants))
    b2, c2 = results["b_extract_r2"], results["c_prepare_r2"]
    lines += [
        "",
        "Peak traced memory (tracemalloc): prepare_cutouts "
        f"{results['c_prepare_r1']['peak_traced_bytes'] / 2**20:.0f} / "
        f"{results['c_prepare_r2']['peak_traced_bytes'] / 2**20:.0f} MiB (round 1 / 2), streaming "
        f"{results['e_stream_r1']['peak_traced_bytes'] / 2**20:.0f} / "
        f"{results['e_stream_r2']['peak_traced_bytes'] / 2**20:.0f} MiB.",
        "",
        "Identical outputs (round 2 == round 1, bit for bit, NaN positions included): "
        + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in checks.items())
        + ".",
        "",
        "## Targets",
        "",
        '"A plain copy of the output" is read both ways: (a) a copy into memory already '
        "allocated and touched, (a2) a copy into a new array (what a function returning new stamps "
        "pays at least; the figures of issue 12's text, 2.5x and 5.0x, are against (a2)).",
        "",
        f"- (b) extraction <= {targets['b_extract']}x: round 2 is {b2['cpu_median_over_a']:.1f}x (a), "
        f"{met(b2['cpu_median_over_a'], targets['b_extract'])}, and {b2['cpu_median_over_a2']:.1f}x (a2), "
        f"{met(b2['cpu_median_over_a2'], targets['b_extract'])}, in CPU time.",
        f"- (c) extraction + NaN fill + normalisation + flags <= {targets['c_prepare']}x: round 2 is "
        f"{c2['cpu_median_over_a']:.1f}x (a), {met(c2['cpu_median_over_a'], targets['c_prepare'])}, and "
        f"{c2['cpu_median_over_a2']:.1f}x (a2), {met(c2['cpu_median_over_a2'], targets['c_prepare'])}.",
        f"- Why (b) cannot reach 1.5x (a) in numpy (best runs): a function returning new stamps pays (a2) "
        f"({a2_best:.3f} s, {a2_best / a_best:.1f}x (a)) for fresh memory alone. Cutting "
        f"the stamps with no check at all costs (a3) {results['a3_single_gather']['cpu_best_s']:.3f} s "
        f"even when the images are one buffer (one fancy index, one copy: "
        f"{results['a3_single_gather']['cpu_best_s'] / a_best:.1f}x (a)); with three separate images numpy "
        "cannot gather from several buffers in one call and `np.take(out=...)` copies its (overlapping, "
        "non-contiguous) source, so each image's rows are gathered into a cached chunk and copied into the "
        f"output: (f) {results['f_chunked_floor']['cpu_best_s']:.3f} s "
        f"({results['f_chunked_floor']['cpu_best_s'] / a_best:.1f}x (a), "
        f"{results['f_chunked_floor']['cpu_best_s'] / a2_best:.1f}x (a2)) before any NaN, mask, edge or "
        f"flag work. Round 2's best (b) run is {b2['cpu_best_s']:.3f} s, "
        f"{b2['cpu_best_s'] - results['f_chunked_floor']['cpu_best_s']:.3f} s above that floor; "
        f"round 1's was "
        f"{results['b_extract_r1']['cpu_best_s'] - results['f_chunked_floor']['cpu_best_s']:.3f} s above it.",
        f"- Normalisation (c) - (b) = {c2['cpu_median_s'] - b2['cpu_median_s']:.3f} s in round 2 for "
        f"{args.n * 3} stamp channels: subtract, scale and arcsinh over every pixel (in cache; arcsinh "
        f"alone is (a4) {results['a4_arcsinh']['cpu_best_s']:.3f} s = "
        f"{results['a4_arcsinh']['cpu_best_s'] / a_best:.1f}x (a) over memory), two partitions per stamp "
        "channel on the "
        "statistics grid and the fill. So (c) <= 3x (a) would leave less than one copy's time for "
        "extraction, which already costs more than (a2).",
    ]
    if proto is not None:
        lines += prototype_lines(results, proto_checks, first_calls, targets, args)
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(
            {
                "meta": meta,
                "results": results,
                "variants": variants,
                "identical": checks,
                "prototype_checks": proto_checks,
                "prototype_first_calls": first_calls,
            },
            fh,
            indent=2,
        )
    with open(args.out + ".md", "w") as fh:
        fh.write(table + "\n")


if __name__ == "__main__":
    main()
