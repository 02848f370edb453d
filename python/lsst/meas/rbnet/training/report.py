# This file is part of meas_rbnet.
"""Evaluation reports: one JSON-serialisable metrics dict per model, and tables of them.

`evaluate_scores` is the single definition of "the metrics" used by training
(validation), cross-validation, the ``rbnet train`` command and the accuracy
benchmark, so their figures are comparable. The tables render with rich (for
the terminal) or as Markdown (for result files and docs).
"""

__all__ = [
    "SNR_BINS",
    "evaluate_scores",
    "metrics_table",
    "class_table",
    "markdown_metrics_table",
    "markdown_class_table",
    "summary_rows",
]

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import metrics as M

#: Edges of the SNR bins of the completeness-versus-SNR table.
SNR_BINS: tuple[float, ...] = (0.0, 5.0, 6.0, 8.0, 12.0, 20.0, 50.0, math.inf)


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def evaluate_scores(
    probabilities,
    labels,
    *,
    classes=None,
    snr=None,
    thresholds: Mapping[str, float] | None = None,
    snr_min: float | None = 6.0,
    purities=(0.95, 0.99),
    n_bins: int = 15,
) -> dict[str, Any]:
    """All metrics of calibrated scores, as a JSON-serialisable dict.

    Parameters
    ----------
    probabilities : array-like, shape ``(N,)``
        Calibrated probabilities of being real, in [0, 1], all finite.
    labels : array-like, shape ``(N,)``
        1 = real, 0 = bogus.
    classes : array-like of `str`, shape ``(N,)``, optional
        Fine class of each source, for the per-class tables.
    snr : array-like, shape ``(N,)``, optional
        Signal-to-noise, for the ``*_snr`` entries (sources with ``snr >= snr_min``).
    thresholds : `dict` [`str`, `float`], optional
        Named thresholds to report purity/completeness at; ``{"default": 0.5}``
        by default. ``"default"`` is also the threshold of accuracy, F1 and the
        per-class fractions.
    snr_min : `float` or `None`
    purities : sequence of `float`
        Purities of the ``completeness_at_purity`` entries.
    n_bins : `int`
        Bins of the expected calibration error.

    Returns
    -------
    metrics : `dict`
        Keys: ``n``, ``n_real``, ``n_bogus``, ``roc_auc``, ``accuracy``, ``f1``,
        ``ece``, ``log_loss``, ``brier``, ``completeness_at_purity``
        (``{"0.95": c, ...}``), ``thresholds`` (``{name: {threshold, purity,
        completeness, purity_snr, completeness_snr}}``); with ``snr``:
        ``snr_min``, ``n_snr``, ``roc_auc_snr``, ``completeness_at_purity_snr``,
        ``completeness_by_snr``; with ``classes``: ``per_class`` and (with
        ``snr``) ``per_class_snr`` (`metrics.class_fractions` at the default
        threshold), ``confusion`` (``{"names", "counts"}``).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    thresholds = dict(thresholds or {"default": 0.5})
    default = thresholds.get("default", 0.5)
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_real": int(y.sum()),
        "n_bogus": int(y.size - y.sum()),
        "roc_auc": M.roc_auc(p, y),
        "accuracy": M.accuracy(p, y, default),
        "f1": M.f1(p, y, default),
        "ece": M.expected_calibration_error(p, y, n_bins),
        "log_loss": M.log_loss(p, y),
        "brier": M.brier_score(p, y),
        "completeness_at_purity": {f"{q:g}": M.completeness_at_purity(p, y, q) for q in purities},
    }
    mask = None
    if snr is not None and snr_min is not None:
        s = np.asarray(snr, dtype=np.float64)
        if s.shape != y.shape:
            raise ValueError(f"snr has shape {s.shape}; labels has {y.shape}.")
        mask = s >= snr_min
        out["snr_min"] = float(snr_min)
        out["n_snr"] = int(mask.sum())
        ym = y[mask]
        both = ym.size > 0 and ym.min() != ym.max()
        out["roc_auc_snr"] = M.roc_auc(p[mask], ym) if both else None
        out["completeness_at_purity_snr"] = {
            f"{q:g}": (M.completeness_at_purity(p, y, q, mask=mask) if np.any(ym == 1) else None)
            for q in purities
        }
        rows = []
        for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
            sel = (s >= lo) & (s < hi) & (y == 1)
            n = int(sel.sum())
            rows.append(
                {
                    "snr_lo": lo,
                    "snr_hi": None if math.isinf(hi) else hi,
                    "n_real": n,
                    "completeness": float(np.mean(p[sel] >= default)) if n else None,
                }
            )
        out["completeness_by_snr"] = rows
    table = {}
    for name, thr in thresholds.items():
        pur, comp = M.purity_completeness(p, y, thr)
        entry = {"threshold": float(thr), "purity": _finite(pur), "completeness": _finite(comp)}
        if mask is not None:
            pur_s, comp_s = M.purity_completeness(p, y, thr, mask=mask)
            entry["purity_snr"] = _finite(pur_s)
            entry["completeness_snr"] = _finite(comp_s)
        table[name] = entry
    out["thresholds"] = table
    if classes is not None:
        c = np.asarray(classes).astype(str)
        out["per_class"] = M.class_fractions(p, y, c, default)
        if mask is not None and mask.any():
            out["per_class_snr"] = M.class_fractions(p, y, c, default, mask=mask)
        names, counts = M.confusion_matrix(p, y, default, classes=c)
        out["confusion"] = {
            "names": names,
            "columns": ["predicted_bogus", "predicted_real"],
            "counts": counts.tolist(),
        }
    return out


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{100 * v:.2f}%" if pct else f"{v:.4f}"
    return str(v)


def summary_rows(m: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, formatted value) rows of the headline metrics of one `evaluate_scores` dict.

    "C @ P99%" is the completeness at purity 99%; "P / C" are purity and completeness.
    """
    snr = f"SNR>={m['snr_min']:g}" if "snr_min" in m else None
    rows = [
        ("sources (real/bogus)", f"{m['n']} ({m['n_real']}/{m['n_bogus']})"),
        ("ROC-AUC", _fmt(m["roc_auc"])),
    ]
    if m.get("roc_auc_snr") is not None:
        rows.append((f"ROC-AUC, {snr}", _fmt(m["roc_auc_snr"])))
    thr = m["thresholds"].get("default", {}).get("threshold", 0.5)
    rows += [
        (f"accuracy @ {thr:.3g}", _fmt(m["accuracy"], pct=True)),
        (f"F1 @ {thr:.3g}", _fmt(m["f1"])),
        ("ECE (15 bins)", _fmt(m["ece"])),
        ("log loss", _fmt(m["log_loss"])),
    ]
    for q, c in m["completeness_at_purity"].items():
        rows.append((f"C @ P{float(q):.0%}", _fmt(c, pct=True)))
    for q, c in (m.get("completeness_at_purity_snr") or {}).items():
        rows.append((f"C @ P{float(q):.0%}, {snr}", _fmt(c, pct=True)))
    for name, t in m["thresholds"].items():
        if "purity_snr" in t and name != "default":
            pur, comp, where = t["purity_snr"], t["completeness_snr"], f", {snr}"
        else:
            pur, comp, where = t["purity"], t["completeness"], ""
        label = f"{name} >= {t['threshold']:.4g}{where}: P / C"
        rows.append((label, f"{_fmt(pur, True)} / {_fmt(comp, True)}"))
    return rows


def metrics_table(columns: Mapping[str, Mapping[str, Any]], title: str = "Metrics"):
    """A rich `Table` of headline metrics, one column per model (e.g. CNN and baseline).

    Parameters
    ----------
    columns : `dict` [`str`, `dict`]
        Model name -> `evaluate_scores` dict. Rows are taken from the first model;
        a row missing from another model shows "-".
    """
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    names = list(columns)
    for name in names:
        table.add_column(name, justify="right")
    rows = {name: dict(summary_rows(m)) for name, m in columns.items()}
    labels = list(dict.fromkeys(label for r in rows.values() for label in r))
    for label in labels:
        table.add_row(label, *(rows[n].get(label, "-") for n in names))
    return table


def _class_rows(columns: Mapping[str, Mapping[str, Any]], key: str) -> tuple[list[str], dict]:
    per = {name: (m.get(key) or {}) for name, m in columns.items()}
    classes = list(dict.fromkeys(c for d in per.values() for c in d))
    return classes, per


def class_table(columns: Mapping[str, Mapping[str, Any]], key: str = "per_class", title: str | None = None):
    """A rich `Table` of the fraction of each class scored real at the default threshold.

    For a real class it is its completeness; for an artifact class the fraction
    that leaks into the real selection.
    """
    from rich.table import Table

    classes, per = _class_rows(columns, key)
    table = Table(title=title or "Fraction scored real at the default threshold, per class")
    table.add_column("class")
    table.add_column("label")
    table.add_column("n", justify="right")
    for name in per:
        table.add_column(name, justify="right")
    for c in classes:
        first = next(d[c] for d in per.values() if c in d)
        table.add_row(
            c,
            "real" if first["label"] == 1 else "bogus",
            str(first["n"]),
            *(_fmt(per[n][c]["fraction_above"], pct=True) if c in per[n] else "-" for n in per),
        )
    return table


def markdown_metrics_table(columns: Mapping[str, Mapping[str, Any]]) -> str:
    """The rows of `metrics_table` as a Markdown table."""
    names = list(columns)
    rows = {name: dict(summary_rows(m)) for name, m in columns.items()}
    labels = list(dict.fromkeys(label for r in rows.values() for label in r))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(rows[n].get(label, "-") for n in names) + " |")
    return "\n".join(lines)


def markdown_class_table(columns: Mapping[str, Mapping[str, Any]], key: str = "per_class") -> str:
    """The rows of `class_table` as a Markdown table."""
    classes, per = _class_rows(columns, key)
    names = list(per)
    lines = [
        "| class | label | n | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for c in classes:
        first = next(d[c] for d in per.values() if c in d)
        cells = [_fmt(per[n][c]["fraction_above"], pct=True) if c in per[n] else "-" for n in names]
        kind = "real" if first["label"] == 1 else "bogus"
        lines.append(f"| {c} | {kind} | {first['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
