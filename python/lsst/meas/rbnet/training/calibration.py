# This file is part of meas_rbnet.
"""Temperature scaling: calibrated probabilities ``sigmoid(logit / T)``.

A network trained to a low loss is usually over-confident. One scalar ``T > 0``
fitted on held-out data by minimising the negative log-likelihood fixes most of
it without changing the ranking of the sources (ROC-AUC and every purity /
completeness pair are unchanged; only the threshold values move) (Guo et al.
2017). The model package keeps two temperatures: one for plain logits and one
for logits averaged over the 8 rotations/flips of the stamp (averaging shrinks
the logits, so it needs its own, smaller, temperature).
"""

__all__ = ["fit_temperature", "apply_temperature", "temperature_nll"]

import numpy as np
from scipy.optimize import minimize_scalar

#: Temperatures outside this range mean something is wrong with the model or the data.
_BOUNDS = (0.01, 100.0)


def _check(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 1 or z.shape != y.shape:
        raise ValueError(f"logits {z.shape} and labels {y.shape} must be 1-D arrays of the same length.")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or infinite values.")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 (bogus) or 1 (real).")
    return z, y.astype(np.float64)


def temperature_nll(logits, labels, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``sigmoid(logits / T)``."""
    z, y = _check(logits, labels)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    t = z / temperature
    # log(1 + exp(-|t|)) + max(t, 0) - y t  is the stable form of BCE on logits.
    return float(np.mean(np.logaddexp(0.0, t) - y * t))


def fit_temperature(logits, labels) -> float:
    """Temperature minimising the validation negative log-likelihood.

    Parameters
    ----------
    logits : array-like, shape ``(N,)``
        Uncalibrated logits of ``P(real)`` on held-out sources.
    labels : array-like, shape ``(N,)``
        1 = real, 0 = bogus; both must occur.

    Returns
    -------
    temperature : `float`
        ``T`` in [0.01, 100]; the calibrated probability is ``sigmoid(logit / T)``.
    """
    z, y = _check(logits, labels)
    if y.min() == y.max():
        raise ValueError("temperature scaling needs both real and bogus examples.")
    # Optimise log T: the NLL is smooth and unimodal in it, and T stays positive.
    res = minimize_scalar(
        lambda log_t: temperature_nll(z, y, float(np.exp(log_t))),
        bounds=tuple(np.log(_BOUNDS)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / T)`` as float64 numpy."""
    z = np.asarray(logits, dtype=np.float64)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    t = z / temperature
    # exp of a non-positive number only: no overflow for any logit.
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
