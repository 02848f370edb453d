# This file is part of meas_rbnet.
"""Dataset type and collection names, their checks, and the guarded creation of RUN collections.

Shared by the repository helpers (`lsst.meas.rbnet.butler.repo` re-exports every public
name) and by `lsst.meas.rbnet.butler.labels`; moved out of ``repo`` so no module is over
about 600 lines.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_INSTRUMENT",
    "LABELS_DATASET_TYPE",
    "MODEL_DATASET_TYPE",
    "MODEL_DATASET_TYPES",
    "PRETRAINED_MODELS_CHAIN",
    "SEQUENCE_MODEL_DATASET_TYPE",
    "check_storage_classes",
    "model_run",
    "validate_model_name",
    "validate_run_name",
]

import contextlib
import re
from typing import Any

from lsst.daf.butler import Butler, CollectionType

from .config import MODEL_STORAGE_CLASS

#: Instrument name of simulated data.
DEFAULT_INSTRUMENT = "RBSim"

#: Name of the model package dataset type (dimensionless, like meas_transiNet's).
MODEL_DATASET_TYPE = "pretrainedModelPackage"

#: Name of the sequence model package dataset type (the sequence task's connection).
SEQUENCE_MODEL_DATASET_TYPE = "pretrainedSequenceModelPackage"

#: The package kind each model dataset type holds: a task reading one kind cannot use the other.
MODEL_DATASET_TYPES: dict[str, str] = {
    MODEL_DATASET_TYPE: "triplet",
    SEQUENCE_MODEL_DATASET_TYPE: "sequence",
}

#: CHAINED collection that holds every registered model run, newest first.
PRETRAINED_MODELS_CHAIN = "pretrained_models"

#: One component of a collection name: letters, digits and ``_ . + -``, not starting with
#: ``. + -`` (so never ``..``), at most 100 characters.
_NAME_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")
_NAME_RULE = (
    "letters, digits and the characters _ . + - (each part 1 to 100 characters, not starting with "
    ". + or -, no '..'; no spaces, commas or other characters)"
)

#: Labels table dataset type (dimensions: instrument).
LABELS_DATASET_TYPE = "rbnet_labels"


def check_storage_classes(butler: Butler) -> None:
    """Raise a clear error if the repository does not know this package's storage classes.

    Raises
    ------
    RuntimeError
        Naming the fix: ``rbnet configure-repo REPO`` or ``DAF_BUTLER_CONFIG_PATH``.
    """
    from lsst.daf.butler import StorageClassFactory

    factory = StorageClassFactory()
    # The factory is process-wide and filled from each repository's config as it is opened.
    try:
        factory.getStorageClass(MODEL_STORAGE_CLASS)
    except KeyError:
        from .config import config_search_path

        raise RuntimeError(
            f"This Butler repository does not know the {MODEL_STORAGE_CLASS} storage class. Configure it "
            "once with 'rbnet configure-repo REPO', or set "
            f"DAF_BUTLER_CONFIG_PATH={config_search_path()} for every process that opens it."
        ) from None


def validate_run_name(run: Any, what: str = "RUN collection") -> str:
    """Check a RUN collection name: parts separated by ``/``, each as `validate_model_name`.

    Run names become folders of a file datastore, so ``..``, absolute names, empty parts
    and characters that other tools split on (``,``, spaces) are refused.

    Raises
    ------
    ValueError
        Naming the value and the allowed characters.
    """
    if not isinstance(run, str):
        raise ValueError(f"{what} name must be a string, got {run!r}.")
    parts = run.split("/")
    if any(not _NAME_COMPONENT.fullmatch(p) or ".." in p for p in parts) or len(run) > 400:
        raise ValueError(
            f"{what} name {run!r} is not allowed: use parts separated by '/' made of {_NAME_RULE}."
        )
    return run


def validate_model_name(name: Any) -> str:
    """Check a model name (one collection name part, no ``/``); see `validate_run_name`."""
    if not isinstance(name, str) or not _NAME_COMPONENT.fullmatch(name) or ".." in name:
        raise ValueError(f"Model name {name!r} is not allowed: use {_NAME_RULE}; no '/'.")
    return name


@contextlib.contextmanager
def _new_run(butler: Butler, run: str):
    """Register RUN ``run`` for the block; remove it again (with anything written) if the block fails.

    A failure then leaves the registry as it was, and the name is not burnt. A run that
    exists already (made by another process since it was checked) is refused, never reused.
    """
    from lsst.daf.butler import MissingCollectionError

    if not butler.registry.registerCollection(run, CollectionType.RUN):
        raise RuntimeError(
            f"Collection {run!r} already exists (another process may have just made it); "
            "nothing was written. Choose another name."
        )
    try:
        yield
    except BaseException:
        with contextlib.suppress(MissingCollectionError):
            butler.removeRuns([run], unlink_from_chains=True)
        raise


def _collection_exists(butler: Butler, name: str) -> bool:
    from lsst.daf.butler import MissingCollectionError

    try:
        butler.registry.getCollectionType(name)
    except MissingCollectionError:
        return False
    return True


def model_run(name: str) -> str:
    """RUN collection of a registered model: ``pretrained_models/<name>`` (name checked)."""
    return f"{PRETRAINED_MODELS_CHAIN}/{validate_model_name(name)}"
