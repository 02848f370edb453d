# This file is part of meas_rbnet.
"""Labelled cutouts: raw triplet stamps of the labelled sources of one (visit, detector).

The training data of a model are made in the Butler, from the same datasets the
reliability task reads plus a labels table (``rbnet_labels``, registered with
``rbnet ingest-labels``). Sources are matched to labels by source id, or, when the
labels have no ``id`` column, by position (``ra``, ``dec``) and time (``mjd``).

Stamps are *raw*: pixel values in image units with untrusted pixels (off the image,
non-finite, bad mask planes) NaN, channels in `~lsst.meas.rbnet.constants.CHANNEL_ORDER`.
Normalisation belongs to the model's input contract and is applied when training, so
one set of cutouts serves models with different contracts (a stamp size up to the
cutouts' own, any channel subset, any normalisation).
"""

from __future__ import annotations

__all__ = [
    "LabelledCutoutsConnections",
    "LabelledCutoutsConfig",
    "LabelledCutoutsTask",
    "match_labels",
    "empty_cutouts_table",
]

import astropy.table
import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from ..constants import CHANNEL_ORDER, DEFAULT_BAD_MASK_PLANES, DEFAULT_STAMP_SIZE
from ..tables import match_labels, source_table_from_any
from .adapter import check_same_bbox, to_arrays
from .config_checks import check_field
from .connections import VISIT_DIMENSIONS, visit_input, visit_output
from .errors import require_columns

class LabelledCutoutsConnections(pipeBase.PipelineTaskConnections, dimensions=VISIT_DIMENSIONS):
    """Connections of `LabelledCutoutsTask`."""

    science = visit_input("preliminary_visit_image", "VisitImage", "Science image (calibrated visit image).")
    template = visit_input(
        "template_detector", "RBNetMaskedImage", "Template warped onto the science image's pixel grid."
    )
    difference = visit_input("difference_image", "DifferenceImage", "Difference image.")
    sources = visit_input(
        "dia_source_unstandardized", "ArrowAstropy", "Sources detected on the difference image."
    )
    labels = cT.Input(
        doc="Real/bogus labels (id or ra/dec/mjd, label, optional source_class), from rbnet ingest-labels.",
        name="rbnet_labels",
        storageClass="ArrowAstropy",
        dimensions=("instrument",),
    )
    cutouts = visit_output(
        "rbnet_labelled_cutouts",
        "ArrowAstropy",
        "Raw stamps of the labelled sources: id, stamp (N, 3, S, S) float32 (NaN where untrusted), "
        "label, source_class, snr, flags, x, y.",
    )


class LabelledCutoutsConfig(pipeBase.PipelineTaskConfig, pipelineConnections=LabelledCutoutsConnections):
    """Configuration of `LabelledCutoutsTask`."""

    stampSize = pexConfig.Field[int](
        doc="Side of the raw stamps (pixels, odd). Models with a smaller stamp crop the centre.",
        default=DEFAULT_STAMP_SIZE,
    )
    idColumn = pexConfig.Field[str](doc="Source id column of the source table.", default="id")
    xColumn = pexConfig.Field[str](doc="Centroid x column (pixels, parent frame).", default="x")
    yColumn = pexConfig.Field[str](doc="Centroid y column (pixels, parent frame).", default="y")
    raColumn = pexConfig.Field[str](doc="Right ascension column of the sources (deg).", default="ra")
    decColumn = pexConfig.Field[str](doc="Declination column of the sources (deg).", default="dec")
    snrColumn = pexConfig.Field[str](
        doc="Signal-to-noise column; if absent, psfFlux/psfFluxErr is used, else NaN.", default="snr"
    )
    matchRadius = pexConfig.Field[float](
        doc="Largest separation (arcsec) for matching labels without ids to sources by position.", default=1.0
    )
    matchTimeTolerance = pexConfig.Field[float](
        doc="Largest |label mjd - visit mid-time| (days) for matching labels without ids.", default=0.02
    )
    badMaskPlanes = pexConfig.ListField[str](
        doc="Mask planes whose pixels are untrusted (set to NaN in the raw stamps).",
        default=list(DEFAULT_BAD_MASK_PLANES),
    )
    keepUnlabelled = pexConfig.Field[bool](
        doc="Also write sources without a label (label -1); training ignores them.", default=False
    )

    def validate(self):
        super().validate()
        odd = self.stampSize >= 3 and self.stampSize % 2 == 1
        check_field(self, "stampSize", odd, f"must be an odd integer >= 3, got {self.stampSize}")
        check_field(self, "matchRadius", self.matchRadius > 0, "must be > 0")


def empty_cutouts_table(stamp_size: int, n_channels: int = len(CHANNEL_ORDER)) -> astropy.table.Table:
    """A labelled-cutouts table with no rows and the right columns."""
    table = astropy.table.Table()
    table["id"] = np.zeros(0, np.int64)
    table["stamp"] = np.zeros((0, n_channels, stamp_size, stamp_size), np.float32)
    table["label"] = np.zeros(0, np.int16)
    table["source_class"] = np.zeros(0, dtype="<U32")
    table["snr"] = np.zeros(0, np.float32)
    table["flags"] = np.zeros(0, np.int32)
    table["x"] = np.zeros(0, np.float64)
    table["y"] = np.zeros(0, np.float64)
    return table



def _snr(sources: astropy.table.Table, column: str) -> np.ndarray:
    if column in sources.colnames:
        return np.asarray(sources[column], dtype=np.float32)
    if "psfFlux" in sources.colnames and "psfFluxErr" in sources.colnames:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.asarray(sources["psfFlux"], float) / np.asarray(sources["psfFluxErr"], float)).astype(
                np.float32
            )
    return np.full(len(sources), np.nan, np.float32)


class LabelledCutoutsTask(pipeBase.PipelineTask):
    """Cut raw triplet stamps of labelled sources (training data in the Butler)."""

    ConfigClass = LabelledCutoutsConfig
    _DefaultName = "labelledCutouts"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        mjd = None
        record = butlerQC.quantum.dataId.records["visit"] if butlerQC.quantum.dataId.hasRecords() else None
        if record is not None and record.timespan is not None:
            begin, end = record.timespan.begin, record.timespan.end
            mjd = float((begin.tai.mjd + end.tai.mjd) / 2)
        outputs = self.run(**inputs, mjd=mjd)
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(self, science, template, difference, sources, labels, mjd=None):
        """Cut stamps of the labelled sources.

        Parameters
        ----------
        science, template, difference
            Images on one pixel grid (see `ReliabilityTask.run`).
        sources : `astropy.table.Table` (or DataFrame, ...)
            Sources with id and centroid columns.
        labels : `astropy.table.Table`
            Labels (see `match_labels`).
        mjd : `float`, optional
            Mid-time of the visit, for labels matched by position.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``cutouts``: `astropy.table.Table` with ``id``, ``stamp`` (N, 3, S, S) float32,
            ``label`` int16 (-1 unlabelled), ``source_class``, ``snr``, ``flags``, ``x``, ``y``.
        """
        from ..cutouts import extract_cutouts

        config = self.config
        table = source_table_from_any(sources, name=f"sources ({config.connections.sources})")
        require_columns(
            table,
            (config.idColumn, config.xColumn, config.yColumn),
            what=f"The source table ({config.connections.sources})",
            dataset=config.connections.sources,
        )
        labels = source_table_from_any(labels, name=f"labels ({config.connections.labels})")
        require_columns(
            labels,
            ("label",),
            what=f"The labels ({config.connections.labels})",
            dataset=config.connections.labels,
            plural=True,
        )
        index = match_labels(
            table,
            labels,
            id_column=config.idColumn,
            ra_column=config.raColumn,
            dec_column=config.decColumn,
            mjd=mjd,
            radius_arcsec=config.matchRadius,
            time_tolerance=config.matchTimeTolerance,
        )
        keep = np.ones(len(table), bool) if config.keepUnlabelled else index >= 0
        self.log.info("%d of %d sources have labels.", int(np.count_nonzero(index >= 0)), len(table))
        if not np.any(keep):
            return pipeBase.Struct(cutouts=empty_cutouts_table(config.stampSize))
        planes = list(config.badMaskPlanes)
        arrays = {
            "difference": to_arrays(difference, name="difference", planes=planes),
            "science": to_arrays(science, name="science", planes=planes),
            "template": to_arrays(template, name="template", planes=planes),
        }
        x0, y0, _, _ = check_same_bbox(arrays)
        bits = 0
        for a in arrays.values():
            bits |= a.bits(planes)
        rows = np.flatnonzero(keep)
        x = np.asarray(table[config.xColumn], dtype=np.float64)[rows]
        y = np.asarray(table[config.yColumn], dtype=np.float64)[rows]
        batch = extract_cutouts(
            [arrays[c].image for c in CHANNEL_ORDER],
            x - x0,
            y - y0,
            config.stampSize,
            masks=[arrays[c].mask for c in CHANNEL_ORDER],
            bad_mask_bits=bits,
            names=CHANNEL_ORDER,
        )
        idx = index[rows]
        has = idx >= 0
        label = np.full(len(rows), -1, np.int16)
        label[has] = np.asarray(labels["label"], dtype=np.int16)[idx[has]]
        classes = np.full(len(rows), "", dtype="<U32")
        if "source_class" in labels.colnames:
            classes[has] = np.asarray(labels["source_class"]).astype(str)[idx[has]]
        out = astropy.table.Table()
        out["id"] = np.asarray(table[config.idColumn], dtype=np.int64)[rows]
        out["stamp"] = batch.stamps
        out["label"] = label
        out["source_class"] = classes
        out["snr"] = _snr(table, config.snrColumn)[rows]
        out["flags"] = batch.flags
        out["x"] = x
        out["y"] = y
        return pipeBase.Struct(cutouts=out)
