# This file is part of meas_rbnet.
"""Per-source and per-object flag bits, documented in one place.

Every source gets an output row; these bits say what happened to it. A source
with any bit of `UNSCORABLE` set gets ``reliability = NaN`` by default (the
reliability task can be configured to give such sources a fixed score instead).
`ObjectFlag` holds the bits of the per-object rows of the sequence model.
"""

__all__ = ["SourceFlag", "UNSCORABLE", "describe_flags", "ObjectFlag", "describe_object_flags"]

import enum


class SourceFlag(enum.IntFlag):
    """Bits of the ``reliabilityFlags`` column (int32)."""

    #: The stamp reached past the image edge; the missing part was padded.
    EDGE = 1 << 0
    #: Some stamp pixels were NaN or infinite and were filled.
    NONFINITE = 1 << 1
    #: Some stamp pixels carried a bad mask plane (NO_DATA, SAT, BAD, CR, ...) and were filled.
    MASKED = 1 << 2
    #: The central pixel of the stamp was bad (masked, NaN or off the image).
    BAD_CENTER = 1 << 3
    #: More than the allowed fraction of a channel's pixels were bad.
    MOSTLY_BAD = 1 << 4
    #: A channel had no valid pixel at all.
    NO_VALID_PIXELS = 1 << 5
    #: The centroid lies off the image (or further than half a stamp past it).
    OFF_IMAGE = 1 << 6
    #: The centroid is NaN or infinite.
    BAD_CENTROID = 1 << 7
    #: The stamp was cropped or padded to the model's input size.
    RESIZED = 1 << 8
    #: The source was not scored (set together with the reason bits above).
    NOT_SCORED = 1 << 9
    #: The template had no coverage at the source (NO_DATA over the centre).
    NO_TEMPLATE = 1 << 10
    #: The network gave a non-finite output for the prepared stamp (set with ``NOT_SCORED``);
    #: a safety net, so that a NaN score always carries a flag.
    BAD_OUTPUT = 1 << 11


#: Any of these bits means the source cannot be scored meaningfully.
UNSCORABLE = SourceFlag.NO_VALID_PIXELS | SourceFlag.OFF_IMAGE | SourceFlag.BAD_CENTROID


def describe_flags(value: int) -> list[str]:
    """Names of the bits set in ``value``, e.g. ``["EDGE", "MASKED"]``."""
    return [flag.name for flag in SourceFlag if value & flag]


class ObjectFlag(enum.IntFlag):
    """Bits of the ``flags`` column (int32) of the per-object sequence reliability table.

    Set by `lsst.meas.rbnet.tasks.sequence.SequenceReliabilityTask`, one row per object.
    """

    #: The scored sequence has a single frame (one visit).
    SINGLE_VISIT = 1 << 0
    #: Some of the object's frames were left out: NaN/masked pixels over more than the allowed
    #: fraction, an unscorable source (SourceFlag UNSCORABLE bits) or an unknown time.
    FRAMES_DROPPED = 1 << 1
    #: No usable frame was left (the object is not scored).
    NO_VALID_FRAMES = 1 << 2
    #: Fewer usable frames than the task's ``minVisits`` (the object is not scored).
    TOO_FEW_VISITS = 1 << 3
    #: The object was made by positional association (its sources had no ``diaObjectId``).
    POSITIONAL = 1 << 4
    #: More than one source of the object in one visit (all are kept, in id order).
    REPEATED_VISIT = 1 << 5
    #: The object was not scored (``reliability`` NaN); set with the reason bits above.
    NOT_SCORED = 1 << 6
    #: The model reads single-visit scores but some scored frames had none (NaN in the
    #: sources' score column): those frames entered as "not scored", which the model has
    #: seen in training, but with less evidence.
    MISSING_VISIT_SCORES = 1 << 7


def describe_object_flags(value: int) -> list[str]:
    """Names of the `ObjectFlag` bits set in ``value``."""
    return [flag.name for flag in ObjectFlag if value & flag]
