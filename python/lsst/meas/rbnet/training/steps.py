# This file is part of meas_rbnet.
"""Device, batch and schedule helpers of the triplet training loop: loss read-back, device
choice, datasets from the caller's inputs, the learning-rate schedule, and the source
commit for provenance.

`training.loop` re-exports these names (the old import path).
"""

__all__ = ["git_commit", "LOSS_SYNC_STEPS", "sum_step_losses"]

import math
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .data import PreparedStamps, prepare_dataset


#: On CUDA the training losses are read back (and checked for NaN) every this many steps
#: rather than every step, so the host queues work without waiting for the device.
LOSS_SYNC_STEPS: int = 50


def git_commit() -> str:
    """Commit hash of the source tree this module was imported from, or ``"unknown"``."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "") if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _loss_sync_steps(device: torch.device) -> int:
    """Steps between reads of the training loss: 1 on the CPU (free there), else `LOSS_SYNC_STEPS`."""
    return 1 if device.type == "cpu" else LOSS_SYNC_STEPS


def _drain_losses(
    pending: list[tuple[int, torch.Tensor, int]],
    sum_loss: float,
    n_seen: int,
    epoch: int,
    steps: int,
    notify: Callable[[dict[str, Any]], None],
) -> tuple[float, int]:
    """Read the pending step losses (one host-device synchronisation), check them, report them.

    Returns the running ``(sum of loss x batch size, number of samples)``; empties ``pending``.
    """

    def check_and_report(step: int, value: float) -> None:
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training loss became {value} at epoch {epoch}, step {step}; lower the learning rate."
            )
        notify({"event": "step", "epoch": epoch, "step": step, "steps": steps, "loss": value})

    sum_loss, n_seen = sum_step_losses(pending, sum_loss, n_seen, check_and_report)
    pending.clear()
    return sum_loss, n_seen


def sum_step_losses(
    pending: Sequence[tuple[int, torch.Tensor, int]],
    sum_loss: float = 0.0,
    n_seen: int = 0,
    each: Callable[[int, float], None] | None = None,
) -> tuple[float, int]:
    """Add training-step losses, read from the device in one transfer, to a running sum.

    Parameters
    ----------
    pending : sequence of ``(step, loss, n)``
        Each step's number, its loss (a 0-d tensor, still on the device) and its batch size.
    sum_loss, n_seen : `float`, `int`
        The running sum of loss x batch size and number of samples to add to.
    each : callable, optional
        Called as ``each(step, value)`` with every step's loss as a Python float, in step order
        (to check or report it).

    Returns
    -------
    sum_loss, n_seen : `float`, `int`
        The sums with ``pending`` added, in Python floats in step order, as reading each loss
        at its step would give (a read per step would make the host wait for the device every step).
    """
    if not pending:
        return sum_loss, n_seen
    values = torch.stack([loss for _, loss, _ in pending]).float().cpu().tolist()
    for (step, _, n), value in zip(pending, values):
        if each is not None:
            each(step, value)
        sum_loss += value * n
        n_seen += n
    return sum_loss, n_seen


def _select_device(name: str) -> torch.device:
    from ..scoring import select_device

    return select_device(name)


def _as_prepared(data, labels, classes, snr, masks, config: TrainConfig, dtype, what: str) -> PreparedStamps:
    contract = config.contract
    if isinstance(data, PreparedStamps):
        if data.contract != contract:
            raise ValueError(
                f"{what} stamps were prepared with {data.contract}, but the config asks for {contract}."
            )
        return data
    if isinstance(data, dict):
        data = (data["stamps"], data["labels"], data.get("classes"), data.get("snr"), data.get("masks"))
    if isinstance(data, (tuple, list)):
        parts = list(data) + [None] * (5 - len(data))
        data, labels, classes, snr, masks = parts[:5]
    if labels is None:
        raise ValueError(f"{what}: labels are required with raw stamps.")
    return prepare_dataset(
        data,
        labels,
        contract,
        classes=classes,
        snr=snr,
        masks=masks,
        mask_fraction=config.mask_fraction,
        seed=config.seed,
        dtype=dtype,
    )


def _lr_lambda(plan: dict[str, int], warmup_steps: int, floor: float = 0.02) -> Callable[[int], float]:
    # ``plan["total"]`` is read at every step so that the schedule can be shortened mid-run.
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        total_steps = plan["total"]
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
