# This file is part of meas_rbnet.
"""Labelled stamps cut from simulated detector visits.

`simulate_stamps` renders one small scene per example; the stamps a pipeline
scores come from full detector visits instead, where neighbouring detections
share trails, ghosts and bad columns, fields are crowded, all sources of a visit
see one PSF and the centroids are measured. `simulate_visit_stamps` simulates
one visit per seed with `simulate_visit` and cuts the stamps of all its sources
with the pipeline's cutout code, in the layout of `simulate_stamps`, so that
both kinds of data can be mixed for training and evaluation.
"""

__all__ = ["simulate_visit_stamps", "VISIT_ID_STRIDE"]

from collections.abc import Callable, Iterable

import numpy as np
from astropy.table import Table

from ..constants import CHANNEL_ORDER
from ..cutouts import extract_cutouts
from .stamps import StampSet
from .visit import simulate_visit

#: ``id`` of a stamp = the visit's source id + ``seed * VISIT_ID_STRIDE`` (kept for
#: compatibility with the first files made this way; ids stay unique across visits
#: because the visit's source ids already carry the visit number).
VISIT_ID_STRIDE = 100_000


def simulate_visit_stamps(
    seeds: Iterable[int],
    *,
    shape=(1024, 1024),
    n_sources: int = 300,
    stamp_size: int = 51,
    progress: Callable[[int, int], None] | None = None,
) -> StampSet:
    """Simulate one detector visit per seed and cut the stamps of all its sources.

    Parameters
    ----------
    seeds : iterable of `int`
        One `simulate_visit` seed per visit (other visit parameters at their
        defaults). The same seeds give the same stamps.
    shape : `tuple` [`int`, `int`]
        Detector ``(height, width)`` in pixels.
    n_sources : `int`
        Labelled objects per visit.
    stamp_size : `int`
        Stamp side S in pixels (odd, >= 3).
    progress : callable, optional
        Called as ``progress(visits_done, n_visits)`` after each visit.

    Returns
    -------
    stamps : `StampSet`
        ``stamps`` (n, 3, S, S) float32 nJy, channels in `CHANNEL_ORDER`, the raw
        pixels around the measured centroid (NaN off the detector; bad-mask
        pixels are *not* blanked); ``masks`` (n, 3, S, S) int32 mask planes (0
        off the detector); ``table`` with ``id`` (unique across visits),
        ``label``, ``source_class``, ``snr``, ``flux`` (the measured PSF flux,
        nJy), ``fwhm_science`` and ``fwhm_template`` (pixels, one value per visit).

    Raises
    ------
    ValueError
        If ``seeds`` is empty or ``stamp_size`` is even or < 3.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("simulate_visit_stamps: seeds is empty; give at least one visit seed.")
    if stamp_size < 3 or stamp_size % 2 != 1:
        raise ValueError(f"simulate_visit_stamps: stamp_size must be odd and >= 3, got {stamp_size}.")
    names = ("id", "label", "source_class", "snr", "flux", "fwhm_science", "fwhm_template")
    stamps, masks = [], []
    columns = {name: [] for name in names}
    for done, seed in enumerate(seeds, 1):
        visit = simulate_visit(seed, shape=shape, n_sources=n_sources)
        sources = visit.sources
        x, y = np.asarray(sources["x"]), np.asarray(sources["y"])
        images = [visit.difference, visit.science, visit.template]
        # Raw pixels: blanking bad-mask pixels is left to the consumer (training
        # blanks them in a fraction of the stamps, as the pipeline does).
        stamps.append(extract_cutouts([im.image for im in images], x, y, stamp_size, masks=None).stamps)
        # Mask planes through the same cutout code (as float: off the detector -> NaN -> 0).
        cut = extract_cutouts([im.mask.astype(np.float32) for im in images], x, y, stamp_size, masks=None)
        masks.append(np.nan_to_num(cut.stamps, nan=0).astype(np.int32))
        n = len(sources)
        columns["id"].append(np.asarray(sources["id"], dtype=np.int64) + seed * VISIT_ID_STRIDE)
        columns["label"].append(np.asarray(sources["label"], dtype=np.int8))
        columns["source_class"].append(np.asarray(sources["source_class"]).astype(str))
        columns["snr"].append(np.asarray(sources["snr"], dtype=np.float64))
        columns["flux"].append(np.asarray(sources["psfFlux"], dtype=np.float64))
        columns["fwhm_science"].append(np.full(n, visit.metadata.fwhm_science, dtype=np.float64))
        columns["fwhm_template"].append(np.full(n, visit.metadata.fwhm_template, dtype=np.float64))
        if progress is not None:
            progress(done, len(seeds))
    table = Table()
    for name in names:
        table[name] = np.concatenate(columns[name])
    table["flux"].unit = "nJy"
    table["fwhm_science"].unit = "pix"
    table["fwhm_template"].unit = "pix"
    table.meta.update(
        {
            "channels": list(CHANNEL_ORDER),
            "stamp_size": stamp_size,
            "seeds": seeds,
            "shape": [int(v) for v in shape],
            "n_sources": n_sources,
            "units": "nJy",
        }
    )
    return StampSet(stamps=np.concatenate(stamps), masks=np.concatenate(masks), table=table)
