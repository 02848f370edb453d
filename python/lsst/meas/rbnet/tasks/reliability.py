# This file is part of meas_rbnet.
"""The reliability task: a drop-in for Alert Production's ``computeReliability`` step.

For every diaSource of one (visit, detector) it cuts stamps from the difference,
science and template images, runs the model package's network and writes a
calibrated probability that the source is astrophysical. Its inputs and its
``dia_source_reliability`` output have ap_pipe's dataset names, so a pipeline swaps
`lsst.meas.transiNet.RBTransiNetTask` for this task by changing the ``class`` of the
``computeReliability`` label (see ``pipelines/ApReliability.yaml``).

Decisions
---------
- Every input source gets exactly one output row, in input order; ``id`` is copied.
  A source that cannot be scored (off the image, bad centroid, a channel without any
  valid pixel) gets ``config.unscorableScore`` (NaN by default) and flag bits saying
  why (`lsst.meas.rbnet.flags.SourceFlag`).
- Science, template and difference images with different bounding boxes are an error
  of the quantum (the template was not warped onto the science grid: an upstream
  failure), not a per-source flag.
- A template without coverage at a source (``NO_DATA`` at its centre) sets
  ``NO_TEMPLATE``; the source is still scored from whatever pixels are valid.
- The model is loaded once per process (`lsst.meas.rbnet.scoring.load_scorer` caches
  it by package digest), never per quantum; each image is turned into arrays once and
  the stamps stream into the network in batches.
- Nothing is written unless the whole quantum succeeds: `run` computes every output
  before returning, and `runQuantum` puts them only then.
"""

from __future__ import annotations

__all__ = [
    "ReliabilityConnections",
    "ReliabilityConfig",
    "ReliabilityTask",
    "NoModelError",
    "source_table_from_any",
]

import dataclasses
import math
from typing import Any

import astropy.table
import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
from lsst.utils.timer import timeMethod

from ..constants import CHANNEL_ORDER, DEFAULT_BAD_MASK_PLANES, VERSION_MAX_LENGTH
from ..flags import UNSCORABLE, SourceFlag
from ..tables import source_table_from_any
from .adapter import ImageArrays, check_same_bbox, to_arrays
from .config_checks import TorchRuntimeConfig, check_channels, check_field
from .connections import ModelInputCheck, model_input, visit_input, visit_output
from .errors import (
    BadColumnError,
    DuplicateSourceIdError,
    NoModelError,
    check_model_package,
    no_model_message,
    require_columns,
)

#: Mask plane marking pixels without template coverage.
_NO_DATA_PLANE = "NO_DATA"

#: Connections whose storage class the config may change (field ``<name>StorageClass``).
_STORAGE_CLASS_CONNECTIONS = ("science", "template", "difference", "sources")


def _storage_class_field(what: str, keeps: str) -> pexConfig.Field[str]:
    """The config field ``<connection>StorageClass``: empty keeps the connection's storage class.

    Parameters
    ----------
    what : `str`
        The dataset, as the doc names it.
    keeps : `str`
        The rest of the doc: the default storage class and what else reads the dataset.
    """
    return pexConfig.Field[str](doc=f"Storage class to read the {what} as; empty keeps {keeps}", default="")


class ReliabilityConnections(
    ModelInputCheck,
    pipeBase.PipelineTaskConnections,
    dimensions=("instrument", "visit", "detector"),
):
    """Connections of `ReliabilityTask`; names default to ap_pipe's (``adjustQuantum``: `ModelInputCheck`)."""

    science = visit_input(
        "preliminary_visit_image",
        "VisitImage",
        "Science image the difference was made from (calibrated visit image).",
    )
    template = visit_input(
        "template_detector",
        "RBNetMaskedImage",
        "Template warped onto the science image's pixel grid (PSF-unmatched).",
    )
    difference = visit_input(
        "difference_image", "DifferenceImage", "Difference image the sources were detected on."
    )
    sources = visit_input(
        "dia_source_unstandardized",
        "ArrowAstropy",
        "Sources detected on the difference image (id and pixel centroid columns).",
    )
    pretrainedModel = model_input(
        "pretrainedModelPackage",
        "Trained model package (weights, architecture, input contract, calibration), found by "
        "collection, e.g. pretrained_models/<name>.",
    )
    reliability = visit_output(
        "dia_source_reliability",
        "ArrowAstropy",
        "One row per input source, in input order: id, score (reliability in [0, 1] or NaN), "
        "version (the model's, at most 7 characters), reliabilityFlags.",
    )
    sourcesWithReliability = visit_output(
        "dia_source_unstandardized_reliability",
        "ArrowAstropy",
        "The input source table with reliability (float32), reliabilityVersion and "
        "reliabilityFlags columns added.",
    )
    cutouts = visit_output(
        "dia_source_cutouts",
        "ArrowAstropy",
        "Raw per-source stamps (difference, science, template; untrusted pixels NaN) with id, "
        "reliabilityFlags and the pixel centre, for the sequence model and for training.",
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is None:
            return
        # Storage classes are configurable so the same task reads afw repositories
        # (e.g. RBNetMaskedImage for an ExposureF science image) or DataFrame sources.
        for name in _STORAGE_CLASS_CONNECTIONS:
            value = getattr(config, f"{name}StorageClass")
            if value:
                setattr(self, name, dataclasses.replace(getattr(self, name), storageClass=value))
        channels = set(config.channels)
        if "science" not in channels:
            del self.science
        if "template" not in channels:
            del self.template
        if not config.doWriteCutouts:
            del self.cutouts


class ReliabilityConfig(
    pipeBase.PipelineTaskConfig, TorchRuntimeConfig, pipelineConnections=ReliabilityConnections
):
    """Configuration of `ReliabilityTask`.

    ``device`` and ``numThreads`` come from `TorchRuntimeConfig`, shared with the other tasks
    that run a network.
    """

    channels = pexConfig.ListField[str](
        doc="Images the model reads, a subsequence of (difference, science, template). Must equal the "
        "model package's input channels (checked when the model is loaded). A difference-only model "
        "(config/difference_only.py) does not read the science and template images at all.",
        default=list(CHANNEL_ORDER),
    )
    stampSize = pexConfig.Field[int](
        doc="Expected stamp side of the model (pixels); 0 accepts the model's own. A non-zero value "
        "different from the model's is an error when the model is loaded.",
        default=0,
    )
    batchSize = pexConfig.Field[int](
        doc="Sources per batch sent to the network (memory is about batchSize x channels x stamp^2 x 4 "
        "bytes per batch).",
        default=1024,
    )
    doSymmetry = pexConfig.Field[bool](
        doc="Average the logits over the 8 rotations/flips of each stamp (8x the compute; uses the "
        "package's symmetric calibration).",
        default=False,
    )
    unscorableScore = pexConfig.Field[float](
        doc="Score given to sources that cannot be scored (off the image, bad centroid, a channel with no "
        "valid pixel). NaN by default; 0.0 makes the downstream reliability filter drop them, 1.0 keep "
        "them.",
        default=math.nan,
    )
    idColumn = pexConfig.Field[str](doc="Source id column of the source table.", default="id")
    xColumn = pexConfig.Field[str](
        doc="Centroid x column of the source table (pixels, parent/detector frame, zero-based).", default="x"
    )
    yColumn = pexConfig.Field[str](
        doc="Centroid y column of the source table (pixels, parent/detector frame, zero-based).", default="y"
    )
    badMaskPlanes = pexConfig.ListField[str](
        doc="Mask planes whose pixels are untrusted (filled after normalisation and counted in the flags).",
        default=list(DEFAULT_BAD_MASK_PLANES),
    )
    maxBadFraction = pexConfig.Field[float](
        doc="A channel with more than this fraction of untrusted stamp pixels sets MOSTLY_BAD.",
        default=0.5,
    )
    doWriteCutouts = pexConfig.Field[bool](
        doc="Also write the raw per-source stamps (dia_source_cutouts) for the sequence model and training.",
        default=False,
    )
    cutoutSize = pexConfig.Field[int](
        doc="Side of the written stamps (pixels); 0 uses the model's stamp size.", default=0
    )
    modelPackageName = pexConfig.Field[str](
        doc="If set, the model must come from the run pretrained_models/<modelPackageName> (as registered by "
        "'rbnet register-model --name'); empty accepts the first model found in the input collections "
        "(e.g. the newest in the pretrained_models chain).",
        default="",
    )
    expectedModelVersion = pexConfig.Field[str](
        doc="If set, the model package's version must equal this (guards a deployment against picking up "
        "the wrong model from the collections).",
        default="",
    )
    scienceStorageClass = _storage_class_field(
        "science image", "VisitImage. RBNetMaskedImage reads afw ExposureF datasets too."
    )
    templateStorageClass = _storage_class_field(
        "template",
        "RBNetMaskedImage (reads lsst.images MaskedImage/VisitImage/DifferenceImage and afw "
        "Exposure/MaskedImage datasets).",
    )
    differenceStorageClass = _storage_class_field("difference image", "DifferenceImage.")
    sourcesStorageClass = _storage_class_field(
        "sources", "ArrowAstropy (DataFrame, ArrowNumpy and ArrowTable work too)."
    )

    def validate(self):
        super().validate()
        channels = check_channels(self)
        detected_on = "difference" in channels
        check_field(self, "channels", detected_on, "must include 'difference' (sources are detected on it)")
        check_field(self, "batchSize", self.batchSize >= 1, "must be >= 1")
        check_field(self, "stampSize", self.stampSize >= 0 and self.cutoutSize >= 0, "sizes must be >= 0")
        check_field(self, "maxBadFraction", 0.0 < self.maxBadFraction <= 1.0, "must be in (0, 1]")
        score = self.unscorableScore
        in_range = math.isnan(score) or 0.0 <= score <= 1.0
        check_field(self, "unscorableScore", in_range, "must be NaN or in [0, 1]")



class ReliabilityTask(pipeBase.PipelineTask):
    """Score difference-image sources with a model package (real/bogus reliability).

    Notes
    -----
    Outputs (see `run`): ``reliability`` (``dia_source_reliability``: ``id``, ``score``,
    ``version``, ``reliabilityFlags``), ``sourcesWithReliability`` (the input table plus
    ``reliability``, ``reliabilityVersion``, ``reliabilityFlags``) and, with
    ``doWriteCutouts``, ``cutouts`` (``id``, ``stamp`` (N, 3, S, S) float32 raw pixels
    with NaN where untrusted, ``reliabilityFlags``, ``x``, ``y``).
    """

    ConfigClass = ReliabilityConfig
    _DefaultName = "computeReliability"

    # ------------------------------------------------------------------
    # Model
    # ------------------------------------------------------------------

    def load_scorer(self, package: Any):
        """Return the (process-wide cached) scorer for a model package, checking it fits the config.

        Parameters
        ----------
        package : `lsst.meas.rbnet.package.ModelPackage`
            The model.

        Raises
        ------
        NoModelError
            If ``package`` is `None`.
        ValueError
            If the package's channels or stamp size differ from the config's, or its
            version differs from ``expectedModelVersion``.
        """
        if package is None:
            raise NoModelError(no_model_message(self.config.connections.pretrainedModel))
        from ..scoring import load_scorer

        contract = package.contract
        if tuple(contract.channels) != tuple(self.config.channels):
            raise ValueError(
                f"The model package (version {package.version!r}) reads channels {tuple(contract.channels)} "
                f"but the task is configured with channels={tuple(self.config.channels)}; set "
                f"config.channels to match the model (e.g. config/difference_only.py for a difference-only "
                "model)."
            )
        if self.config.stampSize and self.config.stampSize != contract.stamp_size:
            raise ValueError(
                f"The model package (version {package.version!r}) takes {contract.stamp_size}x"
                f"{contract.stamp_size} stamps but config.stampSize={self.config.stampSize}; set "
                "stampSize to 0 (use the model's) or to the model's size."
            )
        check_model_package(package, expected_version=self.config.expectedModelVersion)
        return load_scorer(
            package,
            device=self.config.device,
            batch_size=self.config.batchSize,
            symmetry=self.config.doSymmetry,
            num_threads=self.config.numThreads or None,
        )

    # ------------------------------------------------------------------
    # Running
    # ------------------------------------------------------------------

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        if self.config.modelPackageName:
            run = inputRefs.pretrainedModel.run
            wanted = f"pretrained_models/{self.config.modelPackageName}"
            if run != wanted and not run.startswith(wanted + "/"):
                raise ValueError(
                    f"config.modelPackageName is {self.config.modelPackageName!r}, but the model found in "
                    "the "
                    f"input collections is in run {run!r}; put {wanted!r} first in the inputs."
                )
        inputs = butlerQC.get(inputRefs)
        outputs = self.run(**inputs)
        # Only now, with everything computed, is anything written.
        butlerQC.put(outputs, outputRefs)

    def _check_sources(self, sources: astropy.table.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        config = self.config
        require_columns(
            sources,
            (config.idColumn, config.xColumn, config.yColumn),
            what=f"The source table ({config.connections.sources})",
            dataset=config.connections.sources,
            hint=" (configured by idColumn/xColumn/yColumn)",
        )
        ids = np.asarray(sources[config.idColumn])
        if len(ids) and not np.issubdtype(ids.dtype, np.integer):
            raise BadColumnError(
                f"The source table ({config.connections.sources}) column {config.idColumn!r} must hold "
                f"integers, got {ids.dtype}.",
                dataset=config.connections.sources,
                column=config.idColumn,
                dtype=str(ids.dtype),
            )
        ids = ids.astype(np.int64, copy=False)
        if len(ids) > 1:
            order = np.sort(ids)
            dup = order[1:][order[1:] == order[:-1]]
            if len(dup):
                raise DuplicateSourceIdError(
                    f"The source table ({config.connections.sources}) has duplicate ids in column "
                    f"{config.idColumn!r}, e.g. {np.unique(dup)[:5].tolist()}; outputs are keyed by id.",
                    dataset=config.connections.sources,
                    column=config.idColumn,
                    n_duplicates=int(len(np.unique(dup))),
                    examples=np.unique(dup)[:5].tolist(),
                )
        x = np.asarray(sources[config.xColumn], dtype=np.float64)
        y = np.asarray(sources[config.yColumn], dtype=np.float64)
        if hasattr(sources[config.xColumn], "mask"):
            x = np.ma.filled(np.ma.asarray(sources[config.xColumn], dtype=np.float64), np.nan)
            y = np.ma.filled(np.ma.asarray(sources[config.yColumn], dtype=np.float64), np.nan)
        return ids, x, y

    def _to_arrays(self, images: dict[str, Any]) -> dict[str, ImageArrays]:
        planes = list(self.config.badMaskPlanes) + [_NO_DATA_PLANE]
        arrays = {}
        for name in self.config.channels:
            obj = images.get(name)
            if obj is None:
                raise ValueError(f"The {name} image is required by channels={tuple(self.config.channels)}.")
            arrays[name] = to_arrays(obj, name=name, planes=planes)
        return arrays

    @timeMethod
    def run(self, science=None, template=None, difference=None, sources=None, pretrainedModel=None):
        """Score every source.

        Parameters
        ----------
        science, template, difference
            Images (`lsst.images` MaskedImage/VisitImage/DifferenceImage, afw Exposure or
            MaskedImage, or `~lsst.meas.rbnet.tasks.adapter.ImageArrays`) sharing one pixel
            grid. Only those named in ``config.channels`` are needed.
        sources : `astropy.table.Table` (or pandas DataFrame, pyarrow Table, numpy structured array)
            Sources with ``config.idColumn``, ``xColumn`` and ``yColumn`` (pixels, parent frame).
        pretrainedModel : `lsst.meas.rbnet.package.ModelPackage`
            The model.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``reliability`` (`astropy.table.Table`: ``id`` int64, ``score`` float32,
            ``version`` str, ``reliabilityFlags`` int32), ``sourcesWithReliability`` (the input
            columns plus ``reliability`` float32, ``reliabilityVersion`` str, ``reliabilityFlags``
            int32) and, with ``doWriteCutouts``, ``cutouts``. All row-aligned with ``sources``.

        Raises
        ------
        ValueError
            Missing or non-integer id column, missing centroid columns, duplicate ids, images
            on different pixel grids, or a model that does not fit the config.
        NoModelError
            If there is no model.
        """
        if sources is None:
            raise ValueError(f"No source table ({self.config.connections.sources}) was given.")
        table = source_table_from_any(sources, name=f"sources ({self.config.connections.sources})")
        ids, x, y = self._check_sources(table)
        scorer = self.load_scorer(pretrainedModel)
        package = pretrainedModel
        version = package.version
        n = len(ids)
        images = {"science": science, "template": template, "difference": difference}
        arrays = self._to_arrays(images)
        x0, y0, width, height = check_same_bbox(arrays)
        xl, yl = x - x0, y - y0
        channels = tuple(self.config.channels)
        # The adapter numbers mask planes the same way in every image, so one bit mask serves all
        # channels; an image lacking a plane contributes nothing to it.
        bits = 0
        for a in arrays.values():
            bits |= a.bits(self.config.badMaskPlanes)

        scores = np.full(n, np.nan, dtype=np.float32)
        flags = np.zeros(n, dtype=np.int32)
        if n:
            result = scorer.score_images(
                [arrays[c].image for c in channels],
                xl,
                yl,
                masks=[arrays[c].mask for c in channels],
                bad_mask_bits=bits,
                max_bad_fraction=self.config.maxBadFraction,
                channel_axis_order=channels,
            )
            scores[:] = np.asarray(result.reliability, dtype=np.float32)
            flags[:] = np.asarray(result.flags, dtype=np.int32)
            if "template" in arrays:
                flags |= self._no_template_flags(arrays["template"], xl, yl)
            unscorable = (flags & np.int32(UNSCORABLE | SourceFlag.NOT_SCORED)) != 0
            scores[unscorable] = np.float32(self.config.unscorableScore)
            flags[unscorable] |= np.int32(SourceFlag.NOT_SCORED)
            scores[~unscorable & ~np.isfinite(scores)] = np.float32(self.config.unscorableScore)

        reliability = astropy.table.Table()
        reliability["id"] = ids
        reliability["score"] = scores
        reliability["version"] = np.array([version] * n, dtype=f"<U{VERSION_MAX_LENGTH}")
        reliability["reliabilityFlags"] = flags

        with_rel = astropy.table.Table(table, copy=True)
        with_rel["reliability"] = scores
        with_rel["reliabilityVersion"] = np.array([version] * n, dtype=f"<U{VERSION_MAX_LENGTH}")
        with_rel["reliabilityFlags"] = flags

        struct = pipeBase.Struct(reliability=reliability, sourcesWithReliability=with_rel)
        if self.config.doWriteCutouts:
            struct.cutouts = self._make_cutouts(arrays, ids, xl, yl, x, y, flags, bits, package)
        n_unscored = int(np.count_nonzero((flags & np.int32(SourceFlag.NOT_SCORED)) != 0))
        self.log.info(
            "Scored %d sources with model %s (%d not scorable); %d with reliability >= 0.5.",
            n,
            version,
            n_unscored,
            int(np.count_nonzero(scores >= 0.5)),
        )
        self.metadata["numSources"] = n
        self.metadata["numUnscorable"] = n_unscored
        self.metadata["modelVersion"] = version
        return struct

    @staticmethod
    def _no_template_flags(template: ImageArrays, xl: np.ndarray, yl: np.ndarray) -> np.ndarray:
        """``NO_TEMPLATE`` where the template's centre pixel has ``NO_DATA``."""
        out = np.zeros(len(xl), dtype=np.int32)
        if template.mask is None or _NO_DATA_PLANE not in template.mask_planes:
            return out
        height, width = template.image.shape
        finite = np.isfinite(xl) & np.isfinite(yl)
        cx = np.floor(np.where(finite, xl, -1) + 0.5).astype(np.int64)
        cy = np.floor(np.where(finite, yl, -1) + 0.5).astype(np.int64)
        inside = finite & (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
        bit = np.int32(1 << template.mask_planes[_NO_DATA_PLANE])
        hit = np.zeros(len(xl), dtype=bool)
        hit[inside] = (template.mask[cy[inside], cx[inside]] & bit) != 0
        out[hit] = np.int32(SourceFlag.NO_TEMPLATE)
        return out

    def _make_cutouts(self, arrays, ids, xl, yl, x, y, flags, bits, package) -> astropy.table.Table:
        from ..cutouts import extract_cutouts

        size = self.config.cutoutSize or package.contract.stamp_size
        names = [c for c in CHANNEL_ORDER if c in arrays]
        batch = extract_cutouts(
            [arrays[c].image for c in names],
            xl,
            yl,
            size,
            masks=[arrays[c].mask for c in names],
            bad_mask_bits=bits,
            names=names,
            max_bad_fraction=self.config.maxBadFraction,
        )
        table = astropy.table.Table()
        table["id"] = ids
        table["stamp"] = batch.stamps
        table["reliabilityFlags"] = flags | batch.flags
        table["x"] = x
        table["y"] = y
        table.meta["channels"] = list(names)
        return table
