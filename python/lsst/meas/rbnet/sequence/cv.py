# This file is part of meas_rbnet.
"""Stratified k-fold evaluation of sequence classifiers, and ROC curves of several models.

As in the RB_ZTF paper the labelled objects are split into ``k`` (5) folds; each fold
is the test set of one model trained on the other ``k - 1`` (with its own inner
validation split for early stopping and its own feature standardisation), and the
metrics are reported as mean +/- standard deviation over folds:

- ROC-AUC (does not depend on which class is called positive);
- accuracy at probability 0.5;
- F1 of the *artifact* class (the positive class of the paper's table, where
  label 1 = artifact), and in the JSON also F1 of the real class.

With two or more models, an ``ensemble`` row averages their fold probabilities.
A wall-time budget can be shared out between the fits (`cross_validate`'s
``time_budget``): each fit gets the remaining budget divided by the fits still to
run and keeps its best epoch when its share runs out.

With ``workers > 1`` (the command line uses one per CPU core, at most 2 by default)
the fits run in that many worker processes of one torch thread each (started fresh,
not forked, and handed the latents once), so the other core is not idle: every fit
then gets ``workers`` times its share of the budget. Each fit is seeded by its fold
alone, so the results do not depend on the number of workers.
"""

__all__ = [
    "MODEL_ALIASES",
    "resolve_model",
    "stratified_kfold",
    "FoldResult",
    "ModelCV",
    "CVResult",
    "cross_validate",
    "default_workers",
    "plot_roc",
]

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..constants import BOGUS, REAL
from ..training.crossval import fold_splits
from ..training.data import deal_folds
from ..training.metrics import accuracy, f1, roc_auc, roc_curve
from ..training.plots import RocLine, draw_roc
from .latents import LatentSet
from .train import SequenceTrainConfig, fit_sequence_classifier, predict_logits

#: Short model names accepted on the command line -> registered architectures.
MODEL_ALIASES: dict[str, str] = {
    "bigru": "seq_bigru",
    "gru": "seq_gru",
    "lstm": "seq_lstm",
    "conv1d": "seq_conv1d",
}


def resolve_model(name: str) -> str:
    """Registered architecture name of a short or full model name."""
    name = name.strip()
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    if name in MODEL_ALIASES.values():
        return name
    raise ValueError(f"Unknown sequence model {name!r}; expected one of {sorted(MODEL_ALIASES)}.")


def stratified_kfold(labels: np.ndarray, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified ``k``-fold split.

    Parameters
    ----------
    labels : `numpy.ndarray`
        ``(N,)`` class labels.
    k : `int`
        Number of folds (>= 2, at most the size of the smallest class).
    seed : `int`
        Random seed of the shuffle.

    Returns
    -------
    folds : `list` [`tuple` [`numpy.ndarray`, `numpy.ndarray`]]
        ``(train_index, test_index)`` per fold; every object is in exactly one test set
        and each class is spread over the folds as evenly as possible.
    """
    labels = np.asarray(labels)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}.")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError("k-fold evaluation needs both classes.")
    if counts.min() < k:
        raise ValueError(
            f"k = {k} folds need at least {k} objects of each class; the smallest class has {counts.min()}."
        )
    # The same shuffle-and-deal as the triplet model's folds, stratified by label alone.
    return fold_splits(deal_folds(labels, k, seed), k)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


@dataclasses.dataclass
class FoldResult:
    """Metrics of one model on one test fold."""

    fold: int
    roc_auc: float
    accuracy: float
    f1_artifact: float
    f1_real: float
    seconds: float
    best_epoch: int
    epochs: int
    n_train: int
    n_test: int


@dataclasses.dataclass
class ModelCV:
    """One model's k-fold results.

    Attributes
    ----------
    name : `str`
        Short name (``"bigru"``, ..., ``"ensemble"``).
    architecture : `str`
        Registered architecture (``""`` for the ensemble).
    folds : `list` [`FoldResult`]
        Per-fold metrics.
    probabilities : `numpy.ndarray`
        ``(N,)`` out-of-fold ``P(real)`` of every object.
    """

    name: str
    architecture: str
    folds: list[FoldResult]
    probabilities: np.ndarray

    def summary(self) -> dict[str, float]:
        """Mean and standard deviation over folds of each metric, and the total time."""
        out: dict[str, float] = {}
        for key in ("roc_auc", "accuracy", "f1_artifact", "f1_real"):
            v = np.array([getattr(f, key) for f in self.folds], dtype=float)
            out[f"{key}_mean"] = float(v.mean())
            # Population std over folds (as numpy's default; the paper does not say which).
            out[f"{key}_std"] = float(v.std())
        out["seconds"] = float(sum(f.seconds for f in self.folds))
        return out


@dataclasses.dataclass
class CVResult:
    """k-fold results of several models on the same folds."""

    models: dict[str, ModelCV]
    labels: np.ndarray
    object_ids: np.ndarray
    fold_of: np.ndarray
    k: int
    seed: int
    settings: dict[str, Any]
    seconds: float

    def table_lines(self) -> list[str]:
        """The results table: model, ROC-AUC, accuracy, F1, time."""
        head = f"{'model':<10} {'ROC-AUC':>15} {'accuracy':>15} {'F1 (artifact)':>15} {'time':>8}"
        lines = [head, "-" * len(head)]
        for name, m in self.models.items():
            s = m.summary()
            lines.append(
                f"{name:<10} {s['roc_auc_mean']:>7.3f} +/- {s['roc_auc_std']:.3f} "
                f"{s['accuracy_mean']:>7.3f} +/- {s['accuracy_std']:.3f} "
                f"{s['f1_artifact_mean']:>7.3f} +/- {s['f1_artifact_std']:.3f} {s['seconds']:>7.0f}s"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (summaries, per-fold metrics and out-of-fold probabilities)."""
        return {
            "k": self.k,
            "seed": self.seed,
            "n_objects": int(len(self.labels)),
            "n_real": int((self.labels == REAL).sum()),
            "n_bogus": int((self.labels == BOGUS).sum()),
            "seconds": self.seconds,
            "settings": self.settings,
            "models": {
                name: {
                    "architecture": m.architecture,
                    "summary": m.summary(),
                    "folds": [dataclasses.asdict(f) for f in m.folds],
                }
                for name, m in self.models.items()
            },
            "predictions": {
                "object_id": self.object_ids.tolist(),
                "label_real": self.labels.astype(int).tolist(),
                "fold": self.fold_of.astype(int).tolist(),
                **{
                    f"p_real_{name}": np.round(m.probabilities, 6).tolist() for name, m in self.models.items()
                },
            },
        }


def _fold_metrics(p: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    auc = roc_auc(p, y) if 0 < y.sum() < len(y) else float("nan")
    return auc, accuracy(p, y, 0.5), f1(1.0 - p, 1 - y, 0.5), f1(p, y, 0.5)


#: What `_fit_one` reads: set in this process, or in each worker by `_worker_init`.
_SHARED: dict[str, Any] = {}


def _fit_one(task: tuple[int, str, float | None]) -> tuple[int, str, np.ndarray, float, int, int]:
    """Train one model on one fold's training objects; probabilities of its test objects."""
    f, name, max_seconds = task
    sh = _SHARED
    train, test = sh["folds"][f]
    ov = dict(sh["overrides"].get(name, {}))
    hp = dict(ov.pop("hyperparameters", {}))
    config = SequenceTrainConfig(
        architecture=sh["archs"][name],
        hyperparameters=hp,
        loss=sh["loss"],
        seed=sh["seed"] * 1000 + f,
        max_seconds=max_seconds,
        **ov,
    )
    fit = fit_sequence_classifier(sh["latents"], train, config)
    p = _sigmoid(predict_logits(fit.model, sh["latents"], test, device=config.device) / fit.temperature)
    return f, name, p, fit.seconds, fit.best_epoch, len(fit.history)


def _worker_init(shared: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(1)
    _SHARED.clear()
    _SHARED.update(shared)


def default_workers() -> int:
    """Fit processes `rbnet sequence-cv` uses by default: one per CPU core, at most 2."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(2, n))


def cross_validate(
    latents: LatentSet,
    models: Sequence[str] = ("bigru",),
    k: int = 5,
    seed: int = 0,
    loss: str = "bce",
    time_budget: float | None = None,
    config_overrides: dict[str, dict[str, Any]] | None = None,
    ensemble: bool = True,
    log: Callable[[str], None] | None = None,
    max_folds: int | None = None,
    workers: int = 1,
) -> CVResult:
    """Stratified k-fold evaluation of sequence models on the same folds.

    Parameters
    ----------
    latents : `LatentSet`
        Labelled objects (1 = real).
    models : sequence of `str`
        Model names (`MODEL_ALIASES` keys or registered architectures).
    k : `int`
        Number of folds.
    seed : `int`
        Seed of the folds and of training.
    loss : `str`
        ``"bce"`` or ``"bce+tversky"``.
    time_budget : `float`, optional
        Wall seconds for all fits together (shared out as they run).
    config_overrides : `dict`, optional
        Per model name, `SequenceTrainConfig` fields to override (``hyperparameters``
        are merged with the defaults).
    ensemble : `bool`
        Add an ``"ensemble"`` row averaging the models' probabilities (two or more models).
    log : callable, optional
        Progress lines.
    max_folds : `int`, optional
        Run only the first ``max_folds`` folds of the ``k`` (e.g. to time one fold);
        objects of the folds not run keep NaN probabilities.
    workers : `int`
        Fits run at once, each in a worker process with one torch thread (1: in
        this process, in order).

    Returns
    -------
    result : `CVResult`
    """
    if latents.labels is None:
        raise ValueError("cross_validate needs labelled latents.")
    t_start = time.perf_counter()
    names = [m.strip() for m in models if m.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"models must be distinct names, got {list(models)}.")
    archs = {name: resolve_model(name) for name in names}
    y = latents.labels.astype(np.int64)
    folds = stratified_kfold(y, k, seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    for f, (_, test) in enumerate(folds):
        fold_of[test] = f
    if max_folds is not None:
        folds = folds[: max(1, int(max_folds))]
    overrides = config_overrides or {}
    probs = {name: np.full(len(y), np.nan) for name in names}
    results: dict[str, list[FoldResult]] = {name: [] for name in names}
    n_fits = len(folds) * len(names)
    tasks = [(f, name) for f in range(len(folds)) for name in names]
    shared = dict(latents=latents, folds=folds, archs=archs, overrides=overrides, loss=loss, seed=seed)
    _SHARED.clear()
    _SHARED.update(shared)
    workers = max(1, min(int(workers), n_fits))
    done_fits: dict[tuple[int, str], FoldResult] = {}

    def record(f: int, name: str, p: np.ndarray, seconds: float, best: int, epochs: int) -> None:
        train, test = folds[f]
        probs[name][test] = p
        auc, acc, f1a, f1r = _fold_metrics(p, y[test])
        done_fits[(f, name)] = FoldResult(f, auc, acc, f1a, f1r, seconds, best, epochs, len(train), len(test))
        if log is not None:
            log(
                f"fold {f + 1}/{k} {name:<7} AUC {auc:.3f}  acc {acc:.3f}  F1(artifact) {f1a:.3f}  "
                f"epochs {epochs} (best {best})  {seconds:.0f}s"
            )

    try:
        if workers == 1:
            for done, (f, name) in enumerate(tasks):
                max_seconds = None
                if time_budget is not None:
                    remaining = time_budget - (time.perf_counter() - t_start)
                    # Leave a little for evaluation and plotting after the last fit.
                    max_seconds = max(5.0, 0.97 * remaining / (n_fits - done))
                record(*_fit_one((f, name, max_seconds)))
        else:
            # Each fit may use its share of the budget on each of the workers; in the worst
            # case (every fit uses all of it) the fits end within 95% of the budget.
            cap = None if time_budget is None else max(5.0, 0.95 * time_budget * workers / n_fits)
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(shared,)) as pool:
                for res in pool.imap_unordered(_fit_one, [(f, name, cap) for f, name in tasks]):
                    record(*res)
    finally:
        _SHARED.clear()
    for f, name in tasks:  # in fold order, however the workers finished
        results[name].append(done_fits[(f, name)])
    out = {name: ModelCV(name, archs[name], results[name], probs[name]) for name in names}
    if ensemble and len(names) > 1:
        p_ens = np.mean([probs[n] for n in names], axis=0)
        ens_folds = []
        for f, (train, test) in enumerate(folds):
            auc, acc, f1a, f1r = _fold_metrics(p_ens[test], y[test])
            secs = sum(results[n][f].seconds for n in names)
            ens_folds.append(FoldResult(f, auc, acc, f1a, f1r, secs, 0, 0, len(train), len(test)))
        out["ensemble"] = ModelCV("ensemble", "", ens_folds, p_ens)
    settings = {
        "models": {n: archs[n] for n in names},
        "loss": loss,
        "time_budget": time_budget,
        "overrides": overrides,
        "workers": workers,
        "has_times": latents.has_times,
        "width": latents.width,
    }
    return CVResult(out, y, latents.object_ids, fold_of, k, seed, settings, time.perf_counter() - t_start)


def plot_roc(result: CVResult, path: str, title: str | None = None) -> None:
    """ROC curves of all models in one plot: mean over folds with a +/- 1 std band.

    Parameters
    ----------
    result : `CVResult`
        Output of `cross_validate`.
    path : `str`
        Image file to write (format from the extension, e.g. ``.png``).
    title : `str`, optional
        Plot title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, 1.0, 201)
    fig, ax = plt.subplots(figsize=(6.0, 5.5))
    lines = []
    for name, m in result.models.items():
        curves = []
        for f in range(result.k):
            sel = (result.fold_of == f) & np.isfinite(m.probabilities)
            yy = result.labels[sel]
            if yy.min() == yy.max():
                continue
            fpr, tpr, _ = roc_curve(m.probabilities[sel], yy)
            curves.append(np.interp(grid, fpr, tpr))
        if not curves:
            continue
        curves = np.array(curves)
        mean, std = curves.mean(0), curves.std(0)
        s = m.summary()
        lines.append(
            RocLine(
                grid,
                mean,
                label=f"{name}: AUC {s['roc_auc_mean']:.3f} $\\pm$ {s['roc_auc_std']:.3f}",
                band=(np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1)),
                lw=2 if name == "ensemble" else 1.5,
            )
        )
    draw_roc(
        ax,
        lines,
        title=title or f"Sequence models, {result.k}-fold CV ({len(result.labels)} objects)",
        xlabel="false positive rate (artifacts scored real)",
        ylabel="true positive rate (real objects kept)",
        chance={"ls": "--", "color": "grey", "lw": 1, "label": "chance"},
        legend={"loc": "lower right", "fontsize": 9},
    )
    fig.tight_layout()
    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
