# This file is part of meas_rbnet.
"""The per-object sequence reliability table (``dia_object_sequence_reliability``)."""

from __future__ import annotations

__all__ = ["empty_object_table", "object_table", "score_objects"]

from collections.abc import Callable

import astropy.table
import numpy as np

from ..constants import VERSION_MAX_LENGTH
from ..flags import ObjectFlag
from .aggregate import aggregate_scores
from .association import ObjectGroups, object_positions
from .frames import SourceFrames, sequence_order
from .partition import SkyPartition


def empty_object_table() -> astropy.table.Table:
    """A per-object sequence reliability table with no rows and every column."""
    return object_table(
        object_id=np.zeros(0, np.int64),
        n_visits=np.zeros(0, np.int32),
        n_sources=np.zeros(0, np.int32),
        first=np.zeros(0),
        last=np.zeros(0),
        ra=np.zeros(0),
        dec=np.zeros(0),
        reliability=np.zeros(0, np.float32),
        version="",
        flags=np.zeros(0, np.int32),
        triplet_max=np.zeros(0, np.float32),
        triplet_mean=np.zeros(0, np.float32),
    )


def object_table(
    *,
    object_id,
    n_visits,
    n_sources,
    first,
    last,
    ra,
    dec,
    reliability,
    version,
    flags,
    triplet_max,
    triplet_mean,
) -> astropy.table.Table:
    n = len(object_id)
    table = astropy.table.Table()
    table["objectId"] = np.asarray(object_id, np.int64)
    table["nVisits"] = np.asarray(n_visits, np.int32)
    table["nSources"] = np.asarray(n_sources, np.int32)
    table["firstMjd"] = np.asarray(first, np.float64)
    table["lastMjd"] = np.asarray(last, np.float64)
    table["ra"] = np.asarray(ra, np.float64)
    table["dec"] = np.asarray(dec, np.float64)
    table["reliability"] = np.asarray(reliability, np.float32)
    table["reliabilityVersion"] = np.array([version] * n, dtype=f"<U{VERSION_MAX_LENGTH}")
    table["flags"] = np.asarray(flags, np.int32)
    table["tripletReliabilityMax"] = np.asarray(triplet_max, np.float32)
    table["tripletReliabilityMean"] = np.asarray(triplet_mean, np.float32)
    table["ra"].unit = "deg"
    table["dec"].unit = "deg"
    table["firstMjd"].unit = "d"
    table["lastMjd"].unit = "d"
    return table


def score_objects(
    frames: SourceFrames,
    groups: ObjectGroups,
    scorer,
    *,
    partition: SkyPartition | Callable | None = None,
    max_bad_fraction: float = 0.5,
    min_visits: int = 1,
    log=None,
    sources_name: str = "sources",
) -> astropy.table.Table:
    """Score every object the partition owns: one row per object (see `object_table`).

    Parameters
    ----------
    frames : `~lsst.meas.rbnet.sequence.frames.SourceFrames`
        The sources and their frames.
    groups : `~lsst.meas.rbnet.sequence.association.ObjectGroups`
        Their objects.
    scorer : `~lsst.meas.rbnet.sequence.scoring.SequenceScorer`
        The model (``version``, ``needs_visit_scores``, ``package``, ``score``).
    partition : `~lsst.meas.rbnet.sequence.partition.SkyPartition` or callable, optional
        Which objects to score: those whose mean position ``partition.contains(ra, dec)``
        (or ``partition(ra, dec)``); `None` scores every object.
    max_bad_fraction : `float`
        A frame with more NaN pixels than this is left out (``FRAMES_DROPPED``).
    min_visits : `int`
        Objects with fewer usable frames are not scored (``TOO_FEW_VISITS``).
    log : `logging.Logger`, optional
        Warns when the sources' single-visit scores come from another model than the
        sequence model was trained with.
    sources_name : `str`
        How to name the sources in that warning.

    Returns
    -------
    table : `astropy.table.Table`
        Columns of `object_table`, sorted as ``groups`` (associated objects first).
    """
    version = scorer.version
    n_all = len(groups)
    ra_m, dec_m = object_positions(frames.ra, frames.dec, groups.index, n_all)
    if partition is None:
        owned = np.ones(n_all, bool)
    else:
        test = partition.contains if hasattr(partition, "contains") else partition
        owned = np.asarray(test(ra_m, dec_m), dtype=bool)
    n_owned = int(np.count_nonzero(owned))
    # Objects renumbered 0..K-1 over the owned ones.
    new_index = np.full(n_all, -1, np.int64)
    new_index[owned] = np.arange(n_owned)
    src_rows = np.flatnonzero(owned[groups.index])
    obj_of_src = new_index[groups.index[src_rows]]
    bad = frames.bad_frames(max_bad_fraction)[src_rows]

    flags = np.zeros(n_owned, np.int32)
    flags[groups.positional[owned]] |= np.int32(ObjectFlag.POSITIONAL)
    n_sources = np.bincount(obj_of_src, minlength=n_owned)
    n_good = np.bincount(obj_of_src[~bad], minlength=n_owned)
    flags[(n_good < n_sources)] |= np.int32(ObjectFlag.FRAMES_DROPPED)
    flags[n_good == 0] |= np.int32(ObjectFlag.NO_VALID_FRAMES)
    flags[n_good == 1] |= np.int32(ObjectFlag.SINGLE_VISIT)
    too_few = n_good < min_visits
    flags[too_few & (n_good > 0)] |= np.int32(ObjectFlag.TOO_FEW_VISITS)
    scored = ~too_few

    # Frames of the scored objects, in (object, time, source id) order.
    good = src_rows[~bad & scored[obj_of_src]]
    good_obj = new_index[groups.index[good]]
    order, offsets = sequence_order(good_obj, frames.mjd[good], frames.source_id[good], n_owned)
    good, good_obj = good[order], good_obj[order]
    visit_key = np.where(frames.visit[good] >= 0, frames.visit[good].astype(np.float64), frames.mjd[good])
    if len(good) > 1:
        same = (good_obj[1:] == good_obj[:-1]) & (visit_key[1:] == visit_key[:-1])
        flags[np.unique(good_obj[1:][same])] |= np.int32(ObjectFlag.REPEATED_VISIT)

    reliability = np.full(n_owned, np.nan, np.float32)
    if len(good):
        visit_scores = None
        if scorer.needs_visit_scores:
            visit_scores = frames.triplet_score[good]
            missing = np.unique(good_obj[~np.isfinite(visit_scores)])
            flags[missing] |= np.int32(ObjectFlag.MISSING_VISIT_SCORES)
            trained_with = scorer.package.extra.get("visit_score_versions") or []
            other = sorted(set(frames.score_versions) - set(trained_with))
            if trained_with and other and log is not None:
                log.warning(
                    "The sequence model %s was trained with single-visit scores of model version(s) "
                    "%s, but the sources' scores (%s) come from %s: its calibration may not hold.",
                    version,
                    trained_with,
                    sources_name,
                    other,
                )
        reliability = scorer.score(
            frames.frames[good],
            offsets,
            frames.mjd[good],
            channels=frames.channels,
            visit_scores=visit_scores,
        )
        reliability = np.asarray(reliability, dtype=np.float32)
    reliability[~scored] = np.nan
    not_scored = ~np.isfinite(reliability)
    flags[not_scored] |= np.int32(ObjectFlag.NOT_SCORED)

    # Time span: of the scored frames, else of all the object's sources.
    first = np.full(n_owned, np.inf)
    last = np.full(n_owned, -np.inf)
    span_rows = np.where(n_good[obj_of_src] > 0, ~bad, True)
    t = frames.mjd[src_rows]
    use = span_rows & np.isfinite(t)
    np.minimum.at(first, obj_of_src[use], t[use])
    np.maximum.at(last, obj_of_src[use], t[use])
    first[~np.isfinite(first)] = np.nan
    last[~np.isfinite(last)] = np.nan

    # The single-visit baseline: max and mean of the triplet scores of each object's sources.
    order_all, offsets_all = sequence_order(
        obj_of_src, frames.mjd[src_rows], frames.source_id[src_rows], n_owned
    )
    agg = aggregate_scores(frames.triplet_score[src_rows][order_all], offsets_all, ("max", "mean"))

    table = object_table(
        object_id=groups.object_id[owned],
        n_visits=np.diff(offsets),
        n_sources=n_sources,
        first=first,
        last=last,
        ra=ra_m[owned],
        dec=dec_m[owned],
        reliability=reliability,
        version=version,
        flags=flags,
        triplet_max=agg["max"],
        triplet_mean=agg["mean"],
    )
    return table
