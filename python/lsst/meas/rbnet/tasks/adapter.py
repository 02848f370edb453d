# This file is part of meas_rbnet.
"""Turn Butler image objects into plain numpy arrays (the exposure adapter).

The tasks read their images as `lsst.images` objects (`~lsst.images.VisitImage`,
`~lsst.images.DifferenceImage`, `~lsst.images.MaskedImage`) and, inside the full
Rubin stack, possibly as afw objects (``lsst.afw.image.Exposure`` or
``MaskedImage``). Everything below the task layer takes arrays; this module is the
one place that knows how to get ``(image, variance, mask, mask planes)`` out of each
of those types.

Masks come out as ``(H, W)`` int32 arrays in one *canonical* bit numbering, so that
the masks of the science, template and difference images of a triplet share their
bits and one bad-pixel bit mask applies to all three: planes named in
`~lsst.meas.rbnet.constants.MASK_PLANES` keep their bit there; other planes get the
free bits after those, in the order of the ``planes`` argument (or of the image's
own schema when ``planes`` is `None`). Planes that do not fit in 31 bits are dropped.
"""

from __future__ import annotations

__all__ = [
    "ImageArrays",
    "to_arrays",
    "check_same_bbox",
    "masked_image_from_legacy",
    "canonical_mask_planes",
]

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..constants import MASK_PLANES

# Bit 31 is the sign bit of int32; afw also stops at 31 planes.
_MAX_BITS = 31


@dataclasses.dataclass
class ImageArrays:
    """Pixels, variance and mask of one image as numpy arrays.

    Attributes
    ----------
    image : `numpy.ndarray`, (H, W) float32
        Pixel values (image units, e.g. nJy).
    variance : `numpy.ndarray`, (H, W) float32 or `None`
        Per-pixel variance (image units squared); `None` if the object had none.
    mask : `numpy.ndarray`, (H, W) int32 or `None`
        Bit mask in the bit numbering of ``mask_planes``; `None` if the object had none.
    mask_planes : `dict` [`str`, `int`]
        Mask plane name to bit number of ``mask``.
    x0, y0 : `int`
        Pixel coordinates of ``image[0, 0]`` in the parent (detector) frame: a source
        at parent pixel ``(x, y)`` is at array index ``[y - y0, x - x0]``.
    """

    image: np.ndarray
    variance: np.ndarray | None = None
    mask: np.ndarray | None = None
    mask_planes: dict[str, int] = dataclasses.field(default_factory=dict)
    x0: int = 0
    y0: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the arrays."""
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(x0, y0, width, height)`` in parent pixel coordinates."""
        return (self.x0, self.y0, int(self.image.shape[1]), int(self.image.shape[0]))

    def bits(self, planes: Iterable[str]) -> int:
        """OR of the bits of the named planes that this mask has (missing planes give 0)."""
        bits = 0
        for name in planes:
            if name in self.mask_planes:
                bits |= 1 << self.mask_planes[name]
        return bits


def canonical_mask_planes(names: Iterable[str]) -> dict[str, int]:
    """Bit numbers for mask planes: `MASK_PLANES` where known, then the next free bits.

    Parameters
    ----------
    names : iterable of `str`
        Plane names in the order extra bits are handed out.

    Returns
    -------
    mapping : `dict` [`str`, `int`]
        Name to bit number for every name that fits in 31 bits.
    """
    mapping: dict[str, int] = {}
    used = set(MASK_PLANES.values())
    next_bit = 0
    for name in names:
        if name in mapping:
            continue
        if name in MASK_PLANES:
            mapping[name] = MASK_PLANES[name]
            continue
        while next_bit in used:
            next_bit += 1
        if next_bit >= _MAX_BITS:
            continue
        mapping[name] = next_bit
        used.add(next_bit)
    return mapping


def _wanted_names(available: Iterable[str], planes: Iterable[str] | None) -> list[str]:
    available = list(available)
    if planes is None:
        return available
    wanted = set(planes) | set(MASK_PLANES)
    # Requested planes first so their extra bits do not depend on the image's schema order.
    ordered = [p for p in planes if p in available]
    ordered += [p for p in available if p in wanted and p not in ordered]
    return ordered


def _float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _from_lsst_images(obj: Any, planes: Iterable[str] | None) -> ImageArrays:
    image = _float32(obj.image.array)
    variance = _float32(obj.variance.array) if getattr(obj, "variance", None) is not None else None
    bbox = obj.bbox
    y0, x0 = int(bbox.y.start), int(bbox.x.start)
    mask_obj = getattr(obj, "mask", None)
    if mask_obj is None:
        return ImageArrays(image, variance, None, {}, x0, y0)
    names = _wanted_names(mask_obj.schema.names, planes)
    mapping = canonical_mask_planes(names)
    mask = _pack_lsst_mask(mask_obj.array, mask_obj.schema, mapping, image.shape)
    return ImageArrays(image, variance, mask, mapping, x0, y0)


def _pack_lsst_mask(raw: np.ndarray, schema: Any, mapping: Mapping[str, int], shape) -> np.ndarray:
    """An lsst.images packed mask ``(H, W, k)`` as an ``(H, W)`` int32 mask in ``mapping``'s bits.

    Vectorised per array element, not per plane: a mask whose planes already sit at the
    wanted bits of one int32 element is used as it is (one AND at most); small element
    types go through a lookup table (one gather per element); anything else is remapped
    plane by plane.
    """
    if raw.ndim == 2:
        raw = raw[:, :, None]
    by_element: dict[int, list[tuple[int, int]]] = {}
    for name, bit in mapping.items():
        plane_bit = schema.bit(name)
        by_element.setdefault(int(plane_bit.index), []).append((int(plane_bit.mask), bit))
    mask = np.zeros(shape, dtype=np.int32)
    if not by_element:
        return mask
    wanted = 0
    for bit in mapping.values():
        wanted |= 1 << bit
    if (
        raw.dtype == np.int32
        and list(by_element) == [0]
        and all(src == (1 << dst) for src, dst in by_element[0])
    ):
        # Planes already at the canonical bits: a view, masked down to the wanted planes.
        element = raw[:, :, 0]
        every = 0
        for plane in schema:
            if plane is not None:
                every |= int(schema.bit(plane.name).mask) if schema.bit(plane.name).index == 0 else 0
        return element if (every & ~wanted) == 0 else np.bitwise_and(element, np.int32(wanted))
    for index, pairs in by_element.items():
        element = raw[:, :, index]
        if element.dtype.itemsize <= 2:
            size = 1 << (8 * element.dtype.itemsize)
            codes = np.arange(size, dtype=np.int64)
            lut = np.zeros(size, dtype=np.int32)
            for src, dst in pairs:
                lut[(codes & src) != 0] |= np.int32(1 << dst)
            unsigned = element.view(np.dtype(f"u{element.dtype.itemsize}"))
            mask |= lut[unsigned]
        else:
            for src, dst in pairs:
                hit = np.bitwise_and(element, element.dtype.type(src)) != 0
                mask |= hit.view(np.int8).astype(np.int32) << np.int32(dst)
    return mask


def _remap_int_mask(raw: np.ndarray, plane_dict: Mapping[str, int], planes: Iterable[str] | None):
    names = _wanted_names(sorted(plane_dict, key=plane_dict.get), planes)
    mapping = canonical_mask_planes(names)
    raw = np.asarray(raw)
    if all(plane_dict[n] == b for n, b in mapping.items()) and raw.dtype == np.int32:
        # Already in the canonical numbering: no copy.
        return raw, mapping
    mask = np.zeros(raw.shape, dtype=np.int32)
    raw64 = raw.astype(np.int64, copy=False)
    for name, bit in mapping.items():
        hit = (raw64 >> plane_dict[name]) & 1
        mask |= hit.astype(np.int32) << np.int32(bit)
    return mask, mapping


def _from_afw(obj: Any, planes: Iterable[str] | None) -> ImageArrays:
    masked = obj.getMaskedImage() if hasattr(obj, "getMaskedImage") else obj
    image = _float32(masked.getImage().getArray())
    variance = _float32(masked.getVariance().getArray())
    afw_mask = masked.getMask()
    mask, mapping = _remap_int_mask(afw_mask.getArray(), dict(afw_mask.getMaskPlaneDict()), planes)
    xy0 = masked.getXY0()
    return ImageArrays(image, variance, mask, mapping, int(xy0.getX()), int(xy0.getY()))


def _is_afw(obj: Any) -> bool:
    # Only consult afw if it is already imported: an object can only be an afw type then.
    import sys

    if "lsst.afw.image" not in sys.modules:
        return False
    afw_image = sys.modules["lsst.afw.image"]
    types = tuple(
        t for t in (getattr(afw_image, "Exposure", None), getattr(afw_image, "MaskedImage", None)) if t
    )
    return bool(types) and isinstance(obj, types)


def to_arrays(obj: Any, *, name: str = "image", planes: Iterable[str] | None = None) -> ImageArrays:
    """Pixels, variance and mask of an image object as numpy arrays.

    Parameters
    ----------
    obj
        One of: an `lsst.images.MaskedImage` (or subclass: `~lsst.images.VisitImage`,
        `~lsst.images.DifferenceImage`); an `lsst.images.Image` (no mask, no variance);
        an afw ``Exposure`` or ``MaskedImage`` (when ``lsst.afw`` is importable); an
        `ImageArrays` (returned as is); any object with numpy ``image``, ``variance`` and
        ``mask`` attributes (e.g. the simulator's images, whose masks already use
        `MASK_PLANES`); or a bare 2-d numpy array.
    name : `str`, optional
        What the object is (``"science"``, ``"template"``, ...), for error messages.
    planes : iterable of `str`, optional
        Mask planes the caller needs; `None` keeps every plane that fits. Planes of
        `MASK_PLANES` are always kept.

    Returns
    -------
    arrays : `ImageArrays`
        The arrays (views of the object's pixels where the dtype allows) and the mask
        plane numbering.

    Raises
    ------
    TypeError
        If ``obj`` is of a type this adapter does not know (the message names ``name``).
    ValueError
        If the image is not 2-d or the planes' shapes differ.
    """
    if isinstance(obj, ImageArrays):
        result = obj
    elif _is_afw(obj):
        result = _from_afw(obj, planes)
    elif hasattr(obj, "image") and hasattr(getattr(obj, "image"), "array") and hasattr(obj, "bbox"):
        result = _from_lsst_images(obj, planes)
    elif hasattr(obj, "array") and hasattr(obj, "bbox") and not hasattr(obj, "schema"):
        # A bare lsst.images.Image.
        bbox = obj.bbox
        result = ImageArrays(_float32(obj.array), None, None, {}, int(bbox.x.start), int(bbox.y.start))
    elif isinstance(getattr(obj, "image", None), np.ndarray):
        mask = getattr(obj, "mask", None)
        variance = getattr(obj, "variance", None)
        mapping = dict(getattr(obj, "mask_planes", None) or MASK_PLANES)
        if mask is not None:
            mask, mapping = _remap_int_mask(mask, mapping, planes)
        result = ImageArrays(
            _float32(obj.image),
            None if variance is None else _float32(variance),
            mask,
            mapping if mask is not None else {},
            int(getattr(obj, "x0", 0)),
            int(getattr(obj, "y0", 0)),
        )
    elif isinstance(obj, np.ndarray):
        result = ImageArrays(_float32(obj))
    else:
        raise TypeError(
            f"The {name} is a {type(obj).__module__}.{type(obj).__qualname__}, which the reliability "
            "tasks cannot read; expected an lsst.images MaskedImage/VisitImage/DifferenceImage, an afw "
            "Exposure/MaskedImage, or arrays."
        )
    if result.image.ndim != 2:
        raise ValueError(f"The {name} image must be 2-d, got shape {result.image.shape}.")
    for plane_name, plane in (("variance", result.variance), ("mask", result.mask)):
        if plane is not None and plane.shape != result.image.shape:
            raise ValueError(
                f"The {name} {plane_name} has shape {plane.shape}, the image {result.image.shape}."
            )
    return result


def check_same_bbox(arrays: Mapping[str, ImageArrays]) -> tuple[int, int, int, int]:
    """Check that images share their pixel grid; return the common bounding box.

    Parameters
    ----------
    arrays : `~collections.abc.Mapping` [`str`, `ImageArrays`]
        Images by name (e.g. ``{"difference": ..., "science": ..., "template": ...}``).

    Returns
    -------
    bbox : `tuple` [`int`, `int`, `int`, `int`]
        ``(x0, y0, width, height)``.

    Raises
    ------
    lsst.meas.rbnet.tasks.errors.ImageGridMismatchError
        (an `lsst.pipe.base.AlgorithmError` and a `ValueError`) if the bounding boxes
        differ; the message and the metadata list each image's box. The reliability
        task treats this as an error of the whole quantum: a template that was not
        warped onto the science pixel grid is an upstream failure, not a per-source one.
    """
    from .errors import ImageGridMismatchError

    boxes = {name: a.bbox for name, a in arrays.items()}
    if len(set(boxes.values())) > 1:
        listed = ", ".join(f"{n} (x0, y0, width, height) = {b}" for n, b in boxes.items())
        raise ImageGridMismatchError(
            f"The images do not share one pixel grid: {listed}.",
            **{name: ", ".join(str(v) for v in box) for name, box in boxes.items()},
        )
    return next(iter(boxes.values()))


def masked_image_from_legacy(legacy: Any) -> Any:
    """Convert an afw ``Exposure`` or ``MaskedImage`` to an `lsst.images.MaskedImage`.

    This is the storage-class converter that lets the reliability task read an afw
    ``ExposureF`` template (today's ``template_detector``) through the
    ``RBNetMaskedImage`` storage class. Pixels and variance are shared, not copied.

    Parameters
    ----------
    legacy : ``lsst.afw.image.Exposure`` or ``lsst.afw.image.MaskedImage``
        The afw object.

    Returns
    -------
    masked_image : `lsst.images.MaskedImage`
        Image, mask and variance planes.
    """
    from lsst.images import MaskedImage

    masked = legacy.getMaskedImage() if hasattr(legacy, "getMaskedImage") else legacy
    return MaskedImage.from_legacy(masked)
