# This file is part of meas_rbnet.
"""Train a triplet model from labelled cutouts in the Butler.

One quantum reads every ``rbnet_labelled_cutouts`` dataset selected by the data
query (``multiple=True``) and writes a model package (storage class
``RBNetModelPackage``) that the reliability task can use as it is, plus the training
metrics (``StructuredDataDict``) and two plots (``Plot``: ROC on the validation set,
loss and AUC per epoch).

The package's dataset type is ``pretrainedModelPackage`` by default, the name the
reliability task looks for, so a model trained into collection ``C`` is deployed by
adding ``C`` to the inputs of the reliability pipeline (``-i C,...``), or by
registering it under ``pretrained_models/<name>`` with ``rbnet register-model``. The
training and the reliability pipelines must stay separate pipelines: a prerequisite
input cannot be made by the same pipeline.

Fine-tuning (``initFromPretrained``): the task also takes a model package as a
dimensionless prerequisite input found by collection (``pretrainedModel``, dataset
type ``pretrainedModelPackage``, e.g. from ``pretrained_models/default``), starts
from its weights and trains with ``fineTuneLearningRate`` (3e-4 by default, 3e-3
with ``freezeFeatures``). The package fixes the
input contract and the architecture: ``stampSize``, ``channels``, ``normalization``,
``architecture``, ``widths`` and ``hidden`` are then ignored (a warning is logged
for each that differs). The output must then be another dataset type than the
input model (``connections.model``, e.g. ``rbnetFineTunedModelPackage``), since a
quantum cannot make its own prerequisite; the reliability task reads it with
``connections.pretrainedModel`` set to that name. See ``doc/fine-tuning.md``.
"""

from __future__ import annotations

__all__ = ["TrainTripletConnections", "TrainTripletConfig", "TrainTripletTask", "TrainingLog", "training_figures"]

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
from lsst.utils.logging import PeriodicLogger
from lsst.utils.timer import timeMethod

from ..constants import CHANNEL_ORDER, DEFAULT_STAMP_SIZE, REAL
from ..contract import NORMALIZATIONS
from .config_checks import check_version
from .connections import global_output, model_input, visit_input
from .metrics import plain_metrics


class TrainTripletConnections(pipeBase.PipelineTaskConnections, dimensions=()):
    """Connections of `TrainTripletTask`: one quantum over all selected cutouts."""

    cutouts = visit_input(
        "rbnet_labelled_cutouts",
        "ArrowAstropy",
        "Labelled raw stamps (from LabelledCutoutsTask), all of them.",
        multiple=True,
    )
    model = global_output(
        "pretrainedModelPackage",
        "RBNetModelPackage",
        "The trained, calibrated model package (usable as the reliability task's pretrainedModel).",
    )
    metrics = global_output(
        "rbnet_training_metrics",
        "StructuredDataDict",
        "Validation metrics, per-epoch history and data summary.",
    )
    rocPlot = global_output(
        "rbnet_training_roc", "Plot", "ROC curve and score histograms on the validation set."
    )
    historyPlot = global_output(
        "rbnet_training_history", "Plot", "Training and validation loss and validation AUC per epoch."
    )
    pretrainedModel = model_input(
        "pretrainedModelPackage",
        "Trained model package to fine-tune from (only with config.initFromPretrained), found by "
        "collection, e.g. pretrained_models/<name>.",
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None and not config.doPlots:
            del self.rocPlot
            del self.historyPlot
        if config is not None and not config.initFromPretrained:
            del self.pretrainedModel


class TrainTripletConfig(pipeBase.PipelineTaskConfig, pipelineConnections=TrainTripletConnections):
    """Configuration of `TrainTripletTask` (see `lsst.meas.rbnet.training.TrainConfig`)."""

    architecture = pexConfig.Field[str](doc="Registered architecture name.", default="triplet_cnn")
    widths = pexConfig.ListField[int](
        doc="Convolution widths per block (triplet_cnn); empty uses the architecture's default.", default=[]
    )
    hidden = pexConfig.Field[int](
        doc="Hidden units of the head (triplet_cnn); 0 uses the default.", default=0
    )
    stampSize = pexConfig.Field[int](
        doc="Stamp side the model takes (pixels, odd, <= the cutouts' size; larger cutouts are cropped).",
        default=DEFAULT_STAMP_SIZE,
    )
    channels = pexConfig.ListField[str](
        doc="Channels the model reads, a subsequence of (difference, science, template).",
        default=list(CHANNEL_ORDER),
    )
    normalization = pexConfig.ChoiceField[str](
        doc="Per-stamp normalisation of the input contract.",
        allowed={n: n for n in NORMALIZATIONS},
        default="robust_asinh",
    )
    epochs = pexConfig.Field[int](doc="Maximum number of epochs.", default=10)
    batchSize = pexConfig.Field[int](doc="Training batch size.", default=256)
    learningRate = pexConfig.Field[float](doc="Peak AdamW learning rate.", default=3e-3)
    loss = pexConfig.Field[str](doc="Loss: bce, focal or tversky.", default="bce")
    classLossWeight = pexConfig.Field[float](
        doc="Weight of the artifact-class head's loss (0 disables the head).", default=0.2
    )
    patience = pexConfig.Field[int](doc="Early-stopping patience (epochs).", default=3)
    validationFraction = pexConfig.Field[float](doc="Fraction held out for validation.", default=0.15)
    augment = pexConfig.Field[bool](doc="Random rotations/flips while training.", default=True)
    seed = pexConfig.Field[int](doc="Random seed (split, initialisation, batches).", default=0)
    device = pexConfig.Field[str](doc="Torch device: auto, cpu, cuda, cuda:N.", default="auto")
    numThreads = pexConfig.Field[int](doc="CPU threads for torch (0 leaves the default).", default=0)
    maxSeconds = pexConfig.Field[float](
        doc="Wall-time budget of the training epochs (seconds; 0 = none).", default=0.0
    )
    version = pexConfig.Field[str](
        doc="reliabilityVersion of the trained package (1 to 7 characters).", default="trained"
    )
    doPlots = pexConfig.Field[bool](doc="Write the ROC and history plots.", default=True)
    initFromPretrained = pexConfig.Field[bool](
        doc="Fine-tune: start from the weights of the model package found by collection (the "
        "pretrainedModel prerequisite input, e.g. pretrained_models/default) instead of a random "
        "initialisation. Its input contract and architecture are used (stampSize, channels, "
        "normalization, architecture, widths and hidden are ignored) and learningRate is replaced by "
        "fineTuneLearningRate. connections.model must then name another dataset type than "
        "connections.pretrainedModel.",
        default=False,
    )
    fineTuneLearningRate = pexConfig.Field[float](
        doc="Peak AdamW learning rate with initFromPretrained. None: 3e-4 when all layers train (a tenth "
        "of the from-scratch default, so a few hundred labels refine the trained features rather than "
        "overwrite them), 3e-3 with freezeFeatures (only the head moves).",
        default=None,
        optional=True,
    )
    freezeFeatures = pexConfig.Field[bool](
        doc="With initFromPretrained: keep the package's convolutional features fixed and train only "
        "the head.",
        default=False,
    )

    def validate(self):
        super().validate()
        if self.freezeFeatures and not self.initFromPretrained:
            raise pexConfig.FieldValidationError(
                TrainTripletConfig.freezeFeatures, self, "needs initFromPretrained (features to keep)"
            )
        if self.initFromPretrained and self.connections.model == self.connections.pretrainedModel:
            raise pexConfig.FieldValidationError(
                TrainTripletConfig.initFromPretrained,
                self,
                f"the fine-tuned model (connections.model) and the model it starts from "
                f"(connections.pretrainedModel) are both {self.connections.model!r}; a quantum cannot make "
                "its own prerequisite input. Set connections.model to another name, e.g. "
                "'rbnetFineTunedModelPackage'",
            )
        check_version(self)
        if any(c not in CHANNEL_ORDER for c in self.channels):
            raise pexConfig.FieldValidationError(
                TrainTripletConfig.channels, self, f"must be names from {CHANNEL_ORDER}"
            )


def training_figures(result) -> tuple:
    """ROC/histogram and history figures of a `TrainResult` (matplotlib Figures, no pyplot)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from ..training import metrics as M
    from ..training.plots import RocLine, draw_roc

    val = result.validation
    fig_roc = Figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig_roc.subplots(1, 2)
    labels = np.asarray(val.labels)
    probs = np.asarray(val.probabilities)
    lines = []
    if len(np.unique(labels)) == 2:
        fpr, tpr, _ = M.roc_curve(probs, labels)
        lines.append(RocLine(fpr, tpr, f"AUC = {M.roc_auc(probs, labels):.4f}"))
    draw_roc(
        ax1,
        lines,
        title="Validation ROC",
        xlabel="false positive rate",
        ylabel="true positive rate",
        limits=False,
        chance={"ls": ":", "color": "grey"},
        grid=False,
    )
    bins = np.linspace(0, 1, 41)
    ax2.hist(probs[labels == REAL], bins=bins, histtype="step", label="real", density=True)
    ax2.hist(probs[labels != REAL], bins=bins, histtype="step", label="bogus", density=True)
    ax2.set_yscale("log")
    ax2.set_xlabel("reliability")
    ax2.set_title("Validation scores")
    ax2.legend()
    fig_hist = Figure(figsize=(6, 4), layout="constrained")
    ax = fig_hist.subplots()
    epochs = [h["epoch"] for h in result.history]
    ax.plot(epochs, [h.get("train_loss") for h in result.history], label="train loss")
    ax.plot(epochs, [h.get("val_loss") for h in result.history], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2b = ax.twinx()
    ax2b.plot(epochs, [h.get("val_auc") for h in result.history], color="k", ls="--", label="validation AUC")
    ax2b.set_ylabel("AUC")
    ax.legend(loc="upper right")
    return fig_roc, fig_hist


class TrainTripletTask(pipeBase.PipelineTask):
    """Train a triplet real/bogus model from labelled cutouts and write it as a model package."""

    ConfigClass = TrainTripletConfig
    _DefaultName = "trainTriplet"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        provenance = {
            "inputs": [str(ref.dataId.required) for ref in inputRefs.cutouts],
            "collections": sorted({ref.run for ref in inputRefs.cutouts}),
        }
        if self.config.initFromPretrained:
            ref = inputRefs.pretrainedModel
            provenance["init_dataset"] = {
                "datasetType": ref.datasetType.name,
                "run": ref.run,
                "id": str(ref.id),
            }
        outputs = self.run(**inputs, provenance=provenance)
        butlerQC.put(outputs, outputRefs)

    def _init_settings(self, package):
        """Architecture and hyperparameters of the init package, or None when not fine-tuning.

        Logs a warning for every configured contract or architecture field that the package
        overrides, so a config written for training from scratch does not silently mislead.
        """
        if not self.config.initFromPretrained:
            return None
        if package is None:
            raise ValueError(
                "config.initFromPretrained is set but no model package was given to start from "
                "(the pretrainedModel input, e.g. from pretrained_models/default)."
            )
        from ..training.loop import FINE_TUNE_HEAD_LEARNING_RATE, FINE_TUNE_LEARNING_RATE, load_init_package

        package, name = load_init_package(package)
        spec = package.components["classifier"]
        hp = spec.hyperparameters
        config = self.config
        package_values = {
            "stampSize": package.contract.stamp_size,
            "channels": list(package.contract.channels),
            "normalization": package.contract.normalization,
            "architecture": spec.architecture,
            "widths": list(hp.get("widths", [])),
            "hidden": hp.get("hidden", 0),
        }
        for field, value in package_values.items():
            mine = getattr(config, field)
            mine = list(mine) if field in ("channels", "widths") else mine
            # Fields left at "use the architecture's default" say nothing to contradict.
            if field in ("widths", "hidden") and not mine:
                continue
            if mine != value:
                self.log.warning(
                    "config.%s = %r is ignored: fine-tuning keeps the %s's %r.", field, mine, name, value
                )
        return {
            "architecture": spec.architecture,
            "hyperparameters": {
                k: v for k, v in hp.items() if k not in ("in_channels", "stamp_size", "n_classes")
            },
            "class_head": bool(hp.get("n_classes")),
            "learning_rate": (
                config.fineTuneLearningRate
                if config.fineTuneLearningRate is not None
                else FINE_TUNE_HEAD_LEARNING_RATE if config.freezeFeatures else FINE_TUNE_LEARNING_RATE
            ),
        }

    @timeMethod
    def run(self, cutouts, provenance=None, pretrainedModel=None):
        """Train on the labelled sources of all the given cutout tables.

        Parameters
        ----------
        cutouts : `list` [`astropy.table.Table`]
            Tables from `LabelledCutoutsTask` (``stamp``, ``label``, ``source_class``, ``snr``).
        provenance : `dict`, optional
            Recorded in the package.
        pretrainedModel : `~lsst.meas.rbnet.package.ModelPackage`, optional
            With ``initFromPretrained`` (required then): the package to start from.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``model`` (`~lsst.meas.rbnet.package.ModelPackage`), ``metrics`` (`dict`) and, with
            ``doPlots``, ``rocPlot`` and ``historyPlot`` (`matplotlib.figure.Figure`).

        Raises
        ------
        lsst.meas.rbnet.tasks.errors.UnusableTrainingDataError
            (an `lsst.pipe.base.UnprocessableDataError`) if fewer than two stamps of a class
            (real or bogus) have any finite pixel.
        ValueError
            If there are no labelled stamps, or stamps smaller than ``stampSize``
            (the init package's stamp size with ``initFromPretrained``), or no init package is given
            with ``initFromPretrained``.
        """
        from ..contract import InputContract
        from ..training import TrainConfig, train_triplet_model

        config = self.config
        init = self._init_settings(pretrainedModel)
        if init is None:
            contract = InputContract(
                stamp_size=config.stampSize,
                channels=tuple(config.channels),
                normalization=config.normalization,
            )
            size_source = "config.stampSize"
        else:
            contract = pretrainedModel.contract
            size_source = f"the stamp size of the init model package {pretrainedModel.version!r}"
        stamp_size = contract.stamp_size
        tables = [t for t in cutouts if len(t)]
        if not tables:
            raise ValueError(
                "No labelled cutouts to train on (every rbnet_labelled_cutouts dataset is empty)."
            )
        sizes = {t["stamp"].shape[1:] for t in tables}
        if len(sizes) != 1:
            raise ValueError(
                f"The labelled cutouts have different stamp shapes {sorted(sizes)}; remake them."
            )
        shape = sizes.pop()
        if shape[0] != len(CHANNEL_ORDER) or shape[1] < stamp_size:
            raise ValueError(
                f"The labelled cutouts have stamps of shape {shape}; need {len(CHANNEL_ORDER)} channels "
                f"of at "
                f"least {stamp_size} pixels ({size_source})."
            )
        n_total = sum(len(t) for t in tables)
        stamps = np.empty((n_total, *shape), dtype=np.float32)
        labels = np.empty(n_total, dtype=np.int16)
        classes = np.empty(n_total, dtype="<U32")
        snr = np.empty(n_total, dtype=np.float32)
        k = 0
        for t in tables:
            m = len(t)
            stamps[k : k + m] = np.asarray(t["stamp"], dtype=np.float32)
            labels[k : k + m] = np.asarray(t["label"], dtype=np.int16)
            classes[k : k + m] = np.asarray(t["source_class"]).astype(str)
            snr[k : k + m] = np.asarray(t["snr"], dtype=np.float32)
            k += m
        keep = labels >= 0
        stamps, labels, classes, snr = stamps[keep], labels[keep], classes[keep], snr[keep]
        if shape[1] != stamp_size:
            # Crop the centre: the cutouts' centre pixel is at index S // 2 for any odd S.
            off = (shape[1] - stamp_size) // 2
            stamps = np.ascontiguousarray(stamps[:, :, off : off + stamp_size, off : off + stamp_size])
        n_real = int(np.count_nonzero(labels == REAL))
        _check_trainable(stamps, labels)
        self.log.info(
            "Training on %d labelled stamps (%d real, %d bogus).", len(labels), n_real, len(labels) - n_real
        )
        hyper = {}
        if config.widths:
            hyper["widths"] = list(config.widths)
        if config.hidden:
            hyper["hidden"] = int(config.hidden)
        use_classes = config.classLossWeight > 0 and bool(np.all(classes != ""))
        architecture = config.architecture
        if init is not None:
            architecture, hyper = init["architecture"], init["hyperparameters"]
            use_classes = use_classes and init["class_head"]
        train_config = TrainConfig(
            contract=contract,
            architecture=architecture,
            hyperparameters=hyper,
            epochs=config.epochs,
            batch_size=config.batchSize,
            learning_rate=config.learningRate if init is None else init["learning_rate"],
            loss=config.loss,
            class_loss_weight=config.classLossWeight if use_classes else 0.0,
            patience=config.patience,
            validation_fraction=config.validationFraction,
            augment=config.augment,
            seed=config.seed,
            device=config.device,
            num_threads=config.numThreads or None,
            max_seconds=config.maxSeconds or None,
            version=config.version,
            freeze_features=config.freezeFeatures,
        )
        result = train_triplet_model(
            stamps,
            labels,
            classes=classes if use_classes else None,
            snr=snr,
            config=train_config,
            progress=TrainingLog(self.log),
            provenance=dict(provenance or {}, task=self._DefaultName),
            init=pretrainedModel if init is not None else None,
        )
        metrics = {
            "metrics": result.metrics,
            "history": result.history,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "n_train_total": int(len(labels)),
            "n_real": n_real,
            "n_bogus": int(len(labels) - n_real),
            "version": result.package.version,
        }
        if init is not None:
            metrics["init"] = result.package.provenance["init"]
        struct = pipeBase.Struct(model=result.package, metrics=plain_metrics(metrics))
        if config.doPlots:
            struct.rocPlot, struct.historyPlot = training_figures(result)
        return struct


def _check_trainable(stamps: np.ndarray, labels: np.ndarray) -> None:
    """Raise `UnusableTrainingDataError` for labelled stamps that no algorithm could train on.

    That is: fewer than two of one class (real or bogus) with any finite pixel.
    """
    from .errors import UnusableTrainingDataError

    usable = np.isfinite(stamps.reshape(len(stamps), -1)).any(axis=1) if len(stamps) else np.zeros(0, bool)
    counts = {
        name: int(np.count_nonzero(usable & (labels == value))) for name, value in (("real", REAL), ("bogus", 0))
    }
    if min(counts.values()) < 2:
        raise UnusableTrainingDataError(
            f"The labelled cutouts cannot train a model: {counts['real']} real and {counts['bogus']} bogus "
            f"stamps with any finite pixel (of {len(labels)} labelled); both classes are needed."
        )


class TrainingLog:
    """Training events (`lsst.meas.rbnet.training.train_triplet_model`'s ``progress``) as task log lines.

    One line when training starts (device, precision, sizes), one per epoch, and, within
    an epoch, a step line at most every `PeriodicLogger` interval, so a training quantum
    under ``pipetask`` is never silent for minutes.

    Parameters
    ----------
    log : `lsst.utils.logging.LsstLogAdapter` or `logging.Logger`
        The task's logger.
    interval : `float`, optional
        Seconds between step lines (the `PeriodicLogger` default when None).
    """

    def __init__(self, log, interval: float | None = None):
        self.log = log
        self.periodic = PeriodicLogger(log, interval=interval)

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            self.log.info(
                "Training on %d stamps, validating on %d: %d parameters on %s (%s), at most %d epochs of "
                "%d steps.",
                event["n_train"],
                event["n_val"],
                event["parameters"],
                event["device"],
                event.get("precision", "float32"),
                event["epochs"],
                event["steps"],
            )
        elif kind == "step":
            self.periodic.log(
                "Epoch %d: step %d of %d, loss %.4f.", event["epoch"], event["step"], event["steps"], event["loss"]
            )
        elif kind == "epoch":
            self.log.info(
                "Epoch %d%s: loss %.4f, validation loss %.4f, validation AUC %.5f, lr %.1e, %.0f s.",
                event["epoch"],
                " (best so far)" if event.get("improved") else "",
                event["train_loss"],
                event["val_loss"],
                event["val_auc"],
                event["lr"],
                event["seconds"],
            )
        elif kind == "init":
            self.log.info(
                "Init package on the validation set: loss %.4f, AUC %.5f (the bar an epoch must beat).",
                event["val_loss"],
                event["val_auc"],
            )
        elif kind == "budget":
            self.log.info(
                "Time budget: %d epochs of %.0f s fit; the learning-rate schedule is shortened to match.",
                event["epochs"],
                event["seconds_per_epoch"],
            )
        elif kind == "calibrate":
            self.log.info("Calibrating (temperature scaling on the validation set).")
        elif kind == "done":
            self.log.info("Training done.")
