# This file is part of meas_rbnet.
"""Butler layer: the model package storage class and formatter, repository helpers.

Submodules are imported on use so that importing this package stays light:
`~lsst.meas.rbnet.butler.config` (storage class configuration),
`~lsst.meas.rbnet.butler.formatter` (model package formatter),
`~lsst.meas.rbnet.butler.images` (lsst.images objects from arrays),
`~lsst.meas.rbnet.butler.repo` (create and fill repositories),
`~lsst.meas.rbnet.butler.postgres` (PostgreSQL registries).
"""

__all__ = [
    "MODEL_STORAGE_CLASS",
    "MASKED_IMAGE_STORAGE_CLASS",
    "butler_seed_config",
    "config_search_path",
    "configure_repo",
    "create_repo",
    "register_model",
    "ingest_labels",
    "VisitWriter",
]

from .config import (
    MASKED_IMAGE_STORAGE_CLASS,
    MODEL_STORAGE_CLASS,
    butler_seed_config,
    config_search_path,
    configure_repo,
)
from .repo import VisitWriter, create_repo, ingest_labels, register_model
