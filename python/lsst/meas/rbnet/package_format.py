# This file is part of meas_rbnet.
"""The file format of model packages beneath `ModelPackage`: format constants, the error
type, version strings, the weights digest and checksum, JSON conversion of metadata,
and reading a package file's safetensors header and tensors (never executes or
unpickles).

`package` re-exports these names (the old import path).
"""

from __future__ import annotations

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KINDS",
    "ComponentSpec",
    "ModelPackageError",
    "package_checksum",
    "read_package_metadata",
    "validate_version_string",
    "weights_digest",
]

import dataclasses
import datetime
import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .constants import VERSION_MAX_LENGTH
from .version import __version__


#: Value of the ``"format"`` metadata key.
FORMAT_NAME: str = "rbnet-model-package"


#: Newest format version this code reads and the one it writes. Version 2: the checksum
#: covers the metadata as well as the weights.
FORMAT_VERSION: int = 2


#: Kinds of package: a single-visit triplet classifier or a multi-visit sequence model.
KINDS: tuple[str, ...] = ("triplet", "sequence")


#: Metadata key of the package JSON in the safetensors header.
_PACKAGE_KEY = "package"


#: A safetensors header longer than this is not believed (the format's own limit is 100 MB).
_MAX_HEADER_BYTES = 100_000_000


#: Keys of the package JSON: required, then optional with defaults.
_REQUIRED_KEYS = ("kind", "components", "contract", "version", "temperature")


_OPTIONAL_KEYS = ("temperature_symmetric", "thresholds", "classes", "metrics", "provenance", "extra")


_THRESHOLD_KEYS = ("name", "threshold", "purity", "completeness")


class ModelPackageError(ValueError):
    """A model package is malformed, corrupted, or cannot be used by this version."""


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """One network of a package, as data.

    Parameters
    ----------
    architecture : `str`
        Name in the architecture registry (`lsst.meas.rbnet.nn.architectures`).
    hyperparameters : `dict` [`str`, any]
        Keyword arguments of the builder (plain JSON types).
    """

    architecture: str
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        return {"architecture": self.architecture, "hyperparameters": dict(self.hyperparameters)}


def validate_version_string(version: Any) -> str:
    """Check an APDB ``reliabilityVersion`` string (1 to 7 printable ASCII characters, no spaces).

    Raises
    ------
    ValueError
        If it is not such a string.
    """
    if not isinstance(version, str):
        raise ValueError(f"version must be a string, got {type(version).__name__} {version!r}.")
    if not (1 <= len(version) <= VERSION_MAX_LENGTH):
        raise ValueError(
            f"version {version!r} has {len(version)} characters; the APDB reliabilityVersion takes "
            f"1 to {VERSION_MAX_LENGTH}."
        )
    if not (version.isascii() and version.isprintable()) or any(ch.isspace() for ch in version):
        raise ValueError(f"version {version!r} must be printable ASCII without spaces.")
    return version


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of named tensors (names, dtypes, shapes and bytes, in name order).

    Independent of how the tensors are laid out in a file, so it identifies the
    weights themselves.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode("utf-8") + b"\0")
        h.update(str(t.dtype).encode("ascii") + b"\0")
        h.update(json.dumps(list(t.shape)).encode("ascii") + b"\0")
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def package_checksum(state_digest: str, metadata: Mapping[str, str]) -> str:
    """SHA-256 hex digest of a package file's content (format 2 and later).

    Parameters
    ----------
    state_digest : `str`
        `weights_digest` of the tensors.
    metadata : `dict` [`str`, `str`]
        The safetensors ``__metadata__`` entries; every entry but ``"sha256"``
        is covered, keys and values as stored (the package JSON as a string).
    """
    h = hashlib.sha256()
    h.update(b"rbnet-model-package\0weights\0" + state_digest.encode("ascii") + b"\0")
    for key in sorted(metadata):
        if key == "sha256":
            continue
        value = metadata[key]
        h.update(str(key).encode("utf-8") + b"\0" + str(value).encode("utf-8") + b"\0")
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays (metrics often are) become plain numbers and lists.
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, (Path, datetime.datetime, datetime.date)):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _plain(value: Any, what: str) -> Any:
    """``value`` after a JSON round trip (tuples become lists), or a ModelPackageError."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as err:
        raise ModelPackageError(f"{what} must be JSON-serialisable: {err}.") from None


def _read_header_metadata(data: bytes, check_data: bool = True) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header, checking the header's framing.

    With ``check_data`` the file must also be long enough for every tensor the
    header lists (``data`` may be only the header otherwise).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ModelPackageError(f"expected bytes, got {type(data).__name__}.")
    if len(data) < 8:
        raise ModelPackageError(f"not a safetensors file: only {len(data)} bytes (truncated or empty).")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > _MAX_HEADER_BYTES or 8 + n > len(data):
        raise ModelPackageError(
            f"not a safetensors file, or truncated: the header claims {n} bytes but the file has {len(data)}."
        )
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelPackageError(f"not a safetensors file, or its header is corrupt: {err}.") from None
    if not isinstance(header, dict):
        raise ModelPackageError("not a safetensors file: the header is not a JSON object.")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise ModelPackageError("not an rbnet model package: the safetensors file has no metadata.")
    if check_data:
        # A file shorter than the end of its last tensor is truncated.
        ends = [
            v["data_offsets"][1]
            for k, v in header.items()
            if k != "__metadata__"
            and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list)
            and len(v["data_offsets"]) == 2
            and isinstance(v["data_offsets"][1], int)
        ]
        if ends and 8 + n + max(ends) > len(data):
            raise ModelPackageError(
                f"truncated: the tensors need {8 + n + max(ends)} bytes but the file has {len(data)}."
            )
    return meta


def _check_format(meta: dict[str, str]) -> Any:
    """Check format name and version; return the parsed package JSON."""
    if meta.get("format") != FORMAT_NAME:
        raise ModelPackageError(
            f"not an rbnet model package: metadata format is {meta.get('format')!r}, "
            f"expected {FORMAT_NAME!r}."
        )
    raw = meta.get("format_version")
    try:
        fv = int(raw)
    except (TypeError, ValueError):
        raise ModelPackageError(f"format_version {raw!r} is not an integer; the header is corrupt.") from None
    if fv > FORMAT_VERSION:
        raise ModelPackageError(
            f"format version {fv} was written by a newer lsst.meas.rbnet (this one, {__version__}, reads up "
            f"to {FORMAT_VERSION}); upgrade lsst.meas.rbnet."
        )
    if fv < 1:
        raise ModelPackageError(f"format_version {fv} is not valid.")
    if _PACKAGE_KEY not in meta:
        raise ModelPackageError(f"metadata lacks the {_PACKAGE_KEY!r} entry.")
    try:
        return json.loads(meta[_PACKAGE_KEY])
    except (TypeError, json.JSONDecodeError) as err:
        raise ModelPackageError(f"package metadata is not valid JSON: {err}.") from None


def _load_tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError, TypeError) as err:
        raise ModelPackageError(f"cannot read the tensors (corrupt or truncated file): {err}.") from None


def read_package_metadata(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """The package metadata of a file (or its bytes) without loading or checking the weights.

    Cheap: reads only the safetensors header. Useful for listing models.

    Returns
    -------
    metadata : `dict`
        The JSON object of `ModelPackage.metadata` plus ``"format_version"`` and ``"sha256"``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, head = "<bytes>", bytes(source)
    else:
        name = str(source)
        with open(source, "rb") as f:
            first = f.read(8)
            if len(first) == 8:
                (n,) = struct.unpack("<Q", first)
                head = first + f.read(min(n, _MAX_HEADER_BYTES))
            else:
                head = first
    try:
        meta = _read_header_metadata(head, check_data=False)
        out = _check_format(meta)
        if not isinstance(out, dict):
            raise ModelPackageError("package metadata is not a JSON object.")
    except ModelPackageError as err:
        raise ModelPackageError(f"Model package {name}: {err}") from None
    out["format_version"] = int(meta["format_version"])
    out["sha256"] = meta.get("sha256")
    return out
