# This file is part of meas_rbnet.
"""Scoring alert batches with a triplet model package, one output row per alert.

The model's input contract decides what the network sees: `Scorer.score_stamps`
crops or pads each survey's cutouts about their centre pixel to the model's
stamp size (ZTF's 63 x 63 to the default model's 31 x 31; Rubin's 30 x 30
padded to 31 x 31, flagged ``RESIZED`` in ``reliabilityFlags``), picks the
model's channels, and normalises per stamp and channel (unit-free, so DN and nJy
alike). Alerts whose needed cutouts are unusable are not given to the network.

Output columns (`output_columns`), one row per alert in input order:

``alertId`` (int64), ``objectId`` (str), ``survey`` (str), ``score`` (float32,
calibrated probability of real, NaN if not scored), ``flags`` (int32
`AlertFlag`), ``flagNames`` (the set bits' names joined by ``|``),
``reliabilityFlags`` (int32 `lsst.meas.rbnet.flags.SourceFlag` bits of the
scorer), ``modelVersion`` (str), ``source`` (str, the input file), then the
surveys' own scores, ``<survey>_<field>`` float32 (``ztf_drb``, ``ztf_rb``,
``rubin_reliability``).
"""

from __future__ import annotations

__all__ = [
    "AlertScoreSummary",
    "BASE_COLUMNS",
    "compare_with_survey",
    "conform",
    "iter_scored_batches",
    "output_columns",
    "score_alerts",
    "score_batch",
]

import collections
import dataclasses
import math
import os
import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np
from astropy.table import Table, vstack

from ..flags import SourceFlag
from .batch import DEFAULT_ALERT_BATCH_SIZE, AlertBatch, batches_from_raw
from .flags import RECORD_PROBLEMS, AlertFlag, describe_alert_flags
from .surveys import SURVEYS, survey_spec

#: Columns of every output table, with their numpy dtypes (strings as ``str``).
BASE_COLUMNS: tuple[tuple[str, type | str], ...] = (
    ("alertId", "int64"),
    ("objectId", str),
    ("survey", str),
    ("score", "float32"),
    ("flags", "int32"),
    ("flagNames", str),
    ("reliabilityFlags", "int32"),
    ("modelVersion", str),
    ("source", str),
)

_NOT_SCORED = np.int32(AlertFlag.NOT_SCORED)


def output_columns(surveys: Iterable[str]) -> list[tuple[str, type | str]]:
    """`BASE_COLUMNS` plus the score columns of these surveys (float32), in a fixed order."""
    cols = list(BASE_COLUMNS)
    names = sorted(set(surveys) - {""}, key=lambda s: (s not in SURVEYS, s))
    for s in names:
        cols.extend((c, "float32") for c in survey_spec(s, "ztf").score_columns)
    return cols


def _flag_names(flags: np.ndarray) -> np.ndarray:
    values, inverse = np.unique(flags, return_inverse=True)
    names = np.array(["|".join(describe_alert_flags(int(v))) for v in values] or [""], dtype=str)
    return names[inverse] if flags.size else np.zeros(0, dtype=str)


def score_batch(batch: AlertBatch, scorer) -> Table:
    """Score one batch; the output table has one row per alert of the batch.

    Parameters
    ----------
    batch : `AlertBatch`
    scorer : `lsst.meas.rbnet.scoring.Scorer`
        E.g. from `lsst.meas.rbnet.scoring.load_scorer` (cached per process).

    Returns
    -------
    table : `astropy.table.Table`
        The columns of `BASE_COLUMNS` and the batch's survey score columns.
    """
    n = len(batch)
    flags = batch.flags.astype(np.int32, copy=True)
    score = np.full(n, np.nan, dtype=np.float32)
    rflags = np.zeros(n, dtype=np.int32)
    needed = list(scorer.contract.channel_indices)
    usable = ((flags & np.int32(RECORD_PROBLEMS)) == 0) & batch.cutout_ok[:, needed].all(axis=1)
    if usable.any() and batch.stamps.shape[-1]:
        idx = np.flatnonzero(usable)
        stamps = batch.stamps if idx.size == n else batch.stamps[idx]
        result = scorer.score_stamps(stamps)
        score[idx] = result.reliability
        rflags[idx] = result.flags
        empty = (result.flags & np.int32(SourceFlag.NO_VALID_PIXELS)) != 0
        flags[idx[empty]] |= np.int32(AlertFlag.NO_VALID_PIXELS)
    flags[~np.isfinite(score)] |= _NOT_SCORED
    out = Table(
        {
            "alertId": np.asarray(batch.table["alertId"]),
            "objectId": np.asarray(batch.table["objectId"]),
            "survey": np.asarray(batch.table["survey"]),
            "score": score,
            "flags": flags,
            "flagNames": _flag_names(flags),
            "reliabilityFlags": rflags,
            "modelVersion": np.full(n, scorer.version),
            "source": np.asarray(batch.table["source"]),
        },
        copy=False,
    )
    if batch.survey:
        for name in survey_spec(batch.survey, "ztf").score_columns:
            if name in batch.table.colnames:
                out[name] = batch.table[name]
    return out


@dataclasses.dataclass
class AlertScoreSummary:
    """Running totals of a scoring run.

    Attributes
    ----------
    n_alerts : `int`
        Rows written (one per alert).
    n_scored : `int`
        Rows with a finite score.
    flag_counts : `collections.Counter`
        Rows per `AlertFlag` bit name.
    pairs : `dict` [`str`, `list`]
        Per survey, the ``(our scores, survey scores)`` arrays of each batch, for
        `compare_with_survey` (8 bytes per alert; no cutouts).
    """

    n_alerts: int = 0
    n_scored: int = 0
    flag_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    pairs: dict = dataclasses.field(default_factory=dict)

    def add(self, table: Table) -> None:
        """Count one output table."""
        flags = np.asarray(table["flags"])
        score = np.asarray(table["score"])
        self.n_alerts += len(table)
        self.n_scored += int(np.isfinite(score).sum())
        values, counts = np.unique(flags, return_counts=True)
        for v, c in zip(values, counts):
            for name in describe_alert_flags(int(v)):
                self.flag_counts[name] += int(c)
        surveys = np.asarray(table["survey"])
        for s in np.unique(surveys):
            if not s:
                continue
            spec = survey_spec(str(s), "ztf")
            rows = surveys == s
            theirs = np.full(int(rows.sum()), np.nan, dtype=np.float32)
            # The survey's primary score: the first of its score fields that is finite, row by row.
            for col in reversed(spec.score_columns):
                if col in table.colnames:
                    v = np.asarray(table[col])[rows]
                    theirs = np.where(np.isfinite(v), v, theirs)
            self.pairs.setdefault(str(s), []).append((score[rows].astype(np.float32), theirs))


def compare_with_survey(summary: AlertScoreSummary, threshold: float = 0.5) -> list[dict]:
    """ROC-AUC and agreement at ``threshold`` of our scores against each survey's own score.

    The survey's score thresholded at ``threshold`` is taken as the label (it is
    the survey's decision, not the truth). Only alerts with both scores finite count.

    Returns
    -------
    rows : `list` [`dict`]
        Per survey: ``survey``, ``n`` (alerts compared), ``survey_real``
        (survey score >= threshold), ``roc_auc`` (NaN unless both classes are
        present), ``agreement`` (fraction where both sides take the same decision).
    """
    from ..training.metrics import roc_auc

    rows = []
    for survey, parts in summary.pairs.items():
        ours = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.float32)
        theirs = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
        both = np.isfinite(ours) & np.isfinite(theirs)
        ours, theirs = ours[both], theirs[both]
        labels = (theirs >= threshold).astype(np.int64)
        n_real = int(labels.sum())
        auc = roc_auc(ours, labels) if 0 < n_real < labels.size else math.nan
        agree = float(np.mean((ours >= threshold) == (theirs >= threshold))) if labels.size else math.nan
        rows.append(
            {
                "survey": survey,
                "n": int(labels.size),
                "survey_real": n_real,
                "roc_auc": auc,
                "agreement": agree,
            }
        )
    return rows


def iter_scored_batches(
    paths,
    model=None,
    *,
    device: str = "auto",
    batch_size: int = DEFAULT_ALERT_BATCH_SIZE,
    limit: int | None = None,
    symmetry: bool = False,
    lean_fits: bool = True,
    cutout_sizes: dict[str, int] | None = None,
    files: list[tuple[str, bool]] | None = None,
    num_threads: int | None = None,
    prefetch: bool = True,
) -> Iterator[tuple[AlertBatch, Table]]:
    """Read and score alerts batch by batch, streaming.

    Parameters
    ----------
    paths : path or iterable of paths
        As in `iter_alert_batches`.
    model : path, `lsst.meas.rbnet.package.ModelPackage` or None
        Triplet model package (default: the shipped default model).
    device, symmetry
        As in `lsst.meas.rbnet.score_triplets`.
    batch_size, limit, lean_fits, cutout_sizes
        As in `iter_alert_batches`.
    files : `list` [`tuple` [`str`, `bool`]], optional
        ``sources.expand_inputs(paths)`` if already made.
    num_threads : `int`, optional
        Torch threads (process-wide; see `lsst.meas.rbnet.scoring.Scorer`).
    prefetch : `bool`
        Decode the next batch in a background thread while the current one is
        scored (memory: two batches instead of one).

    Yields
    ------
    batch : `AlertBatch`
    scores : `astropy.table.Table`
        The batch's output rows (see the module docs).
    """
    from ..scoring import load_scorer
    from .sources import expand_inputs, iter_raw_alerts

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if files is None:
        files = expand_inputs(paths)
    scorer = load_scorer(
        model, device=device, batch_size=batch_size, symmetry=symmetry, num_threads=num_threads
    )
    raws = iter_raw_alerts(paths, batch_size=batch_size, files=files)
    batches = batches_from_raw(raws, batch_size, limit, lean_fits, cutout_sizes)
    for batch in _prefetched(batches) if prefetch else batches:
        yield batch, score_batch(batch, scorer)


def _prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """``items``, produced by a background thread up to ``depth`` items ahead.

    The network runs with the GIL released, so decoding the next batch (Python,
    zlib, numpy) in this thread overlaps with scoring the current one: on two
    cores the run takes about the longer of the two instead of their sum.
    Memory: ``depth + 1`` batches at most. An exception of the producer is
    raised in the consumer; closing the consumer stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as err:  # forwarded to the consumer, which re-raises it
            q.put((done, err))

    thread = threading.Thread(target=produce, name="rbnet-alert-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()  # unblock a producer waiting to put
            except queue.Empty:
                pass
            thread.join(timeout=0.1)


def score_alerts(paths, model=None, **kwargs) -> Table:
    """Score every alert of the inputs and return one table (one row per alert, in input order).

    A convenience for small inputs: the output rows are kept in memory (no
    cutouts). For large inputs use `iter_scored_batches` or ``rbnet score-alerts``.

    Parameters
    ----------
    paths, model, **kwargs
        As in `iter_scored_batches`.

    Returns
    -------
    table : `astropy.table.Table`
        The columns of `output_columns` for the surveys met.
    """
    tables = [t for _, t in iter_scored_batches(paths, model, **kwargs)]
    surveys = set()
    for t in tables:
        surveys.update(str(s) for s in np.unique(np.asarray(t["survey"])))
    return conform(
        vstack(tables, metadata_conflicts="silent") if tables else Table(), output_columns(surveys)
    )


def conform(table: Table, columns: list[tuple[str, type | str]]) -> Table:
    """``table`` with exactly ``columns`` in that order: missing float columns NaN, strings empty."""
    n = len(table)
    out = Table()
    for name, dtype in columns:
        if name in table.colnames:
            col = np.asarray(table[name])
            if dtype is str:
                col = col.astype(str)
            else:
                col = col.astype(dtype, copy=False)
            if np.ma.is_masked(table[name]):
                filled = np.nan if np.dtype(dtype if dtype is not str else "U1").kind == "f" else None
                if filled is not None:
                    col = np.where(np.ma.getmaskarray(table[name]), filled, col).astype(dtype)
            out[name] = col
        elif dtype is str:
            out[name] = np.zeros(n, dtype="U1")
        elif np.dtype(dtype).kind == "f":
            out[name] = np.full(n, np.nan, dtype=dtype)
        else:
            out[name] = np.full(n, -1, dtype=dtype)
    return out
