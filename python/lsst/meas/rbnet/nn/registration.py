# This file is part of meas_rbnet.
"""The table of architecture builders, the `register` decorator that fills it,
`register_preset` for architectures that are one module class with some arguments fixed,
and the hyperparameter checks the architectures share (`check_int`, `check_dropout`).

The architecture modules (`triplet`, `vae`, `sequence`) import this module to
register their builders; `lsst.meas.rbnet.nn.registry` imports them and builds
by name from `BUILDERS`. A builder's signature is its architecture's contract: the
hyperparameters it takes and their defaults (`registry.architecture_defaults`).
"""

__all__ = ["BUILDERS", "register", "register_preset", "check_int", "check_dropout"]

import inspect
from typing import Any, Callable

import torch

#: Builder of each registered architecture, by name.
BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum``; else a ValueError naming hyperparameter ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Hyperparameter {name} must be an integer >= {minimum}, got {value!r}.")
    return value


def check_dropout(name: str, value) -> float:
    """``value`` as a float if it is a number in [0, 1); else a ValueError naming hyperparameter ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value < 1.0):
        raise ValueError(f"Hyperparameter {name} must be a float in [0, 1), got {value!r}.")
    return float(value)


def register(name: str):
    """Class or function decorator adding a builder under ``name``.

    The builder must take only keyword hyperparameters of plain JSON types
    (int, float, str, bool, lists of those).
    """

    def decorator(builder):
        if name in BUILDERS and BUILDERS[name] is not builder:
            raise RuntimeError(f"Architecture {name!r} is registered twice.")
        BUILDERS[name] = builder
        return builder

    return decorator


def register_preset(name: str, module_class: type[torch.nn.Module], fixed: dict[str, Any], **defaults: Any):
    """Register ``module_class`` under ``name`` with the arguments ``fixed`` set and other defaults.

    The builder takes the class's arguments except ``fixed`` (which are therefore not
    hyperparameters of the architecture: a package cannot change them) with the class's
    defaults, except those given in ``defaults``; its signature says so, so
    `registry.architecture_defaults` and `registry.build`'s checks see exactly these.

    Returns
    -------
    builder : callable
        The registered builder.
    """
    signature = inspect.signature(module_class)
    unknown = sorted((set(fixed) | set(defaults)) - set(signature.parameters))
    if unknown:
        raise TypeError(f"{module_class.__name__} takes no arguments {unknown}.")
    parameters = [
        p.replace(default=defaults.get(p.name, p.default))
        for p in signature.parameters.values()
        if p.name not in fixed
    ]

    def builder(**hyperparameters: Any) -> torch.nn.Module:
        arguments = {p.name: p.default for p in parameters if p.default is not p.empty}
        arguments.update(hyperparameters)
        return module_class(**fixed, **arguments)

    builder.__signature__ = signature.replace(parameters=parameters, return_annotation=module_class)
    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = f"Build a `{module_class.__name__}` with {fixed} (registry name ``{name!r}``)."
    return register(name)(builder)
