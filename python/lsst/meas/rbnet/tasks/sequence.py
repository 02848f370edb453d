# This file is part of meas_rbnet.
"""The multi-visit sequence model in the Butler: training it and scoring objects with it.

The reliability task (``computeReliability`` with ``doWriteCutouts``) writes, per
(visit, detector), the raw stamps of every source (``dia_source_cutouts``) and the source
catalogue with the single-visit reliability added (``dia_source_unstandardized_reliability``).
Those two datasets are the frames of the sequence model:

- `TrainSequenceTask` (one quantum over everything the data query selects) groups the
  sources into objects, labels the objects, trains the frame VAE and the sequence
  classifier (`lsst.meas.rbnet.sequence.train.train_sequence_package`) and writes one model
  package (``pretrainedSequenceModelPackage``, storage class ``RBNetModelPackage``, kind
  ``"sequence"``) plus its metrics.
- `SequenceReliabilityTask` (one quantum per sky partition, ``instrument`` + ``htm7`` by
  default) groups the sources it sees into objects, keeps the objects the partition owns,
  encodes their frames and writes one row per object (``dia_object_sequence_reliability``).

Decisions
---------
Objects
    Sources with a non-zero ``diaObjectId`` (``objectIdColumn``) are grouped by it. The
    others are grouped by position: friends-of-friends within ``associationRadius`` arcsec
    (a KD-tree on unit vectors, chord distance), and such an object's id is the smallest
    source id among its sources, so every quantum that sees the same sources makes the same
    object with the same id whatever order the inputs come in. The two kinds are never
    merged; positional objects carry `~lsst.meas.rbnet.flags.ObjectFlag.POSITIONAL`.
Scored once
    A quantum scores only the objects whose mean position (mean of the sources' unit
    vectors) lies in its own sky pixel (``htm7`` index by default; any skypix dimension
    works, e.g. ``healpix8``); sky pixels do not overlap, so an object seen by two quanta
    near a boundary is scored by exactly one. With ``partitionDimensions = ["instrument"]``
    one quantum scores everything. An object without a finite position is scored only by a
    partition without a sky pixel (it cannot be placed). A source lying just outside every
    detector that the owning pixel's quantum reads (an object straddling a detector edge at
    a pixel boundary) is missing from that object's sequence: the data query joins
    detectors to sky pixels by region, without a margin.
Frames
    A frame is the centre ``frame_size`` pixels of a stamp in the model's channels (as
    `lsst.meas.rbnet.sequence.scoring.frames_from_stamps` cuts them). A frame is left out
    of its object's sequence when its source has an unscorable flag
    (`lsst.meas.rbnet.flags.UNSCORABLE`), more than ``maxBadFrameFraction`` of its pixels are
    NaN, or its time is unknown (`~lsst.meas.rbnet.flags.ObjectFlag.FRAMES_DROPPED`). Frames
    are in time order (then source id). An object with fewer than ``minVisits`` usable
    frames gets ``reliability`` NaN with ``NOT_SCORED`` and the reason.
Visit scores
    With ``useVisitScores`` (the default) the classifier also reads, for every frame, the
    single-visit reliability of its source (``scoreColumn``, ``reliability`` in
    ``dia_source_unstandardized_reliability``) as two features beside the latents: its
    logit and whether it was scored (`lsst.meas.rbnet.sequence.aggregate.visit_score_features`).
    The package records this in ``extra["frame_features"]`` and the scoring task passes the
    scores; a frame without one enters as "not scored" and its object is flagged
    `~lsst.meas.rbnet.flags.ObjectFlag.MISSING_VISIT_SCORES`.
Times
    The ``timeColumn`` of the sources (``midpointMjdTai`` as in the APDB) if the table has
    it, else the middle of the visit's timespan from the visit dimension record.
Labels (training)
    The labels dataset is ``rbnet_labels`` (``rbnet ingest-labels``), per source: by source
    ``id``, or by ``ra``/``dec``/``mjd`` when it has no ids. An object's label is the
    majority of its labelled sources' labels; objects without a label or with a tie are
    left out of training (counted in the metrics). A table with ``diaObjectId`` and
    ``label`` and no ``id`` column is read as per-object labels instead (point
    ``connections.labels`` at such a dataset).
"""

from __future__ import annotations

__all__ = [
    "SEQUENCE_MODEL_DATASET_TYPE",
    "SEQUENCE_RELIABILITY_DATASET_TYPE",
    "NoSequenceModelError",
    "SourceFrames",
    "ObjectGroups",
    "SkyPartition",
    "gather_frames",
    "group_sources",
    "object_positions",
    "object_labels",
    "empty_object_table",
    "TrainSequenceConnections",
    "TrainSequenceConfig",
    "TrainSequenceTask",
    "SequenceReliabilityConnections",
    "SequenceReliabilityConfig",
    "SequenceReliabilityTask",
]

import collections
import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

import astropy.table
import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from ..constants import CHANNEL_ORDER, VERSION_MAX_LENGTH
from ..contract import NORMALIZATIONS
from ..flags import ObjectFlag
from ..sequence.association import ObjectGroups, group_sources, object_positions
from ..sequence.frames import SourceFrames, gather_frames
from ..sequence.labels import object_labels, training_sequences
from ..sequence.objects import empty_object_table, score_objects
from ..sequence.partition import SkyPartition
from ..tables import TableColumnError, source_table_from_any
from .errors import MissingColumnError

#: Dataset type of the sequence model package (dimensionless, found by collection).
SEQUENCE_MODEL_DATASET_TYPE = "pretrainedSequenceModelPackage"

#: Dataset type of the per-object sequence reliability table.
SEQUENCE_RELIABILITY_DATASET_TYPE = "dia_object_sequence_reliability"

_VISIT_DIMS = ("instrument", "visit", "detector")

#: Recurrent architectures take ``hidden_size``; the Conv1D one takes ``channels``.
_WIDTH_ARGUMENT = {
    "seq_bigru": "hidden_size",
    "seq_gru": "hidden_size",
    "seq_lstm": "hidden_size",
    "seq_conv1d": "channels",
}


class NoSequenceModelError(FileNotFoundError):
    """No sequence model package was found for the sequence reliability task."""


def _no_model_message(dataset_type: str) -> str:
    return (
        f"No sequence model package ('{dataset_type}' dataset) was found. Train one with "
        "pipelines/TrainSequence.yaml and add its output collection to the inputs, or register one with "
        f"'rbnet register-model REPO PACKAGE --name NAME --dataset-type {dataset_type}' and add "
        "'pretrained_models' to the inputs."
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


# ----------------------------------------------------------------------
# Configuration shared by both tasks
# ----------------------------------------------------------------------


class _SequenceInputsConfig(pexConfig.Config):
    """Fields of both sequence tasks: how to read the sources and build the objects."""

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
    device = pexConfig.Field[str](doc="Torch device: auto, cpu, cuda or cuda:N.", default="auto")
    numThreads = pexConfig.Field[int](
        doc="CPU threads torch may use in this process (0 leaves torch's default).", default=0
    )

    def validate(self):
        super().validate()
        if not self.associationRadius > 0:
            raise pexConfig.FieldValidationError(
                _SequenceInputsConfig.associationRadius, self, "must be > 0 arcsec"
            )
        if not 0.0 <= self.maxBadFrameFraction <= 1.0:
            raise pexConfig.FieldValidationError(
                _SequenceInputsConfig.maxBadFrameFraction, self, "must be in [0, 1]"
            )
        if self.minVisits < 1:
            raise pexConfig.FieldValidationError(_SequenceInputsConfig.minVisits, self, "must be >= 1")
        if self.numThreads < 0:
            raise pexConfig.FieldValidationError(_SequenceInputsConfig.numThreads, self, "must be >= 0")


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _set_threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def _gather(
    config, cutouts, sources, *, channels, frame_size, score_column, times, visits, names
) -> SourceFrames:
    """`gather_frames` with the task's column and connection names; a missing column is a
    `MissingColumnError` (an `~lsst.pipe.base.AlgorithmError` with metadata)."""
    try:
        return gather_frames(
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


def _visit_times(refs) -> tuple[list[float | None], list[int | None], list[str]]:
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


def _sorted_refs(connection_refs):
    """Refs ordered by data ID, so that paired connections line up and results are reproducible."""
    return sorted(connection_refs, key=lambda r: tuple(sorted((k, v) for k, v in r.dataId.required.items())))


# ----------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------


class TrainSequenceConnections(pipeBase.PipelineTaskConnections, dimensions=()):
    """Connections of `TrainSequenceTask`: one quantum over all selected visits."""

    cutouts = cT.Input(
        doc="Raw per-source stamps of every selected (visit, detector), written by the reliability task "
        "with doWriteCutouts.",
        name="dia_source_cutouts",
        storageClass="ArrowAstropy",
        dimensions=_VISIT_DIMS,
        multiple=True,
        deferLoad=True,
    )
    sources = cT.Input(
        doc="The source catalogues matching the cutouts (id, ra, dec, optionally diaObjectId and a time).",
        name="dia_source_unstandardized_reliability",
        storageClass="ArrowAstropy",
        dimensions=_VISIT_DIMS,
        multiple=True,
        deferLoad=True,
    )
    labels = cT.Input(
        doc="Real/bogus labels: per source (rbnet_labels from rbnet ingest-labels: id or ra/dec/mjd, label) "
        "or per object (diaObjectId, label).",
        name="rbnet_labels",
        storageClass="ArrowAstropy",
        dimensions=("instrument",),
        multiple=True,
    )
    model = cT.Output(
        doc="The trained sequence model package (kind 'sequence': VAE encoder + sequence classifier).",
        name=SEQUENCE_MODEL_DATASET_TYPE,
        storageClass="RBNetModelPackage",
        dimensions=(),
    )
    metrics = cT.Output(
        doc="Held-out metrics, data summary and training settings of the sequence model.",
        name="rbnet_sequence_training_metrics",
        storageClass="StructuredDataDict",
        dimensions=(),
    )

    def adjustQuantum(self, inputs, outputs, label, data_id):
        _keep_pairs(inputs, label, data_id)
        return super().adjustQuantum(inputs, outputs, label, data_id)


def _keep_pairs(inputs, label, data_id) -> None:
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


class TrainSequenceConfig(
    pipeBase.PipelineTaskConfig, _SequenceInputsConfig, pipelineConnections=TrainSequenceConnections
):
    """Configuration of `TrainSequenceTask` (see `lsst.meas.rbnet.sequence.train`)."""

    channels = pexConfig.ListField[str](
        doc="Frame channels the model reads, from (difference, science, template); the RB_ZTF paper uses "
        "the science frame.",
        default=["science"],
    )
    frameSize = pexConfig.Field[int](
        doc="Side of the frames (pixels; <= the cutouts' side; the centre of each stamp).", default=28
    )
    normalization = pexConfig.ChoiceField[str](
        doc="Per-frame normalisation of the input contract.",
        allowed={n: n for n in NORMALIZATIONS},
        default="robust_asinh",
    )
    latentDim = pexConfig.Field[int](doc="Size of the VAE latent vector.", default=36)
    useVisitScores = pexConfig.Field[bool](
        doc="The classifier also reads each frame's single-visit reliability (the sources' scoreColumn, "
        "e.g. from dia_source_unstandardized_reliability) beside its latent vector, so it can combine "
        "the per-visit evidence better than a maximum or mean. The trained package then needs those "
        "scores when scoring.",
        default=True,
    )
    vaeHiddenChannels = pexConfig.ListField[int](
        doc="Channels of the VAE's strided convolutions; empty uses the architecture's (32..512).", default=[]
    )
    vaeEpochs = pexConfig.Field[int](doc="VAE training epochs.", default=8)
    vaeBatchSize = pexConfig.Field[int](doc="VAE frames per step.", default=256)
    vaeMaxFrames = pexConfig.Field[int](
        doc="Train the VAE on at most this many frames (0: all).", default=60000
    )
    vaeLearningRate = pexConfig.Field[float](doc="VAE Adam learning rate.", default=1e-3)
    architecture = pexConfig.ChoiceField[str](
        doc="Sequence classifier architecture.",
        allowed={
            "seq_bigru": "bidirectional GRU (default)",
            "seq_gru": "GRU",
            "seq_lstm": "LSTM",
            "seq_conv1d": "dilated Conv1D",
        },
        default="seq_bigru",
    )
    classifierWidth = pexConfig.Field[int](
        doc="Hidden units of the recurrent cell (channels of the Conv1D); 0 uses the architecture's.",
        default=0,
    )
    headHidden = pexConfig.Field[int](
        doc="Hidden units of the classifier head; 0 uses the default.", default=0
    )
    loss = pexConfig.ChoiceField[str](
        doc="Classifier loss.",
        allowed={"bce": "binary cross-entropy", "bce+tversky": "BCE + Tversky"},
        default="bce",
    )
    learningRate = pexConfig.Field[float](doc="Classifier peak learning rate.", default=1e-3)
    maxEpochs = pexConfig.Field[int](doc="Classifier epochs at most.", default=40)
    minEpochs = pexConfig.Field[int](doc="Classifier epochs at least (before early stopping).", default=5)
    patience = pexConfig.Field[int](doc="Early-stopping patience (epochs).", default=8)
    maxSeconds = pexConfig.Field[float](
        doc="Wall-time budget of the classifier's training (seconds; 0 = none).", default=0.0
    )
    testFraction = pexConfig.Field[float](
        doc="Share of the objects held out to measure the package's metrics (0: none).", default=0.2
    )
    version = pexConfig.Field[str](
        doc="reliabilityVersion of the trained package (1 to 7 characters).", default="seq1"
    )
    seed = pexConfig.Field[int](doc="Random seed (splits, initialisation, batches).", default=0)
    labelMatchRadius = pexConfig.Field[float](
        doc="Largest separation (arcsec) for matching labels without ids to sources by position.", default=1.0
    )
    labelTimeTolerance = pexConfig.Field[float](
        doc="Largest |label mjd - source time| (days) for matching labels without ids.", default=0.02
    )

    def validate(self):
        super().validate()
        if not 1 <= len(self.version) <= VERSION_MAX_LENGTH:
            raise pexConfig.FieldValidationError(
                TrainSequenceConfig.version, self, f"must have 1 to {VERSION_MAX_LENGTH} characters"
            )
        channels = tuple(self.channels)
        if (
            not channels
            or any(c not in CHANNEL_ORDER for c in channels)
            or len(set(channels)) != len(channels)
        ):
            raise pexConfig.FieldValidationError(
                TrainSequenceConfig.channels, self, f"must be distinct names from {CHANNEL_ORDER}"
            )
        if self.frameSize < 4:
            raise pexConfig.FieldValidationError(TrainSequenceConfig.frameSize, self, "must be >= 4")
        if not 0.0 <= self.testFraction < 0.5:
            raise pexConfig.FieldValidationError(
                TrainSequenceConfig.testFraction, self, "must be in [0, 0.5)"
            )
        for name in ("vaeEpochs", "maxEpochs", "patience", "latentDim", "vaeBatchSize"):
            if getattr(self, name) < 1:
                raise pexConfig.FieldValidationError(getattr(TrainSequenceConfig, name), self, "must be >= 1")


class TrainSequenceTask(pipeBase.PipelineTask):
    """Train the multi-visit sequence model (VAE + sequence classifier) from per-visit cutouts."""

    ConfigClass = TrainSequenceConfig
    _DefaultName = "trainSequence"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        cut_refs = _sorted_refs(inputRefs.cutouts)
        src_refs = _sorted_refs(inputRefs.sources)
        times, visits, names = _visit_times(cut_refs)
        labels = [butlerQC.get(ref) for ref in inputRefs.labels]
        provenance = {
            "inputs": len(cut_refs),
            "visits": sorted({v for v in visits if v is not None}),
            "collections": sorted({ref.run for ref in cut_refs}),
            "labels": sorted({ref.run for ref in inputRefs.labels}),
        }
        outputs = self.run(
            cutouts=[butlerQC.get(ref) for ref in cut_refs],
            sources=[butlerQC.get(ref) for ref in src_refs],
            labels=labels,
            times=times,
            visits=visits,
            names=names,
            provenance=provenance,
        )
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(self, cutouts, sources, labels, times=None, visits=None, names=None, provenance=None):
        """Group the sources into labelled objects and train the sequence model on them.

        Parameters
        ----------
        cutouts : `list` [`astropy.table.Table`]
            ``dia_source_cutouts`` tables (or deferred handles), one per (visit, detector).
        sources : `list` [`astropy.table.Table`]
            The matching source tables, same order.
        labels : `astropy.table.Table` or `list` [`astropy.table.Table`]
            Labels (see `object_labels`); a list is stacked.
        times, visits, names : `list`, optional
            Visit time (MJD), visit id and a name per dataset (see `gather_frames`).
        provenance : `dict`, optional
            Recorded in the package.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``model`` (`~lsst.meas.rbnet.package.ModelPackage`, kind ``"sequence"``) and
            ``metrics`` (`dict`).

        Raises
        ------
        ValueError
            Bad inputs (see `gather_frames`), or too few labelled objects of either class.
        """
        from ..sequence.train import (
            SequencePackageConfig,
            SequenceTrainConfig,
            VAETrainConfig,
            train_sequence_package,
        )

        config = self.config
        _set_threads(config.numThreads)
        device = _resolve_device(config.device)
        frames = _gather(
            config,
            cutouts,
            sources,
            channels=config.channels,
            frame_size=config.frameSize,
            score_column=config.scoreColumn if config.useVisitScores else "",
            times=times,
            visits=visits,
            names=names,
        )
        if isinstance(labels, (list, tuple)):
            tables = [source_table_from_any(t, name=f"labels ({config.connections.labels})") for t in labels]
            tables = [t for t in tables if len(t)]
            labels = astropy.table.vstack(tables, join_type="outer") if tables else None
        if labels is None or len(labels) == 0:
            raise ValueError(f"The labels ({config.connections.labels}) are empty.")
        groups = group_sources(
            frames.ra, frames.dec, frames.object_id, frames.source_id, config.associationRadius
        )
        obj_label, counts = object_labels(
            frames,
            groups,
            labels,
            match_radius=config.labelMatchRadius,
            time_tolerance=config.labelTimeTolerance,
        )
        use_obj, rows, offsets, bad = training_sequences(
            frames,
            groups,
            obj_label,
            max_bad_fraction=config.maxBadFrameFraction,
            min_visits=config.minVisits,
        )
        n_real = int(np.count_nonzero(obj_label[use_obj] == 1))
        n_bogus = int(np.count_nonzero(obj_label[use_obj] == 0))
        self.log.info(
            "%d sources in %d objects (%d positional); %d labelled objects with >= %d usable frames "
            "(%d real, %d bogus); %d frames left out.",
            len(frames),
            len(groups),
            int(np.count_nonzero(groups.positional)),
            int(np.count_nonzero(use_obj)),
            config.minVisits,
            n_real,
            n_bogus,
            int(np.count_nonzero(bad)),
        )
        need = 4
        if n_real < need or n_bogus < need:
            raise ValueError(
                f"Too few labelled objects to train the sequence model: {n_real} real and {n_bogus} bogus "
                f"(need at least {need} of each) from {len(groups)} objects in {len(cutouts)} datasets; "
                f"{counts['labelled_sources']} of {len(frames)} sources matched a label."
            )
        hp_vae: dict[str, Any] = {"latent_dim": int(config.latentDim)}
        if config.vaeHiddenChannels:
            hp_vae["hidden_channels"] = [int(c) for c in config.vaeHiddenChannels]
        hp_cls: dict[str, Any] = {}
        if config.classifierWidth:
            hp_cls[_WIDTH_ARGUMENT[config.architecture]] = int(config.classifierWidth)
        if config.headHidden:
            hp_cls["head_hidden"] = int(config.headHidden)
        package_config = SequencePackageConfig(
            vae=VAETrainConfig(
                hyperparameters=hp_vae,
                lr=config.vaeLearningRate,
                epochs=config.vaeEpochs,
                batch_size=config.vaeBatchSize,
                max_frames=config.vaeMaxFrames,
                seed=config.seed,
                device=device,
            ),
            classifier=SequenceTrainConfig(
                architecture=config.architecture,
                hyperparameters=hp_cls,
                loss=config.loss,
                lr=config.learningRate,
                max_epochs=config.maxEpochs,
                min_epochs=min(config.minEpochs, config.maxEpochs),
                patience=config.patience,
                max_seconds=config.maxSeconds or None,
                seed=config.seed,
                device=device,
            ),
            normalization=config.normalization,
            channels=tuple(config.channels),
            test_fraction=config.testFraction,
            version=config.version,
            seed=config.seed,
        )
        kept_ids = groups.object_id[use_obj]
        visit_scores = None
        if config.useVisitScores:
            visit_scores = frames.triplet_score[rows]
            if not np.any(np.isfinite(visit_scores)):
                raise ValueError(
                    f"useVisitScores is set but none of the {len(rows)} training frames has a single-visit "
                    f"score: the sources ({config.connections.sources}) need a finite "
                    f"{config.scoreColumn!r} column (scoreColumn); or set useVisitScores=False."
                )
        package, metrics = train_sequence_package(
            frames.frames[rows],
            offsets,
            obj_label[use_obj].astype(np.int8),
            frames.mjd[rows],
            package_config,
            frame_channels=frames.channels,
            object_ids=kept_ids,
            provenance=dict(provenance or {}, task=self._DefaultName),
            log=lambda line: self.log.info("%s", line),
            visit_scores=visit_scores,
            visit_score_versions=frames.score_versions if visit_scores is not None else None,
        )
        summary = {
            "metrics": metrics,
            "version": package.version,
            "n_sources": int(len(frames)),
            "n_objects": int(len(groups)),
            "n_positional_objects": int(np.count_nonzero(groups.positional)),
            "n_train_objects": int(np.count_nonzero(use_obj)),
            "n_real": n_real,
            "n_bogus": n_bogus,
            "n_frames": int(len(rows)),
            "n_frames_left_out": int(np.count_nonzero(bad)),
            "n_unlabelled_objects": int(np.count_nonzero(obj_label < 0)),
            "n_labelled_sources": counts["labelled_sources"],
            "n_conflicting_objects": counts["conflicting_objects"],
            "frame_size": int(config.frameSize),
            "channels": list(config.channels),
            "architecture": config.architecture,
        }
        self.metadata["numTrainObjects"] = int(np.count_nonzero(use_obj))
        self.metadata["modelVersion"] = package.version
        return pipeBase.Struct(model=package, metrics=_plain(summary))


def _plain(value):
    """JSON/YAML-safe copy (numpy scalars and arrays to Python types, NaN kept as float)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ----------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------


_scorers: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_scorers_lock = threading.Lock()


def _load_sequence_scorer(package, device: str, chunk_frames: int):
    """A `SequenceScorer` per (package weights + metadata, device, chunk), kept for the process."""
    from ..sequence.scoring import SequenceScorer

    meta = json.dumps(package.metadata(), sort_keys=True, default=str)
    key = (package.digest, hashlib.sha256(meta.encode()).hexdigest(), device, int(chunk_frames))
    with _scorers_lock:
        scorer = _scorers.get(key)
        if scorer is None:
            scorer = SequenceScorer(package, device=device, chunk_frames=chunk_frames)
            _scorers[key] = scorer
            while len(_scorers) > 2:
                _scorers.popitem(last=False)
        else:
            _scorers.move_to_end(key)
    return scorer


class SequenceReliabilityConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=("instrument", "htm7"),
):
    """Connections of `SequenceReliabilityTask`; the quantum dimensions are ``config.partitionDimensions``."""

    cutouts = cT.Input(
        doc="Raw per-source stamps of every (visit, detector) overlapping the partition (reliability task "
        "with doWriteCutouts).",
        name="dia_source_cutouts",
        storageClass="ArrowAstropy",
        dimensions=_VISIT_DIMS,
        multiple=True,
        deferLoad=True,
    )
    sources = cT.Input(
        doc="The source catalogues matching the cutouts (id, ra, dec, optionally diaObjectId, a time and "
        "the single-visit reliability).",
        name="dia_source_unstandardized_reliability",
        storageClass="ArrowAstropy",
        dimensions=_VISIT_DIMS,
        multiple=True,
        deferLoad=True,
    )
    sequenceModel = cT.PrerequisiteInput(
        doc="Sequence model package (kind 'sequence'), found by collection, e.g. pretrained_models/<name>.",
        name=SEQUENCE_MODEL_DATASET_TYPE,
        storageClass="RBNetModelPackage",
        dimensions=(),
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

    def adjustQuantum(self, inputs, outputs, label, data_id):
        if "sequenceModel" in inputs:
            connection, refs = inputs["sequenceModel"]
            if len(refs) == 0:
                raise NoSequenceModelError(f"{label} ({data_id}): " + _no_model_message(connection.name))
        _keep_pairs(inputs, label, data_id)
        return super().adjustQuantum(inputs, outputs, label, data_id)


class SequenceReliabilityConfig(
    pipeBase.PipelineTaskConfig, _SequenceInputsConfig, pipelineConnections=SequenceReliabilityConnections
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
        if not self.partitionDimensions:
            raise pexConfig.FieldValidationError(
                SequenceReliabilityConfig.partitionDimensions, self, "must not be empty (e.g. ['instrument'])"
            )
        if self.chunkFrames < 1:
            raise pexConfig.FieldValidationError(SequenceReliabilityConfig.chunkFrames, self, "must be >= 1")


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
            raise NoSequenceModelError(_no_model_message(self.config.connections.sequenceModel))
        if package.kind != "sequence":
            raise ValueError(
                f"The model found as {self.config.connections.sequenceModel!r} (version {package.version!r}) "
                f"is a {package.kind!r} package, not a 'sequence' one."
            )
        if self.config.expectedModelVersion and package.version != self.config.expectedModelVersion:
            raise ValueError(
                f"The sequence model found has version {package.version!r}, but config.expectedModelVersion "
                f"is {self.config.expectedModelVersion!r}; check the input collections."
            )
        if len(package.version) > VERSION_MAX_LENGTH:
            raise ValueError(
                f"Model version {package.version!r} is longer than {VERSION_MAX_LENGTH} characters."
            )
        _set_threads(self.config.numThreads)
        return _load_sequence_scorer(package, _resolve_device(self.config.device), self.config.chunkFrames)

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        cut_refs = _sorted_refs(inputRefs.cutouts)
        src_refs = _sorted_refs(inputRefs.sources)
        times, visits, names = _visit_times(cut_refs)
        partition = _sky_partition(butlerQC.quantum.dataId)
        model = butlerQC.get(inputRefs.sequenceModel)
        outputs = self.run(
            cutouts=[butlerQC.get(ref) for ref in cut_refs],
            sources=[butlerQC.get(ref) for ref in src_refs],
            sequenceModel=model,
            times=times,
            visits=visits,
            names=names,
            partition=partition,
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
        frames = _gather(
            config,
            cutouts,
            sources,
            channels=scorer.frame_channels,
            frame_size=scorer.frame_size,
            score_column=config.scoreColumn,
            times=times,
            visits=visits,
            names=names,
        )
        groups = group_sources(
            frames.ra, frames.dec, frames.object_id, frames.source_id, config.associationRadius
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
