# This file is part of meas_rbnet.
"""Real/bogus losses on logits, chosen by name.

Every loss takes ``logits`` ``(N,)`` (any real values; ``P(real) = sigmoid(logit)``)
and ``targets`` ``(N,)`` (1 = real, 0 = bogus; soft targets in [0, 1] work too) and
returns a scalar tensor, the mean over the batch.

``"bce"``
    Binary cross-entropy; ``pos_weight`` reweights the real class.
``"focal"``
    Focal loss (Lin et al. 2017): BCE with each term scaled by ``(1 - p_t)^gamma``
    so that easy, confidently right examples count less; ``alpha`` weighs the
    real class (``alpha * y + (1 - alpha) * (1 - y)``; ``None`` = no weighting).
    With ``gamma = 0`` and ``alpha = None`` it equals BCE.
``"tversky"``
    ``1 - TI`` with the soft Tversky index
    ``TI = TP / (TP + alpha FP + beta FN)`` computed on probabilities over the
    batch. ``alpha`` penalises false positives (artifacts scored real, i.e. lost
    purity), ``beta`` false negatives (lost completeness). In [0, 1]. It is a
    set-level loss and does not by itself give calibrated probabilities; the
    temperature fitted after training partly repairs that, and the combination
    ``"bce+tversky"`` keeps a BCE term for calibration.
"""

__all__ = ["LOSSES", "bce_loss", "focal_loss", "tversky_loss", "get_loss"]

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: Names accepted by `get_loss`.
LOSSES: tuple[str, ...] = ("bce", "focal", "tversky", "bce+tversky")


def _check(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape.")
    return targets.to(dtype=logits.dtype)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Mean binary cross-entropy on logits (numerically stable)."""
    y = _check(logits, targets)
    pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw)


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Mean focal loss on logits.

    Parameters
    ----------
    logits, targets : `torch.Tensor`, shape ``(N,)``
    gamma : `float`
        Focusing exponent (>= 0); 0 gives BCE.
    alpha : `float`, optional
        Weight of the real class in [0, 1]; ``None`` for no class weighting.
    """
    if gamma < 0:
        raise ValueError(f"focal loss: gamma must be >= 0, got {gamma}.")
    y = _check(logits, targets)
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t).clamp_min(0) ** gamma if gamma else ce
    if alpha is not None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"focal loss: alpha must be in [0, 1], got {alpha}.")
        loss = loss * (alpha * y + (1 - alpha) * (1 - y))
    return loss.mean()


def tversky_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.7, beta: float = 0.3, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - soft Tversky index`` of the real class over the batch, in [0, 1].

    Parameters
    ----------
    logits, targets : `torch.Tensor`, shape ``(N,)``
    alpha : `float`
        Weight of false positives (bogus scored real). ``alpha > beta`` favours purity.
    beta : `float`
        Weight of false negatives (real scored bogus).
    smooth : `float`
        Added to numerator and denominator so a batch without real sources is defined.
    """
    if alpha < 0 or beta < 0 or smooth <= 0:
        raise ValueError(
            f"tversky loss: need alpha, beta >= 0 and smooth > 0, got {alpha}, {beta}, {smooth}."
        )
    y = _check(logits, targets)
    p = torch.sigmoid(logits)
    tp = (p * y).sum()
    fp = (p * (1 - y)).sum()
    fn = ((1 - p) * y).sum()
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def get_loss(name: str, **params) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss called ``name`` (one of `LOSSES`) with its parameters bound.

    Parameters
    ----------
    name : `str`
    **params
        Keyword parameters of the loss (``pos_weight``; ``gamma``, ``alpha``;
        ``alpha``, ``beta``, ``smooth``; for ``"bce+tversky"`` ``tversky_weight``
        plus the Tversky parameters).

    Raises
    ------
    ValueError
        Unknown name or parameter.
    """
    import functools
    import inspect

    if name == "bce+tversky":
        weight = float(params.pop("tversky_weight", 0.5))
        tv = get_loss("tversky", **params)

        def combined(logits, targets):
            return bce_loss(logits, targets) + weight * tv(logits, targets)

        return combined
    funcs = {"bce": bce_loss, "focal": focal_loss, "tversky": tversky_loss}
    if name not in funcs:
        raise ValueError(f"Unknown loss {name!r}; expected one of {LOSSES}.")
    func = funcs[name]
    accepted = set(inspect.signature(func).parameters) - {"logits", "targets"}
    unknown = set(params) - accepted
    if unknown:
        raise ValueError(f"Loss {name!r} does not take {sorted(unknown)}; it takes {sorted(accepted)}.")
    return functools.partial(func, **params)
