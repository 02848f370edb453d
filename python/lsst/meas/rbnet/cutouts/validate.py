# This file is part of meas_rbnet.
"""Checks of the arguments of the cutout functions (images, masks, positions, sizes).

Part of the `lsst.meas.rbnet.cutouts` package (layer 1, numpy only); see its docstring for
the conventions and how the extraction is fast.
"""

from __future__ import annotations

__all__: list[str] = []

from collections.abc import Sequence

import numpy as np

from ..constants import CHANNEL_ORDER

# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _channel_names(n: int, names: Sequence[str] | None) -> tuple[str, ...]:
    if names is not None:
        names = tuple(str(s) for s in names)
        if len(names) != n:
            raise ValueError(f"names has {len(names)} entries but {n} images were given.")
        return names
    if n == len(CHANNEL_ORDER):
        return CHANNEL_ORDER
    return tuple(f"image {i}" for i in range(n))


def _validate_images(images, masks, names) -> tuple[list[np.ndarray], list[np.ndarray | None], tuple]:
    """Check images and masks; return lists of 2-d arrays (masks may hold None)."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        # A single image is a one-channel stack; documented convenience.
        images = [images]
    if isinstance(images, np.ndarray) and images.ndim != 3:
        raise ValueError(
            f"images must be a sequence of 2-d (H, W) arrays or a (C, H, W) array, got shape {images.shape}."
        )
    images = list(images)
    if not images:
        raise ValueError("images is empty; at least one 2-d image is needed.")
    names = _channel_names(len(images), names)
    arrays = []
    for name, img in zip(names, images):
        arr = np.asarray(img)
        if arr.ndim != 2:
            raise ValueError(f"The {name} image must be a 2-d (H, W) array, got shape {arr.shape}.")
        if arr.size == 0:
            raise ValueError(f"The {name} image is empty (shape {arr.shape}).")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"The {name} image must have a real numeric dtype, got {arr.dtype}.")
        if arrays and arr.shape != arrays[0].shape:
            raise ValueError(
                f"The {name} image has shape {arr.shape} but the {names[0]} image has shape "
                f"{arrays[0].shape}; all images must have the same shape."
            )
        arrays.append(arr)
    if masks is None:
        mask_list: list[np.ndarray | None] = [None] * len(arrays)
    else:
        if isinstance(masks, np.ndarray) and masks.ndim == 2:
            masks = [masks]
        masks = list(masks)
        if len(masks) != len(arrays):
            raise ValueError(f"masks has {len(masks)} entries but {len(arrays)} images were given.")
        mask_list = []
        for name, m in zip(names, masks):
            if m is None:
                mask_list.append(None)
                continue
            m = np.asarray(m)
            if m.shape != arrays[0].shape:
                raise ValueError(
                    f"The {name} mask has shape {m.shape} but the images have shape {arrays[0].shape}."
                )
            if not np.issubdtype(m.dtype, np.integer):
                raise ValueError(f"The {name} mask must have an integer dtype (mask bits), got {m.dtype}.")
            mask_list.append(m)
    return arrays, mask_list, names


def _validate_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 0:
        x = x.reshape(1)
    if y.ndim == 0:
        y = y.reshape(1)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"x and y must be 1-d arrays of centroids, got shapes {x.shape} and {y.shape}.")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}.")
    return x, y


def _validate_fraction(max_bad_fraction) -> float:
    f = float(max_bad_fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}.")
    return f


def _validate_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an integer number of pixels, got {size!r}.")
    size = int(size)
    if size < 3:
        raise ValueError(f"size must be >= 3 pixels, got {size}.")
    return size

# ---------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------


def _mask_bits_for(dtype: np.dtype, bits: int):
    """``bits`` as a scalar of the mask's integer dtype (bits beyond its width cannot be set)."""
    width = 8 * dtype.itemsize
    b = int(bits) & ((1 << width) - 1)
    if np.issubdtype(dtype, np.signedinteger) and b >= 1 << (width - 1):
        b -= 1 << width
    return dtype.type(b)
