# This file is part of meas_rbnet.
"""What both sequence tasks share: dataset types, the input config fields and reading the inputs.

See `lsst.meas.rbnet.tasks.sequence` for the decisions of the two tasks.
"""

from __future__ import annotations

__all__ = [
    "SEQUENCE_MODEL_DATASET_TYPE",
    "SEQUENCE_RELIABILITY_DATASET_TYPE",
    "VISIT_DIMENSIONS",
    "PairedVisitInputs",
    "SequenceInputsConfig",
    "gather_objects",
    "keep_pairs",
    "read_visit_inputs",
    "set_threads",
    "sorted_refs",
    "visit_times",
]

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase

from ..sequence.association import ObjectGroups, group_sources
from ..sequence.frames import SourceFrames, gather_frames
from ..tables import TableColumnError
from .config_checks import TorchRuntimeConfig, check_field
from .connections import VISIT_DIMENSIONS
from .errors import MissingColumnError

#: Dataset type of the sequence model package (dimensionless, found by collection).
SEQUENCE_MODEL_DATASET_TYPE = "pretrainedSequenceModelPackage"

#: Dataset type of the per-object sequence reliability table.
SEQUENCE_RELIABILITY_DATASET_TYPE = "dia_object_sequence_reliability"


class SequenceInputsConfig(TorchRuntimeConfig):
    """Fields of both sequence tasks: how to read the sources and build the objects (and, from
    `TorchRuntimeConfig`, ``device`` and ``numThreads``)."""

    idColumn = pexConfig.Field[str](doc="Source id column of the source table.", default="id")
    raColumn = pexConfig.Field[str](doc="Right ascension column of the sources (degrees).", default="ra")
    decColumn = pexConfig.Field[str](doc="Declination column of the sources (degrees).", default="dec")
    objectIdColumn = pexConfig.Field[str](
        doc="Object id column of the sources (e.g. diaObjectId); sources with 0 there, or tables without "
        "it, are associated by position. Empty: always by position.",
        default="diaObjectId",
    )
    timeColumn = pexConfig.Field[str](
        doc="Time column of the sources (MJD, TAI); if a table lacks it, the middle of the visit's timespan "
        "(visit dimension record) is used.",
        default="midpointMjdTai",
    )
    scoreColumn = pexConfig.Field[str](
        doc="Single-visit reliability column of the sources: aggregated per object into "
        "tripletReliabilityMax/Mean (NaN if the column is absent) and read by sequence models trained "
        "with useVisitScores.",
        default="reliability",
    )
    associationRadius = pexConfig.Field[float](
        doc="Friends-of-friends linking length (arcsec) of the positional association of sources without "
        "an object id.",
        default=1.0,
    )
    maxBadFrameFraction = pexConfig.Field[float](
        doc="A frame with more than this fraction of NaN (untrusted) pixels is left out of its object's "
        "sequence (flag FRAMES_DROPPED).",
        default=0.5,
    )
    minVisits = pexConfig.Field[int](
        doc="Objects with fewer usable frames are not scored (reliability NaN, TOO_FEW_VISITS) or, when "
        "training, not trained on.",
        default=1,
    )

    def validate(self):
        super().validate()
        check_field(self, "associationRadius", self.associationRadius > 0, "must be > 0 arcsec")
        check_field(self, "maxBadFrameFraction", 0.0 <= self.maxBadFrameFraction <= 1.0, "must be in [0, 1]")
        check_field(self, "minVisits", self.minVisits >= 1, "must be >= 1")


def set_threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def gather_objects(
    config, cutouts, sources, times, visits, names, channels, frame_size, score_column: str | None = None
) -> tuple[SourceFrames, ObjectGroups]:
    """The frames of a sequence task's inputs and the objects they belong to.

    `gather_frames` with the task's column and connection names, then `group_sources`
    (``diaObjectId``, else friends-of-friends within ``config.associationRadius``).

    Parameters
    ----------
    config : `SequenceInputsConfig`
        The task's config (columns, connection names, association radius).
    cutouts, sources, times, visits, names : `list`
        The task's ``run`` arguments of those names, one item per (visit, detector).
    channels : `tuple` [`str`, ...]
        Frame channels to read.
    frame_size : `int`
        Frame side (pixels).
    score_column : `str`, optional
        Single-visit score column: ``config.scoreColumn`` by default, ``""`` for none.

    Raises
    ------
    MissingColumnError
        A column is missing (an `~lsst.pipe.base.AlgorithmError` with metadata).
    """
    if score_column is None:
        score_column = config.scoreColumn
    try:
        frames = gather_frames(
            cutouts,
            sources,
            channels=channels,
            frame_size=frame_size,
            times=times,
            visits=visits,
            names=names,
            id_column=config.idColumn,
            ra_column=config.raColumn,
            dec_column=config.decColumn,
            object_id_column=config.objectIdColumn,
            time_column=config.timeColumn,
            score_column=score_column,
            cutouts_name=config.connections.cutouts,
            sources_name=config.connections.sources,
        )
    except TableColumnError as err:
        raise MissingColumnError(str(err), **err.details) from err
    groups = group_sources(
        frames.ra, frames.dec, frames.object_id, frames.source_id, config.associationRadius
    )
    return frames, groups


def visit_times(refs) -> tuple[list[float | None], list[int | None], list[str]]:
    """Mid-time (MJD TAI), visit id and a name of each input ref, from its data ID."""
    times: list[float | None] = []
    visits: list[int | None] = []
    names: list[str] = []
    for ref in refs:
        data_id = ref.dataId
        mjd = None
        if data_id.hasRecords() and "visit" in data_id.dimensions.names:
            record = data_id.records["visit"]
            if record is not None and record.timespan is not None:
                begin, end = record.timespan.begin, record.timespan.end
                if begin is not None and end is not None:
                    mjd = float((begin.tai.mjd + end.tai.mjd) / 2)
        times.append(mjd)
        visits.append(int(data_id["visit"]) if "visit" in data_id.dimensions.names else None)
        names.append(str(data_id.required))
    return times, visits, names


def sorted_refs(connection_refs):
    """Refs ordered by data ID, so that paired connections line up and results are reproducible."""
    return sorted(connection_refs, key=lambda r: tuple(sorted((k, v) for k, v in r.dataId.required.items())))


def keep_pairs(inputs, label, data_id) -> None:
    """Keep only the (visit, detector)s that have both their cutouts and their sources."""
    cut_conn, cut_refs = inputs["cutouts"]
    src_conn, src_refs = inputs["sources"]
    both = {r.dataId.required_values for r in cut_refs} & {r.dataId.required_values for r in src_refs}
    if not both:
        raise pipeBase.NoWorkFound(
            f"{label} ({data_id}): no (visit, detector) has both {cut_conn.name} and {src_conn.name}."
        )
    inputs["cutouts"] = (cut_conn, [r for r in cut_refs if r.dataId.required_values in both])
    inputs["sources"] = (src_conn, [r for r in src_refs if r.dataId.required_values in both])


class PairedVisitInputs:
    """Connections mixin of the sequence tasks (before `~lsst.pipe.base.PipelineTaskConnections`
    in the bases): a quantum keeps only the (visit, detector)s with both their cutouts and
    their sources (`keep_pairs`)."""

    def adjustQuantum(self, inputs, outputs, label, data_id):
        keep_pairs(inputs, label, data_id)
        return super().adjustQuantum(inputs, outputs, label, data_id)


def read_visit_inputs(butlerQC, inputRefs) -> dict:
    """The per-visit inputs of a quantum as keyword arguments of a sequence task's ``run``.

    Returns
    -------
    inputs : `dict`
        ``cutouts`` and ``sources`` (deferred handles, paired and in data-ID order),
        ``times``, ``visits`` and ``names`` (see `visit_times`).
    """
    cut_refs = sorted_refs(inputRefs.cutouts)
    src_refs = sorted_refs(inputRefs.sources)
    times, visits, names = visit_times(cut_refs)
    return dict(
        cutouts=[butlerQC.get(ref) for ref in cut_refs],
        sources=[butlerQC.get(ref) for ref in src_refs],
        times=times,
        visits=visits,
        names=names,
    )
