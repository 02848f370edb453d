# This file is part of meas_rbnet.
"""Imports every module that registers architectures (see `registry`)."""

__all__: list[str] = []

from . import triplet  # noqa: F401,E402
from . import vae  # noqa: F401,E402
from . import sequence  # noqa: F401,E402
