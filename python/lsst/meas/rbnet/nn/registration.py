# This file is part of meas_rbnet.
"""The table of architecture builders and the `register` decorator that fills it.

The architecture modules (`triplet`, `vae`, `sequence`) import this module to
register their builders; `lsst.meas.rbnet.nn.registry` imports them and builds
by name from `BUILDERS`.
"""

__all__ = ["BUILDERS", "register"]

from typing import Callable

import torch

#: Builder of each registered architecture, by name.
BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}


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
