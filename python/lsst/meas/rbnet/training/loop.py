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

The loop's parts live beside it and are re-exported here (the old import paths):
`training.config` (`TrainConfig`, `TrainResult`), `training.finetune` (the init
package), `training.evaluation` (`model_logits`, `choose_thresholds`) and
`training.steps` (device, loss read-back, schedule, `git_commit`).
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
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import ALL_CLASSES
from ..nn import registry
from ..package import ModelPackage
from ..version import __version__
from . import metrics as M
from .calibration import apply_temperature, fit_temperature
from .config import SCHEDULES, TrainConfig, ValidationScores, TrainResult  # noqa: F401
from .data import class_targets, iterate_batches, stratified_split
from .evaluation import model_logits, choose_thresholds, _evaluate_metrics  # noqa: F401
from .finetune import (  # noqa: F401
    FINE_TUNE_LEARNING_RATE,
    FINE_TUNE_HEAD_LEARNING_RATE,
    _FEATURES_ATTRIBUTE,
    _init_name,
    load_init_package,
    check_init_compatible,
    fine_tune_config,
    _freeze_features,
)
from .losses import get_loss
from .steps import (  # noqa: F401
    LOSS_SYNC_STEPS,
    git_commit,
    _loss_sync_steps,
    _drain_losses,
    _select_device,
    _as_prepared,
    _lr_lambda,
)


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
            val_targets = torch.from_numpy(val.labels.astype(np.float32))

            def validation_logits(symmetric: bool = False) -> np.ndarray:
                """Logits of the model now on the validation set."""
                return model_logits(
                    model,
                    val.x,
                    batch_size=config.eval_batch_size,
                    device=device,
                    symmetric=symmetric,
                    channels_last=channels_last,
                )

            def validation_scores() -> tuple[np.ndarray, float, float]:
                """Logits, loss and ROC-AUC of the model now on the validation set."""
                logits = validation_logits()
                loss = float(loss_fn(torch.from_numpy(logits).float(), val_targets))
                return logits, loss, M.roc_auc(logits, val.labels)

            if init_package is not None:
                # The package itself on the new validation set: the bar fine-tuning must beat.
                init_logits, best_loss, init_auc = validation_scores()
                init_summary = {"val_loss": best_loss, "val_auc": init_auc}
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
                val_logits, val_loss, val_auc = validation_scores()
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
            val_logits = validation_logits()
            temperature = fit_temperature(val_logits, val.labels)
            temperature_symmetric = None
            if config.symmetric_temperature:
                sym_logits = validation_logits(symmetric=True)
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
