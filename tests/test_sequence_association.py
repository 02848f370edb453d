# This file is part of meas_rbnet.
"""Tests of the sequence science without a Butler: frames, association and object labels.

`lsst.meas.rbnet.sequence.frames`, `~lsst.meas.rbnet.sequence.association` and
`~lsst.meas.rbnet.sequence.labels` on in-memory tables; no pipe_base is imported.
"""

import subprocess
import sys

import astropy.table
import numpy as np

from lsst.meas.rbnet.sequence.association import group_sources
from lsst.meas.rbnet.sequence.frames import gather_frames
from lsst.meas.rbnet.sequence.labels import object_labels
from sequence_helpers import FRAME, STAMP, make_series
from sequence_helpers import field as _field


def test_group_sources_is_deterministic():
    rng = np.random.default_rng(3)
    ra = np.repeat(150.0 + np.arange(5) * 0.01, 4) + rng.normal(0, 1e-5, 20)
    dec = np.repeat(np.full(5, 2.0), 4) + rng.normal(0, 1e-5, 20)
    ids = np.arange(100, 120, dtype=np.int64)
    g = group_sources(ra, dec, np.zeros(20, np.int64), ids, 1.0)
    perm = rng.permutation(20)
    h = group_sources(ra[perm], dec[perm], np.zeros(20, np.int64), ids[perm], 1.0)
    np.testing.assert_array_equal(g.object_id, h.object_id)
    np.testing.assert_array_equal(g.object_id[g.index][perm], h.object_id[h.index])
    assert len(g) == 5 and np.all(g.positional)


def test_gather_frames_crops_around_the_source():
    ra, dec = _field(1)
    cutouts, sources, _, _ = make_series(ra, dec, n_visits=1)
    stamp = np.asarray(cutouts[0]["stamp"])
    frames = gather_frames(cutouts, sources, channels=("template", "science"), frame_size=FRAME)
    assert frames.frames.shape == (1, 2, FRAME, FRAME)
    # The source pixel S // 2 of the stamp is pixel F // 2 of the frame.
    assert frames.frames[0, 1, FRAME // 2, FRAME // 2] == stamp[0, 1, STAMP // 2, STAMP // 2]
    assert frames.frames[0, 0, 0, 0] == stamp[0, 2, 0, 0]


def test_object_labels_majority_and_per_object():
    ra, dec = _field(4)
    cutouts, sources, _, labels = make_series(ra, dec, n_visits=4)
    frames = gather_frames(cutouts, sources, channels=("science",), frame_size=FRAME)
    groups = group_sources(frames.ra, frames.dec, frames.object_id, frames.source_id, 1.0)
    # Flip one of object 1's four labels (still a majority), two of object 2's (a tie).
    labels = labels.copy()
    for obj, n_flip in ((1, 1), (2, 2)):
        rows = np.flatnonzero(np.isin(labels["id"], frames.source_id[frames.object_id == obj]))[:n_flip]
        labels["label"][rows] = 1 - labels["label"][rows]
    out, counts = object_labels(frames, groups, labels)
    assert list(out) == [1, -1, 1, 0] and counts["conflicting_objects"] == 1
    per_object = astropy.table.Table({"diaObjectId": [1, 2, 4], "label": [0, 1, 1]})
    out, _ = object_labels(frames, groups, per_object)
    assert list(out) == [0, 1, -1, 1]


def test_science_modules_need_no_pipe_base():
    """The sequence science imports without pipe_base or torch (DESIGN: no Butler below the tasks)."""
    code = (
        "import sys\n"
        "import lsst.meas.rbnet.sequence.association, lsst.meas.rbnet.sequence.frames\n"
        "import lsst.meas.rbnet.sequence.labels, lsst.meas.rbnet.sequence.objects\n"
        "import lsst.meas.rbnet.sequence.partition, lsst.meas.rbnet.tables\n"
        "print(sorted(m for m in ('lsst.pipe.base', 'lsst.daf.butler', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
