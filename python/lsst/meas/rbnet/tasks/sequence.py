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

Modules: `lsst.meas.rbnet.tasks.train_sequence` (`TrainSequenceTask`),
`lsst.meas.rbnet.tasks.sequence_reliability` (`SequenceReliabilityTask`),
`lsst.meas.rbnet.tasks.sequence_inputs` (what both share); the science on arrays and
tables is in `lsst.meas.rbnet.sequence` (`frames`, `association`, `partition`, `labels`,
`objects`). This module gathers their names so that pipelines and configs naming
``lsst.meas.rbnet.tasks.sequence.X`` keep working.
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

from ..sequence.association import ObjectGroups, group_sources, object_positions
from ..sequence.frames import SourceFrames, gather_frames
from ..sequence.labels import object_labels
from ..sequence.objects import empty_object_table
from ..sequence.partition import SkyPartition
from .sequence_inputs import SEQUENCE_MODEL_DATASET_TYPE, SEQUENCE_RELIABILITY_DATASET_TYPE
from .sequence_reliability import (
    NoSequenceModelError,
    SequenceReliabilityConfig,
    SequenceReliabilityConnections,
    SequenceReliabilityTask,
)
from .train_sequence import TrainSequenceConfig, TrainSequenceConnections, TrainSequenceTask
