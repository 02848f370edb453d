# This file is part of meas_rbnet.
"""The model package: a trained model as data, in one safetensors file.

A package holds everything needed to score with a model and nothing that
executes: architecture names and plain hyperparameters (built through the fixed
registry in `lsst.meas.rbnet.nn`), the weights, the input contract (stamp size,
channels, normalisation), the APDB ``reliabilityVersion`` string, the
calibration temperature, recommended thresholds with the purity and
completeness they give, the class names of an optional class head, metrics and
training provenance.

File format
-----------
One safetensors file (``.safetensors``). The tensors are the weights, named
``"<component>.<parameter>"`` (e.g. ``"classifier.features.0.weight"``). The
header's ``__metadata__`` (string to string) holds:

``"format"``
    ``"rbnet-model-package"``.
``"format_version"``
    ``"2"``; a reader refuses a newer version.
``"sha256"``
    `package_checksum`: SHA-256 over the `weights_digest` of the tensors (in
    name order, each tensor's name, dtype, shape and raw little-endian bytes)
    and every other metadata entry (key and value, the package JSON as stored).
    A changed byte anywhere in the weights or the metadata fails the check.
    (Format 1, still read, covered the weights only.)
``"package"``
    JSON object with the rest of the package (see `ModelPackage`).

Loading never unpickles (safetensors holds raw tensors) and never executes
code from the file: architectures are looked up by name in the registry.

The file format beneath `ModelPackage` (format constants, `ModelPackageError`,
`ComponentSpec`, digests, header reading, `read_package_metadata`) lives in
`package_format` and is re-exported here (the old import paths).
"""

from __future__ import annotations

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KINDS",
    "ComponentSpec",
    "ModelPackage",
    "ModelPackageError",
    "package_checksum",
    "read_package_metadata",
    "validate_version_string",
    "weights_digest",
]

import dataclasses
import datetime
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .constants import ALL_CLASSES
from .contract import InputContract
from .fileio import atomic_path
from .nn import registry
from .package_format import (  # noqa: F401
    FORMAT_NAME,
    FORMAT_VERSION,
    KINDS,
    _PACKAGE_KEY,
    _MAX_HEADER_BYTES,
    _REQUIRED_KEYS,
    _OPTIONAL_KEYS,
    _THRESHOLD_KEYS,
    ModelPackageError,
    ComponentSpec,
    validate_version_string,
    weights_digest,
    package_checksum,
    _json_default,
    _plain,
    _read_header_metadata,
    _check_format,
    _load_tensors,
    read_package_metadata,
)
from .version import __version__


@dataclasses.dataclass(eq=False)
class ModelPackage:
    """A trained model as data: architectures, weights, input contract, calibration, thresholds.

    Parameters
    ----------
    components : `dict` [`str`, `ComponentSpec`]
        Networks by role. A triplet package has ``"classifier"``; a sequence
        package has e.g. ``"encoder"`` and ``"classifier"``.
    state : `dict` [`str`, `torch.Tensor`]
        Weights of all components, keyed ``"<component>.<parameter>"`` (CPU tensors).
    kind : `str`
        One of `KINDS`.
    contract : `InputContract`
        How stamps are prepared for the model.
    version : `str`
        APDB ``reliabilityVersion`` (1 to 7 characters).
    temperature : `float`
        Calibration: ``reliability = sigmoid(logit / temperature)``; > 0.
    temperature_symmetric : `float`, optional
        Temperature for logits averaged over the 8 rotations/flips (the scorer's
        ``symmetry=True``); defaults to ``temperature``.
    thresholds : `list` [`dict`]
        Recommended thresholds on the reliability: dicts with ``name`` (e.g.
        ``"default"``, ``"purity95"``), ``threshold`` in [0, 1] and the
        ``purity`` and ``completeness`` (in [0, 1] or None) measured at it.
    classes : `tuple` [`str`, ...]
        Class names of the optional class head (empty without one).
    metrics : `dict`
        Evaluation metrics (JSON-serialisable).
    provenance : `dict`
        How the model was made: ``created``, ``command``, ``seed``, training
        data summary, git commit, ``rbnet_version``, ...
    extra : `dict`
        Kind-specific JSON-serialisable metadata.

    Notes
    -----
    The hyperparameters of a registered architecture are completed with its
    builder's defaults on construction, so the file records the full
    architecture and later changes of defaults cannot alter a stored model.

    Construction checks the metadata (kind, version, temperatures, contract,
    thresholds, JSON-serialisability); `validate` also builds every component
    and checks the weights against it. `load`, `from_bytes` and `from_modules`
    do both.
    """

    components: dict[str, ComponentSpec]
    state: dict[str, torch.Tensor]
    kind: str = "triplet"
    contract: InputContract = dataclasses.field(default_factory=InputContract)
    version: str = "0"
    temperature: float = 1.0
    temperature_symmetric: float | None = None
    thresholds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    classes: tuple[str, ...] = ()
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelPackageError(f"kind must be one of {KINDS}, got {self.kind!r}.")
        if not isinstance(self.components, Mapping) or not self.components:
            raise ModelPackageError("components must be a non-empty dict of name -> ComponentSpec.")
        comps = {}
        for name, spec in self.components.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ModelPackageError(f"component name {name!r} must be a non-empty string without dots.")
            if isinstance(spec, Mapping):
                if set(spec) - {"architecture", "hyperparameters"} or "architecture" not in spec:
                    raise ModelPackageError(
                        f"component {name!r} must have keys architecture and hyperparameters, "
                        f"got {sorted(spec)}."
                    )
                spec = ComponentSpec(**spec)
            if not isinstance(spec, ComponentSpec) or not isinstance(spec.architecture, str):
                raise ModelPackageError(f"component {name!r} must be a ComponentSpec, got {spec!r}.")
            if not isinstance(spec.hyperparameters, Mapping):
                raise ModelPackageError(f"component {name!r}: hyperparameters must be a dict.")
            hp = _plain(dict(spec.hyperparameters), f"component {name!r} hyperparameters")
            if spec.architecture in registry.architectures():
                # Store every hyperparameter, defaults included, so that a package does not
                # change meaning (or stop loading) when a builder's defaults change later.
                defaults = _plain(registry.architecture_defaults(spec.architecture), "defaults")
                hp = {**defaults, **hp}
            comps[name] = ComponentSpec(spec.architecture, hp)
        self.components = comps
        if self.kind == "triplet" and "classifier" not in comps:
            raise ModelPackageError(f"a triplet package needs a 'classifier' component, got {sorted(comps)}.")
        if not isinstance(self.state, Mapping):
            raise ModelPackageError("state must be a dict of name -> torch.Tensor.")
        for key, t in self.state.items():
            if not isinstance(t, torch.Tensor):
                raise ModelPackageError(f"state[{key!r}] is a {type(t).__name__}, not a torch.Tensor.")
        self.state = dict(self.state)
        if not isinstance(self.contract, InputContract):
            raise ModelPackageError(f"contract must be an InputContract, got {type(self.contract).__name__}.")
        try:
            validate_version_string(self.version)
        except ValueError as err:
            raise ModelPackageError(str(err)) from None
        self.temperature = self._check_temperature("temperature", self.temperature)
        if self.temperature_symmetric is None:
            self.temperature_symmetric = self.temperature
        self.temperature_symmetric = self._check_temperature(
            "temperature_symmetric", self.temperature_symmetric
        )
        self.thresholds = self._check_thresholds(self.thresholds)
        if isinstance(self.classes, str) or not all(isinstance(c, str) for c in self.classes):
            raise ModelPackageError(f"classes must be a sequence of class names, got {self.classes!r}.")
        self.classes = tuple(self.classes)
        for field in ("metrics", "provenance", "extra"):
            value = getattr(self, field)
            if not isinstance(value, Mapping):
                raise ModelPackageError(f"{field} must be a dict, got {type(value).__name__}.")
            setattr(self, field, _plain(dict(value), field))

    @staticmethod
    def _check_temperature(name: str, value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ModelPackageError(f"{name} must be a finite number > 0, got {value!r}.")
        return float(value)

    @staticmethod
    def _check_thresholds(thresholds: Any) -> list[dict[str, Any]]:
        if not isinstance(thresholds, (list, tuple)):
            raise ModelPackageError(f"thresholds must be a list of dicts, got {type(thresholds).__name__}.")
        out = []
        names = set()
        for i, t in enumerate(thresholds):
            if (
                not isinstance(t, Mapping)
                or set(t) - set(_THRESHOLD_KEYS)
                or "name" not in t
                or "threshold" not in t
            ):
                raise ModelPackageError(
                    f"thresholds[{i}] must be a dict with keys name, threshold (and optionally purity, "
                    f"completeness), got {t!r}."
                )
            if not isinstance(t["name"], str) or not t["name"] or t["name"] in names:
                raise ModelPackageError(f"thresholds[{i}] needs a unique non-empty name, got {t['name']!r}.")
            names.add(t["name"])
            entry = {"name": t["name"]}
            for key in ("threshold", "purity", "completeness"):
                v = t.get(key)
                if key != "threshold" and isinstance(v, float) and math.isnan(v):
                    # An undefined purity or completeness (no source above the threshold).
                    v = None
                if v is None and key != "threshold":
                    entry[key] = None
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):
                    raise ModelPackageError(
                        f"thresholds[{i}] ({t['name']}): {key} must be in [0, 1], got {v!r}."
                    )
                entry[key] = float(v)
            out.append(entry)
        return out

    # ------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------

    @classmethod
    def from_modules(
        cls,
        kind: str,
        components: Mapping[str, tuple[str, Mapping[str, Any], torch.nn.Module]],
        *,
        contract: InputContract,
        version: str,
        temperature: float = 1.0,
        temperature_symmetric: float | None = None,
        thresholds: list[dict[str, Any]] | None = None,
        classes: tuple[str, ...] | None = None,
        metrics: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ModelPackage:
        """Package trained modules.

        Parameters
        ----------
        kind : `str`
            One of `KINDS`.
        components : `dict` [`str`, `tuple`]
            ``{name: (architecture, hyperparameters, module)}``; each module must
            be what ``nn.build(architecture, **hyperparameters)`` makes (checked).
        contract, version, temperature, temperature_symmetric, thresholds, metrics, extra
            As in `ModelPackage`.
        classes : `tuple` [`str`, ...], optional
            Class-head names; by default `constants.ALL_CLASSES` if the
            ``"classifier"`` has ``n_classes == len(ALL_CLASSES)``, else empty.
        provenance : `dict`, optional
            Completed with ``created`` (UTC, ISO 8601), ``rbnet_version`` and
            ``torch_version`` when missing.

        Returns
        -------
        package : `ModelPackage`
            Validated package holding CPU copies of the weights.
        """
        specs = {}
        state: dict[str, torch.Tensor] = {}
        for name, entry in components.items():
            try:
                arch, hp, module = entry
            except (TypeError, ValueError):
                raise ModelPackageError(
                    f"components[{name!r}] must be (architecture, hyperparameters, module), got {entry!r}."
                ) from None
            if not isinstance(module, torch.nn.Module):
                raise ModelPackageError(
                    f"components[{name!r}]: {type(module).__name__} is not a torch.nn.Module."
                )
            specs[name] = ComponentSpec(arch, dict(hp))
            for key, t in module.state_dict().items():
                state[f"{name}.{key}"] = t.detach().to("cpu", copy=True).contiguous()
        if classes is None:
            clf = specs.get("classifier")
            n_classes = clf.hyperparameters.get("n_classes", 0) if clf is not None else 0
            classes = ALL_CLASSES if n_classes == len(ALL_CLASSES) else ()
        prov = dict(provenance or {})
        prov.setdefault("created", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
        prov.setdefault("rbnet_version", __version__)
        prov.setdefault("torch_version", torch.__version__)
        package = cls(
            components=specs,
            state=state,
            kind=kind,
            contract=contract,
            version=version,
            temperature=temperature,
            temperature_symmetric=temperature_symmetric,
            thresholds=list(thresholds or []),
            classes=tuple(classes),
            metrics=dict(metrics or {}),
            provenance=prov,
            extra=dict(extra or {}),
        )
        package.validate()
        return package

    # ------------------------------------------------------------------
    # Use
    # ------------------------------------------------------------------

    def _build_empty(self, component: str, device: str = "cpu") -> torch.nn.Module:
        """Build a component's module with fresh weights (on ``device``; "meta" allocates nothing)."""
        try:
            spec = self.components[component]
        except KeyError:
            raise ModelPackageError(
                f"package has no component {component!r}; it has {sorted(self.components)}."
            ) from None
        if spec.architecture not in registry.architectures():
            raise ModelPackageError(
                f"component {component!r}: unknown architecture {spec.architecture!r}; this version of "
                f"lsst.meas.rbnet knows {registry.architectures()}."
            )
        try:
            # Bounds first: hyperparameters from a file must not make us build a huge network.
            registry.check_hyperparameters(spec.architecture, spec.hyperparameters)
        except ValueError as err:
            raise ModelPackageError(f"component {component!r}: {err}") from None
        try:
            with torch.device(device):
                return registry.build(spec.architecture, **spec.hyperparameters)
        except Exception as err:  # noqa: BLE001 - any failure of a builder means "not accepted"
            raise ModelPackageError(
                f"component {component!r}: architecture {spec.architecture!r} does not accept the "
                f"hyperparameters {spec.hyperparameters}: {err}"
            ) from None

    def component_state(self, component: str) -> dict[str, torch.Tensor]:
        """Weights of one component, with the ``"<component>."`` prefix removed."""
        prefix = component + "."
        return {k[len(prefix) :]: v for k, v in self.state.items() if k.startswith(prefix)}

    def build(self, component: str = "classifier") -> torch.nn.Module:
        """Build a component with its weights loaded strictly, in eval mode, on the CPU.

        Raises
        ------
        ModelPackageError
            If the component is unknown, its architecture or hyperparameters are
            not accepted, or the weights do not match the built module.
        """
        # Shapes are checked on the meta device first, so absurd hyperparameters in a
        # file cannot make us allocate more than the weights the file really holds.
        self._check_state(component, self._build_empty(component, device="meta"))
        module = self._build_empty(component)
        module.load_state_dict(self.component_state(component), strict=True)
        return module.eval()

    def _check_state(self, component: str, module: torch.nn.Module) -> None:
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in self.component_state(component).items()}
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        if missing or unexpected or wrong:
            parts = []
            if missing:
                parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if unexpected:
                parts.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
            if wrong:
                parts.append(
                    "wrong shapes "
                    + ", ".join(f"{k}: {got[k]} (module has {expected[k]})" for k in wrong[:5])
                    + (" ..." if len(wrong) > 5 else "")
                )
            arch = self.components[component].architecture
            raise ModelPackageError(
                f"component {component!r} ({arch}): weights do not match: {'; '.join(parts)}."
            )

    def validate(self) -> None:
        """Check that every component builds and that the weights fit and are finite.

        Raises
        ------
        ModelPackageError
            Naming the problem.
        """
        prefixes = {k.split(".", 1)[0] for k in self.state}
        orphans = sorted(prefixes - set(self.components))
        if orphans:
            raise ModelPackageError(
                f"weights for unknown components {orphans} (components: {sorted(self.components)})."
            )
        for name, t in self.state.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ModelPackageError(f"tensor {name!r} has non-finite (NaN or infinite) weights.")
        for component in self.components:
            self._check_state(component, self._build_empty(component, device="meta"))
            hp = {
                **registry.architecture_defaults(self.components[component].architecture),
                **self.components[component].hyperparameters,
            }
            for key, value in (
                ("in_channels", self.contract.n_channels),
                ("stamp_size", self.contract.stamp_size),
            ):
                if key in hp and hp[key] != value:
                    raise ModelPackageError(
                        f"component {component!r} has {key}={hp[key]!r} but the input contract says {value}."
                    )
            n_classes = hp.get("n_classes", 0) if component == "classifier" else 0
            if isinstance(n_classes, int) and n_classes > 0 and len(self.classes) != n_classes:
                raise ModelPackageError(
                    f"the classifier has a class head of {n_classes} classes but the package lists "
                    f"{len(self.classes)} class names."
                )

    @property
    def digest(self) -> str:
        """SHA-256 hex digest of the weights (`weights_digest`).

        Kept from the last call while the weights are the same tensors, unchanged in place
        (same version counters): tasks ask for it on every run to find their cached scorer,
        and hashing the weights of a default-size sequence model takes about 20 ms.
        """
        if any(t.is_inference() for t in self.state.values()):
            return weights_digest(self.state)  # inference tensors keep no version counter
        stamp = [(name, t, t._version) for name, t in self.state.items()]
        cached = self.__dict__.get("_digest_memo")
        if cached is not None and len(cached[0]) == len(stamp):
            if all(n == m and t is u and v == w for (n, t, v), (m, u, w) in zip(cached[0], stamp)):
                return cached[1]
        digest = weights_digest(self.state)
        self.__dict__["_digest_memo"] = (stamp, digest)
        return digest

    def threshold(self, name: str = "default") -> float:
        """The recommended threshold called ``name``.

        Raises
        ------
        KeyError
            If there is none of that name (the message lists those there are).
        """
        for t in self.thresholds:
            if t["name"] == name:
                return t["threshold"]
        raise KeyError(
            f"model package {self.version!r} has no threshold {name!r}; "
            f"it has {[t['name'] for t in self.thresholds]}."
        )

    def metadata(self) -> dict[str, Any]:
        """Everything but the weights, as the JSON object stored in the file."""
        return {
            "kind": self.kind,
            "components": {k: v.to_dict() for k, v in self.components.items()},
            "contract": self.contract.to_dict(),
            "version": self.version,
            "temperature": self.temperature,
            "temperature_symmetric": self.temperature_symmetric,
            "thresholds": self.thresholds,
            "classes": list(self.classes),
            "metrics": self.metrics,
            "provenance": self.provenance,
            "extra": self.extra,
        }

    def n_parameters(self, component: str | None = None) -> int:
        """Number of weight values (of one component, or all)."""
        state = self.state if component is None else self.component_state(component)
        return int(sum(t.numel() for t in state.values()))

    # ------------------------------------------------------------------
    # Serialisation
    # ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The package as the bytes of a safetensors file."""
        from safetensors.torch import save

        meta = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            _PACKAGE_KEY: json.dumps(self.metadata(), sort_keys=True, default=_json_default),
        }
        meta["sha256"] = package_checksum(self.digest, meta)
        # safetensors refuses tensors sharing memory and non-contiguous ones.
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state.items()}
        return save(tensors, metadata=meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write the package to ``path`` (a ``.safetensors`` file), atomically."""
        path = Path(path)
        data = self.to_bytes()
        # Write then rename, so a reader never sees a half-written package.
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelPackage:
        """Read and validate a package file.

        Raises
        ------
        FileNotFoundError
            If there is no such file.
        ModelPackageError
            If the file is not a valid package (the message names the file and the problem).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Model package {str(path)!r} does not exist or is not a file.")
        return cls.from_bytes(path.read_bytes(), source=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> ModelPackage:
        """Read and validate a package from the bytes of a safetensors file.

        Parameters
        ----------
        data : `bytes`
            File content.
        source : `str`
            Name used in error messages (e.g. the file path or a Butler URI).

        Raises
        ------
        ModelPackageError
            If the data are not a valid package; the message starts with ``source``.
        """
        try:
            meta = _read_header_metadata(data)
            package_json = _check_format(meta)
            tensors = _load_tensors(data)
            digest = weights_digest(tensors)
            if int(meta["format_version"]) >= 2:
                digest = package_checksum(digest, meta)
                what = "the weights and metadata hash"
            else:
                what = "the weights hash"
            if digest != meta.get("sha256"):
                raise ModelPackageError(
                    f"checksum mismatch: {what} to {digest[:16]}... but the header records "
                    f"{str(meta.get('sha256'))[:16]}...; the file is corrupted."
                )
            package = cls._from_metadata(package_json, tensors)
            package.validate()
        except ModelPackageError as err:
            raise ModelPackageError(f"Model package {source}: {err}") from None
        return package

    @classmethod
    def _from_metadata(cls, meta: Any, tensors: dict[str, torch.Tensor]) -> ModelPackage:
        if not isinstance(meta, dict):
            raise ModelPackageError("package metadata is not a JSON object.")
        missing = [k for k in _REQUIRED_KEYS if k not in meta]
        if missing:
            raise ModelPackageError(f"package metadata lacks {missing}.")
        unknown = sorted(set(meta) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
        if unknown:
            raise ModelPackageError(
                f"package metadata has unknown keys {unknown}; was it written by a newer lsst.meas.rbnet?"
            )
        try:
            contract = InputContract.from_dict(meta["contract"])
        except (TypeError, ValueError) as err:
            raise ModelPackageError(f"invalid input contract {meta['contract']!r}: {err}") from None
        comps = meta["components"]
        if not isinstance(comps, dict):
            raise ModelPackageError("components must be a JSON object.")
        specs = {}
        for name, c in comps.items():
            if not isinstance(c, dict) or set(c) != {"architecture", "hyperparameters"}:
                raise ModelPackageError(
                    f"component {name!r} must have exactly architecture and hyperparameters."
                )
            specs[name] = ComponentSpec(c["architecture"], c["hyperparameters"])
        kwargs = {k: meta[k] for k in _OPTIONAL_KEYS if k in meta}
        if "classes" in kwargs and isinstance(kwargs["classes"], list):
            kwargs["classes"] = tuple(kwargs["classes"])
        return cls(
            components=specs,
            state=tensors,
            kind=meta["kind"],
            contract=contract,
            version=meta["version"],
            temperature=meta["temperature"],
            **kwargs,
        )
