# This file is part of meas_rbnet.
"""Data problems of the tasks' inputs, as pipe_base error types.

Alert Production's error handling and reports treat an `lsst.pipe.base.AlgorithmError`
(a repeatable failure of the quantum, with metadata saying what was wrong) and an
`lsst.pipe.base.UnprocessableDataError` (inputs that cannot be processed by any
algorithm; the quantum ends without outputs and is reported as such) as they treat
every other task's. The algorithm errors here are also `ValueError`, so code that
calls ``run`` directly keeps catching them as before.

=============================  ==============================================  =====================
error                          raised when                                     pipe_base type
=============================  ==============================================  =====================
`MissingColumnError`           a table lacks a column the config names         AlgorithmError
`BadColumnError`               a column has the wrong type                     AlgorithmError
`DuplicateSourceIdError`       the source table repeats ids (outputs are       AlgorithmError
                               keyed by id)
`ImageGridMismatchError`       the images do not share one pixel grid          AlgorithmError
`UnusableTrainingDataError`    labelled inputs that cannot train a model       UnprocessableDataError
                               (one class only, no finite pixel)
=============================  ==============================================  =====================

No model package among the inputs is a `NoModelError` (`NoSequenceModelError` for the
sequence model), with one message saying how to get one (`no_model_message`); a package
that does not fit is a `ValueError` from `check_model_package`, the one version check.
"""

from __future__ import annotations

__all__ = [
    "RBNetAlgorithmError",
    "MissingColumnError",
    "BadColumnError",
    "DuplicateSourceIdError",
    "ImageGridMismatchError",
    "UnusableTrainingDataError",
    "NoModelError",
    "NoSequenceModelError",
    "no_model_message",
    "check_model_package",
    "require_columns",
]

from typing import Any

from .. import tables
from ..constants import VERSION_MAX_LENGTH

from lsst.pipe.base import AlgorithmError, UnprocessableDataError


def _plain(value: Any) -> Any:
    """A metadata value pipe_base accepts: str, int, float, bool or nested dicts of those."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class RBNetAlgorithmError(AlgorithmError, ValueError):
    """A data problem of an rbnet task's inputs: repeatable, not fixed by a retry.

    Parameters
    ----------
    message : `str`
        What is wrong, naming the dataset and the column or image.
    **metadata
        Details for the task metadata and reports (str, int, float, bool; lists become
        comma-separated strings).
    """

    def __init__(self, message: str, **metadata: Any) -> None:
        super().__init__(message)
        self._metadata = {k: _plain(v) for k, v in metadata.items()}

    @property
    def metadata(self) -> dict[str, Any]:
        """What was wrong, as plain values (see `lsst.pipe.base.AlgorithmError.metadata`)."""
        return self._metadata


class MissingColumnError(RBNetAlgorithmError):
    """A table lacks a column the task's config names (metadata: dataset, missing, columns)."""


def require_columns(table, columns, **kwargs) -> None:
    """`lsst.meas.rbnet.tables.require_columns` raising `MissingColumnError` (same message and metadata)."""
    try:
        tables.require_columns(table, columns, **kwargs)
    except tables.TableColumnError as err:
        raise MissingColumnError(str(err), **err.details) from None


class BadColumnError(RBNetAlgorithmError):
    """A column holds values of the wrong type (metadata: dataset, column, dtype)."""


class DuplicateSourceIdError(RBNetAlgorithmError):
    """The source table repeats ids; outputs are keyed by id (metadata: dataset, column, n_duplicates,
    examples)."""


class ImageGridMismatchError(RBNetAlgorithmError):
    """The images do not share one pixel grid (metadata: the (x0, y0, width, height) of each)."""


class UnusableTrainingDataError(UnprocessableDataError):
    """Labelled inputs that cannot train a model: no other algorithm could either.

    The quantum ends without outputs and is reported as unprocessable data, not as a
    failure to chase (see `lsst.pipe.base.UnprocessableDataError`).
    """


class NoModelError(FileNotFoundError):
    """No model package was found for the reliability task."""


class NoSequenceModelError(NoModelError):
    """No sequence model package was found for the sequence reliability task."""


def no_model_message(dataset_type: str, kind: str = "triplet") -> str:
    """The one "no model found" message: how to get a ``kind`` (``"triplet"`` or ``"sequence"``)
    package as ``dataset_type``."""
    if kind == "sequence":
        return (
            f"No sequence model package ('{dataset_type}' dataset) was found. Train one with "
            "pipelines/TrainSequence.yaml and add its output collection to the inputs, or register one with "
            f"'rbnet register-model REPO PACKAGE --name NAME --dataset-type {dataset_type}' and add "
            "'pretrained_models' to the inputs."
        )
    return (
        f"No model package ('{dataset_type}' dataset) was found. Add the collection that holds one to the "
        "inputs (e.g. 'pipetask run ... -i pretrained_models,...'), or register one first with "
        "'rbnet register-model REPO [PACKAGE] --name NAME' (the shipped default model by default)."
    )


def check_model_package(package: Any, *, expected_version: str, what: str = "model package") -> None:
    """Check a found package's version: ``expected_version`` (if set) and at most 7 characters.

    Parameters
    ----------
    package : `lsst.meas.rbnet.package.ModelPackage`
        The package found.
    expected_version : `str`
        ``config.expectedModelVersion``; empty accepts any.
    what : `str`
        How to name the package in the message.

    Raises
    ------
    ValueError
        If the version is not the expected one or is too long for ``reliabilityVersion``.
    """
    if expected_version and package.version != expected_version:
        raise ValueError(
            f"The {what} found has version {package.version!r}, but config.expectedModelVersion "
            f"is {expected_version!r}; check the input collections."
        )
    if len(package.version) > VERSION_MAX_LENGTH:
        raise ValueError(f"Model version {package.version!r} is longer than {VERSION_MAX_LENGTH} characters.")
