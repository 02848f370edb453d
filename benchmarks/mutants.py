#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Mutation check: does the test suite catch the faults that matter?

Usage::

    python benchmarks/mutants.py [--only NAME[,NAME...]] [--list]

Each mutant is one small deliberate fault (see `MUTANTS`): an exact text replacement in
one source file of the package (the text must occur exactly as many times as stated,
otherwise the script stops with an error: the source changed and the mutant must be
updated), or, for ``random_weights``, the shipped default model replaced by one with
the same metadata and version and its weights shuffled within each tensor. Faults are
applied one at a time to a temporary copy of the package (``python/`` plus the
``pipelines/`` and ``config/`` the tasks read) and the test files relevant to that fault
are run against the copy::

    PYTHONPATH=<copy>/python python -m pytest -p no:xdist -x -q <test files>

from the checkout (the tests are the checkout's own). Before the mutants, the script
checks that the copy is the package imported under that ``PYTHONPATH`` and that the
same test files pass on the unmodified copy (a fault is only "caught" if the tests
pass without it). A mutant is caught when pytest exits with failures (exit code 1);
any other exit code (errors collecting, no tests) is reported as an error.

Results: ``benchmarks/results/mutants.md`` and ``.json`` (the list, which test caught each
fault, the time taken). Not part of CI's test command: it runs the relevant test files
once per mutant (about 10-20 minutes on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = Path("python/lsst/meas/rbnet")

# Test files, grouped by what they cover.
TASKS = "tests/test_tasks.py"
PIPETASK = "tests/test_pipetask.py"
SCORING = "tests/test_scoring.py"
CUTOUTS = "tests/test_cutouts.py"
SHIPPED = "tests/test_shipped_models.py"
TRAINING = "tests/test_training.py"
PACKAGE = "tests/test_package.py"


@dataclasses.dataclass
class Mutant:
    """One deliberate fault.

    Attributes
    ----------
    name : `str`
        Short identifier.
    what : `str`
        The fault in words.
    path : `str`
        File relative to ``python/lsst/meas/rbnet`` (empty for ``action`` mutants).
    old, new : `str`
        Exact text and its replacement.
    tests : `list` [`str`]
        Test files to run (the first should be the quickest to catch the fault).
    count : `int`
        How many times ``old`` must occur (all are replaced).
    action : callable, optional
        ``action(copy_root)`` mutates the copy instead of a text replacement.
    """

    name: str
    what: str
    path: str
    old: str
    new: str
    tests: list[str]
    count: int = 1
    action: Callable[[Path], None] | None = None


def _shuffle_default_weights(copy: Path) -> None:
    """Replace the copy's default model by one with the same metadata and version, weights shuffled."""
    import torch

    from lsst.meas.rbnet.package import ModelPackage

    path = copy / PKG / "data" / "rbnet-default.safetensors"
    package = ModelPackage.load(path)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, t in package.state.items():
        if t.is_floating_point() and t.numel() > 1:
            flat = t.flatten()
            # Same values, same distribution per tensor (positive variances stay positive), wrong places.
            t = flat[torch.randperm(flat.numel(), generator=gen)].reshape(t.shape)
        state[name] = t
    dataclasses.replace(package, state=state).save(path)


MUTANTS: list[Mutant] = [
    Mutant(
        "reverse_scores",
        "ReliabilityTask.run gives the scorable sources their scores in reverse order (issue 13, case 1)",
        "tasks/reliability.py",
        "            scores[:] = np.asarray(result.reliability, dtype=np.float32)\n",
        "            scores[:] = np.asarray(result.reliability, dtype=np.float32)\n"
        "            _ok = np.isfinite(scores)\n"
        "            scores[_ok] = scores[_ok][::-1]\n",
        [TASKS, PIPETASK],
    ),
    Mutant(
        "swap_two_scores",
        "ReliabilityTask.run swaps the scores of its first two sources",
        "tasks/reliability.py",
        "            scores[:] = np.asarray(result.reliability, dtype=np.float32)\n",
        "            scores[:] = np.asarray(result.reliability, dtype=np.float32)\n"
        "            scores[[0, 1]] = scores[[1, 0]]\n",
        [TASKS, PIPETASK],
    ),
    Mutant(
        "ids_sorted",
        "the output table's ids are sorted instead of kept in input order",
        "tasks/reliability.py",
        '        reliability["id"] = ids\n',
        '        reliability["id"] = np.sort(ids)\n',
        [TASKS, PIPETASK],
    ),
    Mutant(
        "drop_origin_shift",
        "the task ignores the images' origin: parent coordinates used as array indices (issue 13, case 2)",
        "tasks/reliability.py",
        "        xl, yl = x - x0, y - y0\n",
        "        xl, yl = x, y\n",
        [TASKS, PIPETASK],
    ),
    Mutant(
        "random_weights",
        "the shipped default model replaced by shuffled weights under the same version (issue 13, case 3)",
        "",
        "",
        "",
        [SHIPPED],
        action=_shuffle_default_weights,
    ),
    Mutant(
        "softening_ignored",
        "robust_asinh ignores its softening (issue 13, case 4)",
        "cutouts/normalize.py",
        'soft32 = np.float32(soft if norm == "robust_asinh" else 1.0)',
        "soft32 = np.float32(1.0)",
        [CUTOUTS, SHIPPED],
    ),
    Mutant(
        "mad_constant",
        "normalisation constant changed: sigma = 1.0 * MAD instead of 1.4826 * MAD",
        "cutouts/normalize.py",
        "MAD_TO_SIGMA: float = 1.4826\n",
        "MAD_TO_SIGMA: float = 1.0\n",
        [CUTOUTS],
    ),
    Mutant(
        "fill_value_ignored",
        "untrusted pixels filled with fill_value + 1 after normalisation",
        "cutouts/normalize.py",
        "            flat.reshape(-1)[bad_pos] = np.float32(fill)\n",
        "            flat.reshape(-1)[bad_pos] = np.float32(fill + 1)\n",
        [CUTOUTS],
    ),
    Mutant(
        "skip_temperature",
        "scores not calibrated: sigmoid(logit) instead of sigmoid(logit / temperature)",
        "scoring.py",
        "        return torch.sigmoid(z / self.temperature).numpy()\n",
        "        return torch.sigmoid(z).numpy()\n",
        [SCORING],
    ),
    Mutant(
        "symmetric_temperature_ignored",
        "symmetry averaging calibrated with the plain temperature",
        "scoring.py",
        "        self.temperature = package.temperature_symmetric if self.symmetry else package.temperature"
        "\n",
        "        self.temperature = package.temperature\n",
        [SCORING],
    ),
    Mutant(
        "skip_checksum",
        "model packages loaded without checking their checksum",
        "package.py",
        '            if digest != meta.get("sha256"):\n',
        "            if False:\n",
        [PACKAGE],
    ),
    Mutant(
        "wrong_channel_order",
        "score_triplets hands the science stamps to the model as the template and vice versa",
        "scoring.py",
        '    given = {"difference": difference, "science": science, "template": template}\n',
        '    given = {"difference": difference, "science": template, "template": science}\n',
        [SHIPPED],
    ),
    Mutant(
        "task_channel_order",
        "the task passes its images to the scorer in the reverse of the order it declares",
        "tasks/reliability.py",
        "                [arrays[c].image for c in channels],\n",
        "                [arrays[c].image for c in channels[::-1]],\n",
        [TASKS],
    ),
    Mutant(
        "off_by_one_centre",
        "stamp centre pixel floor(x) instead of floor(x + 0.5) (cutouts one pixel off for half the sources)",
        "cutouts/scan.py",
        "    cxf = np.floor(xs + 0.5)\n",
        "    cxf = np.floor(xs)\n",
        [CUTOUTS, TASKS],
    ),
    Mutant(
        "flags_dropped",
        "the task drops the scorer's per-source flags",
        "tasks/reliability.py",
        "            flags[:] = np.asarray(result.flags, dtype=np.int32)\n",
        "            flags[:] = 0\n",
        [TASKS],
    ),
    Mutant(
        "no_template_flag_dropped",
        "the task never sets NO_TEMPLATE",
        "tasks/reliability.py",
        "                flags |= self._no_template_flags(arrays[\"template\"], xl, yl)\n",
        "                pass\n",
        [TASKS],
    ),
    Mutant(
        "unscorable_score_ignored",
        "config.unscorableScore not applied to unscorable sources",
        "tasks/reliability.py",
        "            scores[unscorable] = np.float32(self.config.unscorableScore)\n",
        "            pass\n",
        [TASKS],
    ),
    Mutant(
        "no_optimizer_step",
        "training computes gradients but never updates the weights",
        "training/loop.py",
        "                    scaler.step(optimizer)\n",
        "                    pass\n",
        [TRAINING],
    ),
    Mutant(
        "labels_misaligned_in_batches",
        "training batches take their stamps in sorted order but their labels in shuffled order",
        "training/data.py",
        "        y = torch.from_numpy(data.labels[idx].astype(np.float32))\n",
        "        y = torch.from_numpy(data.labels[order[start : start + batch_size]].astype(np.float32))\n",
        [TRAINING],
    ),
    Mutant(
        "model_cache_disabled",
        "the scorer is rebuilt for every call (the model reloaded per quantum)",
        "scoring.py",
        "        scorer = _cache.get(key)\n",
        "        scorer = None\n",
        [SCORING, TASKS],
    ),
    Mutant(
        "stats_grid_misplaced",
        "the statistics sub-grid of large stamps no longer passes through the centre pixel",
        "cutouts/normalize.py",
        "    start = (size // 2) % step\n",
        "    start = 0\n",
        [CUTOUTS],
    ),
]


def _copy_tree(dest: Path) -> None:
    for name in ("python", "pipelines", "config"):
        shutil.copytree(
            ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        )


def _apply(m: Mutant, copy: Path) -> tuple[Path, str] | None:
    """Apply a text mutant to the copy; return (file, original text) to restore it."""
    if m.action is not None:
        return None
    path = copy / PKG / m.path
    text = path.read_text()
    found = text.count(m.old)
    if found != m.count:
        raise SystemExit(
            f"mutant {m.name!r}: expected {m.count} occurrence(s) of its text in {PKG / m.path}, "
            f"found {found}; the source changed: update the mutant.\n--- text ---\n{m.old}"
        )
    path.write_text(text.replace(m.old, m.new))
    return path, text


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("MEAS_RBNET_DIR", None)
    env.pop("RBNET_TEST_POSTGRES_URL", None)
    return env


def _check_import(copy: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import lsst.meas.rbnet as r; print(r.__file__)"],
        env=_env(copy),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    imported = out.stdout.strip()
    if not imported.startswith(str(copy / "python")):
        raise SystemExit(f"the copy is not the package imported under PYTHONPATH: {imported!r} {out.stderr}")


def _pytest(copy: Path, tests: list[str], stop: bool = True) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    first = ["-x"] if stop else ["-rf"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", *first, "-q", *tests],
        env=_env(copy),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return out.returncode, out.stdout + out.stderr, time.perf_counter() - t0


def _failures(text: str) -> list[str]:
    return re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.MULTILINE)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--all-failures",
        action="store_true",
        help="run every test of the files (no -x) and list all that fail; results go to <out>-all.md",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutants")
    args = parser.parse_args(argv)
    mutants = MUTANTS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.name for m in MUTANTS}
        if unknown:
            raise SystemExit(f"unknown mutants {sorted(unknown)}")
        mutants = [m for m in MUTANTS if m.name in wanted]
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.what}")
        return 0

    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="rbnet-mutants-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        _check_import(copy)
        # Every text mutant must still match before anything runs.
        for m in mutants:
            restore = _apply(m, copy)
            if restore:
                restore[0].write_text(restore[1])
        # The relevant tests pass on the unmodified copy.
        files = sorted({t for m in mutants for t in m.tests})
        code, text, seconds = _pytest(copy, files)
        print(f"baseline (no fault): {' '.join(files)} -> exit {code} in {seconds:.0f} s", flush=True)
        if code != 0:
            print(text[-4000:])
            raise SystemExit("the tests fail without any fault; fix that first")
        for m in mutants:
            backup = None
            if m.action is not None:
                target = copy / PKG / "data"
                backup = Path(tmp) / "data-backup"
                shutil.copytree(target, backup)
                m.action(copy)
                restore = None
            else:
                restore = _apply(m, copy)
            try:
                code, text, seconds = _pytest(copy, m.tests, stop=not args.all_failures)
            finally:
                if restore:
                    restore[0].write_text(restore[1])
                if backup is not None:
                    shutil.rmtree(copy / PKG / "data")
                    shutil.move(backup, copy / PKG / "data")
            status = {0: "NOT CAUGHT", 1: "caught"}.get(code, f"error (pytest exit {code})")
            failed = _failures(text) if code == 1 else []
            by = ", ".join(failed) if args.all_failures else (failed[0] if failed else "")
            print(f"{m.name:32s} {status:10s} {seconds:6.0f} s  {by}", flush=True)
            if code not in (0, 1):
                print(text[-3000:])
            results.append(
                {"name": m.name, "what": m.what, "file": m.path or "data/", "tests": m.tests,
                 "caught": code == 1, "status": status, "caught_by": by, "seconds": round(seconds, 1)}
            )  # fmt: skip
    total = time.perf_counter() - started
    n_caught = sum(r["caught"] for r in results)
    command = "python benchmarks/mutants.py" + (f" --only {args.only}" if args.only else "")
    if args.all_failures:
        command += " --all-failures"
        args.out = args.out.with_name(args.out.name + "-all")
    print(f"{n_caught} of {len(results)} mutants caught in {total / 60:.1f} min")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": command,
        "caught": n_caught,
        "total": len(results),
        "minutes": round(total / 60, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
        "mutants": results,
    }
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    failing_header = "failing tests" if args.all_failures else "first failing test"
    lines = [
        "# Mutation check",
        "",
        f"Command: `{command}` (from the checkout; {summary['minutes']} min on {summary['machine']}).",
        "",
        "Each fault is applied alone to a temporary copy of the package and the listed test files are run",
        "against it (`PYTHONPATH=<copy>/python python -m pytest -p no:xdist "
        f"{'-rf' if args.all_failures else '-x'} -q FILES`); the same files pass on the unmodified copy. "
        "*Caught* = pytest reports a failing test"
        f" ({'all are named' if args.all_failures else 'the first one is named'}).",
        "",
        f"**{n_caught} of {len(results)} caught.**",
        "",
        f"| mutant | fault | tests run | result | {failing_header} |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        tests = ", ".join(Path(t).name for t in r["tests"])
        lines.append(f"| `{r['name']}` | {r['what']} | {tests} | {r['status']} | `{r['caught_by']}` |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0 if n_caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
