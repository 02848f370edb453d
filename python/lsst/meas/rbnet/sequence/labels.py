# This file is part of meas_rbnet.
"""Object labels for training the sequence model (the majority of its sources' labels) and the
training sequences (the usable frames of the labelled objects, in time order)."""

from __future__ import annotations

__all__ = ["object_labels", "training_sequences"]

import astropy.table
import numpy as np

from ..tables import match_labels
from .association import ObjectGroups
from .frames import SourceFrames, sequence_order


def object_labels(
    frames: SourceFrames,
    groups: ObjectGroups,
    labels: astropy.table.Table,
    *,
    match_radius: float = 1.0,
    time_tolerance: float = 0.02,
) -> tuple[np.ndarray, dict[str, int]]:
    """Label of each object (1 real, 0 bogus, -1 none) from a labels table.

    Parameters
    ----------
    frames : `SourceFrames`
        The sources.
    groups : `ObjectGroups`
        Their objects.
    labels : `astropy.table.Table`
        Per-source labels (``id``, or ``ra``/``dec``/``mjd``; and ``label``) or per-object
        labels (``diaObjectId`` and ``label``, no ``id``).
    match_radius, time_tolerance : `float`
        Position (arcsec) and time (days) tolerances when labels have no ids.

    Returns
    -------
    labels : `numpy.ndarray`
        ``(M,)`` int16.
    counts : `dict` [`str`, `int`]
        ``labelled_sources``, ``conflicting_objects`` (a tie, left unlabelled).

    Raises
    ------
    ValueError
        If the table has no ``label`` column or no way to match it.
    """
    if "label" not in labels.colnames:
        raise ValueError(f"The labels have no 'label' column (columns: {labels.colnames}).")
    n_obj = len(groups)
    out = np.full(n_obj, -1, np.int16)
    values = np.asarray(labels["label"], dtype=np.int16)
    if "id" not in labels.colnames and "diaObjectId" in labels.colnames:
        lab_ids = np.asarray(labels["diaObjectId"], dtype=np.int64)
        lookup = dict(zip(lab_ids.tolist(), values.tolist()))
        for k in np.flatnonzero(~groups.positional):
            out[k] = lookup.get(int(groups.object_id[k]), -1)
        return out, {"labelled_sources": 0, "conflicting_objects": 0}
    source_label = np.full(len(frames), -1, np.int16)
    table = astropy.table.Table({"id": frames.source_id, "ra": frames.ra, "dec": frames.dec})
    if "id" in labels.colnames:
        idx = match_labels(table, labels)
        source_label[idx >= 0] = values[idx[idx >= 0]]
    else:
        # Matched by position and time, one visit (time) at a time.
        for t in np.unique(frames.mjd[np.isfinite(frames.mjd)]):
            rows = np.flatnonzero(frames.mjd == t)
            idx = match_labels(
                table[rows], labels, mjd=float(t), radius_arcsec=match_radius, time_tolerance=time_tolerance
            )
            ok = idx >= 0
            source_label[rows[ok]] = values[idx[ok]]
    has = source_label >= 0
    n_real = np.bincount(groups.index[has], weights=(source_label[has] == 1), minlength=n_obj)
    n_bogus = np.bincount(groups.index[has], weights=(source_label[has] == 0), minlength=n_obj)
    out[n_real > n_bogus] = 1
    out[n_bogus > n_real] = 0
    conflicts = int(np.count_nonzero((n_real == n_bogus) & (n_real > 0)))
    return out, {"labelled_sources": int(np.count_nonzero(has)), "conflicting_objects": conflicts}


def training_sequences(
    frames: SourceFrames,
    groups: ObjectGroups,
    labels: np.ndarray,
    *,
    max_bad_fraction: float,
    min_visits: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The objects and frames to train on: labelled objects with at least ``min_visits`` usable frames.

    Parameters
    ----------
    frames, groups
        As for `object_labels`.
    labels : `numpy.ndarray`
        ``(M,)`` object labels (`object_labels`; -1 none).
    max_bad_fraction : `float`
        A frame with more NaN pixels than this is left out (see `SourceFrames.bad_frames`).
    min_visits : `int`
        Fewest usable frames of an object to train on.

    Returns
    -------
    use : `numpy.ndarray`
        ``(M,)`` bool, the objects trained on (renumbered 0..K-1 in this order).
    rows : `numpy.ndarray`
        Rows of ``frames`` in the training sequences, in (object, time, source id) order.
    offsets : `numpy.ndarray`
        ``(K + 1,)`` start of each object's sequence in ``rows``.
    bad : `numpy.ndarray`
        ``(N,)`` bool, the frames left out.
    """
    bad = frames.bad_frames(max_bad_fraction)
    n_good = np.bincount(groups.index[~bad], minlength=len(groups))
    use_obj = (labels >= 0) & (n_good >= min_visits)
    # Objects renumbered 0..K-1 over the ones used; frames in (object, time, id) order.
    new_index = np.full(len(groups), -1, np.int64)
    new_index[use_obj] = np.arange(int(np.count_nonzero(use_obj)))
    rows = np.flatnonzero(~bad & use_obj[groups.index])
    order, offsets = sequence_order(
        new_index[groups.index[rows]], frames.mjd[rows], frames.source_id[rows], int(use_obj.sum())
    )
    rows = rows[order]
    return use_obj, rows, offsets, bad
