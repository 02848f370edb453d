# This file is part of meas_rbnet.
"""Labels tables: reading them from files, validating them, putting them into a repository.

`lsst.meas.rbnet.butler.repo` re-exports every public name; moved out of ``repo`` so
no module is over about 600 lines.
"""

from __future__ import annotations

__all__ = ["ingest_labels", "read_labels_file"]

import os
from typing import Any

import astropy.table
import numpy as np

from lsst.daf.butler import Butler, DatasetType
from lsst.resources import ResourcePathExpression

from ..constants import ALL_CLASSES, BOGUS, REAL, REAL_CLASSES
from .names import LABELS_DATASET_TYPE, _collection_exists, _new_run, validate_run_name


def read_labels_file(path: str) -> astropy.table.Table:
    """Read a labels table from a CSV or Parquet file.

    Raises
    ------
    ValueError
        If the extension is neither ``.csv`` nor ``.parquet``/``.parq``/``.pq``.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return astropy.table.Table.read(path, format="ascii.csv")
    if ext in (".parquet", ".parq", ".pq"):
        return astropy.table.Table.read(path, format="parquet")
    raise ValueError(f"Labels file {path!r}: expected a .csv or .parquet file.")


def _validate_labels(table: astropy.table.Table, source: str) -> astropy.table.Table:
    """Check and normalise a labels table; errors name ``source`` and the column."""
    cols = set(table.colnames)
    if "label" not in cols:
        raise ValueError(f"Labels {source}: no 'label' column (columns: {table.colnames}).")
    has_id = "id" in cols
    has_pos = {"ra", "dec", "mjd"} <= cols
    if not (has_id or has_pos):
        raise ValueError(
            f"Labels {source}: need a source 'id' column, or 'ra', 'dec' and 'mjd' columns "
            f"(columns: {table.colnames})."
        )
    out = astropy.table.Table()
    if has_id:
        ids = np.asarray(table["id"])
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"Labels {source}: column 'id' must hold integers, got {ids.dtype}.")
        ids = ids.astype(np.int64)
        unique, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(
                f"Labels {source}: duplicate source ids, e.g. {unique[counts > 1][:5].tolist()}."
            )
        out["id"] = ids
    labels = np.asarray(table["label"])
    if labels.dtype.kind in "US":
        lowered = np.char.lower(labels.astype(str))
        mapping = {"real": REAL, "bogus": BOGUS, "1": REAL, "0": BOGUS}
        bad = sorted(set(lowered.tolist()) - set(mapping))
        if bad:
            raise ValueError(
                f"Labels {source}: column 'label' has values {bad[:5]}; expected 0/1 or bogus/real."
            )
        labels = np.array([mapping[v] for v in lowered], dtype=np.int16)
    else:
        bad = sorted(set(np.unique(labels).tolist()) - {REAL, BOGUS})
        if bad:
            raise ValueError(
                f"Labels {source}: column 'label' has values {bad[:5]}; expected 0 (bogus) or 1 (real)."
            )
        labels = labels.astype(np.int16)
    out["label"] = labels
    if "source_class" in cols:
        classes = np.asarray(table["source_class"]).astype(str)
        known = set(ALL_CLASSES) | set(REAL_CLASSES) | {""}
        unknown = sorted(set(classes.tolist()) - known)
        if unknown:
            raise ValueError(
                f"Labels {source}: unknown source_class values {unknown[:5]}; expected one of "
                f"{sorted(known - {''})}."
            )
        out["source_class"] = classes
    for col in ("ra", "dec", "mjd"):
        if col in cols:
            out[col] = np.asarray(table[col], dtype=np.float64)
    return out


def ingest_labels(
    repo: ResourcePathExpression | Butler,
    labels: astropy.table.Table | str,
    *,
    run: str,
    instrument: str | None = None,
    dataset_type: str = LABELS_DATASET_TYPE,
) -> Any:
    """Validate a labels table and put it into the repository.

    Labels are never overwritten: ``run`` must be a new RUN collection, and a failure
    removes it again, so the registry stays as it was.

    Parameters
    ----------
    repo : `lsst.resources.ResourcePathExpression` or `lsst.daf.butler.Butler`
        Repository (opened writeable) or a writeable Butler.
    labels : `astropy.table.Table` or `str`
        Table, or a ``.csv``/``.parquet`` file, with ``label`` (0 bogus / 1 real, or the
        words) and either ``id`` (source id) or ``ra``, ``dec`` (deg) and ``mjd``;
        optional ``source_class`` (a name from `lsst.meas.rbnet.constants`).
    run : `str`
        RUN collection to write into (e.g. ``labels/2024-06``).
    instrument : `str`, optional
        Instrument the labels belong to; the repository's only instrument by default.
    dataset_type : `str`, optional
        Dataset type name.

    Returns
    -------
    ref : `lsst.daf.butler.DatasetRef`
        The dataset written.
    """
    validate_run_name(run)
    butler = repo if isinstance(repo, Butler) else Butler.from_config(repo, writeable=True)
    source = repr(labels) if isinstance(labels, str) else "table"
    table = read_labels_file(labels) if isinstance(labels, str) else labels
    table = _validate_labels(table, source)
    if instrument is None:
        names = [r.name for r in butler.registry.queryDimensionRecords("instrument")]
        if len(names) != 1:
            raise ValueError(f"The repository has instruments {names}; say which one the labels belong to.")
        instrument = names[0]
    elif not list(butler.registry.queryDimensionRecords("instrument", dataId={"instrument": instrument})):
        names = [r.name for r in butler.registry.queryDimensionRecords("instrument")]
        raise ValueError(f"Instrument {instrument!r} is not in the repository; it has {names}.")
    butler.registry.registerDatasetType(
        DatasetType(dataset_type, ["instrument"], "ArrowAstropy", universe=butler.dimensions)
    )
    if _collection_exists(butler, run):
        raise RuntimeError(f"Collection {run!r} already exists; choose another --run (labels are never overwritten).")
    with _new_run(butler, run):
        return butler.put(table, dataset_type, {"instrument": instrument}, run=run)
