# This file is part of meas_rbnet.
"""Alert-level flag bits of `lsst.meas.rbnet.alerts`, documented in one place.

Every alert read from an input gets exactly one output row, scored or not; the
bits of its ``flags`` column (int32) say what happened to it. They are distinct
from the per-stamp `lsst.meas.rbnet.flags.SourceFlag` bits of the scorer, which
go to the ``reliabilityFlags`` column.

Three groups:

- **informational** (`PADDED`, `CROPPED`, `NAN_PIXELS`): the alert was scored;
- **cutout problems** (`MISSING_CUTOUT`, `BAD_CUTOUT`, `WRONG_SHAPE`): a cutout
  could not be used; the alert is not scored if the model needs that cutout
  (a difference-only model still scores an alert without a science cutout);
- **record problems** (`CORRUPT_RECORD`, `TRUNCATED`, `UNKNOWN_SCHEMA`,
  `UNREADABLE_FILE`): nothing of the alert could be decoded (identifiers may be
  unknown: ``alertId`` -1, ``objectId`` empty).

`NOT_SCORED` is set on every row whose score is NaN, together with the reason bits.
"""

__all__ = ["AlertFlag", "RECORD_PROBLEMS", "CUTOUT_PROBLEMS", "describe_alert_flags"]

import enum


class AlertFlag(enum.IntFlag):
    """Bits of the per-alert ``flags`` column (int32)."""

    #: A cutout was smaller than the survey's cutout size (cut at a CCD edge) and was padded with NaN.
    PADDED = 1 << 0
    #: A cutout was larger than the survey's cutout size and was cropped about its centre pixel.
    CROPPED = 1 << 1
    #: A cutout held NaN or infinite pixels (kept as NaN in the stacks; the scorer fills them).
    NAN_PIXELS = 1 << 2
    #: A cutout was absent from the alert (null field, empty bytes or no such column).
    MISSING_CUTOUT = 1 << 3
    #: A cutout's bytes could not be decoded (bad gzip stream, not FITS, truncated data, no image HDU).
    BAD_CUTOUT = 1 << 4
    #: A cutout decoded to something that is not a 2-d image of at least 3 x 3 pixels.
    WRONG_SHAPE = 1 << 5
    #: The alert's Avro record or block, or its Parquet row group, could not be decoded.
    CORRUPT_RECORD = 1 << 6
    #: The file ended inside the alert's Avro block (a partly written or cut file).
    TRUNCATED = 1 << 7
    #: The alert's schema is unknown: a Confluent wire-format schema id that no shipped
    #: ``lsst-alert-packet`` schema has, or a record layout that is neither ZTF's nor Rubin's.
    UNKNOWN_SCHEMA = 1 << 8
    #: The input file could not be opened or is of no known format (one row for the file).
    UNREADABLE_FILE = 1 << 9
    #: A cutout the model needs had no finite pixel (the scorer's ``NO_VALID_PIXELS``).
    NO_VALID_PIXELS = 1 << 10
    #: The alert was not scored (``score`` NaN); set together with the reason bits above.
    NOT_SCORED = 1 << 11


#: Bits meaning nothing of the alert could be decoded.
RECORD_PROBLEMS = (
    AlertFlag.CORRUPT_RECORD | AlertFlag.TRUNCATED | AlertFlag.UNKNOWN_SCHEMA | AlertFlag.UNREADABLE_FILE
)

#: Bits meaning at least one cutout could not be used (which one is in `AlertBatch.cutout_ok`).
CUTOUT_PROBLEMS = AlertFlag.MISSING_CUTOUT | AlertFlag.BAD_CUTOUT | AlertFlag.WRONG_SHAPE


def describe_alert_flags(value: int) -> list[str]:
    """Names of the `AlertFlag` bits set in ``value``, e.g. ``["PADDED", "NAN_PIXELS"]``."""
    return [flag.name for flag in AlertFlag if value & flag]
