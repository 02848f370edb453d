# This file is part of meas_rbnet.
"""Torch modules only: the triplet CNN, the VAE and the sequence classifiers.

No Butler and no I/O here; models are built by name through `registry.build`.
"""

from .registry import *  # noqa: F401,F403
