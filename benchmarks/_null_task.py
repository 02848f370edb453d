# This file is part of meas_rbnet.
"""A do-nothing PipelineTask with the reliability task's connections (the floor of ``bench_task.py``).

It reads what `ReliabilityTask` reads (science, template and difference images with the
same storage classes, the source table, the model package as a prerequisite) and writes
tables of the same size (``dia_source_reliability``: id, score, version, flags; the sources
with three columns added), but scores nothing: every score is NaN. What a quantum of it
costs is what the Butler and pipetask cost for the same datasets.

Benchmark only: ``bench_task.py`` puts this directory on ``PYTHONPATH`` for ``pipetask``.
"""

__all__ = ["NullReliabilityConfig", "NullReliabilityTask"]

import astropy.table
import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase

from lsst.meas.rbnet.tasks.reliability import ReliabilityConnections


class NullReliabilityConfig(pipeBase.PipelineTaskConfig, pipelineConnections=ReliabilityConnections):
    """Only what `ReliabilityConnections` reads from a config (defaults as the real task's)."""

    channels = pexConfig.ListField[str](
        doc="As ReliabilityConfig.", default=["difference", "science", "template"]
    )
    doWriteCutouts = pexConfig.Field[bool](doc="As ReliabilityConfig.", default=False)
    scienceStorageClass = pexConfig.Field[str](doc="As ReliabilityConfig.", default="")
    templateStorageClass = pexConfig.Field[str](doc="As ReliabilityConfig.", default="")
    differenceStorageClass = pexConfig.Field[str](doc="As ReliabilityConfig.", default="")
    sourcesStorageClass = pexConfig.Field[str](doc="As ReliabilityConfig.", default="")
    numThreads = pexConfig.Field[int](doc="Accepted and ignored.", default=0)


class NullReliabilityTask(pipeBase.PipelineTask):
    """Reads the inputs, writes NaN scores: the Butler's share of a reliability quantum."""

    ConfigClass = NullReliabilityConfig
    _DefaultName = "computeReliability"

    def run(self, science=None, template=None, difference=None, sources=None, pretrainedModel=None):
        n = len(sources)
        version = str(getattr(pretrainedModel, "version", "null"))
        scores = np.full(n, np.nan, dtype=np.float32)
        flags = np.zeros(n, dtype=np.int32)
        reliability = astropy.table.Table()
        reliability["id"] = np.asarray(sources["id"], dtype=np.int64)
        reliability["score"] = scores
        reliability["version"] = np.array([version] * n, dtype="<U7")
        reliability["reliabilityFlags"] = flags
        with_rel = astropy.table.Table(sources, copy=True)
        with_rel["reliability"] = scores
        with_rel["reliabilityVersion"] = np.array([version] * n, dtype="<U7")
        with_rel["reliabilityFlags"] = flags
        return pipeBase.Struct(reliability=reliability, sourcesWithReliability=with_rel)
