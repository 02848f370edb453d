# This file is part of meas_rbnet.
"""Training of the two stages of the sequence model: the frame VAE and the sequence classifier.

`fit_sequence_classifier` trains one classifier on some objects of a `LatentSet`:
it standardises the latents with statistics of its *training* objects only (stored
in the module, so they travel with the weights), holds out a stratified inner
validation split for early stopping, and trains on length-bucketed batches with
long sequences shortened at random (``train_max_len``; a regulariser and a large
speed-up on long light curves: validation and prediction always use the full
sequences). Losses are ``"bce"`` and ``"bce+tversky"``
(`lsst.meas.rbnet.training.losses`).

Defaults differ from the paper where that made the model better or cheaper on a
2-core CPU: AdamW with learning rate 1e-3 (paper: Adam 1e-4 for 500 epochs), a short
warm-up and cosine decay, early stopping on the validation ROC-AUC (patience 5),
weight decay 1e-5 for the GRUs (the paper's L2 for the bidirectional GRU) and 1e-3
for the Conv1D, training sequences subsampled to at most 192 visits, and Platt
calibration on the validation objects folded into the model and its temperature.

`train_vae` trains the frame VAE with the paper's loss (log-cosh + 8e-5 KL), Adam.

The parts live beside this module and are re-exported here (the old import paths):
`sequence.train_config` (the configs, `FitResult`, `TRAIN_PRESETS`), `sequence.train_eval`
(split, Platt scaling, standardisation, `predict_logits`) and `sequence.vae_training`
(`VAETrainConfig`, `train_vae`).
"""

__all__ = [
    "SequenceTrainConfig",
    "FitResult",
    "fit_sequence_classifier",
    "predict_logits",
    "standardization",
    "stratified_split",
    "platt_scaling",
    "VAETrainConfig",
    "train_vae",
    "TRAIN_PRESETS",
    "SequencePackageConfig",
    "train_sequence_package",
]

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..nn import registry
from ..training.losses import get_loss
from ..training.metrics import roc_auc
from ..training.steps import sum_step_losses
from .data import collate, length_batches
from .latents import LatentSet
from .train_config import TRAIN_PRESETS, SequenceTrainConfig, FitResult, SequencePackageConfig  # noqa: F401
from .train_eval import stratified_split, platt_scaling, standardization, predict_logits, _bce  # noqa: F401
from .vae_training import VAETrainConfig, train_vae  # noqa: F401


def fit_sequence_classifier(
    latents: LatentSet,
    train_index: np.ndarray,
    config: SequenceTrainConfig | None = None,
    val_index: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train a sequence classifier on the objects ``train_index`` of ``latents``.

    Parameters
    ----------
    latents : `LatentSet`
        All objects, with labels (1 = real).
    train_index : `numpy.ndarray`
        Objects to learn from. Unless ``val_index`` is given, a stratified
        ``config.val_fraction`` of them is held out for early stopping.
    config : `SequenceTrainConfig`, optional
        Training settings.
    val_index : `numpy.ndarray`, optional
        Explicit early-stopping objects (disjoint from ``train_index``).
    log : callable, optional
        Called with one line per epoch.

    Returns
    -------
    result : `FitResult`
    """
    config = config or SequenceTrainConfig()
    if latents.labels is None:
        raise ValueError("fit_sequence_classifier needs labelled latents.")
    t_start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    train_index = np.asarray(train_index, dtype=np.int64)
    if val_index is None:
        keep, held = stratified_split(latents.labels[train_index], config.val_fraction, rng)
        fit_index, val_index = train_index[keep], train_index[held]
    else:
        fit_index, val_index = train_index, np.asarray(val_index, dtype=np.int64)
    y_all = latents.labels.astype(np.float32)
    if len(np.unique(y_all[fit_index])) < 2:
        raise ValueError("The training objects need both real and bogus examples.")

    hp = dict(config.hyperparameters)
    hp["input_dim"] = latents.width
    model = registry.build(config.architecture, **hp)
    mean, scale = standardization(latents, fit_index)
    model.set_standardization(mean, scale)
    model.to(config.device)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.effective_weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    loss_fn = get_loss(config.loss, **config.loss_params)
    lengths = latents.lengths[fit_index]
    steps_per_epoch = len(
        length_batches(lengths, config.batch_frames, config.max_batch, max_len=config.train_max_len)
    )
    total_steps = max(1, steps_per_epoch * config.max_epochs)
    warmup = max(1, steps_per_epoch // 2)

    def lr_at(step: int) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return config.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))

    y_val = latents.labels[val_index].astype(np.float64)
    best = ((-math.inf, -math.inf), None, 0, None)  # score (higher is better), state, epoch, val logits
    history: list[dict[str, float]] = []
    step = 0
    since_best = 0
    out_of_time = False
    for epoch in range(1, config.max_epochs + 1):
        t0 = time.perf_counter()
        model.train()
        # Step losses stay on the device and are read once, after the epoch's last step: a read
        # per step would make the host wait for the device every step (a synchronisation).
        pending: list[tuple[int, torch.Tensor, int]] = []
        for b in length_batches(
            lengths,
            config.batch_frames,
            config.max_batch,
            shuffle=True,
            rng=rng,
            max_len=config.train_max_len,
        ):
            idx = fit_index[b]
            batch = collate(
                latents.values,
                latents.offsets,
                idx,
                latents.times,
                max_len=config.train_max_len,
                crop=config.crop,
                rng=rng,
                device=config.device,
            )
            target = torch.from_numpy(y_all[idx]).to(config.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            logits = model(batch.x, batch.lengths, batch.dt)
            loss = loss_fn(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            step += 1
            pending.append((step, loss.detach(), len(idx)))
            if config.max_seconds is not None and time.perf_counter() - t_start > config.max_seconds:
                # Out of time within an epoch (a slow or busy machine): validate what we have and stop.
                out_of_time = True
                break
        total, count = sum_step_losses(pending)
        val_logits = predict_logits(model, latents, val_index, device=config.device)
        val_loss = _bce(val_logits, y_val)
        try:
            val_auc = roc_auc(val_logits, y_val.astype(np.int64))
        except ValueError:
            val_auc = float("nan")
        elapsed = time.perf_counter() - t0
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / max(count, 1),
                "val_loss": val_loss,
                "val_auc": val_auc,
                "seconds": elapsed,
            }
        )
        if log is not None:
            log(
                f"epoch {epoch:3d}  train {total / max(count, 1):.4f}  val loss {val_loss:.4f}  "
                f"val AUC {val_auc:.4f}  {elapsed:.1f}s"
            )
        auc_key = val_auc if np.isfinite(val_auc) else -math.inf
        score = (auc_key, -val_loss) if config.monitor == "auc" else (-val_loss, auc_key)
        if score > best[0]:
            best = (score, copy.deepcopy(model.state_dict()), epoch, val_logits)
            since_best = 0
        else:
            since_best += 1
        if epoch >= config.min_epochs and since_best >= config.patience:
            break
        if config.max_seconds is not None:
            spent = time.perf_counter() - t_start
            if out_of_time or spent + elapsed > config.max_seconds:
                if log is not None:
                    log(f"time budget of {config.max_seconds:.0f}s reached after epoch {epoch}")
                break
    model.load_state_dict(best[1])
    model.eval()
    val_logits = best[3]
    temperature = 1.0
    if config.calibrate and 0 < y_val.sum() < len(y_val):
        a, b = platt_scaling(val_logits, y_val)
        model.shift_logit(b / a)
        val_logits = val_logits + np.float32(b / a)
        temperature = 1.0 / a
    return FitResult(
        model=model,
        hyperparameters=hp,
        history=history,
        best_epoch=best[2],
        val_index=val_index,
        val_logits=val_logits,
        temperature=temperature,
        seconds=time.perf_counter() - t_start,
    )


def train_sequence_package(
    frames: np.ndarray,
    offsets: np.ndarray,
    labels: np.ndarray,
    times: np.ndarray | None = None,
    config: SequencePackageConfig | None = None,
    frame_channels: tuple[str, ...] | None = None,
    object_ids: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    visit_scores: np.ndarray | None = None,
    visit_score_versions: Sequence[str] | None = None,
):
    """Train the VAE and a sequence classifier from raw frames and package them.

    Parameters
    ----------
    frames : `numpy.ndarray`
        ``(sum T_i, C, F, F)`` raw frames (pixels; NaN where no data), objects
        concatenated, visits of each object in time order.
    offsets : `numpy.ndarray`
        ``(n_objects + 1,)`` object boundaries.
    labels : `numpy.ndarray`
        ``(n_objects,)`` 1 = real, 0 = bogus.
    times : `numpy.ndarray`, optional
        ``(sum T_i,)`` visit times in days.
    config : `SequencePackageConfig`, optional
        Settings.
    frame_channels : `tuple` [`str`, ...], optional
        Channel names of ``frames`` (default `CHANNEL_ORDER` for 3 channels, else
        ``config.channels``).
    object_ids : `numpy.ndarray`, optional
        Object ids (for the provenance only).
    provenance : `dict`, optional
        Extra provenance entries (e.g. the command line).
    log : callable, optional
        Progress lines.
    visit_scores : `numpy.ndarray`, optional
        ``(sum T_i,)`` single-visit ``P(real)`` of every frame (NaN where a visit was
        not scored). When given, the classifier reads them beside the latents
        (`lsst.meas.rbnet.sequence.aggregate.visit_score_features`; the package
        records ``extra["frame_features"]``) and so needs them when scoring too.
    visit_score_versions : sequence of `str`, optional
        ``reliabilityVersion`` of the single-visit model(s) that made ``visit_scores``,
        recorded as ``extra["visit_score_versions"]`` so scoring can warn when the
        scores come from another model.

    Returns
    -------
    package : `lsst.meas.rbnet.package.ModelPackage`
        ``kind="sequence"`` with components ``"encoder"`` (``"vae"``) and ``"classifier"``.
    metrics : `dict`
        Held-out metrics (ROC-AUC, accuracy, F1, purity/completeness at the default threshold).
    """
    from ..constants import CHANNEL_ORDER
    from ..contract import InputContract
    from ..cutouts import normalize_stamps
    from ..package import ModelPackage
    from ..training.metrics import accuracy, f1, purity_completeness
    from .aggregate import FRAME_FEATURES, visit_score_features
    from .encode import encode_frames

    config = config or SequencePackageConfig()
    say = log or (lambda s: None)
    frames = np.asarray(frames)
    offsets = np.asarray(offsets, dtype=np.int64)
    labels = np.asarray(labels).astype(np.int8)
    if frames.ndim != 4 or frames.shape[2] != frames.shape[3]:
        raise ValueError(f"frames must be (N, C, F, F), got {frames.shape}.")
    if offsets.shape != (len(labels) + 1,) or offsets[0] != 0 or offsets[-1] != len(frames):
        raise ValueError("offsets must be (n_objects + 1,) from 0 to the number of frames.")
    if np.any(np.diff(offsets) < 1):
        raise ValueError("every object needs at least one frame.")
    features: tuple[str, ...] = ()
    if visit_scores is not None:
        visit_scores = np.asarray(visit_scores)
        if visit_scores.shape != (len(frames),):
            raise ValueError(
                f"visit_scores must have one value per frame ({len(frames)}), got shape {visit_scores.shape}."
            )
        features = FRAME_FEATURES
        feature_values = visit_score_features(visit_scores, features)
    if frame_channels is None:
        frame_channels = CHANNEL_ORDER if frames.shape[1] == 3 else tuple(config.channels)
    frame_channels = tuple(frame_channels)
    if len(frame_channels) != frames.shape[1]:
        raise ValueError(
            f"frame_channels {frame_channels} do not match the frames' {frames.shape[1]} channels."
        )
    channels = tuple(config.channels)
    missing = [c for c in channels if c not in frame_channels]
    if missing:
        raise ValueError(f"The model should read channels {channels} but the frames lack {missing}.")
    frame_size = int(frames.shape[2])
    # The per-visit stamps the frames are cut from: odd, with the source at
    # pixel stamp_size // 2 == frame_size // 2.
    stamp_size = frame_size + 1 if frame_size % 2 == 0 else frame_size
    contract = InputContract(stamp_size=stamp_size, channels=channels, normalization=config.normalization)

    say(f"Normalising {len(frames)} frames ({config.normalization}) ...")
    x = np.ascontiguousarray(frames[:, [frame_channels.index(c) for c in channels]], dtype=np.float32)
    x = normalize_stamps(x, contract)

    rng = np.random.default_rng(config.seed)
    all_idx = np.arange(len(labels))
    if config.test_fraction > 0:
        keep, held = stratified_split(labels, config.test_fraction, rng)
    else:
        keep, held = all_idx, np.zeros(0, dtype=np.int64)
    train_rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in keep])
    say(f"Training the VAE on {len(train_rows)} frames of {len(keep)} objects ...")
    vae, vae_hp, vae_hist = train_vae(x[train_rows], config.vae, log=log)
    say("Encoding all frames ...")
    mu = encode_frames(vae, x)
    latent_dim = mu.shape[1]
    if features:
        mu = np.concatenate([mu, feature_values], axis=1)
    latents = LatentSet(
        object_ids=np.asarray(object_ids if object_ids is not None else all_idx).astype(str),
        values=mu,
        offsets=offsets,
        labels=labels,
        times=None if times is None else np.asarray(times, dtype=np.float64),
    )
    say(f"Training the classifier {config.classifier.architecture} on {len(keep)} objects ...")
    fit = fit_sequence_classifier(latents, keep, config.classifier, log=log)
    temperature = fit.temperature

    eval_idx = held if len(held) else fit.val_index
    z = predict_logits(fit.model, latents, eval_idx)
    p = 1.0 / (1.0 + np.exp(-np.clip(z / temperature, -60, 60)))
    y = labels[eval_idx].astype(np.int64)
    metrics: dict[str, Any] = {
        "evaluated_on": "held-out test objects" if len(held) else "inner validation objects",
        "n_eval": int(len(eval_idx)),
    }
    if 0 < y.sum() < len(y):
        pur, comp = purity_completeness(p, y, 0.5)
        metrics.update(
            roc_auc=roc_auc(p, y),
            accuracy=accuracy(p, y, 0.5),
            f1_real=f1(p, y, 0.5),
            f1_artifact=f1(1 - p, 1 - y, 0.5),
            purity=pur,
            completeness=comp,
        )
        thresholds = [{"name": "default", "threshold": 0.5, "purity": pur, "completeness": comp}]
    else:
        thresholds = [{"name": "default", "threshold": 0.5}]
    metrics["vae_final_loss"] = vae_hist[-1]["loss"] if vae_hist else None
    metrics["classifier_best_epoch"] = fit.best_epoch
    prov = {
        "n_objects": int(len(labels)),
        "n_frames": int(len(frames)),
        "n_train_objects": int(len(keep)),
        "n_test_objects": int(len(held)),
        "seed": config.seed,
        "vae_config": {k: v for k, v in dataclasses.asdict(config.vae).items()},
        "classifier_config": {k: v for k, v in dataclasses.asdict(config.classifier).items()},
        **(provenance or {}),
    }
    package = ModelPackage.from_modules(
        "sequence",
        {
            "encoder": ("vae", vae_hp, vae),
            "classifier": (config.classifier.architecture, fit.hyperparameters, fit.model),
        },
        contract=contract,
        version=config.version,
        temperature=temperature,
        thresholds=thresholds,
        metrics=metrics,
        provenance=prov,
        extra={
            "frame_size": frame_size,
            "frame_channels": list(channels),
            "frame_crop": "stamp[..., a:a+F, a:a+F] with a = stamp_size // 2 - frame_size // 2",
            "latent_columns": [0, int(latent_dim)],
            "frame_features": list(features),
            "visit_score_versions": sorted({str(v) for v in (visit_score_versions or ()) if v})
            if features
            else [],
            "time_feature": "log(1 + dt), dt in days since the previous visit",
        },
    )
    return package, metrics
