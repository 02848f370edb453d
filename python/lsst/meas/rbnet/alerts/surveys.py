# This file is part of meas_rbnet.
"""What each survey's alerts look like: cutout size and units, identifiers, scores.

Two record layouts are known:

``ztf``
    ZTF alert packets (``ztf.alert`` schema, and broker Parquet files with the
    same records as columns, e.g. Fink's): ``candid``, ``objectId``, the
    ``candidate`` record (``rb``, ``drb``, ``isdiffpos``, ``xpos``, ``ypos``...)
    and ``cutoutScience`` / ``cutoutTemplate`` / ``cutoutDifference`` records
    whose ``stampData`` is a gzip-compressed FITS image, 63 x 63 pixels in DN.
    Alerts of other surveys with this layout (a ``pgir.alert`` schema, say) are
    read the same way under their own survey name.
``rubin``
    Rubin alert packets (``lsst.vM_m.alert`` schemas of ``lsst-alert-packet``):
    ``diaSource`` (``diaSourceId``, ``diaObjectId``, ``reliability``, ``x``,
    ``y``) and ``cutoutScience`` / ``cutoutTemplate`` / ``cutoutDifference``
    bytes, each a FITS file whose primary HDU is the image in nJy, 30 x 30
    pixels (larger for extended sources; schemas before 6.1 have no science
    cutout).
"""

from __future__ import annotations

__all__ = [
    "CUTOUT_FIELDS",
    "SURVEYS",
    "WANTED",
    "RawAlert",
    "SurveySpec",
    "failure",
    "layout_of_fields",
    "survey_spec",
    "to_raw_alert",
]

import dataclasses
import math
from typing import Any, NamedTuple

from ..constants import CHANNEL_ORDER

#: Alert field of each channel of `CHANNEL_ORDER`.
CUTOUT_FIELDS: dict[str, str] = {
    "difference": "cutoutDifference",
    "science": "cutoutScience",
    "template": "cutoutTemplate",
}


@dataclasses.dataclass(frozen=True)
class SurveySpec:
    """A survey's alert cutouts and scores.

    Attributes
    ----------
    name : `str`
        Survey name (the ``survey`` column).
    layout : `str`
        Record layout, ``"ztf"`` or ``"rubin"``.
    cutout_size : `int`
        Side (pixels) of the survey's cutouts; smaller ones are NaN-padded to it,
        larger ones cropped about their centre pixel.
    unit : `str`
        Pixel unit of the cutouts.
    score_fields : `tuple` [`str`, ...]
        The survey's own real/bogus scores, as named in its records.
    """

    name: str
    layout: str
    cutout_size: int
    unit: str
    score_fields: tuple[str, ...]

    @property
    def score_columns(self) -> tuple[str, ...]:
        """Output column names of the survey's scores: ``<survey>_<field>``."""
        return tuple(f"{self.name}_{f}" for f in self.score_fields)

    def primary_score(self, scores: dict[str, Any]) -> float:
        """The score to compare with: the first of `score_fields` that is finite (ZTF: drb, else rb)."""
        for f in self.score_fields:
            v = scores.get(f)
            if v is not None and math.isfinite(v):
                return float(v)
        return math.nan


#: Known surveys. ZTF's ``drb`` (braai CNN, from 2019) is preferred over ``rb`` (random forest).
SURVEYS: dict[str, SurveySpec] = {
    "ztf": SurveySpec("ztf", "ztf", 63, "DN", ("drb", "rb")),
    "rubin": SurveySpec("rubin", "rubin", 30, "nJy", ("reliability",)),
}


def survey_spec(name: str, layout: str | None = None) -> SurveySpec:
    """The spec of survey ``name``; an unknown name with a known layout copies that layout's spec."""
    spec = SURVEYS.get(name)
    if spec is not None:
        return spec
    if layout is None or layout not in SURVEYS:
        raise KeyError(f"unknown survey {name!r} (known: {sorted(SURVEYS)})")
    return dataclasses.replace(SURVEYS[layout], name=name)


def layout_of_fields(names) -> str | None:
    """Layout (``"ztf"`` or ``"rubin"``) of a record or table with these top-level field names."""
    names = set(names)
    has_cutout = bool(names & set(CUTOUT_FIELDS.values()))
    if "candidate" in names and has_cutout:
        return "ztf"
    if "diaSource" in names and has_cutout:
        return "rubin"
    return None


#: Fields read from each layout (a projection: everything else is skipped while decoding).
WANTED: dict[str, dict[str, Any]] = {
    "ztf": {
        "objectId": True,
        "candid": True,
        "candidate": {"candid": True, "rb": True, "drb": True, "isdiffpos": True, "xpos": True, "ypos": True},
        **{f: {"stampData": True} for f in CUTOUT_FIELDS.values()},
    },
    "rubin": {
        "alertId": True,
        "diaSourceId": True,
        "diaSource": {"diaSourceId": True, "diaObjectId": True, "reliability": True, "x": True, "y": True},
        **{f: True for f in CUTOUT_FIELDS.values()},
    },
}


class RawAlert(NamedTuple):
    """One alert as read from its input, before its cutouts are decoded.

    ``cutouts`` are the raw bytes (or None) in `CHANNEL_ORDER`; ``position`` is
    the source's pixel position on its image (None if unknown), used to pad a
    cutout cut at an image edge on the side where the pixels are missing.
    ``count`` > 1 only for a failure standing for several alerts (a corrupt
    block of that many records).
    """

    survey: str
    alert_id: int
    object_id: str
    scores: dict[str, float]
    cutouts: tuple[bytes | None, ...]
    position: tuple[float | None, float | None]
    flags: int
    source: str
    count: int = 1


def failure(flags: int, source: str, survey: str = "", count: int = 1) -> RawAlert:
    """A row for alerts that could not be decoded."""
    return RawAlert(survey, -1, "", {}, (None, None, None), (None, None), int(flags), source, count)


def _float(v) -> float:
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError):
        return math.nan


def _stamp(v) -> bytes | None:
    if isinstance(v, dict):
        v = v.get("stampData")
    return v if isinstance(v, (bytes, bytearray, memoryview)) and len(v) else None


def to_raw_alert(spec: SurveySpec, rec: dict, source: str) -> RawAlert:
    """A decoded record (or Parquet row as a dict) of ``spec.layout`` as a `RawAlert`.

    Missing identifiers become -1 / ``""``; missing scores NaN.
    """
    cutouts = tuple(_stamp(rec.get(CUTOUT_FIELDS[c])) for c in CHANNEL_ORDER)
    if spec.layout == "ztf":
        cand = rec.get("candidate") or {}
        alert_id = rec.get("candid", cand.get("candid"))
        object_id = rec.get("objectId") or ""
        scores = {f: _float(cand.get(f)) for f in spec.score_fields}
        position = (cand.get("xpos"), cand.get("ypos"))
    else:
        src = rec.get("diaSource") or {}
        alert_id = src.get("diaSourceId", rec.get("diaSourceId", rec.get("alertId")))
        obj = src.get("diaObjectId")
        object_id = "" if obj is None else str(obj)
        scores = {f: _float(src.get(f)) for f in spec.score_fields}
        position = (src.get("x"), src.get("y"))
    return RawAlert(
        spec.name,
        -1 if alert_id is None else int(alert_id),
        str(object_id),
        scores,
        cutouts,
        position,
        0,
        source,
    )
