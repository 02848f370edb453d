# This file is part of meas_rbnet.
"""FROZEN copy of the round-1 ``lsst.meas.rbnet.cutouts`` (benchmark reference only).

`bench_cutouts.py` times these functions next to the current ones in the same
run and checks that both give the same outputs. Do not edit or import this
from the package; it exists so that the speed-up is measured, not remembered.

Original module docstring:

Vectorised stamp extraction, resizing and normalisation (numpy only).

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
  S indices, not S*S. Images are never copied or padded.
- Sources are processed in raster order (neighbouring stamps share image rows
  and cache lines) in chunks of about 2 MB per channel; each chunk is checked
  (one row-sum pass proves a stamp finite; bad mask bits are found as a sparse
  list of positions) and, in `prepare_cutouts` / `iter_cutout_batches`,
  normalised while still in cache, then written to its rows of the output.
- Sources whose stamp crosses the image edge take a separate path that
  gathers at a clipped position and shifts into place; off-image pixels are NaN.
- Medians use `numpy.partition` on NaN-free rows and a sort only on rows with
  NaN, on the fixed pixel grid of `stats_pixel_grid`.
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

from lsst.meas.rbnet.constants import CHANNEL_ORDER, DEFAULT_BAD_MASK_PLANES, MAX_STAMP_SIZE, MIN_STAMP_SIZE, mask_bits
from lsst.meas.rbnet.contract import NORMALIZATIONS, InputContract
from lsst.meas.rbnet.flags import UNSCORABLE, SourceFlag

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


def _row_view(a: np.ndarray, size: int) -> tuple[np.ndarray, int] | None:
    """View of a 2-d array as overlapping runs of ``size`` pixels, one per flat offset.

    Element ``k`` of the returned 1-d void array is the ``size`` consecutive pixels
    starting at flat offset ``k``, so pixel (r, c) starts at ``r * row + c``. One
    fancy index then copies a whole stamp row (a memcpy) instead of one pixel,
    which is what makes the gather fast. Returns `None` for layouts where a row
    is not contiguous (the caller then uses the general path).
    """
    H, W = a.shape
    isz = a.dtype.itemsize
    s0, s1 = a.strides
    if W < size or H == 0 or s1 != isz or s0 <= 0 or s0 % isz:
        return None
    row = s0 // isz
    length = (H - 1) * row + W
    flat = np.lib.stride_tricks.as_strided(a, shape=(length,), strides=(isz,))
    view = np.ndarray(
        shape=(length - size + 1,), dtype=np.dtype((np.void, size * isz)), buffer=flat, strides=(isz,)
    )
    return view, row


def _gather(img, view, r0, c0, size) -> np.ndarray:
    """Stamps entirely inside ``img`` at rows ``r0``, columns ``c0`` (k,) as a new (k, S*S) array."""
    k = r0.shape[0]
    if view is not None:
        rows, row = view
        starts = (r0 * row + c0)[:, None] + np.arange(size) * row
        return rows[starts.reshape(-1)].view(img.dtype).reshape(k, size * size)
    rr = r0[:, None] + np.arange(size)
    cc = c0[:, None] + np.arange(size)
    return img[rr[:, :, None], cc[:, None, :]].reshape(k, size * size)


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Set untrusted pixels of stamps ``g`` (k, P) float32 to NaN in place.

    ``gm`` (k, P) holds the matching mask values (overwritten) or is None.
    Returns the per-stamp count of untrusted pixels, whether any pixel was
    non-finite or carried a bad mask bit, and the sorted flat positions of the
    untrusted pixels in ``g``. Bad pixels are sparse, so they are handled as a
    list of positions rather than as dense boolean images.
    """
    k, npix = g.shape
    nonfinite = np.zeros(k, dtype=bool)
    masked = np.zeros(k, dtype=bool)
    pos = None
    nf_rows = np.flatnonzero(~_rows_finite(g))
    if nf_rows.shape[0]:
        p = np.flatnonzero(~np.isfinite(g[nf_rows]))
        rows = nf_rows[p // npix]
        nonfinite[rows] = True
        pos = rows * npix + p % npix
    if gm is not None:
        np.bitwise_and(gm, bits, out=gm)
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


def _gather_edge(img, view, r0, c0, size):
    """Stamps reaching past the image.

    Returns the (k, P) stamps in the image's dtype, holding clipped duplicates
    where they are off the image, the (k, P) bool map of those off-image pixels
    and their number per stamp. With a row view, whole rows are gathered at a
    column start clipped into the image and then shifted into place (in cache).
    """
    H, W = img.shape
    k = r0.shape[0]
    offs = np.arange(size)
    rows = r0[:, None] + offs
    cols = c0[:, None] + offs
    vr = (rows >= 0) & (rows < H)
    vc = (cols >= 0) & (cols < W)
    off = ~(vr[:, :, None] & vc[:, None, :])
    n_off = (size * size - np.count_nonzero(vr, axis=1) * np.count_nonzero(vc, axis=1)).astype(np.int32)
    np.clip(rows, 0, H - 1, out=rows)
    if view is not None:
        rview, row = view
        cs = np.clip(c0, 0, W - size)
        # One extra row run before and after pads the flat buffer for the shift below.
        starts = np.concatenate([[0], (rows * row + cs[:, None]).reshape(-1), [0]])
        buf = rview[starts].view(img.dtype)
        # Shift stamp i left by d_i = c0 - cs pixels as one flat run: the pixels that
        # wrap across a row boundary are exactly the off-image ones, blanked later.
        npix = size * size
        runs = np.ndarray(
            shape=(buf.shape[0] - npix + 1,),
            dtype=np.dtype((np.void, npix * buf.itemsize)),
            buffer=buf,
            strides=(buf.itemsize,),
        )
        g = runs[np.arange(k) * npix + size + np.clip(c0 - cs, -size, size)].view(img.dtype)
    else:
        np.clip(cols, 0, W - 1, out=cols)
        g = img[rows[:, :, None], cols[:, None, :]]
    return g.reshape(k, -1), off.reshape(k, -1), n_off


def _extract(imgs, msks, bits, x, y, size, max_bad_fraction, out=None, norm=None) -> CutoutBatch:
    """Extraction on validated inputs; with ``norm = (name, softening, fill)`` the stamps are normalised.

    Sources whose stamp lies inside the image are processed in cache-sized
    chunks, in raster order of their position (neighbouring stamps share image
    rows, so the image is read from memory about once); each chunk is gathered,
    checked, optionally normalised while in cache, and written to its rows of
    the output.
    """
    n = x.shape[0]
    n_chan = len(imgs)
    H, W = imgs[0].shape
    half = size // 2
    npix = size * size
    if out is None:
        stamps = np.empty((n, n_chan, size, size), dtype=np.float32)
    else:
        if out.shape != (n, n_chan, size, size) or out.dtype != np.float32:
            raise ValueError(
                f"out must be float32 with shape {(n, n_chan, size, size)}, got {out.dtype} {out.shape}."
            )
        stamps = out
    flags = np.zeros(n, dtype=np.int32)
    n_bad = np.zeros((n, n_chan), dtype=np.int32)
    if n == 0:
        return CutoutBatch(
            stamps, flags, n_bad, np.zeros((0, 2), dtype=np.int64), np.zeros((0, 2), dtype=np.float32)
        )

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
    edge = good & ~inside

    nonfinite = np.zeros(n, dtype=bool)
    masked = np.zeros(n, dtype=bool)
    bad_center = ~good
    views = [_row_view(img, size) for img in imgs]
    mviews = [None if m is None else _row_view(m, size) for m in msks]
    mbits = [None if m is None else _mask_bits_for(m.dtype, bits) for m in msks]
    use_mask = [m is not None and mb != 0 for m, mb in zip(msks, mbits)]

    def finish_channel(dest, c, g, nb, nf, mk, pos):
        n_bad[dest, c] = nb
        nonfinite[dest] |= nf
        masked[dest] |= mk
        bad_center[dest] |= np.isnan(g[:, half * size + half])
        if norm is not None:
            _normalize_rows(g, size, size, *norm, nan_rows=nb > 0, bad_pos=pos)
        stamps[dest, c] = g.reshape(-1, size, size)

    idx_in = np.flatnonzero(inside)
    if idx_in.shape[0]:
        key = r0[idx_in] * W + c0[idx_in]
        if idx_in.shape[0] > 1 and not np.all(key[1:] >= key[:-1]):
            idx_in = idx_in[np.argsort(key, kind="stable")]
        # All sources inside and already in raster order: write plain slices.
        in_order = idx_in.shape[0] == n and bool(np.all(idx_in == np.arange(n)))
        step = max(1, _CHUNK_BYTES // (npix * 4))
        for a in range(0, idx_in.shape[0], step):
            idx = idx_in[a : a + step]
            dest = slice(a, a + idx.shape[0]) if in_order else idx
            rr, cc = r0[idx], c0[idx]
            for c in range(n_chan):
                g = _gather(imgs[c], views[c], rr, cc, size)
                if g.dtype != np.float32:
                    g = g.astype(np.float32)
                gm = _gather(msks[c], mviews[c], rr, cc, size) if use_mask[c] else None
                nb, nf, mk, pos = _mark_bad(g, gm, mbits[c])
                finish_channel(dest, c, g, nb, nf, mk, pos)
    idx_edge = np.flatnonzero(edge)
    if idx_edge.shape[0]:
        step = max(1, _CHUNK_BYTES // (npix * 4))
        for a in range(0, idx_edge.shape[0], step):
            idx = idx_edge[a : a + step]
            for c in range(n_chan):
                g, off, n_off = _gather_edge(imgs[c], views[c], r0[idx], c0[idx], size)
                g = g.astype(np.float32)
                gm = _gather_edge(msks[c], mviews[c], r0[idx], c0[idx], size)[0] if use_mask[c] else None
                np.copyto(g, np.float32(0.0), where=off)
                if gm is not None:
                    np.copyto(gm, 0, where=off)
                nb, nf, mk, _ = _mark_bad(g, gm, mbits[c])
                np.copyto(g, np.float32(np.nan), where=off)
                nb += n_off
                finish_channel(idx, c, g, nb, nf, mk, None)
    if not good.all():
        ib = np.flatnonzero(~good)
        if norm is None:
            stamps[ib] = np.nan
        else:
            stamps[ib] = np.float32(norm[2])
        n_bad[ib] = npix
        centers[ib] = 0
        offsets[ib] = 0.0

    flags |= np.where(edge, np.int32(SourceFlag.EDGE), np.int32(0))
    flags |= np.where(nonfinite, np.int32(SourceFlag.NONFINITE), np.int32(0))
    flags |= np.where(masked, np.int32(SourceFlag.MASKED), np.int32(0))
    flags |= np.where(bad_center, np.int32(SourceFlag.BAD_CENTER), np.int32(0))
    flags |= np.where(
        (n_bad > max_bad_fraction * npix).any(axis=1), np.int32(SourceFlag.MOSTLY_BAD), np.int32(0)
    )
    flags |= np.where((n_bad >= npix).any(axis=1), np.int32(SourceFlag.NO_VALID_PIXELS), np.int32(0))
    flags |= np.where(~good, np.int32(SourceFlag.BAD_CENTROID), np.int32(0))
    flags |= np.where(off_image, np.int32(SourceFlag.OFF_IMAGE), np.int32(0))
    flags |= np.where(flags & np.int32(UNSCORABLE), np.int32(SourceFlag.NOT_SCORED), np.int32(0))
    return CutoutBatch(stamps=stamps, flags=flags, n_bad=n_bad, centers=centers, offsets=offsets)


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
    on the image was NaN/inf), ``MASKED`` (a pixel had a bad mask bit),
    ``BAD_CENTER`` (the centre pixel is untrusted in any channel),
    ``MOSTLY_BAD`` (a channel's untrusted fraction > ``max_bad_fraction``),
    ``NO_VALID_PIXELS`` (a channel has no trusted pixel), ``BAD_CENTROID``
    (non-finite x or y: the stamp is all NaN, centre and offset 0), ``OFF_IMAGE``
    (centroid outside ``[-0.5, W - 0.5) x [-0.5, H - 0.5)``; whatever part of
    the stamp overlaps the image is still extracted) and ``NOT_SCORED`` with any
    bit of `UNSCORABLE`.

    The work is index arithmetic and fancy indexing over all sources at once
    (in cache-sized chunks; one index copies a whole stamp row); there is no
    per-source Python loop and no padded copy of the images.

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


def _robust_center_scale(
    flat: np.ndarray, H: int, W: int, nan_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median and sigma (1.4826 MAD, with floors) of each row of ``flat`` (R, H*W) float32.

    ``flat`` holds NaN for untrusted pixels; ``nan_rows`` (R,) marks rows that may hold any.
    """
    R = flat.shape[0]
    if H == W and stats_pixel_grid(H)[0].step > 1:
        gr, gc = stats_pixel_grid(H)
        sub = np.ascontiguousarray(flat.reshape(R, H, W)[:, gr, gc]).reshape(R, -1)
    else:
        sub = flat.copy()
    if nan_rows.any():
        # Only rows with a NaN on the grid need the slower NaN-aware path.
        nan_rows = nan_rows.copy()
        nan_rows[nan_rows] = ~_rows_finite(sub[nan_rows])
    # _row_median reorders rows in place; the MAD below does not depend on the order.
    med, nv = _row_median(sub, nan_rows)
    np.subtract(sub, med[:, None], out=sub)
    np.abs(sub, out=sub)
    mad, _ = _row_median(sub, nan_rows)
    # Rows whose grid has no valid pixel but whose stamp has some use every valid pixel.
    fallback = nv == 0
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
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            cnt = np.count_nonzero(np.isfinite(rows), axis=1)
            mean = np.where(cnt > 0, np.nansum(rows, axis=1) / np.maximum(cnt, 1), 0.0)
            var = np.nansum((rows - mean[:, None]) ** 2, axis=1) / np.maximum(cnt, 1)
            std = np.sqrt(var)
        sigma[weak] = np.where(np.isfinite(std) & (std > 0), std, 1.0).astype(np.float32)
    med = np.where(np.isfinite(med), med, 0.0).astype(np.float32)
    sigma = np.where(np.isfinite(sigma) & (sigma > 0), sigma, 1.0).astype(np.float32)
    return med, sigma


def _normalize_rows(
    flat: np.ndarray,
    H: int,
    W: int,
    norm: str,
    soft: float,
    fill: float,
    nan_rows: np.ndarray | None = None,
    bad_pos: np.ndarray | None = None,
) -> None:
    """Normalise rows (one stamp channel each) of ``flat`` (R, H*W) float32 in place and fill.

    ``nan_rows`` marks the rows that may hold non-finite pixels, all of them NaN;
    when None it is computed here and infinities are turned into NaN first.
    ``bad_pos``, if given, lists the flat positions of all NaN pixels (then the
    fill is a sparse write instead of a scan).
    """
    R = flat.shape[0]
    if R == 0:
        return
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if nan_rows is None:
            nan_rows = ~_rows_finite(flat)
            if nan_rows.any():
                rows = flat[nan_rows]
                np.copyto(rows, np.float32(np.nan), where=np.isinf(rows))
                flat[nan_rows] = rows
        if norm in ("robust_asinh", "robust"):
            med, sigma = _robust_center_scale(flat, H, W, nan_rows)
            scale = 1.0 / (sigma * np.float32(soft if norm == "robust_asinh" else 1.0))
            flat -= med[:, None]
            flat *= scale.astype(np.float32)[:, None]
            if norm == "robust_asinh":
                np.arcsinh(flat, out=flat)
        elif norm == "unit":
            # float64 accumulation: no overflow of the sum of squares.
            norm2 = np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))
            if nan_rows.any():
                rows = flat[nan_rows].astype(np.float64)
                norm2[nan_rows] = np.sqrt(np.nansum(rows * rows, axis=1))
            norm2 = np.where(np.isfinite(norm2) & (norm2 > 0), norm2, 1.0)
            flat *= (1.0 / norm2).astype(np.float32)[:, None]
        if bad_pos is not None and bad_pos.shape[0]:
            flat.reshape(-1)[bad_pos] = np.float32(fill)
        # Fill untrusted pixels; the same check catches any overflow of extreme values.
        bad_rows = ~_rows_finite(flat)
    bi = np.flatnonzero(bad_rows)
    if bi.shape[0] * 4 > R:
        # Many rows to fill: one pass over the chunk beats copying rows out and back.
        np.copyto(flat, np.float32(fill), where=np.isnan(flat))
        # What is still non-finite is an overflow to +-inf.
        bi = bi[~_rows_finite(flat[bi])]
        if bi.shape[0]:
            flat[bi] = np.clip(flat[bi], -_F32_MAX, _F32_MAX)
    elif bi.shape[0]:
        rows = flat[bi]
        np.copyto(rows, np.float32(fill), where=np.isnan(rows))
        np.clip(rows, -_F32_MAX, _F32_MAX, out=rows)
        flat[bi] = rows


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
    Statistics are per stamp and channel, over its finite pixels on the grid of
    `stats_pixel_grid` (every pixel up to 32x32; above, a regular sub-grid
    through the centre pixel with at most 32 pixels per axis): ``median`` and
    ``sigma = 1.4826 * MAD``. If that grid has no finite pixel, all finite
    pixels are used. If ``MAD == 0`` (or undefined), ``sigma`` is the standard
    deviation of all finite pixels, and 1 if that is 0 or undefined; the median
    of an all-bad channel is taken as 0. ``"unit"`` divides by the L2 norm of all
    finite pixels (1 if that is 0). Work is done in cache-sized chunks of stamps.
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


def _finish(stamps: np.ndarray, flags: np.ndarray, contract: InputContract) -> np.ndarray:
    """Flag all-bad channels and normalise ``stamps`` (N, C, S, S) float32 in place."""
    N, C, H, W = stamps.shape
    if N:
        flat = stamps.reshape(N * C, H * W)
        with np.errstate(over="ignore", invalid="ignore"):
            suspect = ~_rows_finite(flat)
        if suspect.any():
            empty = np.zeros(N * C, dtype=bool)
            empty[suspect] = ~np.isfinite(flat[suspect]).any(axis=1)
            empty = empty.reshape(N, C).any(axis=1)
            flags |= np.where(
                empty, np.int32(SourceFlag.NO_VALID_PIXELS | SourceFlag.NOT_SCORED), np.int32(0)
            )
    normalize_stamps(stamps, contract, out=stamps)
    return stamps


def prepare_stamps(
    stamps: np.ndarray,
    contract: InputContract,
    flags: np.ndarray | None = None,
    channel_axis_order: Sequence[str] = CHANNEL_ORDER,
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

    Returns
    -------
    x : `numpy.ndarray`, (N, C', S, S) float32, C-contiguous
        Normalised stamps, C' = ``contract.n_channels``, S = ``contract.stamp_size``.
    flags : `numpy.ndarray`, (N,) int32
        Input flags plus ``RESIZED`` if the stamps were cropped or padded and
        ``NO_VALID_PIXELS | NOT_SCORED`` where a channel is entirely bad.
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
    S = contract.stamp_size
    src = stamps if sel == list(range(C)) else stamps[:, sel]
    if H == S and W == S:
        x = np.empty((N, len(sel), S, S), dtype=np.float32)
        np.copyto(x, src, casting="unsafe")
    else:
        x = np.full((N, len(sel), S, S), np.nan, dtype=np.float32)
        sr, dr = _axis_map(H, S)
        sc, dc = _axis_map(W, S)
        x[:, :, dr, dc] = src[:, :, sr, sc]
        flags |= np.int32(SourceFlag.RESIZED)
    return _finish(x, flags, contract), flags


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
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Stream prepared stamps in batches so the full (N, C, S, S) array never exists.

    Parameters are those of `prepare_cutouts`, plus ``batch_size`` (sources per
    batch, >= 1). Inputs are validated before the first batch is yielded.

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
    return _iter_batches(imgs, msks, x, y, contract, int(batch_size), bad_mask_bits, max_bad_fraction)


def _iter_batches(imgs, msks, x, y, contract, batch_size, bits, max_bad_fraction):
    n = x.shape[0]
    norm = _norm_params(contract)
    for a in range(0, n, batch_size):
        sl = slice(a, min(n, a + batch_size))
        batch = _extract(imgs, msks, bits, x[sl], y[sl], contract.stamp_size, max_bad_fraction, norm=norm)
        yield sl, batch.stamps, batch.flags
