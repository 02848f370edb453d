# This file is part of meas_rbnet.
"""Decoding of alert cutouts: (gzip-compressed) FITS bytes to a 2-d array.

Alert cutouts are tiny FITS files: ZTF's are gzip-compressed single-HDU images
(63 x 63 float32), Rubin's are uncompressed ``CCDData`` files whose primary HDU
holds the image in nJy (followed by variance and mask extensions we do not
need). `read_fits_image` reads such files with a lean parser of its own: find
the header's ``END`` card, read ``BITPIX``/``NAXISn``/``BSCALE``/``BZERO``/
``BLANK``/``BUNIT``, and view the big-endian data with `numpy.frombuffer`.
Anything it does not handle (tile-compressed images, random groups, a header it
cannot parse) goes to `astropy.io.fits`, so the lean path changes speed, not
the pixels (scaled integer data are scaled in float64 here, so they may differ
from astropy's float32 in the last bit). ``benchmarks/bench_alerts.py`` measures both on the same cutouts and
writes the figures to ``benchmarks/results/alerts.md``: the lean reader wins by
an order of magnitude on a ZTF cutout (where gzip decompression is most of the
remaining cost) and by two orders on a Rubin one.
"""

from __future__ import annotations

__all__ = ["CutoutError", "decode_cutout", "read_fits_image", "read_fits_image_astropy"]

import io
import math
import zlib

import numpy as np

_BLOCK = 2880
_CARD = 80
_GZIP_MAGIC = b"\x1f\x8b"
_END_CARD = b"END" + b" " * 77
#: Optional keywords the lean reader looks for (the mandatory ones sit at fixed cards).
_OPTIONAL = {
    k.ljust(8).encode() + b"=": k
    for k in ("BSCALE", "BZERO", "BLANK", "BUNIT", "ZIMAGE", "GROUPS", "PCOUNT", "GCOUNT")
}
_DTYPES = {
    8: np.dtype("u1"),
    16: np.dtype(">i2"),
    32: np.dtype(">i4"),
    64: np.dtype(">i8"),
    -32: np.dtype(">f4"),
    -64: np.dtype(">f8"),
}


class CutoutError(ValueError):
    """A cutout's bytes are not a readable (gzip-compressed) FITS image."""


class _Unsupported(Exception):
    """The lean reader does not handle this file; astropy should."""


def _value(raw: bytes):
    """Python value of a FITS card value field (string, logical, int or float)."""
    text = raw.decode("ascii", "replace").strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and text[end + 1 : end + 2] == "'":  # '' is an escaped quote
            end = text.find("'", end + 2)
        return text[1:end].replace("''", "'").rstrip() if end != -1 else text[1:].rstrip()
    text = text.split("/", 1)[0].strip()
    if text in ("T", "F"):
        return text == "T"
    try:
        return int(text)
    except ValueError:
        return float(text.replace("D", "E"))


def _find_card(buf: bytes, key: bytes, start: int, end: int) -> int:
    """Offset of the card starting with ``key`` in ``buf[start:end]`` (card-aligned), or -1."""
    pos = buf.find(key, start, end)
    while pos != -1 and (pos - start) % _CARD:
        pos = buf.find(key, pos + 1, end)
    return pos


def _header(buf: bytes, start: int) -> tuple[dict, int]:
    """Keywords of the header starting at ``start`` and the offset of its data.

    The mandatory keywords are read where the FITS standard puts them (card 0
    ``SIMPLE`` or ``XTENSION``, card 1 ``BITPIX``, card 2 ``NAXIS``, then
    ``NAXISn``); of the other cards only the keyword is looked at, and only
    the few the reader needs are parsed.
    """
    end = _find_card(buf, _END_CARD, start, len(buf))
    if end == -1:
        raise CutoutError("no END card: not a FITS header or a truncated one")
    keys = {}
    first = buf[start : start + 8]
    if first == b"XTENSION":
        keys["XTENSION"] = _value(buf[start + 10 : start + _CARD])
    elif first != b"SIMPLE  ":
        raise _Unsupported
    if buf[start + 80 : start + 88] != b"BITPIX  " or buf[start + 160 : start + 168] != b"NAXIS   ":
        raise _Unsupported  # not in the standard's order: leave it to astropy
    keys["BITPIX"] = int(buf[start + 90 : start + 110])
    naxis = int(buf[start + 170 : start + 190])
    keys["NAXIS"] = naxis
    for i in range(1, naxis + 1):
        card = start + (2 + i) * _CARD
        if buf[card : card + 8] != f"NAXIS{i}".ljust(8).encode():
            raise _Unsupported
        keys[f"NAXIS{i}"] = int(buf[card + 10 : card + 30])
    for pos in range(start + (3 + naxis) * _CARD, end, _CARD):
        name = _OPTIONAL.get(buf[pos : pos + 9])
        if name is not None and name not in keys:
            keys[name] = _value(buf[pos + 10 : pos + _CARD])
    data = start + -(-(end + _CARD - start) // _BLOCK) * _BLOCK
    if data > len(buf) and naxis:
        raise CutoutError("the FITS file ends inside a header")
    return keys, data


def read_fits_image(data: bytes) -> tuple[np.ndarray, str | None]:
    """The first 2-d image of an uncompressed FITS file.

    Parameters
    ----------
    data : `bytes`
        The whole FITS file.

    Returns
    -------
    image : `numpy.ndarray`, (H, W)
        Row ``y``, column ``x`` as astropy reads it. Floating-point data are a
        read-only big-endian view of ``data``; integer data with ``BSCALE``/
        ``BZERO`` are scaled to float64 and ``BLANK`` pixels become NaN.
    unit : `str` or None
        ``BUNIT`` of the image's header, if any.

    Raises
    ------
    CutoutError
        If no 2-d image can be read.
    """
    buf = bytes(data)
    if buf[:9] != b"SIMPLE  =":
        raise CutoutError("not a FITS file (no SIMPLE card)")
    start = 0
    try:
        while start < len(buf):
            keys, off = _header(buf, start)
            if keys.get("ZIMAGE") or keys.get("GROUPS"):
                raise _Unsupported
            bitpix = keys.get("BITPIX")
            if bitpix not in _DTYPES:
                raise CutoutError(f"BITPIX {bitpix!r} is not a FITS data type")
            naxis = int(keys.get("NAXIS", 0))
            shape = [int(keys.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1)]
            size = math.prod(shape) if shape else 0
            xtension = keys.get("XTENSION")
            if size and (xtension is None or xtension == "IMAGE"):
                return _finish(buf, off, shape, bitpix, keys), keys.get("BUNIT")
            # No image here (empty primary HDU or a table): skip to the next HDU.
            nbytes = abs(bitpix) // 8 * int(keys.get("GCOUNT", 1)) * (int(keys.get("PCOUNT", 0)) + size)
            start = off + -(-nbytes // _BLOCK) * _BLOCK
    except (_Unsupported, ValueError, TypeError, KeyError) as err:
        if isinstance(err, CutoutError):
            raise
        return read_fits_image_astropy(data)
    raise CutoutError("the FITS file holds no image")


def _finish(buf, off: int, shape: list[int], bitpix: int, keys: dict) -> np.ndarray:
    dt = _DTYPES[bitpix]
    size = math.prod(shape)
    if off + size * dt.itemsize > len(buf):
        raise CutoutError(f"the FITS data are truncated ({len(buf) - off} of {size * dt.itemsize} bytes)")
    arr = np.frombuffer(buf, dtype=dt, count=size, offset=off).reshape(shape)
    bscale = float(keys.get("BSCALE", 1.0))
    bzero = float(keys.get("BZERO", 0.0))
    blank = keys.get("BLANK") if bitpix > 0 else None
    if bscale != 1.0 or bzero != 0.0 or blank is not None:
        out = arr.astype(np.float64) * bscale + bzero if bitpix > 0 else arr * bscale + bzero
        if blank is not None:
            out[arr == blank] = np.nan
        arr = out
    return arr


def read_fits_image_astropy(data: bytes) -> tuple[np.ndarray, str | None]:
    """As `read_fits_image`, through `astropy.io.fits` (the reference and the fallback)."""
    from astropy.io import fits

    try:
        with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdus:
            for hdu in hdus:
                if hdu.is_image and hdu.data is not None and hdu.data.size:
                    return np.asarray(hdu.data), hdu.header.get("BUNIT")
    except Exception as err:  # astropy raises many types (OSError, ValueError, VerifyError...)
        raise CutoutError(f"astropy could not read it: {err}") from None
    raise CutoutError("the FITS file holds no image")


def decode_cutout(data: bytes, lean: bool = True) -> tuple[np.ndarray, str | None]:
    """A cutout's pixels from its alert bytes (FITS, gzip-compressed or not).

    Parameters
    ----------
    data : `bytes`
        ``stampData`` of a ZTF cutout or a Rubin ``cutout*`` field.
    lean : `bool`
        Use the lean reader (`read_fits_image`); False reads through astropy.

    Returns
    -------
    image : `numpy.ndarray`, (H, W) or other shape
        Pixels in the survey's units (ZTF: DN; Rubin: nJy), NaN kept. A shape
        other than 2-d is returned as found (the caller flags it).
    unit : `str` or None
        ``BUNIT``, if the header has one.

    Raises
    ------
    CutoutError
        If the bytes are not a (gzip-compressed) FITS image.
    """
    if data[:2] == _GZIP_MAGIC:
        try:
            # wbits 31: a gzip stream; decompressobj tolerates trailing bytes after the member.
            data = zlib.decompressobj(31).decompress(data)
        except zlib.error as err:
            raise CutoutError(f"bad gzip stream: {err}") from None
    return read_fits_image(data) if lean else read_fits_image_astropy(data)
