# This file is part of meas_rbnet.
"""Scoring: calibrated real/bogus probabilities from a model package.

The `Scorer` loads a triplet model package once, keeps the network on a device
(CPU or CUDA) and scores stamps in batches of a fixed size, so memory is
bounded by the batch size and not by the number of sources. `load_scorer`
caches scorers per process, so a PipelineTask quantum, a notebook or a loop
calling `score_triplets` loads a model once.

Definitions
-----------
- ``logit``: network output for ``P(real)``.
- ``reliability = sigmoid(logit / temperature)``, the calibrated probability,
  float32 in [0, 1]. With ``symmetry=True`` the logit is the mean of the
  logits of the 8 rotations by multiples of 90 degrees and flips of the stamp,
  and the package's ``temperature_symmetric`` is used.
- Sources whose flags carry any bit of `flags.UNSCORABLE` (or ``NOT_SCORED``)
  get ``reliability = NaN`` and ``NOT_SCORED``; every input row has an output row.

Devices: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
``"cuda:N"``. On CUDA batches are copied from pinned memory without blocking
and the network runs under `torch.autocast` (bfloat16 where supported, else
float16); on the CPU it runs in float32.

The runtime shared with the sequence model (device, precision, the model cache) lives in
`runtime`, the scorer's result, argument checks and background pipeline in
`scoring_support`; both are re-exported here (the old import paths).
"""

from __future__ import annotations

__all__ = [
    "CPU_CHUNK_PIXELS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MODEL_FILENAME",
    "PIPELINE_BATCH",
    "ScoreResult",
    "Scorer",
    "autocast_dtype",
    "cached_model",
    "cpu_network_chunk",
    "clear_scorer_cache",
    "default_model_path",
    "load_scorer",
    "package_key",
    "score_triplets",
    "select_device",
]

import importlib.resources
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import cutouts
from .constants import CHANNEL_ORDER, DEFAULT_BAD_MASK_PLANES, mask_bits
from .flags import UNSCORABLE, SourceFlag
from .nn.triplet import dihedral_transform
from .package import ModelPackage, ModelPackageError
from .runtime import (  # noqa: F401
    CPU_CHUNK_PIXELS,
    _DEVICE_FORMS,
    _CACHE_SIZE,
    select_device,
    autocast_dtype,
    cpu_network_chunk,
    _fuse_conv_bn,
    _cache,
    _cache_lock,
    clear_scorer_cache,
    cached_model,
    package_key,
)
from .scoring_support import (  # noqa: F401
    ScoreResult,
    _check_flag,
    _check_batch_size,
    _Failed,
    _in_background,
    _check_stamp_shape,
    _check_channel_arrays,
)

#: File name of the default model package shipped in ``lsst.meas.rbnet``'s ``data`` directory.
DEFAULT_MODEL_FILENAME: str = "rbnet-default.safetensors"

#: Default number of sources per batch.
DEFAULT_BATCH_SIZE: int = 1024

#: On the CPU, `Scorer.score_images` cuts stamps in batches of at most this many sources, the
#: next batch in a background thread while the network scores the current one.
PIPELINE_BATCH: int = 256

_log = logging.getLogger(__name__)

_UNSCORED = np.int32(SourceFlag.NOT_SCORED)
_UNSCORABLE_BITS = np.int32(UNSCORABLE | SourceFlag.NOT_SCORED)


# ----------------------------------------------------------------------
# The scorer
# ----------------------------------------------------------------------


class Scorer:
    """Scores stamps with a triplet model package on one device.

    Parameters
    ----------
    package : `ModelPackage`
        A package of kind ``"triplet"``.
    device : `str` or `torch.device`
        See `select_device`.
    batch_size : `int`
        Sources per batch (preparation and network); bounds the memory used.
    symmetry : `bool`
        Average logits over the 8 rotations/flips of each stamp (8 times the
        network cost) and calibrate with ``temperature_symmetric``.
    amp : `str` or `bool`
        Mixed precision; see `autocast_dtype`.
    num_threads : `int`, optional
        If given, ``torch.set_num_threads(num_threads)`` (process-wide).
    channels_last : `bool`
        Keep the network and batches in channels-last memory layout (measured
        2-3 times faster for these small convolutions on the CPU; the layout
        tensor cores prefer on CUDA).
    fuse : `bool`
        Fold batch norms into convolutions (same results up to rounding, faster).
    network_chunk : `int` or None, optional
        Largest number of stamps the network sees at once; a batch is cut into
        chunks of this size (0: whole batches). Default: `cpu_network_chunk` of
        the stamp size on the CPU (small chunks keep the activations in cache,
        up to twice as fast), whole batches on CUDA.

    Attributes
    ----------
    package : `ModelPackage`
    contract : `InputContract`
    version : `str`
        The package's ``reliabilityVersion``.
    device : `torch.device`
    model : `torch.nn.Module`
        The network, in eval mode on ``device``.
    """

    def __init__(
        self,
        package: ModelPackage,
        device: str | torch.device = "auto",
        batch_size: int = DEFAULT_BATCH_SIZE,
        symmetry: bool = False,
        amp: str | bool = "auto",
        num_threads: int | None = None,
        channels_last: bool = True,
        fuse: bool = True,
        network_chunk: int | None = None,
    ):
        if not isinstance(package, ModelPackage):
            raise TypeError(f"package must be a ModelPackage, got {type(package).__name__}.")
        if package.kind != "triplet":
            raise ModelPackageError(
                f"Scorer scores triplet packages; package {package.version!r} is of kind {package.kind!r}."
            )
        if num_threads is not None:
            if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
                raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}.")
            torch.set_num_threads(num_threads)
        self.package = package
        self.contract = package.contract
        self.version = package.version
        self.device = select_device(device)
        self.batch_size = _check_batch_size(batch_size)
        self.symmetry = _check_flag("symmetry", symmetry)
        self.amp_dtype = autocast_dtype(self.device, amp)
        self.channels_last = bool(channels_last)
        if network_chunk is None:
            network_chunk = cpu_network_chunk(self.contract.stamp_size) if self.device.type == "cpu" else 0
        self.network_chunk = _check_batch_size(network_chunk) if network_chunk else 0
        self.temperature = package.temperature_symmetric if self.symmetry else package.temperature
        model = package.build("classifier")
        if fuse:
            model = _fuse_conv_bn(model)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        S = self.contract.stamp_size
        self._input_shape = (self.contract.n_channels, S, S)
        _log.info(
            "Model %s on %s (asked for %r): %s, batches of %d%s%s.",
            self.version,
            self.device,
            str(device),
            "float32" if self.amp_dtype is None else f"autocast {str(self.amp_dtype).replace('torch.', '')}",
            self.batch_size,
            f", network chunks of {self.network_chunk}" if self.network_chunk else "",
            ", symmetry averaging" if self.symmetry else "",
        )

    def __repr__(self) -> str:
        return (
            f"Scorer(version={self.version!r}, device={str(self.device)!r}, batch_size={self.batch_size}, "
            f"symmetry={self.symmetry}, amp={self.amp_dtype}, contract={self.contract})"
        )

    # -- the network -----------------------------------------------------

    def _to_device(self, xb: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(xb)
        if t.dtype != torch.float32:
            t = t.float()
        if self.device.type == "cuda":
            if t.device.type == "cpu":
                # Pinned memory lets the copy run asynchronously with the CPU work of the next batch.
                t = t.pin_memory().to(self.device, non_blocking=True)
            else:
                t = t.to(self.device)
        if self.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _network_logits(self, t: torch.Tensor) -> torch.Tensor:
        """Logits (B,) float32 of a prepared batch on the device."""
        chunk = self.network_chunk
        if chunk and t.shape[0] > chunk:
            return torch.cat([self._network_logits(t[a : a + chunk]) for a in range(0, t.shape[0], chunk)])
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if not self.symmetry:
                out = self.model(t).float()
            else:
                fmt = torch.channels_last if self.channels_last else torch.contiguous_format
                # One transformed copy of the batch at a time keeps memory at twice the batch.
                stacked = torch.stack(
                    [
                        self.model(dihedral_transform(t, k).contiguous(memory_format=fmt)).float()
                        for k in range(8)
                    ]
                )
                # Sorting the 8 logits first makes the mean independent of their order,
                # so the result is exactly invariant under rotations and flips.
                out = torch.sort(stacked, dim=0).values.mean(dim=0)
        if out.shape != (t.shape[0],):
            raise ModelPackageError(
                f"the classifier of package {self.version!r} returned shape {tuple(out.shape)} "
                f"for a batch of {t.shape[0]}; expected ({t.shape[0]},) logits."
            )
        return out

    def _calibrate(self, logits: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
        return torch.sigmoid(z / self.temperature).numpy()

    def logits_prepared(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Network logits for stamps already prepared per the contract.

        Parameters
        ----------
        x : `numpy.ndarray` or `torch.Tensor`, (N, C, S, S) float32
            Prepared stamps (``cutouts.prepare_stamps`` output), C and S from `contract`.

        Returns
        -------
        logits : `numpy.ndarray`, (N,) float32
        """
        if tuple(x.shape[1:]) != self._input_shape or x.ndim != 4:
            raise ValueError(
                f"prepared stamps must have shape (N, {', '.join(map(str, self._input_shape))}) for model "
                f"{self.version!r}, got {tuple(x.shape)}."
            )
        n = int(x.shape[0])
        outs = []
        with torch.inference_mode():
            for a in range(0, n, self.batch_size):
                outs.append(self._network_logits(self._to_device(x[a : a + self.batch_size])))
            # One device-to-host copy at the end, so the GPU never waits for the host in between.
            return torch.cat(outs).cpu().numpy() if outs else np.zeros(0, dtype=np.float32)

    def score_prepared(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Calibrated probabilities ``(N,)`` float32 for stamps already prepared per the contract."""
        return self._calibrate(self.logits_prepared(x))

    # -- raw stamps and images ------------------------------------------

    def _score_batches(self, n: int, batches) -> ScoreResult:
        """Score an iterator of ``(slice, prepared stamps, flags)`` covering ``range(n)`` in order."""
        logits = np.full(n, np.nan, dtype=np.float32)
        flags = np.zeros(n, dtype=np.int32)
        # On a GPU the logits stay on the device until the end, so the host never waits for the
        # device between batches. On the CPU they are copied out at once: small tensors kept alive
        # between the large temporaries of successive batches fragment the heap, and the resident
        # memory then creeps up with the number of batches instead of staying bounded.
        on_host = self.device.type == "cpu"
        pending: list[tuple[slice, torch.Tensor]] = []
        with torch.inference_mode():
            for sl, xb, fb in batches:
                flags[sl] = fb
                # Every batch goes through the network whole, unscorable sources included (their
                # prepared stamps are finite; their logits are discarded below), so that successive
                # batches make allocations of the same sizes, which the allocator reuses.
                out = self._network_logits(self._to_device(xb))
                if on_host:
                    logits[sl] = out.numpy()
                else:
                    pending.append((sl, out))
            for sl, out in pending:
                logits[sl] = out.cpu().numpy()
        bad = (flags & _UNSCORABLE_BITS) != 0
        # Prepared stamps are finite, so a non-finite logit is unexpected; it is flagged rather
        # than passed on as a NaN score without a flag.
        broken = ~bad & ~np.isfinite(logits)
        if broken.any():
            flags[broken] |= np.int32(SourceFlag.BAD_OUTPUT)
            bad |= broken
        logits[bad] = np.nan
        flags[bad] |= _UNSCORED
        return ScoreResult(reliability=self._calibrate(logits), flags=flags, logits=logits)

    def score_stamps(
        self,
        stamps: np.ndarray,
        flags: np.ndarray | None = None,
        channel_axis_order: Sequence[str] = CHANNEL_ORDER,
    ) -> ScoreResult:
        """Prepare raw stamps per the contract and score them, batch by batch.

        Parameters
        ----------
        stamps : `numpy.ndarray`, (N, C, H, W)
            Raw stamps (any units; untrusted pixels NaN) with channels in
            ``channel_axis_order`` or exactly the contract's channels; H and W
            in [21, 101] (cropped or padded about the centre pixel to the
            model's size, flagged ``RESIZED``). Not modified.
        flags : `numpy.ndarray`, (N,) int, optional
            Existing `SourceFlag` bits (e.g. from `cutouts.extract_cutouts`);
            sources with `UNSCORABLE` bits are not scored.
        channel_axis_order : sequence of `str`
            Names of the channels along axis 1 (default `CHANNEL_ORDER`).

        Returns
        -------
        result : `ScoreResult`
        """
        stamps = np.asarray(stamps)
        if stamps.ndim == 3 and self.contract.n_channels == 1:
            stamps = stamps[:, None]
        if stamps.ndim != 4:
            raise ValueError(f"stamps must be a 4-d (N, C, H, W) array, got shape {stamps.shape}.")
        n = stamps.shape[0]
        if flags is not None:
            flags = np.asarray(flags)
            if flags.shape != (n,):
                raise ValueError(f"flags must have shape ({n},) to match the stamps, got {flags.shape}.")
        _check_stamp_shape(stamps.shape[2:], "stamps")

        def batches():
            for a in range(0, n, self.batch_size):
                sl = slice(a, min(n, a + self.batch_size))
                xb, fb = cutouts.prepare_stamps(
                    stamps[sl], self.contract, None if flags is None else flags[sl], channel_axis_order
                )
                yield sl, xb, fb

        return self._score_batches(n, batches())

    def score_images(
        self,
        images: Sequence[np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        masks: Sequence[np.ndarray | None] | None = None,
        *,
        bad_mask_bits: int = mask_bits(DEFAULT_BAD_MASK_PLANES),
        max_bad_fraction: float = 0.5,
        channel_axis_order: Sequence[str] = CHANNEL_ORDER,
    ) -> ScoreResult:
        """Cut, prepare and score stamps around sources on aligned images, streaming in batches.

        Parameters
        ----------
        images : sequence of `numpy.ndarray`, each (H, W)
            Images in ``channel_axis_order`` (default difference, science,
            template) or exactly the contract's channels.
        x, y : `numpy.ndarray`, (N,)
            Centroids (pixels, zero-based LSST convention).
        masks : sequence of (H, W) integer arrays or None, optional
            Mask planes matching ``images``.
        bad_mask_bits, max_bad_fraction, channel_axis_order
            As in `cutouts.iter_cutout_batches`.

        Returns
        -------
        result : `ScoreResult`
            Row-aligned with ``x`` and ``y``. Peak memory grows with the batch
            size, not with N (beyond the (N,) outputs).
        """
        n = int(np.size(x))
        # With more than one batch, the next batch is cut and normalised in a background thread
        # while the network scores this one (numpy and torch both release the GIL), so the cost
        # of a detector approaches that of the network alone. On the CPU, where the network
        # takes small chunks anyway, batches of `PIPELINE_BATCH` start that overlap early.
        cut = self.batch_size if self.device.type != "cpu" else min(self.batch_size, PIPELINE_BATCH)
        ahead = n > cut
        batches = cutouts.iter_cutout_batches(
            images,
            x,
            y,
            self.contract,
            cut,
            masks=masks,
            bad_mask_bits=bad_mask_bits,
            max_bad_fraction=max_bad_fraction,
            channel_axis_order=channel_axis_order,
            # In one thread _score_batches scores each batch before asking for the next, so one
            # buffer serves them all; cut ahead in another thread, every batch needs its own.
            reuse_buffer=not ahead,
        )
        return self._score_batches(n, _in_background(batches) if ahead else batches)

    def score_channels(self, channels: dict[str, np.ndarray], flags: np.ndarray | None = None) -> ScoreResult:
        """Score stamps given as one (N, H, W) array per channel name (the contract's channels).

        Batches are stacked as they are needed, so no (N, C, H, W) copy of the input is made.
        """
        missing = [c for c in self.contract.channels if channels.get(c) is None]
        if missing:
            raise ValueError(
                f"model {self.version!r} uses channels {self.contract.channels}; "
                f"no stamps were given for {missing}."
            )
        arrays = [np.asarray(channels[c]) for c in self.contract.channels]
        _check_channel_arrays(dict(zip(self.contract.channels, arrays)))
        n = arrays[0].shape[0]
        if flags is not None:
            flags = np.asarray(flags)
            if flags.shape != (n,):
                raise ValueError(f"flags must have shape ({n},) to match the stamps, got {flags.shape}.")

        def batches():
            for a in range(0, n, self.batch_size):
                sl = slice(a, min(n, a + self.batch_size))
                raw = np.stack([arr[sl] for arr in arrays], axis=1)
                xb, fb = cutouts.prepare_stamps(
                    raw, self.contract, None if flags is None else flags[sl], self.contract.channels
                )
                yield sl, xb, fb

        return self._score_batches(n, batches())


# ----------------------------------------------------------------------
# Loading and caching
# ----------------------------------------------------------------------


def default_model_path() -> Path:
    """Path of the default model package shipped with ``lsst.meas.rbnet`` (may not exist yet)."""
    return Path(str(importlib.resources.files("lsst.meas.rbnet") / "data" / DEFAULT_MODEL_FILENAME))


def load_scorer(
    model: str | os.PathLike | ModelPackage | None = None,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    symmetry: bool = False,
    amp: str | bool = "auto",
    num_threads: int | None = None,
) -> Scorer:
    """A `Scorer` for a model, loaded once per process.

    Parameters
    ----------
    model : `str`, path-like, `ModelPackage` or None
        None for the default package (`default_model_path`), the path of a
        package file, or a package in memory.
    device, batch_size, symmetry, amp, num_threads
        As in `Scorer`.

    Returns
    -------
    scorer : `Scorer`
        The same object for the same model (file path and modification time,
        or weights and metadata of an in-memory package), resolved device,
        batch size, symmetry and precision.

    Raises
    ------
    FileNotFoundError
        If the package file (or the default package) does not exist.
    ModelPackageError
        If it is not a valid package.
    """
    dev = select_device(device)
    batch_size = _check_batch_size(batch_size)
    symmetry = _check_flag("symmetry", symmetry)
    amp_dtype = autocast_dtype(dev, amp)
    if model is None:
        path = default_model_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"No default model package is installed ({DEFAULT_MODEL_FILENAME} in the lsst.meas.rbnet "
                "data directory); pass model=<path of a .safetensors package> "
                "or train one with `rbnet train`."
            )
        model = path
    if isinstance(model, ModelPackage):
        source_key: tuple = ("package", package_key(model))
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"Model package {str(model)!r} does not exist or is not a file.")
        st = path.stat()
        source_key = ("path", str(path), st.st_mtime_ns, st.st_size)
    else:
        raise TypeError(f"model must be None, a path or a ModelPackage, got {type(model).__name__}.")
    key = (source_key, str(dev), batch_size, bool(symmetry), str(amp_dtype))
    with _cache_lock:
        scorer = _cache.get(key)
        if scorer is not None:
            _cache.move_to_end(key)
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            return scorer
    package = model if isinstance(model, ModelPackage) else ModelPackage.load(source_key[1])
    scorer = Scorer(
        package, device=dev, batch_size=batch_size, symmetry=symmetry, amp=amp, num_threads=num_threads
    )
    with _cache_lock:
        scorer = _cache.setdefault(key, scorer)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return scorer


# ----------------------------------------------------------------------
# One-call API
# ----------------------------------------------------------------------


def score_triplets(
    science: np.ndarray | None,
    template: np.ndarray | None,
    difference: np.ndarray,
    model: str | os.PathLike | ModelPackage | None = None,
    device: str | torch.device = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    symmetry: bool = False,
    return_flags: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Calibrated real/bogus probabilities for N triplets of stamps.

    Parameters
    ----------
    science, template, difference : `numpy.ndarray`, (N, H, W)
        Raw pixel values of stamps centred on the sources (any consistent
        units; NaN marks missing pixels). H and W in [21, 101], the same for
        all three; stamps are cropped or padded about their centre pixel
        (``H // 2, W // 2``) to the model's size. A difference-only model
        ignores ``science`` and ``template`` (they may be None).
    model : path, `ModelPackage` or None
        The model package (default: the shipped default model).
    device : `str`
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    batch_size : `int`
        Sources per batch.
    symmetry : `bool`
        Average over the 8 rotations/flips of each stamp. A boolean: any other
        value (e.g. the string ``"no"``) is refused.
    return_flags : `bool`
        Also return the per-source `SourceFlag` bits (a boolean).

    Returns
    -------
    reliability : `numpy.ndarray`, (N,) float32
        Calibrated probability of being real, NaN for stamps that cannot be
        scored (e.g. a channel entirely NaN).
    flags : `numpy.ndarray`, (N,) int32
        Only with ``return_flags``.

    Raises
    ------
    ValueError
        If an array is not 3-d, the arrays differ in N or in H/W, a stamp side
        is outside [21, 101], a channel the model needs is None, or the device
        is not valid.
    """
    symmetry = _check_flag("symmetry", symmetry)
    return_flags = _check_flag("return_flags", return_flags)
    given = {"difference": difference, "science": science, "template": template}
    arrays = {k: np.asarray(v) for k, v in given.items() if v is not None}
    if "difference" not in arrays:
        raise ValueError("difference stamps are required (got None).")
    # Validate what was given before loading a model, so bad input fails fast.
    _check_channel_arrays(arrays)
    scorer = load_scorer(model, device=device, batch_size=batch_size, symmetry=symmetry)
    n = arrays["difference"].shape[0]
    if n == 0:
        empty = np.zeros(0, dtype=np.float32)
        return (empty, np.zeros(0, dtype=np.int32)) if return_flags else empty
    result = scorer.score_channels({c: arrays.get(c) for c in scorer.contract.channels})
    return (result.reliability, result.flags) if return_flags else result.reliability
