# This file is part of meas_rbnet.
"""Resizing and robust normalisation of stamps (`resize_stamps`, `normalize_stamps`).

Part of the `lsst.meas.rbnet.cutouts` package (layer 1, numpy only); see its docstring for
the conventions and how the extraction is fast.
"""

from __future__ import annotations

__all__ = [
    "MAD_TO_SIGMA",
    "STATS_MAX_PIXELS_PER_AXIS",
    "resize_stamps",
    "stats_pixel_grid",
    "normalize_stamps",
]

import math

import numpy as np

from ..contract import NORMALIZATIONS
from .gather import _CHUNK_BYTES, _rows_finite
from .validate import _validate_size

#: Ratio of the standard deviation to the median absolute deviation of a Gaussian.
MAD_TO_SIGMA: float = 1.4826

#: The robust statistics of `normalize_stamps` use a regular sub-grid of at most
#: this many pixels per axis (see `stats_pixel_grid`); stamps up to this side use every pixel.
STATS_MAX_PIXELS_PER_AXIS: int = 32

_F32_MAX = float(np.finfo(np.float32).max)

# A stamp channel whose noise sigma (or unit norm) is below this is normalised from a copy
# scaled by a power of two, since 1 / scale would overflow float32 (denormal pixel values).
_TINY_SCALE: float = 2.0**-100

# ---------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------


def _axis_map(n_in: int, n_out: int) -> tuple[slice, slice]:
    """Source and destination slices mapping centre index n_in // 2 to n_out // 2."""
    shift = n_in // 2 - n_out // 2  # src = dst + shift
    d0 = max(0, -shift)
    d1 = min(n_out, n_in - shift)
    return slice(d0 + shift, d1 + shift), slice(d0, d1)


def resize_stamps(stamps: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
    """Crop or NaN-pad stamps to ``size x size`` about their centre pixel.

    Parameters
    ----------
    stamps : `numpy.ndarray`, (N, C, H, W) or (N, H, W)
        Stamps with their centre pixel at index ``(H // 2, W // 2)``.
    size : `int`
        New side, >= 3.

    Returns
    -------
    stamps : `numpy.ndarray`, (N, C, size, size) or (N, size, size)
        The input itself when it already has that size; otherwise a new array
        (floating dtype kept, integers become float32) where pixel ``H // 2``
        lands at ``size // 2`` and pixels with no source are NaN.
    resized : `bool`
        Whether the size changed.
    """
    stamps = np.asarray(stamps)
    if stamps.ndim not in (3, 4):
        raise ValueError(f"expected (N, C, H, W) or (N, H, W) stamps, got shape {stamps.shape}.")
    size = _validate_size(size)
    H, W = stamps.shape[-2:]
    if H == size and W == size:
        return stamps, False
    dtype = stamps.dtype if np.issubdtype(stamps.dtype, np.floating) else np.float32
    out = np.full(stamps.shape[:-2] + (size, size), np.nan, dtype=dtype)
    sr, dr = _axis_map(H, size)
    sc, dc = _axis_map(W, size)
    out[..., dr, dc] = stamps[..., sr, sc]
    return out, True

# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


def stats_pixel_grid(size: int) -> tuple[slice, slice]:
    """Pixels whose values set the median and MAD of a ``size x size`` stamp.

    The grid is regular, contains the centre pixel (index ``size // 2``), and has
    step ``s = ceil(size / STATS_MAX_PIXELS_PER_AXIS)``: every pixel for
    ``size <= 32``, every second pixel for 33..64, every third for 65..96, every
    fourth for 97..128. It depends only on ``size``, so it is deterministic and
    identical for every stamp of that size.

    Returns
    -------
    rows, cols : `slice`
        Slices selecting the grid along each axis.
    """
    step = max(1, math.ceil(size / STATS_MAX_PIXELS_PER_AXIS))
    start = (size // 2) % step
    return slice(start, None, step), slice(start, None, step)


def _row_median(a: np.ndarray, nan_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Median over the non-NaN entries of each row of ``a`` (R, M) float32; ``a`` may be reordered.

    ``nan_rows`` (R,) bool marks rows that may hold NaN (computed when None).
    Returns (median, n_valid); the median is NaN for a row with no valid entry.
    For an even count the median is the mean of the two middle values.
    """
    R, M = a.shape
    med = np.empty(R, dtype=np.float32)
    nvalid = np.full(R, M, dtype=np.int64)
    if R == 0:
        return med, nvalid
    if nan_rows is None:
        nan_rows = ~_rows_finite(a)
    n_nan_rows = int(np.count_nonzero(nan_rows))
    if n_nan_rows < R:
        clean = None if n_nan_rows == 0 else ~nan_rows
        sub = a if clean is None else a[clean]
        hi = M // 2
        sub.partition(hi, axis=1)
        m = sub[:, hi]
        if M % 2 == 0:
            # After partitioning at hi, the lower middle value is the largest of the first hi.
            m = 0.5 * (m + sub[:, :hi].max(axis=1))
        if clean is None:
            med[:] = m
        else:
            med[clean] = m
    if n_nan_rows:
        # Rows with NaN: sort (NaN go last) and average the middle of the valid part.
        srt = np.sort(a[nan_rows], axis=1)
        nv = M - np.count_nonzero(np.isnan(srt), axis=1)
        lo = np.maximum(nv - 1, 0) // 2
        hi = np.maximum(nv, 1) // 2
        hi = np.where(nv > 0, hi, 0)
        rows = np.arange(srt.shape[0])
        m = 0.5 * (srt[rows, lo] + srt[rows, hi])
        m[nv == 0] = np.nan
        med[nan_rows] = m
        nvalid[nan_rows] = nv
    return med, nvalid


def _median_of_filled(a: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """Median of the valid entries of each row of ``a`` (R, M) float32; ``a`` is reordered.

    Each row must hold its ``b = M - n_valid`` invalid entries as ``b // 2``
    times -inf and ``b - b // 2`` times +inf (valid entries are finite). Then
    the valid middle sits at fixed ranks for every row: rank ``M // 2`` (and
    ``M // 2 - 1``) of the whole row, so one `numpy.partition` at a single rank
    serves rows with and without invalid entries (numpy's partition has a fast
    path for a single rank only; the rank below is the maximum of the lower
    part). For an even count the median is the mean of the two middle values,
    computed in float32 as ``0.5 * (lower + upper)``. NaN for a row with no
    valid entry.
    """
    R, M = a.shape
    h = M // 2
    a.partition(h, axis=1)
    upper = a[:, h]
    odd = (n_valid % 2) == 1
    if M % 2 == 1 and odd.all():
        med = upper.copy()
    else:
        lower = a[:, :h].max(axis=1)
        with np.errstate(over="ignore", invalid="ignore"):
            med = np.where(odd, upper if M % 2 == 1 else lower, 0.5 * (lower + upper)).astype(np.float32)
    med[n_valid == 0] = np.nan
    return med


def _fill_inf_balanced(sub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace the NaN of each row of ``sub`` (R, M): half of them (rounded down) by -inf, the rest by +inf.

    Returns the number of NaN per row and the flat positions set to -inf, so
    that the caller can set them again.
    """
    R, M = sub.shape
    flat = sub.reshape(-1)
    p = np.flatnonzero(np.isnan(flat))
    if p.shape[0] == 0:
        return np.zeros(R, dtype=np.int64), p
    prow = p // M
    count = np.bincount(prow, minlength=R)
    first = np.cumsum(count) - count
    low = p[(np.arange(p.shape[0]) - first[prow]) < (count // 2)[prow]]
    flat[p] = np.inf
    flat[low] = -np.inf
    return count, low


def _robust_center_scale(
    flat: np.ndarray, H: int, W: int, nan_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median and sigma (1.4826 MAD, with floors) of each row of ``flat`` (R, H*W) float32.

    ``flat`` holds NaN for untrusted pixels and no other non-finite value;
    ``nan_rows`` (R,) marks the rows that may hold NaN.
    """
    R = flat.shape[0]
    if H == W and stats_pixel_grid(H)[0].step > 1:
        gr, gc = stats_pixel_grid(H)
        sub = np.ascontiguousarray(flat.reshape(R, H, W)[:, gr, gc]).reshape(R, -1)
    else:
        sub = flat.copy()
    M = sub.shape[1]
    low = None
    if nan_rows.any():
        n_bad, low = _fill_inf_balanced(sub)
    else:
        n_bad = np.zeros(R, dtype=np.int64)
    n_valid = M - n_bad
    med = _median_of_filled(sub.copy(), n_valid)
    # |x - med| keeps the untrusted entries at +inf; the same half go back to -inf.
    np.subtract(sub, med[:, None], out=sub)
    np.abs(sub, out=sub)
    if low is not None:
        sub.reshape(-1)[low] = -np.inf
    mad = _median_of_filled(sub, n_valid)
    # Rows whose grid has no valid pixel but whose stamp has some use every valid pixel.
    fallback = n_valid == 0
    if fallback.any():
        full = flat[fallback]
        m2, _ = _row_median(full.copy(), None)
        mad2, _ = _row_median(np.abs(full - m2[:, None]), None)
        med[fallback] = m2
        mad[fallback] = mad2
    sigma = (MAD_TO_SIGMA * mad).astype(np.float32)
    weak = ~(sigma > 0) | ~np.isfinite(sigma)
    if weak.any():
        # Constant or nearly empty stamps: std of all valid pixels, then 1.
        rows = flat[weak].astype(np.float64)
        cnt = np.count_nonzero(np.isfinite(rows), axis=1)
        mean = np.where(cnt > 0, np.nansum(rows, axis=1) / np.maximum(cnt, 1), 0.0)
        var = np.nansum((rows - mean[:, None]) ** 2, axis=1) / np.maximum(cnt, 1)
        std = np.sqrt(var)
        sigma[weak] = np.where(np.isfinite(std) & (std > 0), std, 1.0).astype(np.float32)
    med = np.where(np.isfinite(med), med, 0.0).astype(np.float32)
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, 1.0).astype(np.float32)
    return med, sigma


def _nan_rows(flat: np.ndarray) -> np.ndarray:
    """(R,) bool: rows of ``flat`` (R, M) float32 that may hold non-finite values.

    Infinities in those rows are turned into NaN (the only untrusted value downstream).
    """
    suspect = ~_rows_finite(flat)
    rows = np.flatnonzero(suspect)
    if rows.shape[0]:
        sub = flat[rows]
        inf = np.isinf(sub)
        if inf.any():
            sub[inf] = np.nan
            flat[rows] = sub
    return suspect


def _normalize_rows(
    flat: np.ndarray,
    H: int,
    W: int,
    norm: str,
    soft: float,
    fill: float,
    nan_rows: np.ndarray | None = None,
    bad_pos: np.ndarray | None = None,
    _rescue: bool = True,
) -> None:
    """Normalise rows (one stamp channel each) of ``flat`` (R, H*W) float32 in place and fill.

    Untrusted pixels must be NaN and the only non-finite values. ``nan_rows``
    (R,) bool marks the rows that may hold them; when None it is found here
    (and infinities are turned into NaN). ``bad_pos``, if given, lists the flat
    positions of all of them (the fill is then a sparse write, not a scan).
    """
    R = flat.shape[0]
    if R == 0:
        return
    tiny = None
    with np.errstate(all="ignore"):
        if nan_rows is None:
            nan_rows = _nan_rows(flat)
        if norm in ("robust_asinh", "robust"):
            med, sigma = _robust_center_scale(flat, H, W, nan_rows)
            soft32 = np.float32(soft if norm == "robust_asinh" else 1.0)
            scale_of_row = sigma
        elif norm == "unit":
            # float64 accumulation: no overflow of the sum of squares.
            norm2 = np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))
            if nan_rows.any():
                rows = flat[nan_rows].astype(np.float64)
                norm2[nan_rows] = np.sqrt(np.nansum(rows * rows, axis=1))
            norm2 = np.where(np.isfinite(norm2) & (norm2 > 0), norm2, 1.0)
            scale_of_row = norm2
        if norm != "none" and _rescue:
            # Rows whose scale is so small (float32 denormals, e.g. stamps in units 1e-42 too
            # large) that 1 / scale overflows float32: they are redone below from an exactly
            # rescaled copy. Every normalisation but "none" is scale-invariant, so multiplying
            # by a power of two changes nothing but keeps the arithmetic finite.
            tiny = np.flatnonzero(scale_of_row < _TINY_SCALE)
            if tiny.shape[0]:
                tiny_rows = flat[tiny].astype(np.float64)
                tiny_scale = scale_of_row[tiny].astype(np.float64)
            else:
                tiny = None
    # Finite inputs can only give a non-finite output through an overflow (or 0 * inf
    # from a degenerate scale); the FPU flags those, and only then is the output scanned.
    alarms: list = []
    with (
        np.errstate(all="ignore"),
        np.errstate(over="call", invalid="call", call=lambda *a: alarms.append(1)),
    ):
        if norm in ("robust_asinh", "robust"):
            scale = 1.0 / (sigma * soft32)
            flat -= med[:, None]
            flat *= scale.astype(np.float32)[:, None]
        elif norm == "unit":
            flat *= (1.0 / norm2).astype(np.float32)[:, None]
    with np.errstate(all="ignore"):
        if norm == "robust_asinh":
            # arcsinh of a finite float32 is finite; its own flags are not alarms.
            np.arcsinh(flat, out=flat)
        if bad_pos is not None and not alarms:
            flat.reshape(-1)[bad_pos] = np.float32(fill)
            return
        bi = np.flatnonzero(nan_rows | ~_rows_finite(flat)) if alarms else np.flatnonzero(nan_rows)
        if bi.shape[0] * 4 > R:
            # Many rows to fill: one pass over the chunk beats copying rows out and back.
            np.copyto(flat, np.float32(fill), where=np.isnan(flat))
            if alarms:
                np.clip(flat, -_F32_MAX, _F32_MAX, out=flat)
        elif bi.shape[0]:
            rows = flat[bi]
            np.copyto(rows, np.float32(fill), where=np.isnan(rows))
            if alarms:
                np.clip(rows, -_F32_MAX, _F32_MAX, out=rows)
            flat[bi] = rows
    if tiny is not None:
        _renormalize_tiny(flat, tiny, tiny_rows, tiny_scale, H, W, norm, soft, fill, nan_rows)


def _renormalize_tiny(flat, tiny, rows64, scale, H, W, norm, soft, fill, nan_rows) -> None:
    """Normalise again rows ``tiny`` of ``flat`` from their raw values ``rows64`` (float64) scaled by 2**k.

    ``scale`` (float64) is each row's sigma or norm; k brings it near 1. A power of two
    scales exactly (float32 denormals become normal numbers holding the same values).
    """
    with np.errstate(all="ignore"):
        k = -np.frexp(np.where(scale > 0, scale, 1.0))[1]
        scaled = (rows64 * np.ldexp(1.0, k)[:, None]).astype(np.float32)
    _normalize_rows(scaled, H, W, norm, soft, fill, nan_rows=nan_rows[tiny], _rescue=False)
    flat[tiny] = scaled


def _norm_params(contract) -> tuple[str, float, float]:
    if isinstance(contract, str):
        norm, soft, fill = contract, 3.0, 0.0
    else:
        norm, soft, fill = contract.normalization, float(contract.asinh_softening), float(contract.fill_value)
    if norm not in NORMALIZATIONS:
        raise ValueError(f"Unknown normalization {norm!r}; expected one of {NORMALIZATIONS}.")
    return norm, soft, fill


def normalize_stamps(stamps: np.ndarray, contract, out: np.ndarray | None = None) -> np.ndarray:
    """Normalise each stamp and channel as the contract says, then fill bad pixels.

    Parameters
    ----------
    stamps : `numpy.ndarray`, (N, C, H, W)
        Raw stamps; non-finite pixels (NaN, inf) are the untrusted ones.
    contract : `InputContract` or `str`
        The contract (its ``normalization``, ``asinh_softening`` and
        ``fill_value`` are used) or a normalisation name from `NORMALIZATIONS`
        (then softening 3 and fill 0).
    out : `numpy.ndarray`, (N, C, H, W) float32 C-contiguous, optional
        Destination; may be ``stamps`` itself for in-place work.

    Returns
    -------
    out : `numpy.ndarray`, (N, C, H, W) float32
        Normalised stamps with no NaN or inf: untrusted pixels hold
        ``fill_value`` and finite overflows are clipped to the float32 range.

    Notes
    -----
    The default, ``"robust_asinh"`` with softening ``a`` (the contract's
    ``asinh_softening``) and fill value ``f``, maps each pixel ``x`` of a stamp
    channel to::

        y = asinh((x - median) / (a * sigma))   if x is finite
        y = f                                   otherwise (NaN, +-inf)

    ``"robust"`` is ``(x - median) / sigma`` (``a = 1``, no asinh).
    Statistics are per stamp and channel, over its finite pixels on the grid of
    `stats_pixel_grid` (every pixel up to 32x32; above, a regular sub-grid
    through the centre pixel with at most 32 pixels per axis): ``median`` and
    ``sigma = 1.4826 * MAD`` with ``MAD = median(|x - median|)``; the median of
    an even number of values is the mean of the two middle ones. If that grid
    has no finite pixel, all finite pixels are used. If ``MAD == 0`` (or
    undefined), ``sigma`` is the population standard deviation (divided by the
    number of pixels) of all finite pixels of the stamp channel, and 1 if that
    is 0 or undefined; the median of an all-bad channel is taken as 0, so such a
    channel is all ``f``. Arithmetic is float32. ``"unit"`` divides by the L2 norm
    of all finite pixels (1 if that is 0). Work is done in cache-sized chunks of
    stamps.
    """
    norm, soft, fill = _norm_params(contract)
    stamps = np.asarray(stamps)
    if stamps.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) stamps, got shape {stamps.shape}.")
    if out is None:
        out = np.empty(stamps.shape, dtype=np.float32)
    elif out.shape != stamps.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be C-contiguous float32 with shape {stamps.shape}, "
            f"got {out.dtype} with shape {out.shape}."
        )
    if out is not stamps:
        np.copyto(out, stamps, casting="unsafe")
    N, C, H, W = out.shape
    flat = out.reshape(N * C, H * W)
    step = max(1, _CHUNK_BYTES // (H * W * 4))
    for a in range(0, N * C, step):
        _normalize_rows(flat[a : a + step], H, W, norm, soft, fill)
    return out
