# This file is part of meas_rbnet.
"""The configuration and results of triplet training: `TrainConfig` (with its checks),
`ValidationScores` and `TrainResult`.

`training.loop` re-exports these names (the old import path).
"""

__all__ = ["TrainConfig", "TrainResult", "ValidationScores", "SCHEDULES"]

import dataclasses
import math
from typing import Any

import numpy as np

from ..contract import InputContract
from ..nn import registry
from ..package import ModelPackage, validate_version_string
from .losses import LOSSES, get_loss


#: Learning-rate schedules: cosine decay per step after a short linear warm-up;
#: reduce-on-plateau of the validation loss per epoch; constant.
SCHEDULES: tuple[str, ...] = ("cosine", "plateau", "constant")


@dataclasses.dataclass
class TrainConfig:
    """How to train a triplet model.

    Parameters
    ----------
    contract : `InputContract`
        Stamp size, channels and normalisation of the model (travels with it).
    architecture : `str`
        Registered architecture name (``"triplet_cnn"``, ``"braai_like"``).
    hyperparameters : `dict`
        Builder keyword arguments; ``in_channels``, ``stamp_size`` and
        ``n_classes`` are filled in from the contract and the class head setting.
    epochs : `int`
        Maximum number of passes over the training set.
    batch_size : `int`
    learning_rate : `float`
        Peak AdamW learning rate.
    weight_decay : `float`
        AdamW decoupled weight decay.
    schedule : `str`
        One of `SCHEDULES`.
    warmup_fraction : `float`
        Fraction of the steps (at most 500 steps) with a linear warm-up (cosine only).
    loss : `str`
        One of `losses.LOSSES`.
    loss_params : `dict`
        Keyword parameters of the loss (e.g. ``{"gamma": 2.0}`` for focal).
    class_loss_weight : `float`
        Weight of the class-head cross-entropy over `constants.ALL_CLASSES`; it
        makes the network learn what kind of artifact it sees, which helps the
        real/bogus decision on rare artifacts. 0 (or no ``classes``) disables the head.
    patience : `int`
        Stop after this many epochs without a validation-loss improvement larger than ``min_delta``.
    min_delta : `float`
    validation_fraction : `float`
        Held out (stratified by label and class) when no validation set is given.
    seed : `int`
    device : `str`
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (`scoring.select_device`).
    amp : `bool`
        Mixed precision on CUDA: bfloat16 autocast where the GPU supports it, else float16
        with gradient scaling; ignored on the CPU.
    augment : `bool`
        Random rotation/flip per stamp (and the jitters below).
    noise_std, flux_jitter : `float`
        Optional augmentation strengths (see `training.data`); 0 disables.
    num_threads : `int` or `None`
        torch CPU threads during training (restored afterwards); None leaves it.
        The convolutions of these small networks gain little from more threads,
        and on a machine shared with other jobs one thread is several times
        faster than two (threads spin waiting for each other).
    channels_last : `bool` or `None`
        Channels-last memory format; None = on for the CPU, where it makes the
        small convolutions of `TripletCNN` several times faster.
    storage_dtype : `str`
        ``"float32"`` or ``"float16"``: how the prepared training stamps are kept in memory.
    mask_fraction : `float`
        When mask planes are given, the fraction of stamps whose bad-mask pixels
        (`constants.DEFAULT_BAD_MASK_PLANES`) are blanked before preparation, as
        the pipeline does (see `data.prepare_dataset`); the others keep their raw
        pixels, as `score_triplets` sees stamps given without masks.
    eval_batch_size : `int`
    max_seconds : `float` or `None`
        Wall-time budget of the training epochs. After the first epoch the number
        of epochs is reduced to what fits in the budget and the cosine schedule is
        shortened to match, so the learning rate still anneals; the epoch in
        progress ends early if the budget is spent anyway (validation,
        calibration and packaging still run).
    version : `str`
        APDB ``reliabilityVersion`` of the package (<= 7 characters).
    purity_targets : `tuple` [`float`, ...]
        Purities of the recommended thresholds (``"purity95"``, ``"purity99"``).
    threshold_snr_min : `float` or `None`
        Purity thresholds are chosen on validation sources with ``snr >= this``
        (when SNR is known); None uses all.
    symmetric_temperature : `bool`
        Also fit the temperature of rotation/flip-averaged logits (costs 8
        evaluations of the validation set).
    freeze_features : `bool`
        Fine-tuning only (needs ``init`` in `train_triplet_model`): keep the
        convolutional features of the init package fixed (weights and batch-norm
        statistics) and train only the layers after them (the head).
    """

    contract: InputContract = dataclasses.field(default_factory=InputContract)
    architecture: str = "triplet_cnn"
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_fraction: float = 0.03
    loss: str = "bce"
    loss_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    class_loss_weight: float = 0.2
    patience: int = 3
    min_delta: float = 1e-4
    validation_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    augment: bool = True
    noise_std: float = 0.0
    flux_jitter: float = 0.0
    num_threads: int | None = None
    channels_last: bool | None = None
    storage_dtype: str = "float32"
    mask_fraction: float = 0.5
    eval_batch_size: int = 1024
    max_seconds: float | None = None
    version: str = "dev"
    purity_targets: tuple[float, ...] = (0.95, 0.99)
    threshold_snr_min: float | None = 6.0
    symmetric_temperature: bool = True
    freeze_features: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.contract, InputContract):
            raise ValueError(
                f"TrainConfig.contract must be an InputContract, got {type(self.contract).__name__}."
            )
        validate_version_string(self.version)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {v!r}.")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be an integer >= 1, got {self.patience!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.loss not in LOSSES:
            raise ValueError(f"TrainConfig.loss must be one of {LOSSES}, got {self.loss!r}.")
        get_loss(self.loss, **dict(self.loss_params))  # checks the parameters now, not after an hour
        for name in (
            "learning_rate", "weight_decay", "warmup_fraction", "class_loss_weight", "min_delta",
            "validation_fraction", "noise_std", "flux_jitter", "mask_fraction", "max_seconds",
            "threshold_snr_min",
        ):  # fmt: skip
            v = getattr(self, name)
            if v is None and name in ("max_seconds", "threshold_snr_min"):
                continue
            # NaN passes every comparison below (nan < 0 is False), so finiteness is checked first.
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {v!r}.")
        if self.noise_std < 0 or self.flux_jitter < 0:
            raise ValueError("TrainConfig: noise_std and flux_jitter must be >= 0.")
        if self.max_seconds is not None and self.max_seconds < 0:
            raise ValueError(f"TrainConfig.max_seconds must be >= 0, got {self.max_seconds}.")
        if not self.learning_rate > 0 or self.weight_decay < 0 or self.class_loss_weight < 0:
            raise ValueError(
                "TrainConfig: learning_rate must be > 0, weight_decay and class_loss_weight >= 0."
            )
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"TrainConfig.validation_fraction must be in (0, 1), got {self.validation_fraction}."
            )
        if not 0 <= self.mask_fraction <= 1:
            raise ValueError(f"TrainConfig.mask_fraction must be in [0, 1], got {self.mask_fraction}.")
        if self.storage_dtype not in ("float32", "float16"):
            raise ValueError(
                f"TrainConfig.storage_dtype must be 'float32' or 'float16', got {self.storage_dtype!r}."
            )
        if any(not 0 < p < 1 for p in self.purity_targets):
            raise ValueError(f"TrainConfig.purity_targets must lie in (0, 1), got {self.purity_targets}.")
        if self.architecture not in registry.architectures():
            raise ValueError(
                f"TrainConfig.architecture {self.architecture!r} is unknown; "
                f"known: {registry.architectures()}."
            )
        self.purity_targets = tuple(float(p) for p in self.purity_targets)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (recorded in the package provenance)."""
        d = dataclasses.asdict(self)
        d["contract"] = self.contract.to_dict()
        d["purity_targets"] = list(self.purity_targets)
        return d


@dataclasses.dataclass
class ValidationScores:
    """Scores of the final model on the validation set (for plots and reports).

    Attributes
    ----------
    logits : `numpy.ndarray`, shape ``(N,)``
        Uncalibrated logits.
    probabilities : `numpy.ndarray`, shape ``(N,)``
        ``sigmoid(logits / temperature)``.
    labels : `numpy.ndarray`, shape ``(N,)``
    classes, snr : `numpy.ndarray`, shape ``(N,)``, or `None`
    """

    logits: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None = None
    snr: np.ndarray | None = None


@dataclasses.dataclass
class TrainResult:
    """What `train_triplet_model` returns.

    Attributes
    ----------
    package : `ModelPackage`
        The trained, calibrated, validated model package (not yet written).
    history : `list` [`dict`]
        One entry per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_auc``,
        ``lr``, ``seconds``, ``samples_per_second``.
    metrics : `dict`
        Validation metrics (JSON-serialisable; also stored in the package).
    validation : `ValidationScores`
        Final validation scores.
    best_epoch : `int`
        Epoch (1-based) whose weights were kept.
    stopped_early : `bool`
        True if early stopping (or the time budget) ended training before ``epochs``.
    init_validation : `ValidationScores` or `None`
        When fine-tuning (``init``): the scores of the init package's network on
        the validation set before any training step (probabilities with the init
        package's temperature); None otherwise.
    """

    package: ModelPackage
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    validation: ValidationScores
    best_epoch: int
    stopped_early: bool
    init_validation: ValidationScores | None = None
