# This file is part of meas_rbnet.
"""The input contract of a model: what a stamp must look like before the network sees it.

The contract travels with the weights inside the model package, so the scorer
always applies the preprocessing the model was trained with.
"""

__all__ = ["NORMALIZATIONS", "InputContract"]

import dataclasses
from typing import Any

from .constants import CHANNEL_ORDER, MAX_STAMP_SIZE, MIN_STAMP_SIZE

#: Per-stamp, per-channel normalisations (implemented in `lsst.meas.rbnet.cutouts.normalize_stamps`):
#:
#: ``"robust_asinh"``
#:     ``asinh((x - median) / (asinh_softening * sigma))`` with ``median`` and
#:     ``sigma = 1.4826 * MAD`` over the channel's valid pixels: noise-scaled
#:     and unit-free (works on nJy, counts or DN alike), with the dynamic range of
#:     bright sources (S/N up to thousands) compressed logarithmically.
#: ``"robust"``
#:     ``(x - median) / sigma`` without compression.
#: ``"unit"``
#:     braai-style: ``x / ||x||_2`` over the channel's valid pixels.
#: ``"none"``
#:     pixels as given.
#:
#: In every case non-finite and masked pixels are filled with ``fill_value``
#: after normalisation.
#:
#: Statistics pixels (deterministic, the same rule for every stamp): ``median``
#: and ``MAD`` use the valid pixels on a regular grid through the centre pixel
#: (index ``S // 2``) with step ``ceil(S / 32)``, i.e. every pixel up to 32x32
#: and at most 32 per axis above (`lsst.meas.rbnet.cutouts.stats_pixel_grid`);
#: if the grid has no valid pixel, all valid pixels. Floors: ``sigma`` is the
#: standard deviation of the valid pixels where ``MAD == 0``, and 1 where that
#: is 0 too; the median of a channel with no valid pixel is 0; the ``"unit"``
#: norm of an all-zero channel is 1. The output never holds NaN or inf.
NORMALIZATIONS: tuple[str, ...] = ("robust_asinh", "robust", "unit", "none")


@dataclasses.dataclass(frozen=True)
class InputContract:
    """How stamps are prepared for a model.

    Parameters
    ----------
    stamp_size : `int`
        Side of the square stamp the network takes (pixels, odd).
    channels : `tuple` [`str`, ...]
        Channel names in order, a subsequence of `CHANNEL_ORDER`.
    normalization : `str`
        One of `NORMALIZATIONS`.
    asinh_softening : `float`
        Softening of ``robust_asinh`` in units of the noise sigma.
    fill_value : `float`
        Value given to bad pixels after normalisation.
    """

    stamp_size: int = 31
    channels: tuple[str, ...] = CHANNEL_ORDER
    normalization: str = "robust_asinh"
    asinh_softening: float = 3.0
    fill_value: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if not isinstance(self.stamp_size, int) or self.stamp_size % 2 != 1:
            raise ValueError(f"Input contract: stamp_size must be an odd integer, got {self.stamp_size!r}.")
        if not (MIN_STAMP_SIZE <= self.stamp_size <= MAX_STAMP_SIZE):
            raise ValueError(
                f"Input contract: stamp_size {self.stamp_size} is outside [{MIN_STAMP_SIZE}, {MAX_STAMP_SIZE}]."
            )
        if not self.channels:
            raise ValueError("Input contract: at least one channel is needed.")
        unknown = [c for c in self.channels if c not in CHANNEL_ORDER]
        if unknown or len(set(self.channels)) != len(self.channels):
            raise ValueError(
                f"Input contract: channels {self.channels} must be distinct names from {CHANNEL_ORDER}."
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"Input contract: unknown normalization {self.normalization!r}; expected one of {NORMALIZATIONS}."
            )
        if not self.asinh_softening > 0:
            raise ValueError(f"Input contract: asinh_softening must be > 0, got {self.asinh_softening}.")

    @property
    def n_channels(self) -> int:
        """Number of input channels."""
        return len(self.channels)

    @property
    def channel_indices(self) -> tuple[int, ...]:
        """Indices of this contract's channels in `CHANNEL_ORDER`."""
        return tuple(CHANNEL_ORDER.index(c) for c in self.channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputContract":
        """Inverse of `to_dict`; unknown keys are an error (a newer format)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - fields
        if extra:
            raise ValueError(f"Input contract has unknown keys {sorted(extra)}; is the package from a newer version?")
        return cls(**{k: (tuple(v) if k == "channels" else v) for k, v in data.items()})
