# This file is part of meas_rbnet.
"""The runtime shared by both models: device choice (`select_device`), precision
(`autocast_dtype` for autocast, `checked_dtype` for networks cast to bfloat16 where a probe
shows it safe, once per package digest and device), the CPU chunk of the network,
conv+batch-norm fusion, and the process-wide model cache keyed by package digest
(`cached_model`, `package_key`).

`scoring` re-exports these names (the old import path).
"""

from __future__ import annotations

__all__ = [
    "CPU_CHUNK_PIXELS", "autocast_dtype", "cached_model", "cast_dtype", "checked_dtype", "cpu_network_chunk",
    "clear_scorer_cache", "native_bf16", "package_key", "select_device"
]

import collections
import functools
import hashlib
import itertools
import json
import math
import re
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .package import ModelPackage


#: On the CPU the network sees chunks of about this many stamp pixels (stamps x S x S) at
#: once, so its activations stay in cache. Measured on a 2-core Xeon with 1024-stamp batches:
#: triplet_cnn on 31x31 stamps 1.7 times faster in chunks of 128 than whole, braai_like on
#: 63x63 stamps 2 times faster in chunks of 32; both sit at about 2**17 pixels (`cpu_network_chunk`).
CPU_CHUNK_PIXELS: int = 1 << 17


#: Accepted forms of the ``device`` argument (for error messages).
_DEVICE_FORMS = "'auto', 'cpu', 'cuda' or 'cuda:N' (N a CUDA device index)"


#: Maximum number of scorers kept by `load_scorer`.
_CACHE_SIZE = 8


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device request.

    Parameters
    ----------
    device : `str` or `torch.device`
        ``"auto"`` (CUDA if ``torch.cuda.is_available()``, else CPU), ``"cpu"``,
        ``"cuda"`` (the current CUDA device) or ``"cuda:N"``.

    Returns
    -------
    device : `torch.device`

    Raises
    ------
    ValueError
        If the form is not one of those, CUDA is requested but not available,
        or the CUDA index is out of range.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be {_DEVICE_FORMS}; got {device!r}.")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ValueError(f"Unknown device {device!r}; expected {_DEVICE_FORMS}.")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but CUDA is not available (torch.cuda.is_available() is "
            "False: no GPU, no driver, or a CPU-only torch); use device='cpu' or 'auto'."
        )
    if match.group(1) is None:
        return torch.device("cuda")
    index = int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"device {device!r} is out of range: there {'is' if count == 1 else 'are'} {count} CUDA "
            f"device{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})."
        )
    return torch.device("cuda", index)


def autocast_dtype(device: torch.device, amp: str | bool = "auto") -> torch.dtype | None:
    """The autocast dtype to score with, or None for full float32.

    Parameters
    ----------
    device : `torch.device`
        The scoring device.
    amp : `str` or `bool`
        ``"auto"``: mixed precision on CUDA (bfloat16 where the GPU supports it,
        else float16), none on the CPU (float32 convolutions are fast there and
        CPU half precision is often slower). ``"off"`` / False: never.
        ``"on"`` / True: on CUDA as "auto", bfloat16 on the CPU.
        ``"float16"`` / ``"bfloat16"``: that dtype on any device.

    Raises
    ------
    ValueError
        For any other ``amp``.
    """
    if amp is False or amp in ("off", "none"):
        return None
    if amp == "float16":
        return torch.float16
    if amp == "bfloat16":
        return torch.bfloat16
    if amp is True or amp in ("auto", "on"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp is True or amp == "on" else None
    raise ValueError(f"amp must be 'auto', 'on', 'off', 'float16', 'bfloat16' or a bool; got {amp!r}.")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` does bfloat16 arithmetic natively (so bfloat16 is faster than float32).

    On the CPU: the AMX-BF16 or AVX-512 BF16 instructions (read from the Linux CPU
    flags; False where they cannot be read). On CUDA: ``torch.cuda.is_bf16_supported()``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())
    return False


def cast_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """The dtype to cast a network to on ``device`` for ``precision``, before any probe.

    ``"auto"``: bfloat16 where `native_bf16`, else float32; ``"float32"`` and
    ``"bfloat16"`` as named. `checked_dtype` adds the probe that "auto" needs.
    """
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if precision not in dtypes:
        raise ValueError(f"precision must be 'auto' or one of {sorted(dtypes)}, got {precision!r}.")
    return dtypes[precision]


#: bfloat16 probe results (the largest output difference against float32) per package and
#: device, so a package is probed once per process however many scorers are built for it.
_probe_errors: dict[tuple, float] = {}


def checked_dtype(
    device: torch.device | str,
    precision: str,
    *,
    key: tuple,
    probe: Callable[[], float],
    tolerance: float,
) -> tuple[torch.dtype, float | None]:
    """The dtype to cast a network to: bfloat16 with ``precision="auto"`` only where checked safe.

    Parameters
    ----------
    device : `torch.device` or `str`
        The device the network runs on.
    precision : `str`
        ``"auto"``, ``"float32"`` or ``"bfloat16"`` (see `cast_dtype`).
    key : `tuple`
        What identifies the network and device, e.g. ``(package_key(package), str(device))``;
        ``probe`` runs once per key in the process (`clear_scorer_cache` forgets the results).
    probe : callable
        Returns the largest difference of the network's outputs between bfloat16 and float32
        on probe inputs; called only when "auto" would choose bfloat16.
    tolerance : `float`
        The largest difference with which "auto" keeps bfloat16.

    Returns
    -------
    dtype : `torch.dtype`
        ``torch.bfloat16`` or ``torch.float32``.
    error : `float` or `None`
        The probe's figure, or None where no probe was needed.
    """
    dtype = cast_dtype(device, precision)
    if precision != "auto" or dtype != torch.bfloat16:
        return dtype, None
    with _cache_lock:
        error = _probe_errors.get(key)
    if error is None:
        error = float(probe())
        with _cache_lock:
            _probe_errors[key] = error
    return (torch.bfloat16 if error <= tolerance else torch.float32), error


def cpu_network_chunk(stamp_size: int) -> int:
    """Stamps per network call on the CPU: a power of two near ``CPU_CHUNK_PIXELS / stamp_size**2``.

    128 for 31x31 stamps, 32 for 63x63, 256 for 21x21, 16 for 101x101.
    """
    return int(min(1024, max(8, 2 ** round(math.log2(CPU_CHUNK_PIXELS / stamp_size**2)))))


def _fuse_conv_bn(module: nn.Module) -> nn.Module:
    """Fold eval-mode batch norms into the convolutions before them (in place; inference only).

    Only ``Conv2d`` directly followed by ``BatchNorm2d`` inside an ``nn.Sequential``
    is folded; the batch norm is replaced by ``Identity`` so indices stay put.
    This saves about a fifth of the CPU time of `nn.triplet.TripletCNN`.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        _fuse_conv_bn(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = module._modules[a], module._modules[b]
            if (
                type(conv) is nn.Conv2d
                and type(bn) is nn.BatchNorm2d
                and bn.track_running_stats
                and bn.running_mean is not None
                and conv.out_channels == bn.num_features
            ):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    return module


#: The process-wide cache of loaded models (triplet `Scorer` and sequence scorers alike), least
#: recently used first; keys start with what identifies the package (`package_key` or its file).
_cache: collections.OrderedDict[tuple, Any] = collections.OrderedDict()


_cache_lock = threading.Lock()


def clear_scorer_cache() -> None:
    """Forget every scorer made by `load_scorer` or `cached_model`, and every bfloat16 probe result."""
    with _cache_lock:
        _cache.clear()
        _probe_errors.clear()


def cached_model(key: tuple, build) -> Any:
    """``build()`` once per ``key`` in the process-wide model cache (the one `load_scorer` uses).

    Parameters
    ----------
    key : `tuple`
        What makes two loaded models the same, e.g. ``("sequence", package_key(package), device)``.
    build : callable
        Makes the model on a miss.

    Returns
    -------
    model
        The cached object (the first one made if two threads built it at once).
    """
    with _cache_lock:
        model = _cache.get(key)
        if model is not None:
            _cache.move_to_end(key)
            return model
    model = build()
    with _cache_lock:
        model = _cache.setdefault(key, model)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return model


def package_key(package: ModelPackage) -> str:
    """Identity of a package in memory: its weights digest and a hash of its metadata."""
    meta = json.dumps(package.metadata(), sort_keys=True, default=str)
    return package.digest + ":" + hashlib.sha256(meta.encode("utf-8")).hexdigest()
