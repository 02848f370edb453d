# This file is part of meas_rbnet.
"""Configurations and results of sequence-model training: the per-architecture presets,
`SequenceTrainConfig`, `FitResult` and `SequencePackageConfig`.

`sequence.train` re-exports these names (the old import path).
"""

__all__ = ["SequenceTrainConfig", "FitResult", "TRAIN_PRESETS", "SequencePackageConfig"]

import dataclasses
from typing import Any

import numpy as np
import torch

from .data import CROPS
from .vae_training import VAETrainConfig


#: Hyperparameters tuned for each registered sequence architecture (used unless overridden).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "seq_bigru": {"weight_decay": 1e-5},
    "seq_gru": {"weight_decay": 0.0},
    "seq_lstm": {"weight_decay": 0.0},
    "seq_conv1d": {"weight_decay": 1e-3},
}


@dataclasses.dataclass
class SequenceTrainConfig:
    """How to train a sequence classifier.

    Attributes
    ----------
    architecture : `str`
        Registered sequence architecture (``"seq_bigru"``, ``"seq_gru"``, ``"seq_lstm"``, ``"seq_conv1d"``).
    hyperparameters : `dict`
        Builder arguments; ``input_dim`` is set from the data.
    loss : `str`
        ``"bce"`` or ``"bce+tversky"``.
    loss_params : `dict`
        Extra loss parameters (e.g. ``tversky_weight``, ``alpha``, ``beta``).
    lr : `float`
        Peak Adam learning rate.
    weight_decay : `float` or `None`
        L2 weight decay (AdamW-style, decoupled); `None` takes `TRAIN_PRESETS`.
    max_epochs : `int`
        Upper bound on epochs.
    patience : `int`
        Stop after this many epochs without a better validation score.
    monitor : `str`
        Validation score that picks the kept epoch and drives early stopping:
        ``"auc"`` (ROC-AUC, ties broken by the loss) or ``"loss"`` (BCE). The loss
        rises as soon as the model grows over-confident while the ranking still
        improves, so ``"auc"`` is the default; calibration is restored afterwards
        by temperature scaling.
    min_epochs : `int`
        Never stop before this many epochs.
    val_fraction : `float`
        Stratified share of the training objects held out for early stopping.
    train_max_len : `int`
        Training sequences longer than this are shortened (0: never).
    crop : `str`
        How to shorten them, one of `lsst.meas.rbnet.sequence.data.CROPS`.
    batch_frames : `int`
        Padded frames per batch (``B * T_max``).
    max_batch : `int`
        Most sequences per batch.
    grad_clip : `float`
        Gradient norm clip (0: none).
    calibrate : `bool`
        Fit ``sigmoid(a z + b)`` to the validation objects (Platt scaling) and fold it
        into the model (a logit shift ``b / a``) and a temperature ``1 / a``, so that
        probability 0.5 is the best threshold there and probabilities are calibrated.
    max_seconds : `float` or `None`
        Wall-time budget of one fit (the best model so far is kept when it runs out).
    seed : `int`
        Random seed (weights, batches, crops, split).
    device : `str`
        Torch device.
    """

    architecture: str = "seq_bigru"
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss: str = "bce"
    loss_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float | None = None
    max_epochs: int = 30
    patience: int = 5
    monitor: str = "auc"
    min_epochs: int = 5
    val_fraction: float = 0.15
    train_max_len: int = 192
    crop: str = "subsample"
    batch_frames: int = 6144
    max_batch: int = 32
    grad_clip: float = 1.0
    calibrate: bool = True
    max_seconds: float | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "bce+tversky"):
            raise ValueError(f"loss must be 'bce' or 'bce+tversky', got {self.loss!r}.")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}.")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}.")
        if self.monitor not in ("auc", "loss"):
            raise ValueError(f"monitor must be 'auc' or 'loss', got {self.monitor!r}.")
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError("max_epochs and patience must be >= 1.")

    @property
    def effective_weight_decay(self) -> float:
        """`weight_decay`, or the preset of the architecture."""
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return float(TRAIN_PRESETS.get(self.architecture, {}).get("weight_decay", 0.0))


@dataclasses.dataclass
class FitResult:
    """A trained sequence classifier and how it got there.

    Attributes
    ----------
    model : `torch.nn.Module`
        The classifier in eval mode with its standardisation set, best epoch's weights.
    hyperparameters : `dict`
        Arguments that rebuild it with `lsst.meas.rbnet.nn.build`.
    history : `list` [`dict`]
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_auc``, ``seconds``.
    best_epoch : `int`
        Epoch whose weights were kept (1-based).
    val_index : `numpy.ndarray`
        Objects used for early stopping.
    val_logits : `numpy.ndarray`
        Logits of the returned model on ``val_index``.
    temperature : `float`
        Calibration: ``P(real) = sigmoid(logit / temperature)``.
    seconds : `float`
        Wall time of the fit.
    """

    model: torch.nn.Module
    hyperparameters: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    val_index: np.ndarray
    val_logits: np.ndarray
    temperature: float
    seconds: float


@dataclasses.dataclass
class SequencePackageConfig:
    """How `train_sequence_package` builds a sequence model package.

    Attributes
    ----------
    vae : `VAETrainConfig`
        VAE training (``hyperparameters["latent_dim"]`` sets the latent width).
    classifier : `SequenceTrainConfig`
        Classifier training.
    normalization : `str`
        Per-frame normalisation of the input contract (`lsst.meas.rbnet.contract.NORMALIZATIONS`).
    channels : `tuple` [`str`, ...]
        Frame channels the model reads, a subsequence of `CHANNEL_ORDER`.
    test_fraction : `float`
        Stratified share of objects held out to measure the package's metrics
        (0: none; then the metrics are those of the inner validation split).
    version : `str`
        ``reliabilityVersion`` of the package (<= 7 characters).
    seed : `int`
        Split seed.
    """

    vae: VAETrainConfig = dataclasses.field(default_factory=VAETrainConfig)
    classifier: SequenceTrainConfig = dataclasses.field(default_factory=SequenceTrainConfig)
    normalization: str = "robust_asinh"
    channels: tuple[str, ...] = ("science",)
    test_fraction: float = 0.2
    version: str = "seq1"
    seed: int = 0
