# This file is part of meas_rbnet.
"""The training tasks' metrics as plain data (what a ``StructuredDataDict`` output holds)."""

__all__ = ["plain_metrics"]

import numpy as np


def plain_metrics(value):
    """JSON/YAML-safe copy (numpy scalars and arrays to Python types, NaN kept as float)."""
    if isinstance(value, dict):
        return {str(k): plain_metrics(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_metrics(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
