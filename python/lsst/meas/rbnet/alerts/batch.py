# This file is part of meas_rbnet.
"""Batches of alerts: three cutout stacks in the survey's size and units, and a table.

`iter_alert_batches` is the reader's public entry point. It streams: each
batch holds at most ``batch_size`` alerts, whose cutouts are decoded straight
into the batch's preallocated stack as they are read (no list of arrays, no
later concatenation), so memory is bounded by the batch size however many
alerts the inputs hold. A batch holds one survey's alerts (a change of survey
between inputs starts a new batch); rows of alerts that could not be decoded
at all go into whichever batch is open, so the rows stay in input order.
"""

from __future__ import annotations

__all__ = ["AlertBatch", "iter_alert_batches", "batches_from_raw", "DEFAULT_ALERT_BATCH_SIZE"]

import dataclasses
import os
from collections.abc import Iterable, Iterator

import numpy as np
from astropy.table import Table

from ..constants import CHANNEL_ORDER
from .fits import CutoutError, decode_cutout
from .flags import RECORD_PROBLEMS, AlertFlag
from .surveys import RawAlert, SurveySpec, survey_spec

#: Default number of alerts per batch (ZTF: 1024 x 3 x 63 x 63 float32 = 49 MB of stacks).
DEFAULT_ALERT_BATCH_SIZE: int = 1024

_SCIENCE, _TEMPLATE, _DIFFERENCE = (CHANNEL_ORDER.index(c) for c in ("science", "template", "difference"))


@dataclasses.dataclass
class AlertBatch:
    """Up to ``batch_size`` alerts of one survey, in input order.

    Attributes
    ----------
    stamps : `numpy.ndarray`, (N, 3, S, S) float32
        The cutouts in `lsst.meas.rbnet.constants.CHANNEL_ORDER` (difference,
        science, template), S the survey's cutout size (`SurveySpec.cutout_size`),
        pixels in the survey's units (`unit`); NaN where the survey had no data,
        where a cutout was padded, and for every pixel of an unusable cutout.
        Shape (N, 3, 0, 0) for a batch of undecodable alerts only.
    cutout_ok : `numpy.ndarray`, (N, 3) bool
        Whether each cutout (same channel order) was present and decoded.
    table : `astropy.table.Table`
        One row per alert: ``alertId`` (int64: ZTF ``candid``, Rubin
        ``diaSourceId``; -1 if unknown), ``objectId`` (str: ZTF ``objectId``,
        Rubin ``diaObjectId``; empty if unknown), ``survey``, ``source`` (the
        input file, ``archive:member`` inside a tar file), ``flags``
        (int32 `AlertFlag` bits), ``cutoutHeight`` / ``cutoutWidth`` (the
        difference cutout as found, 0 if unusable), and the survey's own scores
        as float32 ``<survey>_<field>`` columns (`SurveySpec.score_columns`; NaN
        when absent).
    survey : `str`
        Survey of the batch's decoded alerts (empty if none was decoded).
    unit : `str`
        Pixel unit of the stacks: the cutouts' ``BUNIT`` where they have one,
        else the survey's (`SurveySpec.unit`).
    """

    stamps: np.ndarray
    cutout_ok: np.ndarray
    table: Table
    survey: str
    unit: str

    def __len__(self) -> int:
        return len(self.table)

    @property
    def science(self) -> np.ndarray:
        """Science cutouts, (N, S, S) float32 (a view of `stamps`)."""
        return self.stamps[:, _SCIENCE]

    @property
    def template(self) -> np.ndarray:
        """Template (reference) cutouts, (N, S, S) float32 (a view of `stamps`)."""
        return self.stamps[:, _TEMPLATE]

    @property
    def difference(self) -> np.ndarray:
        """Difference cutouts, (N, S, S) float32 (a view of `stamps`)."""
        return self.stamps[:, _DIFFERENCE]

    @property
    def flags(self) -> np.ndarray:
        """`AlertFlag` bits, (N,) int32."""
        return np.asarray(self.table["flags"])


def _place_axis(n_in: int, size: int, pos) -> tuple[slice, slice]:
    """Source and destination slices of one axis of a cutout placed in a ``size`` stamp.

    Larger cutouts are cropped keeping pixel ``n_in // 2`` at ``size // 2`` (the
    centre convention of `lsst.meas.rbnet.cutouts`). Smaller ones were cut at an
    image edge: if the source's position on its image is within half a stamp of
    the image's low edge, the missing pixels are on the low side; otherwise (or
    if the position is unknown) on the high side.
    """
    if n_in >= size:
        a = n_in // 2 - size // 2
        return slice(a, a + size), slice(0, size)
    try:
        low = pos is not None and float(pos) < size // 2
    except (TypeError, ValueError):
        low = False
    return slice(0, n_in), (slice(size - n_in, size) if low else slice(0, n_in))


class _Builder:
    """Decodes alerts into the arrays of one batch."""

    def __init__(self, spec: SurveySpec | None, capacity: int, lean: bool):
        self.capacity = capacity
        self.lean = lean
        self.spec = None
        self.n = 0
        self.unit = None
        self.stamps = np.empty((capacity, 3, 0, 0), dtype=np.float32)
        self.ok = np.zeros((capacity, 3), dtype=bool)
        self.padded = np.zeros((capacity, 3), dtype=bool)
        self.flags = np.zeros(capacity, dtype=np.int32)
        self.hw = np.zeros((capacity, 2), dtype=np.int16)
        self.ids = np.full(capacity, -1, dtype=np.int64)
        self.object_ids: list[str] = []
        self.surveys: list[str] = []
        self.sources: list[str] = []
        self.scores: list[dict] = []
        if spec is not None:
            self.set_spec(spec)

    def set_spec(self, spec: SurveySpec) -> None:
        self.spec = spec
        S = spec.cutout_size
        self.stamps = np.empty((self.capacity, 3, S, S), dtype=np.float32)
        self.stamps[: self.n] = np.nan  # rows added before were undecodable

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    def add(self, raw: RawAlert) -> None:
        i = self.n
        self.n += 1
        flags = raw.flags
        self.ids[i] = raw.alert_id
        self.object_ids.append(raw.object_id)
        self.surveys.append(raw.survey)
        self.sources.append(raw.source)
        self.scores.append(raw.scores)
        if flags & RECORD_PROBLEMS or self.spec is None:
            self.stamps[i] = np.nan
            self.flags[i] = flags
            return
        S = self.spec.cutout_size
        for c, data in enumerate(raw.cutouts):
            dst = self.stamps[i, c]
            if data is None:
                flags |= AlertFlag.MISSING_CUTOUT
                dst[...] = np.nan
                continue
            try:
                arr, unit = decode_cutout(data, self.lean)
            except CutoutError:
                flags |= AlertFlag.BAD_CUTOUT
                dst[...] = np.nan
                continue
            if arr.ndim != 2:
                arr = arr.reshape([d for d in arr.shape if d != 1] or [1])
            if arr.ndim != 2 or min(arr.shape) < 3:
                flags |= AlertFlag.WRONG_SHAPE
                dst[...] = np.nan
                continue
            if unit and self.unit is None:
                self.unit = unit
            h, w = arr.shape
            if c == _DIFFERENCE:
                self.hw[i] = (h, w)
            if h == S and w == S:
                np.copyto(dst, arr, casting="unsafe")
            else:
                sr, dr = _place_axis(h, S, raw.position[1])
                sc, dc = _place_axis(w, S, raw.position[0])
                if h < S or w < S:
                    flags |= AlertFlag.PADDED
                    dst[...] = np.nan
                    self.padded[i, c] = True
                    if not np.isfinite(arr).all():
                        flags |= AlertFlag.NAN_PIXELS
                if h > S or w > S:
                    flags |= AlertFlag.CROPPED
                dst[dr, dc] = arr[sr, sc]
            self.ok[i, c] = True
        self.flags[i] = flags

    def finish(self) -> AlertBatch:
        n = self.n
        stamps = self.stamps[:n]
        ok = self.ok[:n]
        flags = self.flags[:n]
        if stamps.size:
            # NaN anywhere in a cutout makes its sum NaN (inf too): one pass, no (N, 3, S, S) mask.
            with np.errstate(invalid="ignore", over="ignore"):
                sums = stamps.sum(axis=(2, 3), dtype=np.float64)
            nan = ok & ~self.padded[:n] & ~np.isfinite(sums)
            flags |= np.where(nan.any(axis=1), np.int32(AlertFlag.NAN_PIXELS), np.int32(0))
        columns = {
            "alertId": self.ids[:n],
            "objectId": np.asarray(self.object_ids, dtype=str) if n else np.zeros(0, dtype="U1"),
            "survey": np.asarray(self.surveys, dtype=str) if n else np.zeros(0, dtype="U1"),
            "source": np.asarray(self.sources, dtype=str) if n else np.zeros(0, dtype="U1"),
            "flags": flags,
            "cutoutHeight": self.hw[:n, 0],
            "cutoutWidth": self.hw[:n, 1],
        }
        if self.spec is not None:
            for field, column in zip(self.spec.score_fields, self.spec.score_columns):
                columns[column] = np.array([s.get(field, np.nan) for s in self.scores], dtype=np.float32)
        table = Table(columns, copy=False)
        survey = "" if self.spec is None else self.spec.name
        unit = self.unit or ("" if self.spec is None else self.spec.unit)
        return AlertBatch(stamps=stamps, cutout_ok=ok, table=table, survey=survey, unit=unit)


def _check_positive(name: str, value, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < (0 if allow_none else 1)
    ):
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_none else 'positive'} integer, got {value!r}."
        )
    return int(value)


def batches_from_raw(
    raws: Iterable[RawAlert],
    batch_size: int = DEFAULT_ALERT_BATCH_SIZE,
    limit: int | None = None,
    lean_fits: bool = True,
    cutout_sizes: dict[str, int] | None = None,
) -> Iterator[AlertBatch]:
    """Group `RawAlert` rows into `AlertBatch` objects (see `iter_alert_batches`)."""
    batch_size = _check_positive("batch_size", batch_size)
    limit = _check_positive("limit", limit, allow_none=True)
    sizes = dict(cutout_sizes or {})
    specs: dict[str, SurveySpec] = {}

    def spec_of(raw: RawAlert) -> SurveySpec | None:
        if not raw.survey:
            return None
        spec = specs.get(raw.survey)
        if spec is None:
            spec = survey_spec(raw.survey, "ztf")
            if raw.survey in sizes:
                spec = dataclasses.replace(spec, cutout_size=int(sizes[raw.survey]))
            specs[raw.survey] = spec
        return spec

    builder: _Builder | None = None
    n = 0
    for raw in raws:
        spec = spec_of(raw)
        for _ in range(raw.count):
            if limit is not None and n >= limit:
                break
            if builder is None:
                builder = _Builder(spec, batch_size, lean_fits)
            elif spec is not None and builder.spec is not None and spec.name != builder.spec.name:
                yield builder.finish()
                builder = _Builder(spec, batch_size, lean_fits)
            elif spec is not None and builder.spec is None:
                builder.set_spec(spec)
            builder.add(raw)
            n += 1
            if builder.full:
                yield builder.finish()
                builder = None
        if limit is not None and n >= limit:
            break
    if builder is not None and builder.n:
        yield builder.finish()


def iter_alert_batches(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    batch_size: int = DEFAULT_ALERT_BATCH_SIZE,
    limit: int | None = None,
    *,
    lean_fits: bool = True,
    cutout_sizes: dict[str, int] | None = None,
) -> Iterator[AlertBatch]:
    """Read alert files in batches: cutout stacks in the survey's size and units, and a table.

    Parameters
    ----------
    paths : path or iterable of paths
        Files (Avro container files, Confluent wire-format messages, Parquet
        exports, tar archives of these), directories and glob patterns, mixed;
        see `lsst.meas.rbnet.alerts.sources`.
    batch_size : `int`
        Largest number of alerts per batch; bounds the memory used.
    limit : `int`, optional
        Stop after this many alerts (rows).
    lean_fits : `bool`
        Decode FITS cutouts with the lean reader (True) or astropy (False); the
        pixels are the same.
    cutout_sizes : `dict` [`str`, `int`], optional
        Cutout size per survey name, instead of `SurveySpec.cutout_size` (e.g.
        ``{"rubin": 93}`` to keep the larger Rubin cutouts whole).

    Yields
    ------
    batch : `AlertBatch`

    Raises
    ------
    FileNotFoundError
        If a path does not exist or a pattern matches nothing (before anything is read).
    """
    from .sources import expand_inputs, iter_raw_alerts

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    files = expand_inputs(paths)  # fails on a missing input before anything is read
    raws = iter_raw_alerts(paths, batch_size=batch_size, files=files)
    yield from batches_from_raw(raws, batch_size, limit, lean_fits, cutout_sizes)
