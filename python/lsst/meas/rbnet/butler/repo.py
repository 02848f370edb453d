# This file is part of meas_rbnet.
"""Helpers that build and fill a Butler repository for demos, tests and training.

Everything here takes a repository URI (or an open `~lsst.daf.butler.Butler`) and an
optional seed configuration, so the same code fills a local SQLite repository and one
whose registry is in PostgreSQL (pass `lsst.meas.rbnet.butler.postgres.postgres_seed_config`
as ``seed``, or create the repository with ``create_postgres_repo(seed=butler_seed_config())``
and open it here).

A repository made by `create_repo` needs no obs package: it gets dimension records for
an instrument (any ``class_name``), its physical filters and bands, detectors, day_obs,
visits and ``visit_detector_region`` rows (graph building fails without the last), and
the storage classes of this package in its ``butler.yaml``.

Dataset types (see DESIGN.md section 2; names as in ap_pipe):

==============================  ==========================  ==================
name                            dimensions                  storage class
==============================  ==========================  ==================
``preliminary_visit_image``     instrument, visit, detector ``VisitImage``
``template_detector``           instrument, visit, detector ``MaskedImageV2``
``difference_image``            instrument, visit, detector ``DifferenceImage``
``dia_source_unstandardized``   instrument, visit, detector ``ArrowAstropy``
``pretrainedModelPackage``      (none)                      ``RBNetModelPackage``
``rbnet_labels``                instrument                  ``ArrowAstropy``
==============================  ==========================  ==================
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_INSTRUMENT",
    "INPUT_DATASET_TYPES",
    "LABELS_DATASET_TYPE",
    "MODEL_DATASET_TYPE",
    "PRETRAINED_MODELS_CHAIN",
    "SimulatedInstrument",
    "create_repo",
    "open_repo",
    "check_storage_classes",
    "register_instrument",
    "register_dataset_types",
    "VisitWriter",
    "sources_table",
    "labels_table",
    "read_labels_file",
    "ingest_labels",
    "register_model",
    "model_run",
    "validate_run_name",
    "validate_model_name",
    "SEQUENCE_MODEL_DATASET_TYPE",
    "MODEL_DATASET_TYPES",
]

from collections.abc import Iterable, Mapping
from typing import Any

import astropy.table
import astropy.time
import numpy as np

from lsst.daf.butler import Butler, CollectionType, Config, DatasetType, Timespan
from lsst.resources import ResourcePathExpression

from .config import MODEL_STORAGE_CLASS, butler_seed_config
from .labels import ingest_labels, read_labels_file

# Names, name checks and the labels ingestion live in their own modules (moved out of this
# one so no module is over about 600 lines); re-exported here, where callers and tests
# import them.
from .names import (
    DEFAULT_INSTRUMENT,
    LABELS_DATASET_TYPE,
    MODEL_DATASET_TYPE,
    MODEL_DATASET_TYPES,
    PRETRAINED_MODELS_CHAIN,
    SEQUENCE_MODEL_DATASET_TYPE,
    _collection_exists,
    _new_run,
    check_storage_classes,
    model_run,
    validate_model_name,
    validate_run_name,
)

_VISIT_DIMENSIONS = ("instrument", "visit", "detector")

#: The AP inputs written for each simulated (visit, detector): name -> storage class.
INPUT_DATASET_TYPES: dict[str, str] = {
    "preliminary_visit_image": "VisitImage",
    "template_detector": "MaskedImageV2",
    "difference_image": "DifferenceImage",
    "dia_source_unstandardized": "ArrowAstropy",
}

# Columns of the simulator's source table that are truth, not measurements: they go to
# the labels dataset, never into the source catalogue the tasks read.
_TRUTH_COLUMNS = ("label", "source_class", "truth_x", "truth_y", "truth_flux", "host_flux")


class SimulatedInstrument:
    """Placeholder named as the ``class_name`` of the simulated instrument's record.

    daf_butler stores the name but never imports it unless asked for an
    ``lsst.pipe.base.Instrument``; nothing in this package does.
    """


def _meta(sim: Any, key: str, default: Any = None) -> Any:
    meta = getattr(sim, "metadata", None) or {}
    if isinstance(meta, Mapping):
        return meta.get(key, default)
    return getattr(meta, key, default)


def create_repo(
    root: ResourcePathExpression,
    *,
    seed: Config | Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Butler:
    """Create a repository that knows this package's storage classes and open it for writing.

    Parameters
    ----------
    root : `lsst.resources.ResourcePathExpression`
        Repository root; a local directory gives a SQLite registry.
    seed : `lsst.daf.butler.Config` or `~collections.abc.Mapping`, optional
        Extra seed configuration (e.g. a PostgreSQL registry from
        `lsst.meas.rbnet.butler.postgres.postgres_seed_config`); merged over ours.
    overwrite : `bool`, optional
        Overwrite an existing ``butler.yaml``.

    Returns
    -------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler on the new repository.
    """
    config = butler_seed_config()
    if seed is not None:
        config.update(seed if isinstance(seed, Config) else Config(seed))
    Butler.makeRepo(root, config=config, overwrite=overwrite)
    return Butler.from_config(root, writeable=True)


def open_repo(
    repo: ResourcePathExpression | Butler, *, writeable: bool = True, run: str | None = None
) -> Butler:
    """Open a repository (or return the Butler given), checking our storage classes are known."""
    butler = repo if isinstance(repo, Butler) else Butler.from_config(repo, writeable=writeable, run=run)
    check_storage_classes(butler)
    return butler


def register_instrument(
    butler: Butler,
    instrument: str = DEFAULT_INSTRUMENT,
    *,
    detectors: Iterable[int] = range(4),
    physical_filters: Mapping[str, str] | None = None,
    class_name: str = f"{__name__}.SimulatedInstrument",
) -> None:
    """Insert (idempotently) the instrument, its physical filters/bands and detectors.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler.
    instrument : `str`, optional
        Instrument name.
    detectors : iterable of `int`, optional
        Detector ids (names ``S<id>``).
    physical_filters : `~collections.abc.Mapping` [`str`, `str`], optional
        Physical filter -> band; ``sim_<band>`` for the six LSST bands by default.
    class_name : `str`, optional
        Recorded as the instrument's class (never imported by this package).
    """
    registry = butler.registry
    registry.syncDimensionData(
        "instrument",
        {
            "name": instrument,
            "class_name": class_name,
            "detector_max": 1000,
            "visit_max": 2**31 - 1,
            "exposure_max": 2**31 - 1,
            "visit_system": 0,
        },
    )
    if physical_filters is None:
        physical_filters = {f"sim_{b}": b for b in "ugrizy"}
    for physical_filter, band in physical_filters.items():
        registry.syncDimensionData(
            "physical_filter", {"instrument": instrument, "name": physical_filter, "band": band}
        )
    for det in detectors:
        registry.syncDimensionData(
            "detector", {"instrument": instrument, "id": int(det), "full_name": f"S{int(det):02d}"}
        )


def register_dataset_types(
    butler: Butler, extra: Mapping[str, tuple[Iterable[str], str]] | None = None
) -> None:
    """Register the AP input, model and labels dataset types (and ``extra`` ones).

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler.
    extra : `~collections.abc.Mapping` [`str`, `tuple`], optional
        More dataset types: name -> (dimensions, storage class).
    """
    universe = butler.dimensions
    wanted: dict[str, tuple[Iterable[str], str]] = {
        name: (_VISIT_DIMENSIONS, sc) for name, sc in INPUT_DATASET_TYPES.items()
    }
    wanted[MODEL_DATASET_TYPE] = ((), MODEL_STORAGE_CLASS)
    wanted[LABELS_DATASET_TYPE] = (("instrument",), "ArrowAstropy")
    wanted.update(extra or {})
    for name, (dims, storage_class) in wanted.items():
        butler.registry.registerDatasetType(DatasetType(name, list(dims), storage_class, universe=universe))


def _region_from_corners(ra: np.ndarray, dec: np.ndarray):
    from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d

    vectors = [UnitVector3d(LonLat.fromDegrees(float(a), float(d))) for a, d in zip(ra, dec)]
    return ConvexPolygon.convexHull(vectors)


def _detector_corners(wcs, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel edges, not centres: the region covers every pixel of the detector.
    x = np.array([-0.5, width - 0.5, width - 0.5, -0.5])
    y = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
    ra, dec = wcs.all_pix2world(x, y, 0)
    return np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)


def sources_table(sources: astropy.table.Table) -> astropy.table.Table:
    """The source catalogue a pipeline would produce: the simulator's table without truth columns."""
    keep = [c for c in sources.colnames if c not in _TRUTH_COLUMNS]
    table = astropy.table.Table(sources[keep], copy=True)
    table["id"] = np.asarray(table["id"], dtype=np.int64)
    return table


def labels_table(sources: astropy.table.Table, mjd: float | None = None) -> astropy.table.Table:
    """A labels table (``id``, ``label``, ``source_class``, and ``ra``/``dec``/``mjd`` if known).

    Parameters
    ----------
    sources : `astropy.table.Table`
        Simulator source table with ``id``, ``label`` and optionally ``source_class``,
        ``ra``, ``dec``.
    mjd : `float`, optional
        Epoch of the visit, written as an ``mjd`` column.
    """
    table = astropy.table.Table()
    table["id"] = np.asarray(sources["id"], dtype=np.int64)
    table["label"] = np.asarray(sources["label"], dtype=np.int16)
    if "source_class" in sources.colnames:
        table["source_class"] = np.asarray(sources["source_class"], dtype=str)
    for col in ("ra", "dec"):
        if col in sources.colnames:
            table[col] = np.asarray(sources[col], dtype=np.float64)
    if mjd is not None:
        table["mjd"] = np.full(len(table), float(mjd))
    return table


class VisitWriter:
    """Write simulated visits into a repository as the datasets AP would have made.

    For every ``(visit, detector)`` it inserts the dimension records (instrument,
    filter, detector, day_obs, visit, ``visit_detector_region``) and puts the science
    image (`~lsst.images.VisitImage`), the template (`~lsst.images.MaskedImage`), the
    difference (`~lsst.images.DifferenceImage`) and the source table (truth columns
    removed) into ``run``. The truth is kept as labels (see `labels`).

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler.
    run : `str`
        RUN collection for the datasets.
    instrument : `str`, optional
        Instrument name.
    """

    def __init__(self, butler: Butler, run: str, instrument: str = DEFAULT_INSTRUMENT) -> None:
        self.butler = butler
        self.run = run
        self.instrument = instrument
        self._visit_corners: dict[int, tuple[list[float], list[float]]] = {}
        self._labels: list[astropy.table.Table] = []
        butler.registry.registerCollection(run, CollectionType.RUN)
        register_dataset_types(butler)

    def write(self, sim: Any, *, visit: int | None = None, detector: int | None = None) -> dict[str, Any]:
        """Write one simulated ``(visit, detector)``.

        Parameters
        ----------
        sim : `lsst.meas.rbnet.sim.SimulatedVisit`
            Images ``science``, ``template``, ``difference`` (each with ``image``,
            ``variance``, ``mask`` arrays), ``sources`` table and ``metadata`` (``visit``,
            ``detector``, ``mjd``, ``band``, ``physical_filter``, ``wcs``, ``fwhm``,
            ``pixel_scale``; a mapping or an object with those attributes, e.g.
            `lsst.meas.rbnet.sim.VisitMetadata`, whose ``mjd`` is mid-exposure).
        visit, detector : `int`, optional
            Override the ids in the metadata.

        Returns
        -------
        data_id : `dict`
            ``{"instrument", "visit", "detector"}`` of the datasets written.
        """
        from .images import make_difference_image, make_masked_image, make_visit_image

        visit = int(visit if visit is not None else _meta(sim, "visit"))
        detector = int(detector if detector is not None else _meta(sim, "detector", 0))
        band = str(_meta(sim, "band", "r"))
        physical_filter = str(_meta(sim, "physical_filter", f"sim_{band}"))
        mjd = float(_meta(sim, "mjd", 60000.0))
        exposure_time = float(_meta(sim, "exposure_time", 30.0))
        wcs = _meta(sim, "wcs")
        if wcs is None:
            raise ValueError(f"Simulated visit {visit} detector {detector} has no 'wcs' in its metadata.")
        fwhm = float(_meta(sim, "fwhm_science", _meta(sim, "fwhm", 3.0)))
        height, width = np.shape(sim.science.image)

        registry = self.butler.registry
        register_instrument(
            self.butler, self.instrument, detectors=[detector], physical_filters={physical_filter: band}
        )
        # day_obs as Rubin defines it: the local date at Cerro Pachon (UTC-12 h rollover).
        local = astropy.time.Time(mjd, format="mjd", scale="tai") - astropy.time.TimeDelta(
            12 * 3600, format="sec"
        )
        day_obs = int(local.strftime("%Y%m%d"))
        registry.syncDimensionData("day_obs", {"instrument": self.instrument, "id": day_obs})
        # The simulator's mjd is the middle of the exposure.
        begin = astropy.time.Time(mjd, format="mjd", scale="tai") - astropy.time.TimeDelta(
            exposure_time / 2, format="sec"
        )
        timespan = Timespan(begin, begin + astropy.time.TimeDelta(exposure_time, format="sec"))
        ra, dec = _detector_corners(wcs, width, height)
        corners = self._visit_corners.setdefault(visit, ([], []))
        corners[0].extend(ra)
        corners[1].extend(dec)
        registry.syncDimensionData(
            "visit",
            {
                "instrument": self.instrument,
                "id": visit,
                "name": f"v{visit}",
                "physical_filter": physical_filter,
                "day_obs": day_obs,
                "timespan": timespan,
                "exposure_time": exposure_time,
                "region": _region_from_corners(np.array(corners[0]), np.array(corners[1])),
            },
            update=True,
        )
        registry.syncDimensionData(
            "visit_detector_region",
            {
                "instrument": self.instrument,
                "visit": visit,
                "detector": detector,
                "region": _region_from_corners(ra, dec),
            },
            update=True,
        )
        # Every image has the WCS and the detector; the science and difference images also the
        # visit's metadata and the PSF width.
        placement = dict(wcs=wcs, instrument=self.instrument, detector=detector)
        visit_meta = dict(visit=visit, band=band, physical_filter=physical_filter, mjd=mjd, fwhm=fwhm)
        common = dict(placement, exposure_time=exposure_time, **visit_meta)
        data_id = {"instrument": self.instrument, "visit": visit, "detector": detector}
        science = make_visit_image(sim.science.image, sim.science.variance, sim.science.mask, **common)
        difference = make_difference_image(
            sim.difference.image, sim.difference.variance, sim.difference.mask, **common
        )
        template = make_masked_image(
            sim.template.image, sim.template.variance, sim.template.mask, **placement
        )
        self.butler.put(science, "preliminary_visit_image", data_id, run=self.run)
        self.butler.put(template, "template_detector", data_id, run=self.run)
        self.butler.put(difference, "difference_image", data_id, run=self.run)
        self.butler.put(sources_table(sim.sources), "dia_source_unstandardized", data_id, run=self.run)
        if "label" in sim.sources.colnames:
            self._labels.append(labels_table(sim.sources, mjd=mjd))
        return data_id

    def labels(self) -> astropy.table.Table:
        """Truth labels of every source written so far, one table."""
        if not self._labels:
            return astropy.table.Table({"id": np.zeros(0, np.int64), "label": np.zeros(0, np.int16)})
        return astropy.table.vstack(self._labels, join_type="outer")


def register_model(
    repo: ResourcePathExpression | Butler,
    package: Any = None,
    *,
    name: str = "default",
    dataset_type: str | None = None,
    chain: str = PRETRAINED_MODELS_CHAIN,
) -> Any:
    """Put a model package into ``pretrained_models/<name>`` and put that run first in the chain.

    Parameters
    ----------
    repo : `lsst.resources.ResourcePathExpression` or `lsst.daf.butler.Butler`
        Repository or writeable Butler.
    package : `str`, `lsst.meas.rbnet.package.ModelPackage` or `None`, optional
        A package file, a package, or `None` for the default model shipped with the
        package (`lsst.meas.rbnet.scoring.default_model_path`).
    name : `str`, optional
        Model name; the run is ``pretrained_models/<name>``, which must not exist yet.
    dataset_type : `str`, optional
        Dataset type name: by default the one of the package's kind,
        `MODEL_DATASET_TYPE` for a triplet package (the reliability task's
        ``connections.pretrainedModel``) and `SEQUENCE_MODEL_DATASET_TYPE` for a
        sequence package. One of those names with a package of the other kind is
        refused (a task would fail on it later with a misleading message).
    chain : `str`, optional
        CHAINED collection that lists the model runs, newest first; pipelines find a
        model with ``-i pretrained_models`` (or ``-i pretrained_models/<name>`` for one).

    Returns
    -------
    ref : `lsst.daf.butler.DatasetRef`
        The dataset written.

    Raises
    ------
    lsst.meas.rbnet.package.ModelPackageError
        If the file is not a valid model package.
    RuntimeError
        If the repository does not know the model storage class, or the run exists
        (also when another process registers the same name at the same time).
    ValueError
        If the name is not allowed or the package is of the wrong kind for the dataset type.

    Notes
    -----
    A failure leaves the registry as it was: the run is removed again.
    """
    from ..package import ModelPackage

    butler = open_repo(repo)
    if package is None:
        from ..scoring import default_model_path

        package = default_model_path()
    run = model_run(name)
    validate_run_name(chain, "chain")
    if not isinstance(package, ModelPackage):
        package = ModelPackage.load(str(package))
    kind_types = {kind: t for t, kind in MODEL_DATASET_TYPES.items()}
    if dataset_type is None:
        dataset_type = kind_types[package.kind]
    expected = MODEL_DATASET_TYPES.get(dataset_type)
    if expected is not None and expected != package.kind:
        raise ValueError(
            f"Package {package.version!r} is a {package.kind} model; dataset type {dataset_type!r} holds "
            f"{expected} models (the tasks reading it could not use it). Register it as "
            f"{kind_types[package.kind]!r} (the default for its kind)."
        )
    if _collection_exists(butler, run):
        raise RuntimeError(
            f"Collection {run!r} already exists; choose another --name (models are never overwritten)."
        )
    butler.registry.registerDatasetType(
        DatasetType(dataset_type, [], MODEL_STORAGE_CLASS, universe=butler.dimensions)
    )
    from lsst.daf.butler.registry import ConflictingDefinitionError

    with _new_run(butler, run):
        try:
            ref = butler.put(package, dataset_type, {}, run=run)
        except ConflictingDefinitionError:
            raise RuntimeError(
                f"A model is already in {run!r} (another process registered the same name at the same "
                "time); this one was not written. Choose another name."
            ) from None
        butler.registry.registerCollection(chain, CollectionType.CHAINED)
        children = [c for c in butler.registry.getCollectionChain(chain) if c != run]
        butler.registry.setCollectionChain(chain, [run] + children)
    return ref
