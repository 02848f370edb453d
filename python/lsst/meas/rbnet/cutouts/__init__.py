# This file is part of meas_rbnet.
"""Vectorised stamp extraction, resizing and normalisation (numpy only).

This is layer 1 of the package: it imports nothing but numpy and the package's
constants, flags and input contract. The public names are re-exported here from
modules cut by concern (each imports only those above it):

- `.validate`: checks of the arguments (images, masks, positions, sizes);
- `.gather`: zero-copy row views, gathers of stamp rows, marking of untrusted pixels;
- `.scan`: source placement and the image scan that finds untrusted pixels;
- `.normalize`: `resize_stamps`, `stats_pixel_grid`, `normalize_stamps`;
- `.extract`: `CutoutBatch`, `extract_cutouts`;
- `.batch`: `prepare_stamps`, `prepare_cutouts`, `iter_cutout_batches`.

Conventions
-----------
- Pixel coordinates are zero-based (LSST): pixel ``(row i, column j)`` has its
  centre at ``x = j``, ``y = i`` and covers ``[j - 0.5, j + 0.5)``.
- The centre pixel of a source is the pixel containing its centroid, i.e.
  ``cx = floor(x + 0.5)``, ``cy = floor(y + 0.5)`` (round half up); the
  sub-pixel offset ``x - cx`` lies in ``[-0.5, 0.5)``.
- A stamp of side ``S`` has its centre pixel at index ``S // 2`` on both axes;
  for odd ``S`` this is the middle, for even ``S`` (e.g. Rubin's 30x30 alert
  cutouts) it is the first pixel right of / above the middle.
- Untrusted pixels (off the image, non-finite, or carrying a bad mask bit) are
  NaN in raw stamps, counted per channel, and reported through `SourceFlag`
  bits; they are never silently zero. `normalize_stamps` fills them with the
  contract's ``fill_value`` only after normalisation.

How it is fast (numpy only, no per-source Python loop)
------------------------------------------------------
- Each image is seen through a zero-copy view whose elements are runs of S
  consecutive pixels, so one fancy index copies a whole stamp row; a stamp is
  S indices, not S*S. Images are never copied or padded. Stamps crossing the
  image edge use the same gather at rows clamped into the image; a row run
  that starts left of column 0 (or ends right of the last column) reads the
  neighbouring row's pixels, which are off-image pixels and are overwritten.
- Sources are processed in raster order (neighbouring stamps share image rows
  and cache lines) in chunks of about 2 MB per channel; each chunk is gathered,
  marked, and in `prepare_cutouts` / `iter_cutout_batches` normalised while it
  is still in cache, then written to its rows of the output.
- Untrusted pixels are found without gathering masks for every stamp when the
  stamps cover a good part of the image ("image scan", see `_scan_channel`):
  one pass per image reduces blocks of 16 rows to one value per column (the sum
  of the pixels, which is non-finite if any pixel is; the OR of the mask bits),
  giving a map of "dirty" 16-pixel column segments. A summed-area table over
  16x16 tiles of that map gives each stamp an upper bound on its dirty segments
  in O(1): stamps with none need no per-pixel work at all; stamps with a few
  get their untrusted pixels as a sparse list (stamp, pixel) from the few dirty
  segments; stamps on densely bad areas (saturated stars, NO_DATA, bad-column
  clusters) and all stamps when the scan does not pay are checked pixel by
  pixel (a row-sum pass proves a stamp finite; mask rows are gathered).
- Medians use one `numpy.partition` per row on the fixed pixel grid of
  `stats_pixel_grid`; untrusted grid pixels are set to -inf / +inf in equal
  numbers so that the middle of the partitioned row is the median of the
  trusted pixels (no NaN-aware sort).
"""

from __future__ import annotations

__all__ = [
    "CutoutBatch",
    "extract_cutouts",
    "resize_stamps",
    "normalize_stamps",
    "prepare_stamps",
    "prepare_cutouts",
    "iter_cutout_batches",
    "stats_pixel_grid",
    "STATS_MAX_PIXELS_PER_AXIS",
    "MAD_TO_SIGMA",
]

from .batch import iter_cutout_batches, prepare_cutouts, prepare_stamps
from .extract import CutoutBatch, _channel_mask_bits, extract_cutouts
from .gather import _CHUNK_BYTES, _row_view
from .normalize import (
    MAD_TO_SIGMA,
    STATS_MAX_PIXELS_PER_AXIS,
    _robust_center_scale,
    normalize_stamps,
    resize_stamps,
    stats_pixel_grid,
)
from .scan import _locate, _plan_channels

# The private names above are re-exported because tests/test_cutouts.py and
# benchmarks/bench_cutouts.py reach them through this package (they check the internals
# against a naive reference); the tuning constants of the image scan live in `.scan`.
