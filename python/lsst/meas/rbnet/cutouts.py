# This file is part of meas_rbnet.
"""Vectorised stamp extraction, resizing and normalisation (numpy only).

This is layer 1 of the package: it imports nothing but numpy and the package's
constants, flags and input contract.

Conventions
-----------
- Pixel coordinates are zero-based (LSST): pixel ``(row i, column j)`` has its
  centre at ``x = j``, ``y = i`` and covers ``[j - 0.5, j + 0.5)``.
- The centre pixel of a source is the pixel containing its centroid, i.e.
  ``cx = floor(x + 0.5)``, ``cy = floor(y + 0.5)`` (round half up); the
  sub-pixel offset ``x - cx`` lies in ``[-0.5, 0.5)``.
- A stamp of side ``S`` has its centre pixel at index ``S // 2`` on both axes;
  for odd ``S`` this is the middle, for even ``S`` (e.g. Rubin's 30x30 alert
  cutouts) it is the first pixel right of / above the middle.
- Untrusted pixels (off the image, non-finite, or carrying a bad mask bit) are
  NaN in raw stamps, counted per channel, and reported through `SourceFlag`
  bits; they are never silently zero. `normalize_stamps` fills them with the
  contract's ``fill_value`` only after normalisation.

How it is fast (numpy only, no per-source Python loop)
------------------------------------------------------
- Each image is seen through a zero-copy view whose elements are runs of S
  consecutive pixels, so one fancy index copies a whole stamp row; a stamp is
  S indices, not S*S. Images are never copied or padded. Stamps crossing the
  image edge use the same gather at rows clamped into the image; a row run
  that starts left of column 0 (or ends right of the last column) reads the
  neighbouring row's pixels, which are off-image pixels and are overwritten.
- Sources are processed in raster order (neighbouring stamps share image rows
  and cache lines) in chunks of about 2 MB per channel; each chunk is gathered,
  marked, and in `prepare_cutouts` / `iter_cutout_batches` normalised while it
  is still in cache, then written to its rows of the output.
- Untrusted pixels are found without gathering masks for every stamp when the
  stamps cover a good part of the image ("image scan", see `_scan_channel`):
  one pass per image reduces blocks of 16 rows to one value per column (the sum
  of the pixels, which is non-finite if any pixel is; the OR of the mask bits),
  giving a map of "dirty" 16-pixel column segments. A summed-area table over
  16x16 tiles of that map gives each stamp an upper bound on its dirty segments
  in O(1): stamps with none need no per-pixel work at all; stamps with a few
  get their untrusted pixels as a sparse list (stamp, pixel) from the few dirty
  segments; stamps on densely bad areas (saturated stars, NO_DATA, bad-column
  clusters) and all stamps when the scan does not pay are checked pixel by
  pixel (a row-sum pass proves a stamp finite; mask rows are gathered).
- Medians use one `numpy.partition` per row on the fixed pixel grid of
  `stats_pixel_grid`; untrusted grid pixels are set to -inf / +inf in equal
  numbers so that the middle of the partitioned row is the median of the
  trusted pixels (no NaN-aware sort).
"""

from __future__ import annotations

__all__ = [
    "CutoutBatch",
    "extract_cutouts",
    "resize_stamps",
    "normalize_stamps",
    "prepare_stamps",
    "prepare_cutouts",
    "iter_cutout_batches",
    "stats_pixel_grid",
    "STATS_MAX_PIXELS_PER_AXIS",
    "MAD_TO_SIGMA",
]

import dataclasses
import math
from collections.abc import Iterator, Sequence

import numpy as np

from .constants import CHANNEL_ORDER, DEFAULT_BAD_MASK_PLANES, MAX_STAMP_SIZE, MIN_STAMP_SIZE, mask_bits
from .contract import NORMALIZATIONS, InputContract
from .flags import UNSCORABLE, SourceFlag

#: Ratio of the standard deviation to the median absolute deviation of a Gaussian.
MAD_TO_SIGMA: float = 1.4826

#: The robust statistics of `normalize_stamps` use a regular sub-grid of at most
#: this many pixels per axis (see `stats_pixel_grid`); stamps up to this side use every pixel.
STATS_MAX_PIXELS_PER_AXIS: int = 32

# Sources are gathered in chunks of about this many bytes per channel so that the
# checks on a chunk (finite, mask bits, counts) run while it is still in cache.
_CHUNK_BYTES: int = 1 << 21

# Centroids are clipped to this magnitude (pixels) before rounding so that absurd
# values cannot overflow int64 index arithmetic; such stamps are all off-image anyway.
_MAX_COORD: float = float(1 << 40)

_F32_MAX = float(np.finfo(np.float32).max)

# A stamp channel whose noise sigma (or unit norm) is below this is normalised from a copy
# scaled by a power of two, since 1 / scale would overflow float32 (denormal pixel values).
_TINY_SCALE: float = 2.0**-100

# `_mark_bad` switches from lists of bad pixels to boolean maps when more than one
# pixel in this many is bad.
_DENSE_BAD: int = 16

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


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _channel_names(n: int, names: Sequence[str] | None) -> tuple[str, ...]:
    if names is not None:
        names = tuple(str(s) for s in names)
        if len(names) != n:
            raise ValueError(f"names has {len(names)} entries but {n} images were given.")
        return names
    if n == len(CHANNEL_ORDER):
        return CHANNEL_ORDER
    return tuple(f"image {i}" for i in range(n))


def _validate_images(images, masks, names) -> tuple[list[np.ndarray], list[np.ndarray | None], tuple]:
    """Check images and masks; return lists of 2-d arrays (masks may hold None)."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        # A single image is a one-channel stack; documented convenience.
        images = [images]
    if isinstance(images, np.ndarray) and images.ndim != 3:
        raise ValueError(
            f"images must be a sequence of 2-d (H, W) arrays or a (C, H, W) array, got shape {images.shape}."
        )
    images = list(images)
    if not images:
        raise ValueError("images is empty; at least one 2-d image is needed.")
    names = _channel_names(len(images), names)
    arrays = []
    for name, img in zip(names, images):
        arr = np.asarray(img)
        if arr.ndim != 2:
            raise ValueError(f"The {name} image must be a 2-d (H, W) array, got shape {arr.shape}.")
        if arr.size == 0:
            raise ValueError(f"The {name} image is empty (shape {arr.shape}).")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"The {name} image must have a real numeric dtype, got {arr.dtype}.")
        if arrays and arr.shape != arrays[0].shape:
            raise ValueError(
                f"The {name} image has shape {arr.shape} but the {names[0]} image has shape "
                f"{arrays[0].shape}; all images must have the same shape."
            )
        arrays.append(arr)
    if masks is None:
        mask_list: list[np.ndarray | None] = [None] * len(arrays)
    else:
        if isinstance(masks, np.ndarray) and masks.ndim == 2:
            masks = [masks]
        masks = list(masks)
        if len(masks) != len(arrays):
            raise ValueError(f"masks has {len(masks)} entries but {len(arrays)} images were given.")
        mask_list = []
        for name, m in zip(names, masks):
            if m is None:
                mask_list.append(None)
                continue
            m = np.asarray(m)
            if m.shape != arrays[0].shape:
                raise ValueError(
                    f"The {name} mask has shape {m.shape} but the images have shape {arrays[0].shape}."
                )
            if not np.issubdtype(m.dtype, np.integer):
                raise ValueError(f"The {name} mask must have an integer dtype (mask bits), got {m.dtype}.")
            mask_list.append(m)
    return arrays, mask_list, names


def _validate_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 0:
        x = x.reshape(1)
    if y.ndim == 0:
        y = y.reshape(1)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"x and y must be 1-d arrays of centroids, got shapes {x.shape} and {y.shape}.")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}.")
    return x, y


def _validate_fraction(max_bad_fraction) -> float:
    f = float(max_bad_fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}.")
    return f


def _validate_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer number of pixels, got {size!r}.")
    size = int(size)
    if size < 3:
        raise ValueError(f"size must be >= 3 pixels, got {size}.")
    return size


# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------


def _mask_bits_for(dtype: np.dtype, bits: int):
    """``bits`` as a scalar of the mask's integer dtype (bits beyond its width cannot be set)."""
    width = 8 * dtype.itemsize
    b = int(bits) & ((1 << width) - 1)
    if np.issubdtype(dtype, np.signedinteger) and b >= 1 << (width - 1):
        b -= 1 << width
    return dtype.type(b)


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
