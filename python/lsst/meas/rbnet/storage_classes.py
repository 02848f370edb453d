# This file is part of meas_rbnet.
"""The package's Butler storage classes: their names, and their registration in this process.

The tasks name these storage classes in their connections and the Butler layer
(`lsst.meas.rbnet.butler.config`) writes them into repository configs; both import
them from here, so the tasks need not import the Butler layer. The definitions
themselves are data: ``storageClasses.yaml`` in `BUTLER_CONFIG_DIR`, next to the
datastore's formatter config.
"""

__all__ = [
    "MODEL_STORAGE_CLASS",
    "MASKED_IMAGE_STORAGE_CLASS",
    "BUTLER_CONFIG_DIR",
    "register_storage_classes",
]

import os

#: Storage class of a model package dataset.
MODEL_STORAGE_CLASS = "RBNetModelPackage"

#: Storage class the tasks read images through (converts from afw Exposure too).
MASKED_IMAGE_STORAGE_CLASS = "RBNetMaskedImage"

#: Directory holding ``storageClasses.yaml`` and ``datastores/fileDatastore.yaml`` (package data).
BUTLER_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "butler", "configs")


def register_storage_classes() -> None:
    """Make this process's storage class factory know the package's storage classes.

    A process that reads a quantum graph before any repository config (``pipetask
    run-qbb``, which every BPS job runs) looks the graph's storage classes up in the
    process-wide factory; the task modules call this on import so that such a process
    needs no ``DAF_BUTLER_CONFIG_PATH``. Safe to call more than once.
    """
    from lsst.daf.butler import StorageClassConfig, StorageClassFactory

    factory = StorageClassFactory()
    if all(name in factory for name in (MODEL_STORAGE_CLASS, MASKED_IMAGE_STORAGE_CLASS)):
        return
    factory.addFromConfig(StorageClassConfig(os.path.join(BUTLER_CONFIG_DIR, "storageClasses.yaml")))
