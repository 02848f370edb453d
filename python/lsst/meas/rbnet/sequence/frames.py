# This file is part of meas_rbnet.
"""Frames of the sequence model from the per-visit cutouts and source tables, as arrays.

`gather_frames` joins the ``dia_source_cutouts`` tables the reliability task writes
(``doWriteCutouts``) with their source tables, one row per source, and cuts each
stamp's centre into a frame (`frames_from_stamps`); `sequence_order` sorts rows into
per-object sequences (time order, then source id). No Butler: tables in, arrays out.
"""

from __future__ import annotations

__all__ = ["SourceFrames", "frames_from_stamps", "gather_frames", "sequence_order"]

import collections
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import astropy.table
import numpy as np

from ..constants import CHANNEL_ORDER
from ..flags import UNSCORABLE, SourceFlag
from ..tables import require_columns, source_table_from_any


@dataclasses.dataclass
class SourceFrames:
    """The sources of many (visit, detector) datasets, one row each, with their frames.

    Attributes
    ----------
    source_id : `numpy.ndarray`
        ``(N,)`` int64 source ids.
    object_id : `numpy.ndarray`
        ``(N,)`` int64 ``diaObjectId``, 0 where there is none.
    ra, dec : `numpy.ndarray`
        ``(N,)`` float64 positions (degrees).
    mjd : `numpy.ndarray`
        ``(N,)`` float64 times (MJD, TAI); NaN where unknown.
    visit : `numpy.ndarray`
        ``(N,)`` int64 visit ids (-1 where unknown).
    source_flags : `numpy.ndarray`
        ``(N,)`` int32 `~lsst.meas.rbnet.flags.SourceFlag` bits of the cutouts.
    triplet_score : `numpy.ndarray`
        ``(N,)`` float32 single-visit reliability (NaN where not scored or absent).
    frames : `numpy.ndarray`
        ``(N, C, F, F)`` float32 raw frames (pixel values; NaN where untrusted).
    channels : `tuple` [`str`, ...]
        Channel names of ``frames``.
    dataset : `numpy.ndarray`
        ``(N,)`` int32 index of the input dataset each row came from.
    score_versions : `tuple` [`str`, ...]
        Distinct ``reliabilityVersion`` values of the sources' single-visit scores
        (the single-visit models that made them), sorted; empty if unknown.
    """

    source_id: np.ndarray
    object_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mjd: np.ndarray
    visit: np.ndarray
    source_flags: np.ndarray
    triplet_score: np.ndarray
    frames: np.ndarray
    channels: tuple[str, ...]
    dataset: np.ndarray
    score_versions: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.source_id)

    def bad_frames(self, max_bad_fraction: float) -> np.ndarray:
        """``(N,)`` bool: frames to leave out (unscorable source, too many NaN pixels, no time)."""
        n = len(self)
        if n == 0:
            return np.zeros(0, bool)
        nonfinite = ~np.isfinite(self.frames.reshape(n, -1))
        fraction = nonfinite.mean(axis=1)
        unscorable = (self.source_flags & np.int32(UNSCORABLE | SourceFlag.NOT_SCORED)) != 0
        return unscorable | (fraction > max_bad_fraction) | ~np.isfinite(self.mjd)


def frames_from_stamps(stamps: np.ndarray, frame_size: int) -> np.ndarray:
    """Cut ``(N, C, F, F)`` frames from ``(N, C, S, S)`` stamps keeping the source pixel.

    The source sits at pixel ``S // 2`` of a stamp and at ``F // 2`` of a frame,
    so the frame is ``stamp[..., a:a + F, a:a + F]`` with ``a = S // 2 - F // 2``.
    """
    s = stamps.shape[-1]
    if stamps.ndim != 4 or stamps.shape[-2] != s:
        raise ValueError(f"Expected square stamps (N, C, S, S), got {stamps.shape}.")
    if s == frame_size:
        return stamps
    if s < frame_size:
        raise ValueError(f"Stamps of side {s} are smaller than the model's frames ({frame_size}).")
    a = s // 2 - frame_size // 2
    return stamps[..., a : a + frame_size, a : a + frame_size]


def _get(obj: Any) -> Any:
    """A dataset in memory: ``obj`` itself, or what a deferred handle reads."""
    if hasattr(obj, "get") and not isinstance(obj, (astropy.table.Table, dict)) and hasattr(obj, "ref"):
        return obj.get()
    return obj


def _column(table: astropy.table.Table, name: str, dtype, fill) -> np.ndarray:
    col = table[name]
    if hasattr(col, "mask"):
        return np.ma.filled(np.ma.asarray(col).astype(dtype), fill)
    return np.asarray(col, dtype=dtype)


def gather_frames(
    cutouts: Sequence[Any],
    sources: Sequence[Any],
    *,
    channels: Sequence[str],
    frame_size: int,
    times: Sequence[float | None] | None = None,
    visits: Sequence[int | None] | None = None,
    names: Sequence[str] | None = None,
    id_column: str = "id",
    ra_column: str = "ra",
    dec_column: str = "dec",
    object_id_column: str = "diaObjectId",
    time_column: str = "midpointMjdTai",
    score_column: str = "reliability",
    cutouts_name: str = "dia_source_cutouts",
    sources_name: str = "sources",
) -> SourceFrames:
    """Join per-(visit, detector) cutouts with their sources and cut the frames.

    Parameters
    ----------
    cutouts : sequence of `astropy.table.Table` (or deferred dataset handles)
        Cutout tables of the reliability task: ``id``, ``stamp`` ``(n, C, S, S)`` raw
        pixels, ``reliabilityFlags``; ``meta["channels"]`` names the stamp channels
        (`CHANNEL_ORDER` is assumed for 3 channels without it).
    sources : sequence of tables (or deferred dataset handles)
        The matching source tables, same order: ``id_column``, ``ra_column``,
        ``dec_column`` (degrees); optionally ``object_id_column``, ``time_column`` (MJD)
        and ``score_column`` (single-visit reliability).
    channels : sequence of `str`
        Channels to keep, in this order.
    frame_size : `int`
        Side of the frames (pixels, <= the stamps' side).
    times : sequence of `float` or `None`, optional
        Time (MJD) of each dataset's visit, used when its table has no ``time_column``.
    visits : sequence of `int` or `None`, optional
        Visit id of each dataset.
    names : sequence of `str`, optional
        How to name each dataset in errors (e.g. its data ID).

    Returns
    -------
    frames : `SourceFrames`

    Raises
    ------
    ValueError
        A table without a required column (named, with the dataset), cutouts without a
        source row, stamps without a wanted channel or smaller than ``frame_size``,
        duplicate source ids, or a dataset without any time.
    """
    if len(cutouts) != len(sources):
        raise ValueError(f"Got {len(cutouts)} {cutouts_name} datasets but {len(sources)} {sources_name}.")
    n_sets = len(cutouts)
    names = list(names) if names is not None else [f"#{i}" for i in range(n_sets)]
    times = list(times) if times is not None else [None] * n_sets
    visits = list(visits) if visits is not None else [None] * n_sets
    channels = tuple(channels)
    parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    score_versions: set[str] = set()
    for i in range(n_sets):
        where = names[i]
        cut = source_table_from_any(_get(cutouts[i]), name=f"{cutouts_name} ({where})")
        src = source_table_from_any(_get(sources[i]), name=f"{sources_name} ({where})")
        require_columns(
            cut,
            ("id", "stamp"),
            what=f"The cutouts ({cutouts_name}, {where})",
            dataset=f"{cutouts_name} ({where})",
            plural=True,
        )
        require_columns(
            src,
            (id_column, ra_column, dec_column),
            what=f"The source table ({sources_name}, {where})",
            dataset=f"{sources_name} ({where})",
            hint=" (configured by idColumn/raColumn/decColumn)",
        )
        cut_ids = np.asarray(cut["id"], dtype=np.int64)
        src_ids = np.asarray(src[id_column], dtype=np.int64)
        if len(cut_ids) == len(src_ids) and np.array_equal(cut_ids, src_ids):
            rows = np.arange(len(src_ids))
        else:
            order = np.argsort(src_ids, kind="stable")
            pos = np.clip(np.searchsorted(src_ids[order], cut_ids), 0, max(len(src_ids) - 1, 0))
            found = (src_ids[order][pos] == cut_ids) if len(src_ids) else np.zeros(len(cut_ids), bool)
            if not np.all(found):
                raise ValueError(
                    f"The cutouts ({cutouts_name}, {where}) have source ids missing from the source table "
                    f"({sources_name}), e.g. {cut_ids[~found][:5].tolist()}."
                )
            rows = order[pos]
        n = len(cut_ids)
        stamps = np.asarray(cut["stamp"])
        if stamps.ndim != 4 or stamps.shape[-1] != stamps.shape[-2] or len(stamps) != n:
            raise ValueError(
                f"The cutouts ({cutouts_name}, {where}) column 'stamp' must be (N, C, S, S), "
                f"got {stamps.shape}."
            )
        stamp_channels = tuple(cut.meta.get("channels", ())) or (
            CHANNEL_ORDER if stamps.shape[1] == len(CHANNEL_ORDER) else ()
        )
        if len(stamp_channels) != stamps.shape[1]:
            raise ValueError(
                f"The cutouts ({cutouts_name}, {where}) have {stamps.shape[1]} channels but name "
                f"{stamp_channels}; expected meta['channels'] to name them."
            )
        lacking = [c for c in channels if c not in stamp_channels]
        if lacking:
            raise ValueError(
                f"The sequence model reads channels {channels} but the cutouts ({cutouts_name}, {where}) "
                f"have only {stamp_channels} (lacking {lacking})."
            )
        if stamps.shape[-1] < frame_size:
            raise ValueError(
                f"The cutouts ({cutouts_name}, {where}) have {stamps.shape[-1]}-pixel stamps, smaller "
                f"than the sequence model's {frame_size}-pixel frames; write larger cutouts (cutoutSize)."
            )
        select = [stamp_channels.index(c) for c in channels]
        # Select and crop per dataset, so only the frames (not the full stamps) are held in memory.
        parts["frames"].append(
            np.ascontiguousarray(frames_from_stamps(stamps[:, select], frame_size), dtype=np.float32)
        )
        parts["source_id"].append(cut_ids)
        parts["ra"].append(_column(src, ra_column, np.float64, np.nan)[rows])
        parts["dec"].append(_column(src, dec_column, np.float64, np.nan)[rows])
        if object_id_column and object_id_column in src.colnames:
            parts["object_id"].append(_column(src, object_id_column, np.int64, 0)[rows])
        else:
            parts["object_id"].append(np.zeros(n, np.int64))
        if time_column and time_column in src.colnames:
            parts["mjd"].append(_column(src, time_column, np.float64, np.nan)[rows])
        elif times[i] is not None and math.isfinite(float(times[i])):
            parts["mjd"].append(np.full(n, float(times[i])))
        elif n:
            raise ValueError(
                f"The time of the sources ({sources_name}, {where}) is unknown: the table has no "
                f"{time_column!r} column (timeColumn) and the visit's time was not given."
            )
        else:
            parts["mjd"].append(np.zeros(0))
        if score_column and score_column in src.colnames:
            parts["triplet_score"].append(_column(src, score_column, np.float32, np.nan)[rows])
            if "reliabilityVersion" in src.colnames and len(src):
                score_versions.update(str(v) for v in np.unique(np.asarray(src["reliabilityVersion"])) if v)
        else:
            parts["triplet_score"].append(np.full(n, np.nan, np.float32))
        if "reliabilityFlags" in cut.colnames:
            parts["source_flags"].append(np.asarray(cut["reliabilityFlags"], dtype=np.int32))
        elif "flags" in cut.colnames:
            parts["source_flags"].append(np.asarray(cut["flags"], dtype=np.int32))
        else:
            parts["source_flags"].append(np.zeros(n, np.int32))
        parts["visit"].append(np.full(n, -1 if visits[i] is None else int(visits[i]), np.int64))
        parts["dataset"].append(np.full(n, i, np.int32))

    def cat(key, dtype, shape=()):
        if not parts[key]:
            return np.zeros((0, *shape), dtype)
        return np.concatenate(parts[key]).astype(dtype, copy=False)

    result = SourceFrames(
        source_id=cat("source_id", np.int64),
        object_id=cat("object_id", np.int64),
        ra=cat("ra", np.float64),
        dec=cat("dec", np.float64),
        mjd=cat("mjd", np.float64),
        visit=cat("visit", np.int64),
        source_flags=cat("source_flags", np.int32),
        triplet_score=cat("triplet_score", np.float32),
        frames=cat("frames", np.float32, (len(channels), frame_size, frame_size)),
        channels=channels,
        dataset=cat("dataset", np.int32),
        score_versions=tuple(sorted(score_versions)),
    )
    if len(result) > 1:
        ids = np.sort(result.source_id)
        dup = ids[1:][ids[1:] == ids[:-1]]
        if len(dup):
            raise ValueError(
                f"Source ids repeat across the {cutouts_name} datasets, e.g. {np.unique(dup)[:5].tolist()}; "
                "each source must appear in one (visit, detector) only."
            )
    return result


def sequence_order(index: np.ndarray, mjd: np.ndarray, source_id: np.ndarray, n_objects: int):
    """Rows sorted by (object, time, source id) and the ``(n_objects + 1,)`` offsets."""
    order = np.lexsort((source_id, mjd, index))
    counts = np.bincount(index, minlength=n_objects)
    offsets = np.zeros(n_objects + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return order, offsets
