# This file is part of meas_rbnet.
"""Stratified k-fold cross-validation of the triplet model.

Each fold trains a model on the other ``k - 1`` folds (with its own inner
validation split for early stopping and calibration) and evaluates it on the
held-out fold with `report.evaluate_scores`; the scalar metrics are then
summarised as mean and standard deviation over the folds.
"""

__all__ = ["stratified_kfold", "fold_splits", "cross_validate", "summarize_folds"]

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from .calibration import apply_temperature
from .data import PreparedStamps, prepare_dataset, stratified_folds
from .loop import TrainConfig, model_logits, train_triplet_model
from .report import evaluate_scores


def stratified_kfold(labels, k: int, seed: int = 0, strata=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index pairs ``(train, test)`` of a stratified k-fold split.

    Every index is in exactly one test set; the label (and, with ``strata``,
    class) fractions of each test set match the whole to within one source per
    stratum.

    Parameters
    ----------
    labels : array-like, shape ``(N,)``
    k : `int`
    seed : `int`
    strata : array-like of `str`, shape ``(N,)``, optional
        E.g. the source classes.

    Returns
    -------
    folds : `list` [`tuple` [`numpy.ndarray`, `numpy.ndarray`]]
        ``k`` pairs of sorted int64 index arrays.
    """
    return fold_splits(stratified_folds(labels, k, seed, strata), k)


def fold_splits(fold, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index pairs ``(train, test)`` of each fold from the fold number of each item.

    Shared by the triplet (`stratified_kfold`) and sequence
    (`lsst.meas.rbnet.sequence.cv.stratified_kfold`) cross-validations.

    Parameters
    ----------
    fold : `numpy.ndarray` of int, shape ``(N,)``
        Fold number of each item in ``[0, k)`` (e.g. from `~lsst.meas.rbnet.training.data.deal_folds`).
    k : `int`
        Number of folds.

    Returns
    -------
    folds : `list` [`tuple` [`numpy.ndarray`, `numpy.ndarray`]]
        ``k`` pairs of sorted int64 index arrays; item ``i`` is in the test set of fold ``fold[i]``.
    """
    return [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten the scalar (and nested-dict scalar) entries of a metrics dict."""
    out = {}
    for key, value in metrics.items():
        if key in ("per_class", "per_class_snr", "confusion", "completeness_by_snr"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_scalars(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
            out[name] = float(value)
    return out


def summarize_folds(fold_metrics: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ddof=1) of every scalar metric over folds.

    Returns
    -------
    summary : `dict` [`str`, `dict`]
        ``{"roc_auc": {"mean": ..., "std": ..., "n": k}, "thresholds.default.purity": {...}, ...}``.
    """
    flat = [_scalars(m) for m in fold_metrics]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = {}
    for key in keys:
        vals = np.array([f[key] for f in flat if key in f and f[key] is not None], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            out[key] = {
                "mean": float(vals.mean()),
                "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                "n": int(vals.size),
            }
    return out


def cross_validate(
    stamps,
    labels=None,
    *,
    k: int = 5,
    classes=None,
    snr=None,
    masks=None,
    config: TrainConfig | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Stratified k-fold cross-validation of `train_triplet_model`.

    Parameters
    ----------
    stamps : `numpy.ndarray` ``(N, C, H, W)`` raw stamps, or `PreparedStamps`
    labels, classes, snr, masks
        As in `train_triplet_model`.
    k : `int`
        Number of folds.
    config : `TrainConfig`, optional
        Training settings; fold ``i`` uses seed ``config.seed + i``.
    progress : callable, optional
        Receives the training events with an added ``"fold"`` key.

    Returns
    -------
    result : `dict`
        ``{"k": k, "folds": [evaluate_scores dict per fold, with "temperature"
        and "best_epoch"], "summary": summarize_folds(...)}`` (JSON-serialisable).
    """
    config = config or TrainConfig()
    if isinstance(stamps, PreparedStamps):
        data = stamps
    else:
        if labels is None:
            raise ValueError("labels are required with raw stamps.")
        dtype = np.float16 if config.storage_dtype == "float16" else np.float32
        data = prepare_dataset(
            stamps, labels, config.contract, classes=classes, snr=snr, masks=masks,
            mask_fraction=config.mask_fraction, seed=config.seed, dtype=dtype,
        )  # fmt: skip
    folds = stratified_kfold(data.labels, k, config.seed, data.classes)
    results = []
    for i, (train_idx, test_idx) in enumerate(folds):
        fold_config = dataclasses.replace(config, seed=config.seed + i)

        def fold_progress(event, i=i):
            if progress is not None:
                progress({**event, "fold": i + 1, "k": k})

        res = train_triplet_model(data.subset(train_idx), config=fold_config, progress=fold_progress)
        test = data.subset(test_idx)
        model = res.package.build("classifier")
        logits = model_logits(model, test.x, batch_size=config.eval_batch_size)
        probs = apply_temperature(logits, res.package.temperature)
        m = evaluate_scores(
            probs,
            test.labels,
            classes=test.classes,
            snr=test.snr,
            thresholds={t["name"]: t["threshold"] for t in res.package.thresholds},
            snr_min=config.threshold_snr_min,
        )
        m["temperature"] = res.package.temperature
        m["best_epoch"] = res.best_epoch
        results.append(m)
    return {"k": k, "folds": results, "summary": summarize_folds(results)}
