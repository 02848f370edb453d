# This file is part of meas_rbnet.
"""Support of the triplet scorer: its result (`ScoreResult`), the checks of its arguments
and inputs, and the background thread that cuts the next batch while the network runs.

`scoring` re-exports these names (the old import path).
"""

from __future__ import annotations

__all__ = [
    "ScoreResult",
]

import dataclasses
import queue
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .constants import MAX_STAMP_SIZE, MIN_STAMP_SIZE


@dataclasses.dataclass
class ScoreResult:
    """Scores of N sources, row-aligned with the input.

    Attributes
    ----------
    reliability : `numpy.ndarray`, (N,) float32
        Calibrated probability that the source is real; NaN where not scored.
    flags : `numpy.ndarray`, (N,) int32
        `flags.SourceFlag` bits (preparation flags plus ``NOT_SCORED``).
    logits : `numpy.ndarray`, (N,) float32
        Uncalibrated network logits (symmetry-averaged with ``symmetry=True``);
        NaN where not scored.
    """

    reliability: np.ndarray
    flags: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return int(self.reliability.shape[0])


def _check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a boolean (Python or numpy), else a ValueError naming ``name``.

    Strings are refused: ``symmetry="no"`` would otherwise be true.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be a boolean (True or False), got {value!r}.")


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return int(batch_size)


class _Failed:
    """An exception raised in `_in_background`'s thread, carried to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def _in_background(iterable, depth: int = 1):
    """Iterate ``iterable`` in a daemon thread, at most ``depth`` items ahead of the consumer.

    The producer's exceptions are raised in the consumer; a consumer that stops early
    (or fails) stops the producer at its next item.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterable:
                if not put(item):
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failed(err))
            return
        put(done)

    thread = threading.Thread(target=produce, name="rbnet-cutouts", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


def _check_stamp_shape(hw: Sequence[int], what: str) -> None:
    for axis, v in zip(("height", "width"), hw):
        if not (MIN_STAMP_SIZE <= v <= MAX_STAMP_SIZE):
            raise ValueError(
                f"{what}: stamp {axis} {v} is outside the accepted range "
                f"[{MIN_STAMP_SIZE}, {MAX_STAMP_SIZE}] "
                "pixels."
            )


def _check_channel_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Check (N, H, W) stamp arrays: 3-d, same N, same H and W, sizes in range."""
    first = None
    for name, arr in arrays.items():
        if arr.ndim != 3:
            raise ValueError(f"{name} must be a 3-d (N, H, W) array of stamps, got shape {arr.shape}.")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{name} must have a real numeric dtype, got {arr.dtype}.")
        if first is None:
            first = (name, arr.shape)
            _check_stamp_shape(arr.shape[1:], name)
            continue
        if arr.shape[0] != first[1][0]:
            raise ValueError(f"{name} has {arr.shape[0]} stamps but {first[0]} has {first[1][0]}.")
        if arr.shape[1:] != first[1][1:]:
            raise ValueError(
                f"{name} stamps are {arr.shape[1]}x{arr.shape[2]} but {first[0]} stamps are "
                f"{first[1][1]}x{first[1][2]}."
            )
