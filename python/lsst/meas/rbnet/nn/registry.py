# This file is part of meas_rbnet.
"""A fixed registry of network architectures, built by name from plain hyperparameters.

A model package stores only ``(architecture name, hyperparameters, weights)``;
building the module never executes code from the package. Architectures are
registered by the modules of this package at import time with `register`.
"""

__all__ = ["register", "build", "architectures", "architecture_defaults"]

import inspect
from typing import Any, Callable

import torch

_REGISTRY: dict[str, Callable[..., torch.nn.Module]] = {}


def register(name: str):
    """Class or function decorator adding a builder under ``name``.

    The builder must take only keyword hyperparameters of plain JSON types
    (int, float, str, bool, lists of those).
    """

    def decorator(builder):
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise RuntimeError(f"Architecture {name!r} is registered twice.")
        _REGISTRY[name] = builder
        return builder

    return decorator


def _ensure_loaded() -> None:
    # Importing the package registers every architecture it defines.
    from . import _all  # noqa: F401


def architectures() -> list[str]:
    """Names of all registered architectures."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def architecture_defaults(name: str) -> dict[str, Any]:
    """Default hyperparameters of an architecture (from its builder's signature)."""
    _ensure_loaded()
    builder = _lookup(name)
    params = inspect.signature(builder).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown architecture {name!r}; known: {sorted(_REGISTRY)}.") from None


def build(name: str, **hyperparameters: Any) -> torch.nn.Module:
    """Build the architecture ``name`` with the given hyperparameters.

    Raises
    ------
    ValueError
        If the name is unknown or a hyperparameter is not accepted by the builder.
    """
    _ensure_loaded()
    builder = _lookup(name)
    params = inspect.signature(builder).parameters
    accepts_kwargs = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in hyperparameters if k not in params]
    if unknown and not accepts_kwargs:
        raise ValueError(f"Architecture {name!r} does not take hyperparameters {unknown}; it takes {list(params)}.")
    return builder(**hyperparameters)
