# This file is part of meas_rbnet.
"""Alert packets in, scores out: ZTF and Rubin alerts and broker exports, no Butler needed.

Readers (`iter_alert_batches`) turn alert files into batches of three cutout
stacks in each survey's own size and units plus a table of identifiers and the
survey's own scores; `iter_scored_batches` / `score_alerts` score them with a
triplet model package through `lsst.meas.rbnet.scoring`. ``rbnet score-alerts``
is the command line front end.

Modules: `flags` (the alert-level `AlertFlag` bits), `surveys` (what each
survey's alerts hold), `fits` (cutout decoding), `avro` (container files,
Confluent wire format), `parquet` (broker exports), `sources` (files,
directories, globs, tar archives), `batch` (stacking into batches), `score`
(scoring and comparison), `output` (streaming Parquet/CSV/ECSV writers).
"""

from .batch import DEFAULT_ALERT_BATCH_SIZE, AlertBatch, iter_alert_batches  # noqa: F401
from .fits import CutoutError, decode_cutout  # noqa: F401
from .flags import CUTOUT_PROBLEMS, RECORD_PROBLEMS, AlertFlag, describe_alert_flags  # noqa: F401
from .output import AlertTableWriter  # noqa: F401
from .score import (
    compare_with_survey,
    iter_scored_batches,
    output_columns,
    score_alerts,
    score_batch,
)  # noqa: F401
from .sources import iter_messages  # noqa: F401
from .surveys import SURVEYS, SurveySpec  # noqa: F401

__all__ = [
    "AlertBatch",
    "AlertFlag",
    "AlertTableWriter",
    "CUTOUT_PROBLEMS",
    "CutoutError",
    "DEFAULT_ALERT_BATCH_SIZE",
    "RECORD_PROBLEMS",
    "SURVEYS",
    "SurveySpec",
    "compare_with_survey",
    "decode_cutout",
    "describe_alert_flags",
    "iter_alert_batches",
    "iter_messages",
    "iter_scored_batches",
    "output_columns",
    "score_alerts",
    "score_batch",
]
