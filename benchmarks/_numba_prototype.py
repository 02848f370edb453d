# This file is part of meas_rbnet.
"""Compiled-kernel prototype of the cutouts (issue 12, item 3), measured by bench_cutouts.py; NOT adopted.

Not part of the package and not a dependency: it needs numba (``pip install numba``) and is
imported only by ``benchmarks/bench_cutouts.py``, which times it beside the package's numpy code
and the memory floors in the same run and says why it was not adopted.

What it is: one numba kernel per stamp and channel, parallel over stamps (``prange``), that
gathers the stamp's rows from the image, sets untrusted pixels (off the image, non-finite, a bad
mask bit) to NaN, counts them and records the flag inputs, then (``mode=1``) takes the median
and MAD on the statistics grid (`stats_pixel_grid`) and writes ``(x - median) / (a * sigma)``
into the preallocated float32 output. The arcsinh runs afterwards as numpy's own vectorised
``np.arcsinh`` over the output (``asinh_in_kernel=True`` runs libm's scalar ``asinhf`` in the
kernel instead: several times slower, and it differs from numpy's in the last bit of many
pixels; bench_cutouts.py measures both), then the untrusted pixels get the fill value.

Medians without a sort: each grid value becomes an int32 key that orders like the float
(``bits ^ ((bits >> 31) & 0x7FFFFFFF)``) and the k-th key is found by bisection on the key with
a vectorised count per step (``_kth``): a few tens of passes over at most 1024 values that the
compiler turns into SIMD compares, where a Hoare quickselect (the first try) branches on every
element.

What it lacks (none of these occurs in the benchmark's data, where its output is checked to be
bit-identical to the package's): float64 / integer / non-native-endian / strided images (it
takes C-contiguous float32 images and int32 masks), the standard-deviation fallback when the MAD
is 0, the all-pixel fallback when the grid holds no trusted pixel, the exact rescaling of
denormal stamps and the clipping of overflows, and the "robust", "unit" and "none"
normalisations.
"""

from __future__ import annotations

__all__ = ["extract", "prepare", "stamp_kernel"]

import numba
import numpy as np
from lsst.meas.rbnet import cutouts
from lsst.meas.rbnet.flags import UNSCORABLE, SourceFlag
from numba import prange

_NAN = np.float32(np.nan)
_EXP = np.uint32(0x7F800000)
_LOW = np.int32(-2147483648)


@numba.njit(nogil=True, boundscheck=False, inline="always", cache=True)
def _kth(keys, m, k):
    """The k-th smallest (0-based) of int32 ``keys[:m]``: bisection on the key, vectorised counts."""
    kmin = keys[0]
    kmax = keys[0]
    for j in range(1, m):
        v = keys[j]
        kmin = min(kmin, v)
        kmax = max(kmax, v)
    lo = np.int64(kmin) - 1  # count(keys <= lo) < k + 1
    hi = np.int64(kmax)  # count(keys <= hi) >= k + 1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        t = np.int32(mid)
        c = 0
        for j in range(m):
            c += keys[j] <= t
        if c == k + 1:
            # The answer is the largest key <= t.
            best = kmin
            for j in range(m):
                v = keys[j]
                best = max(best, v if v <= t else kmin)
            return best
        if c == k:
            # The answer is the smallest key > t.
            best = kmax
            for j in range(m):
                v = keys[j]
                best = min(best, v if v > t else kmax)
            return best
        if c >= k + 1:
            hi = mid
        else:
            lo = mid
    return np.int32(hi)


@numba.njit(nogil=True, boundscheck=False, inline="always", cache=True)
def _middle_keys(keys, m):
    """Keys of the lower and upper middle values of ``keys[:m]`` (the same key twice for odd m)."""
    h = m // 2
    up = _kth(keys, m, h)
    if m % 2 == 1:
        return up, up
    c = 0
    low = _LOW
    for j in range(m):
        v = keys[j]
        c += v < up
        low = max(low, v if v < up else _LOW)
    return (low, up) if c >= h else (up, up)


@numba.njit(nogil=True, boundscheck=False, inline="always", cache=True)
def _flip(q):
    # Self-inverse map between float32 bits and keys that order like the floats.
    return q ^ ((q >> 31) & np.int32(0x7FFFFFFF))


@numba.njit(nogil=True, boundscheck=False, inline="always", cache=True)
def _median(buf, kb, m, is_key, tmp):
    lo, up = _middle_keys(kb, m)
    tmp[0] = _flip(lo) if is_key else lo
    tmp[1] = _flip(up) if is_key else up
    tf = tmp.view(np.float32)
    if m % 2 == 1:
        return tf[1]
    return np.float32(0.5) * (tf[0] + tf[1])


@numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
def stamp_kernel(
    img, imgu, msk, mbits, order, r0, c0, size, out, ch, nbad, nonfinite, masked, bad_center,
    g0, gstep, soft, mode, asinh_in_kernel,
):  # fmt: skip
    """Stamps ``order`` of channel ``ch``: gather, mark, count; with ``mode=1`` also normalise."""
    H, W = img.shape
    n = order.shape[0]
    ng = (size - g0 + gstep - 1) // gstep
    half = size // 2
    for t in prange(n):
        buf = np.empty(ng * ng, np.float32)
        kb = buf.view(np.int32)
        tmp = np.empty(2, np.int32)
        i = order[t]
        ri = r0[i]
        ci = c0[i]
        a = max(0, -ci)
        b = min(size, W - ci)
        cnt = 0
        anynf = False
        anymk = False
        o = out[i, ch]
        for r in range(size):
            rr = ri + r
            orow = o[r]
            if rr < 0 or rr >= H or a >= b:
                for c in range(size):
                    orow[c] = _NAN
                cnt += size
                continue
            for c in range(a):
                orow[c] = _NAN
            for c in range(b, size):
                orow[c] = _NAN
            cnt += size - (b - a)
            irow = img[rr, ci + a : ci + b]
            urow = imgu[rr, ci + a : ci + b]
            mrow = msk[rr, ci + a : ci + b]
            orun = orow[a:b]
            # Copy the run, and learn whether it holds any exponent-all-ones value (inf/NaN) or
            # bad mask bit with integer reductions (they vectorise; a float sum would not).
            ex = np.uint32(0)
            macc = mbits & 0
            for c in range(b - a):
                orun[c] = irow[c]
                ex = max(ex, urow[c] & _EXP)
                macc |= mrow[c]
            if ex == _EXP or (macc & mbits) != 0:
                for c in range(b - a):
                    bad = False
                    if (urow[c] & _EXP) == _EXP:
                        bad = True
                        anynf = True
                    if (mrow[c] & mbits) != 0:
                        bad = True
                        anymk = True
                    if bad:
                        orun[c] = _NAN
                        cnt += 1
        nbad[i, ch] = cnt
        nonfinite[i, ch] = anynf
        masked[i, ch] = anymk
        bad_center[i, ch] = np.isnan(o[half, half])
        if mode == 0:
            continue
        m = 0
        for r in range(g0, size, gstep):
            orow = o[r]
            for c in range(g0, size, gstep):
                v = orow[c]
                if not np.isnan(v):
                    buf[m] = v
                    m += 1
        med = np.float32(0)
        sig = np.float32(1)
        if m > 0:
            for j in range(m):
                kb[j] = _flip(kb[j])
            med = _median(buf, kb, m, True, tmp)
            for j in range(m):
                kb[j] = _flip(kb[j])
            for j in range(m):
                buf[j] = abs(buf[j] - med)
            # Non-negative floats order like their bits: no key map needed.
            mad = _median(buf, kb, m, False, tmp)
            sig = np.float32(1.4826) * mad
            if not (sig > 0 and sig < np.inf):
                sig = np.float32(1)  # the package falls back to the standard deviation here
        scale = np.float32(1) / (sig * soft)
        for r in range(size):
            orow = o[r]
            for c in range(size):
                orow[c] = (orow[c] - med) * scale
        if asinh_in_kernel:
            for r in range(size):
                orow = o[r]
                for c in range(size):
                    orow[c] = np.arcsinh(orow[c])


@numba.njit(parallel=True, nogil=True, boundscheck=False, cache=True)
def _fill(out, rows, fill):
    """Replace NaN by ``fill`` in stamps ``rows`` (those with an untrusted pixel) of ``out``."""
    f = np.float32(fill)
    for t in prange(rows.shape[0]):
        s = out[rows[t]].reshape(-1)
        for j in range(s.shape[0]):
            v = s[j]
            s[j] = f if np.isnan(v) else v


def _run(images, masks, bits, x, y, size, out, norm, asinh_in_kernel=False):
    """Stamps of C float32 images (int32 masks) as `extract_cutouts` / `prepare_cutouts` make them."""
    n, n_chan = len(x), len(images)
    src = cutouts._locate(np.asarray(x, np.float64), np.asarray(y, np.float64), size, images[0].shape)
    mbits = cutouts._channel_mask_bits(masks, bits)
    stamps = np.empty((n, n_chan, size, size), np.float32) if out is None else out
    nbad = np.zeros((n, n_chan), np.int32)
    nonfinite = np.zeros((n, n_chan), np.bool_)
    masked = np.zeros((n, n_chan), np.bool_)
    bad_center = np.zeros((n, n_chan), np.bool_)
    W = images[0].shape[1]
    ov = np.flatnonzero(src.overlap)
    order = ov[np.argsort(src.r0[ov] * W + src.c0[ov], kind="stable")]
    grid = cutouts.stats_pixel_grid(size)[0]
    soft = np.float32(3.0 if norm is None else norm[1])
    for c in range(n_chan):
        stamp_kernel(
            images[c], images[c].view(np.uint32), masks[c], mbits[c], order, src.r0, src.c0, size, stamps, c,
            nbad, nonfinite, masked, bad_center, grid.start, grid.step, soft, 0 if norm is None else 1,
            asinh_in_kernel,
        )  # fmt: skip
    off = np.flatnonzero(~src.overlap)
    nbad[off] = size * size
    bad_center[off] = True
    if norm is not None:
        if not asinh_in_kernel:
            np.arcsinh(stamps, out=stamps)
        _fill(stamps, np.flatnonzero((nbad > 0).any(axis=1) & src.overlap), norm[2])
    if off.shape[0]:
        # Nothing was gathered for these (non-finite centroids, stamps wholly off the image).
        stamps[off] = np.nan if norm is None else np.float32(norm[2])
    npix = size * size
    flags = np.zeros(n, np.int32)
    for bit, cond in (
        (SourceFlag.EDGE, src.edge),
        (SourceFlag.NONFINITE, nonfinite.any(axis=1)),
        (SourceFlag.MASKED, masked.any(axis=1)),
        (SourceFlag.BAD_CENTER, bad_center.any(axis=1)),
        (SourceFlag.MOSTLY_BAD, (nbad > 0.5 * npix).any(axis=1)),
        (SourceFlag.NO_VALID_PIXELS, (nbad >= npix).any(axis=1)),
        (SourceFlag.BAD_CENTROID, ~src.good),
        (SourceFlag.OFF_IMAGE, src.off_image),
    ):
        flags |= np.where(cond, np.int32(bit), np.int32(0))
    flags |= np.where(flags & np.int32(UNSCORABLE), np.int32(SourceFlag.NOT_SCORED), np.int32(0))
    return stamps, flags, nbad


def extract(images, masks, bits, x, y, size, out=None):
    """Raw stamps (untrusted pixels NaN), flags and counts, as `extract_cutouts`."""
    return _run(images, masks, bits, x, y, size, out, None)


def prepare(images, masks, bits, x, y, size, softening, fill, out=None, asinh_in_kernel=False):
    """Network input and flags, as `prepare_cutouts` with the default ``robust_asinh`` contract."""
    stamps, flags, _ = _run(
        images, masks, bits, x, y, size, out, ("robust_asinh", softening, fill), asinh_in_kernel
    )
    return stamps, flags
