# This file is part of meas_rbnet.
"""A fixed registry of network architectures, built by name from plain hyperparameters.

A model package stores only ``(architecture name, hyperparameters, weights)``;
building the module never executes code from the package. Architectures are
registered by the modules of this package at import time with `register`
(defined in `lsst.meas.rbnet.nn.registration`, below them).
"""

__all__ = [
    "register",
    "build",
    "architectures",
    "architecture_defaults",
    "check_hyperparameters",
    "MAX_DEPTH",
    "MAX_LIST_LENGTH",
    "MAX_INT",
]

import inspect
from typing import Any

import torch

# The architecture modules register themselves with `register` when imported; importing
# them here makes every architecture known once this module is.
from . import sequence, triplet, vae  # noqa: F401
from .registration import BUILDERS as _REGISTRY
from .registration import register

#: Largest value of a depth hyperparameter (`DEPTH_NAMES`): layers repeated that many times.
MAX_DEPTH: int = 16
#: Largest number of entries of a list hyperparameter (e.g. ``widths``: one block each).
MAX_LIST_LENGTH: int = 16
#: Largest magnitude of any integer hyperparameter (channels, sizes, kernel sizes).
MAX_INT: int = 65536
#: Hyperparameters that set how many layers are built.
DEPTH_NAMES: tuple[str, ...] = ("convs_per_block", "num_layers")


def architectures() -> list[str]:
    """Names of all registered architectures."""
    return sorted(_REGISTRY)


def architecture_defaults(name: str) -> dict[str, Any]:
    """Default hyperparameters of an architecture (from its builder's signature)."""
    builder = _lookup(name)
    params = inspect.signature(builder).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown architecture {name!r}; known: {sorted(_REGISTRY)}.") from None


def check_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> None:
    """Check hyperparameters against size bounds before anything is built.

    A model package comes from a file; its hyperparameters must not be able to
    make us build a network of 20,000 layers (minutes and gigabytes before the
    weights are found not to match). Bounds: depth hyperparameters (`DEPTH_NAMES`)
    in [0, `MAX_DEPTH`], lists of at most `MAX_LIST_LENGTH` plain entries, integers
    of magnitude at most `MAX_INT`, strings of at most 200 characters.

    Raises
    ------
    ValueError
        Naming the architecture, the hyperparameter and the bound.
    """

    def fail(key, value, why):
        raise ValueError(f"Architecture {name!r}: hyperparameter {key}={value!r} {why}.")

    for key, value in hyperparameters.items():
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST_LENGTH:
                fail(key, f"<list of {len(value)}>", f"has more than {MAX_LIST_LENGTH} entries")
            items = list(value)
        else:
            items = [value]
        for v in items:
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, int):
                if abs(v) > MAX_INT:
                    fail(key, value, f"is beyond the bound {MAX_INT}")
            elif isinstance(v, float):
                if v != v or v in (float("inf"), float("-inf")):
                    fail(key, value, "is not finite")
            elif isinstance(v, str):
                if len(v) > 200:
                    fail(key, v[:20] + "...", "is longer than 200 characters")
            else:
                fail(key, value, "is not a plain number, string, boolean or list of those")
        if key in DEPTH_NAMES and isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= MAX_DEPTH:
                fail(key, value, f"is outside [0, {MAX_DEPTH}]")


def build(name: str, **hyperparameters: Any) -> torch.nn.Module:
    """Build the architecture ``name`` with the given hyperparameters.

    Raises
    ------
    ValueError
        If the name is unknown, a hyperparameter is not accepted by the builder, or
        it is beyond the bounds of `check_hyperparameters` (checked before building).
    """
    builder = _lookup(name)
    check_hyperparameters(name, hyperparameters)
    params = inspect.signature(builder).parameters
    accepts_kwargs = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in hyperparameters if k not in params]
    if unknown and not accepts_kwargs:
        raise ValueError(f"Architecture {name!r} does not take hyperparameters {unknown}; it takes {list(params)}.")
    return builder(**hyperparameters)
