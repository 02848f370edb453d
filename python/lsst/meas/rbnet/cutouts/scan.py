# This file is part of meas_rbnet.
"""Where the stamps lie and which of their pixels may be untrusted: source placement and the
image scan (see `_scan_channel`).

Part of the `lsst.meas.rbnet.cutouts` package (layer 1, numpy only); see its docstring for
the conventions and how the extraction is fast.
"""

from __future__ import annotations

__all__: list[str] = []

import dataclasses

import numpy as np

from .gather import _pick

# Centroids are clipped to this magnitude (pixels) before rounding so that absurd
# values cannot overflow int64 index arithmetic; such stamps are all off-image anyway.
_MAX_COORD: float = float(1 << 40)

# Image scan (see `_scan_channel`): rows per block (a "segment" is one column of a
# block) and side of the square tiles whose dirty-segment counts route the stamps.
_SCAN_BLOCK: int = 16

# A stamp whose tiles hold more dirty segments than this is checked pixel by pixel
# instead of through a list of its bad pixels. Measured with 51x51 stamps
# (benchmarks/bench_cutouts.py data and a variant with EDGE bands, saturated stars with
# bleed trails and a template 40% NO_DATA): 8..32 equally good on the dense variant,
# 96 and above much worse; flat from 12 to 64 on sparse bad pixels.
_SCAN_DENSE_SEGMENTS: int = 24

# The image scan is used when the stamps' pixels (summed over stamps overlapping the
# image) are at least this fraction of their bounding box's area. The scan costs two
# passes over the image and mask whatever N; the per-stamp checks cost in proportion
# to N. Measured crossover (51x51 stamps, 4k x 4k images, sparse bad pixels): between
# coverage 0.3 (per-stamp faster) and 0.6 (scan faster); at 1.55 the scan path
# extracts ~1.3x faster with sparse bad pixels and about as fast with dense ones.
_SCAN_MIN_COVERAGE: float = 0.75


@dataclasses.dataclass
class _Sources:
    """Where the stamps of N sources lie. Arrays are (N,) unless said otherwise."""

    size: int
    shape: tuple[int, int]
    #: Finite centroid.
    good: np.ndarray
    #: (N, 2) int64 ``(x, y)`` of the centre pixel; (0, 0) for a non-finite centroid.
    centers: np.ndarray
    #: (N, 2) float32 sub-pixel offsets of the centroid from the centre pixel.
    offsets: np.ndarray
    #: The centroid lies off the image.
    off_image: np.ndarray
    #: Top row and left column of the stamp (int64).
    r0: np.ndarray
    c0: np.ndarray
    #: The stamp reaches past the image (finite centroids only).
    edge: np.ndarray
    #: The stamp shares at least one pixel with the image.
    overlap: np.ndarray


def _locate(x: np.ndarray, y: np.ndarray, size: int, shape: tuple[int, int]) -> _Sources:
    """Centre pixels, offsets and stamp corners of sources at centroids ``x``, ``y`` (N,)."""
    H, W = shape
    half = size // 2
    good = np.isfinite(x) & np.isfinite(y)
    xs = np.where(good, np.clip(x, -_MAX_COORD, _MAX_COORD), 0.0)
    ys = np.where(good, np.clip(y, -_MAX_COORD, _MAX_COORD), 0.0)
    cxf = np.floor(xs + 0.5)
    cyf = np.floor(ys + 0.5)
    centers = np.stack([cxf, cyf], axis=1).astype(np.int64)
    offsets = np.stack([xs - cxf, ys - cyf], axis=1).astype(np.float32)
    off_image = good & ~((xs >= -0.5) & (xs < W - 0.5) & (ys >= -0.5) & (ys < H - 0.5))
    r0 = centers[:, 1] - half
    c0 = centers[:, 0] - half
    inside = good & (r0 >= 0) & (r0 <= H - size) & (c0 >= 0) & (c0 <= W - size)
    overlap = good & (r0 > -size) & (r0 < H) & (c0 > -size) & (c0 < W)
    return _Sources(size, (H, W), good, centers, offsets, off_image, r0, c0, good & ~inside, overlap)


@dataclasses.dataclass
class _ChannelPlan:
    """How the untrusted pixels of one channel's stamps are found.

    ``exact`` (N,) bool marks the stamps checked pixel by pixel when gathered
    (None: no stamp). The untrusted pixels of the other stamps are listed as
    pairs (in no particular order): ``pair_stamp`` (source index),
    ``pair_local`` (flat pixel index in the S x S stamp) and ``pair_tag``
    (1: non-finite, 2: bad mask bit, 3: both). A stamp in neither is clean.
    """

    exact: np.ndarray | None
    pair_stamp: np.ndarray
    pair_local: np.ndarray
    pair_tag: np.ndarray


def _no_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8)


def _plan_channels(imgs, msks, mbits, src: _Sources) -> list[_ChannelPlan]:
    """Decide, per channel, how the untrusted pixels of each stamp are found.

    The image scan (`_scan_channel`) costs a fixed pass over the stamps' bounding
    box; it is used when the stamps cover at least ``_SCAN_MIN_COVERAGE`` of that
    box (e.g. 10,000 51x51 stamps on a 4k x 4k image cover 1.55 of it; 200 cover
    0.03). Otherwise, and for images whose values may not survive the conversion
    to float32 (float64: a finite 1e39 becomes inf), every stamp is checked pixel
    by pixel after it is gathered and converted (the per-stamp path).
    """
    H, W = src.shape
    S = src.size
    ov = np.flatnonzero(src.overlap)
    scan = False
    box = (0, H, 0, W)
    if ov.shape[0]:
        r0, c0 = src.r0[ov], src.c0[ov]
        box = (
            max(0, int(r0.min())),
            min(H, int(r0.max()) + S),
            max(0, int(c0.min())),
            min(W, int(c0.max()) + S),
        )
        area = (box[1] - box[0]) * (box[3] - box[2])
        scan = ov.shape[0] * S * S >= _SCAN_MIN_COVERAGE * area
    plans = []
    for img, msk, mb in zip(imgs, msks, mbits):
        check_nonfinite = img.dtype.kind == "f"
        check_mask = msk is not None and mb != 0
        if ov.shape[0] == 0 or not (check_nonfinite or check_mask):
            plans.append(_ChannelPlan(None, *_no_pairs()))
        elif scan and (not check_nonfinite or img.dtype.itemsize <= 4):
            plans.append(
                _scan_channel(img if check_nonfinite else None, msk if check_mask else None, mb, src, ov, box)
            )
        else:
            plans.append(_ChannelPlan(src.overlap, *_no_pairs()))
    return plans


def _scan_channel(img, msk, mbits, src: _Sources, ov: np.ndarray, box) -> _ChannelPlan:
    """Find the untrusted pixels of one channel for the stamps of sources ``ov`` in one pass over the image.

    ``img`` is None when its pixels need no test (integer images), ``msk`` when
    there is no mask to test. Steps, all vectorised:

    1. Reduce blocks of ``B = _SCAN_BLOCK`` rows to one value per column: the
       float32 sum (non-finite if any pixel is; an overflow only makes a false
       alarm) and the OR of the mask; a (rows / B, W) map of dirty segments.
    2. Count dirty segments per B x B tile and build a summed-area table of the
       counts; each stamp's count over the tiles it touches is then 4 look-ups.
       (A full-resolution table would be exact, but ``np.cumsum(axis=0)`` of
       a 4k x 4k image alone takes ~0.3 s, ten times the whole scan.)
    3. Stamps with count 0 are clean. Stamps with more than
       ``_SCAN_DENSE_SEGMENTS`` are marked for the exact per-pixel check.
    4. The dirty segments in tiles touched by the remaining stamps are expanded
       to pixels and each untrusted pixel is paired with the stamps containing it
       (`_pixels_in_stamps`).
    """
    H, W = src.shape
    S = src.size
    B = _SCAN_BLOCK
    ra, rb, ca, cb = box
    h, w = rb - ra, cb - ca
    nbf = h // B
    nb = -(-h // B)
    # Dirty segments: seg_nf (a non-finite pixel), seg_mk (a bad mask bit); seg either.
    seg_nf = seg_mk = None
    sub = None if img is None else img[ra:rb, ca:cb]
    msub = None if msk is None else msk[ra:rb, ca:cb]
    with np.errstate(over="ignore", invalid="ignore"):
        if sub is not None:
            seg_nf = np.empty((nb, w), dtype=bool)
            if nbf:
                s = np.add.reduce(sub[: nbf * B].reshape(nbf, B, w), axis=1, dtype=np.float32)
                np.logical_not(np.isfinite(s), out=seg_nf[:nbf])
            if nb > nbf:
                seg_nf[nbf] = ~np.isfinite(np.add.reduce(sub[nbf * B :], axis=0, dtype=np.float32))
        if msub is not None:
            seg_mk = np.empty((nb, w), dtype=bool)
            if nbf:
                o = np.bitwise_or.reduce(msub[: nbf * B].reshape(nbf, B, w), axis=1)
                np.not_equal(np.bitwise_and(o, mbits, out=o), 0, out=seg_mk[:nbf])
            if nb > nbf:
                seg_mk[nbf] = (np.bitwise_or.reduce(msub[nbf * B :], axis=0) & mbits) != 0
    seg = seg_nf if seg_mk is None else (seg_mk if seg_nf is None else seg_nf | seg_mk)

    nt = -(-w // B)
    if nt * B != w:
        padded = np.zeros((nb, nt * B), dtype=bool)
        padded[:, :w] = seg
    else:
        padded = seg
    tiles = _tile_counts(padded, B)
    sat = np.zeros((nb + 1, nt + 1), dtype=np.int64)
    sat[1:, 1:] = tiles.cumsum(axis=0).cumsum(axis=1)
    dirty = np.flatnonzero(seg)

    r0, c0 = src.r0[ov], src.c0[ov]
    t_r0 = (np.maximum(r0, ra) - ra) // B
    t_r1 = (np.minimum(r0 + S, rb) - ra - 1) // B + 1
    t_c0 = (np.maximum(c0, ca) - ca) // B
    t_c1 = (np.minimum(c0 + S, cb) - ca - 1) // B + 1
    load = sat[t_r1, t_c1] - sat[t_r0, t_c1] - sat[t_r1, t_c0] + sat[t_r0, t_c0]
    dense = load > _SCAN_DENSE_SEGMENTS
    if np.count_nonzero(dense) * 2 > ov.shape[0]:
        # Mostly dense (e.g. a template with little coverage): check every stamp.
        return _ChannelPlan(src.overlap, *_no_pairs())
    exact = None
    if dense.any():
        exact = np.zeros(src.r0.shape[0], dtype=bool)
        exact[ov[dense]] = True
    sparse = (load > 0) & ~dense
    if not sparse.any():
        return _ChannelPlan(exact, *_no_pairs())

    # Tiles touched by the sparse stamps: a 2-d difference array summed over both axes.
    stride = nt + 1
    sr0, sr1, sc0, sc1 = t_r0[sparse], t_r1[sparse], t_c0[sparse], t_c1[sparse]
    corners = np.concatenate([sr0 * stride + sc0, sr0 * stride + sc1, sr1 * stride + sc0, sr1 * stride + sc1])
    signs = np.repeat(np.array([1.0, -1.0, -1.0, 1.0]), sr0.shape[0])
    diff = np.bincount(corners, weights=signs, minlength=(nb + 1) * stride).reshape(nb + 1, stride)
    touched = diff.cumsum(axis=0).cumsum(axis=1)[:nb, :nt] > 0.5
    sk, scol = dirty // w, dirty % w
    keep = touched[sk, scol // B]
    sk, scol = sk[keep], scol[keep]

    # Expand the dirty segments to their B pixels; test the image only where a segment's
    # sum was non-finite and the mask only where its OR had a bad bit.
    seg_id = sk * w + scol
    rows = sk[:, None] * B + np.arange(ra, ra + B)
    valid = None
    if nb > nbf:
        # The last block is shorter than B rows.
        valid = rows < rb
        np.minimum(rows, rb - 1, out=rows)
    cols = scol[:, None] + ca
    tag = np.zeros(rows.shape, dtype=np.uint8)
    if img is not None:
        # Segments dirty through the image only (all of them when there is no mask).
        w_nf = slice(None) if seg_mk is None else np.flatnonzero(seg_nf.reshape(-1)[seg_id])
        tag[w_nf] |= (~np.isfinite(_pick(img, rows[w_nf], cols[w_nf]))).view(np.uint8)
    if msk is not None:
        w_mk = slice(None) if seg_nf is None else np.flatnonzero(seg_mk.reshape(-1)[seg_id])
        tag[w_mk] |= ((_pick(msk, rows[w_mk], cols[w_mk]) & mbits) != 0).view(np.uint8) << 1
    if valid is not None:
        tag[~valid] = 0
    q = np.flatnonzero(tag)
    i = q // B
    stamp, local, ptag = _pixels_in_stamps(
        rows.reshape(-1)[q], scol[i] + ca, tag.reshape(-1)[q], ov[sparse], src
    )
    return _ChannelPlan(exact, stamp, local, ptag)


def _tile_counts(seg: np.ndarray, B: int) -> np.ndarray:
    """Number of True entries in each run of ``B`` columns of ``seg`` (R, nt * B) bool, as (R, nt) int64."""
    R, n = seg.shape
    if B % 8 or B > 255 or not seg.flags.c_contiguous:
        return seg.reshape(R, n // B, B).sum(axis=2, dtype=np.int64)
    # Sum the bytes 8 at a time: add the tile's 64-bit words (each byte stays <= B / 8),
    # then one multiply by 0x0101...01 sums a word's 8 bytes into its top byte.
    words = seg.view(np.uint64).reshape(R, n // B, B // 8)
    total = words[:, :, 0].copy()
    for k in range(1, B // 8):
        total += words[:, :, k]
    total *= np.uint64(0x0101010101010101)
    return (total >> np.uint64(56)).astype(np.int64)


def _pixels_in_stamps(pr, pc, ptag, stamps: np.ndarray, src: _Sources):
    """Pair untrusted image pixels (``pr``, ``pc``) with the stamps of sources ``stamps`` containing them.

    Stamps are bucketed by their top-left corner in cells of G x G pixels
    (G >= S); the stamps containing pixel (r, c) have their corner in
    [r - S + 1, r] x [c - S + 1, c], i.e. in 2 x 2 cells, so each pixel is
    compared with a few candidates only. Returns source index, flat pixel index
    in the stamp and tag (in no particular order).
    """
    S = src.size
    G = max(S, 32)  # small stamps: keep the cell grid small
    H, W = src.shape
    r0, c0 = src.r0[stamps], src.c0[stamps]
    ncr = (H + S) // G + 2
    ncc = (W + S) // G + 2
    cell = ((r0 + S) // G) * ncc + (c0 + S) // G
    by_cell = stamps[np.argsort(cell)]
    count = np.bincount(cell, minlength=ncr * ncc)
    first = np.cumsum(count) - count
    # Lowest candidate cell of each pixel, then its 2 x 2 block of cells.
    base = ((pr + 1) // G) * ncc + (pc + 1) // G
    cand = (base[:, None] + np.array([0, 1, ncc, ncc + 1])).reshape(-1)
    n_cand = count[cand]
    # Position in by_cell of each candidate: start of its cell plus its rank in the cell.
    at = np.repeat(first[cand] - (np.cumsum(n_cand) - n_cand), n_cand)
    at += np.arange(at.shape[0])
    s = by_cell[at]
    p = np.repeat(np.arange(pr.shape[0]), n_cand.reshape(-1, 4).sum(axis=1))
    dr = pr[p] - src.r0[s]
    dc = pc[p] - src.c0[s]
    keep = (dr >= 0) & (dr < S) & (dc >= 0) & (dc < S)
    return s[keep], dr[keep] * S + dc[keep], ptag[p[keep]]


def _batch_pairs(plan: _ChannelPlan, s0: int, s1: int, n: int, rank: np.ndarray, npix: int):
    """Untrusted pixels of sources [s0, s1) (of ``n``) listed by a plan, for one batch.

    Returns their sorted flat positions in the batch's raster-ordered stamps
    (stamp rank ``rank[i]`` times ``npix`` plus pixel) and their tags, or None.
    """
    stamp, local, tag = plan.pair_stamp, plan.pair_local, plan.pair_tag
    if s0 > 0 or s1 < n:
        sel = (stamp >= s0) & (stamp < s1)
        stamp, local, tag = stamp[sel], local[sel], tag[sel]
    if stamp.shape[0] == 0:
        return None
    key = rank[stamp - s0] * npix + local
    order = np.argsort(key)
    return key[order], tag[order]
