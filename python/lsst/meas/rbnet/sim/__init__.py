# This file is part of meas_rbnet.
"""Simulated science, template and difference images with truth.

Realistic, seeded and reproducible: stars and galaxies convolved with
different PSFs in science and template, noise with variance planes, PSF
matching (and its failures), real sources of every class of
`lsst.meas.rbnet.constants.REAL_CLASSES`, artifacts of every class of
`lsst.meas.rbnet.constants.ARTIFACT_CLASSES`, and the mask planes a pipeline
sets. Entry points:

- `simulate_stamps`: labelled triplet stamps for training (fast path).
- `simulate_visit`: detector-sized images of one visit with a source table.
- `simulate_visit_stamps`: labelled stamps cut from simulated visits (training data
  with the crowding, shared artifacts and measured centroids of real visits).
- `simulate_sequences`: cutout sequences of objects over many visits.
- `simulate_visit_series`: detector-sized visits of the same objects.
- `make_gallery`: a plot of examples of every class.

Modules: `psf` (PSF and matching kernels), `render` (pixels from
components), `scene` (component tables, the static field), `artifacts`,
`labelled` (one recipe per class), `imaging` (noise, saturation, PSF
matching, subtraction, masks), `stamps`, `visit`, `visit_stamps`, `sequences`, `series`,
`gallery`, `io`; `detector` (visit data types and files, the pieces a visit and a
series share), `objects` (objects that behave in time, shared by sequences and series),
`masked_fits` (the afw ``MaskedImage`` FITS layout).
"""

from .detector import SimImage, SimulatedVisit, VisitMetadata
from .gallery import make_gallery
from .sequences import SequenceSet, simulate_sequences
from .series import simulate_visit_series
from .stamps import StampSet, simulate_stamps
from .visit import simulate_visit
from .visit_stamps import simulate_visit_stamps

__all__ = [
    "StampSet",
    "simulate_stamps",
    "SimImage",
    "SimulatedVisit",
    "VisitMetadata",
    "simulate_visit",
    "simulate_visit_stamps",
    "SequenceSet",
    "simulate_sequences",
    "simulate_visit_series",
    "make_gallery",
]
