# This file is part of meas_rbnet.
"""Real/bogus reliability for difference-image sources.

The science path is plain functions on arrays; the PipelineTasks in
`lsst.meas.rbnet.tasks` add only the Butler. Heavy modules (torch) are imported
lazily so that importing the package is cheap.
"""

from .constants import *  # noqa: F401,F403
from .contract import *  # noqa: F401,F403
from .flags import *  # noqa: F401,F403
from .version import __version__  # noqa: F401


def __getattr__(name):
    # Lazy access to the scoring API so ``import lsst.meas.rbnet`` does not import torch.
    if name in ("score_triplets", "Scorer", "load_scorer"):
        from . import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
