# This file is part of meas_rbnet.
"""`TrainSequenceTask`: trains the multi-visit sequence model from per-visit cutouts.

One quantum over everything the data query selects: groups the sources into objects
(`lsst.meas.rbnet.sequence.association`), labels them (`lsst.meas.rbnet.sequence.labels`),
trains the frame VAE and the sequence classifier
(`lsst.meas.rbnet.sequence.train.train_sequence_package`) and writes one model package
(``pretrainedSequenceModelPackage``) plus its metrics. Decisions: `lsst.meas.rbnet.tasks.sequence`.
"""

from __future__ import annotations

__all__ = ["TrainSequenceConnections", "TrainSequenceConfig", "TrainSequenceTask"]

from typing import Any

import astropy.table
import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from ..contract import NORMALIZATIONS
from ..sequence.labels import object_labels, training_sequences
from ..tables import source_table_from_any
from .config_checks import check_channels, check_field, check_version
from .connections import global_output, visit_input
from .metrics import plain_metrics
from .sequence_inputs import (
    SEQUENCE_MODEL_DATASET_TYPE,
    PairedVisitInputs,
    SequenceInputsConfig,
    gather_objects,
    read_visit_inputs,
    set_threads,
)

#: Recurrent architectures take ``hidden_size``; the Conv1D one takes ``channels``.
_WIDTH_ARGUMENT = {
    "seq_bigru": "hidden_size",
    "seq_gru": "hidden_size",
    "seq_lstm": "hidden_size",
    "seq_conv1d": "channels",
}


class TrainSequenceConnections(PairedVisitInputs, pipeBase.PipelineTaskConnections, dimensions=()):
    """Connections of `TrainSequenceTask`: one quantum over all selected visits."""

    cutouts = visit_input(
        "dia_source_cutouts",
        "ArrowAstropy",
        "Raw per-source stamps of every selected (visit, detector), written by the reliability task "
        "with doWriteCutouts.",
        multiple=True,
        deferLoad=True,
    )
    sources = visit_input(
        "dia_source_unstandardized_reliability",
        "ArrowAstropy",
        "The source catalogues matching the cutouts (id, ra, dec, optionally diaObjectId and a time).",
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
    model = global_output(
        SEQUENCE_MODEL_DATASET_TYPE,
        "RBNetModelPackage",
        "The trained sequence model package (kind 'sequence': VAE encoder + sequence classifier).",
    )
    metrics = global_output(
        "rbnet_sequence_training_metrics",
        "StructuredDataDict",
        "Held-out metrics, data summary and training settings of the sequence model.",
    )


class TrainSequenceConfig(
    pipeBase.PipelineTaskConfig, SequenceInputsConfig, pipelineConnections=TrainSequenceConnections
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
        check_version(self)
        check_channels(self)
        check_field(self, "frameSize", self.frameSize >= 4, "must be >= 4")
        check_field(self, "testFraction", 0.0 <= self.testFraction < 0.5, "must be in [0, 0.5)")
        for name in ("vaeEpochs", "maxEpochs", "patience", "latentDim", "vaeBatchSize"):
            check_field(self, name, getattr(self, name) >= 1, "must be >= 1")


class TrainSequenceTask(pipeBase.PipelineTask):
    """Train the multi-visit sequence model (VAE + sequence classifier) from per-visit cutouts."""

    ConfigClass = TrainSequenceConfig
    _DefaultName = "trainSequence"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        labels = [butlerQC.get(ref) for ref in inputRefs.labels]
        inputs = read_visit_inputs(butlerQC, inputRefs)
        provenance = {
            "inputs": len(inputRefs.cutouts),
            "visits": sorted({v for v in inputs["visits"] if v is not None}),
            "collections": sorted({ref.run for ref in inputRefs.cutouts}),
            "labels": sorted({ref.run for ref in inputRefs.labels}),
        }
        outputs = self.run(**inputs, labels=labels, provenance=provenance)
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
        from ..scoring import select_device

        config = self.config
        set_threads(config.numThreads)
        device = str(select_device(config.device))
        score_column = None if config.useVisitScores else ""
        frames, groups = gather_objects(
            config, cutouts, sources, times, visits, names, config.channels, config.frameSize, score_column
        )
        if isinstance(labels, (list, tuple)):
            tables = [source_table_from_any(t, name=f"labels ({config.connections.labels})") for t in labels]
            tables = [t for t in tables if len(t)]
            labels = astropy.table.vstack(tables, join_type="outer") if tables else None
        if labels is None or len(labels) == 0:
            raise ValueError(f"The labels ({config.connections.labels}) are empty.")
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
        # Both stages train with the task's seed on its device.
        stage = dict(seed=config.seed, device=device)
        package_config = SequencePackageConfig(
            vae=VAETrainConfig(
                hyperparameters=hp_vae,
                lr=config.vaeLearningRate,
                epochs=config.vaeEpochs,
                batch_size=config.vaeBatchSize,
                max_frames=config.vaeMaxFrames,
                **stage,
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
                **stage,
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
        return pipeBase.Struct(model=package, metrics=plain_metrics(summary))
