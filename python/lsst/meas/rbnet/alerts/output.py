# This file is part of meas_rbnet.
"""Streaming writers of the per-alert output table: Parquet, CSV or ECSV, by file extension.

Rows are written batch by batch as they are scored, so a run over millions of
alerts never holds its output in memory. The columns are fixed when the file
is opened (`score.output_columns`); a batch lacking a column gets NaN (floats)
or empty strings.
"""

from __future__ import annotations

__all__ = ["AlertTableWriter", "OUTPUT_FORMATS", "output_format"]

import io
import os

import numpy as np
from astropy.table import Table

from .score import conform

#: File extension -> format.
OUTPUT_FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".parq": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".ecsv": "ecsv",
}


def output_format(path: str | os.PathLike) -> str:
    """The format of an output file from its extension.

    Raises
    ------
    ValueError
        If the extension is not one of `OUTPUT_FORMATS`.
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(
            f"Cannot tell the output format of {os.fspath(path)!r}: its extension must be one of "
            f"{', '.join(sorted(OUTPUT_FORMATS))}."
        )
    return OUTPUT_FORMATS[ext]


def _arrow_type(dtype):
    import pyarrow as pa

    return pa.string() if dtype is str else pa.from_numpy_dtype(np.dtype(dtype))


class AlertTableWriter:
    """Writes output tables to one file, batch after batch (a context manager).

    Parameters
    ----------
    path : path-like
        Output file; the format comes from its extension (`output_format`).
    columns : `list` [`tuple` [`str`, dtype]]
        Names and numpy dtypes of the columns (``str`` for strings).
    """

    def __init__(self, path: str | os.PathLike, columns):
        self.path = os.fspath(path)
        self.format = output_format(self.path)
        self.columns = list(columns)
        self.n_rows = 0
        self._writer = None
        self._file = None
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            self._schema = pa.schema([(n, _arrow_type(d)) for n, d in self.columns])
            self._writer = pq.ParquetWriter(self.path, self._schema)
        elif self.format == "csv":
            import pyarrow as pa
            import pyarrow.csv as pacsv

            self._schema = pa.schema([(n, _arrow_type(d)) for n, d in self.columns])
            self._writer = pacsv.CSVWriter(self.path, self._schema)
        else:
            self._file = open(self.path, "w", encoding="utf-8", newline="")
            self._header_written = False

    def write(self, table: Table) -> None:
        """Append the rows of ``table`` (extra columns are ignored, missing ones filled)."""
        table = conform(table, self.columns)
        self.n_rows += len(table)
        if self.format in ("parquet", "csv"):
            import pyarrow as pa

            arrays = [
                pa.array(np.asarray(table[n]), type=self._schema.field(n).type) for n, _ in self.columns
            ]
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
            return
        buf = io.StringIO()
        table.write(buf, format="ascii.ecsv")
        text = buf.getvalue()
        if not self._header_written:
            self._file.write(text)
            self._header_written = True
            return
        # Later batches: only the data lines (the header is "# ..." lines then the column-name line).
        lines = text.splitlines(keepends=True)
        start = 0
        while start < len(lines) and lines[start].startswith("#"):
            start += 1
        self._file.writelines(lines[start + 1 :])

    def close(self) -> None:
        """Finish the file (an empty table with the columns if nothing was written)."""
        if self.format in ("parquet", "csv"):
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            return
        if self._file is not None:
            if not self._header_written:
                self.write(conform(Table(), self.columns))
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
