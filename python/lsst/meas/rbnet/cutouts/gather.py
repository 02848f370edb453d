# This file is part of meas_rbnet.
"""Low-level gathers of stamp rows from images and the marking of untrusted pixels.

Part of the `lsst.meas.rbnet.cutouts` package (layer 1, numpy only); see its docstring for
the conventions and how the extraction is fast.
"""

from __future__ import annotations

__all__: list[str] = []

import numpy as np


# Sources are gathered in chunks of about this many bytes per channel so that the
# checks on a chunk (finite, mask bits, counts) run while it is still in cache.
_CHUNK_BYTES: int = 1 << 21

# `_mark_bad` switches from lists of bad pixels to boolean maps when more than one
# pixel in this many is bad.
_DENSE_BAD: int = 16


def _flat_view(a: np.ndarray) -> tuple[np.ndarray, int] | None:
    """1-d contiguous view of a 2-d array whose rows are contiguous, and its row pitch (elements).

    Pixel (r, c) is element ``r * row + c``. Elements between the end of one row
    and the start of the next (a view into a wider array) belong to the parent
    array: they are valid memory, never pixels of ``a``. `None` for other layouts.
    """
    H, W = a.shape
    isz = a.dtype.itemsize
    s0, s1 = a.strides
    if H == 0 or W == 0 or s1 != isz or s0 <= 0 or s0 % isz:
        return None
    row = s0 // isz
    return np.lib.stride_tricks.as_strided(a, shape=((H - 1) * row + W,), strides=(isz,)), row


def _row_view(a: np.ndarray, size: int) -> tuple[np.ndarray, int] | None:
    """View of a 2-d array as overlapping runs of ``size`` pixels, one per flat offset.

    Element ``k`` of the returned 1-d void array is the ``size`` consecutive pixels
    starting at flat offset ``k``, so pixel (r, c) starts at ``r * row + c``. One
    fancy index then copies a whole stamp row (a memcpy) instead of one pixel,
    which is what makes the gather fast. Returns `None` for layouts where a row
    is not contiguous (the caller then uses the general path).
    """
    fv = _flat_view(a)
    if fv is None or a.shape[1] < size:
        return None
    flat, row = fv
    isz = a.dtype.itemsize
    view = np.ndarray(
        shape=(flat.shape[0] - size + 1,), dtype=np.dtype((np.void, size * isz)), buffer=flat, strides=(isz,)
    )
    return view, row


def _pick(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``a[rows, cols]`` (broadcast index arrays), through a 1-d view when the layout allows (faster)."""
    fv = _flat_view(a)
    if fv is None:
        return a[rows, cols]
    flat, row = fv
    return flat[rows * row + cols]


def _gather_rows(img: np.ndarray, view, r0: np.ndarray, c0: np.ndarray, size: int, clamp: bool) -> np.ndarray:
    """Stamps with top-left pixel (``r0``, ``c0``) (k,) as a new (k, S*S) array in ``img``'s dtype.

    With ``clamp`` the stamps may reach past the image (but must overlap it):
    rows are clamped into the image, and a row run starting left of column 0 or
    ending right of the last column reads the neighbouring row's pixels (still
    inside the image's memory). Those pixels are off the image and the caller
    overwrites them. The few runs that would leave the image's memory (the first
    row left of column 0, the last row past the last column) are read pixel by
    pixel at clamped columns.
    """
    H, W = img.shape
    k = r0.shape[0]
    offs = np.arange(size)
    rows = r0[:, None] + offs
    if clamp:
        np.clip(rows, 0, H - 1, out=rows)
    if view is None:
        cols = c0[:, None] + offs
        if clamp:
            np.clip(cols, 0, W - 1, out=cols)
        return img[rows[:, :, None], cols[:, None, :]].reshape(k, size * size)
    rview, row = view
    starts = rows * row
    starts += c0[:, None]
    outside = None
    if clamp:
        last = rview.shape[0] - 1
        outside = (starts < 0) | (starts > last)
        if outside.any():
            np.clip(starts, 0, last, out=starts)
        else:
            outside = None
    g = rview[starts.reshape(-1)].view(img.dtype).reshape(k, size * size)
    if outside is not None:
        i, j = np.nonzero(outside)
        cols = np.clip(c0[i][:, None] + offs, 0, W - 1)
        g.reshape(k, size, size)[i, j] = img[rows[i, j][:, None], cols]
    return g


def _rows_finite(a: np.ndarray) -> np.ndarray:
    """Whether each row of ``a`` (R, M) float may be trusted to hold only finite values.

    The row sum is NaN or infinite if any element is (IEEE propagation); a finite
    row whose sum overflows is reported non-finite, which only sends it down the
    exact (slower) path. einsum's summation is a single fast pass.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return np.isfinite(np.einsum("ij->i", a))


def _mark_bad(
    g: np.ndarray, gm: np.ndarray | None, bits
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Set untrusted pixels of stamps ``g`` (k, P) float32 to NaN in place.

    ``gm`` (k, P) holds the matching mask values (overwritten) or is None.
    Returns the per-stamp count of untrusted pixels, whether any pixel was
    non-finite or carried a bad mask bit, and the sorted flat positions of the
    untrusted pixels in ``g``. Few bad pixels are handled as a list of
    positions; when they are many (more than 1 / ``_DENSE_BAD`` of the pixels:
    NO_DATA areas, saturated stars) as boolean maps, and the positions are then
    None.
    """
    k, npix = g.shape
    nonfinite = np.zeros(k, dtype=bool)
    masked = np.zeros(k, dtype=bool)
    nf_rows = np.flatnonzero(~_rows_finite(g))
    nf_bad = None
    n_bad = 0
    if nf_rows.shape[0]:
        nf_bad = ~np.isfinite(g[nf_rows])
        nonfinite[nf_rows] = nf_bad.any(axis=1)
        n_bad += int(np.count_nonzero(nf_bad))
    if gm is not None:
        np.bitwise_and(gm, bits, out=gm)
        n_bad += int(np.count_nonzero(gm))
    if n_bad * _DENSE_BAD > k * npix:
        bad = np.zeros((k, npix), dtype=bool) if gm is None else np.not_equal(gm, 0)
        if gm is not None:
            masked = bad.any(axis=1)
        if nf_bad is not None:
            bad[nf_rows] |= nf_bad
        np.copyto(g, np.float32(np.nan), where=bad)
        return np.count_nonzero(bad, axis=1).astype(np.int32), nonfinite, masked, None
    pos = None
    if nf_bad is not None:
        p = np.flatnonzero(nf_bad)
        pos = nf_rows[p // npix] * npix + p % npix
    if gm is not None:
        # nonzero on a bool array is several times faster than on int.
        mpos = np.flatnonzero(np.not_equal(gm, 0))
        masked[mpos // npix] = True
        if pos is None or pos.shape[0] == 0:
            pos = mpos
        elif mpos.shape[0]:
            # Union of two short sorted lists (np.union1d has a large fixed cost).
            pos = np.sort(np.concatenate([pos, mpos]))
            pos = pos[np.concatenate([[True], pos[1:] != pos[:-1]])]
    if pos is None or pos.shape[0] == 0:
        return np.zeros(k, dtype=np.int32), nonfinite, masked, np.zeros(0, dtype=np.intp)
    g.reshape(-1)[pos] = np.nan
    return np.bincount(pos // npix, minlength=k).astype(np.int32), nonfinite, masked, pos
