# This file is part of meas_rbnet.
"""Constants with meaning, defined once and imported everywhere else.

Conventions
-----------
- Pixel coordinates are zero-based and follow the LSST convention: the centre
  of pixel ``(i, j)`` (row ``i``, column ``j``) is at ``x = j``, ``y = i``.
- Labels: ``1`` means real (astrophysical), ``0`` means bogus (artifact).
  ``reliability`` is the calibrated probability of ``label == 1``.
- Stamps are ``(N, C, H, W)`` float32 with channels in `CHANNEL_ORDER`.
"""

__all__ = [
    "CHANNEL_ORDER",
    "DIFFERENCE_ONLY",
    "DEFAULT_STAMP_SIZE",
    "MIN_STAMP_SIZE",
    "MAX_STAMP_SIZE",
    "REAL",
    "BOGUS",
    "REAL_CLASSES",
    "ARTIFACT_CLASSES",
    "ALL_CLASSES",
    "class_index",
    "MASK_PLANES",
    "MASK_BIT",
    "DEFAULT_BAD_MASK_PLANES",
    "mask_bits",
    "VERSION_MAX_LENGTH",
]

#: Channel order of a triplet stamp. A model trained on a subset (e.g.
#: `DIFFERENCE_ONLY`) records the channels it uses in its input contract.
CHANNEL_ORDER: tuple[str, ...] = ("difference", "science", "template")

#: Channels of the DMTN-216 "basic" (difference-only) classifier.
DIFFERENCE_ONLY: tuple[str, ...] = ("difference",)

#: Side of the stamps the default model sees (pixels, odd so there is a centre pixel).
DEFAULT_STAMP_SIZE: int = 31

#: Smallest and largest stamp side accepted by the scoring API (pixels).
MIN_STAMP_SIZE: int = 21
MAX_STAMP_SIZE: int = 101

REAL: int = 1
BOGUS: int = 0

#: Fine classes of real sources made by the simulator (all have ``label == 1``).
REAL_CLASSES: tuple[str, ...] = (
    "real_new",  # point source appearing (absent in template)
    "real_brighter",  # variable star brightening
    "real_fainter",  # variable star fading (negative difference)
    "real_on_galaxy",  # transient on a host galaxy
    "real_moving",  # slowly moving object (slightly trailed)
)

#: Artifact classes (all have ``label == 0``). The order is the index of the
#: optional class head of the triplet model; do not reorder, append only.
ARTIFACT_CLASSES: tuple[str, ...] = (
    "cosmic_ray",
    "hot_pixel",
    "bad_column",
    "saturated_star",  # saturated core with bleed trail
    "dipole",  # misregistration
    "bright_star_residual",  # bad subtraction of a bright star
    "satellite_trail",
    "ghost",
    "edge",  # edge of chip
    "noise",  # a fluctuation of the noise
)

#: All classes; index 0.. of the class head. "real" collapses all real subclasses.
ALL_CLASSES: tuple[str, ...] = ("real",) + ARTIFACT_CLASSES


def class_index(name: str) -> int:
    """Index of a fine class name in `ALL_CLASSES` (real subclasses map to 0).

    Raises
    ------
    ValueError
        If ``name`` is not a known class.
    """
    if name in REAL_CLASSES or name == "real":
        return 0
    try:
        return ALL_CLASSES.index(name)
    except ValueError:
        raise ValueError(
            f"Unknown source class {name!r}; expected one of {REAL_CLASSES + ARTIFACT_CLASSES}."
        ) from None


#: Mask planes and their bit numbers, as set by the LSST pipelines (afw defaults).
MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "STREAK": 9,
}

#: Bit value of each mask plane (``1 << MASK_PLANES[name]``), for setting and testing one plane.
MASK_BIT: dict[str, int] = {name: 1 << bit for name, bit in MASK_PLANES.items()}

#: Mask planes whose pixels are filled (not trusted) when making stamps.
DEFAULT_BAD_MASK_PLANES: tuple[str, ...] = ("NO_DATA", "SAT", "BAD", "CR", "EDGE", "SUSPECT")


def mask_bits(planes, mapping: dict[str, int] | None = None) -> int:
    """OR of the bits of the named mask planes.

    Parameters
    ----------
    planes : iterable of `str`
        Mask plane names.
    mapping : `dict` [`str`, `int`], optional
        Plane name to bit number; `MASK_PLANES` by default. Planes missing from
        a mapping are ignored (an image without that plane cannot have it set).
    """
    mapping = MASK_PLANES if mapping is None else mapping
    bits = 0
    for name in planes:
        if name in mapping:
            bits |= 1 << mapping[name]
    return bits


#: APDB ``reliabilityVersion`` is a string of at most 7 characters.
VERSION_MAX_LENGTH: int = 7
