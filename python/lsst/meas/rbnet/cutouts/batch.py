# This file is part of meas_rbnet.
"""Stamps ready for a model: channel selection, normalisation and flags (`prepare_stamps`,
`prepare_cutouts`, `iter_cutout_batches`).

Part of the `lsst.meas.rbnet.cutouts` package (layer 1, numpy only); see its docstring for
the conventions and how the extraction is fast.
"""

from __future__ import annotations

__all__ = ["prepare_stamps", "prepare_cutouts", "iter_cutout_batches"]

from collections.abc import Iterator, Sequence

import numpy as np

from ..constants import CHANNEL_ORDER, DEFAULT_BAD_MASK_PLANES, MAX_STAMP_SIZE, MIN_STAMP_SIZE, mask_bits
from ..contract import InputContract
from ..flags import SourceFlag
from .extract import _channel_mask_bits, _extract, _process
from .gather import _rows_finite
from .normalize import _axis_map, _norm_params, normalize_stamps
from .scan import _locate, _plan_channels
from .validate import _validate_fraction, _validate_images, _validate_xy

# ---------------------------------------------------------------------------
# Preparation for a model
# ---------------------------------------------------------------------------


def _channel_selection(n_chan: int, contract: InputContract, channel_axis_order) -> list[int]:
    """Indices along the channel axis of the contract's channels.

    ``n_chan == len(channel_axis_order)`` means the axis holds those channels (the
    contract's are picked by name); otherwise ``n_chan == contract.n_channels``
    means it already holds exactly the contract's channels in order.
    """
    order = tuple(channel_axis_order)
    if n_chan == len(order):
        missing = [c for c in contract.channels if c not in order]
        if missing:
            raise ValueError(f"Stamps lack channels {missing} required by the contract (have {order}).")
        return [order.index(c) for c in contract.channels]
    if n_chan == contract.n_channels:
        return list(range(n_chan))
    raise ValueError(
        f"Stamps have {n_chan} channels; expected {len(order)} ({', '.join(order)}) or the contract's "
        f"{contract.n_channels} ({', '.join(contract.channels)})."
    )

# Flags that already account for untrusted (NaN) pixels of a stamp.
_EXPLAINED = (
    SourceFlag.EDGE
    | SourceFlag.NONFINITE
    | SourceFlag.MASKED
    | SourceFlag.OFF_IMAGE
    | SourceFlag.BAD_CENTROID
    | SourceFlag.NO_TEMPLATE
)


def _finish(
    stamps: np.ndarray,
    flags: np.ndarray,
    contract: InputContract,
    n_pad: int = 0,
    max_bad_fraction: float = 0.5,
) -> np.ndarray:
    """Flag untrusted pixels and normalise ``stamps`` (N, C, S, S) float32 in place.

    The bits are those `extract_cutouts` sets for the same pixels: ``NONFINITE``
    (a pixel of the input was NaN or infinite), ``BAD_CENTER`` (the centre pixel
    is untrusted in any channel), ``MOSTLY_BAD`` (a channel has more than
    ``max_bad_fraction`` untrusted pixels), ``NO_VALID_PIXELS | NOT_SCORED`` (a
    channel has none). ``n_pad`` pixels of each channel are padding (NaN but not
    input pixels): they count as untrusted, as off-image pixels do. ``NONFINITE`` is
    not added to a stamp whose flags already hold a bit of ``_EXPLAINED``.
    """
    N, C, H, W = stamps.shape
    if N:
        flat = stamps.reshape(N * C, H * W)
        with np.errstate(over="ignore", invalid="ignore"):
            suspect = ~_rows_finite(flat)
        if suspect.any():
            rows = np.flatnonzero(suspect)
            n_bad = np.zeros(N * C, dtype=np.int64)
            n_bad[rows] = H * W - np.count_nonzero(np.isfinite(flat[rows]), axis=1)
            centre = (H // 2) * W + W // 2
            bad_centre = np.zeros(N * C, dtype=bool)
            bad_centre[rows] = ~np.isfinite(flat[rows, centre])
            n_bad = n_bad.reshape(N, C)
            # NaN in stamps whose flags already explain their untrusted pixels (e.g. stamps from
            # `extract_cutouts`, where masked and off-image pixels are NaN) are those pixels.
            explained = (flags & np.int32(_EXPLAINED)) != 0
            bits = np.where(
                (n_bad > n_pad).any(axis=1) & ~explained, np.int32(SourceFlag.NONFINITE), np.int32(0)
            )
            bits |= np.where(bad_centre.reshape(N, C).any(axis=1), np.int32(SourceFlag.BAD_CENTER), 0)
            bits |= np.where(
                (n_bad > max_bad_fraction * H * W).any(axis=1), np.int32(SourceFlag.MOSTLY_BAD), 0
            )
            bits |= np.where(
                (n_bad >= H * W).any(axis=1), np.int32(SourceFlag.NO_VALID_PIXELS | SourceFlag.NOT_SCORED), 0
            )
            flags |= bits.astype(np.int32)
    normalize_stamps(stamps, contract, out=stamps)
    return stamps


def _rescale_wide(src: np.ndarray) -> np.ndarray:
    """Stamps of a wider float type with channels beyond float32's normal range, rescaled by 2**k.

    Returns ``src`` itself when no channel needs it. A channel whose largest
    finite |value| is below 2**-100 or above 2**100 is multiplied by the power of
    two that brings it near 1 (exact; the normalisations other than "none" are
    scale-invariant), so the cast to float32 neither flushes it to zero nor makes it
    infinite.
    """
    with np.errstate(all="ignore"):
        amax = np.max(np.where(np.isfinite(src), np.abs(src), 0), axis=(2, 3))
        wide = (amax > 0) & ((amax < 2.0**-100) | (amax > 2.0**100))
        if not wide.any():
            return src
        k = np.where(wide, -np.frexp(np.where(amax > 0, amax, 1.0))[1], 0)
        return src * np.ldexp(1.0, k)[:, :, None, None]


def prepare_stamps(
    stamps: np.ndarray,
    contract: InputContract,
    flags: np.ndarray | None = None,
    channel_axis_order: Sequence[str] = CHANNEL_ORDER,
    max_bad_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Turn raw stamps into the network's input as the contract says.

    Parameters
    ----------
    stamps : `numpy.ndarray`, (N, C, H, W)
        Raw stamps (untrusted pixels NaN) with channels in ``channel_axis_order``
        or exactly the contract's channels; (N, H, W) is accepted for a
        one-channel contract. H and W must lie in [`MIN_STAMP_SIZE`,
        `MAX_STAMP_SIZE`]. Not modified.
    contract : `InputContract`
        Stamp size, channels and normalisation of the model.
    flags : `numpy.ndarray`, (N,) int, optional
        Existing `SourceFlag` bits to update (not modified; a copy is returned).
    channel_axis_order : sequence of `str`, optional
        Channel names of the stamps' axis 1 (default `CHANNEL_ORDER`).
    max_bad_fraction : `float`, optional
        A channel with more than this fraction of untrusted pixels sets ``MOSTLY_BAD``
        (as in `extract_cutouts`).

    Returns
    -------
    x : `numpy.ndarray`, (N, C', S, S) float32, C-contiguous
        Normalised stamps, C' = ``contract.n_channels``, S = ``contract.stamp_size``.
    flags : `numpy.ndarray`, (N,) int32
        Input flags plus ``RESIZED`` if the stamps were cropped or padded and the
        bits `extract_cutouts` sets for the same pixels: ``NONFINITE`` (a NaN or
        infinite pixel in the model's window), ``BAD_CENTER``, ``MOSTLY_BAD`` (padding
        counts as untrusted, like off-image pixels) and ``NO_VALID_PIXELS | NOT_SCORED``
        where a channel is entirely bad.

    Notes
    -----
    Float64 stamps whose values lie beyond float32's normal range (below 2**-100 or
    above 2**100 in magnitude) are scaled by a power of two before the cast, and
    float32 stamps with denormal values are normalised from an exactly rescaled copy,
    so both are scored as their unscaled equivalents (every normalisation but
    ``"none"`` is scale-invariant).
    """
    stamps = np.asarray(stamps)
    if stamps.ndim == 3 and contract.n_channels == 1:
        stamps = stamps[:, None]
    if stamps.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) stamps, got shape {stamps.shape}.")
    N, C, H, W = stamps.shape
    for name, v in (("height", H), ("width", W)):
        if not (MIN_STAMP_SIZE <= v <= MAX_STAMP_SIZE):
            raise ValueError(
                f"Stamp {name} {v} is outside the accepted range [{MIN_STAMP_SIZE}, {MAX_STAMP_SIZE}] "
                f"pixels (stamps of shape {stamps.shape})."
            )
    if not (np.issubdtype(stamps.dtype, np.floating) or np.issubdtype(stamps.dtype, np.integer)):
        raise ValueError(f"Stamps must have a real numeric dtype, got {stamps.dtype}.")
    sel = _channel_selection(C, contract, channel_axis_order)
    if flags is None:
        flags = np.zeros(N, dtype=np.int32)
    else:
        flags = np.asarray(flags)
        if flags.shape != (N,):
            raise ValueError(f"flags must have shape ({N},), got {flags.shape}.")
        flags = flags.astype(np.int32, copy=True)
    max_bad_fraction = _validate_fraction(max_bad_fraction)
    S = contract.stamp_size
    src = stamps if sel == list(range(C)) else stamps[:, sel]
    if (
        np.issubdtype(src.dtype, np.floating)
        and np.finfo(src.dtype).maxexp > 128
        and contract.normalization != "none"
        and N
    ):
        src = _rescale_wide(src)
    n_pad = 0
    if H == S and W == S:
        x = np.empty((N, len(sel), S, S), dtype=np.float32)
        with np.errstate(over="ignore"):
            np.copyto(x, src, casting="unsafe")
    else:
        x = np.full((N, len(sel), S, S), np.nan, dtype=np.float32)
        sr, dr = _axis_map(H, S)
        sc, dc = _axis_map(W, S)
        with np.errstate(over="ignore"):
            x[:, :, dr, dc] = src[:, :, sr, sc]
        n_pad = S * S - (dr.stop - dr.start) * (dc.stop - dc.start)
        flags |= np.int32(SourceFlag.RESIZED)
    return _finish(x, flags, contract, n_pad, max_bad_fraction), flags


def _select_images(images, masks, contract, channel_axis_order, names):
    """Pick the contract's channels from images (and masks) given in ``channel_axis_order``."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = [images]
    images = list(images)
    masks_l = None if masks is None else list(masks)
    if masks_l is not None and len(masks_l) != len(images):
        raise ValueError(f"masks has {len(masks_l)} entries but {len(images)} images were given.")
    sel = _channel_selection(len(images), contract, channel_axis_order)
    return (
        [images[i] for i in sel],
        None if masks_l is None else [masks_l[i] for i in sel],
        contract.channels,
    )


def prepare_cutouts(
    images,
    x,
    y,
    contract: InputContract,
    *,
    masks=None,
    bad_mask_bits: int = mask_bits(DEFAULT_BAD_MASK_PLANES),
    max_bad_fraction: float = 0.5,
    channel_axis_order: Sequence[str] = CHANNEL_ORDER,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Extract and prepare stamps for a model in one step.

    Equivalent to `extract_cutouts` at ``contract.stamp_size`` followed by
    `prepare_stamps`, but each cache-sized chunk of stamps is normalised right
    after it is gathered, so the stamps cross main memory once.

    Parameters
    ----------
    images : sequence of (H, W) arrays
        Images in ``channel_axis_order`` or exactly the contract's channels;
        only the contract's channels are read.
    x, y : array-like, (N,)
        Centroids (pixels, LSST convention).
    contract : `InputContract`
        The model's input contract; stamps are cut at ``contract.stamp_size``.
    masks, bad_mask_bits, max_bad_fraction
        As in `extract_cutouts`.
    channel_axis_order : sequence of `str`, optional
        Names of the given images (default `CHANNEL_ORDER`).
    out : `numpy.ndarray`, (N, C', S, S) float32, optional
        Preallocated destination.

    Returns
    -------
    x : `numpy.ndarray`, (N, C', S, S) float32
        Network input (see `prepare_stamps`).
    flags : `numpy.ndarray`, (N,) int32
        `SourceFlag` bits from extraction and preparation.
    """
    imgs, msks, names = _select_images(images, masks, contract, channel_axis_order, None)
    imgs, msks, names = _validate_images(imgs, msks, names)
    x, y = _validate_xy(x, y)
    max_bad_fraction = _validate_fraction(max_bad_fraction)
    batch = _extract(
        imgs,
        msks,
        bad_mask_bits,
        x,
        y,
        contract.stamp_size,
        max_bad_fraction,
        out=out,
        norm=_norm_params(contract),
    )
    return batch.stamps, batch.flags


def iter_cutout_batches(
    images,
    x,
    y,
    contract: InputContract,
    batch_size: int,
    *,
    masks=None,
    bad_mask_bits: int = mask_bits(DEFAULT_BAD_MASK_PLANES),
    max_bad_fraction: float = 0.5,
    channel_axis_order: Sequence[str] = CHANNEL_ORDER,
    reuse_buffer: bool = False,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Stream prepared stamps in batches so the full (N, C, S, S) array never exists.

    Parameters are those of `prepare_cutouts`, plus:

    batch_size : `int`
        Sources per batch, >= 1.
    reuse_buffer : `bool`, optional
        If True, every batch's stamps are written into one buffer allocated for
        the first batch, and each yielded ``stamps`` array is a view of it that
        the NEXT batch overwrites: use it only when each batch is consumed (e.g.
        scored) before the next is requested, and copy what must be kept. It
        saves allocating and page-faulting a fresh array per batch. Default
        False: every batch is a new array.

    Inputs are validated before the first batch is yielded. Where each stamp's
    untrusted pixels are found (`_plan_channels`) is decided once for all N
    sources, so batching does not repeat the image scan.

    Yields
    ------
    index : `slice`
        The sources of this batch (``x[index]``).
    stamps : `numpy.ndarray`, (B, C', S, S) float32
        Network input for the batch.
    flags : `numpy.ndarray`, (B,) int32
        `SourceFlag` bits of the batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    imgs, msks, names = _select_images(images, masks, contract, channel_axis_order, None)
    imgs, msks, names = _validate_images(imgs, msks, names)
    x, y = _validate_xy(x, y)
    max_bad_fraction = _validate_fraction(max_bad_fraction)
    return _iter_batches(
        imgs, msks, x, y, contract, int(batch_size), bad_mask_bits, max_bad_fraction, bool(reuse_buffer)
    )


def _iter_batches(imgs, msks, x, y, contract, batch_size, bits, max_bad_fraction, reuse_buffer):
    n = x.shape[0]
    if n == 0:
        return
    norm = _norm_params(contract)
    size = contract.stamp_size
    src = _locate(x, y, size, imgs[0].shape)
    mbits = _channel_mask_bits(msks, bits)
    plans = _plan_channels(imgs, msks, mbits, src)
    buffer = None
    if reuse_buffer:
        buffer = np.empty((min(batch_size, n), len(imgs), size, size), dtype=np.float32)
    for a in range(0, n, batch_size):
        b = min(n, a + batch_size)
        out = None if buffer is None else buffer[: b - a]
        batch = _process(imgs, msks, mbits, src, plans, a, b, out, norm, max_bad_fraction)
        yield slice(a, b), batch.stamps, batch.flags
