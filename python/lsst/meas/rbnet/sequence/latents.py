# This file is part of meas_rbnet.
"""Latent sequences of many objects, and reading them from a directory with a label CSV.

A `LatentSet` holds every object's sequence of per-visit latent vectors in one
ragged array (``values`` concatenated over objects, ``offsets`` marking where each
object starts), optional visit times, and labels in this package's convention
(``constants.REAL == 1``).

On disk (`read_latent_dir`), as the RB_ZTF project saves its embeddings:

- ``DIR/<object_id>.npy``: float array ``(T, D)``, one row per visit in time order
  (e.g. ``D = 36`` VAE means, or 72 = means then log-variances);
- optional ``DIR/<object_id>.times.npy``: ``(T,)`` visit times in days (MJD or any
  zero point: only differences are used); or a table ``DIR/times.csv`` /
  ``DIR/times.parquet`` (or a file given explicitly) with columns ``object_id`` and
  ``time`` (or ``mjd``), one row per visit in frame order;
- a label CSV with columns ``object_id`` and ``label``. RB_ZTF labels are
  ``1 = artifact (bogus)`` and ``0 = real``; ``label_real_is`` says which value means real.

Every problem is counted and listed in a `LoadReport`, never dropped silently:
labelled objects with no file, files with no label, unreadable or non-2-D arrays,
empty arrays, arrays whose width differs from the majority, rows with NaN or
infinite values (dropped per frame), objects left empty by that, bad labels,
duplicate ids, and time information that does not match.
"""

__all__ = ["LatentSet", "LoadReport", "read_latent_dir", "parse_columns", "TIMES_SUFFIX"]

import collections
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..constants import BOGUS, REAL

#: Suffix of the optional per-object time files.
TIMES_SUFFIX = ".times.npy"

_TIME_TABLE_NAMES = ("times.csv", "times.parquet")

_LABEL_VALUES = {"1": 1, "1.0": 1, "true": 1, "0": 0, "0.0": 0, "false": 0}


@dataclasses.dataclass
class LatentSet:
    """Ragged latent sequences of ``N`` objects.

    Attributes
    ----------
    object_ids : `numpy.ndarray`
        ``(N,)`` str.
    values : `numpy.ndarray`
        ``(sum T_i, D)`` float32, objects concatenated in order.
    offsets : `numpy.ndarray`
        ``(N + 1,)`` int64; object ``i`` is ``values[offsets[i]:offsets[i + 1]]``.
    labels : `numpy.ndarray` or `None`
        ``(N,)`` int8, 1 = real, 0 = bogus (`lsst.meas.rbnet.constants`).
    times : `numpy.ndarray` or `None`
        ``(sum T_i,)`` float64 visit times in days, non-decreasing within an object;
        `None` when no time information exists (then every ``dt`` is 0).
    """

    object_ids: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray | None = None
    times: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.object_ids = np.asarray(self.object_ids).astype(str)
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        n = self.object_ids.shape[0]
        if self.values.ndim != 2:
            raise ValueError(f"LatentSet values must be (sum T, D), got shape {self.values.shape}.")
        if self.offsets.shape != (n + 1,) or self.offsets[0] != 0 or self.offsets[-1] != len(self.values):
            raise ValueError(f"LatentSet offsets must be (N + 1,) = ({n + 1},) from 0 to {len(self.values)}.")
        if np.any(np.diff(self.offsets) < 1):
            raise ValueError("LatentSet: every object needs at least one frame.")
        if self.labels is not None:
            self.labels = np.asarray(self.labels).astype(np.int8)
            if self.labels.shape != (n,) or not np.all(np.isin(self.labels, (REAL, BOGUS))):
                raise ValueError(
                    f"LatentSet labels must be ({n},) with values {REAL} (real) / {BOGUS} (bogus)."
                )
        if self.times is not None:
            self.times = np.asarray(self.times, dtype=np.float64)
            if self.times.shape != (len(self.values),):
                raise ValueError(f"LatentSet times must be ({len(self.values)},), got {self.times.shape}.")

    @classmethod
    def from_sequences(
        cls,
        object_ids: Sequence[str],
        sequences: Sequence[np.ndarray],
        labels: np.ndarray | None = None,
        times: Sequence[np.ndarray] | None = None,
    ) -> "LatentSet":
        """Build from per-object ``(T_i, D)`` arrays (and ``(T_i,)`` times, days)."""
        lengths = [len(s) for s in sequences]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = (
            np.concatenate([np.asarray(s, dtype=np.float32) for s in sequences])
            if sequences
            else np.zeros((0, 0))
        )
        t = None if times is None else np.concatenate([np.asarray(x, dtype=np.float64) for x in times])
        return cls(np.asarray(object_ids), values, offsets, labels, t)

    @property
    def n_objects(self) -> int:
        """Number of objects ``N``."""
        return int(self.object_ids.shape[0])

    @property
    def width(self) -> int:
        """Latent width ``D``."""
        return int(self.values.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """``(N,)`` int64 number of visits per object."""
        return np.diff(self.offsets)

    @property
    def has_times(self) -> bool:
        """Whether visit times are known."""
        return self.times is not None

    def sequence(self, i: int) -> np.ndarray:
        """``(T_i, D)`` latents of object ``i``."""
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def dt(self) -> np.ndarray:
        """``(sum T_i,)`` float32 days since the previous visit of the same object (0 for the first)."""
        if self.times is None:
            return np.zeros(len(self.values), dtype=np.float32)
        d = np.diff(self.times, prepend=self.times[:1])
        d[self.offsets[:-1]] = 0.0
        return np.maximum(d, 0.0).astype(np.float32)

    def subset(self, index) -> "LatentSet":
        """The objects ``index`` (integer array), in that order."""
        index = np.asarray(index, dtype=np.int64)
        starts, ends = self.offsets[index], self.offsets[index + 1]
        rows = (
            np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)])
            if len(index)
            else np.zeros(0, int)
        )
        offsets = np.concatenate([[0], np.cumsum(ends - starts)])
        return LatentSet(
            self.object_ids[index],
            self.values[rows],
            offsets,
            None if self.labels is None else self.labels[index],
            None if self.times is None else self.times[rows],
        )

    def select_columns(self, columns: slice) -> "LatentSet":
        """The same objects with only the latent columns ``columns``."""
        return dataclasses.replace(self, values=np.ascontiguousarray(self.values[:, columns]))


def parse_columns(spec: str | None, width: int | None = None) -> slice | None:
    """Parse a column range ``"A:B"`` (Python slice, ``":36"``, ``"36:"``, ``"0:72"``) or ``"K"``.

    Raises
    ------
    ValueError
        If the spec is malformed, empty, or (when ``width`` is given) reaches past it.
    """
    if spec is None or str(spec).strip() == "":
        return None
    text = str(spec).strip()
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            start = int(a) if a.strip() else 0
            stop = int(b) if b.strip() else None
        else:
            start = int(text)
            stop = start + 1
    except ValueError:
        raise ValueError(f"--columns: expected 'A:B' with integers (e.g. '0:36'), got {spec!r}.") from None
    if start < 0 or (stop is not None and stop <= start):
        raise ValueError(f"--columns {spec!r}: need 0 <= A < B.")
    if width is not None:
        end = width if stop is None else stop
        if end > width or start >= width:
            raise ValueError(f"--columns {spec!r} reaches past the latent width {width}.")
    return slice(start, stop)


@dataclasses.dataclass
class LoadReport:
    """What `read_latent_dir` found, with every problem counted and listed."""

    label_file: str = ""
    directory: str = ""
    label_real_is: int = 0
    n_label_rows: int = 0
    n_files: int = 0
    width: int | None = None
    columns: str | None = None
    missing_files: list[str] = dataclasses.field(default_factory=list)
    unlabelled_files: list[str] = dataclasses.field(default_factory=list)
    bad_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    duplicate_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    unreadable: dict[str, str] = dataclasses.field(default_factory=dict)
    empty: list[str] = dataclasses.field(default_factory=list)
    width_mismatch: dict[str, int] = dataclasses.field(default_factory=dict)
    nan_rows: dict[str, int] = dataclasses.field(default_factory=dict)
    emptied_by_nan: list[str] = dataclasses.field(default_factory=list)
    times_source: str = "none"
    times_missing: list[str] = dataclasses.field(default_factory=list)
    times_bad: dict[str, str] = dataclasses.field(default_factory=dict)
    times_reordered: list[str] = dataclasses.field(default_factory=list)
    n_used: int = 0
    n_real: int = 0
    n_bogus: int = 0

    @property
    def n_excluded(self) -> int:
        """Labelled objects not used (no file, unreadable, empty, wrong width, all-NaN, bad label)."""
        return (
            len(self.missing_files)
            + len(self.bad_labels)
            + len(self.unreadable)
            + len(self.empty)
            + len(self.width_mismatch)
            + len(self.emptied_by_nan)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return dataclasses.asdict(self)

    def lines(self, max_ids: int = 10) -> list[str]:
        """A human summary; each problem with its count and up to ``max_ids`` ids."""

        def ids(items) -> str:
            items = list(items)
            shown = ", ".join(str(i) for i in items[:max_ids])
            return shown + (f", ... ({len(items) - max_ids} more)" if len(items) > max_ids else "")

        real_word = (
            "0 = real, 1 = artifact (RB_ZTF convention)"
            if self.label_real_is == 0
            else ("1 = real, 0 = artifact")
        )
        out = [
            f"Labels: {self.label_file}: {self.n_label_rows} rows, read as {real_word}"
            + (
                "; use --label-real-is 1 if your file means the opposite." if self.label_real_is == 0 else "."
            ),
            f"Latents: {self.directory}: {self.n_files} .npy files, width {self.width}"
            + (f", columns {self.columns}" if self.columns else ", all columns")
            + ".",
        ]
        problems = [
            ("labelled objects with no latent file (excluded)", self.missing_files),
            ("latent files with no label (ignored)", self.unlabelled_files),
            (
                "rows with a label that is not 0/1 (excluded)",
                [f"{k} ({v})" for k, v in self.bad_labels.items()],
            ),
            ("duplicate ids in the label file", [f"{k} ({v})" for k, v in self.duplicate_labels.items()]),
            (
                "unreadable or not (T, D) arrays (excluded)",
                [f"{k} ({v})" for k, v in self.unreadable.items()],
            ),
            ("empty arrays (excluded)", self.empty),
            (
                f"arrays whose width differs from {self.width} (excluded)",
                [f"{k} (width {v})" for k, v in self.width_mismatch.items()],
            ),
            ("objects left with no frame after dropping NaN rows (excluded)", self.emptied_by_nan),
            ("objects without times (dt = 0)" if self.times_source != "none" else "", self.times_missing),
            (
                "objects whose times do not fit their frames (dt = 0)",
                [f"{k} ({v})" for k, v in self.times_bad.items()],
            ),
            ("objects whose frames were not in time order (sorted by time)", self.times_reordered),
        ]
        for what, items in problems:
            if items:
                out.append(f"  {len(items)} {what}: {ids(items)}")
        if self.nan_rows:
            total = sum(self.nan_rows.values())
            out.append(
                f"  WARNING: dropped {total} frames with NaN/inf latents in {len(self.nan_rows)} objects: "
                + ids(f"{k} ({v})" for k, v in self.nan_rows.items())
            )
        if self.times_source == "none":
            out.append(
                "  No visit times found (no <id>.times.npy, no times table): the dt feature is 0 everywhere."
            )
        else:
            out.append(f"  Visit times from {self.times_source}.")
        out.append(
            f"Using {self.n_used} objects ({self.n_real} real, {self.n_bogus} artifacts); "
            f"{self.n_excluded} labelled objects excluded."
        )
        return out


def _read_labels(path: str, label_real_is: int, report: LoadReport) -> dict[str, int]:
    import pandas as pd

    if label_real_is not in (0, 1):
        raise ValueError(f"label_real_is must be 0 or 1, got {label_real_is!r}.")
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"Label file {path} does not exist.") from None
    cols = {c.strip().lower(): c for c in table.columns}
    missing = [c for c in ("object_id", "label") if c not in cols]
    if missing:
        raise ValueError(
            f"Label file {path}: missing column(s) {missing}; found {list(table.columns)}. "
            "Expected a CSV with header 'object_id,label'."
        )
    ids = table[cols["object_id"]].astype(str).str.strip().to_numpy()
    raw = table[cols["label"]].astype(str).str.strip().str.lower().to_numpy()
    report.n_label_rows = len(ids)
    values: dict[str, list[str]] = collections.defaultdict(list)
    for oid, value in zip(ids, raw):
        values[oid].append(value)
    labels: dict[str, int] = {}
    for oid, vals in values.items():
        parsed = {_LABEL_VALUES.get(v) for v in vals}
        if None in parsed:
            report.bad_labels[oid] = "label " + "/".join(repr(v) for v in vals if v not in _LABEL_VALUES)
            continue
        if len(vals) > 1:
            report.duplicate_labels[oid] = f"{len(vals)} rows, " + (
                "same label, kept once" if len(parsed) == 1 else "conflicting labels, excluded"
            )
            if len(parsed) > 1:
                report.bad_labels[oid] = "conflicting duplicate labels"
                continue
        labels[oid] = REAL if parsed.pop() == label_real_is else BOGUS
    return labels


def _scan_dir(directory: str) -> tuple[dict[str, str], dict[str, str]]:
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Latent directory {directory} does not exist or is not a directory.")
    latents, times = {}, {}
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.endswith(TIMES_SUFFIX):
            times[name[: -len(TIMES_SUFFIX)]] = path
        elif name.endswith(".npy"):
            latents[name[:-4]] = path
    return latents, times


def _read_time_table(path: str) -> dict[str, np.ndarray]:
    import pandas as pd

    table = (
        pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path, dtype={"object_id": str})
    )
    cols = {c.strip().lower(): c for c in table.columns}
    tcol = cols.get("time", cols.get("mjd"))
    if "object_id" not in cols or tcol is None:
        raise ValueError(
            f"Times table {path}: needs columns 'object_id' and 'time' (or 'mjd'); "
            f"found {list(table.columns)}."
        )
    ids = table[cols["object_id"]].astype(str).str.strip().to_numpy()
    t = pd.to_numeric(table[tcol], errors="coerce").to_numpy(dtype=np.float64)
    order = np.argsort(ids, kind="stable")
    ids, t = ids[order], t[order]
    uniq, starts = np.unique(ids, return_index=True)
    bounds = np.r_[starts, len(ids)]
    return {u: t[bounds[k] : bounds[k + 1]] for k, u in enumerate(uniq)}


def read_latent_dir(
    directory: str,
    label_file: str,
    columns: str | slice | None = None,
    label_real_is: int = 0,
    times_file: str | None = None,
) -> tuple[LatentSet, LoadReport]:
    """Read ``DIR/<object_id>.npy`` latents and their labels, reporting every problem.

    Parameters
    ----------
    directory : `str`
        Directory of ``<object_id>.npy`` arrays ``(T, D)`` (visits in time order) and
        optional ``<object_id>.times.npy`` ``(T,)`` times in days.
    label_file : `str`
        CSV with columns ``object_id`` and ``label``.
    columns : `str` or `slice`, optional
        Latent columns to use, e.g. ``"0:36"`` (VAE means) of a 72-wide array.
    label_real_is : `int`
        The label value that means real: 0 for RB_ZTF files (1 = artifact), 1 otherwise.
    times_file : `str`, optional
        A table (CSV or Parquet) with ``object_id`` and ``time``/``mjd`` columns, one
        row per visit in frame order. By default ``DIR/times.csv`` or
        ``DIR/times.parquet`` is used if present, else per-object time files.

    Returns
    -------
    latents : `LatentSet`
        The usable labelled objects, sorted by object id; labels 1 = real.
    report : `LoadReport`
        Counts and ids of everything excluded or changed.

    Raises
    ------
    ValueError
        If nothing usable remains, or the label file or column spec is malformed.
    """
    report = LoadReport(
        label_file=str(label_file), directory=str(directory), label_real_is=int(label_real_is)
    )
    labels = _read_labels(label_file, int(label_real_is), report)
    files, time_files = _scan_dir(directory)
    report.n_files = len(files)
    report.missing_files = sorted(set(labels) - set(files))
    report.unlabelled_files = sorted(set(files) - set(labels) - set(report.bad_labels))

    arrays: dict[str, np.ndarray] = {}
    for oid in sorted(set(labels) & set(files)):
        try:
            a = np.load(files[oid], allow_pickle=False)
        except Exception as exc:  # any unreadable file is reported, not fatal
            report.unreadable[oid] = f"{type(exc).__name__}: {exc}"[:200]
            continue
        if a.dtype.kind not in "fiu":
            report.unreadable[oid] = f"dtype {a.dtype} is not numeric"
            continue
        if a.ndim != 2:
            if a.size == 0:
                report.empty.append(oid)
            else:
                report.unreadable[oid] = f"shape {a.shape} is not (T, D)"
            continue
        if a.shape[0] == 0 or a.shape[1] == 0:
            report.empty.append(oid)
            continue
        arrays[oid] = a
    if not arrays:
        report.n_used = 0
        raise ValueError("No usable latent arrays:\n" + "\n".join(report.lines()))

    widths = collections.Counter(a.shape[1] for a in arrays.values())
    width = widths.most_common(1)[0][0]
    report.width = int(width)
    for oid in [k for k, a in arrays.items() if a.shape[1] != width]:
        report.width_mismatch[oid] = int(arrays.pop(oid).shape[1])
    col = columns if isinstance(columns, slice) or columns is None else parse_columns(columns, width)
    if isinstance(columns, slice):
        parse_columns(f"{columns.start or 0}:{'' if columns.stop is None else columns.stop}", width)
    report.columns = None if col is None else f"{col.start or 0}:{width if col.stop is None else col.stop}"

    # Times: a table, else per-object files, else none.
    table_path = times_file
    if table_path is None:
        for name in _TIME_TABLE_NAMES:
            if os.path.exists(os.path.join(directory, name)):
                table_path = os.path.join(directory, name)
                break
    time_map: dict[str, np.ndarray] = {}
    if table_path is not None:
        time_map = _read_time_table(table_path)
        report.times_source = f"table {table_path}"
    elif any(oid in time_files for oid in arrays):
        report.times_source = f"per-object {TIMES_SUFFIX} files"
        for oid in arrays:
            if oid in time_files:
                try:
                    time_map[oid] = np.load(time_files[oid], allow_pickle=False).astype(np.float64)
                except Exception as exc:
                    report.times_bad[oid] = f"unreadable: {type(exc).__name__}"
    use_times = report.times_source != "none"

    ids, seqs, labs, times = [], [], [], []
    for oid in sorted(arrays):
        a = np.asarray(arrays[oid], dtype=np.float32)
        if col is not None:
            a = a[:, col]
        t = None
        if use_times:
            t = time_map.get(oid)
            if t is None:
                pass
            elif t.ndim != 1 or len(t) != len(a):
                report.times_bad[oid] = f"{np.shape(t)} times for {len(a)} frames"
                t = None
            elif not np.all(np.isfinite(t)):
                report.times_bad[oid] = "non-finite times"
                t = None
        good = np.all(np.isfinite(a), axis=1)
        if not np.all(good):
            report.nan_rows[oid] = int((~good).sum())
            a = a[good]
            t = None if t is None else t[good]
            if len(a) == 0:
                report.emptied_by_nan.append(oid)
                continue
        if t is not None and np.any(np.diff(t) < 0):
            order = np.argsort(t, kind="stable")
            a, t = a[order], t[order]
            report.times_reordered.append(oid)
        if use_times and t is None:
            if oid not in report.times_bad:
                report.times_missing.append(oid)
            # dt = 0 for an object without usable times: constant times do exactly that.
            t = np.zeros(len(a))
        ids.append(oid)
        seqs.append(a)
        labs.append(labels[oid])
        times.append(t)
    if not ids:
        raise ValueError("No usable objects remain:\n" + "\n".join(report.lines()))
    labs_arr = np.asarray(labs, dtype=np.int8)
    report.n_used = len(ids)
    report.n_real = int((labs_arr == REAL).sum())
    report.n_bogus = int((labs_arr == BOGUS).sum())
    latents = LatentSet.from_sequences(ids, seqs, labs_arr, times if use_times else None)
    return latents, report
