# This file is part of meas_rbnet.
"""Train a triplet model from labelled stamps and package it.

`train_triplet_model` runs the whole recipe on arrays: prepare the stamps once
as the input contract says, split off a stratified validation set (unless one
is given), train with AdamW under a cosine (or plateau) schedule with
rotation/flip augmentation, stop early on the validation loss and restore the
best weights, fit the calibration temperatures on the validation set, choose
the recommended thresholds there, and return a validated `ModelPackage`
together with the training history and the validation metrics.

Reproducibility: on the CPU, a run is deterministic for a given seed, data and
thread count (the seed drives the split, the initial weights, the batch order,
the augmentation and dropout; the caller's global torch RNG state is restored
afterwards). On CUDA, mixed precision and cuDNN make runs close but not
bit-identical.

Fine-tuning: with ``init=`` (a trained `ModelPackage` or the path of one) the
network starts from that package's weights instead of a random initialisation.
The package fixes the architecture, its hyperparameters and the input contract:
a config that contradicts them is refused with a message naming the package and
the mismatch (`fine_tune_config` builds a config that agrees). The package's
validation loss on the new validation set is the bar an epoch must beat, so the
result is never worse there than the starting point (``best_epoch == 0`` when no
epoch beat it). ``TrainConfig.freeze_features`` trains only the head. The
package written records the init package's version and weights digest
(``provenance["init"]``). See ``doc/fine-tuning.md``.
"""

__all__ = [
    "TrainConfig",
    "TrainResult",
    "ValidationScores",
    "train_triplet_model",
    "model_logits",
    "choose_thresholds",
    "git_commit",
    "SCHEDULES",
    "LOSS_SYNC_STEPS",
    "FINE_TUNE_LEARNING_RATE",
    "FINE_TUNE_HEAD_LEARNING_RATE",
    "load_init_package",
    "check_init_compatible",
    "fine_tune_config",
]

import copy
import dataclasses
import math
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import ALL_CLASSES
from ..contract import InputContract
from ..nn import registry
from ..nn.triplet import dihedral_transforms
from ..package import ModelPackage, ModelPackageError, validate_version_string
from ..version import __version__
from . import metrics as M
from .calibration import apply_temperature, fit_temperature
from .data import PreparedStamps, class_targets, iterate_batches, prepare_dataset, stratified_split
from .losses import LOSSES, get_loss

#: On CUDA the training losses are read back (and checked for NaN) every this many steps
#: rather than every step, so the host queues work without waiting for the device.
LOSS_SYNC_STEPS: int = 50

#: Learning-rate schedules: cosine decay per step after a short linear warm-up;
#: reduce-on-plateau of the validation loss per epoch; constant.
SCHEDULES: tuple[str, ...] = ("cosine", "plateau", "constant")

#: Default peak learning rate when fine-tuning from a trained package: a tenth of the
#: from-scratch default (3e-3), so the first steps on a few hundred new labels refine the
#: trained features rather than overwrite them (``benchmarks/bench_finetune.py``).
FINE_TUNE_LEARNING_RATE: float = 3e-4

#: Default peak learning rate when only the head is trained (``freeze_features``): the
#: from-scratch default, since the frozen features cannot be damaged and a head trained at
#: 3e-4 barely moves in a few hundred steps (``benchmarks/bench_finetune.py``).
FINE_TUNE_HEAD_LEARNING_RATE: float = 3e-3

#: Module attribute holding the convolutional feature extractor of the triplet
#: architectures; ``freeze_features`` keeps it fixed and trains the rest (the head).
_FEATURES_ATTRIBUTE = "features"


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


def git_commit() -> str:
    """Commit hash of the source tree this module was imported from, or ``"unknown"``."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "") if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _loss_sync_steps(device: torch.device) -> int:
    """Steps between reads of the training loss: 1 on the CPU (free there), else `LOSS_SYNC_STEPS`."""
    return 1 if device.type == "cpu" else LOSS_SYNC_STEPS


def _drain_losses(
    pending: list[tuple[int, torch.Tensor, int]],
    sum_loss: float,
    n_seen: int,
    epoch: int,
    steps: int,
    notify: Callable[[dict[str, Any]], None],
) -> tuple[float, int]:
    """Read the pending step losses (one host-device synchronisation), check them, report them.

    Returns the running ``(sum of loss x batch size, number of samples)``; empties ``pending``.
    """
    values = torch.stack([loss for _, loss, _ in pending]).float().cpu().tolist()
    for (step, _, n), value in zip(pending, values):
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training loss became {value} at epoch {epoch}, step {step}; lower the learning rate."
            )
        sum_loss += value * n
        n_seen += n
        notify({"event": "step", "epoch": epoch, "step": step, "steps": steps, "loss": value})
    pending.clear()
    return sum_loss, n_seen


def _select_device(name: str) -> torch.device:
    from ..scoring import select_device

    return select_device(name)


def _init_name(package: ModelPackage, source: Any) -> str:
    """How messages and provenance name an init package: its file name (never a directory) and version."""
    if isinstance(source, ModelPackage):
        return f"init package (version {package.version!r})"
    return f"init package {Path(source).name!r} (version {package.version!r})"


def load_init_package(init: ModelPackage | str | os.PathLike) -> tuple[ModelPackage, str]:
    """The package to fine-tune from, checked, and the name messages use for it.

    Parameters
    ----------
    init : `ModelPackage`, `str` or `pathlib.Path`
        A trained triplet package, or the path of its ``.safetensors`` file.

    Returns
    -------
    package : `ModelPackage`
    name : `str`
        E.g. ``"init package 'rbnet-default.safetensors' (version 'sim1.1')"``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ModelPackageError
        If the file is not a valid package (corrupt, truncated, newer format), or
        the package is not a triplet classifier; the message names the file.
    """
    if isinstance(init, ModelPackage):
        package = init
        package.validate()
    elif isinstance(init, (str, os.PathLike)):
        package = ModelPackage.load(init)
    else:
        raise TypeError(f"init must be a ModelPackage or the path of one, got {type(init).__name__}.")
    name = _init_name(package, init)
    if package.kind != "triplet" or "classifier" not in package.components:
        raise ModelPackageError(
            f"{name} is a {package.kind!r} package; fine-tuning a triplet model needs a triplet package."
        )
    return package, name


def check_init_compatible(package: ModelPackage, config: TrainConfig, name: str = "init package") -> None:
    """Refuse a training config that contradicts the package it fine-tunes.

    The new stamps are prepared with ``config.contract``, so it must equal the
    package's input contract (stamp size, channels, normalisation and its
    parameters); the architecture must be the package's, and every
    hyperparameter the config sets must have the package's value.

    Raises
    ------
    ValueError
        Naming the package and every mismatch.
    """
    problems = []
    mine, theirs = config.contract.to_dict(), package.contract.to_dict()
    for key in theirs:
        if mine.get(key) != theirs[key]:
            problems.append(
                f"input contract {key} is {theirs[key]!r}, the training data/config have {mine.get(key)!r}"
            )
    spec = package.components["classifier"]
    if config.architecture != spec.architecture:
        problems.append(f"architecture is {spec.architecture!r}, the config asks for {config.architecture!r}")
    else:
        for key, value in config.hyperparameters.items():
            value = list(value) if isinstance(value, tuple) else value
            if key in ("in_channels", "stamp_size", "n_classes"):
                continue  # derived from the contract and the class head, compared above and in training
            if key not in spec.hyperparameters or spec.hyperparameters[key] != value:
                problems.append(
                    f"hyperparameter {key} is {spec.hyperparameters.get(key)!r}, "
                    f"the config asks for {value!r}"
                )
    if problems:
        raise ValueError(
            f"cannot fine-tune from {name}: " + "; ".join(problems) + ". The new stamps must match the "
            "package's input contract and the network its architecture (prepare the stamps with the "
            "package's contract, or train from scratch)."
        )


def fine_tune_config(init: ModelPackage | str | os.PathLike, **overrides: Any) -> TrainConfig:
    """A `TrainConfig` that agrees with a package to fine-tune from.

    Contract, architecture and hyperparameters are the package's; the learning
    rate is `FINE_TUNE_LEARNING_RATE` (`FINE_TUNE_HEAD_LEARNING_RATE` with
    ``freeze_features=True``); the class-head loss is off when the
    package has no class head. ``overrides`` set any other `TrainConfig` field
    (setting contract, architecture or hyperparameters to other values makes
    `train_triplet_model` refuse the config).
    """
    package, _ = load_init_package(init)
    spec = package.components["classifier"]
    fields: dict[str, Any] = {
        "contract": package.contract,
        "architecture": spec.architecture,
        "hyperparameters": {
            k: v
            for k, v in spec.hyperparameters.items()
            if k not in ("in_channels", "stamp_size", "n_classes")
        },
        "learning_rate": (
            FINE_TUNE_HEAD_LEARNING_RATE if overrides.get("freeze_features") else FINE_TUNE_LEARNING_RATE
        ),
    }
    if not spec.hyperparameters.get("n_classes"):
        fields["class_loss_weight"] = 0.0
    fields.update(overrides)
    return TrainConfig(**fields)


@torch.no_grad()
def model_logits(
    model: torch.nn.Module,
    x: np.ndarray,
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    symmetric: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Logits of prepared stamps (model in eval mode, no gradients).

    Parameters
    ----------
    model : `torch.nn.Module`
        Returns ``(N,)`` logits.
    x : `numpy.ndarray`, shape ``(N, C, S, S)``
        Prepared stamps (float32 or float16).
    batch_size : `int`
    device : `torch.device` or `str`
    symmetric : `bool`
        Average the logits over the 8 rotations/flips of each stamp (as the
        scorer's symmetry averaging does).
    channels_last : `bool`

    Returns
    -------
    logits : `numpy.ndarray`, shape ``(N,)``, float64
    """
    from .data import _to_device

    was_training = model.training
    model.eval()
    device = torch.device(device)
    out = np.empty(len(x), dtype=np.float64)
    # On a GPU the logits stay there until the end (one synchronisation, not one per batch)
    # and the batch crosses once, before its rotations/flips are made.
    on_host = device.type == "cpu"
    parts = []
    try:
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            xb = _to_device(xb, device).float() if not on_host else xb.float()
            views = dihedral_transforms(xb) if symmetric else [xb]
            acc = None
            for v in views:
                if channels_last:
                    v = v.contiguous(memory_format=torch.channels_last)
                z = model(v).float()
                acc = z if acc is None else acc + z
            if on_host:
                out[start : start + len(xb)] = (acc / len(views)).numpy()
            else:
                parts.append(acc / len(views))
        if parts:
            out[:] = torch.cat(parts).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def choose_thresholds(
    probabilities,
    labels,
    *,
    snr=None,
    snr_min: float | None = 6.0,
    purity_targets=(0.95, 0.99),
    default: float = 0.5,
) -> list[dict[str, Any]]:
    """Recommended thresholds on calibrated probabilities, with their purity and completeness.

    Parameters
    ----------
    probabilities, labels : array-like, shape ``(N,)``
        Calibrated validation probabilities and labels.
    snr : array-like, shape ``(N,)``, optional
    snr_min : `float` or `None`
        Purity thresholds are chosen on sources with ``snr >= snr_min`` (when
        ``snr`` is given), and their purity/completeness are measured there.
    purity_targets : sequence of `float`
        Each gives a threshold named ``"purity<100 p>"`` (e.g. ``"purity99"``).
    default : `float`
        The ``"default"`` threshold: 0.5 on a calibrated probability is the
        decision "more likely real than not"; its purity and completeness are
        measured on all sources.

    Returns
    -------
    thresholds : `list` [`dict`]
        ``{"name", "threshold", "purity", "completeness"}`` entries. A purity
        that no threshold reaches gives threshold 1.0 with the measured values there.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    pur, comp = M.purity_completeness(p, y, default)
    out = [{"name": "default", "threshold": float(default), "purity": pur, "completeness": comp}]
    mask = None
    if snr is not None and snr_min is not None:
        mask = np.asarray(snr) >= snr_min
        if not np.any(mask & (y == 1)):
            mask = None
    for target in purity_targets:
        thr = M.threshold_for_purity(p, y, target, mask=mask)
        thr = min(thr, 1.0)
        pur, comp = M.purity_completeness(p, y, thr, mask=mask)
        name = f"purity{round(100 * target):d}"
        out.append({"name": name, "threshold": float(thr), "purity": pur, "completeness": comp})
    return out


def _as_prepared(data, labels, classes, snr, masks, config: TrainConfig, dtype, what: str) -> PreparedStamps:
    contract = config.contract
    if isinstance(data, PreparedStamps):
        if data.contract != contract:
            raise ValueError(
                f"{what} stamps were prepared with {data.contract}, but the config asks for {contract}."
            )
        return data
    if isinstance(data, dict):
        data = (data["stamps"], data["labels"], data.get("classes"), data.get("snr"), data.get("masks"))
    if isinstance(data, (tuple, list)):
        parts = list(data) + [None] * (5 - len(data))
        data, labels, classes, snr, masks = parts[:5]
    if labels is None:
        raise ValueError(f"{what}: labels are required with raw stamps.")
    return prepare_dataset(
        data,
        labels,
        contract,
        classes=classes,
        snr=snr,
        masks=masks,
        mask_fraction=config.mask_fraction,
        seed=config.seed,
        dtype=dtype,
    )


def _lr_lambda(plan: dict[str, int], warmup_steps: int, floor: float = 0.02) -> Callable[[int], float]:
    # ``plan["total"]`` is read at every step so that the schedule can be shortened mid-run.
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        total_steps = plan["total"]
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _evaluate_metrics(
    probs: np.ndarray, labels: np.ndarray, classes, snr, thresholds, snr_min
) -> dict[str, Any]:
    """Validation metrics as a JSON-serialisable dict (see `report.evaluate_scores`)."""
    from .report import evaluate_scores

    return evaluate_scores(
        probs,
        labels,
        classes=classes,
        snr=snr,
        thresholds={t["name"]: t["threshold"] for t in thresholds},
        snr_min=snr_min,
    )


def _freeze_features(model: torch.nn.Module) -> torch.nn.Module:
    """Stop gradients through the model's feature extractor; return that module."""
    features = getattr(model, _FEATURES_ATTRIBUTE, None)
    if not isinstance(features, torch.nn.Module):
        raise ValueError(
            f"freeze_features: {type(model).__name__} has no {_FEATURES_ATTRIBUTE!r} module to freeze."
        )
    for p in features.parameters():
        p.requires_grad_(False)
    return features


def train_triplet_model(
    stamps,
    labels=None,
    *,
    classes=None,
    snr=None,
    masks=None,
    config: TrainConfig | None = None,
    validation=None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    provenance: dict[str, Any] | None = None,
    init: ModelPackage | str | os.PathLike | None = None,
) -> TrainResult:
    """Train, calibrate and package a triplet model.

    Parameters
    ----------
    stamps : `numpy.ndarray` ``(N, C, H, W)`` or `PreparedStamps`
        Raw stamps in `constants.CHANNEL_ORDER` (untrusted pixels NaN; prepared
        here with ``config.contract``), or stamps already prepared with that contract.
    labels : array-like, shape ``(N,)``
        1 = real, 0 = bogus (taken from ``stamps`` if it is `PreparedStamps`).
    classes : array-like of `str`, shape ``(N,)``, optional
        Fine class per source (`constants.REAL_CLASSES`, `ARTIFACT_CLASSES`):
        stratifies the split, trains the class head and gives per-class metrics.
    snr : array-like, shape ``(N,)``, optional
        Source signal-to-noise, for the "at SNR >= 6" thresholds and metrics.
    masks : `numpy.ndarray` ``(N, C, H, W)`` integer, optional
        Mask planes of raw stamps; see ``TrainConfig.mask_fraction``.
    config : `TrainConfig`, optional
    validation : optional
        Validation data: `PreparedStamps`, a dict with ``stamps``, ``labels``
        (and ``classes``, ``snr``, ``masks``), or a tuple ``(stamps, labels[,
        classes[, snr[, masks]]])``.
        By default ``config.validation_fraction`` of the input is held out.
    progress : callable, optional
        Called with event dicts: ``{"event": "start", ...}``, ``{"event": "step",
        "epoch", "step", "steps", "loss"}`` after every batch, ``{"event": "epoch",
        ...}`` (a history entry), ``{"event": "budget", "epochs", "seconds_per_epoch"}``
        (when ``max_seconds`` cuts the number of epochs), ``{"event": "calibrate"}``
        and ``{"event": "done"}``.
    provenance : `dict`, optional
        Recorded in the package (e.g. the command line and the data seeds); the
        config, seed, data sizes, git commit and versions are added.
    init : `ModelPackage` or path, optional
        Fine-tune: start from this trained triplet package's weights (see the
        module docstring and `fine_tune_config`). Its contract, architecture and
        hyperparameters must agree with ``config``; the class-head loss is used
        only if the package has a class head. An ``{"event": "init", "val_loss",
        "val_auc"}`` event reports the package on the new validation set before
        any step.

    Returns
    -------
    result : `TrainResult`

    Raises
    ------
    ValueError
        If the data are unusable, or ``config`` contradicts the ``init`` package
        (the message names the package and the mismatch).
    ModelPackageError
        If ``init`` is not a valid triplet package (corrupt, truncated, ...).
    """
    config = config or TrainConfig()
    contract = config.contract
    init_package, init_name = None, None
    if init is not None:
        init_package, init_name = load_init_package(init)
        check_init_compatible(init_package, config, init_name)
    elif config.freeze_features:
        raise ValueError("TrainConfig.freeze_features needs an init package to take the features from.")
    notify = progress or (lambda event: None)
    dtype = np.float16 if config.storage_dtype == "float16" else np.float32
    data = _as_prepared(stamps, labels, classes, snr, masks, config, dtype, "training")
    if validation is None:
        strata = data.classes if data.classes is not None else None
        train_idx, val_idx = stratified_split(data.labels, config.validation_fraction, config.seed, strata)
        val = data.subset(val_idx)
        data = data.subset(train_idx)
    else:
        val = _as_prepared(validation, None, None, None, None, config, dtype, "validation")
    for name, d in (("training", data), ("validation", val)):
        counts = np.bincount(d.labels, minlength=2)
        if counts.min() == 0:
            raise ValueError(
                f"the {name} set needs both real and bogus stamps; it has {counts[1]} real, {counts[0]} bogus."
            )

    use_classes = config.class_loss_weight > 0 and data.classes is not None
    if init_package is not None and use_classes and tuple(init_package.classes) != ALL_CLASSES:
        raise ValueError(
            f"{init_name} has "
            + (f"a class head over {init_package.classes}" if init_package.classes else "no class head")
            + f", not one over {ALL_CLASSES}; set class_loss_weight=0 to fine-tune it on real/bogus labels."
        )
    train_targets = None
    if use_classes:
        try:
            train_targets = class_targets(data.classes, data.labels)
        except ValueError as err:
            raise ValueError(f"{err} (set class_loss_weight=0 to train without the class head)") from None

    hp = dict(config.hyperparameters)
    defaults = registry.architecture_defaults(config.architecture)
    if "in_channels" in defaults:
        hp["in_channels"] = contract.n_channels
    if "stamp_size" in defaults:
        hp["stamp_size"] = contract.stamp_size
    if "n_classes" in defaults:
        hp["n_classes"] = len(ALL_CLASSES) if use_classes else 0
    elif use_classes:
        raise ValueError(f"architecture {config.architecture!r} has no class head; set class_loss_weight=0.")
    hp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items()}
    if init_package is not None:
        # The network is the package's, class head included (unused when the new data have no classes).
        hp = dict(init_package.components["classifier"].hyperparameters)

    device = _select_device(config.device)
    on_cuda = device.type == "cuda"
    amp = bool(config.amp and on_cuda)
    # bfloat16 has float32's range, so it needs no gradient scaler; the scaler's overflow check
    # reads a flag from the device at every step, a synchronisation we avoid where we can.
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    channels_last = (not on_cuda) if config.channels_last is None else bool(config.channels_last)
    loss_fn = get_loss(config.loss, **dict(config.loss_params))
    old_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    rng_devices = [device] if on_cuda else []
    t_start = time.monotonic()
    try:
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(config.seed)
            if init_package is None:
                model = registry.build(config.architecture, **hp).to(device)
            else:
                model = init_package.build("classifier").to(device)
            frozen = _freeze_features(model) if config.freeze_features else None
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            gen = torch.Generator().manual_seed(config.seed + 1)
            optimizer = torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad],
                lr=config.learning_rate,
                weight_decay=config.weight_decay,
            )
            steps_per_epoch = math.ceil(len(data) / config.batch_size)
            plan = {"total": steps_per_epoch * config.epochs, "epochs": config.epochs}
            if config.schedule == "cosine":
                warmup = max(1, min(500, int(config.warmup_fraction * plan["total"])))
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(plan, warmup))
            elif config.schedule == "plateau":
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=1)
            else:
                scheduler = None
            scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
            sync_every = _loss_sync_steps(device)
            notify(
                {
                    "event": "start",
                    "epochs": config.epochs,
                    "steps": steps_per_epoch,
                    "n_train": len(data),
                    "n_val": len(val),
                    "device": str(device),
                    # What the network computes in: autocast on CUDA only (float32 on the CPU).
                    "precision": str(amp_dtype).replace("torch.", "") + " autocast" if amp else "float32",
                    "parameters": sum(p.numel() for p in model.parameters()),
                }
            )
            history: list[dict[str, Any]] = []
            best_loss = math.inf
            best_state = copy.deepcopy(model.state_dict())
            best_epoch = 0
            init_validation, init_summary = None, None
            if init_package is not None:
                # The package itself on the new validation set: the bar fine-tuning must beat.
                init_logits = model_logits(
                    model,
                    val.x,
                    batch_size=config.eval_batch_size,
                    device=device,
                    channels_last=channels_last,
                )
                val_targets = torch.from_numpy(val.labels.astype(np.float32))
                best_loss = float(loss_fn(torch.from_numpy(init_logits).float(), val_targets))
                init_summary = {"val_loss": best_loss, "val_auc": M.roc_auc(init_logits, val.labels)}
                init_validation = ValidationScores(
                    logits=init_logits,
                    probabilities=apply_temperature(init_logits, init_package.temperature),
                    labels=val.labels.astype(np.int64),
                    classes=val.classes,
                    snr=val.snr,
                )
                notify({"event": "init", **init_summary})
            bad_epochs = 0
            stopped_early = False
            out_of_time = False
            for epoch in range(1, config.epochs + 1):
                if epoch > plan["epochs"]:
                    stopped_early = True
                    break
                model.train()
                if frozen is not None:
                    # Frozen batch-norm layers keep the package's running statistics.
                    frozen.eval()
                t_epoch = time.monotonic()
                sum_loss, n_seen = 0.0, 0
                # The losses pile up on the device and are read every `sync_every` steps:
                # reading one is a host-device synchronisation that drains a GPU's queue.
                pending: list[tuple[int, torch.Tensor, int]] = []
                batches = iterate_batches(
                    data,
                    config.batch_size,
                    shuffle=True,
                    augment=config.augment,
                    noise_std=config.noise_std,
                    flux_jitter=config.flux_jitter,
                    generator=gen,
                    device=device,
                    class_index_targets=train_targets,
                    channels_last=channels_last,
                )
                for step, (xb, yb, cb) in enumerate(batches, start=1):
                    with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
                        if use_classes:
                            logits, class_logits = model.forward_with_classes(xb)
                        else:
                            logits, class_logits = model(xb), None
                    loss = loss_fn(logits.float(), yb)
                    if class_logits is not None:
                        loss = loss + config.class_loss_weight * F.cross_entropy(class_logits.float(), cb)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    if config.schedule == "cosine":
                        scheduler.step()
                    pending.append((step, loss.detach(), len(yb)))
                    out_of_time = (
                        config.max_seconds is not None and time.monotonic() - t_start > config.max_seconds
                    )
                    if len(pending) >= sync_every or out_of_time or step == steps_per_epoch:
                        sum_loss, n_seen = _drain_losses(
                            pending, sum_loss, n_seen, epoch, steps_per_epoch, notify
                        )
                    if out_of_time:
                        break
                if pending:
                    sum_loss, n_seen = _drain_losses(
                        pending, sum_loss, n_seen, epoch, steps_per_epoch, notify
                    )
                seconds = time.monotonic() - t_epoch
                val_logits = model_logits(
                    model,
                    val.x,
                    batch_size=config.eval_batch_size,
                    device=device,
                    channels_last=channels_last,
                )
                vt = torch.from_numpy(val_logits).float()
                val_loss = float(loss_fn(vt, torch.from_numpy(val.labels.astype(np.float32))))
                val_auc = M.roc_auc(val_logits, val.labels)
                if config.schedule == "plateau":
                    scheduler.step(val_loss)
                improved = val_loss < best_loss - config.min_delta
                if improved:
                    best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_epochs += 1
                entry = {
                    "epoch": epoch,
                    "train_loss": sum_loss / max(1, n_seen),
                    "val_loss": val_loss,
                    "val_auc": val_auc,
                    "lr": float(optimizer.param_groups[0]["lr"]),
                    "seconds": seconds,
                    "samples_per_second": n_seen / seconds if seconds > 0 else float("nan"),
                    "improved": improved,
                }
                history.append(entry)
                notify({"event": "epoch", **entry})
                if out_of_time:
                    stopped_early = epoch < config.epochs
                    break
                if epoch == 1 and config.max_seconds is not None:
                    per_epoch = time.monotonic() - t_start
                    fit = max(1, int(config.max_seconds // max(per_epoch, 1e-9)))
                    if fit < plan["epochs"]:
                        plan["epochs"] = fit
                        plan["total"] = steps_per_epoch * fit
                        notify({"event": "budget", "epochs": fit, "seconds_per_epoch": per_epoch})
                if bad_epochs >= config.patience:
                    stopped_early = epoch < config.epochs
                    break
            model.load_state_dict(best_state)
            model.eval()
            train_seconds = time.monotonic() - t_start

            notify({"event": "calibrate"})
            val_logits = model_logits(
                model, val.x, batch_size=config.eval_batch_size, device=device, channels_last=channels_last
            )
            temperature = fit_temperature(val_logits, val.labels)
            temperature_symmetric = None
            if config.symmetric_temperature:
                sym_logits = model_logits(
                    model,
                    val.x,
                    batch_size=config.eval_batch_size,
                    device=device,
                    symmetric=True,
                    channels_last=channels_last,
                )
                temperature_symmetric = fit_temperature(sym_logits, val.labels)
    finally:
        if config.num_threads is not None:
            torch.set_num_threads(old_threads)

    probs = apply_temperature(val_logits, temperature)
    thresholds = choose_thresholds(
        probs, val.labels, snr=val.snr, snr_min=config.threshold_snr_min, purity_targets=config.purity_targets
    )
    metrics = _evaluate_metrics(probs, val.labels, val.classes, val.snr, thresholds, config.threshold_snr_min)
    metrics["uncalibrated_ece"] = M.expected_calibration_error(apply_temperature(val_logits, 1.0), val.labels)
    training_summary = {
        "n_train": len(data),
        "n_val": len(val),
        "n_train_real": int(data.labels.sum()),
        "n_val_real": int(val.labels.sum()),
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "train_seconds": round(train_seconds, 1),
        "device": str(device),
        "temperature": temperature,
        "temperature_symmetric": temperature_symmetric,
        "history": history,
    }
    prov = dict(provenance or {})
    prov.setdefault("seed", config.seed)
    prov.setdefault("git_commit", git_commit())
    prov.setdefault("rbnet_version", __version__)
    prov["config"] = config.to_dict()
    prov["training"] = {k: v for k, v in training_summary.items() if k != "history"}
    prov["history"] = history
    if init_package is not None:
        prov["init"] = {
            "version": init_package.version,
            "sha256": init_package.digest,
            "name": init_name,
            "created": init_package.provenance.get("created"),
            "freeze_features": bool(config.freeze_features),
            "before": init_summary,
        }
    if data.classes is not None:
        names, counts = np.unique(data.classes, return_counts=True)
        prov["train_classes"] = {str(n): int(c) for n, c in zip(names, counts)}
    package = ModelPackage.from_modules(
        "triplet",
        {"classifier": (config.architecture, hp, model.to("cpu").to(memory_format=torch.contiguous_format))},
        contract=contract,
        version=config.version,
        temperature=temperature,
        temperature_symmetric=temperature_symmetric,
        thresholds=thresholds,
        # A fine-tuned package keeps the init package's class head (trained further or not).
        classes=init_package.classes if init_package is not None else (ALL_CLASSES if use_classes else ()),
        metrics={"validation": metrics},
        provenance=prov,
        extra={
            "threshold_snr_min": config.threshold_snr_min,
            "threshold_note": (
                "default: calibrated probability 0.5, purity/completeness over all validation sources; "
                "purityNN: lowest threshold reaching that purity on validation sources with "
                f"snr >= {config.threshold_snr_min} (all sources when snr is unknown), measured there."
            ),
        },
    )
    notify({"event": "done", "seconds": time.monotonic() - t_start})
    return TrainResult(
        package=package,
        history=history,
        metrics=metrics,
        validation=ValidationScores(
            logits=val_logits,
            probabilities=probs,
            labels=val.labels.astype(np.int64),
            classes=val.classes,
            snr=val.snr,
        ),
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        init_validation=init_validation,
    )
