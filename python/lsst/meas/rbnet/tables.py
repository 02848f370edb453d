# This file is part of meas_rbnet.
"""Tables shared by the tasks and the science code: any table type to astropy, labels to sources.

No Butler here: the errors are plain `ValueError`/`TypeError`, and a task turns them into
its pipe_base error types (`lsst.meas.rbnet.tasks.errors`).
"""

from __future__ import annotations

__all__ = ["TableColumnError", "match_labels", "require_columns", "source_table_from_any"]

import math
from collections.abc import Sequence
from typing import Any

import astropy.table
import numpy as np


class TableColumnError(ValueError):
    """A table lacks columns: the message names them; ``details`` holds the dataset, the missing
    columns and the table's columns (for `lsst.meas.rbnet.tasks.errors.MissingColumnError`).
    """

    def __init__(self, message: str, *, dataset: str, missing: list[str], columns: list[str]) -> None:
        super().__init__(message)
        self.details = {"dataset": dataset, "missing": list(missing), "columns": list(columns)}


def require_columns(
    table: astropy.table.Table,
    columns: Sequence[str],
    *,
    what: str,
    dataset: str,
    hint: str = "",
    plural: bool = False,
) -> None:
    """Raise `TableColumnError` if ``table`` lacks any of ``columns``.

    Parameters
    ----------
    table : `astropy.table.Table`
        The table.
    columns : sequence of `str`
        The columns it must have.
    what : `str`
        How the message names the table, e.g. ``"The source table (sources)"``.
    dataset : `str`
        The dataset named in the error's ``details``.
    hint : `str`
        Said after the missing columns, e.g. ``" (configured by idColumn/xColumn/yColumn)"``.
    plural : `bool`
        Whether ``what`` is plural ("The cutouts ... have").
    """
    missing = [c for c in columns if c not in table.colnames]
    if missing:
        has, it_has = ("have", "they have") if plural else ("has", "it has")
        raise TableColumnError(
            f"{what} {has} no column(s) {missing}{hint}; {it_has} {table.colnames}.",
            dataset=dataset,
            missing=missing,
            columns=list(table.colnames),
        )


def source_table_from_any(sources: Any, name: str = "sources") -> astropy.table.Table:
    """An astropy Table from a source catalogue given as astropy, pandas, pyarrow or numpy.

    Raises
    ------
    TypeError
        If the type is not one of those (the message names ``name``).
    """
    if isinstance(sources, astropy.table.Table):
        return sources
    module = type(sources).__module__
    if module.startswith("pandas"):
        return astropy.table.Table.from_pandas(sources.reset_index(drop=sources.index.name is None))
    if module.startswith("pyarrow"):
        return astropy.table.Table({c: sources.column(c).to_numpy() for c in sources.column_names})
    if isinstance(sources, np.ndarray) and sources.dtype.names:
        return astropy.table.Table(sources)
    if isinstance(sources, dict):
        return astropy.table.Table(sources)
    raise TypeError(
        f"The {name} are a {module}.{type(sources).__qualname__}; expected an astropy Table, a pandas "
        "DataFrame, a pyarrow Table or a numpy structured array."
    )


def match_labels(
    sources: astropy.table.Table,
    labels: astropy.table.Table,
    *,
    id_column: str = "id",
    ra_column: str = "ra",
    dec_column: str = "dec",
    mjd: float | None = None,
    radius_arcsec: float = 1.0,
    time_tolerance: float = 0.02,
) -> np.ndarray:
    """Index into ``labels`` of each source's label, or -1.

    Parameters
    ----------
    sources : `astropy.table.Table`
        Sources (``id_column``; ``ra_column``/``dec_column`` in degrees for position matching).
    labels : `astropy.table.Table`
        Labels with ``id``, or with ``ra``, ``dec`` (deg) and ``mjd``.
    mjd : `float`, optional
        Mid-time of the visit (MJD), needed to match labels without ids.
    radius_arcsec, time_tolerance : `float`
        Position (arcsec) and time (days) tolerances of the position match.

    Returns
    -------
    index : `numpy.ndarray`, (N,) int64
        Row of ``labels`` for each source, -1 where none.

    Raises
    ------
    ValueError
        If the labels can only be matched by position and the sources lack ra/dec or
        ``mjd`` is unknown.
    """
    n = len(sources)
    if "id" in labels.colnames:
        label_ids = np.asarray(labels["id"], dtype=np.int64)
        order = np.argsort(label_ids)
        sorted_ids = label_ids[order]
        src_ids = np.asarray(sources[id_column], dtype=np.int64)
        pos = np.searchsorted(sorted_ids, src_ids)
        pos = np.clip(pos, 0, max(len(sorted_ids) - 1, 0))
        found = (len(sorted_ids) > 0) & (sorted_ids[pos] == src_ids) if len(sorted_ids) else np.zeros(n, bool)
        out = np.full(n, -1, np.int64)
        out[found] = order[pos[found]]
        return out
    missing = [c for c in (ra_column, dec_column) if c not in sources.colnames]
    if missing:
        raise ValueError(
            f"The labels have no 'id' column, so they are matched by position, but the sources have no "
            f"{missing} column(s)."
        )
    if mjd is None or not math.isfinite(mjd):
        raise ValueError(
            "The labels have no 'id' column, so they are matched by position and time, but the "
            "visit's time is unknown."
        )
    sel = np.flatnonzero(np.abs(np.asarray(labels["mjd"], dtype=float) - mjd) <= time_tolerance)
    out = np.full(n, -1, np.int64)
    if n == 0 or len(sel) == 0:
        return out
    from scipy.spatial import cKDTree

    def unit(ra, dec):
        ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
        return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=1)

    tree = cKDTree(unit(labels["ra"][sel], labels["dec"][sel]))
    chord = 2 * np.sin(np.radians(radius_arcsec / 3600.0) / 2)
    dist, idx = tree.query(unit(sources[ra_column], sources[dec_column]), distance_upper_bound=chord)
    ok = np.isfinite(dist)
    out[ok] = sel[idx[ok]]
    return out
