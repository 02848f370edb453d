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
- `simulate_sequences` / `simulate_visit_series`: the same objects over many visits.
- `make_gallery`: a plot of examples of every class.
"""

from .stamps import StampSet, simulate_stamps  # noqa: F401

__all__ = ["StampSet", "simulate_stamps"]
