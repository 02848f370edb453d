# This file is part of meas_rbnet.
"""`SequenceReliabilityTask`: scores objects (multi-visit sequences of cutouts) with a sequence model.

One quantum per sky partition (``instrument`` + ``htm7`` by default): groups the sources it
sees into objects, keeps the objects the partition owns, encodes their frames and writes
one row per object (``dia_object_sequence_reliability``); the science is
`lsst.meas.rbnet.sequence.objects.score_objects`. Decisions: `lsst.meas.rbnet.tasks.sequence`.
"""

from __future__ import annotations

__all__ = [
    "NoSequenceModelError",
    "SequenceReliabilityConnections",
    "SequenceReliabilityConfig",
    "SequenceReliabilityTask",
]

import dataclasses
from collections.abc import Callable

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from ..flags import ObjectFlag
from ..sequence.objects import score_objects
from ..sequence.partition import SkyPartition
from .config_checks import check_field
from .connections import ModelInputCheck, model_input, visit_input
from .errors import NoSequenceModelError, check_model_package, no_model_message
from .sequence_inputs import (
    SEQUENCE_MODEL_DATASET_TYPE,
    SEQUENCE_RELIABILITY_DATASET_TYPE,
    PairedVisitInputs,
    SequenceInputsConfig,
    gather_objects,
    read_visit_inputs,
    set_threads,
)


def _sky_partition(data_id) -> SkyPartition | None:
    """The partition of a quantum's data ID: its skypix dimension, else its region, else `None`."""
    from lsst.daf.butler import SkyPixDimension

    universe = data_id.universe
    for name in data_id.dimensions.names:
        element = universe[name]
        if isinstance(element, SkyPixDimension):
            return SkyPartition(element.pixelization, int(data_id[name]))
    if data_id.dimensions.spatial:
        region = data_id.region if data_id.hasRecords() else None
        if region is None:
            raise ValueError(
                f"The quantum's data ID {data_id} is spatial but carries no region; use a skypix "
                "dimension (e.g. htm7) as the partition."
            )
        return SkyPartition(region=region)
    return None


class SequenceReliabilityConnections(
    ModelInputCheck,
    PairedVisitInputs,
    pipeBase.PipelineTaskConnections,
    dimensions=("instrument", "htm7"),
):
    """Connections of `SequenceReliabilityTask`; the quantum dimensions are ``config.partitionDimensions``.

    ``adjustQuantum``: the missing-model check (`ModelInputCheck`), then the pairing of the
    inputs (`PairedVisitInputs`).
    """

    modelConnection = "sequenceModel"
    modelKind = "sequence"

    cutouts = visit_input(
        "dia_source_cutouts",
        "ArrowAstropy",
        "Raw per-source stamps of every (visit, detector) overlapping the partition (reliability task "
        "with doWriteCutouts).",
        multiple=True,
        deferLoad=True,
    )
    sources = visit_input(
        "dia_source_unstandardized_reliability",
        "ArrowAstropy",
        "The source catalogues matching the cutouts (id, ra, dec, optionally diaObjectId, a time and "
        "the single-visit reliability).",
        multiple=True,
        deferLoad=True,
    )
    sequenceModel = model_input(
        SEQUENCE_MODEL_DATASET_TYPE,
        "Sequence model package (kind 'sequence'), found by collection, e.g. pretrained_models/<name>.",
    )
    objectReliability = cT.Output(
        doc="One row per object owned by the partition: objectId, nVisits, nSources, firstMjd, lastMjd, ra, "
        "dec, reliability (float32), reliabilityVersion, flags (ObjectFlag), tripletReliabilityMax/Mean.",
        name=SEQUENCE_RELIABILITY_DATASET_TYPE,
        storageClass="ArrowAstropy",
        dimensions=("instrument", "htm7"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is None:
            return
        dims = list(config.partitionDimensions)
        self.dimensions.clear()
        self.dimensions.update(dims)
        self.objectReliability = dataclasses.replace(self.objectReliability, dimensions=frozenset(dims))


class SequenceReliabilityConfig(
    pipeBase.PipelineTaskConfig, SequenceInputsConfig, pipelineConnections=SequenceReliabilityConnections
):
    """Configuration of `SequenceReliabilityTask`."""

    partitionDimensions = pexConfig.ListField[str](
        doc="Dimensions of a quantum: a sky partition (instrument + a skypix dimension such as htm7 or "
        "healpix8) or ['instrument'] for one quantum over everything. Objects are scored by the partition "
        "holding their mean position.",
        default=["instrument", "htm7"],
    )
    chunkFrames = pexConfig.Field[int](
        doc="Frames encoded per chunk of objects (bounds memory).", default=65536
    )
    expectedModelVersion = pexConfig.Field[str](
        doc="If set, the sequence model package's version must equal this.", default=""
    )

    def validate(self):
        super().validate()
        dims = bool(self.partitionDimensions)
        check_field(self, "partitionDimensions", dims, "must not be empty (e.g. ['instrument'])")
        check_field(self, "chunkFrames", self.chunkFrames >= 1, "must be >= 1")


class SequenceReliabilityTask(pipeBase.PipelineTask):
    """Score objects (multi-visit sequences of cutouts) with a sequence model package.

    Notes
    -----
    Output (see `run`): one row per object owned by the quantum's partition, sorted by
    ``objectId`` (associated objects first, then positional ones). Flags are
    `lsst.meas.rbnet.flags.ObjectFlag` bits.
    """

    ConfigClass = SequenceReliabilityConfig
    _DefaultName = "sequenceReliability"

    def load_scorer(self, package):
        """The process-wide `~lsst.meas.rbnet.sequence.scoring.SequenceScorer` of a package.

        Raises
        ------
        NoSequenceModelError
            If ``package`` is `None`.
        ValueError
            If the package is not a sequence package, or its version is not the expected one.
        """
        if package is None:
            raise NoSequenceModelError(no_model_message(self.config.connections.sequenceModel, "sequence"))
        if package.kind != "sequence":
            raise ValueError(
                f"The model found as {self.config.connections.sequenceModel!r} (version {package.version!r}) "
                f"is a {package.kind!r} package, not a 'sequence' one."
            )
        check_model_package(package, expected_version=self.config.expectedModelVersion, what="sequence model")
        set_threads(self.config.numThreads)
        # Imported here: torch stays out of task import and graph building.
        from ..sequence.scoring import load_sequence_scorer

        return load_sequence_scorer(package, self.config.device, self.config.chunkFrames)

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        partition = _sky_partition(butlerQC.quantum.dataId)
        model = butlerQC.get(inputRefs.sequenceModel)
        outputs = self.run(
            **read_visit_inputs(butlerQC, inputRefs), sequenceModel=model, partition=partition
        )
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(
        self,
        cutouts,
        sources,
        sequenceModel=None,
        times=None,
        visits=None,
        names=None,
        partition: SkyPartition | Callable | None = None,
    ):
        """Score every object the partition owns.

        Parameters
        ----------
        cutouts : `list` [`astropy.table.Table`]
            ``dia_source_cutouts`` tables (or deferred handles), one per (visit, detector).
        sources : `list` [`astropy.table.Table`]
            The matching source tables, same order (see `gather_frames`).
        sequenceModel : `lsst.meas.rbnet.package.ModelPackage`
            A package of kind ``"sequence"``.
        times, visits, names : `list`, optional
            Visit time (MJD), visit id and a name per dataset (see `gather_frames`).
        partition : `SkyPartition` or callable, optional
            Which objects to score: those whose mean position ``partition.contains(ra, dec)``
            (or ``partition(ra, dec)``); `None` scores every object.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``objectReliability``: `astropy.table.Table` with ``objectId`` int64, ``nVisits``
            int32 (frames in the scored sequence), ``nSources`` int32 (all the object's
            sources seen), ``firstMjd``/``lastMjd`` float64 (of the scored frames, else of all
            its sources), ``ra``/``dec`` float64 (mean position, deg), ``reliability``
            float32 (NaN when not scored), ``reliabilityVersion`` (<= 7 characters),
            ``flags`` int32 (`~lsst.meas.rbnet.flags.ObjectFlag`), ``tripletReliabilityMax``
            and ``tripletReliabilityMean`` float32 (single-visit scores of its sources).

        Raises
        ------
        NoSequenceModelError
            If there is no model.
        ValueError
            Bad inputs (see `gather_frames`) or a model that is not a sequence model.
        """
        config = self.config
        scorer = self.load_scorer(sequenceModel)
        version = scorer.version
        frames, groups = gather_objects(
            config, cutouts, sources, times, visits, names, scorer.frame_channels, scorer.frame_size
        )
        n_all = len(groups)
        table = score_objects(
            frames,
            groups,
            scorer,
            partition=partition,
            max_bad_fraction=config.maxBadFrameFraction,
            min_visits=config.minVisits,
            log=self.log,
            sources_name=config.connections.sources,
        )
        n_owned = len(table)
        reliability = np.asarray(table["reliability"])
        not_scored = ~np.isfinite(reliability)
        n_positional = int(np.count_nonzero(np.asarray(table["flags"]) & np.int32(ObjectFlag.POSITIONAL)))
        self.log.info(
            "Scored %d of %d objects owned by %s (%d sources in %d datasets; %d objects seen in all, %d "
            "positional) with sequence model %s; %d with reliability >= 0.5.",
            int(np.count_nonzero(~not_scored)),
            n_owned,
            partition if partition is not None else "the whole input",
            len(frames),
            len(cutouts),
            n_all,
            n_positional,
            version,
            int(np.count_nonzero(reliability >= 0.5)),
        )
        self.metadata["numObjects"] = n_owned
        self.metadata["numObjectsSeen"] = n_all
        self.metadata["numNotScored"] = int(np.count_nonzero(not_scored))
        self.metadata["modelVersion"] = version
        return pipeBase.Struct(objectReliability=table)
