# This file is part of meas_rbnet.
"""Sources grouped into objects: by ``diaObjectId``, else friends-of-friends on the sky.

Sources with a non-zero object id are grouped by it; the others by position,
friends-of-friends within a linking length (a KD-tree on unit vectors, chord
distance), and such an object's id is the smallest source id among its sources, so
the same sources make the same objects with the same ids whatever their order. The
two kinds are never merged. `object_positions` gives each object's mean position.
"""

from __future__ import annotations

__all__ = ["ObjectGroups", "group_sources", "object_positions", "unit_vectors"]

import dataclasses
import math

import numpy as np


def unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


@dataclasses.dataclass
class ObjectGroups:
    """Sources grouped into objects.

    Attributes
    ----------
    object_id : `numpy.ndarray`
        ``(M,)`` int64 object ids: the ``diaObjectId``, or for positional objects the
        smallest source id of the object.
    positional : `numpy.ndarray`
        ``(M,)`` bool, the object was made by positional association.
    index : `numpy.ndarray`
        ``(N,)`` int64 object (row of ``object_id``) of each source.
    """

    object_id: np.ndarray
    positional: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.object_id)


def group_sources(
    ra: np.ndarray,
    dec: np.ndarray,
    object_id: np.ndarray,
    source_id: np.ndarray,
    radius_arcsec: float,
) -> ObjectGroups:
    """Group sources into objects: by ``object_id`` where non-zero, else by position.

    Parameters
    ----------
    ra, dec : `numpy.ndarray`
        ``(N,)`` positions (degrees).
    object_id : `numpy.ndarray`
        ``(N,)`` ``diaObjectId`` (0 where unknown).
    source_id : `numpy.ndarray`
        ``(N,)`` unique source ids.
    radius_arcsec : `float`
        Friends-of-friends linking length (arcsec) of the positional association.

    Returns
    -------
    groups : `ObjectGroups`
        Objects in a deterministic order (associated objects by id, then positional ones
        by id), independent of the order of the sources.
    """
    object_id = np.asarray(object_id, dtype=np.int64)
    source_id = np.asarray(source_id, dtype=np.int64)
    n = len(source_id)
    key = object_id.copy()
    positional = object_id == 0
    rest = np.flatnonzero(positional)
    if len(rest):
        key[rest] = source_id[rest]
        finite = np.isfinite(ra[rest]) & np.isfinite(dec[rest])
        pts = rest[finite]
        if len(pts) > 1:
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import connected_components
            from scipy.spatial import cKDTree

            chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
            tree = cKDTree(unit_vectors(ra[pts], dec[pts]))
            pairs = tree.query_pairs(chord, output_type="ndarray")
            m = len(pts)
            graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
            n_comp, comp = connected_components(graph, directed=False)
            smallest = np.full(n_comp, np.iinfo(np.int64).max, np.int64)
            np.minimum.at(smallest, comp, source_id[pts])
            key[pts] = smallest[comp]
    # Unique (positional, key) pairs: a positional id may equal some diaObjectId, they stay apart.
    pairs = np.stack([positional.astype(np.int64), key], axis=1) if n else np.zeros((0, 2), np.int64)
    uniq, index = np.unique(pairs, axis=0, return_inverse=True)
    return ObjectGroups(
        object_id=uniq[:, 1].astype(np.int64),
        positional=uniq[:, 0].astype(bool),
        index=np.asarray(index, dtype=np.int64).reshape(-1),
    )


def object_positions(
    ra: np.ndarray, dec: np.ndarray, index: np.ndarray, n_objects: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean position (degrees) of each object's sources, the mean of their unit vectors.

    Sources without a finite position are ignored; an object without any gets NaN.
    """
    finite = np.isfinite(ra) & np.isfinite(dec)
    vec = np.zeros((n_objects, 3))
    for k in range(3):
        v = unit_vectors(ra[finite], dec[finite])[:, k] if finite.any() else np.zeros(0)
        vec[:, k] = np.bincount(index[finite], weights=v, minlength=n_objects)
    norm = np.linalg.norm(vec, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vec = vec / norm[:, None]
    ra_m = np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % 360.0
    dec_m = np.degrees(np.arcsin(np.clip(vec[:, 2], -1.0, 1.0)))
    none = norm == 0
    ra_m[none] = np.nan
    dec_m[none] = np.nan
    return ra_m, dec_m
