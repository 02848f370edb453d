# This file is part of meas_rbnet.
"""Extraction of raw stamps with NaN/mask handling, counts and flags (`extract_cutouts`).

Part of the `lsst.meas.rbnet.cutouts` package (layer 1, numpy only); see its docstring for
the conventions and how the extraction is fast.
"""

from __future__ import annotations

__all__ = ["CutoutBatch", "extract_cutouts"]

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..constants import DEFAULT_BAD_MASK_PLANES, mask_bits
from ..flags import UNSCORABLE, SourceFlag
from .gather import _CHUNK_BYTES, _gather_rows, _mark_bad, _row_view
from .normalize import _normalize_rows
from .scan import _Sources, _batch_pairs, _locate, _plan_channels
from .validate import _mask_bits_for, _validate_fraction, _validate_images, _validate_size, _validate_xy


@dataclasses.dataclass
class CutoutBatch:
    """Raw stamps of N sources in C channels, with what happened to each.

    Attributes
    ----------
    stamps : `numpy.ndarray`, (N, C, S, S) float32
        Raw pixel values (image units, e.g. nJy). Every untrusted pixel (off the
        image, non-finite, or with a bad mask bit) is NaN.
    flags : `numpy.ndarray`, (N,) int32
        `SourceFlag` bits.
    n_bad : `numpy.ndarray`, (N, C) int32
        Number of untrusted pixels per stamp and channel.
    centers : `numpy.ndarray`, (N, 2) int64
        ``(x, y)`` of the stamp's centre pixel (stamp index ``[S // 2, S // 2]``).
        ``(0, 0)`` for a non-finite centroid (flagged ``BAD_CENTROID``).
    offsets : `numpy.ndarray`, (N, 2) float32
        ``(x - cx, y - cy)``: sub-pixel offset of the centroid from the centre
        pixel, in ``[-0.5, 0.5)``; ``(0, 0)`` for a non-finite centroid.
    """

    stamps: np.ndarray
    flags: np.ndarray
    n_bad: np.ndarray
    centers: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.stamps.shape[0])


def _process(
    imgs, msks, mbits, src: _Sources, plans, s0: int, s1: int, out, norm, max_bad_fraction
) -> CutoutBatch:
    """Extract (and with ``norm = (name, softening, fill)`` normalise) the stamps of sources [s0, s1).

    Sources overlapping the image are processed in cache-sized chunks in raster
    order of their position (neighbouring stamps share image rows, so the image
    is read from memory about once); each chunk is gathered, marked, optionally
    normalised while in cache, and written to its rows of the output.
    """
    n = s1 - s0
    n_chan = len(imgs)
    H, W = src.shape
    size = src.size
    npix = size * size
    centre = (size // 2) * size + size // 2
    if out is None:
        stamps = np.empty((n, n_chan, size, size), dtype=np.float32)
    else:
        if out.shape != (n, n_chan, size, size) or out.dtype != np.float32:
            raise ValueError(
                f"out must be float32 with shape {(n, n_chan, size, size)}, got {out.dtype} {out.shape}."
            )
        stamps = out
    sl = slice(s0, s1)
    good, edge, overlap = src.good[sl], src.edge[sl], src.overlap[sl]
    r0, c0 = src.r0[sl], src.c0[sl]
    flags = np.zeros(n, dtype=np.int32)
    n_bad = np.zeros((n, n_chan), dtype=np.int32)
    nonfinite = np.zeros(n, dtype=bool)
    masked = np.zeros(n, dtype=bool)
    bad_center = ~overlap

    # Stamps inside the image first, then those reaching past it, each in raster order;
    # chunks never mix the two, so inside chunks skip all edge work.
    groups = []
    for sel in (overlap & ~edge, overlap & edge):
        idx = np.flatnonzero(sel)
        key = r0[idx] * W + c0[idx]
        if idx.shape[0] > 1 and not np.all(key[1:] >= key[:-1]):
            idx = idx[np.argsort(key, kind="stable")]
        groups.append(idx)
    idx_ov = np.concatenate(groups)
    if idx_ov.shape[0]:
        views = [_row_view(img, size) for img in imgs]
        mviews = [None if m is None else _row_view(m, size) for m in msks]
        use_mask = [m is not None and mb != 0 for m, mb in zip(msks, mbits)]
        # All sources inside and already in raster order: write plain slices.
        in_order = idx_ov.shape[0] == n and bool(np.all(idx_ov == np.arange(n)))
        rank = np.empty(n, dtype=np.int64)
        rank[idx_ov] = np.arange(idx_ov.shape[0])
        pairs = [_batch_pairs(p, s0, s1, src.r0.shape[0], rank, npix) for p in plans]
        step = max(1, _CHUNK_BYTES // (npix * 4))
        n_in = groups[0].shape[0]
        chunks = [(a, min(a + step, n_in)) for a in range(0, n_in, step)]
        chunks += [(a, min(a + step, idx_ov.shape[0])) for a in range(n_in, idx_ov.shape[0], step)]
        for a, b in chunks:
            idx = idx_ov[a:b]
            k = b - a
            dest = slice(a, b) if in_order else idx
            rr, cc = r0[idx], c0[idx]
            clamp = a >= n_in
            off = None
            if clamp:
                # Off-image rows and columns of each stamp: NaN factors, 1 elsewhere.
                offs = np.arange(size)
                rows_on = (rr[:, None] + offs >= 0) & (rr[:, None] + offs < H)
                cols_on = (cc[:, None] + offs >= 0) & (cc[:, None] + offs < W)
                row_nan = np.where(rows_on, np.float32(1.0), np.float32(np.nan))[:, :, None]
                col_nan = np.where(cols_on, np.float32(1.0), np.float32(np.nan))[:, None, :]
                n_off = (npix - np.count_nonzero(rows_on, axis=1) * np.count_nonzero(cols_on, axis=1)).astype(
                    np.int32
                )
            for c in range(n_chan):
                g = _gather_rows(imgs[c], views[c], rr, cc, size, clamp)
                if g.dtype != np.float32:
                    # A finite value beyond the float32 range becomes inf: untrusted, flagged NONFINITE.
                    with np.errstate(over="ignore"):
                        g = g.astype(np.float32)
                plan = plans[c]
                nb = np.zeros(k, dtype=np.int32)
                nf = np.zeros(k, dtype=bool)
                mk = np.zeros(k, dtype=bool)
                # Flat positions of the untrusted pixels, for a sparse fill after normalisation
                # (edge chunks have too many off-image ones; their fill scans for NaN instead).
                bad_pos = None if clamp else []
                exi = None if plan.exact is None else np.flatnonzero(plan.exact[idx + s0])
                use_pairs = pairs[c] is not None
                if exi is not None and exi.shape[0]:
                    if exi.shape[0] * 2 > k:
                        # Mostly exact: checking the whole chunk is cheaper than picking rows.
                        exi = np.arange(k)
                        use_pairs = False
                    if clamp and off is None:
                        off = ~(rows_on[:, :, None] & cols_on[:, None, :]).reshape(k, npix)
                    pos = _mark_exact(
                        g,
                        exi,
                        msks[c] if use_mask[c] else None,
                        mviews[c],
                        mbits[c],
                        rr,
                        cc,
                        size,
                        off,
                        nb,
                        nf,
                        mk,
                    )
                    if pos is None:
                        bad_pos = None
                    elif bad_pos is not None:
                        bad_pos.append(pos)
                if use_pairs:
                    pkey, ptag = pairs[c]
                    i0, i1 = np.searchsorted(pkey, [a * npix, b * npix])
                    if i1 > i0:
                        pos = pkey[i0:i1] - a * npix
                        tag = ptag[i0:i1]
                        g.reshape(-1)[pos] = np.nan
                        rows = pos // npix
                        nb += np.bincount(rows, minlength=k).astype(np.int32)
                        nf[rows[(tag & 1) != 0]] = True
                        mk[rows[(tag & 2) != 0]] = True
                        if bad_pos is not None:
                            bad_pos.append(pos)
                if clamp:
                    # x * 1 is x exactly; x * NaN is NaN whatever the off-image garbage holds.
                    g3 = g.reshape(k, size, size)
                    g3 *= row_nan
                    g3 *= col_nan
                    nb += n_off
                n_bad[dest, c] = nb
                nonfinite[dest] |= nf
                masked[dest] |= mk
                bad_center[dest] |= np.isnan(g[:, centre])
                if norm is not None:
                    if bad_pos is not None:
                        bad_pos = np.concatenate(bad_pos) if bad_pos else np.zeros(0, dtype=np.int64)
                    _normalize_rows(g, size, size, *norm, nan_rows=nb > 0, bad_pos=bad_pos)
                stamps[dest, c] = g.reshape(k, size, size)

    idx_off = np.flatnonzero(~overlap)
    if idx_off.shape[0]:
        # Non-finite centroids and stamps wholly off the image: nothing to gather.
        stamps[idx_off] = np.nan if norm is None else np.float32(norm[2])
        n_bad[idx_off] = npix

    flags |= np.where(edge, np.int32(SourceFlag.EDGE), np.int32(0))
    flags |= np.where(nonfinite, np.int32(SourceFlag.NONFINITE), np.int32(0))
    flags |= np.where(masked, np.int32(SourceFlag.MASKED), np.int32(0))
    flags |= np.where(bad_center, np.int32(SourceFlag.BAD_CENTER), np.int32(0))
    flags |= np.where(
        (n_bad > max_bad_fraction * npix).any(axis=1), np.int32(SourceFlag.MOSTLY_BAD), np.int32(0)
    )
    flags |= np.where((n_bad >= npix).any(axis=1), np.int32(SourceFlag.NO_VALID_PIXELS), np.int32(0))
    flags |= np.where(~good, np.int32(SourceFlag.BAD_CENTROID), np.int32(0))
    flags |= np.where(src.off_image[sl], np.int32(SourceFlag.OFF_IMAGE), np.int32(0))
    flags |= np.where(flags & np.int32(UNSCORABLE), np.int32(SourceFlag.NOT_SCORED), np.int32(0))
    return CutoutBatch(
        stamps=stamps,
        flags=flags,
        n_bad=n_bad,
        centers=src.centers[sl].copy(),
        offsets=src.offsets[sl].copy(),
    )


def _mark_exact(g, exi, msk, mview, mbits, rr, cc, size, off, nb, nf, mk) -> np.ndarray:
    """Check stamps ``exi`` of a chunk pixel by pixel: set their untrusted pixels of ``g`` to NaN.

    ``g`` (k, S*S) float32 holds the chunk's gathered stamps at corners ``rr``,
    ``cc`` (k,). ``off`` (k, S*S) bool marks off-image pixels (None when the
    chunk has none); they are not tested here and are left to the caller.
    Counts and flags of the stamps go to ``nb``, ``nf`` (non-finite) and ``mk``
    (masked), all (k,). Returns the flat positions in ``g`` of the pixels set to NaN
    (None if they were too many to list).
    """
    k = g.shape[0]
    every = exi.shape[0] == k
    ge = g if every else g[exi]
    gm = None
    if msk is not None:
        gm = _gather_rows(msk, mview, rr[exi], cc[exi], size, off is not None)
    if off is not None:
        # Off-image pixels hold other rows' values (or clamped copies): not this stamp's.
        o = off if every else off[exi]
        np.copyto(ge, np.float32(0.0), where=o)
        if gm is not None:
            np.copyto(gm, 0, where=o)
    nbe, nfe, mke, pos = _mark_bad(ge, gm, mbits)
    if not every:
        g[exi] = ge
        if pos is not None:
            npix = g.shape[1]
            pos = exi[pos // npix] * npix + pos % npix
    nb[exi] += nbe
    nf[exi] = nfe
    mk[exi] = mke
    return pos


def _channel_mask_bits(msks, bits) -> list:
    return [None if m is None else _mask_bits_for(m.dtype, bits) for m in msks]


def _extract(imgs, msks, bits, x, y, size, max_bad_fraction, out=None, norm=None) -> CutoutBatch:
    """Extraction on validated inputs; with ``norm = (name, softening, fill)`` the stamps are normalised."""
    src = _locate(x, y, size, imgs[0].shape)
    mbits = _channel_mask_bits(msks, bits)
    plans = _plan_channels(imgs, msks, mbits, src)
    return _process(imgs, msks, mbits, src, plans, 0, x.shape[0], out, norm, max_bad_fraction)


def extract_cutouts(
    images,
    x,
    y,
    size: int,
    *,
    masks=None,
    bad_mask_bits: int = mask_bits(DEFAULT_BAD_MASK_PLANES),
    names: Sequence[str] | None = None,
    max_bad_fraction: float = 0.5,
    out: np.ndarray | None = None,
) -> CutoutBatch:
    """Cut square stamps centred on many sources from C aligned images at once.

    Parameters
    ----------
    images : sequence of `numpy.ndarray`, each (H, W)
        The C images (e.g. difference, science, template), all the same shape,
        any real dtype (output is float32). A (C, H, W) array or a single (H, W)
        array (C = 1) is accepted too. They are never copied or padded.
    x, y : array-like, (N,)
        Centroids in zero-based pixel coordinates (LSST convention: pixel
        ``(row i, col j)`` has its centre at ``x = j, y = i``).
    size : `int`
        Stamp side S in pixels, >= 3. The centre pixel sits at index ``S // 2``.
    masks : sequence of (H, W) integer arrays or `None`, optional
        Mask planes matching ``images``; entries may be `None`.
    bad_mask_bits : `int`, optional
        Mask bits whose pixels are untrusted (default: the bits of
        `DEFAULT_BAD_MASK_PLANES`).
    names : sequence of `str`, optional
        Channel names used in error messages (default `CHANNEL_ORDER` for
        three images).
    max_bad_fraction : `float`, optional
        A channel with more than this fraction of untrusted pixels sets
        ``MOSTLY_BAD``.
    out : `numpy.ndarray`, (N, C, S, S) float32, optional
        Preallocated array for the stamps (saves the page faults of a fresh
        allocation when called repeatedly).

    Returns
    -------
    batch : `CutoutBatch`
        ``stamps`` (N, C, S, S) float32 with untrusted pixels NaN, ``flags``
        (N,) int32, ``n_bad`` (N, C) int32, ``centers`` (N, 2) int64 and
        ``offsets`` (N, 2) float32.

    Notes
    -----
    Flags set: ``EDGE`` (stamp reaches past the image), ``NONFINITE`` (a pixel
    on the image was NaN/inf, or beyond the float32 range in a float64 image),
    ``MASKED`` (a pixel had a bad mask bit),
    ``BAD_CENTER`` (the centre pixel is untrusted in any channel),
    ``MOSTLY_BAD`` (a channel's untrusted fraction > ``max_bad_fraction``),
    ``NO_VALID_PIXELS`` (a channel has no trusted pixel), ``BAD_CENTROID``
    (non-finite x or y: the stamp is all NaN, centre and offset 0), ``OFF_IMAGE``
    (centroid outside ``[-0.5, W - 0.5) x [-0.5, H - 0.5)``; whatever part of
    the stamp overlaps the image is still extracted) and ``NOT_SCORED`` with any
    bit of `UNSCORABLE`.

    The work is index arithmetic and fancy indexing over all sources at once
    (in cache-sized chunks; one index copies a whole stamp row); there is no
    per-source Python loop and no padded copy of the images. When the stamps
    cover much of the image, untrusted pixels are found by one scan of each
    image and mask instead of per stamp (see the module docstring); both ways
    give identical results.

    Raises
    ------
    ValueError
        If an image is not 2-d, the images differ in shape, a mask does not
        match, x and y differ in length, or ``size < 3``.
    """
    imgs, msks, names = _validate_images(images, masks, names)
    x, y = _validate_xy(x, y)
    size = _validate_size(size)
    max_bad_fraction = _validate_fraction(max_bad_fraction)
    return _extract(imgs, msks, bad_mask_bits, x, y, size, max_bad_fraction, out=out)
