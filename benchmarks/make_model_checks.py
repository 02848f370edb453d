#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Write the quality reference of every shipped model package: ``data/<stem>.check.json``.

Usage (one command, deterministic, a few seconds per package)::

    python benchmarks/make_model_checks.py

Run it whenever a package in ``python/lsst/meas/rbnet/data/`` is added or replaced;
``tests/test_shipped_models.py`` then checks, in CI, that each package still reaches the
ROC-AUC recorded here (minus the stated margin) on the same simulated check set, and
that the package file is the one measured (its digest).

For each triplet package ``data/<stem>.safetensors`` the script simulates a fixed,
seeded check set with `lsst.meas.rbnet.sim.simulate_stamps` (``CHECK_SET`` below:
1,500 triplets at the package's stamp size, seed `CHECK_SEED`, which no training or
benchmark command of this project uses), scores it with
`lsst.meas.rbnet.score_triplets` on the CPU, and writes:

- ``simulation``: the exact keyword arguments given to ``simulate_stamps``;
- ``roc_auc``: the ROC-AUC reached (sources that could not be scored are left out;
  their number is ``n_unscored``), ``n_real``, ``n_bogus``;
- ``margin``: how far below ``roc_auc`` the test still passes, and ``min_roc_auc``,
  the floor no shipped package may go under (a package with random weights scores
  about 0.5 here, so re-running this script on a broken package cannot make it pass);
- ``version`` and ``digest`` of the package measured;
- ``set_fingerprint``: what the check set looked like (SHA-256 of its labels and class
  names, exact; mean absolute pixel value and the counts, compared to a relative 1e-4),
  so that a changed simulator is reported as such ("re-run this script"), not as a
  worse model.

The margin is not a statistical allowance: the check set is re-simulated identically
(numpy's seeded generators), so the ROC-AUC can differ only by floating-point rounding
between platforms (well under 0.001). 0.01 is far below what a real breakage costs
(random weights: about 0.5; see benchmarks/results/mutants.md for the faults tried).

The script refuses to write a check for a package below ``MIN_ROC_AUC`` and exits 1.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: Seed of the check sets. Not a training seed (101-108, 5000-6079), not a benchmark seed
#: (20240, 20241, 90000+), not a demo seed.
CHECK_SEED = 20250
#: Number of simulated triplets per check set (seconds to simulate and score).
CHECK_N = 1500
#: The test passes down to the recorded ROC-AUC minus this.
MARGIN = 0.01
#: No shipped package may score below this on its check set (random weights give about 0.5).
MIN_ROC_AUC = 0.9
#: Format of the check files.
FORMAT = 1

DATA = Path(__file__).resolve().parents[1] / "python" / "lsst" / "meas" / "rbnet" / "data"


def check_set(stamp_size: int) -> dict:
    """Keyword arguments of `simulate_stamps` for a package of this stamp size."""
    return {
        "n": CHECK_N,
        "stamp_size": int(stamp_size),
        "seed": CHECK_SEED,
        "edge_fraction": 0.03,
        "no_template_fraction": 0.02,
        "with_masks": False,
    }


def fingerprint(sim) -> dict:
    """Platform-independent description of a simulated check set (exact for the truth, rounded for pixels)."""
    import hashlib

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.asarray(sim.table["label"]), dtype=np.int64).tobytes())
    h.update("\n".join(np.asarray(sim.table["source_class"]).astype(str)).encode())
    finite = np.isfinite(sim.stamps)
    return {
        "truth_sha256": h.hexdigest(),
        "mean_abs_pixel": float(np.abs(sim.stamps[finite].astype(np.float64)).mean()),
        "n_nan_pixels": int(np.count_nonzero(~finite)),
    }


def measure(package_path: Path, simulation: dict) -> dict:
    """ROC-AUC of a triplet package on the check set ``simulation`` (keyword arguments of simulate_stamps)."""
    from lsst.meas.rbnet import score_triplets
    from lsst.meas.rbnet.sim import simulate_stamps
    from lsst.meas.rbnet.training.metrics import roc_auc

    sim = simulate_stamps(**simulation)
    st = sim.stamps
    scores = score_triplets(st[:, 1], st[:, 2], st[:, 0], model=package_path, device="cpu")
    labels = np.asarray(sim.table["label"]).astype(int)
    ok = np.isfinite(scores)
    return {
        "roc_auc": round(float(roc_auc(scores[ok], labels[ok])), 6),
        "n_real": int(np.count_nonzero(labels[ok] == 1)),
        "n_bogus": int(np.count_nonzero(labels[ok] == 0)),
        "n_unscored": int(np.count_nonzero(~ok)),
        "set_fingerprint": fingerprint(sim),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--data", type=Path, default=DATA, help="directory of the shipped packages")
    args = parser.parse_args(argv)

    import torch

    from lsst.meas.rbnet.package import ModelPackage

    torch.set_num_threads(1)  # the same arithmetic on every machine
    packages = sorted(args.data.glob("*.safetensors"))
    if not packages:
        print(f"no *.safetensors packages in {args.data}", file=sys.stderr)
        return 1
    status = 0
    for path in packages:
        package = ModelPackage.load(path)
        out = path.with_name(path.name.removesuffix(".safetensors") + ".check.json")
        if package.kind != "triplet":
            print(
                f"{path.name}: a {package.kind!r} package; only triplet packages have a check set",
                file=sys.stderr,
            )
            status = 1
            continue
        simulation = check_set(package.contract.stamp_size)
        t0 = time.perf_counter()
        result = measure(path, simulation)
        record = {
            "format": FORMAT,
            "package": path.name,
            "version": package.version,
            "digest": package.digest,
            "simulation": simulation,
            **result,
            "margin": MARGIN,
            "min_roc_auc": MIN_ROC_AUC,
            "command": "python benchmarks/make_model_checks.py",
        }
        print(
            f"{path.name} (version {package.version}): ROC-AUC {result['roc_auc']:.6f} on {simulation['n']} "
            f"simulated triplets (seed {simulation['seed']}, {simulation['stamp_size']}x"
            f"{simulation['stamp_size']}; {result['n_unscored']} unscored) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        if result["roc_auc"] < MIN_ROC_AUC:
            print(f"{path.name}: ROC-AUC below {MIN_ROC_AUC}; no check written", file=sys.stderr)
            status = 1
            continue
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {out.name}")
    return status


if __name__ == "__main__":
    sys.exit(main())
