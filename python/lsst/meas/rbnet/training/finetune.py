# This file is part of meas_rbnet.
"""Fine-tuning support of the triplet training loop: the init package, its compatibility
with a config, a config that agrees with it, and freezing the features.

See the module docstring of `training.loop` and ``doc/fine-tuning.md``;
`training.loop` re-exports these names (the old import path).
"""

__all__ = [
    "FINE_TUNE_LEARNING_RATE",
    "FINE_TUNE_HEAD_LEARNING_RATE",
    "load_init_package",
    "check_init_compatible",
    "fine_tune_config",
]

import os
from pathlib import Path
from typing import Any

import torch

from ..package import ModelPackage, ModelPackageError
from .config import TrainConfig


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
