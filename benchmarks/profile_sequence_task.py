#!/usr/bin/env python
# This file is part of meas_rbnet.
"""Profile what `SequenceReliabilityTask.run` spends around its scorer, with the network left out.

The inputs are those of ``bench_sequence_task.py`` (1000 objects x 20 visits by default).
The scorer's ``score`` is replaced by a stub that does only the scorer's own input handling
before the network (channel selection) and returns 0.5 per object, so what remains is the
task's work: reading the tables, cutting frames, grouping, partition, output table, finding
the cached scorer. Reported per grouping mode: the process CPU time of ``run`` (best and
median of ``--repeats`` warm calls; CPU time, because wall-clock differences of a few
milliseconds drown in the load of a shared machine), and with ``--profile N`` the N functions
with the most own time (cProfile over all the calls).

Run it against another checkout's package (e.g. an earlier commit exported with ``git archive``)
by putting that checkout's ``python`` folder first on ``PYTHONPATH``; the script prints the
package folder it imported.

Usage: ``python benchmarks/profile_sequence_task.py [--objects 1000] [--visits 20] [--repeats 11]
[--profile 15]``
"""

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_sequence_task import _inputs, _package  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--visits", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--profile", type=int, default=0, help="show the N functions with most own time")
    args = parser.parse_args()

    import lsst.meas.rbnet
    from lsst.meas.rbnet.sequence.scoring import SequenceScorer
    from lsst.meas.rbnet.tasks.sequence import SequenceReliabilityConfig, SequenceReliabilityTask

    print(f"package: {os.path.dirname(lsst.meas.rbnet.__file__)}; load average {os.getloadavg()[0]:.1f}")
    package = _package()
    cutouts, sources, times = _inputs(args.objects, args.visits)

    def stub_score(self, frames, offsets, times=None, channels=None, **kwargs):
        self._select_channels(frames, channels)
        return np.full(len(offsets) - 1, 0.5, np.float32)

    SequenceScorer.score = stub_score  # this process only
    for mode in ("diaObjectId", "position"):
        config = SequenceReliabilityConfig()
        config.device = "cpu"
        if mode == "position":
            config.objectIdColumn = ""
        task = SequenceReliabilityTask(config=config)
        task.run(cutouts[:2], sources[:2], package, times=times[:2])  # load and cache the scorer
        cpu = []
        for _ in range(args.repeats):
            c0 = time.process_time()
            task.run(cutouts, sources, package, times=times)
            cpu.append(time.process_time() - c0)
        print(
            f"{mode}: task CPU around the scorer {min(cpu):.3f} s best, {np.median(cpu):.3f} s median "
            f"of {args.repeats}"
        )
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.repeats):
                task.run(cutouts, sources, package, times=times)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.profile)
            print(out.getvalue())


if __name__ == "__main__":
    main()
