# This file is part of meas_rbnet.
"""Broker Parquet exports: the alert records as columns, read row group by row group.

Fink's exports are the first case: one row per alert with the packet's fields
as (nested) columns: ``objectId``, ``candid``, the ``candidate`` struct and
``cutoutScience`` / ``cutoutTemplate`` / ``cutoutDifference`` structs with
``stampData`` for ZTF; ``diaSource`` (struct) and the cutout columns (binary)
for Rubin; plus the broker's own columns, which are not read. Flat exports are
accepted too: for every field, the first of several column names that the file
has is used (`_COLUMNS`), e.g. ``candidate.rb`` or ``rb``; a cutout column may
be a struct with ``stampData`` or the bytes themselves.

Only the needed columns are read (nested leaves included), in batches of at
most the batch size within each row group, so memory follows the batch size
(and the file's page size), not the file. A row group that cannot be read
gives one `AlertFlag.CORRUPT_RECORD` row per row it holds, and reading goes on
with the next one.
"""

from __future__ import annotations

__all__ = ["iter_parquet", "parquet_layout"]

from collections.abc import Iterator
from typing import IO

from .flags import AlertFlag
from .surveys import CUTOUT_FIELDS, RawAlert, failure, layout_of_fields, survey_spec, to_raw_alert

#: Candidate column paths of each field, per layout, first match wins; the key is where the
#: value goes in the record dict handed to `surveys.to_raw_alert`.
_COLUMNS: dict[str, dict[tuple[str, ...], tuple[str, ...]]] = {
    "ztf": {
        ("candid",): ("candid", "candidate.candid"),
        ("objectId",): ("objectId",),
        ("candidate", "rb"): ("candidate.rb", "rb"),
        ("candidate", "drb"): ("candidate.drb", "drb"),
        ("candidate", "xpos"): ("candidate.xpos", "xpos"),
        ("candidate", "ypos"): ("candidate.ypos", "ypos"),
    },
    "rubin": {
        ("diaSource", "diaSourceId"): ("diaSource.diaSourceId", "diaSourceId", "alertId"),
        ("diaSource", "diaObjectId"): ("diaSource.diaObjectId", "diaObject.diaObjectId", "diaObjectId"),
        ("diaSource", "reliability"): ("diaSource.reliability", "reliability"),
        ("diaSource", "x"): ("diaSource.x", "x"),
        ("diaSource", "y"): ("diaSource.y", "y"),
    },
}
for _layout in _COLUMNS:
    for _field in CUTOUT_FIELDS.values():
        _COLUMNS[_layout][(_field,)] = (f"{_field}.stampData", _field, f"{_field}_stampData")


def _paths(schema) -> set[str]:
    """Dotted paths of every column and nested struct field of an Arrow schema."""
    import pyarrow as pa

    out = set()

    def walk(prefix, typ):
        if pa.types.is_struct(typ):
            for i in range(typ.num_fields):
                f = typ.field(i)
                out.add(prefix + f.name)
                walk(prefix + f.name + ".", f.type)

    for f in schema:
        out.add(f.name)
        walk(f.name + ".", f.type)
    return out


def _layout(schema) -> str | None:
    names = set(schema.names)
    layout = layout_of_fields(names)
    if layout is None and names & set(CUTOUT_FIELDS.values()):
        # Flat exports: decide by the identifier columns.
        if "candid" in names or "objectId" in names:
            layout = "ztf"
        elif "diaSourceId" in names:
            layout = "rubin"
    return layout


def parquet_layout(fo: IO[bytes] | str) -> str | None:
    """Layout (``"ztf"``/``"rubin"``) of a Parquet file, from its schema alone; None if neither."""
    import pyarrow.parquet as pq

    return _layout(pq.ParquetFile(fo).schema_arrow)


def _column(batch, path: str):
    """A (possibly nested) column of a record batch as a Python list."""
    parts = path.split(".")
    col = batch.column(parts[0])
    for p in parts[1:]:
        col = col.field(p)
    return col.to_pylist()


def iter_parquet(fo: IO[bytes] | str, source: str, batch_size: int) -> Iterator[RawAlert]:
    """Alerts of a broker Parquet file, one `RawAlert` per row.

    Parameters
    ----------
    fo : binary file object or `str`
        The file.
    source : `str`
        Name of the input, for the ``source`` column.
    batch_size : `int`
        Rows read at once (within one row group).
    """
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fo)
    except Exception:  # pyarrow raises ArrowInvalid, OSError...
        yield failure(AlertFlag.UNREADABLE_FILE, source)
        return
    layout = _layout(pf.schema_arrow)
    n_groups = pf.metadata.num_row_groups
    if layout is None:
        for g in range(n_groups):
            n = pf.metadata.row_group(g).num_rows
            if n:
                yield failure(AlertFlag.UNKNOWN_SCHEMA, source, "", n)
        return
    spec = survey_spec(layout)
    available = _paths(pf.schema_arrow)
    chosen = {}
    for key, options in _COLUMNS[layout].items():
        for path in options:
            if path in available:
                chosen[key] = path
                break
    # Ask pyarrow for the leaves only, so the rest of each struct (and the broker's columns) is never read.
    columns = sorted(set(chosen.values()))
    for g in range(n_groups):
        expected = pf.metadata.row_group(g).num_rows
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=columns):
                values = {key: _column(batch, path) for key, path in chosen.items()}
                for i in range(batch.num_rows):
                    rec: dict = {}
                    for key, vals in values.items():
                        if len(key) == 1:
                            rec[key[0]] = vals[i]
                        else:
                            rec.setdefault(key[0], {})[key[1]] = vals[i]
                    done += 1
                    yield to_raw_alert(spec, rec, source)
        except Exception:  # a damaged page or column chunk: pyarrow raises OSError, ArrowInvalid...
            if expected > done:
                yield failure(AlertFlag.CORRUPT_RECORD, source, spec.name, expected - done)
