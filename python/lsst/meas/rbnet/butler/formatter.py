# This file is part of meas_rbnet.
"""Butler formatter for model packages (storage class ``RBNetModelPackage``).

A model package dataset is one safetensors file: weights plus a JSON header with
the architecture name, hyperparameters, input contract, calibration and
provenance (see `lsst.meas.rbnet.package`). Reading it never executes code and
never unpickles.
"""

from __future__ import annotations

__all__ = ["ModelPackageFormatter", "clear_read_cache"]

import threading
from collections import OrderedDict
from typing import Any

from lsst.daf.butler import FormatterV2
from lsst.resources import ResourcePath

# Recently read packages by dataset id. Every quantum of a pipeline asks the Butler
# for the same model dataset; the payload is immutable once written (dataset ids are
# unique), so later reads in the same process skip the file entirely.
_CACHE: OrderedDict[Any, Any] = OrderedDict()
_CACHE_SIZE = 4
_LOCK = threading.Lock()


def clear_read_cache() -> None:
    """Forget the model packages read so far in this process."""
    with _LOCK:
        _CACHE.clear()


class ModelPackageFormatter(FormatterV2):
    """Read and write `~lsst.meas.rbnet.package.ModelPackage` as a ``.safetensors`` file.

    A dataset that is not a valid package raises
    `~lsst.meas.rbnet.package.ModelPackageError` naming the dataset (type, data ID,
    run and file), so a broken deployment is found at once (daf_butler passes it on
    as a `ValueError` carrying the same message).
    """

    default_extension = ".safetensors"
    supported_extensions = frozenset({".safetensors"})
    can_read_from_uri = True
    unsupported_parameters = None

    def _describe(self, uri: ResourcePath | None = None) -> str:
        try:
            ref = self.dataset_ref
            where = f"dataset {ref.datasetType.name}@{ref.dataId.required} in run {ref.run!r}"
        except Exception:
            where = "dataset"
        return f"{where} ({uri})" if uri is not None else where

    def read_from_uri(self, uri: ResourcePath, component: str | None = None, expected_size: int = -1) -> Any:
        from ..package import ModelPackage, ModelPackageError

        key = None
        try:
            key = self.dataset_ref.id
        except Exception:
            pass
        if key is not None:
            with _LOCK:
                if key in _CACHE:
                    _CACHE.move_to_end(key)
                    return _CACHE[key]
        try:
            data = uri.read()
        except FileNotFoundError as err:
            raise ModelPackageError(f"The model package file of {self._describe(uri)} is missing.") from err
        try:
            package = ModelPackage.from_bytes(data, source=self._describe(uri))
        except ModelPackageError:
            raise
        except Exception as err:
            # from_bytes raises ModelPackageError for bad input; anything else is still a
            # bad dataset from the caller's point of view.
            raise ModelPackageError(
                f"Cannot read the model package {self._describe(uri)}: {type(err).__name__}: {err}"
            ) from err
        if key is not None:
            with _LOCK:
                _CACHE[key] = package
                while len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
        return package

    def to_bytes(self, in_memory_dataset: Any) -> bytes:
        from ..package import ModelPackage

        if not isinstance(in_memory_dataset, ModelPackage):
            raise TypeError(
                f"Expected a ModelPackage for {self._describe()}, got {type(in_memory_dataset).__name__}."
            )
        return in_memory_dataset.to_bytes()
